// SPDX-License-Identifier: GPL-2.0
/*
 * Collapse under reclaim and memcg pressure, on the Rust and the C collapse
 * cores: no data may be lost while pages go to swap and come back.
 *
 *   thp_collapse_pressure
 *
 * Needs root, cgroup2 at /sys/fs/cgroup with the memory controller, swap on
 * /dev/zram0, XFS at /mnt/xfs and tracefs (the test guest's init sets these
 * up). Takes about 2 * RUN_SECS plus setup and checks: 60 s in the debug
 * test guest under TCG on an idle host, 150-220 s on a host loaded 6x.
 *
 * For each core a child process moves itself into a memory cgroup, maps two
 * PMDs of private anonymous memory and one each of a memfd and a file on
 * XFS, and writes a generation of the page pattern into every page
 * (thp_collapse_mem.h). Every other page of the first anonymous PMD is
 * lazyfree: MADV_FREEd after each write (see lazy_page()). The parent
 * holds the cgroup at 60 % of the working set (the regions and the hog's
 * buffer) with memory.high: reclaim and throttling, never an OOM kill (with
 * memory.max, the child was OOM-killed now and then on an idle host, its own
 * fault swapping a shmem page back in finding nothing left to reclaim) and,
 * for RUN_SECS (and on, up to RUN_SECS more, until a collapse
 * succeeded), the child runs
 *  - a hog thread that writes and checks its own anonymous buffer page by
 *    page, which keeps reclaim swapping to zram and dropping file pages;
 *  - a collapser thread looping: MADV_COLLAPSE of each PMD of each region,
 *    a split of each again (debugfs split_huge_pages), a new generation
 *    written into the lazyfree pages and MADV_FREE of them;
 *  - khugepaged on the regions (THP "madvise", scan_sleep_millisecs 0);
 *  - its main thread checking every page over and over.
 * Meanwhile the parent, outside the cgroup, turns swap off and on again every
 * SWAP_CYCLE_SECS (swapoff(2)/swapon(2) of /dev/zram0). swapoff reads every
 * swapped page back and charges it to the cgroup it was charged to, with no
 * swap left to reclaim to: at 60 % that cannot fit, and the cgroup would OOM
 * (killing the child rather than failing swapoff with ENOMEM). So the parent
 * lifts the limit for the swapoff and puts it back after swapon, which
 * reclaims the cgroup below the limit again in one burst. Keeping the parent
 * outside the cgroup keeps swapoff's own allocations and the reporting out
 * of the pressure, and lets the parent report a memcg OOM kill of the child
 * instead of dying with it. The cgroup goes away with the child.
 *
 * Checked for each core:
 *  - a lazyfree page reads back as its last generation (or, while it is
 *    being rewritten, the one before) or zeroes, never as a generation older
 *    than a zero seen before; every other page, and the hog's, is unchanged,
 *    through the mapping and through read(2);
 *  - MADV_COLLAPSE collapses some PMDs, and the calls fail only with EBUSY
 *    (memcg charge) or ENOMEM, or with the errnos upstream's
 *    madvise_collapse_errno() gives to page states that reclaim causes:
 *    EAGAIN (documented as transient: a page locked, off the LRU or with
 *    extra references while reclaim holds it), and EINVAL, but only as
 *    often as the huge_memory events of the collapser thread end a PMD with
 *    a result after which reclaim can make it fail so: pte_non_present
 *    (anon: reclaim swapped a page out again between the collapse's swap-in
 *    and its isolation, and upstream does not retry); for the XFS file,
 *    failed (collapse_file() could not read an evicted page back: readahead
 *    under the memcg limit allocates with __GFP_NORETRY); for both file
 *    types, pte_mapped_hugepage, after which mapping the new folio finds it
 *    reclaimed already (page_null, a step with no event of its own), or
 *    reclaimed and the index read back into a small folio by a fault or
 *    read(2) (page_compound, seen once in CI). On the
 *    Rust core, its counters must also show no other outcome behind EINVAL.
 *    Upstream's madvise_collapse_errno() gives all of these EINVAL, and the
 *    C core does so under the same pressure (seen here and in directed runs
 *    of a 5-6 MiB memcg collapsing a paged-out XFS file). Any other result
 *    behind EINVAL fails the test;
 *  - swap was written (pswpout) and the cgroup hit its limit, with no OOM;
 *  - on the Rust core its counters show collapses and pressure refusals, on
 *    the C core they stay still while upstream's collapse vmstat moves.
 * Swap, the cgroup, tracing and the sysfs knobs are restored at exit.
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
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest.h"
#include "thp_collapse_mem.h"

/*
 * PMDs of each memory type: two anonymous ones (see lazy_page()), one of
 * each file type. Everything swapped costs milliseconds under a debug kernel
 * in emulation, and the working set is swapped over and over.
 */
static const size_t nr_pmds[NR_MEM_TYPES] = { 2, 1, 1 };
#define HOG_SZ		(4UL << 20)
#define HOG_PAUSE_MS	200
#define RUN_SECS	25
#define SWAP_CYCLE_SECS	10
#define SWAP_DEV	"/dev/zram0"
#define CG_DIR		CG_ROOT "/thp_collapse_pressure"
/* The cgroup's limit: reclaim and throttling above it, no OOM kill. */
#define LIMIT_FILE	"memory.high"
#define KHUGEPAGED	THP_SYSFS "khugepaged/"
#define TRACEFS		"/sys/kernel/tracing/"
#define COLLAPSER_COMM	"thp_collapser"

