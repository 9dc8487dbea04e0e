// SPDX-License-Identifier: GPL-2.0
/*
 * Every allocation of a collapse fails in turn, on the Rust and on the C
 * collapse core: page allocations (fail_page_alloc, every order) and slab
 * allocations (failslab), for MADV_COLLAPSE of
 *   - private anonymous memory with 4 of its 512 pages swapped out,
 *   - shmem (a memfd) with 4 pages swapped out,
 *   - a file on XFS whose page cache lacks 4 pages (written, fsynced,
 *     dropped with POSIX_FADV_DONTNEED), so the collapse must read them,
 * and for khugepaged collapsing the anonymous PMD with its own thread made
 * to fail (one khugepaged pass per step, see test_walk()). Every injected
 * failure must give an errno MADV_COLLAPSE
 * documents: ENOMEM, EAGAIN or EBUSY, or EINVAL where upstream 7.3.4 gives
 * it for a failed allocation: a page that could not be swapped in or read
 * (SCAN_FAIL), so only for a page allocation after the huge page's, and on
 * the Rust core only with its "fail" counter moved. It must leave every
 * byte as it was
 * (checked against a shadow of page generations, through the mapping and
 * read(2)) and the range not PMD-mapped; a call that succeeds despite an
 * injection must have left the range PMD-mapped and intact. 100 failing
 * collapses per core then leave no slab, page table or free memory behind.
 *
 *   thp_collapse_fail [-v] [xfs-dir]   (default /mnt/xfs; run as root)
 *
 * -v prints the stack of every injected failure on the console (verbose=2;
 * allocations with __GFP_NOWARN print none), to see which allocation gave
 * an errno; the console then has call traces.
 *
 * How every allocation is reached: the fault attribute's "space" lets
 * allocations pass, subtracting their size (pages for fail_page_alloc,
 * object bytes for failslab), while it is larger than the size; with
 * times=1 the first allocation that meets space <= size fails, and space
 * is then left at N minus the sizes before it. With the sizes summed up to
 * each allocation, S_1 < S_2 < ..., space=N fails the allocation i with
 * S_(i-1) < N <= S_i, and N minus the space left gives S_(i-1).
 *
 * Page allocations are stepped through from N = 1 (0 fails the same first
 * allocation) a page at a time, until a call is left untouched (times still
 * 1): it must have collapsed, on the Rust core moving its "succeed"
 * counter. The huge page (the allocation that moves thp_collapse_alloc_failed)
 * is passed in two steps (see thp_next()), so a walk takes about a call per
 * small page the collapse allocates. A page at a time keeps a walk on the
 * sites even when an allocation comes and goes between calls (slab pages
 * refilled now and then), which shifts the sums.
 *
 * Slab objects are of any size, and a byte at a time would take thousands
 * of calls: the walk first measures the call's total T (a huge space:
 * nothing fails, the call must collapse), then calls with N = T, which
 * fails the last allocation and tells where it starts, then with that
 * start, which fails the one before, and so on down to the first: one call
 * per allocation, in reverse order, whatever its size. If a call is left
 * untouched (the sequence got shorter), it must have collapsed, and the
 * walk goes on from the total that call used.
 *
 * The collapse runs in a thread of its own whose make-it-fail is set only
 * around the call (task-filter=Y), so nothing else in the system fails.
 *
 * khugepaged is walked the same way with its thread's make-it-fail set:
 * it sleeps between passes (a long scan_sleep_millisecs), a step arms the
 * injector and wakes it by writing that knob, and the pass has ended when
 * full_scans moves (the program's mm is the only one it scans, with one
 * PMD to collapse). khugepaged has no errno: on the Rust core, the outcome
 * its counters took stands for the errno MADV_COLLAPSE would have given
 * for it; the C core's outcome is not seen, only that it did not collapse.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kselftest.h"
#include "thp_collapse_mem.h"

#define DEBUGFS "/sys/kernel/debug/"
#define KHUGEPAGED_SYSFS THP_SYSFS "khugepaged/"

/*
 * The pages of the PMD that are swapped out or not cached: 4 of 512 (7,
 * 135, 263, 391). Each swap-in or read repeats the same allocations, so
 * four of them meet every site, the first and the later ones.
 */
#define OUT_STRIDE 128
#define OUT_FIRST 7
#define NR_OUT ((int)(PAGES_PER_PMD / OUT_STRIDE))

/* Space for the measuring call: more than any collapse can use. */
#define SPACE_ALL 1000000000L
/*
 * How far before the end of the huge page a page walk lands first when it
 * passes it: allocations before it come and go between calls (a slab
 * refilled, often 4 pages at once, as KASAN's quarantine holds freed
 * objects back), and landing just past it could skip what follows it.
 */
#define THP_MARGIN 8
/* A walk that needs more calls than this has gone wrong. */
#define MAX_CALLS 400
#define LEAK_WARMUP 5
#define LEAK_ROUNDS 100
/*
 * 100 leaked page tables (or 4 KiB slab objects, or pages) are 400 kB; the
 * noise seen is below 130 kB for slab objects and other memory.
 */
#define LEAK_SLAB_KB 200
#define LEAK_FREE_KB 256
#define LEAK_PT_KB 40
#define MAX_POINTS 1024

static const char *const cores[] = { "rust", "c" };

/* The two fault injectors. */
enum inj { INJ_PAGE, INJ_SLAB, NR_INJ };
static const char *const inj_name[] = { "fail_page_alloc", "failslab" };
static const char *const inj_dir[] = {
	DEBUGFS "fail_page_alloc/", DEBUGFS "failslab/",
};

