// SPDX-License-Identifier: GPL-2.0
/*
 * The paths a minimal kernel compiles out, meeting the collapse, on the Rust
 * and on the C collapse core: soft-dirty bits, KSM pages and the NUMA node a
 * collapse allocates on. Needs CONFIG_MEM_SOFT_DIRTY, CONFIG_KSM and two
 * NUMA nodes with memory (the debug test kernel and its QEMU guest); a
 * missing one fails rather than skips.
 *
 *   thp_collapse_paths
 *
 * For each core, on private anonymous memory (one PMD, base pages written
 * with a generation pattern, thp_collapse_mem.h):
 *  - soft-dirty: after clear_refs, 16 pages are written again; the collapse
 *    may mark more pages soft-dirty, but must not clear the bit of a page
 *    written since (a checkpointing tool that tracks changes by it, CRIU's
 *    incremental dump, would miss the write), and both cores must leave the
 *    same view. Data intact, the range PMD-mapped.
 *  - KSM: half the pages hold one identical content and are merged by KSM
 *    (ksmd run with no sleep until the process has merged pages); the
 *    collapse gives the same errno and PMD-mapped state on both cores, every
 *    page keeps its contents, and on the Rust core a Rust counter moves.
 *  - NUMA: 320 pages faulted on one node, 192 on the other (set_mempolicy);
 *    the collapse, with the default policy, must allocate the huge page on
 *    the node that held most of the pages, as upstream's
 *    hpage_collapse_find_target_node() picks. Each node in turn, so that a
 *    core that always took one node would fail.
 *  - LRU batches: a thread on another CPU writes the PMD, so that its last
 *    pages sit in that CPU's LRU add batch (off the LRU in /proc/kpageflags,
 *    with the batch's reference) when this CPU collapses it: the collapse
 *    must go through, as upstream's drain of every CPU's batches up front
 *    lets it. The Rust core drains only when its scan finds such a page:
 *    its lru_drains counter moves by one. Then the same with every page on
 *    the LRU (the thread faults 64 more pages elsewhere, which pushes the
 *    batch out): the Rust core collapses without draining (lru_drains +0).
 *    Needs two CPUs the test may run on; runs before ksmd is started (its
 *    scans drain every CPU's batches).
 *  - Swap-cache folios in a batch: a thread on the other CPU splices 16
 *    pages of the PMD into a pipe (vmsplice: the pipe holds a reference) and
 *    pages them out (MADV_PAGEOUT): they are unmapped and given swap slots,
 *    but the pipe's reference keeps reclaim from writing and freeing them
 *    (PAGE_KEEP): they stay in the swap cache, and reclaim puts them back
 *    through that CPU's LRU batch; then the pipe is read empty. So the PTEs
 *    are swap entries whose folios sit in another CPU's batch (in the swap
 *    cache and off the LRU in /proc/kpageflags; set up again if something
 *    drained it), as after a swap readahead there, while every page still
 *    mapped is on the LRU (this CPU's batch drained first: the scan finds
 *    nothing batched). With the VMA read-only (no early copy, whose own
 *    drain would hide a missing one), the collapse must swap them in and go
 *    through with the data intact, as upstream's drain up front lets it; the
 *    Rust core drains because its scan found swap entries in a range that
 *    may collapse (lru_drains +1); without that drain the isolation of those
 *    folios fails (EAGAIN). Needs a swap device (the guest's zram).
 *  - The early copy's drain (the Rust core only: C has no early copy). The
 *    early copy pauses after its first pass (a hook of test kernels, debugfs
 *    thp_collapse_early_pause_*) while a thread on the other CPU changes the
 *    range: a page it faults sits in that CPU's LRU batch, which no scan
 *    saw, and the isolation fails on it unless the copy drains first
 *    (EarlyCopy::may_be_batched()). Invalidated at its last try: the thread
 *    zaps a page at the first pause (the copy starts over) and zaps and
 *    writes another at the second; the copy no longer counts and the
 *    collapse copies everything under the mmap write lock, whose isolation
 *    does not drain (early_restarts +1, copied_locked +1; without the drain,
 *    EAGAIN). A new page where none was copied: a page none at the scan is
 *    written at the pause (filling an empty entry invalidates nothing); the
 *    switch under the read lock goes through (switched_read +1, no
 *    switch_fallbacks: without the drain its isolation fails, and it puts
 *    everything back and falls back to the write lock). The third sign, a
 *    folio on the LRU with an extra reference (in an mlock batch), cannot
 *    be set up from userspace: mlock(2) drains its CPU's batch after its
 *    walk.
 *  - During the early copy, with the same pause, the thread touches a page
 *    the first pass copied: it writes it (its entry writable again, the
 *    same page: one more pass copies it again, early_retries +1,
 *    recopied_early +1, and the switch under the read lock has nothing left
 *    to copy; the write must not be lost); pins it long-term, read-only,
 *    through gup_test (the isolation finds the pin: EAGAIN, page_count +1,
 *    the range as it was); MADV_FREEs it (an invalidation: the copy starts
 *    over and the new one holds, early_restarts +1, switched_read +1; the
 *    page keeps its data: nothing presses memory here); MADV_PAGEOUTs
 *    it (the copy starts over and its switch meets the swap entry:
 *    EINVAL, as upstream gives for a swap entry met under the lock,
 *    pte_non_present +1, the range as it was; the next call swaps it in
 *    and collapses); moves it out to a page registered with userfaultfd
 *    (UFFDIO_MOVE: the entry cleared, an invalidation; the copy starts over
 *    and holds, the page reads zeroes in the range and its data where it
 *    went). And once the copy is made, before the switch (the
 *    hook's third point, no lock held), the thread forks: the fork
 *    write-protects the range, an invalidation, so the collapse copies
 *    everything under the write lock (copied_locked +1, no switch under
 *    the read lock), and the child, which shares the old pages, still
 *    sees the range as it was. Each case checks every page's data.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kselftest.h"
#include "thp_collapse_mem.h"

#define KSM_SYSFS "/sys/kernel/mm/ksm/"
#define SOFT_DIRTY_BIT 55
#define RECENT 16		/* pages written after clear_refs */
#define MPOL_DEFAULT_ 0
#define MPOL_BIND_ 2
#define KPF_LRU_ 5		/* /proc/kpageflags: the page is on an LRU list */
#define KPF_SWAPCACHE_ 13	/* /proc/kpageflags: the page is in the swap cache */
#define PUSH_PAGES 64		/* faulted after a PMD: its pages leave the batch */
#define SWAP_FIRST 100		/* the first page the swap-cache case pages out */
#define SWAP_PAGES 16		/* how many (a pipe's default capacity) */
#define PM_SWAP_BIT 62		/* pagemap: the entry is swapped out */
#define PM_PFN_MASK ((1ULL << 55) - 1)	/* pagemap: the page frame of a present entry */
#define SETUP_TRIES 5		/* set-ups of a batch case before it gives up */