static const char *const cores[] = { "rust", "c" };
static const char *const callers[] = { "madvise", "process_madvise",
				       "khugepaged" };
#define NR_CALLERS ARRAY_SIZE(callers)

/* The errnos MADV_COLLAPSE returned, in columns of this order. */
enum err_col { E_BUSY, E_NOMEM, E_AGAIN, E_INVAL, E_OTHER, NR_ERR_COLS };
static const char *const err_col_name[] = { "EBUSY", "ENOMEM", "EAGAIN",
					    "EINVAL", "other" };

/* What the child did, shared with the parent (MAP_SHARED). */
struct result {
	atomic_int ready;		/* child populated, waiting for go */
	atomic_int go;			/* limit set, run */
	atomic_int stop;		/* the child's threads stop */
	char setup_err[128];		/* why the child's setup failed */
	double t_fork, t_ready, t_go, t_stop, t_joined, t_checked;
	long rounds;			/* collapser rounds */
	long calls_ok[NR_MEM_TYPES];	/* MADV_COLLAPSE calls returning 0 */
	atomic_long collapsed;		/* ... of all types */
	long errs[NR_MEM_TYPES][NR_ERR_COLS];
	int other_errno;		/* the last errno not in a column */
	long split_fail;		/* mem_split() failures */
	long checks;			/* passes of the checker */
	long mid_checked;		/* pages it checked */
	long mid_bad;			/* bad pages found during the run */
	long final_bad;			/* bad pages at the end */
	long lazy_data, lazy_zero;	/* lazyfree pages at the end */
	long resurrected;		/* lazyfree data back after a zero */
	long reread;			/* lazyfree pages read twice */
	long skipped;			/* ... still torn by the rewrite */
	long pages;			/* pages checked at the end */
	uint64_t lazy_gen;		/* the last lazyfree generation */
	atomic_long hog_passes;
	atomic_long hog_bad;		/* hog pages that lost their write */
};

static struct result *res;

/* The memory of the child: the regions and their shadow generations. */
static struct region regions[NR_MEM_TYPES];
static uint64_t *shadow[NR_MEM_TYPES];

/*
 * The lazyfree pages hold generation lazy_gen (or lazy_gen - 1 while the
 * collapser rewrites them, lazy_seq odd) or zeroes; zero_floor[pg] is the
 * oldest generation page @pg may still show after it was seen zero.
 */
static atomic_uint_fast64_t lazy_gen = 1, lazy_seq;
static uint64_t *zero_floor;

/*
 * Whether anonymous page @pg is one of the lazyfree ones: every other page
 * of the first PMD. khugepaged refuses a PMD with a clean lazyfree page
 * (page_lazyfree), so the second PMD has none: khugepaged gets anonymous
 * memory to collapse under reclaim too.
 */
static bool lazy_page(size_t pg)
{
	return pg < PAGES_PER_PMD && pg % 2;
}

/* The monotonic clock in seconds. */
static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The value of @name in /proc/vmstat, or -1. */
static long long vm_stat(const char *name)
{
	char key[64];
	long long v, ret = -1;
	FILE *f = fopen("/proc/vmstat", "r");

	if (!f)
		return -1;
	while (fscanf(f, "%63s %lld", key, &v) == 2)
		if (!strcmp(key, name)) {
			ret = v;
			break;
		}
	fclose(f);
	return ret;
}

/* The value of @key in the "key value" file @path, or -1. */
static long long keyed(const char *path, const char *key)
{
	char k[64];
	long long v, ret = -1;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fscanf(f, "%63s %lld", k, &v) == 2)
		if (!strcmp(k, key)) {
			ret = v;
			break;
		}
	fclose(f);
	return ret;
}

/* Whether SWAP_DEV is listed in /proc/swaps. */
static bool swap_on(void)
{
	char line[256];
	bool on = false;
	FILE *f = fopen("/proc/swaps", "r");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, SWAP_DEV " ", strlen(SWAP_DEV " ")))
			on = true;
	fclose(f);
	return on;
}

/* ---- The Rust core's counters ------------------------------------------ */

/* Appends "caller: outcome +n ..." for every outcome that moved. */
static long long stats_print(const char *caller, const struct rust_stats *a,
			     const struct rust_stats *b, char *out, size_t len)
{
	size_t at = strlen(out);

	snprintf(out + at, len - at, "%s%s:", at ? "; " : "", caller);
	return rust_stats_moved(a, b, out, len);
}

/* ---- The collapser's per-PMD results, from the huge_memory events ------ */

/* The events that end each PMD of MADV_COLLAPSE, with its result. */
static const char *const trace_events[] = { "mm_khugepaged_scan_pmd",
					    "mm_khugepaged_scan_file" };

/*
 * Enables the events for the collapser thread only (its comm), and empties
 * the trace buffer, or disables them again. Returns 0 or -1.
 */