/* The knobs this program sets, and the values they had. */
struct knob {
	const char *path;
	char old[64];
	bool saved;
};

static struct knob knobs[] = {
	/* times first: restoring it first stops any injection at once. */
	{ DEBUGFS "fail_page_alloc/times" }, { DEBUGFS "failslab/times" },
	{ DEBUGFS "fail_page_alloc/space" }, { DEBUGFS "failslab/space" },
	{ DEBUGFS "fail_page_alloc/probability" },
	{ DEBUGFS "failslab/probability" },
	{ DEBUGFS "fail_page_alloc/interval" }, { DEBUGFS "failslab/interval" },
	{ DEBUGFS "fail_page_alloc/task-filter" },
	{ DEBUGFS "failslab/task-filter" },
	{ DEBUGFS "fail_page_alloc/verbose" }, { DEBUGFS "failslab/verbose" },
	{ DEBUGFS "fail_page_alloc/min-order" },
	{ DEBUGFS "fail_page_alloc/ignore-gfp-wait" },
	{ DEBUGFS "fail_page_alloc/ignore-gfp-highmem" },
	{ DEBUGFS "failslab/ignore-gfp-wait" },
	{ DEBUGFS "failslab/cache-filter" },
	{ KHUGEPAGED_SYSFS "scan_sleep_millisecs" },
	{ KHUGEPAGED_SYSFS "alloc_sleep_millisecs" },
	{ KHUGEPAGED_SYSFS "pages_to_scan" },
};

/*
 * khugepaged's sleep between passes while it is walked: longer than any
 * step, so that it scans only when a step wakes it.
 */
#define KHUGEPAGED_IDLE_MS "100000"
/* How long a step waits for khugepaged's pass, in 10 ms polls. */
#define KHUGEPAGED_PASS_POLLS 3000

/* What the knobs are set to while the program runs (times stays 0). */
static const char *const knob_val[][2] = {
	{ "fail_page_alloc/times", "0" }, { "failslab/times", "0" },
	{ "fail_page_alloc/space", "0" }, { "failslab/space", "0" },
	{ "fail_page_alloc/probability", "100" },
	{ "failslab/probability", "100" },
	{ "fail_page_alloc/interval", "1" }, { "failslab/interval", "1" },
	{ "fail_page_alloc/task-filter", "Y" }, { "failslab/task-filter", "Y" },
	{ "fail_page_alloc/verbose", "0" }, { "failslab/verbose", "0" },
	{ "fail_page_alloc/min-order", "0" },
	{ "fail_page_alloc/ignore-gfp-wait", "N" },
	{ "fail_page_alloc/ignore-gfp-highmem", "N" },
	{ "failslab/ignore-gfp-wait", "N" }, { "failslab/cache-filter", "N" },
};

/* /proc/<khugepaged>/make-it-fail while it is set, to clear it at exit. */
static char khugepaged_mif[64];
/* khugepaged's pid and CPUs while it is pinned to CPU 0 by a walk. */
static pid_t khugepaged_pinned;
static cpu_set_t khugepaged_cpus;
/* -v: the stack of every injected failure on the console. */
static bool verbose;
static char orig_core[16], thp_enabled[32];

/* Writes @val to @path with open/write only (also from a signal handler). */
static int raw_write(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, val, strlen(val));
	close(fd);
	return n == (ssize_t)strlen(val) ? 0 : -1;
}

/* Reads the first line of @path into @buf without its newline; 0 or -1. */
static int raw_read(const char *path, char *buf, size_t len)
{
	if (collapse_read_file(path, buf, len) <= 0)
		return -1;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

/* A number read from @path, or LONG_MIN. */
static long read_long(const char *path)
{
	char buf[64];

	return raw_read(path, buf, sizeof(buf)) ? LONG_MIN : atol(buf);
}

/* The monotonic clock. */
static struct timespec now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t;
}

/* Seconds since @t0. */
static double since(struct timespec t0)
{
	struct timespec t = now();

	return t.tv_sec - t0.tv_sec + (t.tv_nsec - t0.tv_nsec) / 1e9;
}

/* Puts every knob back as it was, stops khugepaged failing. */
static void restore_knobs(void)
{
	size_t i;

	if (khugepaged_mif[0])
		raw_write(khugepaged_mif, "0");
	if (khugepaged_pinned > 0)
		sched_setaffinity(khugepaged_pinned, sizeof(khugepaged_cpus),
				  &khugepaged_cpus);
	for (i = 0; i < ARRAY_SIZE(knobs); i++)
		if (knobs[i].saved)
			raw_write(knobs[i].path, knobs[i].old);
}

/* atexit(): knobs, THP mode and core back as they were. */
static void restore_all(void)
{
	restore_knobs();
	if (thp_enabled[0])
		raw_write(THP_SYSFS "enabled", thp_enabled);
	if (orig_core[0])
		raw_write(COLLAPSE_SYSFS "/core", orig_core);
}

/* SIGTERM (the harness's timeout) and friends: restore, then die. */
static void on_signal(int sig)
{
	restore_all();
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Puts the knob at @path back as it was. */
static void restore_knob(const char *path)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(knobs); i++)
		if (knobs[i].saved && !strcmp(knobs[i].path, path))
			raw_write(path, knobs[i].old);
}

