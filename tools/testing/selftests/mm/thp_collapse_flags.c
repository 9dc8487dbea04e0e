// SPDX-License-Identifier: GPL-2.0
/*
 * process_madvise(MADV_COLLAPSE) flags: MADV_F_COLLAPSE_LIMITS, _DEFRAG,
 * _LIGHT and _ORDER(n) (include/uapi/asm-generic/mman-common.h).
 *
 * Each flag is checked by what it promises, not by the return value alone:
 *  - bad input (an unknown flag, DEFRAG with LIGHT, a flag with another
 *    advice, any flag on the C core) fails with EINVAL and leaves the memory
 *    as it was: not collapsed, not zapped, the same bytes; a remote caller
 *    without CAP_SYS_NICE gets EPERM with a flag as without;
 *  - DEFRAG collapses, and allocates its huge page with __GFP_RETRY_MAYFAIL
 *    (reclaim and compaction retried while they make progress), which
 *    flags = 0 does not (kmem:mm_page_alloc's gfp_flags);
 *  - LIMITS: with khugepaged's max_ptes_none = 0 a half-filled range is
 *    refused (EBUSY, counted as exceed_none_pte) where flags = 0 collapses
 *    it, and with max_ptes_shared = 0 a range shared with a child likewise
 *    (EINVAL, exceed_shared_pte); max_ptes_swap = 0 with a swapped page;
 *  - LIGHT never waits: a huge page allocation that fails gives EAGAIN
 *    (flags = 0: ENOMEM) without direct reclaim or compaction (allocstall_*
 *    and compact_stall unchanged); a swapped-out page, a file page not in
 *    the page cache and a dirty file page give EAGAIN (swap-in, read and
 *    writeback are waits), where flags = 0 swaps in, reads or writes back
 *    and collapses, and the page stays swapped out, uncached or dirty; in a
 *    memory cgroup at its limit, LIGHT gives EAGAIN without reclaiming in it
 *    (memory.stat pgscan unchanged) where flags = 0 reclaims;
 *  - ORDER(4): 64 KiB collapses of anonymous memory leave 64 KiB folios
 *    (/proc/kpageflags: a compound head every 16 pages, tails between, on
 *    16-aligned pfns), the bytes intact, the range not PMD-mapped, the
 *    64 KiB mTHP counter moved; asked again, nothing is allocated; ORDER(1)
 *    and ORDER(10) are bad input, and so are ORDER(4) on shmem, on a file
 *    and where the PMD range around the block leaves the VMA (the collapse
 *    takes its page table away for a while).
 *  - the mm_collapse_range tracepoint: one event per range with its address,
 *    order, caller, flags and result, for a collapsed, an already huge and a
 *    failed range, the time under the mmap write lock within the range's time
 *    and only where a huge page was installed.
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
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
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
#ifndef MADV_F_COLLAPSE_ORDER
#define MADV_F_COLLAPSE_ORDER_SHIFT	8
#define MADV_F_COLLAPSE_ORDER_MASK	0x3f00
#define MADV_F_COLLAPSE_ORDER(n)	\
	(((n) << MADV_F_COLLAPSE_ORDER_SHIFT) & MADV_F_COLLAPSE_ORDER_MASK)
#endif
#ifndef PIDFD_SELF
#define PIDFD_SELF -10000	/* PIDFD_SELF_THREAD, linux/pidfd.h */
#endif
#define KHUGEPAGED THP_SYSFS "khugepaged/"
#define FAIL_ALLOC "/sys/kernel/debug/fail_page_alloc/"
#define TRACEFS "/sys/kernel/tracing/"
#define RANGE_EVENT TRACEFS "events/huge_memory/mm_collapse_range/enable"
#define RANGE_FILTER TRACEFS "events/huge_memory/mm_collapse_range/filter"
#define ALLOC_EVENT TRACEFS "events/kmem/mm_page_alloc/"

/* KPF_DIRTY of /proc/kpageflags (include/uapi/linux/kernel-page-flags.h). */
#define KPF_DIRTY_BIT 4