static int trace_collapser(bool on)
{
	char path[256];
	int err = 0;
	unsigned int i;

	if (access(TRACEFS "trace", F_OK) &&
	    mount("nodev", "/sys/kernel/tracing", "tracefs", 0, NULL))
		return -1;
	for (i = 0; i < ARRAY_SIZE(trace_events); i++) {
		snprintf(path, sizeof(path), TRACEFS "events/huge_memory/%s/filter",
			 trace_events[i]);
		err |= write_str(path, on ? "comm == \"" COLLAPSER_COMM "\"" : "0");
		snprintf(path, sizeof(path), TRACEFS "events/huge_memory/%s/enable",
			 trace_events[i]);
		err |= write_str(path, on ? "1" : "0");
	}
	if (on)
		err |= write_str(TRACEFS "trace", "");
	return err;
}

#define MAX_RESULTS 40

/* How often each result ended a PMD of one memory type. */
struct tally {
	int n;
	char name[MAX_RESULTS][40];
	long cnt[MAX_RESULTS];
};

/* Counts result @name (@len bytes) in @t. */
static void tally_add(struct tally *t, const char *name, size_t len)
{
	int i;

	if (len >= sizeof(t->name[0]))
		len = sizeof(t->name[0]) - 1;
	for (i = 0; i < t->n; i++)
		if (strlen(t->name[i]) == len && !strncmp(t->name[i], name, len))
			break;
	if (i == t->n) {
		if (t->n == MAX_RESULTS)
			return;
		memcpy(t->name[i], name, len);
		t->name[i][len] = '\0';
		t->n++;
	}
	t->cnt[i]++;
}

/*
 * Reads the trace buffer into one tally per memory type: scan_pmd events
 * are anonymous memory, scan_file events the memfd (its file is named
 * "memfd:...") or the XFS file.
 */
static void trace_tally(struct tally *t)
{
	char line[1024];
	FILE *f = fopen(TRACEFS "trace", "r");

	memset(t, 0, NR_MEM_TYPES * sizeof(*t));
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		const char *key, *at;
		enum mem_type type;

		if (strstr(line, "mm_khugepaged_scan_pmd:")) {
			type = MEM_ANON;
			key = "status=";
		} else if (strstr(line, "mm_khugepaged_scan_file:")) {
			type = strstr(line, "filename=memfd:") ? MEM_SHMEM : MEM_FILE;
			key = "result=";
		} else {
			continue;
		}
		at = strstr(line, key);
		if (at) {
			at += strlen(key);
			tally_add(&t[type], at, strcspn(at, ",\n "));
		}
	}
	fclose(f);
}

/*
 * The -errno MADV_COLLAPSE gives when result @name (as the tracepoints spell
 * upstream's enum scan_result) is its last failure: madvise_collapse_errno().
 */
static int result_errno(const char *name)
{
	static const char *const again[] = {
		"not_suitable_page_count", "page_locked", "page_not_in_lru",
		"could_not_delete_page_from_lru", "page_filled",
		"page_has_private", "page_dirty_or_writeback",
	};
	unsigned int i;

	/*
	 * For files, pte_mapped_hugepage goes on to map the folio there
	 * (try_collapse_pte_mapped_thp(), which has no event of its own).
	 */
	if (!strcmp(name, "succeeded") || !strcmp(name, "page_pmd_mapped") ||
	    !strcmp(name, "pte_mapped_hugepage"))
		return 0;
	if (!strcmp(name, "alloc_huge_page_failed"))
		return -ENOMEM;
	if (!strcmp(name, "ccgroup_charge_failed") ||
	    !strcmp(name, "exceed_none_pte"))
		return -EBUSY;
	for (i = 0; i < ARRAY_SIZE(again); i++)
		if (!strcmp(name, again[i]))
			return -EAGAIN;
	return -EINVAL;
}

/*
 * Whether a PMD that ended with result @name may have made MADV_COLLAPSE
 * fail with EINVAL because of reclaim (see the top of the file).
 */
static bool einval_from_reclaim(enum mem_type type, const char *name)
{
	return !strcmp(name, "pte_non_present") ||
	       (type == MEM_FILE && !strcmp(name, "failed")) ||
	       (type != MEM_ANON && !strcmp(name, "pte_mapped_hugepage"));
}

/*
 * Whether the errnos of memory @type are expected (see the top of the file):
 * EINVAL only as often as reclaim's results ended a PMD, and no other result
 * behind EINVAL. Appends the tally to @out.
 */
static bool errs_explained(enum mem_type type, const struct tally *t,
			   char *out, size_t len)
{
	long reclaimed = 0, other = 0;
	size_t at = strlen(out);
	int i;

	at += snprintf(out + at, len - at, " [results:");
	for (i = 0; i < t->n && at < len; i++) {
		at += snprintf(out + at, len - at, " %s %ld", t->name[i],
			       t->cnt[i]);
		if (einval_from_reclaim(type, t->name[i]))
			reclaimed += t->cnt[i];
		else if (result_errno(t->name[i]) == -EINVAL)
			other += t->cnt[i];
	}
	if (at < len)
		snprintf(out + at, len - at, "]");
	return !res->errs[type][E_OTHER] && !other &&
	       res->errs[type][E_INVAL] <= reclaimed;
}

/* ---- The child: memory, hog, collapser, checker ------------------------ */