/* Saves every knob and sets the fault attributes up, with times=0. */
static void setup_knobs(void)
{
	char path[128];
	size_t i;

	for (i = 0; i < ARRAY_SIZE(knobs); i++) {
		if (raw_read(knobs[i].path, knobs[i].old, sizeof(knobs[i].old)))
			ksft_exit_fail_msg("cannot read %s\n", knobs[i].path);
		knobs[i].saved = true;
	}
	atexit(restore_all);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	signal(SIGHUP, on_signal);
	for (i = 0; i < ARRAY_SIZE(knob_val); i++) {
		snprintf(path, sizeof(path), DEBUGFS "%s", knob_val[i][0]);
		if (raw_write(path, knob_val[i][1]))
			ksft_exit_fail_msg("cannot write %s\n", path);
	}
}

/* Writes the number @v to the knob @name of injector @k. */
static void inj_set(enum inj k, const char *name, long v)
{
	char path[128], val[32];

	snprintf(path, sizeof(path), "%s%s", inj_dir[k], name);
	snprintf(val, sizeof(val), "%ld", v);
	if (raw_write(path, val))
		ksft_exit_fail_msg("cannot write %s\n", path);
}

/* The knob @name of injector @k. */
static long inj_get(enum inj k, const char *name)
{
	char path[128];

	snprintf(path, sizeof(path), "%s%s", inj_dir[k], name);
	return read_long(path);
}

/* ---- The collapsing thread ------------------------------------------- */

/*
 * The thread that calls MADV_COLLAPSE, and only that: between calls it
 * sleeps in sem_wait() (a futex, no allocation), so with its make-it-fail
 * set around one call, the allocations of that call alone count.
 */
static struct {
	pthread_t th;
	pid_t tid;
	int mif;		/* /proc/self/task/<tid>/make-it-fail */
	sem_t go, done;
	char *addr;
	size_t len;
	int ret, err;
} worker;

/* The worker's loop: wait, collapse, report. */
static void *worker_fn(void *arg)
{
	worker.tid = syscall(SYS_gettid);
	sem_post(&worker.done);
	for (;;) {
		while (sem_wait(&worker.go))
			;
		worker.ret = madvise(worker.addr, worker.len, MADV_COLLAPSE);
		worker.err = worker.ret ? errno : 0;
		sem_post(&worker.done);
	}
	return arg;
}

/* Starts the worker and opens its make-it-fail. */
static void worker_start(void)
{
	char path[64];

	if (sem_init(&worker.go, 0, 0) || sem_init(&worker.done, 0, 0) ||
	    pthread_create(&worker.th, NULL, worker_fn, NULL))
		ksft_exit_fail_perror("worker");
	while (sem_wait(&worker.done))
		;
	snprintf(path, sizeof(path), "/proc/self/task/%d/make-it-fail",
		 worker.tid);
	worker.mif = open(path, O_WRONLY);
	if (worker.mif < 0)
		ksft_exit_fail_perror(path);
}

/* The result of one collapse call under injection. */
struct call {
	bool injected;		/* times went from 1 to 0 */
	bool thp;		/* the huge page's allocation failed */
	bool rust_fail;		/* the Rust core counted SCAN_FAIL */
	long left;		/* space left after the call */
	int ret, err;		/* khugepaged: err 0 for an unseen outcome */
	char outcome[48];	/* khugepaged on Rust: the outcome counted */
};

/* Who collapses in a walk: the worker's MADV_COLLAPSE, or khugepaged. */
enum caller { BY_MADVISE, BY_KHUGEPAGED };
static const char *const caller_stats[] = { "madvise", "khugepaged" };

/*
 * One MADV_COLLAPSE of @r by the worker with injector @k armed: space=@n,
 * times=1, make-it-fail set on the worker for the call only.
 */
static struct call inject_call(struct region *r, enum inj k, long n)
{
	struct call c = { 0 };

	inj_set(k, "times", 0);
	inj_set(k, "space", n);
	inj_set(k, "times", 1);
	worker.addr = r->p;
	worker.len = r->len;
	if (pwrite(worker.mif, "1", 1, 0) != 1)
		ksft_exit_fail_perror("make-it-fail");
	sem_post(&worker.go);
	while (sem_wait(&worker.done))
		;
	if (pwrite(worker.mif, "0", 1, 0) != 1)
		ksft_exit_fail_perror("make-it-fail");
	c.injected = inj_get(k, "times") == 0;
	c.left = inj_get(k, "space");
	inj_set(k, "times", 0);
	c.ret = worker.ret;
	c.err = worker.err;
	return c;
}

/* ---- The memory under test ------------------------------------------- */

/* A PMD of one memory type, its shadow, and the pagemap to look at it. */
struct fcase {
	enum mem_type type;
	struct region r;
	uint64_t shadow[PAGES_PER_PMD];
	uint64_t gen;
};

static int pagemap_fd = -1;

/* Whether page @pg is one of those swapped out or dropped from the cache. */
static bool is_out(size_t pg)
{
	return pg % OUT_STRIDE == OUT_FIRST;
}

/* A new region for @fc, written with a new generation (files: fsynced). */
static void case_setup(struct fcase *fc)
{
	fc->r = mem_region(fc->type, 1);
	fc->gen++;
	if (mem_populate(&fc->r, fc->shadow, fc->gen))
		ksft_exit_fail_perror("populate");
	if (fc->type == MEM_FILE && fsync(fc->r.fd))
		ksft_exit_fail_perror("fsync");
}

/* The region of @fc freed and made again (after a collapse, for instance). */
static void case_reset(struct fcase *fc)
{
	mem_region_free(&fc->r);
	case_setup(fc);
}

/* The Swap: of the VMA at @p in /proc/self/smaps, in kB, or -1. */
static long vma_swap_kb(const char *p)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	unsigned long start, end;
	char line[256];
	bool in = false;
	long kb = -1;

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
			in = start == (unsigned long)p;
		else if (in && sscanf(line, "Swap: %ld kB", &kb) == 1)
			break;
	}
	if (f)
		fclose(f);
	return kb;
}

