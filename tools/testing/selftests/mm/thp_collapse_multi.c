// SPDX-License-Identifier: GPL-2.0
/*
 * Several collapsers at once on one range, on the Rust and on the C collapse
 * core, for private anonymous memory, a memfd (shmem) and a file on XFS.
 *
 * Two threads call madvise(MADV_COLLAPSE) on the range in a loop, a second
 * process calls process_madvise(MADV_COLLAPSE) on it through a pidfd, and
 * khugepaged scans with no sleep, while two writer threads write new
 * generations of their own pages (even and odd) through the mapping and, for
 * the memfd and the file, with pwrite(2), keeping the last generation of each
 * page in a shadow. Each round the main thread splits the range back to base
 * pages (debugfs split_huge_pages, with the collapsers, the writers and
 * khugepaged held off) and waits for it to be collapsed again: PMD-mapped
 * for anon and shmem, backed by a PMD-sized folio for the file (whose PMD
 * mapping the writers split again). Meanwhile a third process, the
 * neighbour, collapses memory of its own of the same type in a loop: two
 * address spaces collapse truly in parallel, as on a busy machine (the
 * collapsers of one range serialize on its page table's lock), which is what
 * lets the KCSAN boot see the collapse's C side race with itself.
 * Each case checks that:
 *  - every failed collapse call failed with EAGAIN or EBUSY, the
 *    neighbour's too, and the neighbour collapsed at least once;
 *  - no write got lost: every page holds its writer's last generation,
 *    through the mapping and, for the memfd and the file, through read(2);
 *    every page of the neighbour's holds what it wrote;
 *  - a collapse happened in at least half the rounds (the range was
 *    collapsed again, and on the Rust core a Rust "succeed" counter moved);
 *  - rust: the madvise "succeed" counter moved by more than the
 *    neighbour's successes, and the process_madvise one moved (the
 *    per-round check that a Rust counter moved is weaker with the
 *    neighbour collapsing, hence these);
 *    c: no Rust counter moved at all (the knob really selects the C core).
 *
 *   thp_collapse_multi [-r ROUNDS] [-d DIR] [-w USEC] [-T SECONDS]
 *
 * -r: rounds per core and memory type (default DEFAULT_ROUNDS); -d: the XFS
 * directory (default /mnt/xfs); -w: the writers' pause after each page, in
 * microseconds (default: per memory type, see pace[]); -T: the time limit
 * (default PROGRAM_LIMIT_S). Each case gets an equal share of the time left
 * and stops its rounds early (and says so) when another round would overrun
 * it, but not before MIN_ROUNDS rounds: on a slow machine a case goes on past
 * its share to those, taking from the cases after it, but never past the
 * time limit, where a case with fewer rounds fails. Run as root:
 * it sets THP and khugepaged knobs (and restores them), splits through
 * debugfs, and process_madvise() needs CAP_SYS_NICE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest.h"
#include "thp_collapse_mem.h"

#define NR_PMDS 1
#define NR_PAGES (NR_PMDS * PAGES_PER_PMD)
#define DEFAULT_ROUNDS 200
/* How long a round waits for the range to be collapsed again. */
#define ROUND_TIMEOUT_S 2.0
/* How long the whole program may take by default (-T). */
#define PROGRAM_LIMIT_S 225.0
/* Rounds a case does even past its share of the time. */
#define MIN_ROUNDS 10
/* What a case takes after its rounds (stop, join, check), at most. */
#define TEARDOWN_S 3.0
#define SPLIT_TRIES 20
#define POLL_US 2000
#define COLLAPSER_PAUSE_US 1000

static const char *const cores[] = { "rust", "c" };

/*
 * How the writers pace themselves, per memory type. A dirty XFS folio stops
 * a collapse (MADV_COLLAPSE writes the range back and tries once more), so
 * there the writers write bursts with random gaps: collapses find clean
 * windows, and writes still land while a collapse holds the pages. The
 * longest gap adapts to the machine's speed: doubled after a round without
 * a collapse, cut by a fifth after a round with one, within GAP_MIN_MS and
 * GAP_MAX_MS, so that most rounds collapse however slow the guest is.
 */
struct pace {
	unsigned int pause_us;	/* after each page (-w overrides it) */
	unsigned int burst;	/* pages between gaps; 0: no gaps */
};