static const char *const cores[] = { "rust", "c" };

/* A private anonymous PMD of base pages, each written with generation 1. */
static struct region small_pmd(uint64_t *shadow)
{
	struct region r = mem_region(MEM_ANON, 1);

	if (mem_populate(&r, shadow, 1))
		ksft_exit_fail_msg("populate: %s\n", strerror(errno));
	if (mem_pmd_mapped(&r))
		ksft_exit_fail_msg("the range is huge before any collapse\n");
	return r;
}

/* The pagemap entries of the pages of @r. */
static int pagemap_read(const struct region *r, uint64_t *ent)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	size_t n = r->len / PAGE_SZ * sizeof(*ent);
	ssize_t got;

	if (fd < 0)
		return -1;
	got = pread(fd, ent, n, (uintptr_t)r->p / PAGE_SZ * sizeof(*ent));
	close(fd);
	return got == (ssize_t)n ? 0 : -1;
}

/* Collapses @r on @core; 0 or the errno. */
static int collapse(const char *core, struct region *r)
{
	collapse_require_core(core);
	return madvise(r->p, r->len, MADV_COLLAPSE) ? errno : 0;
}

/* ---- soft-dirty ---------------------------------------------------------- */

static int soft_dirty_view[2][PAGES_PER_PMD];

static void test_soft_dirty(int c)
{
	static uint64_t shadow[PAGES_PER_PMD], ent[PAGES_PER_PMD];
	long long moved = rust_stat("madvise", "succeed");
	struct region r = small_pmd(shadow);
	int err, lost_bit = 0, dirty = 0;
	size_t pg, bad;
	bool huge;

	if (write_str("/proc/self/clear_refs", "4"))
		ksft_exit_fail_msg("clear_refs: %s\n", strerror(errno));
	for (pg = 0; pg < RECENT; pg++) {
		mem_fill(r.p + pg * 31 * PAGE_SZ, pg * 31, 2);
		shadow[pg * 31] = 2;
	}
	if (pagemap_read(&r, ent))
		ksft_exit_fail_perror("pagemap");
	for (pg = 0; pg < RECENT; pg++)
		if (!(ent[pg * 31] >> SOFT_DIRTY_BIT & 1))
			ksft_exit_fail_msg("page %zu not soft-dirty after its write\n",
					   pg * 31);
	err = collapse(cores[c], &r);
	huge = mem_pmd_mapped(&r);
	if (pagemap_read(&r, ent))
		ksft_exit_fail_perror("pagemap");
	for (pg = 0; pg < PAGES_PER_PMD; pg++) {
		soft_dirty_view[c][pg] = ent[pg] >> SOFT_DIRTY_BIT & 1;
		dirty += soft_dirty_view[c][pg];
	}
	for (pg = 0; pg < RECENT; pg++)
		lost_bit += !soft_dirty_view[c][pg * 31];
	bad = mem_bad_pages(&r, shadow);
	moved = rust_stat("madvise", "succeed") - moved;
	ksft_test_result(!err && huge && !lost_bit && !bad && (c ? !moved : moved == 1),
			 "%s: soft-dirty: collapse %s, %s, %d of %d recently written pages lost the bit, %d pages soft-dirty after it, %zu pages differ, rust succeed +%lld\n",
			 cores[c], strerror(err), huge ? "PMD-mapped" : "not PMD-mapped",
			 lost_bit, RECENT, dirty, bad, moved);
	mem_region_free(&r);
}

static void test_soft_dirty_same_view(void)
{
	int pg, differ = 0;

	for (pg = 0; pg < (int)PAGES_PER_PMD; pg++)
		differ += soft_dirty_view[0][pg] != soft_dirty_view[1][pg];
	ksft_test_result(!differ,
			 "soft-dirty: both cores leave the same soft-dirty bits (%d pages differ)\n",
			 differ);
}

/* ---- KSM ----------------------------------------------------------------- */

/* The number in the file at @path, or -1. */
static long read_long(const char *path)
{
	char buf[32];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	return atol(buf);
}

static long ksm_read(const char *name)
{
	char path[128];

	snprintf(path, sizeof(path), KSM_SYSFS "%s", name);
	return read_long(path);
}

/* This process's KSM-merged pages. */
static long ksm_merged(void)
{
	return read_long("/proc/self/ksm_merging_pages");
}

static int ksm_result[2];
static bool ksm_huge[2];

static void test_ksm(int c)
{
	static uint64_t shadow[PAGES_PER_PMD];
	long long total = rust_stat_total("madvise");
	struct region r = small_pmd(shadow);
	long merged = 0, moved;
	size_t pg, bad;
	int t;

	/* Every other page holds the same content: KSM merges them into one. */
	for (pg = 0; pg < PAGES_PER_PMD; pg += 2) {
		memset(r.p + pg * PAGE_SZ, 0x5a, PAGE_SZ);
		shadow[pg] = 0;
	}
	if (madvise(r.p, r.len, MADV_MERGEABLE))
		ksft_exit_fail_perror("madvise(MADV_MERGEABLE)");
	for (t = 0; t < 600 && merged < (long)PAGES_PER_PMD / 4; t++) {
		usleep(50000);
		merged = ksm_merged();
	}
	for (pg = 0, bad = 0; pg < PAGES_PER_PMD; pg += 2)
		for (t = 0; t < (int)PAGE_SZ; t++)
			bad += r.p[pg * PAGE_SZ + t] != 0x5a;
	ksm_result[c] = collapse(cores[c], &r);
	ksm_huge[c] = mem_pmd_mapped(&r);
	for (pg = 0; pg < PAGES_PER_PMD; pg++) {
		if (pg % 2 == 0) {
			for (t = 0; t < (int)PAGE_SZ; t++)
				if (r.p[pg * PAGE_SZ + t] != 0x5a)
					break;
			bad += t != (int)PAGE_SZ;
		} else {
			bad += !mem_page_ok(r.p + pg * PAGE_SZ, pg, shadow[pg]);
		}
	}
	moved = rust_stat_total("madvise") - total;
	ksft_test_result(merged >= (long)PAGES_PER_PMD / 4 && !bad && (c ? !moved : moved > 0),
			 "%s: KSM: %ld pages merged, collapse %s, %s, %zu pages differ, rust counters +%ld\n",
			 cores[c], merged, strerror(ksm_result[c]),
			 ksm_huge[c] ? "PMD-mapped" : "not PMD-mapped", bad, moved);
	madvise(r.p, r.len, MADV_UNMERGEABLE);
	mem_region_free(&r);
}