/* How many of the NR_OUT pages of @fc are out (swapped, or not cached). */
static int count_out(struct fcase *fc)
{
	unsigned char vec[PAGES_PER_PMD];
	size_t pg;
	int out = 0;

	switch (fc->type) {
	case MEM_ANON:
		for (pg = OUT_FIRST; pg < PAGES_PER_PMD; pg += OUT_STRIDE)
			out += pagemap_is_swapped(pagemap_fd, fc->r.p + pg * PAGE_SZ);
		return out;
	case MEM_SHMEM:
		return vma_swap_kb(fc->r.p) / (PAGE_SZ / 1024);
	default:
		if (mincore(fc->r.p, PMD_SZ, vec))
			return -1;
		for (pg = 0; pg < PAGES_PER_PMD; pg++) {
			/* Every other page must be cached. */
			if (!is_out(pg) && !(vec[pg] & 1))
				return -1;
			out += is_out(pg) && !(vec[pg] & 1);
		}
		return out;
	}
}

/*
 * Brings @fc to the state every call starts from: base pages, the NR_OUT
 * pages swapped out (anon, shmem: each read back in first, then paged out)
 * or, for the file, dropped from the page cache while the other pages are
 * cached and mapped. Returns whether all NR_OUT pages are out.
 */
static bool case_prep(struct fcase *fc)
{
	char *p = fc->r.p;
	int tries;
	size_t pg;

	for (tries = 0; tries < 3; tries++) {
		if (fc->type == MEM_FILE) {
			madvise(fc->r.p, PMD_SZ, MADV_DONTNEED);
			for (pg = OUT_FIRST; pg < PAGES_PER_PMD; pg += OUT_STRIDE)
				posix_fadvise(fc->r.fd, pg * PAGE_SZ, PAGE_SZ,
					      POSIX_FADV_DONTNEED);
			for (pg = 0; pg < PAGES_PER_PMD; pg++)
				if (!is_out(pg))
					force_read_pages(p + pg * PAGE_SZ, 1, PAGE_SZ);
		} else {
			for (pg = OUT_FIRST; pg < PAGES_PER_PMD; pg += OUT_STRIDE)
				force_read_pages(p + pg * PAGE_SZ, 1, PAGE_SZ);
			for (pg = OUT_FIRST; pg < PAGES_PER_PMD; pg += OUT_STRIDE)
				madvise(fc->r.p + pg * PAGE_SZ, PAGE_SZ,
					MADV_PAGEOUT);
		}
		if (count_out(fc) == NR_OUT)
			return true;
	}
	return false;
}

/* ---- khugepaged ------------------------------------------------------- */

/* The pid of khugepaged, or -1. */
static pid_t khugepaged_pid(void)
{
	pid_t pid = -1;

	collapse_tasks_named("khugepaged", &pid, 1);
	return pid;
}

/*
 * The errno MADV_COLLAPSE gives for the Rust core's outcome @name, as
 * madvise_collapse_errno() maps the scan result; 0 for "succeed".
 */
static int outcome_errno(const char *name)
{
	static const struct {
		const char *name;
		int err;
	} map[] = {
		{ "succeed", 0 },
		{ "alloc_huge_page_fail", ENOMEM },
		{ "cgroup_charge_fail", EBUSY }, { "exceed_none_pte", EBUSY },
		{ "page_count", EAGAIN }, { "page_lock", EAGAIN },
		{ "page_lru", EAGAIN }, { "del_page_lru", EAGAIN },
		{ "page_filled", EAGAIN }, { "page_has_private", EAGAIN },
		{ "page_dirty_or_writeback", EAGAIN },
	};
	int err = EINVAL;	/* every other outcome */
	size_t i;

	for (i = 0; i < ARRAY_SIZE(map); i++)
		if (!strcmp(name, map[i].name))
			err = map[i].err;
	return err;
}

/*
 * Wakes khugepaged (writing scan_sleep_millisecs does) and waits for the
 * pass to end: full_scans moves once it has scanned the program's mm. A
 * wake that came while khugepaged was still going to sleep after the last
 * pass is lost (it sets its timer after the write): every 2 s without a
 * pass, the knob is written again.
 */
static void khugepaged_pass(void)
{
	long scans = read_long(KHUGEPAGED_SYSFS "full_scans");
	int i;

	for (i = 0; i < KHUGEPAGED_PASS_POLLS; i++) {
		if (!(i % 200) &&
		    raw_write(KHUGEPAGED_SYSFS "scan_sleep_millisecs",
			      KHUGEPAGED_IDLE_MS))
			ksft_exit_fail_msg("cannot wake khugepaged\n");
		usleep(10000);
		if (read_long(KHUGEPAGED_SYSFS "full_scans") > scans)
			return;
	}
	ksft_exit_fail_msg("khugepaged made no pass in %d s\n",
			   KHUGEPAGED_PASS_POLLS / 100);
}

/*
 * One khugepaged pass over the prepared PMD with injector @k armed:
 * space=@n, times=1, khugepaged's make-it-fail set for the whole walk.
 * ret is 0 if it collapsed (pages_collapsed moved); err is the errno
 * MADV_COLLAPSE gives for the outcome the Rust core counted (one, named
 * in outcome), or 0 on the C core.
 */
static struct call inject_khugepaged(enum inj k, long n)
{
	long collapsed = read_long(KHUGEPAGED_SYSFS "pages_collapsed");
	struct rust_stats a, b;
	struct call c = { 0 };
	int i;