static const struct pace pace[NR_MEM_TYPES] = {
	[MEM_ANON] = { 100, 0 },
	[MEM_SHMEM] = { 100, 0 },
	[MEM_FILE] = { 100, 4 },
};

#define GAP_START_MS 500
#define GAP_MIN_MS 20
#define GAP_MAX_MS 5000

enum caller { BY_MADVISE, BY_PROCESS_MADVISE, NR_CALLERS };
static const char *const stat_caller[] = {
	"madvise", "process_madvise", "khugepaged",
};

/* The outcomes of one caller's collapse calls. */
struct tally {
	atomic_long ok, eagain, ebusy, other;
	atomic_int last_other;	/* errno of the last unexpected failure */
};

/* What the collapsers and writers share (with the child process too). */
struct ctl {
	atomic_int state;	/* 0: wait, 1: collapse, 2: stop */
	atomic_int hold;	/* no new calls or writes: the main thread splits */
	atomic_int busy;	/* calls and writes under way */
	char *p;
	size_t len;
	atomic_int child_err;	/* errno of the child's pidfd_open() */
	struct tally t[NR_CALLERS];
	struct tally nb;	/* the neighbour's collapse calls */
	atomic_long nb_lost;	/* pages of the neighbour's found wrong */
};

/* A writer thread: owns the pages pg with pg % 2 == id. */
struct writer {
	struct region *r;
	uint64_t *shadow;
	struct ctl *c;
	atomic_int *stop;
	atomic_int *gap_ms;	/* the longest gap now */
	struct pace pace;
	int id;
	long writes, pwrites;
	int err;		/* errno of a failed pwrite(), which stops it */
	pthread_t th;
};

/* The knobs a case sets, restored in reverse order. */
struct knob {
	const char *path;
	const char *val;
	char old[80];
	bool set;
};

static struct knob knobs[] = {
	{ THP_SYSFS "khugepaged/scan_sleep_millisecs", "0" },
	{ THP_SYSFS "khugepaged/alloc_sleep_millisecs", "10" },
	{ THP_SYSFS "khugepaged/pages_to_scan", "4096" },
	{ THP_SYSFS "shmem_enabled", "advise" },
	/* Last: this starts khugepaged. */
	{ THP_SYSFS "enabled", "madvise" },
};

#define NR_KNOBS ((int)ARRAY_SIZE(knobs))

static char orig_core[16], orig_enabled[32];

/* The monotonic clock, in seconds. */
static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Puts back every knob a case changed (also at exit, after a failure). */
static void knobs_restore(void)
{
	int i;

	for (i = NR_KNOBS - 1; i >= 0; i--) {
		if (knobs[i].set)
			set_str(knobs[i].path, knobs[i].old);
		knobs[i].set = false;
	}
}

/* Sets every knob of a case, saving the old values; false on failure. */
static bool knobs_set(void)
{
	int i;

	for (i = 0; i < NR_KNOBS; i++) {
		if (sysfs_swap_str(knobs[i].path, knobs[i].old,
				   sizeof(knobs[i].old), knobs[i].val)) {
			ksft_print_msg("cannot set %s to %s\n", knobs[i].path,
				       knobs[i].val);
			knobs_restore();
			return false;
		}
		knobs[i].set = true;
	}
	return true;
}

/* At exit: the case's knobs, the core and THP "enabled" as they were. */
static void restore_all(void)
{
	knobs_restore();
	if (orig_core[0])
		collapse_set_core(orig_core);
	if (orig_enabled[0])
		set_str(THP_SYSFS "enabled", orig_enabled);
}

/* Counts the outcome of one collapse call: 0 or its errno. */
static void tally_add(struct tally *t, int err)
{
	if (!err) {
		atomic_fetch_add(&t->ok, 1);
	} else if (err == EAGAIN) {
		atomic_fetch_add(&t->eagain, 1);
	} else if (err == EBUSY) {
		atomic_fetch_add(&t->ebusy, 1);
	} else {
		atomic_fetch_add(&t->other, 1);
		atomic_store(&t->last_other, err);
	}
}

