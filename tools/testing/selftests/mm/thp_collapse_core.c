// SPDX-License-Identifier: GPL-2.0
/*
 * The run-time choice between the C and Rust THP collapse cores, and the
 * Rust core's per-caller counters.
 *
 * The Rust core decides eligibility, the MADV_COLLAPSE range loop and its
 * errno like the C core, and collapses private anonymous memory, shmem and
 * files itself; its counters show it did. The C core must keep working when
 * selected, and a failed huge page allocation leaves memory as it was on
 * both.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "kselftest.h"
#include "vm_util.h"
#include "thp_collapse_util.h"

#define KHUGEPAGED_SYSFS "/sys/kernel/mm/transparent_hugepage/khugepaged/"
#define NR_PMDS 2

static char *populated(size_t nr_pmds)
{
	char *p = mmap_pmd_aligned(nr_pmds, PROT_READ | PROT_WRITE);

	if (!p)
		ksft_exit_fail_perror("mmap");
	/* Fault in base pages only: no THP at fault time for this VMA. */
	if (madvise(p, nr_pmds * PMD_SZ, MADV_NOHUGEPAGE))
		ksft_exit_fail_perror("madvise(MADV_NOHUGEPAGE)");
	memset(p, 0xa5, nr_pmds * PMD_SZ);
	/* MADV_COLLAPSE respects VM_NOHUGEPAGE: MADV_HUGEPAGE clears it. */
	if (madvise(p, nr_pmds * PMD_SZ, MADV_HUGEPAGE))
		ksft_exit_fail_perror("madvise(MADV_HUGEPAGE)");
	return p;
}

static void test_knob(const char *orig)
{
	int err;

	ksft_test_result(orig && (!strcmp(orig, "rust") || !strcmp(orig, "c")),
			 "core knob reads rust or c (%s)\n", orig ? orig : "none");

	err = collapse_set_core("fortran");
	ksft_test_result(err == EINVAL && !strcmp(collapse_core(), orig),
			 "core knob rejects other values with EINVAL (%s)\n",
			 strerror(err));

	collapse_require_core("c");
	err = !!strcmp(collapse_core(), "c");
	collapse_require_core("rust");
	err |= !!strcmp(collapse_core(), "rust");
	ksft_test_result(!err, "core knob switches between c and rust\n");
}

static void test_rust_madvise(void)
{
	long long ok = rust_stat("madvise", "succeed");
	long long pm = rust_stat_total("process_madvise");
	char *p = populated(NR_PMDS);
	int ret, err;

	collapse_require_core("rust");
	ret = madvise(p, NR_PMDS * PMD_SZ, MADV_COLLAPSE);
	err = errno;
	ksft_test_result(ret == 0 &&
			 check_huge_anon(p, NR_PMDS * PMD_SZ, NR_PMDS, PMD_SZ) &&
			 rust_stat("madvise", "succeed") == ok + NR_PMDS &&
			 rust_stat_total("process_madvise") == pm,
			 "rust: madvise(MADV_COLLAPSE) collapses and counts succeed per PMD (ret %d, %s)\n",
			 ret, ret ? strerror(err) : "ok");
	ksft_test_result(p[0] == (char)0xa5 && p[NR_PMDS * PMD_SZ - 1] == (char)0xa5,
			 "rust: contents preserved\n");
	munmap(p, NR_PMDS * PMD_SZ);
}

static void test_rust_sub_pmd_range(void)
{
	long long total = rust_stat_total("madvise");
	char *p = populated(1);
	int ret;

	collapse_require_core("rust");
	/* No PMD-aligned range inside: success without work, as upstream. */
	ret = madvise(p + 4096, PMD_SZ - 8192, MADV_COLLAPSE);
	ksft_test_result(ret == 0 && rust_stat_total("madvise") == total,
			 "rust: a range holding no aligned PMD succeeds without work\n");
	munmap(p, PMD_SZ);
}

static void test_rust_process_madvise(void)
{
	long long ok = rust_stat("process_madvise", "succeed");
	long long m = rust_stat_total("madvise");
	char *p = populated(1);
	struct iovec iov = { .iov_base = p, .iov_len = PMD_SZ };
	int pidfd = syscall(SYS_pidfd_open, getpid(), 0);
	long ret;
	int err;

	if (pidfd < 0)
		ksft_exit_fail_perror("pidfd_open");
	collapse_require_core("rust");
	ret = syscall(SYS_process_madvise, pidfd, &iov, 1, MADV_COLLAPSE, 0);
	err = errno;
	ksft_test_result(ret == (long)PMD_SZ &&
			 check_huge_anon(p, PMD_SZ, 1, PMD_SZ) &&
			 rust_stat("process_madvise", "succeed") == ok + 1 &&
			 rust_stat_total("madvise") == m,
			 "rust: process_madvise(MADV_COLLAPSE) collapses and counts under process_madvise (ret %ld, %s)\n",
			 ret, ret < 0 ? strerror(err) : "ok");
	close(pidfd);
	munmap(p, PMD_SZ);
}