	rust_stats_read("khugepaged", &a);
	inj_set(k, "times", 0);
	inj_set(k, "space", n);
	inj_set(k, "times", 1);
	khugepaged_pass();
	c.injected = inj_get(k, "times") == 0;
	c.left = inj_get(k, "space");
	inj_set(k, "times", 0);
	rust_stats_read("khugepaged", &b);
	c.ret = read_long(KHUGEPAGED_SYSFS "pages_collapsed") > collapsed ?
		0 : -1;
	for (i = 0; i < b.n; i++) {
		if (!rust_stats_delta(&a, &b, b.name[i]) ||
		    rust_stat_is_path(b.name[i]))
			continue;
		/* More than one outcome in one pass: not a documented one. */
		c.err = c.outcome[0] ? -1 : outcome_errno(b.name[i]);
		snprintf(c.outcome, sizeof(c.outcome), "%s", b.name[i]);
	}
	c.rust_fail = !strcmp(c.outcome, "fail");
	return c;
}

/*
 * Sets khugepaged up for a walk: THP on for MADV_HUGEPAGE areas, its
 * thread failing (times still 0), asleep between the passes the steps
 * ask for, and on CPU 0 with the program: pages its swap-ins bring back
 * wait in its CPU's LRU batch, which the program's MADV_PAGEOUT drains
 * only on its own CPU, so that they could not be paged out again. The
 * region is made and prepared while every page allocation of khugepaged
 * fails, so that a pass its registration starts cannot collapse it.
 */
static void khugepaged_walk_start(struct fcase *fc)
{
	cpu_set_t cpu0;
	pid_t pid = -1;
	int i;

	if (raw_write(THP_SYSFS "enabled", "madvise") ||
	    raw_write(KHUGEPAGED_SYSFS "alloc_sleep_millisecs", "10") ||
	    raw_write(KHUGEPAGED_SYSFS "pages_to_scan", "4096") ||
	    raw_write(KHUGEPAGED_SYSFS "scan_sleep_millisecs",
		      KHUGEPAGED_IDLE_MS))
		ksft_exit_fail_msg("cannot set up khugepaged\n");
	for (i = 0; i < 50 && pid < 0; i++) {
		pid = khugepaged_pid();
		if (pid < 0)
			usleep(100000);
	}
	if (pid < 0)
		ksft_exit_fail_msg("no khugepaged thread\n");
	CPU_ZERO(&cpu0);
	CPU_SET(0, &cpu0);
	if (sched_getaffinity(pid, sizeof(khugepaged_cpus), &khugepaged_cpus) ||
	    sched_setaffinity(pid, sizeof(cpu0), &cpu0))
		ksft_exit_fail_perror("khugepaged's CPUs");
	khugepaged_pinned = pid;
	snprintf(khugepaged_mif, sizeof(khugepaged_mif),
		 "/proc/%d/make-it-fail", pid);
	if (raw_write(khugepaged_mif, "1"))
		ksft_exit_fail_msg("cannot write %s\n", khugepaged_mif);
	inj_set(INJ_PAGE, "space", 0);
	inj_set(INJ_PAGE, "times", -1);
	/*
	 * The faults that write the region map huge pages (THP is on for
	 * it); the first swap-out splits them, as it does after a collapse.
	 */
	case_setup(fc);
	if (!case_prep(fc))
		ksft_exit_fail_msg("cannot swap %d pages of the region out\n",
				   NR_OUT);
	/*
	 * Two passes, apart: one the registration may have started, then
	 * one that began after it, so none is left that could collapse.
	 */
	khugepaged_pass();
	usleep(200000);
	khugepaged_pass();
	inj_set(INJ_PAGE, "times", 0);
	if (mem_pmd_mapped(&fc->r))
		ksft_exit_fail_msg("khugepaged collapsed with every allocation failing\n");
}

/* khugepaged back to how the program found it, its thread not failing. */
static void khugepaged_walk_end(void)
{
	raw_write(khugepaged_mif, "0");
	khugepaged_mif[0] = 0;
	sched_setaffinity(khugepaged_pinned, sizeof(khugepaged_cpus),
			  &khugepaged_cpus);
	khugepaged_pinned = 0;
	raw_write(THP_SYSFS "enabled", "never");
	restore_knob(KHUGEPAGED_SYSFS "pages_to_scan");
	restore_knob(KHUGEPAGED_SYSFS "alloc_sleep_millisecs");
	restore_knob(KHUGEPAGED_SYSFS "scan_sleep_millisecs");
}

/* ---- Walking through every allocation ---------------------------------- */

/* A counter of /proc/vmstat, or -1. */
static long long vmstat_count(const char *name)
{
	FILE *f = fopen("/proc/vmstat", "r");
	char key[64];
	long long v, ret = -1;

	while (f && fscanf(f, "%63s %lld", key, &v) == 2)
		if (!strcmp(key, name)) {
			ret = v;
			break;
		}
	if (f)
		fclose(f);
	return ret;
}

/* An injection that made a collapse fail, for the leak loops. */
struct point {
	enum mem_type type;
	enum inj k;
	long n;
};

static struct point points[2][MAX_POINTS];
static int nr_points[2];

/* What one walk saw. */
struct walk {
	int core;
	enum caller caller;
	int calls, injected, sites, untouched, bad_untouched, thp_failed;
	/* ENOMEM, EAGAIN, EBUSY, EINVAL, other, not seen (khugepaged on C) */
	int errs[6];
	int ok_anyway, bad_ok, huge_on_fail, prep_fail;
	size_t lost;
	long total;
	bool measured;
	long long rust_moved;
};