/*
 * Writes and checks the hog's buffer page by page until told to stop, with
 * a pause after each pass: a hog always hot would keep its pages and leave
 * the collapses too little room to swap their pages in and charge a THP;
 * in its pauses it cools down and the others' charges reclaim it.
 */
static void *hog(void *arg)
{
	uint64_t *buf = arg;
	uint64_t pass = 0;
	size_t pg, words = PAGE_SZ / 8;

	while (!atomic_load(&res->stop)) {
		for (pg = 0; pg < HOG_SZ / PAGE_SZ; pg++) {
			uint64_t want = pass ? (pass << 32) | pg : 0;

			if (buf[pg * words] != want)
				atomic_fetch_add(&res->hog_bad, 1);
			buf[pg * words] = ((pass + 1) << 32) | pg;
		}
		pass++;
		atomic_fetch_add(&res->hog_passes, 1);
		usleep(HOG_PAUSE_MS * 1000);
	}
	return NULL;
}

/* MADV_FREEs the lazyfree pages of the anonymous region. */
static void free_lazy(void)
{
	struct region *r = &regions[MEM_ANON];
	size_t pg;

	for (pg = 0; pg < r->len / PAGE_SZ; pg++)
		if (lazy_page(pg))
			madvise(r->p + pg * PAGE_SZ, PAGE_SZ, MADV_FREE);
}

/* Writes the next generation into the lazyfree pages and frees them again. */
static void rewrite_lazy(void)
{
	struct region *r = &regions[MEM_ANON];
	uint64_t gen = atomic_load(&lazy_gen) + 1;
	size_t pg;

	atomic_fetch_add(&lazy_seq, 1);
	atomic_store(&lazy_gen, gen);
	atomic_thread_fence(memory_order_seq_cst);
	for (pg = 0; pg < r->len / PAGE_SZ; pg++)
		if (lazy_page(pg))
			mem_fill(r->p + pg * PAGE_SZ, pg, gen);
	atomic_thread_fence(memory_order_seq_cst);
	atomic_fetch_add(&lazy_seq, 1);
	free_lazy();
}

/* Counts an errno of MADV_COLLAPSE on memory of @type. */
static void count_errno(enum mem_type type, int err)
{
	enum err_col c;

	switch (err) {
	case EBUSY:
		c = E_BUSY;
		break;
	case ENOMEM:
		c = E_NOMEM;
		break;
	case EAGAIN:
		c = E_AGAIN;
		break;
	case EINVAL:
		c = E_INVAL;
		break;
	default:
		c = E_OTHER;
		res->other_errno = err;
	}
	res->errs[type][c]++;
}

/*
 * Collapses every PMD of every region, one PMD a call (a call fails when one
 * of its PMDs does), starting with another region each round (a call may
 * take many seconds); then splits them again and rewrites the lazyfree
 * pages; until told to stop. Its comm selects its events in the trace.
 */
static void *collapser(void *arg)
{
	enum mem_type t;
	unsigned int k;
	size_t i;

	prctl(PR_SET_NAME, COLLAPSER_COMM);
	while (!atomic_load(&res->stop)) {
		for (k = 0; k < NR_MEM_TYPES && !atomic_load(&res->stop); k++) {
			t = (res->rounds + k) % NR_MEM_TYPES;
			for (i = 0; i < nr_pmds[t] && !atomic_load(&res->stop); i++) {
				if (madvise(regions[t].p + i * PMD_SZ, PMD_SZ,
					    MADV_COLLAPSE)) {
					count_errno(t, errno);
				} else {
					res->calls_ok[t]++;
					atomic_fetch_add(&res->collapsed, 1);
				}
			}
		}
		for (t = 0; t < NR_MEM_TYPES && !atomic_load(&res->stop); t++)
			if (mem_split(&regions[t]))
				res->split_fail++;
		rewrite_lazy();
		res->rounds++;
	}
	return NULL;
}

/*
 * Checks lazyfree page @pg (see lazy_gen) and counts it in @data or @zero.
 * Returns 1 if it is bad, 0 if not, and 0 without counting it if it was
 * torn by the collapser's rewrite while being read.
 */
static int check_lazy(size_t pg, long *data, long *zero)
{
	const char *p = regions[MEM_ANON].p + pg * PAGE_SZ;
	uint64_t s1 = atomic_load(&lazy_seq), g1 = atomic_load(&lazy_gen);
	uint64_t s2, g2;
	bool writing;
	int64_t gen;

	atomic_thread_fence(memory_order_seq_cst);
	gen = mem_page_gen(p, pg);
	if (gen < 0) {
		/*
		 * Reclaim may discard a lazyfree page while it is being read:
		 * the rest of the page then reads zero (the zero page), and
		 * so does every later read.
		 */
		res->reread++;
		gen = mem_page_gen(p, pg);
	}
	atomic_thread_fence(memory_order_seq_cst);
	s2 = atomic_load(&lazy_seq);
	g2 = atomic_load(&lazy_gen);
	writing = (s1 & 1) || s1 != s2;
	if (gen == 0) {
		/* Its generation g1 (g1 - 1 if not rewritten yet) is gone. */
		if (zero_floor[pg] < (writing ? g1 : g1 + 1))
			zero_floor[pg] = writing ? g1 : g1 + 1;
		(*zero)++;
		return 0;
	}
	if (gen > 0 && (uint64_t)gen < zero_floor[pg]) {
		res->resurrected++;
		return 1;
	}
	if (gen > 0 && ((uint64_t)gen == g1 ||
			(writing && (uint64_t)gen + 1 >= g1 &&
			 (uint64_t)gen <= g2))) {
		(*data)++;
		return 0;
	}
	if (writing) {
		res->skipped++;
		return 0;
	}
	return 1;
}