static int pagemap_fd, kpageflags_fd;
static char orig_core[16], orig_enabled[64];
/*
 * kmem:mm_page_alloc as the first DEFRAG case found it: the guest init keeps
 * it on with a filter that matches nothing (scripts/guest/init), so that
 * tracing this process's allocations swaps the filter only and never
 * patches the page allocator's hot tracepoint call.
 */
static char orig_alloc_enable[8], orig_alloc_filter[256];
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

/* Puts kmem:mm_page_alloc back as huge_alloc_events() found it. */
static void alloc_events_restore(void)
{
	if (!orig_alloc_enable[0])
		return;
	write_str(ALLOC_EVENT "filter",
		  strcmp(orig_alloc_filter, "none") ? orig_alloc_filter : "0");
	if (strcmp(orig_alloc_enable, "1"))
		write_str(ALLOC_EVENT "enable", "0");
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
	/* The trace events a case may have left on, if it ended early. */
	alloc_events_restore();
	write_str(RANGE_EVENT, "0");
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
		{ "ORDER(1)", MADV_COLLAPSE, MADV_F_COLLAPSE_ORDER(1) },
		{ "ORDER(10)", MADV_COLLAPSE, MADV_F_COLLAPSE_ORDER(10) },
		{ "ORDER(4) with MADV_COLD", MADV_COLD,
		  MADV_F_COLLAPSE_ORDER(4) },
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
		MADV_F_COLLAPSE_LIGHT, MADV_F_COLLAPSE_ORDER(4),
		MADV_F_COLLAPSE_ORDER(9),
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

/* ---- ORDER (Rust core) ------------------------------------------------- */

#define KPF_HEAD_BIT 15		/* KPF_COMPOUND_HEAD */
#define KPF_TAIL_BIT 16		/* KPF_COMPOUND_TAIL */

/* The /proc/kpageflags of the page mapped at @p, or 0 and *ok = false. */
static uint64_t kpf_at(char *p, bool *ok)
{
	unsigned long pfn = pagemap_get_pfn(pagemap_fd, p);
	uint64_t flags = 0;

	if (pfn == -1UL || pageflags_get(pfn, kpageflags_fd, &flags))
		*ok = false;
	return flags;
}

/*
 * Whether the @nr pages from @p are mapped by folios of exactly @order pages
 * each, one per naturally aligned block: a compound head on a pfn aligned to
 * the folio, tails on the next pfns, and the page after the block not a tail
 * of it (a head, or a small page).
 */
static bool mapped_by_order(char *p, size_t nr, unsigned int order)
{
	size_t per = 1UL << order, pg, k;
	uint64_t next;
	bool ok = true;

	for (pg = 0; pg < nr; pg += per) {
		unsigned long head = pagemap_get_pfn(pagemap_fd, p + pg * PAGE_SZ);

		if (head == -1UL || head % per ||
		    !(kpf_at(p + pg * PAGE_SZ, &ok) & (1ULL << KPF_HEAD_BIT)))
			return false;
		for (k = 1; k < per; k++) {
			char *q = p + (pg + k) * PAGE_SZ;

			if (pagemap_get_pfn(pagemap_fd, q) != head + k ||
			    !(kpf_at(q, &ok) & (1ULL << KPF_TAIL_BIT)))
				return false;
		}
		/* The folio ends here: the next pfn is not its tail. */
		if (!pageflags_get(head + per, kpageflags_fd, &next) &&
		    (next & (1ULL << KPF_TAIL_BIT)))
			return false;
	}
	return ok;
}

/* Whether none of the @nr pages from @p is part of a large folio. */
static bool all_small(char *p, size_t nr)
{
	bool ok = true;
	size_t pg;

	for (pg = 0; pg < nr; pg++)
		if (kpf_at(p + pg * PAGE_SZ, &ok) &
		    ((1ULL << KPF_HEAD_BIT) | (1ULL << KPF_TAIL_BIT)))
			return false;
	return ok;
}

#define MTHP_64K THP_SYSFS "hugepages-64kB/stats/collapse_alloc"

static long long read_count(const char *path)
{
	char buf[32];

	if (read_str(path, buf, sizeof(buf)))
		ksft_exit_fail_msg("cannot read %s\n", path);
	return atoll(buf);
}

static void test_order(int pidfd)
{
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = populated(MEM_ANON, shadow);
	/* Blocks 2 to 5 of 64 KiB (pages 32 to 95) of the PMD range. */
	char *blk = r.p + 32 * PAGE_SZ;
	size_t len = 64 * PAGE_SZ;
	long long ok = rust_stat("process_madvise", "succeed");
	long long done = rust_stat("process_madvise", "pmd_mapped");
	long long allocs = read_count(MTHP_64K);
	long ret;

	collapse_require_core("rust");
	ret = collapse(pidfd, blk, len, MADV_COLLAPSE,
		       MADV_F_COLLAPSE_ORDER(4));
	ksft_test_result(ret == (long)len && mapped_by_order(blk, 64, 4) &&
			 all_small(r.p, 32) && all_small(blk + len, 32) &&
			 !mem_bad_pages(&r, shadow) && !mem_pmd_mapped(&r) &&
			 read_count(MTHP_64K) == allocs + 4 &&
			 rust_stat("process_madvise", "succeed") == ok + 1,
			 "rust: ORDER(4): four 64 KiB folios on aligned pfns, their neighbours small, bytes intact, 64 KiB collapse_alloc +%lld (%ld, %s)\n",
			 read_count(MTHP_64K) - allocs, ret,
			 ret < 0 ? strerror(errno) : "ok");
	/* Asked again: every block is in place, nothing to allocate. */
	allocs = read_count(MTHP_64K);
	ret = collapse(pidfd, blk, len, MADV_COLLAPSE,
		       MADV_F_COLLAPSE_ORDER(4));
	ksft_test_result(ret == (long)len && mapped_by_order(blk, 64, 4) &&
			 read_count(MTHP_64K) == allocs &&
			 rust_stat("process_madvise", "pmd_mapped") == done + 1 &&
			 !mem_bad_pages(&r, shadow),
			 "rust: ORDER(4) again: in place, nothing allocated, counted as pmd_mapped (%ld)\n",
			 ret);
	/* A PMD-sized collapse of the whole range still works over them. */
	ret = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, 0);
	ksft_test_result(ret == (long)r.len && mem_pmd_mapped(&r) &&
			 !mem_bad_pages(&r, shadow),
			 "rust: flags = 0 then collapses the whole PMD range over the 64 KiB folios (%ld)\n",
			 ret);
	mem_region_free(&r);
}

