// SPDX-License-Identifier: GPL-2.0
/*
 * process_madvise(MADV_COLLAPSE) flags: MADV_F_COLLAPSE_LIMITS, _DEFRAG and
 * _LIGHT (include/uapi/asm-generic/mman-common.h).
 *
 * Each flag is checked by what it promises, not by the return value alone:
 *  - bad input (an unknown flag, DEFRAG with LIGHT, a flag with another
 *    advice, any flag on the C core) fails with EINVAL and leaves the memory
 *    as it was: not collapsed, not zapped, the same bytes; a remote caller
 *    without CAP_SYS_NICE gets EPERM with a flag as without;
 *  - DEFRAG collapses, as flags = 0 does (MADV_COLLAPSE always could reclaim
 *    and compact);
 *  - LIMITS: with khugepaged's max_ptes_none = 0 a half-filled range is
 *    refused (EBUSY, counted as exceed_none_pte) where flags = 0 collapses
 *    it, and with max_ptes_shared = 0 a range shared with a child likewise
 *    (EINVAL, exceed_shared_pte); max_ptes_swap = 0 with a swapped page;
 *  - LIGHT never waits: a huge page allocation that fails gives EAGAIN
 *    (flags = 0: ENOMEM) without direct reclaim or compaction (allocstall_*
 *    and compact_stall unchanged); a swapped-out page, a file page not in
 *    the page cache and a dirty file page give EAGAIN (swap-in, read and
 *    writeback are waits), where flags = 0 swaps in, reads or writes back
 *    and collapses, and the page stays swapped out, uncached or dirty.
 * Every Rust case proves through the Rust core's counters that it decided.
 *
 * Run as root, with swap on, the fail_page_alloc fault injector in debugfs
 * and an XFS (or other large-folio) directory: thp_collapse_flags /mnt/xfs
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>

#include "kselftest.h"
#include "thp_collapse_util.h"
#include "thp_collapse_mem.h"

/* glibc's <sys/mman.h> may predate them: uapi/asm-generic/mman-common.h. */
#ifndef MADV_F_COLLAPSE_LIMITS
#define MADV_F_COLLAPSE_LIMITS	0x1
#define MADV_F_COLLAPSE_DEFRAG	0x2
#define MADV_F_COLLAPSE_LIGHT	0x4
#endif
#ifndef PIDFD_SELF
#define PIDFD_SELF -10000	/* PIDFD_SELF_THREAD, linux/pidfd.h */
#endif
#define KHUGEPAGED THP_SYSFS "khugepaged/"
#define FAIL_ALLOC "/sys/kernel/debug/fail_page_alloc/"

/* KPF_DIRTY of /proc/kpageflags (include/uapi/linux/kernel-page-flags.h). */
#define KPF_DIRTY_BIT 4

static int pagemap_fd, kpageflags_fd;
static char orig_core[16], orig_enabled[64];
static char orig_none[16], orig_shared[16], orig_swap[16];