/* madvise(MADV_COLLAPSE) on the given core: 0 or the errno. */
static int collapse_on(const char *core, char *p, size_t len)
{
	collapse_require_core(core);
	return madvise(p, len, MADV_COLLAPSE) ? errno : 0;
}

static void test_rust_ineligible(void)
{
	long long total = rust_stat_total("madvise");
	char *p = populated(1);
	int c_err, rust_err;

	if (madvise(p, PMD_SZ, MADV_NOHUGEPAGE))
		ksft_exit_fail_perror("madvise(MADV_NOHUGEPAGE)");
	c_err = collapse_on("c", p, PMD_SZ);
	rust_err = collapse_on("rust", p, PMD_SZ);
	ksft_test_result(rust_err == EINVAL && c_err == rust_err &&
			 rust_stat_total("madvise") == total,
			 "rust: VM_NOHUGEPAGE range refused with EINVAL like C (rust %s, c %s)\n",
			 strerror(rust_err), strerror(c_err));
	munmap(p, PMD_SZ);
}

static void test_rust_no_page_table(void)
{
	long long npt = rust_stat("madvise", "no_pte_table");
	char *p = mmap_pmd_aligned(3, PROT_READ | PROT_WRITE);
	int c_err, rust_err;

	if (!p)
		ksft_exit_fail_perror("mmap");
	/*
	 * One page in the first PMD gives the VMA an anon_vma (without one it
	 * is not eligible at all); the next two PMDs have no page table. Both
	 * are tried, and the request fails with the last failure's errno.
	 */
	p[0] = 1;
	rust_err = collapse_on("rust", p + PMD_SZ, 2 * PMD_SZ);
	c_err = collapse_on("c", p + PMD_SZ, 2 * PMD_SZ);
	ksft_test_result(rust_err == EINVAL && c_err == rust_err &&
			 rust_stat("madvise", "no_pte_table") == npt + 2,
			 "rust: ranges without page tables continue, then EINVAL like C (rust %s, c %s)\n",
			 strerror(rust_err), strerror(c_err));
	munmap(p, 3 * PMD_SZ);
}

static void test_rust_unfaulted(void)
{
	long long total = rust_stat_total("madvise");
	char *p = mmap_pmd_aligned(1, PROT_READ | PROT_WRITE);
	int c_err, rust_err;

	if (!p)
		ksft_exit_fail_perror("mmap");
	/* Never faulted: no anon_vma, so not eligible for collapse. */
	rust_err = collapse_on("rust", p, PMD_SZ);
	c_err = collapse_on("c", p, PMD_SZ);
	ksft_test_result(rust_err == EINVAL && c_err == rust_err &&
			 rust_stat_total("madvise") == total,
			 "rust: never-faulted anonymous VMA refused with EINVAL like C (rust %s, c %s)\n",
			 strerror(rust_err), strerror(c_err));
	munmap(p, PMD_SZ);
}

static void test_rust_already_huge(void)
{
	long long pm;
	char *p = populated(NR_PMDS);
	int err;

	err = collapse_on("c", p, NR_PMDS * PMD_SZ);
	if (err || !check_huge_anon(p, NR_PMDS * PMD_SZ, NR_PMDS, PMD_SZ)) {
		ksft_test_result_fail("rust: already-huge ranges (C collapse failed: %s)\n",
				      strerror(err));
		munmap(p, NR_PMDS * PMD_SZ);
		return;
	}
	pm = rust_stat("madvise", "pmd_mapped");
	err = collapse_on("rust", p, NR_PMDS * PMD_SZ);
	ksft_test_result(!err && rust_stat("madvise", "pmd_mapped") == pm + NR_PMDS,
			 "rust: already PMD-mapped ranges count as collapsed (%s)\n",
			 strerror(err));
	munmap(p, NR_PMDS * PMD_SZ);
}