/*
 * Counts the errno of failing call @c with space @n in @w, and says which
 * allocation gave an errno MADV_COLLAPSE does not document: the one after
 * the first n minus the space left (see the top). EINVAL counts as
 * documented only as upstream gives it, for a page that could not be
 * swapped in or read: a page allocation after the huge page's, and on the
 * Rust core with its "fail" counter moved.
 */
static void count_errno(struct walk *w, const struct call *c, long n,
			const char *what, enum inj k)
{
	bool read_in = k == INJ_PAGE && n - c->left >= PAGES_PER_PMD &&
		       (w->core || c->rust_fail);
	bool unseen = w->caller == BY_KHUGEPAGED && w->core && !c->err;
	int e = c->err;
	int i = e == ENOMEM ? 0 : e == EAGAIN ? 1 : e == EBUSY ? 2 :
		e == EINVAL && read_in ? 3 : unseen ? 5 : 4;

	w->errs[i]++;
	if (i == 4)
		ksft_print_msg("%s: space %ld fails the allocation after the first %ld %s: %s %s\n",
			       what, n, n - c->left,
			       k == INJ_PAGE ? "pages" : "bytes",
			       e > 0 ? strerror(e) : "outcome", c->outcome);
}

/*
 * One call with space @n on the prepared @fc, and its checks: the range
 * not PMD-mapped after a failure (looked at before the contents are read,
 * which faults), PMD-mapped after a success, and every byte as before; a
 * call left untouched must have collapsed, on the Rust core through the
 * Rust core. Returns the call; the region is made again if it collapsed.
 */
static struct call walk_call(struct fcase *fc, enum inj k, long n,
			     struct walk *w, const char *what)
{
	const char *stats = caller_stats[w->caller];
	long long thp_fails = vmstat_count("thp_collapse_alloc_failed");
	long long succeed = rust_stat(stats, "succeed");
	long long fail = rust_stat(stats, "fail");
	struct call c;
	bool huge;
	size_t bad;

	if (!case_prep(fc))
		w->prep_fail++;
	if (w->caller == BY_KHUGEPAGED) {
		c = inject_khugepaged(k, n);
	} else {
		c = inject_call(&fc->r, k, n);
		c.rust_fail = rust_stat(stats, "fail") == fail + 1;
	}
	c.thp = vmstat_count("thp_collapse_alloc_failed") > thp_fails;
	/* khugepaged on C: the one outcome seen, the huge page's failure. */
	if (w->caller == BY_KHUGEPAGED && w->core && c.thp && c.ret)
		c.err = ENOMEM;
	w->thp_failed += c.thp;
	w->calls++;
	huge = mem_pmd_mapped(&fc->r);
	bad = mem_bad_pages(&fc->r, fc->shadow);
	w->lost += bad;
	if (!c.injected) {
		w->untouched++;
		w->bad_untouched += c.ret || !huge ||
			(!w->core && rust_stat(stats, "succeed") != succeed + 1);
	} else if (!c.ret) {
		w->ok_anyway++;
		w->bad_ok += !huge;
	} else {
		count_errno(w, &c, n, what, k);
		w->huge_on_fail += huge;
	}
	/* Collapsed, or PMD-mapped by the faults of the check: start again. */
	if (!c.ret || huge || mem_pmd_mapped(&fc->r))
		case_reset(fc);
	return c;
}

/*
 * Counts an injected failure of call @c, with space @n, of the allocation
 * that starts after @start; a new site (not the one the previous call
 * failed) of a failing call is kept for the leak loops.
 */
static void count_site(struct walk *w, enum mem_type type, enum inj k,
		       const struct call *c, long n, long start, long *last)
{
	w->injected++;
	if (start == *last)
		return;
	*last = start;
	w->sites++;
	if (c->ret && w->caller == BY_MADVISE &&
	    nr_points[w->core] < MAX_POINTS)
		points[w->core][nr_points[w->core]++] =
			(struct point){ type, k, n };
}

/*
 * The space after @n in a page walk. Past the huge page (@thp: the call
 * failed it, at @start) in one step: first to THP_MARGIN pages before its
 * end, then, once a call found it at the same start as the call before
 * (*@thp_start), right past it.
 */
static long thp_next(long n, long start, bool thp, long *thp_start)
{
	long next = start + PAGES_PER_PMD + 1;

	if (!thp)
		return n + 1;
	if (start != *thp_start)
		next -= THP_MARGIN;
	*thp_start = start;
	return next > n + 1 ? next : n + 1;
}

/*
 * Fails every allocation of one collapse of @type by @caller in turn with
 * injector @k on @core. Page allocations are stepped through a page at a
 * time from space 1 (space 0 and 1 fail the same first allocation), over
 * the huge page (the one allocation that moves thp_collapse_alloc_failed)
 * in one step, until a call is left untouched; slab allocations are walked
 * from the last to the first (see the top). khugepaged's page walk must
 * also have met the huge page, its failure counted (thp_collapse_alloc_failed
 * and, on the Rust core, alloc_huge_page_fail).
 */
static void test_walk(int core, enum mem_type type, enum inj k,
		      enum caller caller)
{
	bool khugepaged = caller == BY_KHUGEPAGED;
	long long total = rust_stat_total(caller_stats[caller]);
	struct fcase fc = { .type = type };
	struct walk w = { .core = core, .caller = caller };
	struct timespec t0 = now();
	long n, start, last = -1, thp_start = -1;
	char what[64];
	struct call c;
	bool pass;