/* The first line of @path, without its newline, into @buf; 0 or -1. */
static int read_str(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	bool ok = f && fgets(buf, len, f);

	if (f)
		fclose(f);
	if (!ok)
		return -1;
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* process_madvise(MADV_COLLAPSE) of [p, p + len) of this process. */
static long collapse(int pidfd, char *p, size_t len, int advice,
		     unsigned int flags)
{
	struct iovec iov = { .iov_base = p, .iov_len = len };

	return syscall(SYS_process_madvise, pidfd, &iov, 1, advice, flags);
}

/* A counter of /proc/vmstat. */
static long long vmstat_count(const char *name)
{
	char key[64];
	long long v, found = 0;
	FILE *f = fopen("/proc/vmstat", "r");

	if (!f)
		ksft_exit_fail_perror("/proc/vmstat");
	while (fscanf(f, "%63s %lld", key, &v) == 2)
		if (!strcmp(key, name))
			found = v;
	fclose(f);
	return found;
}

/* Direct reclaim and compaction entered so far, by any task. */
static long long stalls(void)
{
	return vmstat_count("allocstall_dma") + vmstat_count("allocstall_dma32") +
	       vmstat_count("allocstall_normal") + vmstat_count("allocstall_movable") +
	       vmstat_count("compact_stall");
}

/* Anon, shmem or file memory of one PMD, written with generation 1. */
static struct region populated(enum mem_type type, uint64_t *shadow)
{
	struct region r = mem_region(type, 1);

	if (mem_populate(&r, shadow, 1))
		ksft_exit_fail_perror("populate");
	return r;
}

/* Whether @r is as populated() left it: same bytes, not PMD-mapped. */
static bool untouched(struct region *r, const uint64_t *shadow)
{
	return !mem_bad_pages(r, shadow) && !mem_pmd_mapped(r);
}

static void restore(void)
{
	if (orig_none[0])
		write_str(KHUGEPAGED "max_ptes_none", orig_none);
	if (orig_shared[0])
		write_str(KHUGEPAGED "max_ptes_shared", orig_shared);
	if (orig_swap[0])
		write_str(KHUGEPAGED "max_ptes_swap", orig_swap);
	write_str(FAIL_ALLOC "probability", "0");
	write_str("/proc/self/make-it-fail", "0");
	if (orig_core[0])
		collapse_set_core(orig_core);
	if (orig_enabled[0])
		write_str(THP_SYSFS "enabled", orig_enabled);
}

/* ---- Bad input, on both cores ------------------------------------------ */

static void test_bad_input(const char *core, int pidfd)
{
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = populated(MEM_ANON, shadow);
	long long before = rust_stat_total("process_madvise");
	static const struct {
		const char *what;
		int advice;
		unsigned int flags;
	} bad[] = {
		{ "an unknown flag (0x8)", MADV_COLLAPSE, 0x8 },
		{ "an unknown flag (bit 31)", MADV_COLLAPSE, 1U << 31 },
		{ "DEFRAG with LIGHT", MADV_COLLAPSE,
		  MADV_F_COLLAPSE_DEFRAG | MADV_F_COLLAPSE_LIGHT },
		{ "LIGHT with MADV_DONTNEED", MADV_DONTNEED,
		  MADV_F_COLLAPSE_LIGHT },
		{ "LIMITS with MADV_PAGEOUT", MADV_PAGEOUT,
		  MADV_F_COLLAPSE_LIMITS },
	};
	size_t i;

	collapse_require_core(core);
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		long ret = collapse(pidfd, r.p, r.len, bad[i].advice,
				    bad[i].flags);
		int err = errno;

		ksft_test_result(ret == -1 && err == EINVAL &&
				 untouched(&r, shadow),
				 "%s: %s: EINVAL, memory unchanged (%ld, %s)\n",
				 core, bad[i].what, ret,
				 ret ? strerror(err) : "ok");
	}
	/* Rejected before any core looked at the range. */
	ksft_test_result(rust_stat_total("process_madvise") == before,
			 "%s: bad flags reach no collapse core\n", core);
	mem_region_free(&r);
}

/* Each flag on the C core: EINVAL (it implements none), as upstream. */
static void test_c_core(int pidfd)
{
	static const unsigned int flags[] = {
		MADV_F_COLLAPSE_LIMITS, MADV_F_COLLAPSE_DEFRAG,
		MADV_F_COLLAPSE_LIGHT,
	};
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = populated(MEM_ANON, shadow);
	bool ok = true;
	long ret;
	size_t i;

	collapse_require_core("c");
	for (i = 0; i < ARRAY_SIZE(flags); i++) {
		ret = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, flags[i]);
		if (ret != -1 || errno != EINVAL || !untouched(&r, shadow)) {
			ksft_print_msg("c: flag 0x%x: %ld (%s)\n", flags[i],
				       ret, strerror(errno));
			ok = false;
		}
	}
	ksft_test_result(ok, "c: every flag fails with EINVAL, memory unchanged\n");
	ret = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, 0);
	ksft_test_result(ret == (long)r.len && mem_pmd_mapped(&r) &&
			 !mem_bad_pages(&r, shadow),
			 "c: flags = 0 still collapses (%ld)\n", ret);
	mem_region_free(&r);
}