/*
 * ORDER(4) where it cannot apply: EINVAL, the memory as it was; counted as
 * @outcome by the Rust core if it got as far as a range (NULL: refused
 * before, as bad input).
 */
static void order_refused(int pidfd, struct region *r, const uint64_t *shadow,
			  const char *what, const char *outcome)
{
	long long n = outcome ? rust_stat("process_madvise", outcome) : 0;
	long ret = collapse(pidfd, r->p, 16 * PAGE_SZ, MADV_COLLAPSE,
			    MADV_F_COLLAPSE_ORDER(4));
	int err = errno;

	ksft_test_result(ret == -1 && err == EINVAL &&
			 !mem_bad_pages(r, shadow) && all_small(r->p, 16) &&
			 (!outcome ||
			  rust_stat("process_madvise", outcome) == n + 1),
			 "rust: ORDER(4) %s: EINVAL, memory unchanged%s%s (%ld, %s)\n",
			 what, outcome ? ", counted as " : "",
			 outcome ? outcome : "", ret, ret ? strerror(err) : "ok");
}

static void test_order_refused(int pidfd)
{
	uint64_t shadow[PAGES_PER_PMD];
	struct region r;

	collapse_require_core("rust");
	r = populated(MEM_SHMEM, shadow);
	order_refused(pidfd, &r, shadow, "on shmem", NULL);
	mem_region_free(&r);
	r = populated(MEM_FILE, shadow);
	order_refused(pidfd, &r, shadow, "on a file", NULL);
	mem_region_free(&r);
	/* The VMA ends one page short of the PMD range: its table is shared. */
	r = populated(MEM_ANON, shadow);
	if (munmap(r.p + r.len - PAGE_SZ, PAGE_SZ))
		ksft_exit_fail_perror("munmap");
	r.len -= PAGE_SZ;
	order_refused(pidfd, &r, shadow, "with the PMD range leaving the VMA",
		      "address_range");
	mem_region_free(&r);
}