static void test_ksm_same(void)
{
	ksft_test_result(ksm_result[0] == ksm_result[1] && ksm_huge[0] == ksm_huge[1],
			 "KSM: both cores give the same result (rust %s, %s; c %s, %s)\n",
			 strerror(ksm_result[0]), ksm_huge[0] ? "huge" : "not huge",
			 strerror(ksm_result[1]), ksm_huge[1] ? "huge" : "not huge");
}

/* ---- NUMA ---------------------------------------------------------------- */

static long set_policy(int mode, unsigned long nodemask)
{
	return syscall(SYS_set_mempolicy, mode, mode ? &nodemask : NULL,
		       mode ? 8 * sizeof(nodemask) : 0);
}

/* The node of the page at @p, or -1. */
static int node_of(void *p)
{
	int status = -1;

	if (syscall(SYS_move_pages, 0, 1UL, &p, NULL, &status, 0))
		return -1;
	return status;
}

static void test_numa(int c, int most)
{
	static uint64_t shadow[PAGES_PER_PMD];
	long long ok = rust_stat("madvise", "succeed");
	struct region r = mem_region(MEM_ANON, 1);
	int err, node, on_most = 0;
	size_t pg, bad;

	/* 320 pages on @most (5 of every 8), 192 on the other node. */
	for (pg = 0; pg < PAGES_PER_PMD; pg++) {
		int want = pg % 8 < 5 ? most : !most;

		if (set_policy(MPOL_BIND_, 1UL << want))
			ksft_exit_fail_msg("set_mempolicy(MPOL_BIND, node %d): %s\n", want,
					   strerror(errno));
		mem_fill(r.p + pg * PAGE_SZ, pg, 1);
		shadow[pg] = 1;
		on_most += node_of(r.p + pg * PAGE_SZ) == most;
	}
	if (set_policy(MPOL_DEFAULT_, 0))
		ksft_exit_fail_perror("set_mempolicy(MPOL_DEFAULT)");
	err = collapse(cores[c], &r);
	node = node_of(r.p);
	bad = mem_bad_pages(&r, shadow);
	ksft_test_result(on_most == 320 && !err && mem_pmd_mapped(&r) && node == most &&
			 !bad && (c || rust_stat("madvise", "succeed") > ok),
			 "%s: NUMA: %d of 512 pages on node %d, collapse %s, the huge page on node %d, %zu pages differ\n",
			 cores[c], on_most, most, strerror(err), node, bad);
	mem_region_free(&r);
}

/* ---- LRU batches ---------------------------------------------------------- */

/* The CPUs the test may run on, as it started, and the two it uses. */
static cpu_set_t cpus_allowed;
static int cpu_collapse, cpu_fill;

/* What a thread on another CPU faults: @r, then @push pages of @extra if set. */
struct batch_fill {
	struct region *r;
	uint64_t *shadow;
	char *extra;
	int cpu;
	int err;
};

/* Pins the calling thread to @cpu (-1: the CPUs it was allowed at the start). */
static int pin_to(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	if (cpu >= 0)
		CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), cpu < 0 ? &cpus_allowed : &set) ? errno : 0;
}

/* Picks the first two CPUs the test may run on; false if there are fewer. */
static bool pick_cpus(void)
{
	int i, n = 0;

	if (sched_getaffinity(0, sizeof(cpus_allowed), &cpus_allowed))
		return false;
	for (i = 0; i < CPU_SETSIZE && n < 2; i++) {
		if (!CPU_ISSET(i, &cpus_allowed))
			continue;
		if (n++)
			cpu_fill = i;
		else
			cpu_collapse = i;
	}
	return n == 2;
}

static void *fill_on_cpu(void *arg)
{
	struct batch_fill *f = arg;
	size_t pg;

	f->err = pin_to(f->cpu);
	if (!f->err && mem_populate(f->r, f->shadow, 1))
		f->err = errno;
	for (pg = 0; !f->err && f->extra && pg < PUSH_PAGES; pg++)
		f->extra[pg * PAGE_SZ] = 1;
	return NULL;
}

/*
 * How many of the @n page frames @pfn have every /proc/kpageflags bit of @set
 * and none of @clear, or -1.
 */
static int pages_flagged(const uint64_t *pfn, int n, uint64_t set, uint64_t clear)
{
	int fd = open("/proc/kpageflags", O_RDONLY), k, count = 0;
	uint64_t flags;

	if (fd < 0)
		return -1;
	for (k = 0; k < n; k++) {
		if (pread(fd, &flags, sizeof(flags), pfn[k] * sizeof(flags)) != sizeof(flags)) {
			close(fd);
			return -1;
		}
		count += (flags & set) == set && !(flags & clear);
	}
	close(fd);
	return count;
}

/*
 * How many pages mapped in @r are not on an LRU list (kpageflags), or -1;
 * swapped-out entries are skipped.
 */