	snprintf(what, sizeof(what), "%s %s%s %s", cores[core],
		 khugepaged ? "khugepaged " : "", mem_type_name[type],
		 inj_name[k]);
	collapse_require_core(cores[core]);
	if (khugepaged)
		khugepaged_walk_start(&fc);
	else
		case_setup(&fc);

	if (k == INJ_PAGE) {
		for (n = 1; w.calls <= MAX_CALLS;) {
			c = walk_call(&fc, k, n, &w, what);
			if (!c.injected) {
				w.total = n - c.left;
				w.measured = true;
				break;
			}
			start = n - c.left;
			count_site(&w, type, k, &c, n, start, &last);
			n = thp_next(n, start, c.thp, &thp_start);
		}
	} else {
		/* Nothing fails: the total, and a collapse. */
		c = walk_call(&fc, k, SPACE_ALL, &w, what);
		w.total = SPACE_ALL - c.left;
		w.measured = !c.injected;
		for (n = w.total; w.measured && w.calls <= MAX_CALLS;) {
			c = walk_call(&fc, k, n, &w, what);
			if (!c.injected) {
				/* The sequence got shorter: from its end. */
				if (!n)
					break;
				n -= c.left;
				continue;
			}
			start = n - c.left;
			count_site(&w, type, k, &c, n, start, &last);
			if (!start)
				break;
			n = start;
		}
	}
	w.rust_moved = rust_stat_total(caller_stats[caller]) - total;
	mem_region_free(&fc.r);
	if (khugepaged)
		khugepaged_walk_end();

	pass = w.measured && w.calls <= MAX_CALLS + 1 && w.injected &&
	       !w.errs[4] && !w.lost && !w.huge_on_fail && !w.bad_ok &&
	       !w.bad_untouched && !w.prep_fail &&
	       /* khugepaged met the huge page, and counted its failure. */
	       (!khugepaged || k != INJ_PAGE || (w.thp_failed && w.errs[0])) &&
	       (core ? !w.rust_moved : w.rust_moved >= w.injected);
	ksft_print_msg("%s: %.1f s\n", what, since(t0));
	if (khugepaged)
		ksft_print_msg("%s: the huge page failed %d times; %d failures %s\n",
			       what, w.thp_failed, w.errs[5],
			       "with no outcome to see (C core)");
	ksft_test_result(pass,
			 "%s: %s%s, %d pages %s, %s: total %ld %s, %d calls, %d sites; failures ENOMEM %d, EAGAIN %d, EBUSY %d, EINVAL reading a page in %d, other %d, succeeded anyway %d; %zu pages differ, PMD-mapped after failure %d, bad successes %d, prep failures %d, rust counters +%lld\n",
			 cores[core], khugepaged ? "khugepaged, " : "",
			 mem_type_name[type], NR_OUT,
			 type == MEM_FILE ? "uncached" : "swapped out",
			 inj_name[k], w.total, k == INJ_PAGE ? "pages" : "bytes",
			 w.calls, w.sites, w.errs[0], w.errs[1], w.errs[2],
			 w.errs[3], w.errs[4], w.ok_anyway, w.lost, w.huge_on_fail,
			 w.bad_ok + w.bad_untouched + !w.measured, w.prep_fail,
			 w.rust_moved);
}

/* ---- Leaks --------------------------------------------------------------- */

/* The pages on the per-CPU free lists (/proc/zoneinfo), in kB. */
static long pcp_kb(void)
{
	FILE *f = fopen("/proc/zoneinfo", "r");
	char line[256];
	long sum = 0, v;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, " count: %ld", &v) == 1)
			sum += v;
	if (f)
		fclose(f);
	return sum * (PAGE_SZ / 1024);
}

/*
 * Writes back, drops the page cache and reclaimable slab, shrinks every
 * slab cache (which also empties KASAN's quarantine) and gives RCU frees
 * time.
 */
static void settle(void)
{
	struct dirent *e;
	char path[300];
	DIR *d;

	sync();
	raw_write("/proc/sys/vm/drop_caches", "3");
	d = opendir("/sys/kernel/slab");
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/kernel/slab/%s/shrink",
			 e->d_name);
		raw_write(path, "1");
	}
	if (d)
		closedir(d);
	usleep(200000);
}

/*
 * The live slab objects of every cache, in kB: objects in use times their
 * size (/proc/slabinfo). Unlike the slab pages of /proc/meminfo, which
 * after the churn of the walks keep shrinking by hundreds of kB for a
 * minute as partly used slabs fill up and others empty, this moves only
 * with what is allocated.
 */
static long slab_objects_kb(void)
{
	FILE *f = fopen("/proc/slabinfo", "r");
	long long sum = 0;
	long objs, nr, size;
	char line[512];

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%*s %ld %ld %ld", &objs, &nr, &size) == 3)
			sum += (long long)objs * size;
	if (f)
		fclose(f);
	return sum / 1024;
}

/*
 * Kernel memory in kB: live slab objects, slab pages (SUnreclaim and all
 * of Slab), page tables, free pages.
 */
struct mem {
	long objects, sunreclaim, slab, pt, free;
};

/*
 * The memory once it has settled: read after settle() until two readings
 * in a row agree (slab objects within 16 kB, free memory within 64 kB), as
 * deferred frees of what ran before still come in; three at most, as
 * shrinking every cache under KASAN takes seconds.
 */
static struct mem mem_now(void)
{
	struct mem m = { 0 }, prev;
	int i;