/*
 * A remote caller without CAP_SYS_NICE: a child that drops it (keeping
 * ptrace access as root) and asks to collapse the parent's memory gets
 * EPERM with a flag, as it does without one; the memory stays as it was.
 */
static void test_remote_unprivileged(void)
{
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = populated(MEM_ANON, shadow);
	pid_t parent = getpid(), pid;
	int status;

	collapse_require_core("rust");
	pid = fork();
	if (pid < 0)
		ksft_exit_fail_perror("fork");
	if (!pid) {
		struct __user_cap_header_struct hdr = {
			.version = _LINUX_CAPABILITY_VERSION_3,
		};
		struct __user_cap_data_struct data[2];
		int fd = syscall(SYS_pidfd_open, parent, 0);
		long r0, r1;
		int e0, e1;

		if (fd < 0 || syscall(SYS_capget, &hdr, data))
			_exit(10);
		data[0].effective &= ~(1U << CAP_SYS_NICE);
		data[0].permitted &= ~(1U << CAP_SYS_NICE);
		if (syscall(SYS_capset, &hdr, data))
			_exit(11);
		r0 = collapse(fd, r.p, r.len, MADV_COLLAPSE, 0);
		e0 = errno;
		r1 = collapse(fd, r.p, r.len, MADV_COLLAPSE,
			      MADV_F_COLLAPSE_LIGHT);
		e1 = errno;
		_exit(r0 == -1 && e0 == EPERM && r1 == -1 && e1 == EPERM ?
		      0 : 12);
	}
	if (waitpid(pid, &status, 0) != pid)
		ksft_exit_fail_perror("waitpid");
	ksft_test_result(WIFEXITED(status) && !WEXITSTATUS(status) &&
			 untouched(&r, shadow),
			 "rust: remote without CAP_SYS_NICE: EPERM with LIGHT as with flags = 0, memory unchanged (child exit %d)\n",
			 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	mem_region_free(&r);
}

/* ---- DEFRAG and LIMITS (Rust core) ------------------------------------- */

static void test_defrag(void)
{
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = populated(MEM_ANON, shadow);
	long long ok = rust_stat("process_madvise", "succeed");
	long ret;

	collapse_require_core("rust");
	/* PIDFD_SELF: the flags are valid on the caller's own process. */
	ret = collapse(PIDFD_SELF, r.p, r.len, MADV_COLLAPSE,
		       MADV_F_COLLAPSE_DEFRAG);
	ksft_test_result(ret == (long)r.len && mem_pmd_mapped(&r) &&
			 !mem_bad_pages(&r, shadow) &&
			 rust_stat("process_madvise", "succeed") == ok + 1,
			 "rust: DEFRAG through PIDFD_SELF collapses, counted (%ld, %s)\n",
			 ret, ret < 0 ? strerror(errno) : "ok");
	mem_region_free(&r);
}

/*
 * LIMITS with khugepaged's @knob at 0 against a range that breaks it:
 * refused with @want_errno and counted as @outcome; flags = 0 collapses the
 * same range. @setup makes the range break the limit and may fork.
 */
static void limits_case(int pidfd, const char *knob, const char *what,
			const char *outcome, int want_errno,
			void (*setup)(struct region *, uint64_t *))
{
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = mem_region(MEM_ANON, 1);
	long long refused = rust_stat("process_madvise", outcome);
	long long ok = rust_stat("process_madvise", "succeed");
	char path[128];
	long ret, ret0;
	int err;

	snprintf(path, sizeof(path), KHUGEPAGED "%s", knob);
	setup(&r, shadow);
	set_str(path, "0");
	ret = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, MADV_F_COLLAPSE_LIMITS);
	err = errno;
	ksft_test_result(ret == -1 && err == want_errno &&
			 !mem_pmd_mapped(&r) && !mem_bad_pages(&r, shadow) &&
			 rust_stat("process_madvise", outcome) == refused + 1,
			 "rust: LIMITS, %s = 0: %s refused with %s, counted as %s (%ld, %s)\n",
			 knob, what, strerror(want_errno), outcome, ret,
			 ret ? strerror(err) : "ok");
	ret0 = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, 0);
	ksft_test_result(ret0 == (long)r.len && mem_pmd_mapped(&r) &&
			 !mem_bad_pages(&r, shadow) &&
			 rust_stat("process_madvise", "succeed") == ok + 1,
			 "rust: %s: flags = 0 collapses it anyway (%ld, %s)\n",
			 what, ret0, ret0 < 0 ? strerror(errno) : "ok");
	mem_region_free(&r);
}