static int pages_off_lru(const struct region *r)
{
	static uint64_t ent[PAGES_PER_PMD], pfn[PAGES_PER_PMD];
	size_t pg;
	int n = 0;

	if (pagemap_read(r, ent))
		return -1;
	for (pg = 0; pg < PAGES_PER_PMD; pg++) {
		if (ent[pg] >> PM_SWAP_BIT & 1)
			continue;
		if (!(ent[pg] >> 63) || !(ent[pg] & PM_PFN_MASK))
			return -1;
		pfn[n++] = ent[pg] & PM_PFN_MASK;
	}
	return pages_flagged(pfn, n, 0, 1ULL << KPF_LRU_);
}

/* What a collapse of a PMD in the LRU batch cases came to. */
struct batch_result {
	int err;		/* 0 or the errno */
	bool huge;		/* PMD-mapped after it */
	size_t bad;		/* pages whose contents differ */
	long long ok, drains;	/* the Rust counters succeed and lru_drains moved */
	long long total;	/* all the Rust counters moved */
};

/* Collapses @r on core @c and notes what came of it (@shadow: the contents). */
static struct batch_result collapse_counted(int c, struct region *r, const uint64_t *shadow)
{
	struct rust_stats before, after;
	struct batch_result res;

	rust_stats_read("madvise", &before);
	res.total = rust_stat_total("madvise");
	res.err = collapse(cores[c], r);
	rust_stats_read("madvise", &after);
	res.total = rust_stat_total("madvise") - res.total;
	res.huge = mem_pmd_mapped(r);
	res.bad = mem_bad_pages(r, shadow);
	res.drains = rust_stats_delta(&before, &after, "lru_drains");
	res.ok = rust_stats_delta(&before, &after, "succeed");
	return res;
}

/*
 * Whether @res is a collapse that went through with the data intact, by the
 * Rust core with @drains LRU drains (c == 0), or by the C core, no Rust
 * counter moving.
 */
static bool collapsed_as_expected(int c, const struct batch_result *res, long long drains)
{
	return !res->err && res->huge && !res->bad &&
	       (c ? !res->total && !res->drains : res->ok == 1 && res->drains == drains);
}

/*
 * Collapses a PMD that a thread on cpu_fill wrote, from cpu_collapse: with
 * its last pages in cpu_fill's LRU batch (@batched), or, once it faulted
 * PUSH_PAGES more pages elsewhere, with none there.
 */