/*
 * Whether page @pg of region @t is bad: lazyfree pages by check_lazy(), the
 * others must hold their generation, through the mapping and through
 * read(2). Counts the lazyfree pages holding data in @data, zeroes in @zero.
 */
static bool page_bad(enum mem_type t, size_t pg, long *data, long *zero)
{
	const struct region *r = &regions[t];
	char buf[PAGE_SZ];

	if (t == MEM_ANON && lazy_page(pg))
		return check_lazy(pg, data, zero);
	if (!mem_page_ok(r->p + pg * PAGE_SZ, pg, shadow[t][pg]))
		return true;
	return r->fd >= 0 &&
	       (pread(r->fd, buf, PAGE_SZ, pg * PAGE_SZ) != PAGE_SZ ||
		!mem_page_ok(buf, pg, shadow[t][pg]));
}

/*
 * Checks the pages of every region, up to @deadline (0: all of them); under
 * pressure a page may take a swap-in and reclaim, and a whole pass many
 * seconds. Returns the bad pages; adds the pages checked to @checked and
 * the lazyfree ones with data or zeroes to @data and @zero.
 */
static long check_pages(double deadline, long *checked, long *data,
			long *zero)
{
	enum mem_type t;
	long bad = 0;
	size_t pg;

	for (t = 0; t < NR_MEM_TYPES; t++) {
		for (pg = 0; pg < regions[t].len / PAGE_SZ; pg++) {
			if (deadline && now() >= deadline)
				return bad;
			bad += page_bad(t, pg, data, zero);
			(*checked)++;
		}
	}
	return bad;
}

/* Records why the child's setup failed and ends the child. */
static void child_fail(const char *what)
{
	snprintf(res->setup_err, sizeof(res->setup_err), "%s: %s", what,
		 strerror(errno));
	_exit(2);
}

/*
 * Makes the regions known to khugepaged, now that THP is "madvise": it
 * registers a process when a VMA becomes VM_HUGEPAGE, which they already
 * were (mem_region()) while THP was "never".
 */
static void khugepaged_enter(void)
{
	enum mem_type t;

	for (t = 0; t < NR_MEM_TYPES; t++)
		if (madvise(regions[t].p, regions[t].len, MADV_NOHUGEPAGE) ||
		    madvise(regions[t].p, regions[t].len, MADV_HUGEPAGE))
			child_fail("madvise(MADV_HUGEPAGE)");
}

/*
 * The child: joins the cgroup, sets up its memory, waits for the limit, runs
 * the hog and the collapser for RUN_SECS while checking, then checks once
 * more without the limit. Prints no TAP: the parent reports from @res, and
 * prints what the child wrote to @out_fd if it failed.
 */
static void child(int out_fd)
{
	pthread_t th_hog, th_col;
	long data = 0, zero = 0;
	enum mem_type t;
	char pid[32];
	void *hogbuf;
	double end;

	/* No TAP from the child: helpers' failure messages go to @out_fd. */
	if (dup2(out_fd, STDOUT_FILENO) < 0 || dup2(out_fd, STDERR_FILENO) < 0)
		_exit(3);
	snprintf(pid, sizeof(pid), "%d", getpid());
	if (write_str(CG_DIR "/cgroup.procs", pid))
		child_fail("joining " CG_DIR);
	/* mem_region() and mem_populate() end the program on failure. */
	for (t = 0; t < NR_MEM_TYPES; t++) {
		regions[t] = mem_region(t, nr_pmds[t]);
		shadow[t] = calloc(regions[t].len / PAGE_SZ, sizeof(uint64_t));
		if (!shadow[t])
			child_fail("calloc");
		/* Anonymous memory is generation 1, as lazy_gen starts. */
		if (mem_populate(&regions[t], shadow[t], t + 1))
			child_fail("populating");
	}
	zero_floor = calloc(regions[MEM_ANON].len / PAGE_SZ, sizeof(uint64_t));
	hogbuf = mmap(NULL, HOG_SZ, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!zero_floor || hogbuf == MAP_FAILED ||
	    madvise(hogbuf, HOG_SZ, MADV_NOHUGEPAGE))
		child_fail("hog buffer");
	free_lazy();

	res->t_ready = now();
	atomic_store(&res->ready, 1);
	while (!atomic_load(&res->go))
		usleep(10000);
	res->t_go = now();
	end = res->t_go + RUN_SECS;
	khugepaged_enter();
	if (pthread_create(&th_hog, NULL, hog, hogbuf) ||
	    pthread_create(&th_col, NULL, collapser, NULL))
		child_fail("pthread_create");
	/* On, for up to RUN_SECS more, until a collapse succeeded. */
	while (now() < end) {
		res->mid_bad += check_pages(end, &res->mid_checked, &data, &zero);
		res->checks++;
		if (now() >= end && !atomic_load(&res->collapsed) &&
		    end == res->t_go + RUN_SECS)
			end += RUN_SECS;
	}
	res->t_stop = now();
	atomic_store(&res->stop, 1);
	pthread_join(th_col, NULL);
	pthread_join(th_hog, NULL);
	res->t_joined = now();

	/* Data, not pressure, now: swap everything in quickly. */
	write_str(CG_DIR "/" LIMIT_FILE, "max");
	res->final_bad = check_pages(0, &res->pages, &res->lazy_data,
				     &res->lazy_zero);
	res->lazy_gen = atomic_load(&lazy_gen);
	res->t_checked = now();
	_exit(0);
}