/* ---- The mm_collapse_range tracepoint (Rust core) ----------------------- */

static void fail_huge_allocs(bool on);

struct range_event {
	unsigned long addr;
	unsigned int order, flags;
	char caller[32], status[48];
	unsigned long long time_ns, write_ns;
};

static void range_events(bool on)
{
	char filter[48];

	if (access(TRACEFS "trace", F_OK) &&
	    mount("nodev", TRACEFS, "tracefs", 0, NULL))
		ksft_exit_fail_perror("mount tracefs");
	/*
	 * A filter on the PID, not set_event_pid, which registers scheduler
	 * probes (see trace_collapse_events() in thp_collapse_anon.c).
	 */
	snprintf(filter, sizeof(filter), "common_pid == %d", getpid());
	/* The filter is in place for as long as the event is on. */
	if (on) {
		set_str(RANGE_FILTER, filter);
		set_str(RANGE_EVENT, "1");
	} else {
		set_str(RANGE_EVENT, "0");
		set_str(RANGE_FILTER, "0");
	}
	set_str(TRACEFS "tracing_on", on ? "1" : "0");
}

/* Empties the trace buffer. */
static void trace_clear(void)
{
	int fd = open(TRACEFS "trace", O_WRONLY | O_TRUNC);

	if (fd >= 0)
		close(fd);
}

/* The mm_collapse_range events in the trace buffer, which it empties. */
static int range_events_take(struct range_event *ev, int max)
{
	FILE *f = fopen(TRACEFS "trace", "r");
	char line[512];
	int n = 0;

	if (!f)
		ksft_exit_fail_perror(TRACEFS "trace");
	while (n < max && fgets(line, sizeof(line), f)) {
		char *p = strstr(line, "mm_collapse_range: ");
		struct range_event *e = &ev[n];

		if (!p || line[0] == '#')
			continue;
		if (sscanf(p,
			   "mm_collapse_range: mm=%*[^,], addr=0x%lx, order=%u, caller=%31[^,], flags=0x%x, status=%47[^,], time_ns=%llu, mmap_write_ns=%llu",
			   &e->addr, &e->order, e->caller, &e->flags,
			   e->status, &e->time_ns, &e->write_ns) == 7)
			n++;
		else
			ksft_print_msg("unparsed event: %s", p);
	}
	fclose(f);
	trace_clear();
	return n;
}

/* One event, for @p, with these fields; the times as a huge page install has them or not. */
static bool range_event_is(const struct range_event *e, int n, char *p,
			   unsigned int order, const char *caller,
			   unsigned int flags, const char *status, bool wrote)
{
	if (n != 1)
		return false;
	return e->addr == (unsigned long)p && e->order == order &&
	       !strcmp(e->caller, caller) && e->flags == flags &&
	       !strcmp(e->status, status) && e->time_ns >= e->write_ns &&
	       (wrote ? e->write_ns > 0 : e->write_ns == 0);
}

static void print_range_event(const char *what, const struct range_event *e,
			      int n)
{
	if (!n) {
		ksft_print_msg("%s: no event\n", what);
		return;
	}
	ksft_print_msg("%s: %d event(s); first: addr=0x%lx order=%u caller=%s flags=0x%x\n",
		       what, n, e->addr, e->order, e->caller, e->flags);
	ksft_print_msg("%s: status=%s time_ns=%llu mmap_write_ns=%llu\n", what,
		       e->status, e->time_ns, e->write_ns);
}