static void test_lru_batch(int c, bool batched)
{
	static uint64_t shadow[PAGES_PER_PMD];
	struct region r = mem_region(MEM_ANON, 1);
	struct batch_fill f = { .r = &r, .shadow = shadow, .cpu = cpu_fill };
	struct batch_result res;
	char *extra = NULL;
	int off, tries;
	pthread_t t;

	if (!batched) {
		extra = mmap(NULL, PUSH_PAGES * PAGE_SZ, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (extra == MAP_FAILED)
			ksft_exit_fail_perror("mmap");
		f.extra = extra;
	}
	/* Something else may drain cpu_fill's batch meanwhile: write the PMD again. */
	for (tries = 0; tries < SETUP_TRIES; tries++) {
		if (pthread_create(&t, NULL, fill_on_cpu, &f) || pthread_join(t, NULL))
			ksft_exit_fail_msg("thread on CPU %d\n", cpu_fill);
		if (f.err)
			ksft_exit_fail_msg("fill on CPU %d: %s\n", cpu_fill, strerror(f.err));
		off = pages_off_lru(&r);
		if (off < 0)
			ksft_exit_fail_msg("pagemap or kpageflags unreadable\n");
		if (batched ? off > 0 : off == 0)
			break;
		madvise(r.p, r.len, MADV_DONTNEED);
		if (extra)
			madvise(extra, PUSH_PAGES * PAGE_SZ, MADV_DONTNEED);
	}
	res = collapse_counted(c, &r, shadow);
	ksft_test_result((batched ? off > 0 : off == 0) &&
			 collapsed_as_expected(c, &res, batched),
			 "%s: LRU batch: %d of 512 pages off the LRU, written on CPU %d; collapse on CPU %d %s, %s, %zu pages differ; rust succeed +%lld lru_drains +%lld, counters +%lld\n",
			 cores[c], off, cpu_fill, cpu_collapse, strerror(res.err),
			 res.huge ? "PMD-mapped" : "not PMD-mapped",
			 res.bad, res.ok, res.drains, res.total);
	if (extra)
		munmap(extra, PUSH_PAGES * PAGE_SZ);
	mem_region_free(&r);
}

/* What the thread on cpu_fill of test_swap_cache() works on, and its error. */
struct swap_fill {
	char *p;
	/* Where the pipe is read to: faulted in before, not into the batch. */
	char *buf;
	int cpu;
	int err;
};

/*
 * Splices SWAP_PAGES pages at @p into a pipe, pages them out and reads the
 * pipe empty, on cpu_fill: see the header.
 */
static void *swap_on_cpu(void *arg)
{
	struct swap_fill *f = arg;
	struct iovec iov = { .iov_base = f->p, .iov_len = SWAP_PAGES * PAGE_SZ };
	size_t read_back = 0;
	int pfd[2];
	ssize_t n;

	f->err = pin_to(f->cpu);
	if (f->err)
		return NULL;
	if (pipe(pfd)) {
		f->err = errno;
		return NULL;
	}
	if (vmsplice(pfd[1], &iov, 1, 0) != (ssize_t)iov.iov_len ||
	    madvise(f->p, iov.iov_len, MADV_PAGEOUT))
		f->err = errno ? errno : EIO;
	while (!f->err && read_back < iov.iov_len) {
		n = read(pfd[0], f->buf + read_back, iov.iov_len - read_back);
		if (n <= 0)
			f->err = n ? errno : EIO;
		else
			read_back += n;
	}
	close(pfd[0]);
	close(pfd[1]);
	return NULL;
}

/* What the set-up of test_swap_cache() left. */
struct swap_setup {
	int swapped;		/* entries swapped out */
	int cached;		/* of their pages, in the swap cache (mincore) */
	int batched;		/* of their folios, in the swap cache and off the LRU */
	int off;		/* mapped pages off the LRU */
};

/*
 * Makes the PMD @r read-only and has the thread on cpu_fill
 * page out its pages SWAP_FIRST on through a pipe (see the header): returns
 * what that left.
 */
static struct swap_setup swap_cache_setup(struct region *r)
{
	static uint64_t ent[PAGES_PER_PMD], pfn[SWAP_PAGES];
	static char buf[SWAP_PAGES * PAGE_SZ];
	struct swap_fill f = { .p = r->p + SWAP_FIRST * PAGE_SZ, .buf = buf, .cpu = cpu_fill };
	struct swap_setup st = { 0 };
	unsigned char vec[SWAP_PAGES];
	pthread_t t;
	int pg;

	/*
	 * This CPU's batch holds the last pages written: drained by WILLNEED.
	 * The thread's read of the pipe must not fault pages into its CPU's
	 * batch: 15 more would push the paged-out folios out of it.
	 */
	memset(buf, 0, sizeof(buf));
	if (mprotect(r->p, r->len, PROT_READ) || madvise(r->p, r->len, MADV_WILLNEED))
		ksft_exit_fail_perror("mprotect or MADV_WILLNEED");
	/* The folios stay, in the swap cache: their frames tell where they are. */
	if (pagemap_read(r, ent))
		ksft_exit_fail_msg("pagemap unreadable\n");
	for (pg = 0; pg < SWAP_PAGES; pg++)
		pfn[pg] = ent[SWAP_FIRST + pg] & PM_PFN_MASK;
	if (pthread_create(&t, NULL, swap_on_cpu, &f) || pthread_join(t, NULL))
		ksft_exit_fail_msg("thread on CPU %d\n", cpu_fill);
	if (f.err)
		ksft_exit_fail_msg("vmsplice, MADV_PAGEOUT or read on CPU %d: %s\n",
				   cpu_fill, strerror(f.err));
	if (pagemap_read(r, ent) || mincore(f.p, SWAP_PAGES * PAGE_SZ, vec))
		ksft_exit_fail_msg("pagemap or mincore unreadable\n");
	for (pg = 0; pg < SWAP_PAGES; pg++) {
		st.swapped += ent[SWAP_FIRST + pg] >> PM_SWAP_BIT & 1;
		st.cached += vec[pg] & 1;
	}
	st.batched = pages_flagged(pfn, SWAP_PAGES, 1ULL << KPF_SWAPCACHE_, 1ULL << KPF_LRU_);
	/* The pages still mapped all on the LRU: the scan finds nothing batched. */
	st.off = pages_off_lru(r);
	if (st.batched < 0 || st.off < 0)
		ksft_exit_fail_msg("pagemap or kpageflags unreadable\n");
	return st;
}

/*
 * Collapses a read-only PMD from cpu_collapse whose pages SWAP_FIRST on are
 * swap entries with their folios in the swap cache and in cpu_fill's LRU
 * batch (off the LRU in /proc/kpageflags; set up again, on a new PMD, if
 * something drained the batch meanwhile).
 */
static void test_swap_cache(int c)
{
	static uint64_t shadow[PAGES_PER_PMD];
	struct batch_result res;
	struct swap_setup st;
	struct region r;
	int tries;

	for (tries = 0;; tries++) {
		r = small_pmd(shadow);
		st = swap_cache_setup(&r);
		if ((st.batched == SWAP_PAGES && !st.off) || tries == SETUP_TRIES - 1)
			break;
		mem_region_free(&r);
	}
	res = collapse_counted(c, &r, shadow);
	ksft_test_result(st.swapped == SWAP_PAGES && st.cached == SWAP_PAGES &&
			 st.batched == SWAP_PAGES && !st.off &&
			 collapsed_as_expected(c, &res, 1),
			 "%s: swap cache: %d of %d pages swapped out, %d in the swap cache, %d off the LRU, paged out on CPU %d (try %d), %d mapped pages off the LRU; collapse on CPU %d %s, %s, %zu pages differ; rust succeed +%lld lru_drains +%lld, counters +%lld\n",
			 cores[c], st.swapped, SWAP_PAGES, st.cached, st.batched, cpu_fill,
			 tries + 1, st.off, cpu_collapse, strerror(res.err),
			 res.huge ? "PMD-mapped" : "not PMD-mapped", res.bad, res.ok, res.drains,
			 res.total);
	mem_region_free(&r);
}

/* ---- The early copy's drain ----------------------------------------------- */

#define EARLY_DEBUGFS "/sys/kernel/debug/thp_collapse_early_"
#define EARLY_PAUSE_AFTER 2	/* enum thp_collapse_early_pause: after a first pass */
#define EARLY_PAUSE_DONE 4	/* the copy made, before the switch */
#define EARLY_ZAPPED 10		/* zapped at the first pause of the invalidation case */
#define EARLY_REFAULTED 20	/* zapped and written again at its second */
#define EARLY_HOLE 30		/* none at the scan, written at the new-page case's pause */
#define EARLY_TOUCHED 40	/* written, pinned or freed at the pause of the other cases */
#define PAUSE_WAIT_MS 10000	/* as long as the kernel's hook waits at most */

/* What the thread on cpu_fill of test_early_paused() does at the copy's pauses. */
enum early_case {
	/* Zaps a page at the first, zaps and writes another at the second. */
	EARLY_INVALIDATED,
	/* Writes a page that was none at the scan. */
	EARLY_NEW_PAGE,
	/* Writes a page the first pass copied. */
	EARLY_WRITTEN,
	/* Pins a page the first pass copied, long-term, read-only. */
	EARLY_PINNED,
	/* MADV_FREEs a page the first pass copied. */
	EARLY_FREED,
	/* MADV_PAGEOUTs a page the first pass copied. */
	EARLY_PAGED_OUT,
	/* Moves a page the first pass copied out of the range (UFFDIO_MOVE). */
	EARLY_MOVED,
	/* Forks, the copy made, before the switch. */
	EARLY_FORKED,
};

struct early_racer {
	struct region *r;
	uint64_t *shadow;
	enum early_case what;
	long base;		/* thp_collapse_early_paused before the collapse */
	int stops;		/* at how many pauses it acts */
	int batched;		/* the drain cases: the page written sat in the batch */
	int gup_fd;		/* /sys/kernel/debug/gup_test, for EARLY_PINNED */
	bool pinned;
	int uffd;		/* EARLY_MOVED: a userfaultfd that can move pages */
	char *scratch;		/* and the page registered with it they move to */
	int go[2];		/* EARLY_FORKED: the parent tells the child to check */
	pid_t child;
	int err;
	const char *step;	/* what failed */
};

/*
 * Sets debugfs thp_collapse_early_@name to @val; 0 or the errno. With plain
 * system calls: the thread calls it while the copy it resumes holds the mmap
 * lock for read, and stdio's first allocation in a thread maps an arena,
 * which would wait for the lock for write.
 */
static int early_knob(const char *name, long val)
{
	char path[96], buf[24];
	int fd, len, err = 0;

	snprintf(path, sizeof(path), EARLY_DEBUGFS "%s", name);
	len = snprintf(buf, sizeof(buf), "%ld", val);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		return errno;
	if (write(fd, buf, len) != len)
		err = errno ? errno : EIO;
	close(fd);
	return err;
}

/* At exit: no copy of a thread that may reuse this one's id pauses. */
static void early_unpause(void)
{
	early_knob("pause_tid", 0);
}

/* Waits until the early copy made its @n-th pause; false after PAUSE_WAIT_MS. */
static bool early_wait_paused(long n)
{
	int ms;

	for (ms = 0; ms < PAUSE_WAIT_MS; ms++) {
		if (read_long(EARLY_DEBUGFS "paused") >= n)
			return true;
		usleep(1000);
	}
	return false;
}

/* 1 if page @pg of @r is mapped and off the LRU (kpageflags), 0 if on it, or -1. */
static int page_off_lru(const struct region *r, size_t pg)
{
	uint64_t ent[PAGES_PER_PMD], pfn;

	if (pagemap_read(r, ent) || !(ent[pg] >> 63))
		return -1;
	pfn = ent[pg] & PM_PFN_MASK;
	return pages_flagged(&pfn, 1, 0, 1ULL << KPF_LRU_);
}

/* Zaps page @pg of @e's region; 0 or the errno. */
static int early_zap(struct early_racer *e, size_t pg)
{
	e->shadow[pg] = 0;
	return madvise(e->r->p + pg * PAGE_SZ, PAGE_SZ, MADV_DONTNEED) ? errno : 0;
}

/*
 * Writes page @pg of @e's region (a fault: the new page goes into this CPU's
 * LRU batch) and notes whether it sits there.
 */
static void early_write(struct early_racer *e, size_t pg)
{
	mem_fill(e->r->p + pg * PAGE_SZ, pg, 2);
	e->shadow[pg] = 2;
	e->batched = page_off_lru(e->r, pg) == 1;
}

/*
 * Moves page EARLY_TOUCHED of @e's region to @e's scratch page (UFFDIO_MOVE):
 * the page itself, its entry in the range cleared. 0 or the errno.
 */
static int early_move(struct early_racer *e)
{
	struct uffdio_move m = {
		.dst = (unsigned long)e->scratch,
		.src = (unsigned long)(e->r->p + EARLY_TOUCHED * PAGE_SZ),
		.len = PAGE_SZ,
	};

	if (ioctl(e->uffd, UFFDIO_MOVE, &m))
		return errno;
	if (m.move == (__s64)PAGE_SZ)
		e->shadow[EARLY_TOUCHED] = 0;
	/* Not all of it moved: a short move, which one page cannot make. */
	return m.move == (__s64)PAGE_SZ ? 0 : EIO;
}

/*
 * A userfaultfd that can move pages, with @page registered for missing
 * faults, or -1.
 */
static int early_uffd(char *page)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_MOVE };
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (uffd < 0)
		return -1;
	if (ioctl(uffd, UFFDIO_API, &api) ||
	    uffd_register(uffd, page, PAGE_SZ, true, false, false)) {
		close(uffd);
		return -1;
	}
	return uffd;
}