/* ---- The parent: cgroup, swap cycles, verdicts -------------------------- */

/* The cgroup's limit: 60 % of the regions and the hog's buffer. */
static unsigned long limit(void)
{
	unsigned long set = HOG_SZ;
	enum mem_type t;

	for (t = 0; t < NR_MEM_TYPES; t++)
		set += nr_pmds[t] * PMD_SZ;
	return set * 60 / 100;
}

/* Writes @bytes (or "max" for 0) to the cgroup's limit; 0 or -1. */
static int set_max(unsigned long bytes)
{
	char v[32];

	if (!bytes)
		return write_str(CG_DIR "/" LIMIT_FILE, "max");
	snprintf(v, sizeof(v), "%lu", bytes);
	return write_str(CG_DIR "/" LIMIT_FILE, v);
}

/* Swap state over one core's run. */
struct swap_cycles {
	int done;		/* swapoff + swapon completed */
	int off_fail, on_fail;	/* failed calls */
	int off_errno, on_errno;
	double longest;		/* seconds of the longest swapoff */
};

/*
 * Turns swap off and on again with the cgroup's limit lifted (see the top of
 * the file), then puts the limit back. swapon is retried: swap must be on
 * again for the programs that follow.
 */
static void swap_cycle(struct swap_cycles *s)
{
	double t0;
	int i;

	set_max(0);
	t0 = now();
	if (swapoff(SWAP_DEV)) {
		s->off_fail++;
		s->off_errno = errno;
	} else {
		if (now() - t0 > s->longest)
			s->longest = now() - t0;
		for (i = 0; i < 10 && swapon(SWAP_DEV, 0); i++) {
			s->on_fail++;
			s->on_errno = errno;
			usleep(100000);
		}
		if (i < 10)
			s->done++;
	}
	set_max(limit());
}

/* Appends the errno counts of memory @t as " EBUSY 3 ENOMEM 0 ...". */
static void errs_str(enum mem_type t, char *out, size_t len)
{
	size_t at = strlen(out);
	int c;

	for (c = 0; c < NR_ERR_COLS && at < len; c++)
		at += snprintf(out + at, len - at, " %s %ld", err_col_name[c],
			       res->errs[t][c]);
}

/* Prints, as TAP comments, what the child wrote to @fd. */
static void print_child_output(int fd)
{
	char line[256];
	FILE *f;

	lseek(fd, 0, SEEK_SET);
	f = fdopen(dup(fd), "r");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		ksft_print_msg("child: %s", line);
	fclose(f);
}

/*
 * Runs the child in the cgroup, cycling swap meanwhile (at fixed times
 * after the start); returns its wait status (-1 if it could not be waited
 * for) and the swap cycles in @sc.
 */
static int run_child(struct swap_cycles *sc, int out_fd)
{
	char sleep_ms[32];
	int status = -1, cycle = 1;
	double start;
	pid_t pid;

	res->t_fork = now();
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		ksft_exit_fail_perror("fork");
	if (!pid)
		child(out_fd);
	while (!atomic_load(&res->ready) && !waitpid(pid, &status, WNOHANG))
		usleep(10000);
	if (!atomic_load(&res->ready))
		return status;
	/* The regions hold base pages now: khugepaged may come. */
	if (sysfs_swap_str(KHUGEPAGED "scan_sleep_millisecs", sleep_ms,
			   sizeof(sleep_ms), "0") ||
	    write_str(THP_SYSFS "enabled", "madvise")) {
		kill(pid, SIGKILL);
		ksft_exit_fail_msg("cannot set up khugepaged\n");
	}
	set_max(limit());
	atomic_store(&res->go, 1);
	start = now();
	while (!waitpid(pid, &status, WNOHANG)) {
		if (now() >= start + cycle * SWAP_CYCLE_SECS &&
		    now() < start + RUN_SECS - 3) {
			swap_cycle(sc);
			cycle++;
		}
		usleep(100000);
	}
	write_str(THP_SYSFS "enabled", "never");
	write_str(KHUGEPAGED "scan_sleep_millisecs", sleep_ms);
	return status;
}

/* The Rust core's outcomes behind EINVAL that reclaim causes (see the top). */
static const char *const einval_outcomes[] = { "pte_non_present", "fail",
					       "page_null", "page_compound" };

/*
 * Whether every outcome behind EINVAL that moved in the Rust core's madvise
 * counters from @a to @b is one that reclaim causes.
 */