/* @nr PMDs of a memfd mapped PMD-aligned and written (0xa5), or NULL. */
static char *shmem_populated(int *fd, size_t nr)
{
	char *p, *a;

	*fd = memfd_create("thp_collapse_core", 0);
	if (*fd < 0 || ftruncate(*fd, nr * PMD_SZ))
		ksft_exit_fail_perror("memfd");
	/* PMD-aligned in the address space and in the file. */
	a = mmap_pmd_aligned(nr, PROT_NONE);
	p = a ? mmap(a, nr * PMD_SZ, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_FIXED, *fd, 0) : MAP_FAILED;
	if (p == MAP_FAILED)
		ksft_exit_fail_perror("mmap(memfd)");
	memset(p, 0xa5, nr * PMD_SZ);
	return p;
}

static void test_rust_shmem(void)
{
	long long ok = rust_stat("madvise", "succeed");
	int fd, err;
	char *p = shmem_populated(&fd, 2);

	err = collapse_on("rust", p, 2 * PMD_SZ);
	ksft_test_result(!err && rust_stat("madvise", "succeed") == ok + 2 &&
			 check_huge_shmem(p, 2 * PMD_SZ, 2, PMD_SZ) &&
			 p[0] == (char)0xa5 && p[2 * PMD_SZ - 1] == (char)0xa5,
			 "rust: shmem collapse is done by the Rust core (%s)\n",
			 strerror(err));
	munmap(p, 2 * PMD_SZ);
	close(fd);
}

#define FAIL_PAGE_ALLOC "/sys/kernel/debug/fail_page_alloc/"

/* Make every PMD-order allocation of this task fail, or stop doing so. */
static int fail_thp_allocs(bool on)
{
	static const char * const knobs[][2] = {
		{ "min-order", "9" }, { "ignore-gfp-wait", "N" },
		{ "ignore-gfp-highmem", "N" }, { "task-filter", "Y" },
		{ "interval", "1" }, { "times", "-1" }, { "verbose", "0" },
	};
	char path[128];
	size_t i;

	if (on) {
		for (i = 0; i < ARRAY_SIZE(knobs); i++) {
			snprintf(path, sizeof(path), FAIL_PAGE_ALLOC "%s", knobs[i][0]);
			if (write_str(path, knobs[i][1]))
				return -1;
		}
	}
	if (write_str(FAIL_PAGE_ALLOC "probability", on ? "100" : "0"))
		return -1;
	return write_str("/proc/self/make-it-fail", on ? "1" : "0");
}

/*
 * MADV_COLLAPSE of @p (one PMD, written 0xa5) on both cores with every
 * PMD-order allocation failing: ENOMEM, and memory unchanged (@huge tells
 * whether it is PMD-mapped).
 */
static void check_alloc_failure(const char *what, char *p,
				bool (*huge)(void *, size_t, int, uint64_t))
{
	long long fails = rust_stat("madvise", "alloc_huge_page_fail");
	int rust_err, c_err;

	if (fail_thp_allocs(true)) {
		fail_thp_allocs(false);
		ksft_test_result_skip("%s allocation failure: no fail_page_alloc\n", what);
		return;
	}
	rust_err = collapse_on("rust", p, PMD_SZ);
	c_err = collapse_on("c", p, PMD_SZ);
	fail_thp_allocs(false);
	ksft_test_result(rust_err == ENOMEM && c_err == ENOMEM &&
			 rust_stat("madvise", "alloc_huge_page_fail") == fails + 1 &&
			 huge(p, PMD_SZ, 0, PMD_SZ) &&
			 p[0] == (char)0xa5 && p[PMD_SZ - 1] == (char)0xa5,
			 "rust: failed huge page allocation (%s) gives ENOMEM like C, memory unchanged (rust %s, c %s)\n",
			 what, strerror(rust_err), strerror(c_err));
}

static void test_alloc_failure(void)
{
	char *p = populated(1);

	check_alloc_failure("anon", p, check_huge_anon);
	munmap(p, PMD_SZ);
}

/* The same for shmem: the page cache keeps its small folios and their data. */
static void test_shmem_alloc_failure(void)
{
	int fd;
	char *p = shmem_populated(&fd, 1);

	check_alloc_failure("shmem", p, check_huge_shmem);
	munmap(p, PMD_SZ);
	close(fd);
}

#define CG_TEST CG_ROOT "/thp_collapse_core"