	for (i = 0; i < 3; i++) {
		prev = m;
		settle();
		m.objects = slab_objects_kb();
		m.sunreclaim = meminfo_kb("SUnreclaim");
		m.slab = meminfo_kb("Slab");
		m.pt = meminfo_kb("PageTables");
		m.free = meminfo_kb("MemFree") + pcp_kb();
		if (i && labs(m.objects - prev.objects) <= 16 &&
		    labs(m.free - prev.free) <= 64)
			break;
	}
	return m;
}

/*
 * LEAK_ROUNDS collapses on @core, each failing at one of the allocation
 * sites its walks found (taken in turn), on regions of all three types
 * that are kept and prepared again for every call: live slab objects,
 * page tables and the memory taken outside the slab must be where they
 * were.
 */
static void test_leak(int core)
{
	long long total = rust_stat_total("madvise");
	struct timespec t0 = now();
	struct fcase fc[NR_MEM_TYPES];
	int i, t, fails = 0, others = 0;
	struct mem before = { 0 }, after;
	long other;
	size_t lost = 0;

	collapse_require_core(cores[core]);
	for (t = 0; t < NR_MEM_TYPES; t++) {
		fc[t] = (struct fcase){ .type = t };
		case_setup(&fc[t]);
	}
	for (i = -LEAK_WARMUP; nr_points[core] && i < LEAK_ROUNDS; i++) {
		struct point *pt = &points[core][(i + LEAK_WARMUP) % nr_points[core]];
		struct fcase *f = &fc[pt->type];
		struct call c;

		if (!i) {
			for (t = 0; t < NR_MEM_TYPES; t++)
				case_prep(&fc[t]);
			before = mem_now();
		}
		case_prep(f);
		c = inject_call(&f->r, pt->k, pt->n);
		if (i >= 0) {
			fails += c.injected && c.ret;
			others += !c.injected || !c.ret;
		}
		if (!c.ret) {
			case_reset(f);
		} else if (i >= 0 && !(i % 10)) {
			/* Some contents, not all: the walks checked every call. */
			lost += mem_bad_pages(&f->r, f->shadow);
			if (mem_pmd_mapped(&f->r))
				case_reset(f);
		}
	}
	for (t = 0; t < NR_MEM_TYPES; t++)
		case_prep(&fc[t]);
	after = mem_now();
	for (t = 0; t < NR_MEM_TYPES; t++)
		mem_region_free(&fc[t].r);
	total = rust_stat_total("madvise") - total;
	ksft_print_msg("%s leak loops: %.1f s\n", cores[core], since(t0));
	/*
	 * Free memory the slab did not take: leaked pages (a page table that
	 * is not counted any more, a folio) show here, slab pages that come
	 * and go do not.
	 */
	other = (before.free - after.free) - (after.slab - before.slab);
	ksft_test_result(nr_points[core] && fails >= LEAK_ROUNDS * 3 / 4 &&
			 !lost && after.objects - before.objects < LEAK_SLAB_KB &&
			 after.pt - before.pt < LEAK_PT_KB &&
			 other < LEAK_FREE_KB && (core ? !total : total >= fails),
			 "%s: %d failing collapses (%d of them failed, %d did not, over %d sites) leave no memory behind: slab objects %+ld kB (SUnreclaim %+ld kB), page tables %+ld kB, other memory %+ld kB (free %+ld kB); %zu pages differ; rust counters +%lld\n",
			 cores[core], LEAK_ROUNDS, fails, others,
			 nr_points[core], after.objects - before.objects,
			 after.sunreclaim - before.sunreclaim,
			 after.pt - before.pt, other, after.free - before.free,
			 lost, total);
}

int main(int argc, char **argv)
{
	int core, t, k;
	cpu_set_t cpus;

	if (argc > 1 && !strcmp(argv[1], "-v")) {
		verbose = true;
		argc--;
		argv++;
	}
	if (argc > 1)
		mem_file_dir = argv[1];
	collapse_test_start(orig_core, sizeof(orig_core), thp_enabled,
			    sizeof(thp_enabled));
	ksft_set_plan(2 * NR_MEM_TYPES * NR_INJ + 2 + 2 * NR_INJ);
	if (access(DEBUGFS "fail_page_alloc/space", W_OK) ||
	    access(DEBUGFS "failslab/space", W_OK))
		ksft_exit_fail_msg("no fail_page_alloc or failslab in debugfs\n");
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
	if (pagemap_fd < 0)
		ksft_exit_fail_perror("pagemap");
	/*
	 * One CPU for the program and its worker: pages the worker's calls
	 * swap in sit in that CPU's LRU batch, which MADV_PAGEOUT drains only
	 * on the CPU it runs on, before they can be paged out again.
	 */
	CPU_ZERO(&cpus);
	CPU_SET(0, &cpus);
	if (sched_setaffinity(0, sizeof(cpus), &cpus))
		ksft_exit_fail_perror("sched_setaffinity");
	setup_knobs();
	if (verbose && (raw_write(DEBUGFS "fail_page_alloc/verbose", "2") ||
			raw_write(DEBUGFS "failslab/verbose", "2")))
		ksft_exit_fail_msg("cannot set verbose\n");
	worker_start();

	for (core = 0; core < 2; core++)
		for (t = 0; t < NR_MEM_TYPES; t++)
			for (k = 0; k < NR_INJ; k++)
				test_walk(core, t, k, BY_MADVISE);
	for (core = 0; core < 2; core++)
		test_leak(core);
	for (core = 0; core < 2; core++)
		for (k = 0; k < NR_INJ; k++)
			test_walk(core, MEM_ANON, k, BY_KHUGEPAGED);

	restore_all();
	ksft_finished();
}