static void *early_race(void *arg)
{
	struct early_racer *e = arg;
	int stop;

	e->step = "sched_setaffinity";
	e->err = pin_to(cpu_fill);
	for (stop = 0; !e->err && stop < e->stops; stop++) {
		e->step = "wait for the early copy's pause";
		if (!early_wait_paused(e->base + stop + 1)) {
			e->err = ETIMEDOUT;
			break;
		}
		e->step = "MADV_DONTNEED";
		switch (e->what) {
		case EARLY_INVALIDATED:
			e->err = early_zap(e, stop ? EARLY_REFAULTED : EARLY_ZAPPED);
			if (!e->err && stop)
				early_write(e, EARLY_REFAULTED);
			break;
		case EARLY_NEW_PAGE:
			early_write(e, EARLY_HOLE);
			break;
		case EARLY_WRITTEN:
			/* The same page, its entry writable again: no invalidation. */
			mem_fill(e->r->p + EARLY_TOUCHED * PAGE_SZ, EARLY_TOUCHED, 2);
			e->shadow[EARLY_TOUCHED] = 2;
			break;
		case EARLY_PINNED:
			e->step = "gup_test pin";
			e->err = -gup_pin(e->gup_fd, e->r->p + EARLY_TOUCHED * PAGE_SZ, false);
			e->pinned = !e->err;
			break;
		case EARLY_FREED:
		case EARLY_PAGED_OUT:
			e->step = e->what == EARLY_FREED ? "MADV_FREE" : "MADV_PAGEOUT";
			if (madvise(e->r->p + EARLY_TOUCHED * PAGE_SZ, PAGE_SZ,
				    e->what == EARLY_FREED ? MADV_FREE : MADV_PAGEOUT))
				e->err = errno;
			break;
		case EARLY_MOVED:
			e->step = "UFFDIO_MOVE";
			e->err = early_move(e);
			break;
		case EARLY_FORKED:
			e->step = "fork";
			e->child = fork();
			if (e->child < 0) {
				e->err = errno;
			} else if (!e->child) {
				char go;
				bool seen;

				/* If the parent goes without a word, the read ends. */
				close(e->go[1]);
				seen = read(e->go[0], &go, 1) == 1;
				/* The range as it was at the fork, whatever the collapse did. */
				_exit(seen && !mem_bad_pages(e->r, e->shadow) ? 0 : 1);
			}
			break;
		}
		/* No pause after the last: the copy's restart runs on. */
		if (stop == e->stops - 1)
			early_knob("pause_tid", 0);
		early_knob("resume", e->base + stop + 1);
	}
	return NULL;
}