/* Every other page written, the rest never touched (none PTEs). */
static void half_filled(struct region *r, uint64_t *shadow)
{
	size_t pg;

	for (pg = 0; pg < PAGES_PER_PMD; pg++) {
		shadow[pg] = pg % 2 ? 0 : 1;
		if (!(pg % 2))
			mem_fill(r->p + pg * PAGE_SZ, pg, 1);
	}
}

/* Written, then shared with a child that sleeps until the parent exits. */
static void shared_with_child(struct region *r, uint64_t *shadow)
{
	pid_t pid;

	if (mem_populate(r, shadow, 1))
		ksft_exit_fail_perror("populate");
	pid = fork();
	if (pid < 0)
		ksft_exit_fail_perror("fork");
	if (!pid) {
		/* Keeps the pages shared; dies with the parent. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		pause();
		_exit(0);
	}
}

/* Written, then one page paged out to swap. */
static void one_swapped(struct region *r, uint64_t *shadow)
{
	if (mem_populate(r, shadow, 1))
		ksft_exit_fail_perror("populate");
	if (madvise(r->p + 7 * PAGE_SZ, PAGE_SZ, MADV_PAGEOUT) ||
	    !pagemap_is_swapped(pagemap_fd, r->p + 7 * PAGE_SZ))
		ksft_exit_fail_msg("MADV_PAGEOUT did not swap page 7 out\n");
}

static void test_limits(int pidfd)
{
	collapse_require_core("rust");
	limits_case(pidfd, "max_ptes_none", "a half-filled range",
		    "exceed_none_pte", EBUSY, half_filled);
	limits_case(pidfd, "max_ptes_shared", "a range shared with a child",
		    "exceed_shared_pte", EINVAL, shared_with_child);
	limits_case(pidfd, "max_ptes_swap", "a range with a swapped page",
		    "exceed_swap_pte", EINVAL, one_swapped);
	write_str(KHUGEPAGED "max_ptes_none", orig_none);
	write_str(KHUGEPAGED "max_ptes_shared", orig_shared);
	write_str(KHUGEPAGED "max_ptes_swap", orig_swap);
}

/* ---- LIGHT (Rust core) ------------------------------------------------- */

/* The huge page allocation of this task fails (fail_page_alloc). */
static void fail_huge_allocs(bool on)
{
	if (on) {
		set_str(FAIL_ALLOC "task-filter", "Y");
		set_str(FAIL_ALLOC "min-order", "9");
		set_str(FAIL_ALLOC "ignore-gfp-wait", "N");
		set_str(FAIL_ALLOC "ignore-gfp-highmem", "N");
		set_str(FAIL_ALLOC "times", "-1");
		set_str(FAIL_ALLOC "interval", "1");
		set_str(FAIL_ALLOC "space", "0");
		set_str(FAIL_ALLOC "verbose", "0");
		set_str(FAIL_ALLOC "probability", "100");
	}
	set_str("/proc/self/make-it-fail", on ? "1" : "0");
	if (!on)
		set_str(FAIL_ALLOC "probability", "0");
}

static void test_light_alloc(int pidfd)
{
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = populated(MEM_ANON, shadow);
	long long wb = rust_stat("process_madvise", "would_block");
	long long af = rust_stat("process_madvise", "alloc_huge_page_fail");
	long long st;
	long ret, ret0;
	int err, err0;

	collapse_require_core("rust");
	fail_huge_allocs(true);
	st = stalls();
	ret = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, MADV_F_COLLAPSE_LIGHT);
	err = errno;
	st = stalls() - st;
	ret0 = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, 0);
	err0 = errno;
	fail_huge_allocs(false);
	ksft_test_result(ret == -1 && err == EAGAIN && !st &&
			 untouched(&r, shadow) &&
			 rust_stat("process_madvise", "would_block") == wb + 1,
			 "rust: LIGHT, no huge page: EAGAIN, no reclaim or compaction (%lld stalls), counted as would_block (%ld, %s)\n",
			 st, ret, ret ? strerror(err) : "ok");
	ksft_test_result(ret0 == -1 && err0 == ENOMEM && untouched(&r, shadow) &&
			 rust_stat("process_madvise", "alloc_huge_page_fail") == af + 1,
			 "rust: flags = 0, no huge page: ENOMEM, alloc_huge_page_fail (%ld, %s)\n",
			 ret0, ret0 ? strerror(err0) : "ok");
	mem_region_free(&r);
}