/*
 * Whether a collapser may start a call, or a writer a write, now: not while
 * the main thread splits the range (it waits for those under way to end).
 * They end with atomic_fetch_sub(&c->busy, 1).
 */
static bool work_begin(struct ctl *c)
{
	if (atomic_load(&c->hold))
		return false;
	atomic_fetch_add(&c->busy, 1);
	if (!atomic_load(&c->hold))
		return true;
	atomic_fetch_sub(&c->busy, 1);
	return false;
}

/* A collapser thread: madvise(MADV_COLLAPSE) of the range until stopped. */
static void *collapser(void *arg)
{
	struct ctl *c = arg;
	int ret;

	while (atomic_load(&c->state) == 1) {
		if (work_begin(c)) {
			ret = madvise(c->p, c->len, MADV_COLLAPSE);
			tally_add(&c->t[BY_MADVISE], ret ? errno : 0);
			atomic_fetch_sub(&c->busy, 1);
		}
		usleep(COLLAPSER_PAUSE_US);
	}
	return NULL;
}

/*
 * The child process: process_madvise(MADV_COLLAPSE) of the parent's range
 * through a pidfd until stopped. It prints nothing and only _exit()s.
 */
static __noreturn void child_main(struct ctl *c)
{
	pid_t parent = getppid();
	int pidfd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	pidfd = syscall(SYS_pidfd_open, parent, 0);
	if (pidfd < 0) {
		atomic_store(&c->child_err, errno);
		_exit(1);
	}
	while (atomic_load(&c->state) == 0)
		usleep(1000);
	while (atomic_load(&c->state) == 1) {
		struct iovec iov = { .iov_base = c->p, .iov_len = c->len };
		long ret;

		if (work_begin(c)) {
			ret = syscall(SYS_process_madvise, pidfd, &iov, 1,
				      MADV_COLLAPSE, 0);
			tally_add(&c->t[BY_PROCESS_MADVISE],
				  ret < 0 ? errno : ret == (long)c->len ? 0 : EIO);
			atomic_fetch_sub(&c->busy, 1);
		}
		usleep(COLLAPSER_PAUSE_US);
	}
	close(pidfd);
	_exit(0);
}

/*
 * The neighbour process: until stopped, maps one PMD range of @type of its
 * own, fills it, collapses it with MADV_COLLAPSE, checks every page and
 * unmaps it. It prints nothing and only _exit()s.
 */
static __noreturn void neighbour_main(struct ctl *c, enum mem_type type)
{
	static uint64_t shadow[PAGES_PER_PMD];
	pid_t parent = getppid();
	uint64_t gen = 1;
	int ret;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	while (atomic_load(&c->state) == 0)
		usleep(1000);
	while (atomic_load(&c->state) == 1) {
		/*
		 * Without MADV_HUGEPAGE: with THP "enabled" and "shmem_enabled"
		 * at madvise and advise, faults fill it with small folios and
		 * khugepaged leaves it alone, so each successful MADV_COLLAPSE
		 * of it is a collapse (one "succeed" count) by the neighbour.
		 */
		struct region r = mem_region_advised(type, 1, false);

		if (mem_populate(&r, shadow, gen++))
			_exit(1);
		ret = madvise(r.p, r.len, MADV_COLLAPSE);
		tally_add(&c->nb, ret ? errno : 0);
		atomic_fetch_add(&c->nb_lost, mem_bad_pages(&r, shadow));
		mem_region_free(&r);
	}
	_exit(0);
}

/*
 * A writer: the next generation of each of its pages in turn, through the
 * mapping or, for the memfd and the file, with pwrite(2) every other
 * generation; the shadow keeps the last one written.
 */