static bool rust_einval_explained(const struct rust_stats *a, const struct rust_stats *b)
{
	static const char *const not_einval[] = {
		"succeed", "pmd_mapped", "alloc_huge_page_fail",
		"cgroup_charge_fail", "exceed_none_pte", "page_count",
		"page_lock", "page_lru", "del_page_lru", "page_filled",
		"page_has_private", "page_dirty_or_writeback",
	};
	unsigned int j;
	bool known;
	int i;

	for (i = 0; i < a->n && i < b->n; i++) {
		if (b->v[i] == a->v[i] || rust_stat_is_path(a->name[i]))
			continue;
		known = false;
		for (j = 0; j < ARRAY_SIZE(not_einval); j++)
			known |= !strcmp(a->name[i], not_einval[j]);
		for (j = 0; j < ARRAY_SIZE(einval_outcomes); j++)
			known |= !strcmp(a->name[i], einval_outcomes[j]);
		if (!known)
			return false;
	}
	return true;
}

/* Outcomes of the Rust core that memory pressure causes. */
static const char *const pressure_outcomes[] = {
	"cgroup_charge_fail", "alloc_huge_page_fail", "page_count",
	"page_lock", "page_lru", "del_page_lru", "pte_non_present",
	"exceed_swap_pte", "page_dirty_or_writeback",
};

/* One core's run: four results. */
static void run_core(const char *core)
{
	struct rust_stats before[NR_CALLERS], after[NR_CALLERS];
	long long pswpout = vm_stat("pswpout"), pswpin = vm_stat("pswpin");
	long long alloc = vm_stat("thp_collapse_alloc");
	long long alloc_fail = vm_stat("thp_collapse_alloc_failed");
	unsigned long collapsed = read_num(KHUGEPAGED "pages_collapsed");
	unsigned long scans = read_num(KHUGEPAGED "full_scans");
	char khp[160];
	long long ev_max, ev_oom, ev_kill, total[NR_CALLERS];
	long long rust_total = 0, refused = 0, pmds = 0;
	char buf[1024], errs[1536];
	struct tally tally[NR_MEM_TYPES];
	struct swap_cycles sc = { 0 };
	bool ok, explained = true;
	int status, out_fd;
	long calls_ok = 0;
	unsigned int i;
	enum mem_type t;
	double t_done;

	memset(res, 0, sizeof(*res));
	collapse_require_core(core);
	rmdir(CG_DIR);
	if (mkdir(CG_DIR, 0755) || set_max(0))
		ksft_exit_fail_msg("cannot create %s: %s\n", CG_DIR,
				   strerror(errno));
	out_fd = memfd_create("thp_collapse_pressure_child", 0);
	if (out_fd < 0)
		ksft_exit_fail_perror("memfd_create");
	if (trace_collapser(true))
		ksft_exit_fail_msg("cannot trace the huge_memory events\n");
	for (i = 0; i < NR_CALLERS; i++)
		rust_stats_read(callers[i], &before[i]);

	status = run_child(&sc, out_fd);

	for (i = 0; i < NR_CALLERS; i++)
		rust_stats_read(callers[i], &after[i]);
	trace_collapser(false);
	trace_tally(tally);
	ev_max = keyed(CG_DIR "/memory.events", "high");
	ev_oom = keyed(CG_DIR "/memory.events", "oom");
	ev_kill = keyed(CG_DIR "/memory.events", "oom_kill");
	if (!swap_on() && swapon(SWAP_DEV, 0))
		ksft_print_msg("swapon %s: %s\n", SWAP_DEV, strerror(errno));
	if (rmdir(CG_DIR))
		ksft_print_msg("rmdir %s: %s\n", CG_DIR, strerror(errno));
	t_done = now();

	ok = WIFEXITED(status) && !WEXITSTATUS(status);
	if (!ok) {
		ksft_print_msg("%s: child status %#x (%s); memory.events oom %lld oom_kill %lld\n",
			       core, status,
			       res->setup_err[0] ? res->setup_err : "no setup error",
			       ev_oom, ev_kill);
		print_child_output(out_fd);
	} else {
		ksft_print_msg("%s: %.1f s: setup %.1f, run %.1f, stop %.1f, %s %.1f, %s %.1f\n",
			       core, t_done - res->t_fork,
			       res->t_ready - res->t_fork,
			       res->t_stop - res->t_go,
			       res->t_joined - res->t_stop,
			       "final check", res->t_checked - res->t_joined,
			       "cleanup", t_done - res->t_checked);
	}
	close(out_fd);
	errs[0] = '\0';
	if (!strcmp(core, "rust"))
		explained = rust_einval_explained(&before[0], &after[0]);
	for (t = 0; t < NR_MEM_TYPES; t++) {
		calls_ok += res->calls_ok[t];
		snprintf(errs + strlen(errs), sizeof(errs) - strlen(errs),
			 "%s%s:", t ? "; " : "", mem_type_name[t]);
		errs_str(t, errs, sizeof(errs));
		explained &= errs_explained(t, &tally[t], errs, sizeof(errs));
		for (i = 0; i < (unsigned int)tally[t].n; i++)
			if (!strcmp(tally[t].name[i], "succeeded"))
				pmds += tally[t].cnt[i];
	}

	ksft_test_result(ok && !res->mid_bad && !res->final_bad &&
			 !res->resurrected && !atomic_load(&res->hog_bad) &&
			 res->mid_checked > 0,
			 "%s: memcg pressure: every page intact (%ld pages; during the run %ld pages checked in %ld passes, %ld bad; %ld bad at the end; lazyfree generation %llu: %ld with data, %ld zero at the end, %ld data back after zero, %ld read twice, %ld torn by the rewrite; hog %ld passes, %ld bad)\n",
			 core, res->pages, res->mid_checked, res->checks,
			 res->mid_bad,
			 res->final_bad, (unsigned long long)res->lazy_gen,
			 res->lazy_data, res->lazy_zero, res->resurrected,
			 res->reread, res->skipped,
			 atomic_load(&res->hog_passes),
			 atomic_load(&res->hog_bad));
	/* A call fails if one of its PMDs does: count collapsed PMDs too. */
	ksft_test_result(ok && explained && calls_ok + pmds > 0,
			 "%s: memcg pressure: MADV_COLLAPSE fails only with EBUSY, ENOMEM, EAGAIN (transient) or EINVAL from reclaim (%ld rounds, %ld calls returned 0, %lld PMDs collapsed; %s; other errno %d; %ld splits failed)\n",
			 core, res->rounds, calls_ok, pmds, errs,
			 res->other_errno, res->split_fail);
	ksft_test_result(ok && vm_stat("pswpout") > pswpout && ev_max > 0 &&
			 !ev_kill && sc.done > 0 && !sc.off_fail && !sc.on_fail,
			 "%s: memcg pressure: reclaim swapped (pswpout +%lld pswpin +%lld; memory.events high %lld oom %lld oom_kill %lld; %d swapoff/swapon cycles, longest swapoff %.1f s, %d swapoff failures (%s), %d swapon failures (%s))\n",
			 core, vm_stat("pswpout") - pswpout,
			 vm_stat("pswpin") - pswpin, ev_max, ev_oom, ev_kill,
			 sc.done, sc.longest, sc.off_fail,
			 strerror(sc.off_errno), sc.on_fail,
			 strerror(sc.on_errno));

	/* Upstream counts a file PMD already collapsed as collapsed again. */
	snprintf(khp, sizeof(khp),
		 "thp_collapse_alloc +%lld, thp_collapse_alloc_failed +%lld, khugepaged pages_collapsed +%lu full_scans +%lu",
		 vm_stat("thp_collapse_alloc") - alloc,
		 vm_stat("thp_collapse_alloc_failed") - alloc_fail,
		 read_num(KHUGEPAGED "pages_collapsed") - collapsed,
		 read_num(KHUGEPAGED "full_scans") - scans);
	buf[0] = '\0';
	for (i = 0; i < NR_CALLERS; i++) {
		total[i] = stats_print(callers[i], &before[i], &after[i], buf,
				       sizeof(buf));
		rust_total += total[i];
	}
	if (!strcmp(core, "rust")) {
		for (i = 0; i < ARRAY_SIZE(pressure_outcomes); i++)
			refused += rust_stats_delta(&before[0], &after[0], pressure_outcomes[i]) +
				   rust_stats_delta(&before[2], &after[2], pressure_outcomes[i]);
		ksft_test_result(ok && rust_stats_delta(&before[0], &after[0], "succeed") > 0 &&
				 total[2] > 0 && refused > 0,
				 "rust: memcg pressure: the Rust core collapsed for MADV_COLLAPSE and khugepaged, and refused under pressure %lld times (%s; %s)\n",
				 refused, buf, khp);
	} else {
		ksft_test_result(ok && !rust_total &&
				 vm_stat("thp_collapse_alloc") > alloc,
				 "%s: memcg pressure: the Rust counters stayed still, upstream's moved (%s; %s)\n",
				 core, khp, buf);
	}
}