/* What a collapse of test_early_paused() came to. */
struct early_result {
	int err;		/* 0 or the errno */
	bool huge;		/* PMD-mapped after it */
	struct rust_paths d;	/* how the path counters moved */
	long long page_count;	/* the Rust outcomes page_count and pte_non_present */
	long long non_present;
	int err2;		/* EARLY_PAGED_OUT: a second call, with no pause */
	bool huge2;
	bool child_ok;		/* EARLY_FORKED: the child saw the range as it was */
	bool moved_ok;		/* EARLY_MOVED: the page moved holds its data */
};

/* Whether the collapse of case @what came to @res, as the Rust core's design says. */
static bool early_as_designed(enum early_case what, const struct early_result *res)
{
	const struct rust_paths *d = &res->d;
	bool done = !res->err && res->huge && d->succeed == 1;

	switch (what) {
	case EARLY_INVALIDATED:
		/*
		 * Invalidated twice, the copy no longer counts: all copied
		 * under the write lock, whose isolation does not drain.
		 */
		return done && d->restarts == 1 && d->locked == 1;
	case EARLY_NEW_PAGE:
		/* The switch under the read lock goes through, not falling back. */
		return done && !d->restarts && d->early == 1 && d->read == 1 && !d->fallbacks;
	case EARLY_WRITTEN:
		/* One more pass copies the page again; the switch has nothing left to copy. */
		return done && !d->restarts && d->early == 1 && d->read == 1 &&
		       d->retries == 1 && d->again == 1 && !d->recopied;
	case EARLY_PINNED:
		/* The isolation finds the pin: the range stays as it was. */
		return res->err == EAGAIN && !res->huge && !d->succeed && res->page_count == 1;
	case EARLY_FREED:
		/* MADV_FREE invalidates: the copy starts over, and that one holds. */
		return done && d->restarts == 1 && d->early == 1 && d->read == 1;
	case EARLY_PAGED_OUT:
		/*
		 * A swap entry met under the lock: EINVAL, as upstream gives,
		 * the range as it was; the next call swaps the page in.
		 */
		return res->err == EINVAL && !res->huge && !d->succeed && res->non_present == 1 &&
		       !res->err2 && res->huge2;
	case EARLY_MOVED:
		/*
		 * The move clears the entry, an invalidation: the copy starts
		 * over and holds; the page's data went with it.
		 */
		return done && d->restarts == 1 && d->early == 1 && d->read == 1 &&
		       res->moved_ok;
	case EARLY_FORKED:
		/*
		 * The fork invalidates the copy: all copied under the write
		 * lock, the pages shared with the child, who keeps them.
		 */
		return done && !d->restarts && d->locked == 1 && !d->read && res->child_ok;
	}
	return false;
}

/*
 * Collapses a PMD on the Rust core whose early copy pauses after its first
 * pass, or once it is made for EARLY_FORKED (a hook of test kernels, debugfs
 * thp_collapse_early_pause_*), while a thread on cpu_fill changes the range
 * (case @what, see the header).
 */