static void test_range_tracepoint(int pidfd)
{
	uint64_t shadow[PAGES_PER_PMD];
	struct region r = populated(MEM_ANON, shadow);
	struct range_event ev[8];
	bool ok;
	long ret;
	int n;

	collapse_require_core("rust");
	/*
	 * The switch under the page-table locks with the mmap lock held for
	 * write, so that a collapse that went through shows time under it (the
	 * default, "read", shows none where the switch goes through).
	 */
	ret = collapse_set_switch("ptl");
	if (ret)
		ksft_exit_fail_msg("rust_switch ptl: %s\n", strerror((int)ret));
	range_events(true);
	range_events_take(ev, 8);

	/* Collapsed, through process_madvise() with LIMITS. */
	ret = collapse(pidfd, r.p, r.len, MADV_COLLAPSE,
		       MADV_F_COLLAPSE_LIMITS);
	n = range_events_take(ev, 8);
	ok = ret == (long)r.len &&
	     range_event_is(ev, n, r.p, 9, "process_madvise",
			    MADV_F_COLLAPSE_LIMITS, "succeeded", true);
	if (!ok)
		print_range_event("collapsed", ev, n);
	ksft_test_result(ok,
			 "rust: mm_collapse_range, a collapsed range: its address, order 9, process_madvise, flags 0x1, succeeded, %llu of %llu ns under the mmap write lock (rust_switch ptl)\n",
			 n ? ev[0].write_ns : 0, n ? ev[0].time_ns : 0);

	/* Already huge, through madvise(). */
	ret = madvise(r.p, r.len, MADV_COLLAPSE);
	n = range_events_take(ev, 8);
	ok = !ret && range_event_is(ev, n, r.p, 9, "madvise", 0,
				    "page_pmd_mapped", false);
	if (!ok)
		print_range_event("already huge", ev, n);
	ksft_test_result(ok,
			 "rust: mm_collapse_range, an already huge range: madvise, flags 0, page_pmd_mapped, no time under the mmap write lock\n");
	mem_region_free(&r);

	/* Failed: LIGHT without a huge page to allocate. */
	r = populated(MEM_ANON, shadow);
	fail_huge_allocs(true);
	ret = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, MADV_F_COLLAPSE_LIGHT);
	fail_huge_allocs(false);
	n = range_events_take(ev, 8);
	ok = ret == -1 && range_event_is(ev, n, r.p, 9, "process_madvise",
					 MADV_F_COLLAPSE_LIGHT,
					 "would_block", false);
	if (!ok)
		print_range_event("failed", ev, n);
	ksft_test_result(ok,
			 "rust: mm_collapse_range, a failed range: flags 0x4, would_block, no time under the mmap write lock\n");

	/* An mTHP-sized collapse: the event is at the part of the range asked for. */
	ret = collapse(pidfd, r.p + 16 * PAGE_SZ, 16 * PAGE_SZ, MADV_COLLAPSE,
		       MADV_F_COLLAPSE_ORDER(4));
	n = range_events_take(ev, 8);
	ok = ret == 16 * PAGE_SZ &&
	     range_event_is(ev, n, r.p + 16 * PAGE_SZ, 4, "process_madvise",
			    MADV_F_COLLAPSE_ORDER(4), "succeeded", true);
	if (!ok)
		print_range_event("order 4", ev, n);
	ksft_test_result(ok,
			 "rust: mm_collapse_range, a 64 KiB collapse: at the block, order 4, flags 0x400, succeeded\n");
	range_events(false);
	collapse_set_switch("read");
	mem_region_free(&r);
}

/* ---- DEFRAG's allocation (Rust core) ------------------------------------ */