/*
 * LIGHT against @r, which needs a wait (@what): EAGAIN, counted as
 * @outcome, quickly, with @still(r) true afterwards (the page still needs
 * it); then flags = 0 waits and collapses.
 */
static void light_case(int pidfd, struct region *r, const uint64_t *shadow,
		       const char *what, const char *outcome,
		       bool (*still)(struct region *))
{
	long long n = rust_stat("process_madvise", outcome);
	long long ok = rust_stat("process_madvise", "succeed");
	double t;
	long ret, ret0;
	int err;

	t = now();
	ret = collapse(pidfd, r->p, r->len, MADV_COLLAPSE,
		       MADV_F_COLLAPSE_LIGHT);
	err = errno;
	t = now() - t;
	ksft_test_result(ret == -1 && err == EAGAIN && still(r) &&
			 !mem_pmd_mapped(r) && !mem_bad_pages(r, shadow) &&
			 rust_stat("process_madvise", outcome) == n + 1,
			 "rust: LIGHT, %s: EAGAIN in %.0f ms without the wait, counted as %s (%ld, %s)\n",
			 what, t * 1000, outcome, ret, ret ? strerror(err) : "ok");
	ret0 = collapse(pidfd, r->p, r->len, MADV_COLLAPSE, 0);
	ksft_test_result(ret0 == (long)r->len && mem_pmd_mapped(r) &&
			 !mem_bad_pages(r, shadow) &&
			 rust_stat("process_madvise", "succeed") == ok + 1,
			 "rust: %s: flags = 0 waits and collapses (%ld, %s)\n",
			 what, ret0, ret0 < 0 ? strerror(errno) : "ok");
}

static bool page7_swapped(struct region *r)
{
	return pagemap_is_swapped(pagemap_fd, r->p + 7 * PAGE_SZ);
}

/* Page 9 of the file is not in the page cache (mincore). */
static bool page9_uncached(struct region *r)
{
	unsigned char vec;

	return !mincore(r->p + 9 * PAGE_SZ, PAGE_SZ, &vec) && !(vec & 1);
}

/* The page cache page mapped at page 5 of @r is dirty (/proc/kpageflags). */
static bool page5_dirty(struct region *r)
{
	unsigned long pfn = pagemap_get_pfn(pagemap_fd, r->p + 5 * PAGE_SZ);
	uint64_t flags;

	return pfn != -1UL && !pageflags_get(pfn, kpageflags_fd, &flags) &&
	       (flags & (1ULL << KPF_DIRTY_BIT));
}