static void test_early_paused(enum early_case what)
{
	static const char *const names[] = {
		[EARLY_INVALIDATED] = "drain: invalidated at its last try",
		[EARLY_NEW_PAGE] = "drain: a new page where none was copied",
		[EARLY_WRITTEN] = "a page written",
		[EARLY_PINNED] = "a page pinned",
		[EARLY_FREED] = "a page MADV_FREE'd",
		[EARLY_PAGED_OUT] = "a page paged out",
		[EARLY_MOVED] = "a page moved out (UFFDIO_MOVE)",
		[EARLY_FORKED] = "a fork before the switch",
	};
	static uint64_t shadow[PAGES_PER_PMD];
	static bool unpause_at_exit;
	struct region r = small_pmd(shadow);
	struct early_racer e = {
		.r = &r, .shadow = shadow, .what = what,
		.stops = what == EARLY_INVALIDATED ? 2 : 1,
		/* Only the drain cases write a page into the batch. */
		.batched = what != EARLY_INVALIDATED && what != EARLY_NEW_PAGE,
		.gup_fd = -1, .uffd = -1, .go = { -1, -1 },
	};
	struct early_result res = { 0 };
	const char *huge2 = "";
	struct rust_stats before, after;
	int off, status;
	pthread_t t;
	size_t bad;

	collapse_require_core("rust");
	/* This CPU's batch holds the last pages written: the scan finds none off the LRU. */
	if (madvise(r.p, r.len, MADV_WILLNEED))
		ksft_exit_fail_perror("MADV_WILLNEED");
	off = pages_off_lru(&r);
	if (what == EARLY_NEW_PAGE && early_zap(&e, EARLY_HOLE))
		ksft_exit_fail_perror("MADV_DONTNEED");
	if (what == EARLY_PINNED) {
		e.gup_fd = open("/sys/kernel/debug/gup_test", O_RDWR);
		if (e.gup_fd < 0)
			ksft_exit_fail_perror("/sys/kernel/debug/gup_test");
	}
	if (what == EARLY_FORKED && pipe(e.go))
		ksft_exit_fail_perror("pipe");
	if (what == EARLY_MOVED) {
		e.scratch = mmap(NULL, PAGE_SZ, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (e.scratch == MAP_FAILED)
			ksft_exit_fail_perror("mmap");
		e.uffd = early_uffd(e.scratch);
		if (e.uffd < 0)
			ksft_exit_fail_msg("no userfaultfd with UFFD_FEATURE_MOVE: %s\n",
					   strerror(errno));
	}
	e.base = read_long(EARLY_DEBUGFS "paused");
	if (e.base >= 0 && !unpause_at_exit)
		unpause_at_exit = !atexit(early_unpause);
	if (e.base < 0 || !unpause_at_exit || early_knob("resume", e.base) ||
	    early_knob("pause_at", what == EARLY_FORKED ? EARLY_PAUSE_DONE : EARLY_PAUSE_AFTER) ||
	    early_knob("pause_tid", syscall(SYS_gettid)))
		ksft_exit_fail_msg("no early-copy pause hook (debugfs " EARLY_DEBUGFS "*)\n");
	if (pthread_create(&t, NULL, early_race, &e))
		ksft_exit_fail_msg("thread on CPU %d\n", cpu_fill);
	rust_stats_read("madvise", &before);
	res.err = madvise(r.p, r.len, MADV_COLLAPSE) ? errno : 0;
	rust_stats_read("madvise", &after);
	early_knob("pause_tid", 0);
	pthread_join(t, NULL);
	res.huge = mem_pmd_mapped(&r);
	res.d = rust_paths_delta(&before, &after);
	res.page_count = rust_stats_delta(&before, &after, "page_count");
	res.non_present = rust_stats_delta(&before, &after, "pte_non_present");
	if (what == EARLY_PAGED_OUT) {
		res.err2 = madvise(r.p, r.len, MADV_COLLAPSE) ? errno : 0;
		res.huge2 = mem_pmd_mapped(&r);
		huge2 = res.huge2 ? ", PMD-mapped" : ", not PMD-mapped";
	}
	if (e.child > 0) {
		bool told = write(e.go[1], "g", 1) == 1;

		/* Without the byte, the child reads the end of the pipe and fails. */
		close(e.go[1]);
		e.go[1] = -1;
		res.child_ok = waitpid(e.child, &status, 0) == e.child && told &&
			       WIFEXITED(status) && !WEXITSTATUS(status);
	}
	if (e.go[0] >= 0)
		close(e.go[0]);
	if (e.go[1] >= 0)
		close(e.go[1]);
	if (what == EARLY_MOVED) {
		/*
		 * The userfaultfd first: a page that never arrived would wait
		 * for an answer to its missing fault, and now reads zeroes.
		 */
		close(e.uffd);
		res.moved_ok = mem_page_ok(e.scratch, EARLY_TOUCHED, 1);
		munmap(e.scratch, PAGE_SZ);
	}
	/*
	 * A page MADV_FREE'd keeps its data: nothing here presses memory, so
	 * reclaim does not take it, and a collapse must not drop it.
	 */
	bad = mem_bad_pages(&r, shadow);
	ksft_test_result(!off && !e.err && e.batched && !bad && early_as_designed(what, &res),
			 "rust: early copy paused, %s: %d pages off the LRU before; paused %ld times, %s%s%s%s; collapse %s, %s%s%s%s%s, %zu pages differ; rust succeed +%lld page_count +%lld pte_non_present +%lld early_restarts +%lld copied_locked +%lld copied_early +%lld early_retries +%lld recopied_early +%lld recopied +%lld switched_read +%lld switch_fallbacks +%lld\n",
			 names[what], off, read_long(EARLY_DEBUGFS "paused") - e.base,
			 e.err ? e.step : "", e.err ? ": " : "", e.err ? strerror(e.err) : "ok",
			 e.batched ? "" : ", the page written not in its CPU's LRU batch",
			 strerror(res.err), res.huge ? "PMD-mapped" : "not PMD-mapped",
			 what == EARLY_PAGED_OUT ? "; the next call " : "",
			 what == EARLY_PAGED_OUT ? strerror(res.err2) : "",
			 huge2,
			 what == EARLY_FORKED ? (res.child_ok ? "; the child's view intact" :
						 "; the child's view NOT intact") : "",
			 bad, res.d.succeed, res.page_count, res.non_present, res.d.restarts,
			 res.d.locked, res.d.early, res.d.retries, res.d.again, res.d.recopied,
			 res.d.read, res.d.fallbacks);
	if (e.pinned && ioctl(e.gup_fd, PIN_LONGTERM_TEST_STOP))
		ksft_exit_fail_perror("PIN_LONGTERM_TEST_STOP");
	if (e.gup_fd >= 0)
		close(e.gup_fd);
	mem_region_free(&r);
}

int main(void)
{
	char orig[16], thp_enabled[32], ksm_run[16], ksm_sleep[16], ksm_pages[16];
	int c;

	collapse_test_start(orig, sizeof(orig), thp_enabled, sizeof(thp_enabled));
	ksft_set_plan(2 + 1 + 2 + 1 + 4 + 4 + 2 + 8);
	if (access("/proc/self/clear_refs", W_OK) || ksm_read("run") < 0 ||
	    node_of(&c) < 0 || access("/sys/devices/system/node/node1", F_OK))
		ksft_exit_fail_msg("needs soft-dirty, KSM and two NUMA nodes\n");
	if (!pick_cpus())
		ksft_exit_fail_msg("needs two CPUs\n");
	/* Before ksmd runs: its scans drain every CPU's LRU batches. */
	if (pin_to(cpu_collapse))
		ksft_exit_fail_perror("sched_setaffinity");
	for (c = 0; c < 2; c++) {
		test_lru_batch(c, true);
		test_lru_batch(c, false);
		test_swap_cache(c);
	}
	for (c = EARLY_INVALIDATED; c <= EARLY_FORKED; c++)
		test_early_paused(c);
	if (pin_to(-1))
		ksft_exit_fail_perror("sched_setaffinity");
	if (sysfs_swap_str(KSM_SYSFS "run", ksm_run, sizeof(ksm_run), "1") ||
	    sysfs_swap_str(KSM_SYSFS "sleep_millisecs", ksm_sleep, sizeof(ksm_sleep), "0") ||
	    sysfs_swap_str(KSM_SYSFS "pages_to_scan", ksm_pages, sizeof(ksm_pages), "4096"))
		ksft_exit_fail_msg("cannot start ksmd\n");

	for (c = 0; c < 2; c++)
		test_soft_dirty(c);
	test_soft_dirty_same_view();
	for (c = 0; c < 2; c++)
		test_ksm(c);
	test_ksm_same();
	for (c = 0; c < 2; c++) {
		test_numa(c, 1);
		test_numa(c, 0);
	}

	set_str(KSM_SYSFS "pages_to_scan", ksm_pages);
	set_str(KSM_SYSFS "sleep_millisecs", ksm_sleep);
	/* 2 unmerges every page; the range's pages are unmerged already. */
	set_str(KSM_SYSFS "run", strcmp(ksm_run, "1") ? "0" : "1");
	collapse_set_core(orig);
	set_str(THP_SYSFS "enabled", thp_enabled);
	ksft_finished();
}