int main(void)
{
	char orig[16], thp_enabled[32], tracing_on[16];
	unsigned int i;
	struct stat st;
	bool clean;

	collapse_test_start(orig, sizeof(orig), thp_enabled, sizeof(thp_enabled));
	ksft_set_plan(4 * ARRAY_SIZE(cores) + 1);
	if (!swap_on())
		ksft_exit_fail_msg("no swap on %s\n", SWAP_DEV);
	if (write_str(CG_ROOT "/cgroup.subtree_control", "+memory"))
		ksft_exit_fail_msg("no cgroup2 memory controller at %s\n", CG_ROOT);
	if (trace_collapser(false) ||
	    sysfs_swap_str(TRACEFS "tracing_on", tracing_on, sizeof(tracing_on), "1"))
		ksft_exit_fail_msg("no tracefs at %s\n", TRACEFS);
	res = mmap(NULL, sizeof(*res), PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (res == MAP_FAILED)
		ksft_exit_fail_perror("mmap");
	/* Charge it to the parent's cgroup, not the child's. */
	memset(res, 0, sizeof(*res));

	for (i = 0; i < ARRAY_SIZE(cores); i++)
		run_core(cores[i]);

	collapse_set_core(orig);
	set_str(THP_SYSFS "enabled", thp_enabled);
	set_str(TRACEFS "tracing_on", tracing_on);
	clean = swap_on() && stat(CG_DIR, &st) && errno == ENOENT &&
		collapse_core() && !strcmp(collapse_core(), orig);
	ksft_test_result(clean,
			 "swap on %s again, %s removed, core %s, THP %s and tracing restored\n",
			 SWAP_DEV, CG_DIR, orig, thp_enabled);
	ksft_finished();
}