static void test_light_waits(int pidfd)
{
	uint64_t shadow[PAGES_PER_PMD];
	struct region r;
	char buf[PAGE_SZ];

	collapse_require_core("rust");

	/* Anon with a page in swap: a swap-in waits for I/O. */
	r = mem_region(MEM_ANON, 1);
	one_swapped(&r, shadow);
	light_case(pidfd, &r, shadow, "anon, a page in swap", "would_block",
		   page7_swapped);
	mem_region_free(&r);

	/* A file page not in the page cache: a read waits for I/O. */
	r = mem_region(MEM_FILE, 1);
	if (mem_populate(&r, shadow, 1) || fsync(r.fd))
		ksft_exit_fail_perror("populate");
	if (munmap(r.p + 9 * PAGE_SZ, PAGE_SZ) ||
	    posix_fadvise(r.fd, 9 * PAGE_SZ, PAGE_SZ, POSIX_FADV_DONTNEED) ||
	    mmap(r.p + 9 * PAGE_SZ, PAGE_SZ, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_FIXED, r.fd, 9 * PAGE_SZ) == MAP_FAILED ||
	    madvise(r.p, r.len, MADV_HUGEPAGE))
		ksft_exit_fail_perror("evict page 9");
	if (!page9_uncached(&r))
		ksft_exit_fail_msg("page 9 is still in the page cache\n");
	light_case(pidfd, &r, shadow, "xfs, a page not in the page cache",
		   "would_block", page9_uncached);
	mem_region_free(&r);

	/* A dirty file page: writeback waits for I/O. */
	r = mem_region(MEM_FILE, 1);
	if (mem_populate(&r, shadow, 1) || fsync(r.fd))
		ksft_exit_fail_perror("populate");
	mem_fill(buf, 5, 2);
	shadow[5] = 2;
	if (pwrite(r.fd, buf, PAGE_SZ, 5 * PAGE_SZ) != PAGE_SZ)
		ksft_exit_fail_perror("pwrite");
	light_case(pidfd, &r, shadow, "xfs, a dirty page",
		   "page_dirty_or_writeback", page5_dirty);
	mem_region_free(&r);
}

int main(int argc, char **argv)
{
	cpu_set_t cpu;
	int pidfd;

	if (argc > 1)
		mem_file_dir = argv[1];
	collapse_test_start(orig_core, sizeof(orig_core), orig_enabled,
			    sizeof(orig_enabled));
	if (read_str(KHUGEPAGED "max_ptes_none", orig_none, sizeof(orig_none)) ||
	    read_str(KHUGEPAGED "max_ptes_shared", orig_shared,
		     sizeof(orig_shared)) ||
	    read_str(KHUGEPAGED "max_ptes_swap", orig_swap, sizeof(orig_swap)))
		ksft_exit_fail_msg("cannot read the khugepaged tunables\n");
	atexit(restore);
	if (access(FAIL_ALLOC "probability", W_OK))
		ksft_exit_fail_msg("no fail_page_alloc in debugfs\n");
	/*
	 * One CPU: LIGHT drains only the calling CPU's LRU batches, so a page
	 * this test just wrote must sit in that CPU's batch, not another's
	 * (where LIGHT would fail on page_lru instead of the wait it checks).
	 */
	CPU_ZERO(&cpu);
	CPU_SET(0, &cpu);
	if (sched_setaffinity(0, sizeof(cpu), &cpu))
		ksft_exit_fail_perror("sched_setaffinity");
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
	kpageflags_fd = open("/proc/kpageflags", O_RDONLY);
	pidfd = syscall(SYS_pidfd_open, getpid(), 0);
	if (pagemap_fd < 0 || kpageflags_fd < 0 || pidfd < 0)
		ksft_exit_fail_perror("open");

	ksft_set_plan(2 * 6 + 2 + 1 + 1 + 3 * 2 + 2 + 3 * 2);
	test_bad_input("c", pidfd);
	test_bad_input("rust", pidfd);
	test_c_core(pidfd);
	test_remote_unprivileged();
	test_defrag();
	test_limits(pidfd);
	test_light_alloc(pidfd);
	test_light_waits(pidfd);
	ksft_finished();
}