/* Traces this process's order-9 page allocations (kmem:mm_page_alloc), or stops. */
static void huge_alloc_events(bool on)
{
	char filter[64];

	range_events(on);
	if (!on) {
		alloc_events_restore();
		trace_clear();
		return;
	}
	if (!orig_alloc_enable[0] &&
	    (read_str(ALLOC_EVENT "enable", orig_alloc_enable,
		      sizeof(orig_alloc_enable)) ||
	     read_str(ALLOC_EVENT "filter", orig_alloc_filter,
		      sizeof(orig_alloc_filter))))
		ksft_exit_fail_perror(ALLOC_EVENT);
	snprintf(filter, sizeof(filter), "order == 9 && common_pid == %d",
		 getpid());
	set_str(ALLOC_EVENT "filter", filter);
	if (strcmp(orig_alloc_enable, "1"))
		set_str(ALLOC_EVENT "enable", "1");
	trace_clear();
}

/*
 * The order-9 allocations in the trace buffer, which it empties; *@retrying
 * of them had __GFP_RETRY_MAYFAIL.
 */
static int huge_allocs_take(int *retrying)
{
	FILE *f = fopen(TRACEFS "trace", "r");
	char line[512];
	int n = 0;

	if (!f)
		ksft_exit_fail_perror(TRACEFS "trace");
	*retrying = 0;
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#' || !strstr(line, "mm_page_alloc:") ||
		    !strstr(line, " order=9 "))
			continue;
		n++;
		*retrying += !!strstr(line, "__GFP_RETRY_MAYFAIL");
	}
	fclose(f);
	trace_clear();
	return n;
}

/*
 * DEFRAG allocates the huge page with __GFP_RETRY_MAYFAIL: the allocator
 * retries reclaim and compaction for as long as they make progress, where
 * flags = 0 (GFP_TRANSHUGE) gives up after one round at this order.
 */
static void test_defrag_gfp(int pidfd)
{
	uint64_t shadow[PAGES_PER_PMD];
	long long ok = rust_stat("process_madvise", "succeed");
	struct region r = populated(MEM_ANON, shadow);
	int n, retrying, n0, retrying0;
	long ret, ret0;
	bool huge;

	collapse_require_core("rust");
	huge_alloc_events(true);
	ret = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, MADV_F_COLLAPSE_DEFRAG);
	n = huge_allocs_take(&retrying);
	huge = mem_pmd_mapped(&r);
	ksft_test_result(ret == (long)r.len && n >= 1 && retrying == n && huge &&
			 !mem_bad_pages(&r, shadow) &&
			 rust_stat("process_madvise", "succeed") == ok + 1,
			 "rust: DEFRAG allocates its huge page with __GFP_RETRY_MAYFAIL (%d of %d order-9 allocations), collapsed (%d)\n",
			 retrying, n, huge);
	mem_region_free(&r);

	r = populated(MEM_ANON, shadow);
	/* Whatever filling it in allocated is not the collapse's. */
	huge_allocs_take(&retrying0);
	ret0 = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, 0);
	n0 = huge_allocs_take(&retrying0);
	huge_alloc_events(false);
	huge = mem_pmd_mapped(&r);
	ksft_test_result(ret0 == (long)r.len && n0 >= 1 && !retrying0 && huge &&
			 !mem_bad_pages(&r, shadow) &&
			 rust_stat("process_madvise", "succeed") == ok + 2,
			 "rust: flags = 0 allocates without it (%d of %d order-9 allocations), collapsed (%d)\n",
			 retrying0, n0, huge);
	mem_region_free(&r);
}

/* PMD ranges of the request that test_defrag_killed() kills. */
#define NR_KILL 64

/*
 * A child collapses NR_KILL PMDs of its own in one process_madvise() with
 * @flags, on another CPU than this one, and is killed (SIGKILL) once the Rust
 * core has collapsed two of them; returns how many ranges the request
 * reached in all (any outcome: a killed task's allocation may give up), or
 * -1 if the request ended before the kill landed (nothing is then shown).
 */