static void *writer(void *arg)
{
	struct writer *w = arg;
	unsigned int seed = w->id + 1, n = 0;
	char buf[PAGE_SZ];
	size_t pg = w->id;

	while (!atomic_load(w->stop)) {
		uint64_t gen = w->shadow[pg] + 1;

		if (!work_begin(w->c)) {
			usleep(1000);
			continue;
		}
		if (w->r->fd >= 0 && (gen + pg / 2) % 2) {
			mem_fill(buf, pg, gen);
			if (pwrite(w->r->fd, buf, PAGE_SZ, pg * PAGE_SZ) != PAGE_SZ) {
				w->err = errno ? errno : EIO;
				atomic_fetch_sub(&w->c->busy, 1);
				break;
			}
			w->pwrites++;
		} else {
			mem_fill(w->r->p + pg * PAGE_SZ, pg, gen);
		}
		atomic_fetch_sub(&w->c->busy, 1);
		w->shadow[pg] = gen;
		w->writes++;
		pg += 2;
		if (pg >= NR_PAGES)
			pg = w->id;
		if (w->pace.pause_us)
			usleep(w->pace.pause_us);
		if (w->pace.burst && ++n % w->pace.burst == 0)
			usleep(1000 * (rand_r(&seed) % (atomic_load(w->gap_ms) + 1)));
	}
	return NULL;
}

/* The sum of the Rust core's "succeed" counters of all three callers. */
static long long rust_succeed_sum(void)
{
	long long sum = 0;
	int i;

	for (i = 0; i < 3; i++)
		sum += rust_stat(stat_caller[i], "succeed");
	return sum;
}

/* The /proc/vmstat counter @name, or -1. */
static long vmstat_read(const char *name)
{
	char key[64];
	long val, ret = -1;
	FILE *f = fopen("/proc/vmstat", "r");

	if (!f)
		return -1;
	while (fscanf(f, "%63s %ld", key, &val) == 2) {
		if (!strcmp(key, name)) {
			ret = val;
			break;
		}
	}
	fclose(f);
	return ret;
}

static int pagemap_fd = -1, kpageflags_fd = -1;

/*
 * Whether every PMD of @r is backed by one PMD-sized folio: its first and
 * last pages (faulted in by a read) are the head and the last tail of one
 * THP, by /proc/self/pagemap and /proc/kpageflags.
 */
static bool pmd_folios(struct region *r)
{
	unsigned long first, last;
	uint64_t ff, lf;
	size_t i;
	char *a;

	for (i = 0; i < r->len / PMD_SZ; i++) {
		a = r->p + i * PMD_SZ;
		force_read_pages(a, 1, PAGE_SZ);
		force_read_pages(a + PMD_SZ - PAGE_SZ, 1, PAGE_SZ);
		first = pagemap_get_pfn(pagemap_fd, a);
		last = pagemap_get_pfn(pagemap_fd, a + PMD_SZ - PAGE_SZ);
		if (first == -1UL || last != first + PAGES_PER_PMD - 1 ||
		    pageflags_get(first, kpageflags_fd, &ff) ||
		    pageflags_get(last, kpageflags_fd, &lf) ||
		    (ff & (KPF_THP | KPF_COMPOUND_HEAD)) != (KPF_THP | KPF_COMPOUND_HEAD) ||
		    (lf & (KPF_THP | KPF_COMPOUND_TAIL)) != (KPF_THP | KPF_COMPOUND_TAIL))
			return false;
	}
	return true;
}

/*
 * Whether @r is collapsed: PMD-mapped (smaps) for anon and shmem; for the
 * XFS file, backed by PMD-sized folios, because there a write through the
 * mapping to the clean new folio splits its PMD mapping again at once (XFS
 * has no ->huge_fault), so that the writers leave it PTE-mapped.
 */
static bool collapsed_now(struct region *r)
{
	return r->type == MEM_FILE ? pmd_folios(r) : mem_pmd_mapped(r);
}

/*
 * Splits @r back to base pages, with the collapsers and the writers held
 * off and khugepaged sent to sleep (at scan sleep 0 it rescans the huge
 * folio without a break, and the refcount it holds makes the split give
 * up), retrying while khugepaged's last pass or writeback holds the folio;
 * true once a PMD-sized folio was split or @r is not collapsed. A dirty XFS folio keeps
 * iomap state that blocks its split: it is written back first. Counts the
 * tries in @tries.
 */