static void test_memcg_limit(void)
{
	long long fails = rust_stat("madvise", "cgroup_charge_fail");
	int rust_err, c_err;
	const char *why;
	char limit[32];
	unsigned long cur;
	char *p;

	if (cgroup_enter(CG_TEST, &why)) {
		ksft_test_result_fail("memcg limit: cgroup %s: %s: %s\n",
				      CG_TEST, why, strerror(errno));
		return;
	}
	p = populated(1);
	cur = read_num(CG_TEST "/memory.current");
	/* Room for small allocations, none for another huge page. */
	snprintf(limit, sizeof(limit), "%lu", cur + (1UL << 20));
	if (write_str(CG_TEST "/memory.max", limit))
		ksft_exit_fail_perror(CG_TEST "/memory.max");
	rust_err = collapse_on("rust", p, PMD_SZ);
	c_err = collapse_on("c", p, PMD_SZ);
	write_str(CG_TEST "/memory.max", "max");
	ksft_test_result(rust_err == EBUSY && c_err == EBUSY &&
			 rust_stat("madvise", "cgroup_charge_fail") == fails + 1 &&
			 check_huge_anon(p, PMD_SZ, 0, PMD_SZ) &&
			 p[0] == (char)0xa5 && p[PMD_SZ - 1] == (char)0xa5,
			 "rust: memcg charge failure gives EBUSY like C, memory unchanged (rust %s, c %s)\n",
			 strerror(rust_err), strerror(c_err));
	munmap(p, PMD_SZ);
	if (cgroup_leave(CG_TEST))
		ksft_print_msg("cannot remove %s: %s\n", CG_TEST, strerror(errno));
}

static void test_c_core(void)
{
	long long m = rust_stat_total("madvise");
	char *p = populated(NR_PMDS);
	int ret;

	collapse_require_core("c");
	ret = madvise(p, NR_PMDS * PMD_SZ, MADV_COLLAPSE);
	ksft_test_result(ret == 0 &&
			 check_huge_anon(p, NR_PMDS * PMD_SZ, NR_PMDS, PMD_SZ) &&
			 rust_stat_total("madvise") == m,
			 "c: madvise(MADV_COLLAPSE) collapses and the Rust counters stay still (ret %d)\n",
			 ret);
	ksft_test_result(p[0] == (char)0xa5 && p[NR_PMDS * PMD_SZ - 1] == (char)0xa5,
			 "c: contents preserved\n");
	munmap(p, NR_PMDS * PMD_SZ);
}

static void test_rust_khugepaged(void)
{
	unsigned long sleep_ms = read_num(KHUGEPAGED_SYSFS "scan_sleep_millisecs");
	long long ok = rust_stat("khugepaged", "succeed");
	char *p;
	int i;

	collapse_require_core("rust");
	/* khugepaged collapses VM_HUGEPAGE ranges in "madvise" mode. */
	set_str(THP_SYSFS "enabled", "madvise");
	write_num(KHUGEPAGED_SYSFS "scan_sleep_millisecs", 10);
	p = populated(1);
	/*
	 * Wait for the counter too: the VMA may have merged with a neighbour
	 * that is huge already, and smaps reports per VMA.
	 */
	for (i = 0; i < 200 && !(check_huge_anon(p, PMD_SZ, 1, PMD_SZ) &&
				 rust_stat("khugepaged", "succeed") > ok); i++)
		usleep(100000);
	ksft_test_result(check_huge_anon(p, PMD_SZ, 1, PMD_SZ) &&
			 rust_stat("khugepaged", "succeed") > ok &&
			 p[0] == (char)0xa5 && p[PMD_SZ - 1] == (char)0xa5,
			 "rust: khugepaged collapses through the Rust core (%lld new succeed)\n",
			 rust_stat("khugepaged", "succeed") - ok);
	write_num(KHUGEPAGED_SYSFS "scan_sleep_millisecs", sleep_ms);
	set_str(THP_SYSFS "enabled", "never");
	munmap(p, PMD_SZ);
}

int main(void)
{
	char orig[16], thp_enabled[32];

	collapse_test_start(orig, sizeof(orig), thp_enabled, sizeof(thp_enabled));
	ksft_set_plan(18);

	test_knob(orig);
	test_rust_madvise();
	test_rust_sub_pmd_range();
	test_rust_process_madvise();
	test_rust_ineligible();
	test_rust_no_page_table();
	test_rust_unfaulted();
	test_rust_already_huge();
	test_rust_shmem();
	test_alloc_failure();
	test_shmem_alloc_failure();
	test_memcg_limit();
	test_c_core();
	test_rust_khugepaged();

	collapse_set_core(orig);
	set_str(THP_SYSFS "enabled", thp_enabled);
	ksft_finished();
}