static long long killed_request(unsigned int flags)
{
	long long ok0 = rust_stat("process_madvise", "succeed");
	long long all0 = rust_stat_total("process_madvise");
	int *returned;
	int ready[2], status, i;
	cpu_set_t other;
	pid_t pid;
	char c;

	returned = mmap(NULL, PAGE_SZ, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (returned == MAP_FAILED || pipe(ready))
		ksft_exit_fail_perror("mmap, pipe");
	__atomic_store_n(returned, 0, __ATOMIC_RELAXED);
	pid = fork();
	if (pid < 0)
		ksft_exit_fail_perror("fork");
	if (!pid) {
		struct region r = mem_region(MEM_ANON, NR_KILL);
		int self = syscall(SYS_pidfd_open, getpid(), 0);

		/* Off the parent's CPU (0), which must run to kill it. */
		CPU_ZERO(&other);
		CPU_SET(1, &other);
		sched_setaffinity(0, sizeof(other), &other);
		memset(r.p, 0x5a, r.len);
		if (self < 0 || write(ready[1], "r", 1) != 1)
			_exit(1);
		collapse(self, r.p, r.len, MADV_COLLAPSE, flags);
		__atomic_store_n(returned, 1, __ATOMIC_RELEASE);
		_exit(0);
	}
	close(ready[1]);
	if (read(ready[0], &c, 1) != 1)
		ksft_exit_fail_msg("the child did not start\n");
	close(ready[0]);
	for (i = 0; i < 20000; i++) {
		if (rust_stat("process_madvise", "succeed") - ok0 >= 2)
			break;
		usleep(500);
	}
	kill(pid, SIGKILL);
	if (waitpid(pid, &status, 0) != pid)
		ksft_exit_fail_perror("waitpid");
	i = __atomic_load_n(returned, __ATOMIC_ACQUIRE);
	munmap(returned, PAGE_SZ);
	if (i || !WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
		return -1;
	return rust_stat_total("process_madvise") - all0;
}

/*
 * A DEFRAG request may retry reclaim and compaction for each of its ranges:
 * killed, it stops between ranges (it reached fewer than all). flags = 0
 * runs on to the end, as upstream's MADV_COLLAPSE does. Needs two CPUs.
 */
static void test_defrag_killed(void)
{
	long long defrag, plain;

	collapse_require_core("rust");
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		ksft_exit_fail_msg("%s needs two CPUs\n", __func__);
	defrag = killed_request(MADV_F_COLLAPSE_DEFRAG);
	plain = killed_request(0);
	ksft_test_result(defrag >= 2 && defrag < NR_KILL,
			 "rust: a killed DEFRAG request stops between ranges (%lld of %d ranges reached; -1: it ended before the kill)\n",
			 defrag, NR_KILL);
	ksft_test_result(plain == NR_KILL,
			 "rust: a killed flags = 0 request runs on, as upstream (%lld of %d ranges reached; -1: it ended before the kill)\n",
			 plain, NR_KILL);
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

#define CG_DIR CG_ROOT "/thp_collapse_flags"

/*
 * The pages scanned by reclaim in the test cgroup (memory.stat pgscan), exact:
 * the counters are per-CPU and a read folds them in only past a threshold,
 * so first wait for the periodic flush (every 2 s) that folds in everything.
 */
static long long pgscan_flushed(void)
{
	sleep(3);
	return cgroup_stat(CG_DIR, "memory.stat", "pgscan");
}

/*
 * LIGHT under memory cgroup pressure: in a cgroup whose limit leaves less
 * room than a huge page, the new folio's charge would have to reclaim from
 * the cgroup. LIGHT gives EAGAIN (would_block) without reclaiming: not a
 * page of the cgroup is scanned. flags = 0 reclaims the clean page cache the
 * cgroup was given (no swap, so the range itself stays) and collapses. The
 * bytes stay the same either way. memory.events "max" is shown, not checked:
 * it counts charges that met the limit, rejected (LIGHT's), reclaimed or
 * forced alike.
 */
static void test_light_memcg(int pidfd)
{
	static char chunk[64 << 10];
	uint64_t shadow[PAGES_PER_PMD];
	long long wb = rust_stat("process_madvise", "would_block");
	long long ok = rust_stat("process_madvise", "succeed");
	long long max0, max1, max2, scan0, scan1, scan2, cur;
	const char *why;
	struct region r;
	char buf[64];
	long ret, ret0;
	int err, err0, cache;

	collapse_require_core("rust");
	if (cgroup_enter(CG_DIR, &why))
		ksft_exit_fail_msg("cgroup %s: %s: %s\n", CG_DIR, why,
				   strerror(errno));
	/* Clean page cache charged to the cgroup: what reclaim may take. */
	cache = mem_temp_file(mem_file_dir);
	memset(chunk, 0x5a, sizeof(chunk));
	for (cur = 0; cur < (4 << 20); cur += sizeof(chunk))
		if (pwrite(cache, chunk, sizeof(chunk), cur) !=
		    (ssize_t)sizeof(chunk))
			ksft_exit_fail_perror("pwrite");
	if (fsync(cache))
		ksft_exit_fail_perror("fsync");
	r = populated(MEM_ANON, shadow);
	if (collapse_read_file(CG_DIR "/memory.current", buf, sizeof(buf)) <= 0)
		ksft_exit_fail_msg("no memory.current in %s\n", CG_DIR);
	cur = atoll(buf);
	/* Room for half a megabyte more: not for a 2 MiB folio. */
	snprintf(buf, sizeof(buf), "%lld", cur + (512 << 10));
	if (write_str(CG_DIR "/memory.max", buf))
		ksft_exit_fail_perror(CG_DIR "/memory.max");

	scan0 = pgscan_flushed();
	max0 = cgroup_stat(CG_DIR, "memory.events", "max");
	ret = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, MADV_F_COLLAPSE_LIGHT);
	err = errno;
	max1 = cgroup_stat(CG_DIR, "memory.events", "max");
	scan1 = pgscan_flushed();
	ksft_test_result(ret == -1 && err == EAGAIN && scan0 >= 0 &&
			 scan1 == scan0 && !mem_pmd_mapped(&r) &&
			 untouched(&r, shadow) &&
			 rust_stat("process_madvise", "would_block") == wb + 1,
			 "rust: LIGHT, a memory cgroup at its limit: EAGAIN without reclaim in it (events max +%lld, pgscan +%lld), counted as would_block (%ld, %s)\n",
			 max1 - max0, scan1 - scan0, ret,
			 ret ? strerror(err) : "ok");
	ret0 = collapse(pidfd, r.p, r.len, MADV_COLLAPSE, 0);
	err0 = errno;
	max2 = cgroup_stat(CG_DIR, "memory.events", "max");
	scan2 = pgscan_flushed();
	ksft_test_result(ret0 == (long)r.len && scan2 > scan1 &&
			 mem_pmd_mapped(&r) && !mem_bad_pages(&r, shadow) &&
			 rust_stat("process_madvise", "succeed") == ok + 1,
			 "rust: flags = 0 in that cgroup reclaims (events max +%lld, pgscan +%lld) and collapses, the bytes intact (%ld, %s)\n",
			 max2 - max1, scan2 - scan1, ret0,
			 ret0 < 0 ? strerror(err0) : "ok");

	mem_region_free(&r);
	close(cache);
	if (cgroup_leave(CG_DIR))
		ksft_print_msg("cannot remove %s: %s\n", CG_DIR, strerror(errno));
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

	ksft_set_plan(2 * 9 + 2 + 1 + 1 + 3 * 2 + 3 + 3 + 4 + 2 + 2 + 2 + 2 + 3 * 2);
	test_bad_input("c", pidfd);
	test_bad_input("rust", pidfd);
	test_c_core(pidfd);
	test_remote_unprivileged();
	test_defrag();
	test_limits(pidfd);
	test_order(pidfd);
	test_order_refused(pidfd);
	test_range_tracepoint(pidfd);
	test_defrag_gfp(pidfd);
	test_defrag_killed();
	test_light_alloc(pidfd);
	test_light_memcg(pidfd);
	test_light_waits(pidfd);
	ksft_finished();
}