static bool split_round(struct ctl *c, struct region *r, long *tries)
{
	bool done = false;
	double end;
	long before;
	int i;

	set_str(THP_SYSFS "khugepaged/scan_sleep_millisecs", "3600000");
	atomic_store(&c->hold, 1);
	for (end = now() + 10; atomic_load(&c->busy) && now() < end;)
		usleep(1000);
	for (i = 0; i < SPLIT_TRIES && !done; i++) {
		(*tries)++;
		before = vmstat_read("thp_split_page");
		if (r->type == MEM_FILE)
			fdatasync(r->fd);
		if (mem_split(r))
			ksft_print_msg("split_huge_pages: %s\n", strerror(errno));
		else
			done = vmstat_read("thp_split_page") > before ||
			       !collapsed_now(r);
		if (!done)
			usleep(POLL_US);
	}
	atomic_store(&c->hold, 0);
	/* This wakes khugepaged up at once. */
	set_str(THP_SYSFS "khugepaged/scan_sleep_millisecs", "0");
	return done;
}

/* Waits up to ROUND_TIMEOUT_S for @r to be collapsed. */
static bool wait_collapsed(struct region *r)
{
	double end = now() + ROUND_TIMEOUT_S;

	do {
		if (collapsed_now(r))
			return true;
		usleep(POLL_US);
	} while (now() < end);
	return false;
}

/* Formats a tally as "ok N, EAGAIN N, EBUSY N, other N (err)". */
static void tally_str(char *buf, size_t len, struct tally *t)
{
	snprintf(buf, len, "ok %ld, EAGAIN %ld, EBUSY %ld, other %ld%s%s%s",
		 atomic_load(&t->ok), atomic_load(&t->eagain),
		 atomic_load(&t->ebusy), atomic_load(&t->other),
		 atomic_load(&t->other) ? " (last " : "",
		 atomic_load(&t->other) ? strerror(atomic_load(&t->last_other)) : "",
		 atomic_load(&t->other) ? ")" : "");
}

/*
 * One case: @rounds rounds of split and collapse of one region of @type
 * with every collapser and both writers running, on @core, ending by
 * @deadline (now()) once MIN_ROUNDS are done, and by @end at the latest.
 */
static void test_multi(struct ctl *c, const char *core, enum mem_type type,
		       int rounds, int pause_us, double deadline, double end)
{
	bool rust = core[0] == 'r';
	long long start_succ[3], start_total[3], succ[3], total_moved = 0;
	static struct rust_stats stats_before[3], stats_after[3];
	char moved[3][512];
	int n, i, collapsed = 0, huge_rounds = 0, split_fail = 0, status = 0;
	struct writer w[2];
	atomic_int stop = 0, gap_ms = GAP_START_MS;
	pthread_t th[2];
	struct region r;
	uint64_t *shadow;
	char t0[160], t1[160], t2[256];
	long split_tries = 0;
	double t_loop, t_rounds, t_split = 0, t_wait = 0;
	bool limit = false, over, enough;
	size_t lost;
	pid_t child, neighbour;
	int nb_status = 0;

	memset(c, 0, sizeof(*c));
	collapse_require_core(core);
	if (!knobs_set())
		ksft_exit_fail_msg("cannot set up khugepaged\n");
	for (i = 0; i < 3; i++) {
		start_succ[i] = rust_stat(stat_caller[i], "succeed");
		start_total[i] = rust_stat_total(stat_caller[i]);
		rust_stats_read(stat_caller[i], &stats_before[i]);
	}
	/* Forked before the region exists: it must not share its pages. */
	child = fork();
	if (child < 0)
		ksft_exit_fail_perror("fork");
	if (!child)
		child_main(c);
	neighbour = fork();
	if (neighbour < 0)
		ksft_exit_fail_perror("fork");
	if (!neighbour)
		neighbour_main(c, type);

	/* Mapped while khugepaged is on, so that it registers this mm. */
	r = mem_region(type, NR_PMDS);
	shadow = calloc(NR_PAGES, sizeof(*shadow));
	if (!shadow || mem_populate(&r, shadow, 1))
		ksft_exit_fail_perror("populate");
	c->p = r.p;
	c->len = r.len;
	for (i = 0; i < 2; i++) {
		w[i] = (struct writer){
			.r = &r, .shadow = shadow, .c = c, .stop = &stop, .id = i,
			.pace = pace[type], .gap_ms = &gap_ms,
		};
		if (pause_us >= 0)
			w[i].pace.pause_us = pause_us;
		if (pthread_create(&w[i].th, NULL, writer, &w[i]))
			ksft_exit_fail_perror("pthread_create");
	}
	atomic_store(&c->state, 1);
	for (i = 0; i < 2; i++)
		if (pthread_create(&th[i], NULL, collapser, c))
			ksft_exit_fail_perror("pthread_create");

	t_loop = now();
	for (n = 0; n < rounds; n++) {
		long long before = rust ? rust_succeed_sum() : 0;
		double t = now();
		bool split, mapped;
		int gap;

		/*
		 * Stop if another round of the average length would overrun
		 * the case's share once MIN_ROUNDS are done, the program's
		 * time in any case.
		 */
		if (n && t + (t - t_loop) / n > (n >= MIN_ROUNDS ? deadline : end)) {
			limit = true;
			break;
		}
		split = split_round(c, &r, &split_tries);
		t_split += now() - t;
		if (!split) {
			split_fail++;
			continue;
		}
		t = now();
		mapped = wait_collapsed(&r);
		t_wait += now() - t;
		gap = atomic_load(&gap_ms);
		gap = mapped ? gap * 4 / 5 : gap * 2;
		atomic_store(&gap_ms, gap < GAP_MIN_MS ? GAP_MIN_MS :
				      gap > GAP_MAX_MS ? GAP_MAX_MS : gap);
		if (!mapped)
			continue;
		huge_rounds++;
		if (!rust) {
			collapsed++;
			continue;
		}
		/* The counter moves as the collapse returns: give it 100 ms. */
		t = now();
		while (rust_succeed_sum() == before && now() - t < 0.1)
			usleep(POLL_US);
		collapsed += rust_succeed_sum() > before;
	}
	t_rounds = now() - t_loop;
	over = now() > deadline;

	atomic_store(&c->state, 2);
	for (i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	atomic_store(&stop, 1);
	for (i = 0; i < 2; i++)
		pthread_join(w[i].th, NULL);
	if (waitpid(child, &status, 0) != child ||
	    waitpid(neighbour, &nb_status, 0) != neighbour)
		ksft_exit_fail_perror("waitpid");
	knobs_restore();

	lost = mem_bad_pages(&r, shadow);
	for (i = 0; i < 3; i++) {
		succ[i] = rust_stat(stat_caller[i], "succeed") - start_succ[i];
		total_moved += rust_stat_total(stat_caller[i]) - start_total[i];
		rust_stats_read(stat_caller[i], &stats_after[i]);
		moved[i][0] = 0;
		rust_stats_moved(&stats_before[i], &stats_after[i], moved[i],
				 sizeof(moved[i]));
	}
	tally_str(t0, sizeof(t0), &c->t[BY_MADVISE]);
	tally_str(t1, sizeof(t1), &c->t[BY_PROCESS_MADVISE]);
	ksft_print_msg("%s: %s: madvise: %s\n", core, mem_type_name[type], t0);
	ksft_print_msg("%s: %s: process_madvise: %s\n", core,
		       mem_type_name[type], t1);
	tally_str(t0, sizeof(t0), &c->nb);
	ksft_print_msg("%s: %s: neighbour: madvise of its own memory: %s; %ld pages wrong\n",
		       core, mem_type_name[type], t0, atomic_load(&c->nb_lost));
	snprintf(t2, sizeof(t2),
		 "writes %ld (%ld with pwrite); Rust succeed: madvise +%lld, process_madvise +%lld, khugepaged +%lld; all Rust counters +%lld",
		 w[0].writes + w[1].writes, w[0].pwrites + w[1].pwrites,
		 succ[0], succ[1], succ[2], total_moved);
	ksft_print_msg("%s: %s: %s\n", core, mem_type_name[type], t2);
	/* Why the Rust core's attempts ended as they did, by caller. */
	for (i = 0; rust && i < 3; i++)
		ksft_print_msg("%s: %s: Rust outcomes, %s:%s\n", core,
			       mem_type_name[type], stat_caller[i], moved[i]);
	ksft_print_msg("%s: %s: per round: split %.0f ms (%ld tries), wait %.0f ms; gap %d ms\n",
		       core, mem_type_name[type], n ? 1000 * t_split / n : 0.0,
		       split_tries, n ? 1000 * t_wait / n : 0.0,
		       pace[type].burst ? atomic_load(&gap_ms) : 0);
	if (w[0].err || w[1].err)
		ksft_print_msg("pwrite: %s\n", strerror(w[0].err ? w[0].err : w[1].err));
	if (atomic_load(&c->child_err))
		ksft_print_msg("pidfd_open: %s\n",
			       strerror(atomic_load(&c->child_err)));

	/* Stopped by the time limit, a case still needs MIN_ROUNDS rounds. */
	enough = n == rounds || n >= MIN_ROUNDS;
	ksft_test_result(enough && n && 2 * collapsed >= n &&
			 !lost && !w[0].err && !w[1].err &&
			 WIFEXITED(status) && !WEXITSTATUS(status) &&
			 WIFEXITED(nb_status) && !WEXITSTATUS(nb_status) &&
			 atomic_load(&c->nb.ok) > 0 && !atomic_load(&c->nb.other) &&
			 !atomic_load(&c->nb_lost) &&
			 !atomic_load(&c->t[BY_MADVISE].other) &&
			 !atomic_load(&c->t[BY_PROCESS_MADVISE].other) &&
			 (rust ? succ[0] - atomic_load(&c->nb.ok) > 0 && succ[1] > 0 :
				 total_moved == 0),
			 "%s: %s, 2 madvise threads + process_madvise + khugepaged + 2 writers + a neighbour: %d/%d rounds%s, %d collapsed (%d huge again, %d split failures), %ld unexpected errors, %zu pages lost, %.1f s (%.0f ms/round)\n",
			 core, mem_type_name[type], n, rounds,
			 limit ? " (stopped at the time limit)" :
			 over ? " (past its share of the time limit)" : "",
			 collapsed, huge_rounds,
			 split_fail,
			 atomic_load(&c->t[BY_MADVISE].other) +
			 atomic_load(&c->t[BY_PROCESS_MADVISE].other),
			 lost, t_rounds, n ? 1000 * t_rounds / n : 0.0);
	mem_region_free(&r);
	free(shadow);
}

int main(int argc, char **argv)
{
	int rounds = DEFAULT_ROUNDS, pause = -1, opt, t, left;
	double t_start = now(), end = t_start + PROGRAM_LIMIT_S;
	unsigned int k;
	struct ctl *c;

	while ((opt = getopt(argc, argv, "r:d:w:T:")) != -1) {
		switch (opt) {
		case 'r':
			rounds = atoi(optarg);
			break;
		case 'd':
			mem_file_dir = optarg;
			break;
		case 'w':
			pause = atoi(optarg);
			break;
		case 'T':
			end = t_start + atof(optarg);
			break;
		default:
			fprintf(stderr, "usage: %s [-r ROUNDS] [-d DIR] [-w USEC] [-T SECONDS]\n",
				argv[0]);
			return KSFT_FAIL;
		}
	}
	if (rounds <= 0)
		rounds = DEFAULT_ROUNDS;

	collapse_test_start(orig_core, sizeof(orig_core), orig_enabled,
			    sizeof(orig_enabled));
	atexit(restore_all);
	ksft_set_plan(2 * NR_MEM_TYPES);
	ksft_print_msg("%d rounds per core and memory type, %d PMD(s), -w %d\n",
		       rounds, NR_PMDS, pause);
	if (access("/sys/kernel/debug/split_huge_pages", W_OK))
		ksft_exit_fail_msg("no /sys/kernel/debug/split_huge_pages\n");
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
	kpageflags_fd = open("/proc/kpageflags", O_RDONLY);
	if (pagemap_fd < 0 || kpageflags_fd < 0)
		ksft_exit_fail_msg("no /proc/self/pagemap or /proc/kpageflags\n");
	c = mmap(NULL, sizeof(*c), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (c == MAP_FAILED)
		ksft_exit_fail_perror("mmap");

	for (k = 0; k < 2; k++) {
		for (t = 0; t < NR_MEM_TYPES; t++) {
			/* Each case's share of the time left, less its teardown. */
			left = 2 * NR_MEM_TYPES - k * NR_MEM_TYPES - t;
			test_multi(c, cores[k], t, rounds, pause,
				   now() + (end - now()) / left - TEARDOWN_S,
				   end - left * TEARDOWN_S);
		}
	}

	ksft_print_msg("total %.1f s\n", now() - t_start);
	restore_all();
	ksft_finished();
}
