// SPDX-License-Identifier: GPL-2.0
/*
 * A seeded random-operation stress of MADV_COLLAPSE, process_madvise
 * (MADV_COLLAPSE) and khugepaged, with a shadow model that knows what every
 * byte must hold, on the Rust and on the C collapse core.
 *
 *   thp_collapse_stress [-t SECONDS_PER_CORE] [-s SEED] [-c rust|c|both]
 *                       [-d XFS_DIR] [-j RACERS] [-m anon,shmem,xfs] [-x]
 *
 * Defaults: 60 s per core, a seed from the clock (printed as "# seed N"; -s N
 * makes the same choices again, though the threads' timing differs), both
 * cores, /mnt/xfs (must be XFS), 4 racers, all three memory types (-m picks
 * some). XFS truncation and hole punching race the collapses of the file on
 * the Rust core, and on the C core only with -x: upstream's collapse_file()
 * holds the old folios it has locked while it reads a hole ahead, and the
 * read-ahead waits for the mapping's invalidate_lock, which a truncation or
 * hole punch holds while it waits for those folio locks. That deadlock hung
 * this test on the Rust core when it did the same (MADV_COLLAPSE and
 * khugepaged alike); the Rust core now reads with folios locked only if it
 * gets the invalidate_lock at once (else EAGAIN). Memfds, which read nothing
 * ahead, race truncation and hole punching on both cores.
 *
 * Six regions of two PMDs: two private anonymous, two memfd (shmem) and two
 * files on XFS (both shared). Each region has one OWNER thread, the only one
 * that changes its contents. It writes pages through the mapping and with
 * pwrite(2); drops them with MADV_DONTNEED (anon pages become zero, file
 * pages stay); frees anon pages with MADV_FREE (such a page reads back as its
 * old contents or as zeroes until written again: the model keeps it as
 * "old or zero" and settles it to zero once a check finds zeroes, which stay);
 * truncates the file and extends it back, and punches holes (zeroes); unmaps
 * one PMD and maps it again at the same address (anon: zeroes); moves the
 * region away, sometimes to an address that is not PMD-aligned, and back
 * with mremap(2). It updates the model right after each step, and every few
 * steps compares every page with it, through the mapping and through
 * pread(2).
 *
 * RACER threads pick any region and do what must never change a byte:
 * MADV_COLLAPSE; process_madvise(MADV_COLLAPSE) by a helper process that
 * holds a pidfd of this one; MADV_PAGEOUT; mprotect(PROT_READ) and back;
 * fork(2), the child checking one PMD against the model; mlock(2) and
 * munlock(2); userfaultfd registration in write-protect mode (which arms no
 * fault: nothing is write-protected) and unregistration. The last three
 * sometimes collapse while the range is read-only, locked or registered.
 * khugepaged runs too (THP "enabled" set to "madvise", scan_sleep_millisecs
 * 0) on the anonymous regions and, where truncation races, on the XFS
 * files. It keeps off the memfds (shmem_enabled is "never" for the run), so
 * that the errnos of their collapses can be explained (see below), and off
 * the XFS files where truncation does not race, which are then mapped
 * without MADV_HUGEPAGE.
 *
 * Exclusion, so that the model stays exact:
 * - the owner bumps the region's sequence count (odd while a step runs); a
 *   fork racer keeps its child's verdict only if the count was even and
 *   unchanged from before fork() to after waitpid(), so that the child's
 *   copy of the model and the memory it read were those of one instant;
 * - the region's remap rwlock (writer-preferring): racers hold it for read
 *   around every operation, the owner for write only to munmap+mmap or
 *   mremap, so no racer ever sees the range half unmapped (and, without -x,
 *   to truncate or punch an XFS file where that does not race);
 * - the region's step mutex: the owner holds it for each step, a fork racer
 *   half the time from before fork() to after waitpid();
 * - the region's gate mutex: the owner holds it to write through the
 *   mapping and for MADV_DONTNEED/MADV_FREE, the mprotect and mlock racers
 *   for their whole read-only or locked window, so the owner never writes
 *   into a read-only mapping and never drops locked pages (EINVAL).
 *
 * Every failed collapse must be explained. EAGAIN (transient page state) and
 * ENOMEM (no huge page) are always accepted. EBUSY only if a userfaultfd
 * registration of the region overlapped the call (empty PTEs in an armed
 * VMA). EINVAL only if an event that upstream's errno mapping turns into
 * EINVAL overlapped the call on that region: a truncation or hole punch of a
 * memfd or file (the folio left the page cache: SCAN_TRUNCATED, PAGE_NULL,
 * FAIL), a MADV_PAGEOUT (a file folio reclaimed or split by swap-out before
 * its PMD is mapped; an anon page swapped out again between swap-in and
 * isolation), a userfaultfd registration of a memfd (no PMD in a uffd-wp VMA),
 * an mprotect or mlock of part of a PMD (the VMA split under the collapse);
 * or if the region had an empty PMD: an anon PMD without a page table
 * (SCAN_NO_PTE_TABLE; from MADV_DONTNEED/MADV_FREE of the whole PMD until the
 * owner writes into it, at once) or a memfd PMD with no page in the page
 * cache (SCAN_TRUNCATED; while the model has every page of it zero: the zero
 * pages that reads of holes bring in are clean, and reclaim, MADV_PAGEOUT's
 * too, drops them again). Anything else (and any
 * errno from the owners' and racers' own system calls that has no such
 * explanation) is an unexpected error.
 *
 * TAP: per core, one result per memory type (ops per kind, collapse calls and
 * successes per caller, pages checked, pages wrong, unexpected errors) and
 * one for the run (errnos, fork checks, the Rust core's succeed counters,
 * which must move on the Rust core and must not on the C core).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/falloc.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest.h"
#include "thp_collapse_util.h"
#include "thp_collapse_mem.h"

#define REGION_PMDS	2
#define REGION_PAGES	(REGION_PMDS * PAGES_PER_PMD)
#define REGION_LEN	(REGION_PMDS * PMD_SZ)
#define PER_TYPE	2
#define MAX_REGIONS	(NR_MEM_TYPES * PER_TYPE)
#define MAX_RACERS	32
#define RUN_PAGES	32	/* the longest short run of pages */
#define CHECK_EVERY	8	/* owner steps between two checks */
#define MAX_REPORTS	40	/* mismatches and errors printed in full */
#define XFS_MAGIC	0x58465342

enum owner_op {
	OP_WRITE, OP_PWRITE, OP_DONTNEED, OP_FREE, OP_TRUNCATE, OP_PUNCH,
	OP_REMAP, OP_MREMAP, OP_CHECK, NR_OWNER_OPS,
};

static const char *const owner_op_name[] = {
	"write", "pwrite", "dontneed", "free", "truncate", "punch", "remap",
	"mremap", "check",
};

enum racer_op {
	OP_COLLAPSE, OP_PROCESS_MADVISE, OP_PAGEOUT, OP_MPROTECT, OP_FORK,
	OP_MLOCK, OP_UFFD, NR_RACER_OPS,
};

static const char *const racer_op_name[] = {
	"collapse", "process_madvise", "pageout", "mprotect", "fork", "mlock",
	"uffd",
};

enum caller { BY_MADVISE, BY_PROCESS_MADVISE, NR_CALLERS };

static const char *const caller_name[] = { "madvise", "process_madvise" };

/* Events on a region that make a collapse's EINVAL or EBUSY legitimate. */
enum cause {
	CAUSE_TRUNCATE, CAUSE_PAGEOUT, CAUSE_UFFD, CAUSE_SPLIT, CAUSE_EMPTY,
	NR_CAUSES,
};

static const char *const cause_name[] = {
	"truncate/punch", "pageout", "uffd", "vma split", "empty PMD",
};

/* The causes that explain an EINVAL, per memory type (see the top). */
static const unsigned int einval_causes[NR_MEM_TYPES] = {
	[MEM_ANON] = 1u << CAUSE_PAGEOUT | 1u << CAUSE_SPLIT |
		     1u << CAUSE_EMPTY,
	[MEM_SHMEM] = 1u << CAUSE_TRUNCATE | 1u << CAUSE_PAGEOUT |
		      1u << CAUSE_UFFD | 1u << CAUSE_SPLIT | 1u << CAUSE_EMPTY,
	[MEM_FILE] = 1u << CAUSE_TRUNCATE | 1u << CAUSE_PAGEOUT |
		     1u << CAUSE_SPLIT,
};

enum result { RES_OK, RES_EAGAIN, RES_ENOMEM, RES_EBUSY, RES_EINVAL,
	      RES_OTHER, NR_RESULTS };

static const char *const result_name[] = {
	"ok", "EAGAIN", "ENOMEM", "EBUSY", "EINVAL", "other",
};

/* Events of one kind in flight on a region, and a count of their edges. */
struct cause_count {
	atomic_int active;
	atomic_uint epoch;
};

/* A region, its owner's model, its locks and its figures. */
struct rctl {
	struct region r;
	int id;
	pthread_t owner;
	pthread_rwlock_t remap;
	pthread_mutex_t step;
	pthread_mutex_t gate;
	atomic_uint seq;
	struct cause_count cause[NR_CAUSES];
	/* The model; written by the owner only, under an odd seq. */
	uint32_t gen[REGION_PAGES];
	uint8_t maybe_zero[REGION_PAGES];
	uint8_t last_op[REGION_PAGES];	/* the step that last changed it */
	uint32_t last_step[REGION_PAGES];
	uint32_t steps;
	enum owner_op op;	/* the step under way */
	bool empty[REGION_PMDS];
	unsigned int nonzero[REGION_PMDS];	/* pages of gen > 0 (memfd) */
	uint32_t last_gen;
	char *spare;		/* PROT_NONE room for mremap */
	atomic_bool broken;	/* a step failed: the model may be wrong */
	uint64_t rng;
	/* Figures. */
	atomic_long owner_ops[NR_OWNER_OPS];
	atomic_long racer_ops[NR_RACER_OPS];
	atomic_long results[NR_CALLERS][NR_RESULTS];
	atomic_long explained[NR_CAUSES];
	atomic_long checked, wrong, unexpected;
	atomic_long fork_kept, fork_dropped, aux_refused;
};

/* A racer thread and its process_madvise helper. */
struct racer {
	int id;
	pthread_t th;
	uint64_t rng;
	int uffd;
	int req, rep;		/* pipes to and from the helper */
	pid_t helper;
	int forkpipe[2];	/* a fork child's report of a wrong page */
};

struct helper_req {
	uint64_t addr, len;
};

struct helper_rep {
	int64_t ret;
	int32_t err;
};

struct fork_report {
	uint64_t pg;
	int64_t found;
};

static struct rctl regions[MAX_REGIONS];
static enum mem_type region_type[MAX_REGIONS];
static int nr_regions;
static unsigned int types = (1u << NR_MEM_TYPES) - 1;	/* -m */
static bool race_xfs_truncation;	/* on the core under test */
static bool race_xfs_c;				/* -x */
static struct racer racers[MAX_RACERS];
static int nr_racers = 4;
static uint64_t seed;
static atomic_int stop;
static atomic_int reports, page_reports;
static const char *core_now;

/* splitmix64: the next number of the sequence in @s. */
static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* A number below @n. */
static unsigned int below(uint64_t *s, unsigned int n)
{
	return rnd(s) % n;
}

/* The seed of stream @stream of a run (the same for both cores). */
static uint64_t stream_seed(unsigned int stream)
{
	uint64_t s = seed ^ (0xd1b54a32d192ed03ULL * (stream + 1));

	return rnd(&s);
}

/* Whether to print one more report in full (the first MAX_REPORTS). */
static bool report_more(atomic_int *count)
{
	return atomic_fetch_add(count, 1) < MAX_REPORTS;
}

/* An error with no explanation: counted, and printed while few. */
static __printf(2, 3) void unexpected(struct rctl *rc, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	atomic_fetch_add(&rc->unexpected, 1);
	if (!report_more(&reports))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ksft_print_msg("%s: region %d (%s): %s\n", core_now, rc->id,
		       mem_type_name[rc->r.type], msg);
}

static void cause_begin(struct rctl *rc, enum cause c)
{
	atomic_fetch_add(&rc->cause[c].active, 1);
	atomic_fetch_add(&rc->cause[c].epoch, 1);
}

static void cause_end(struct rctl *rc, enum cause c)
{
	atomic_fetch_add(&rc->cause[c].epoch, 1);
	atomic_fetch_sub(&rc->cause[c].active, 1);
}

/* The causes of a region as a call starts. */
struct causes {
	bool active[NR_CAUSES];
	unsigned int epoch[NR_CAUSES];
};

static void causes_snap(struct rctl *rc, struct causes *s)
{
	int c;

	for (c = 0; c < NR_CAUSES; c++) {
		s->active[c] = atomic_load(&rc->cause[c].active) > 0;
		s->epoch[c] = atomic_load(&rc->cause[c].epoch);
	}
}

/* Whether an event of kind @c overlapped the call that started at @s. */
static bool caused(struct rctl *rc, const struct causes *s, enum cause c)
{
	return s->active[c] || atomic_load(&rc->cause[c].active) > 0 ||
	       atomic_load(&rc->cause[c].epoch) != s->epoch[c];
}

/*
 * PMD @pmd may be empty: an anon PMD without a page table, or a memfd PMD
 * without a page in the page cache. Collapsing it fails with EINVAL
 * (SCAN_NO_PTE_TABLE, SCAN_TRUNCATED) until the owner writes a page of it.
 */
static void pmd_emptied(struct rctl *rc, size_t pmd)
{
	if (!rc->empty[pmd]) {
		rc->empty[pmd] = true;
		cause_begin(rc, CAUSE_EMPTY);
	}
}

/* The owner wrote a page of PMD @pmd: it is not empty any more. */
static void pmd_filled(struct rctl *rc, size_t pmd)
{
	if (rc->empty[pmd]) {
		rc->empty[pmd] = false;
		cause_end(rc, CAUSE_EMPTY);
	}
}

/*
 * The model of page @pg after the owner's step: @gen, or "@gen or zero". A
 * memfd PMD whose pages are all zero may be empty: its holes read in as clean
 * zero pages, which reclaim (MADV_PAGEOUT's too) drops again.
 */
static void model_set(struct rctl *rc, size_t pg, uint32_t gen, bool maybe_zero)
{
	size_t pmd = pg / PAGES_PER_PMD;

	if (rc->r.type == MEM_SHMEM && !gen != !rc->gen[pg]) {
		if (gen)
			rc->nonzero[pmd]++;
		else if (!--rc->nonzero[pmd])
			pmd_emptied(rc, pmd);
	}
	rc->gen[pg] = gen;
	rc->maybe_zero[pg] = maybe_zero;
	rc->last_op[pg] = rc->op;
	rc->last_step[pg] = rc->steps;
}

/* Whether @found (a generation, or -1) is what page @pg may hold. */
static bool gen_ok(const struct rctl *rc, size_t pg, int64_t found)
{
	return found == rc->gen[pg] || (rc->maybe_zero[pg] && found == 0);
}

/*
 * The generation page @pg holds at @p, or -1. An "old or zero" page (lazily
 * freed) may be discarded while it is read, which gives a mix of old words
 * and zeroes (until the discard's batched TLB flush, the old page may still
 * be read): discarded pages stay zero, so it is read again a few times then.
 */
static int64_t page_gen(const struct rctl *rc, size_t pg, const char *p)
{
	int64_t found = mem_page_gen(p, pg);
	int tries;

	for (tries = 0; tries < 10 && rc->maybe_zero[pg] &&
	     !gen_ok(rc, pg, found); tries++) {
		usleep(1000);
		found = mem_page_gen(p, pg);
	}
	return found;
}

/*
 * Prints a wrong page: what the model expects, what was found (@buf, the
 * page as read, if there is one: its words that hold the expected pattern,
 * zeroes or else) and the owner's step that last changed the model of it.
 */
static void report_page(struct rctl *rc, size_t pg, int64_t found,
			const void *buf, const char *via)
{
	const uint64_t *a = buf;
	size_t w, same = 0, zero = 0;

	if (!report_more(&page_reports))
		return;
	for (w = 0; a && w < PAGE_SZ / 8; w++) {
		same += a[w] == mem_pattern(rc->gen[pg], pg, w);
		zero += !a[w];
	}
	ksft_print_msg("%s: region %d (%s) page %zu: expected gen %u%s, found %s%lld (via %s)\n",
		       core_now, rc->id, mem_type_name[rc->r.type], pg,
		       rc->gen[pg], rc->maybe_zero[pg] ? " or zero" : "",
		       found < 0 ? "garbage " : "gen ", (long long)found, via);
	ksft_print_msg("  %zu words gen %u, %zu zero, %zu else, 1st %#llx; set by %s, step %u/%u\n",
		       same, rc->gen[pg], zero, a ? PAGE_SZ / 8 - same - zero : 0,
		       a ? (unsigned long long)a[0] : 0ULL,
		       owner_op_name[rc->last_op[pg]], rc->last_step[pg],
		       rc->steps);
}

/*
 * Compares every page of @rc with the model, through the mapping and, for
 * memfds and files, through pread(2). An "old or zero" page found zero is
 * zero from then on (a discarded lazyfree page stays discarded).
 */
static void region_check(struct rctl *rc)
{
	char buf[PAGE_SZ];
	size_t pg;

	for (pg = 0; pg < REGION_PAGES; pg++) {
		int64_t found = page_gen(rc, pg, rc->r.p + pg * PAGE_SZ);

		atomic_fetch_add(&rc->checked, 1);
		if (!gen_ok(rc, pg, found)) {
			atomic_fetch_add(&rc->wrong, 1);
			report_page(rc, pg, found, rc->r.p + pg * PAGE_SZ,
				    "the mapping");
			continue;
		}
		if (rc->maybe_zero[pg] && found == 0) {
			rc->gen[pg] = 0;
			rc->maybe_zero[pg] = 0;
		}
		if (rc->r.fd < 0)
			continue;
		if (pread(rc->r.fd, buf, PAGE_SZ, pg * PAGE_SZ) != PAGE_SZ) {
			unexpected(rc, "pread of page %zu: %s", pg,
				   strerror(errno));
			continue;
		}
		found = mem_page_gen(buf, pg);
		if (!gen_ok(rc, pg, found)) {
			atomic_fetch_add(&rc->wrong, 1);
			report_page(rc, pg, found, buf, "pread");
		}
	}
}

/* The model of page @pg after a write of generation @gen. */
static void model_written(struct rctl *rc, size_t pg, uint32_t gen)
{
	model_set(rc, pg, gen, false);
	pmd_filled(rc, pg / PAGES_PER_PMD);
}

/*
 * A random range of pages of a region: a short run, a run of up to a PMD
 * (which may straddle the two), one PMD or the whole region.
 */
static void pick_range(uint64_t *rng, size_t *first, size_t *nr)
{
	unsigned int k = below(rng, 8);

	if (k < 4)
		*nr = 1 + below(rng, RUN_PAGES);
	else if (k < 6)
		*nr = 1 + below(rng, PAGES_PER_PMD);
	else if (k < 7)
		*nr = PAGES_PER_PMD;
	else
		*nr = REGION_PAGES;
	if (*nr == PAGES_PER_PMD)
		*first = below(rng, REGION_PMDS) * PAGES_PER_PMD;
	else
		*first = below(rng, REGION_PAGES - *nr + 1);
}

/* Writes a new generation into pages [@first, @first + @nr). */
static void owner_write(struct rctl *rc, size_t first, size_t nr, bool pwr,
			char *buf)
{
	uint32_t gen = ++rc->last_gen;
	size_t pg, i, n;

	if (!pwr) {
		pthread_mutex_lock(&rc->gate);
		for (pg = first; pg < first + nr; pg++) {
			mem_fill(rc->r.p + pg * PAGE_SZ, pg, gen);
			model_written(rc, pg, gen);
		}
		pthread_mutex_unlock(&rc->gate);
		return;
	}
	for (pg = first; pg < first + nr; pg += n) {
		n = first + nr - pg < RUN_PAGES ? first + nr - pg : RUN_PAGES;
		for (i = 0; i < n; i++)
			mem_fill(buf + i * PAGE_SZ, pg + i, gen);
		if (pwrite(rc->r.fd, buf, n * PAGE_SZ, pg * PAGE_SZ) !=
		    (ssize_t)(n * PAGE_SZ)) {
			unexpected(rc, "pwrite of pages %zu+%zu: %s", pg, n,
				   strerror(errno));
			return;
		}
		for (i = 0; i < n; i++)
			model_written(rc, pg + i, gen);
	}
}

/*
 * MADV_DONTNEED or MADV_FREE of a random range. A whole anon PMD dropped may
 * lose its page table (EINVAL for a collapse) until the owner writes one of
 * its pages, which it does at once.
 */
static void owner_drop(struct rctl *rc, uint64_t *rng, int advice)
{
	bool anon = rc->r.type == MEM_ANON;
	size_t first, nr, pg, pmd;

	pick_range(rng, &first, &nr);
	pthread_mutex_lock(&rc->gate);
	for (pmd = 0; anon && pmd < REGION_PMDS; pmd++)
		if (first <= pmd * PAGES_PER_PMD &&
		    first + nr >= (pmd + 1) * PAGES_PER_PMD)
			pmd_emptied(rc, pmd);
	if (madvise(rc->r.p + first * PAGE_SZ, nr * PAGE_SZ, advice)) {
		unexpected(rc, "madvise(%s) of pages %zu+%zu: %s",
			   advice == MADV_FREE ? "MADV_FREE" : "MADV_DONTNEED",
			   first, nr, strerror(errno));
		/* Which pages went is unknown: the model is lost. */
		rc->broken = true;
	}
	for (pg = first; anon && pg < first + nr; pg++) {
		if (advice == MADV_FREE && rc->gen[pg])
			model_set(rc, pg, rc->gen[pg], true);
		else if (advice == MADV_DONTNEED)
			model_set(rc, pg, 0, false);
	}
	pthread_mutex_unlock(&rc->gate);
	for (pmd = 0; anon && pmd < REGION_PMDS; pmd++)
		if (rc->empty[pmd])
			owner_write(rc, pmd * PAGES_PER_PMD + below(rng, PAGES_PER_PMD),
				    1, false, NULL);
}

/* Truncates the file to a random page-aligned size and extends it back. */
static void owner_truncate(struct rctl *rc, uint64_t *rng)
{
	size_t keep = below(rng, 4) ? below(rng, REGION_PAGES) :
		      below(rng, REGION_PMDS) * PAGES_PER_PMD;
	size_t pg;

	cause_begin(rc, CAUSE_TRUNCATE);
	if (ftruncate(rc->r.fd, keep * PAGE_SZ))
		unexpected(rc, "ftruncate to %zu pages: %s", keep,
			   strerror(errno));
	else
		for (pg = keep; pg < REGION_PAGES; pg++)
			model_set(rc, pg, 0, false);
	if (ftruncate(rc->r.fd, REGION_LEN))
		unexpected(rc, "ftruncate back: %s", strerror(errno));
	cause_end(rc, CAUSE_TRUNCATE);
}

/* Punches a hole in the file: zeroes. */
static void owner_punch(struct rctl *rc, uint64_t *rng)
{
	size_t first, nr, pg;

	pick_range(rng, &first, &nr);
	cause_begin(rc, CAUSE_TRUNCATE);
	if (fallocate(rc->r.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      first * PAGE_SZ, nr * PAGE_SZ))
		unexpected(rc, "punching pages %zu+%zu: %s", first, nr,
			   strerror(errno));
	else
		for (pg = first; pg < first + nr; pg++)
			model_set(rc, pg, 0, false);
	cause_end(rc, CAUSE_TRUNCATE);
}

/*
 * Whether khugepaged may collapse the region (it is MADV_HUGEPAGE). Not the
 * XFS files where truncation must not race (see the top).
 */
static bool khugepaged_welcome(const struct rctl *rc)
{
	return rc->r.type != MEM_FILE || race_xfs_truncation;
}

/*
 * Unmaps one PMD of the region and maps it again at the same address (the
 * caller holds the remap lock for write, keeping racers out): anon memory
 * comes back as zeroes (and the owner writes a page so that the PMD has a
 * page table and the VMA an anon_vma), a file's stays.
 */
static void owner_remap(struct rctl *rc, uint64_t *rng)
{
	size_t pmd = below(rng, REGION_PMDS), pg;
	char *at = rc->r.p + pmd * PMD_SZ;
	bool anon = rc->r.type == MEM_ANON;
	char *got;

	if (munmap(at, PMD_SZ)) {
		unexpected(rc, "munmap: %s", strerror(errno));
		return;
	}
	got = mmap(at, PMD_SZ, PROT_READ | PROT_WRITE,
		   (anon ? MAP_PRIVATE | MAP_ANONYMOUS : MAP_SHARED) |
		   MAP_FIXED_NOREPLACE, rc->r.fd, anon ? 0 : pmd * PMD_SZ);
	if (got != at) {
		unexpected(rc, "mmap again at the same address: %s",
			   got == MAP_FAILED ? strerror(errno) : "moved");
		rc->broken = true;
		return;
	}
	if (khugepaged_welcome(rc) && madvise(at, PMD_SZ, MADV_HUGEPAGE))
		unexpected(rc, "MADV_HUGEPAGE: %s", strerror(errno));
	if (anon) {
		for (pg = pmd * PAGES_PER_PMD; pg < (pmd + 1) * PAGES_PER_PMD; pg++)
			model_set(rc, pg, 0, false);
		owner_write(rc, pmd * PAGES_PER_PMD + below(rng, PAGES_PER_PMD),
			    1, false, NULL);
	}
}

/*
 * Moves the region into its spare room, at a PMD-aligned address or not
 * (PMD mappings are then split), and back, racers kept out by the caller's
 * remap lock. The first move
 * keeps the source mapped (MREMAP_DONTUNMAP), so the address never becomes
 * free for another mapping to take; the room is reserved again after.
 */
static void owner_mremap(struct rctl *rc, uint64_t *rng)
{
	char *base = (char *)(((unsigned long)rc->spare + PMD_SZ - 1) &
			      ~(PMD_SZ - 1));
	char *to = base + (below(rng, 2) ? below(rng, PAGES_PER_PMD) * PAGE_SZ : 0);
	void *got;

	got = mremap(rc->r.p, REGION_LEN, REGION_LEN,
		     MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, to);
	if (got != to) {
		/* Part of it may have moved (one VMA after another). */
		unexpected(rc, "mremap away: %s",
			   got == MAP_FAILED ? strerror(errno) : "moved elsewhere");
		rc->broken = true;
		return;
	}
	got = mremap(to, REGION_LEN, REGION_LEN,
		     MREMAP_MAYMOVE | MREMAP_FIXED, rc->r.p);
	if (got != rc->r.p) {
		unexpected(rc, "mremap back: %s",
			   got == MAP_FAILED ? strerror(errno) : "moved elsewhere");
		rc->broken = true;
		return;
	}
	got = mmap(to, REGION_LEN, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
		   -1, 0);
	if (got != to) {
		/* Someone took the room: find another. */
		rc->spare = mmap(NULL, REGION_LEN + 2 * PMD_SZ, PROT_NONE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
				 -1, 0);
		if (rc->spare == MAP_FAILED) {
			unexpected(rc, "no room for mremap: %s", strerror(errno));
			rc->broken = true;
		}
	}
}

/* The owner's next step, by weight, among those its memory type allows. */
static enum owner_op owner_pick(struct rctl *rc)
{
	static const unsigned int anon_w[NR_OWNER_OPS] = {
		[OP_WRITE] = 35, [OP_DONTNEED] = 15, [OP_FREE] = 15,
		[OP_REMAP] = 8, [OP_MREMAP] = 8,
	};
	static const unsigned int file_w[NR_OWNER_OPS] = {
		[OP_WRITE] = 25, [OP_PWRITE] = 20, [OP_DONTNEED] = 12,
		[OP_TRUNCATE] = 8, [OP_PUNCH] = 12, [OP_REMAP] = 8,
		[OP_MREMAP] = 8,
	};
	const unsigned int *w = rc->r.type == MEM_ANON ? anon_w : file_w;
	unsigned int sum = 0, x, op;

	for (op = 0; op < NR_OWNER_OPS; op++)
		sum += w[op];
	x = below(&rc->rng, sum);
	for (op = 0; x >= w[op]; op++)
		x -= w[op];
	return op;
}

/* The owner of a region: the only thread that changes its contents. */
static void *owner_main(void *arg)
{
	struct rctl *rc = arg;
	char *buf = malloc(RUN_PAGES * PAGE_SZ);
	unsigned int steps = 0;
	size_t first, nr;

	if (!buf) {
		unexpected(rc, "malloc");
		return NULL;
	}
	while (!atomic_load(&stop) && !rc->broken) {
		enum owner_op op = owner_pick(rc);
		bool remap = op == OP_REMAP || op == OP_MREMAP ||
			     (rc->r.type == MEM_FILE && !race_xfs_truncation &&
			      (op == OP_TRUNCATE || op == OP_PUNCH));

		/* Lock order: remap, step, gate. */
		if (remap)
			pthread_rwlock_wrlock(&rc->remap);
		pthread_mutex_lock(&rc->step);
		atomic_fetch_add(&rc->seq, 1);
		rc->op = op;
		rc->steps++;
		switch (op) {
		case OP_WRITE:
		case OP_PWRITE:
			pick_range(&rc->rng, &first, &nr);
			owner_write(rc, first, nr, op == OP_PWRITE, buf);
			break;
		case OP_DONTNEED:
			owner_drop(rc, &rc->rng, MADV_DONTNEED);
			break;
		case OP_FREE:
			owner_drop(rc, &rc->rng, MADV_FREE);
			break;
		case OP_TRUNCATE:
			owner_truncate(rc, &rc->rng);
			break;
		case OP_PUNCH:
			owner_punch(rc, &rc->rng);
			break;
		case OP_REMAP:
			owner_remap(rc, &rc->rng);
			break;
		case OP_MREMAP:
			owner_mremap(rc, &rc->rng);
			break;
		default:
			break;
		}
		atomic_fetch_add(&rc->seq, 1);
		pthread_mutex_unlock(&rc->step);
		if (remap)
			pthread_rwlock_unlock(&rc->remap);
		atomic_fetch_add(&rc->owner_ops[op], 1);
		if (++steps % CHECK_EVERY == 0 && !rc->broken) {
			region_check(rc);
			atomic_fetch_add(&rc->owner_ops[OP_CHECK], 1);
		}
	}
	free(buf);
	return NULL;
}

/*
 * The helper that calls process_madvise(MADV_COLLAPSE) on the main process
 * through a pidfd, one request at a time, until its pipe closes.
 */
static void __noreturn helper_main(pid_t parent, int req, int rep)
{
	struct helper_req q;
	struct helper_rep a;
	int pidfd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	pidfd = syscall(SYS_pidfd_open, parent, 0);
	while (read(req, &q, sizeof(q)) == sizeof(q)) {
		struct iovec iov = {
			.iov_base = (void *)(uintptr_t)q.addr,
			.iov_len = q.len,
		};

		errno = EBADF;
		a.ret = pidfd < 0 ? -1 :
			syscall(SYS_process_madvise, pidfd, &iov, 1,
				MADV_COLLAPSE, 0);
		a.err = errno;
		if (write(rep, &a, sizeof(a)) != sizeof(a))
			break;
	}
	_exit(0);
}

/* Starts racer @t's helper process (before any region exists). */
static void helper_start(struct racer *t)
{
	int req[2], rep[2];
	pid_t parent = getpid();

	if (pipe(req) || pipe(rep))
		ksft_exit_fail_perror("pipe");
	fflush(stdout);
	t->helper = fork();
	if (t->helper < 0)
		ksft_exit_fail_perror("fork");
	if (!t->helper) {
		int i;

		/* Only the racer's own end keeps the helper alive. */
		for (i = 0; i < t->id; i++) {
			close(racers[i].req);
			close(racers[i].rep);
		}
		close(req[1]);
		close(rep[0]);
		helper_main(parent, req[0], rep[1]);
	}
	close(req[0]);
	close(rep[1]);
	t->req = req[1];
	t->rep = rep[0];
}

static void helper_stop(struct racer *t)
{
	int status;

	close(t->req);
	close(t->rep);
	waitpid(t->helper, &status, 0);
}

/* process_madvise(MADV_COLLAPSE) of [@addr, @addr + @len) by the helper. */
static long helper_collapse(struct racer *t, char *addr, size_t len, int *err)
{
	struct helper_req q = { .addr = (uintptr_t)addr, .len = len };
	struct helper_rep a;

	if (write(t->req, &q, sizeof(q)) != sizeof(q) ||
	    read(t->rep, &a, sizeof(a)) != sizeof(a)) {
		*err = EPIPE;
		return -1;
	}
	*err = a.err;
	return a.ret;
}

/* The whole region or one of its PMDs. */
static void collapse_range(struct racer *t, struct rctl *rc, char **addr,
			   size_t *len)
{
	if (below(&t->rng, 2)) {
		*addr = rc->r.p;
		*len = REGION_LEN;
	} else {
		*addr = rc->r.p + below(&t->rng, REGION_PMDS) * PMD_SZ;
		*len = PMD_SZ;
	}
}

/*
 * One collapse of @rc by @caller, and the verdict on its errno (see the
 * top): an EINVAL or EBUSY is counted under the event that explains it.
 */
static void racer_collapse(struct racer *t, struct rctl *rc, enum caller by)
{
	struct causes s;
	size_t len;
	char *addr;
	long ret;
	int err, c;

	collapse_range(t, rc, &addr, &len);
	causes_snap(rc, &s);
	if (by == BY_MADVISE) {
		ret = madvise(addr, len, MADV_COLLAPSE);
		err = errno;
	} else {
		ret = helper_collapse(t, addr, len, &err);
		if (ret == (long)len)
			ret = 0;
		else if (ret >= 0)
			err = 0;	/* a short count: unexpected */
	}
	if (!ret) {
		atomic_fetch_add(&rc->results[by][RES_OK], 1);
		return;
	}
	switch (err) {
	case EAGAIN:
		atomic_fetch_add(&rc->results[by][RES_EAGAIN], 1);
		return;
	case ENOMEM:
		atomic_fetch_add(&rc->results[by][RES_ENOMEM], 1);
		return;
	case EBUSY:
		atomic_fetch_add(&rc->results[by][RES_EBUSY], 1);
		if (caused(rc, &s, CAUSE_UFFD)) {
			atomic_fetch_add(&rc->explained[CAUSE_UFFD], 1);
			return;
		}
		break;
	case EINVAL:
		atomic_fetch_add(&rc->results[by][RES_EINVAL], 1);
		for (c = 0; c < NR_CAUSES; c++) {
			if ((einval_causes[rc->r.type] & 1u << c) &&
			    caused(rc, &s, c)) {
				atomic_fetch_add(&rc->explained[c], 1);
				return;
			}
		}
		break;
	default:
		atomic_fetch_add(&rc->results[by][RES_OTHER], 1);
		break;
	}
	unexpected(rc,
		   "%s(MADV_COLLAPSE) of %s: %s (returned %ld) with no concurrent event that explains it",
		   caller_name[by], len == PMD_SZ ? "one PMD" : "the region",
		   strerror(err), ret);
}

/* A collapse, by either caller, inside another racer's window. */
static void maybe_collapse(struct racer *t, struct rctl *rc)
{
	if (below(&t->rng, 2))
		racer_collapse(t, rc, below(&t->rng, 2) ? BY_MADVISE :
					 BY_PROCESS_MADVISE);
}

/*
 * A range for mprotect, mlock and uffd: the region, one PMD or a short run
 * of pages; the last splits the VMA inside a PMD.
 */
static bool window_range(struct racer *t, struct rctl *rc, char **addr,
			 size_t *len)
{
	unsigned int k = below(&t->rng, 4);
	size_t first, nr;

	if (k == 3) {
		nr = 1 + below(&t->rng, RUN_PAGES);
		first = below(&t->rng, REGION_PAGES - nr + 1);
		*addr = rc->r.p + first * PAGE_SZ;
		*len = nr * PAGE_SZ;
		return true;
	}
	collapse_range(t, rc, addr, len);
	return false;
}

static void racer_pageout(struct racer *t, struct rctl *rc)
{
	size_t first, nr;

	pick_range(&t->rng, &first, &nr);
	cause_begin(rc, CAUSE_PAGEOUT);
	/* EINVAL: a locked VMA (an mlock racer's window). */
	if (madvise(rc->r.p + first * PAGE_SZ, nr * PAGE_SZ, MADV_PAGEOUT)) {
		if (errno == EINVAL)
			atomic_fetch_add(&rc->aux_refused, 1);
		else
			unexpected(rc, "MADV_PAGEOUT: %s", strerror(errno));
	}
	cause_end(rc, CAUSE_PAGEOUT);
}

/* mprotect(PROT_READ) and back, the owner kept from writing meanwhile. */
static void racer_mprotect(struct racer *t, struct rctl *rc)
{
	size_t len;
	char *addr;
	bool split = window_range(t, rc, &addr, &len);

	pthread_mutex_lock(&rc->gate);
	if (split)
		cause_begin(rc, CAUSE_SPLIT);
	if (mprotect(addr, len, PROT_READ))
		unexpected(rc, "mprotect(PROT_READ): %s", strerror(errno));
	maybe_collapse(t, rc);
	if (mprotect(addr, len, PROT_READ | PROT_WRITE))
		unexpected(rc, "mprotect(PROT_READ | PROT_WRITE): %s",
			   strerror(errno));
	if (split)
		cause_end(rc, CAUSE_SPLIT);
	pthread_mutex_unlock(&rc->gate);
}

/*
 * mlock and munlock, the owner kept from MADV_DONTNEED meanwhile. mlock may
 * fail with ENOMEM while the owner has the file truncated (the population
 * faults past the end).
 */
static void racer_mlock(struct racer *t, struct rctl *rc)
{
	size_t len;
	char *addr;
	bool split = window_range(t, rc, &addr, &len);

	pthread_mutex_lock(&rc->gate);
	if (split)
		cause_begin(rc, CAUSE_SPLIT);
	if (mlock(addr, len)) {
		if (errno == ENOMEM || errno == EAGAIN)
			atomic_fetch_add(&rc->aux_refused, 1);
		else
			unexpected(rc, "mlock: %s", strerror(errno));
	}
	maybe_collapse(t, rc);
	if (munlock(addr, len))
		unexpected(rc, "munlock: %s", strerror(errno));
	if (split)
		cause_end(rc, CAUSE_SPLIT);
	pthread_mutex_unlock(&rc->gate);
}

/*
 * userfaultfd registration in write-protect mode and unregistration; nothing
 * is write-protected, so no fault ever waits. EBUSY: another racer's
 * userfaultfd has the range.
 */
static void racer_uffd(struct racer *t, struct rctl *rc)
{
	size_t len;
	char *addr;
	int ret;

	collapse_range(t, rc, &addr, &len);
	cause_begin(rc, CAUSE_UFFD);
	ret = uffd_register(t->uffd, addr, len, false, true, false);
	if (!ret) {
		maybe_collapse(t, rc);
		ret = uffd_unregister(t->uffd, addr, len);
		if (ret)
			unexpected(rc, "UFFDIO_UNREGISTER: %s", strerror(-ret));
	} else if (ret == -EBUSY) {
		atomic_fetch_add(&rc->aux_refused, 1);
	} else {
		unexpected(rc, "UFFDIO_REGISTER: %s", strerror(-ret));
	}
	cause_end(rc, CAUSE_UFFD);
}

/*
 * fork(2); the child compares one PMD of the region with its copy of the
 * model and exits 0, or 1 after sending the first wrong page. Its verdict
 * counts only if the owner took no step from before fork() to after
 * waitpid(): then the copies it saw were of one consistent instant. Half the
 * time the racer holds the owner's step lock to make sure of it; the other
 * half the owner runs on, and its writes race the fork.
 */
static void racer_fork(struct racer *t, struct rctl *rc)
{
	size_t first = below(&t->rng, REGION_PMDS) * PAGES_PER_PMD, pg;
	bool pause = below(&t->rng, 2);
	struct fork_report fr;
	unsigned int before;
	int status;
	pid_t pid;

	if (pause)
		pthread_mutex_lock(&rc->step);
	before = atomic_load(&rc->seq);
	if (before & 1) {
		atomic_fetch_add(&rc->fork_dropped, 1);
		goto out;
	}
	pid = fork();
	if (!pid) {
		for (pg = first; pg < first + PAGES_PER_PMD; pg++) {
			fr.found = page_gen(rc, pg, rc->r.p + pg * PAGE_SZ);
			if (!gen_ok(rc, pg, fr.found)) {
				fr.pg = pg;
				if (write(t->forkpipe[1], &fr, sizeof(fr)) < 0)
					_exit(2);
				_exit(1);
			}
		}
		_exit(0);
	}
	if (pid < 0) {
		unexpected(rc, "fork: %s", strerror(errno));
		goto out;
	}
	if (waitpid(pid, &status, 0) != pid) {
		unexpected(rc, "waitpid: %s", strerror(errno));
		goto out;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 1 &&
	    read(t->forkpipe[0], &fr, sizeof(fr)) != sizeof(fr))
		fr.pg = -1;
	if (atomic_load(&rc->seq) != before) {
		atomic_fetch_add(&rc->fork_dropped, 1);
		goto out;
	}
	atomic_fetch_add(&rc->fork_kept, 1);
	atomic_fetch_add(&rc->checked, PAGES_PER_PMD);
	if (WIFEXITED(status) && !WEXITSTATUS(status))
		goto out;
	atomic_fetch_add(&rc->wrong, 1);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 1 && fr.pg < REGION_PAGES)
		report_page(rc, fr.pg, fr.found, NULL, "a forked child");
	else if (report_more(&page_reports))
		ksft_print_msg("%s: region %d (%s): forked child checking PMD %zu: status 0x%x\n",
			       core_now, rc->id, mem_type_name[rc->r.type],
			       first / PAGES_PER_PMD, status);
out:
	if (pause)
		pthread_mutex_unlock(&rc->step);
}

/* The racer's next operation, by weight; no userfaultfd on XFS files. */
static enum racer_op racer_pick(struct racer *t, struct rctl *rc)
{
	static const unsigned int w[NR_RACER_OPS] = {
		[OP_COLLAPSE] = 30, [OP_PROCESS_MADVISE] = 20,
		[OP_PAGEOUT] = 12, [OP_MPROTECT] = 10, [OP_FORK] = 8,
		[OP_MLOCK] = 10, [OP_UFFD] = 10,
	};
	unsigned int sum = 0, x, op;

	for (op = 0; op < NR_RACER_OPS; op++)
		sum += w[op];
	x = below(&t->rng, sum);
	for (op = 0; x >= w[op]; op++)
		x -= w[op];
	if (op == OP_UFFD && rc->r.type == MEM_FILE)
		op = OP_COLLAPSE;
	return op;
}

/* A racer: operations on any region that must never change a byte. */
static void *racer_main(void *arg)
{
	struct racer *t = arg;

	while (!atomic_load(&stop)) {
		struct rctl *rc = &regions[below(&t->rng, nr_regions)];
		enum racer_op op = racer_pick(t, rc);

		pthread_rwlock_rdlock(&rc->remap);
		if (rc->broken) {
			pthread_rwlock_unlock(&rc->remap);
			continue;
		}
		switch (op) {
		case OP_COLLAPSE:
			racer_collapse(t, rc, BY_MADVISE);
			break;
		case OP_PROCESS_MADVISE:
			racer_collapse(t, rc, BY_PROCESS_MADVISE);
			break;
		case OP_PAGEOUT:
			racer_pageout(t, rc);
			break;
		case OP_MPROTECT:
			racer_mprotect(t, rc);
			break;
		case OP_FORK:
			racer_fork(t, rc);
			break;
		case OP_MLOCK:
			racer_mlock(t, rc);
			break;
		case OP_UFFD:
			racer_uffd(t, rc);
			break;
		default:
			break;
		}
		pthread_rwlock_unlock(&rc->remap);
		atomic_fetch_add(&rc->racer_ops[op], 1);
	}
	return NULL;
}

/* A userfaultfd that can register anon and shmem in write-protect mode. */
static int uffd_open(void)
{
	struct uffdio_api api = {
		.api = UFFD_API, .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
	};
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api))
		ksft_exit_fail_msg("userfaultfd with UFFD_FEATURE_WP_HUGETLBFS_SHMEM: %s\n",
				   strerror(errno));
	return uffd;
}

/* Region @i: its memory (generation 1 everywhere), model and locks. */
static void region_setup(struct rctl *rc, int i)
{
	pthread_rwlockattr_t attr;
	size_t pg;

	memset(rc, 0, sizeof(*rc));
	rc->id = i;
	rc->rng = stream_seed(100 + i);
	rc->r = mem_region(region_type[i], REGION_PMDS);
	/* Neither MADV_HUGEPAGE nor MADV_NOHUGEPAGE, which MADV_COLLAPSE refuses. */
	if (!khugepaged_welcome(rc) &&
	    mmap(rc->r.p, REGION_LEN, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_FIXED, rc->r.fd, 0) != rc->r.p)
		ksft_exit_fail_perror("mmap");
	if (mem_populate(&rc->r, NULL, 1))
		ksft_exit_fail_perror("populating a region");
	for (pg = 0; pg < REGION_PAGES; pg++)
		rc->gen[pg] = 1;
	for (pg = 0; pg < REGION_PMDS; pg++)
		rc->nonzero[pg] = PAGES_PER_PMD;
	rc->last_gen = 1;
	rc->spare = mmap(NULL, REGION_LEN + 2 * PMD_SZ, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (rc->spare == MAP_FAILED)
		ksft_exit_fail_perror("mmap");
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr,
				      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&rc->remap, &attr);
	pthread_rwlockattr_destroy(&attr);
	pthread_mutex_init(&rc->step, NULL);
	pthread_mutex_init(&rc->gate, NULL);
}

static void region_teardown(struct rctl *rc)
{
	munmap(rc->spare, REGION_LEN + 2 * PMD_SZ);
	if (!rc->broken)
		mem_region_free(&rc->r);
	else if (rc->r.fd >= 0)
		close(rc->r.fd);
	pthread_rwlock_destroy(&rc->remap);
	pthread_mutex_destroy(&rc->step);
	pthread_mutex_destroy(&rc->gate);
}

/* Prints the counters of @caller that moved between @a and @b. */
static void outcomes_print(const char *caller, const struct rust_stats *a,
			   const struct rust_stats *b)
{
	char line[1024] = "";

	rust_stats_moved(a, b, line, sizeof(line));
	ksft_print_msg("%s: Rust core's %s outcomes:%s\n", core_now, caller,
		       line);
}

/* Figures of the regions of one memory type, or of all (@type < 0). */
struct figures {
	long owner_ops[NR_OWNER_OPS], racer_ops[NR_RACER_OPS];
	long results[NR_CALLERS][NR_RESULTS], explained[NR_CAUSES];
	long checked, wrong, unexpected, fork_kept, fork_dropped, aux_refused;
};

static void figures_sum(struct figures *f, int type)
{
	int i, j, k;

	memset(f, 0, sizeof(*f));
	for (i = 0; i < nr_regions; i++) {
		struct rctl *rc = &regions[i];

		if (type >= 0 && (int)rc->r.type != type)
			continue;
		for (j = 0; j < NR_OWNER_OPS; j++)
			f->owner_ops[j] += atomic_load(&rc->owner_ops[j]);
		for (j = 0; j < NR_RACER_OPS; j++)
			f->racer_ops[j] += atomic_load(&rc->racer_ops[j]);
		for (j = 0; j < NR_CALLERS; j++)
			for (k = 0; k < NR_RESULTS; k++)
				f->results[j][k] += atomic_load(&rc->results[j][k]);
		for (j = 0; j < NR_CAUSES; j++)
			f->explained[j] += atomic_load(&rc->explained[j]);
		f->checked += atomic_load(&rc->checked);
		f->wrong += atomic_load(&rc->wrong);
		f->unexpected += atomic_load(&rc->unexpected);
		f->fork_kept += atomic_load(&rc->fork_kept);
		f->fork_dropped += atomic_load(&rc->fork_dropped);
		f->aux_refused += atomic_load(&rc->aux_refused);
	}
}

/* "name n, name n, ..." of the counts that are not zero. */
static const char *counts_str(char *buf, size_t size, const long *n,
			      const char *const *name, int nr)
{
	size_t len = 0;
	int i;

	buf[0] = '\0';
	for (i = 0; i < nr && len < size; i++)
		if (n[i])
			len += snprintf(buf + len, size - len, "%s%s %ld",
					len ? ", " : "", name[i], n[i]);
	return buf;
}

/* The TAP result of memory type @type. */
static void report_type(int type)
{
	char own[256], rac[256];
	long ok, calls[NR_CALLERS] = { 0 };
	struct figures f;
	int by, k;

	figures_sum(&f, type);
	for (by = 0; by < NR_CALLERS; by++)
		for (k = 0; k < NR_RESULTS; k++)
			calls[by] += f.results[by][k];
	ok = f.results[BY_MADVISE][RES_OK] + f.results[BY_PROCESS_MADVISE][RES_OK];
	counts_str(own, sizeof(own), f.owner_ops, owner_op_name, NR_OWNER_OPS);
	counts_str(rac, sizeof(rac), f.racer_ops, racer_op_name, NR_RACER_OPS);
	ksft_test_result(!f.wrong && !f.unexpected && ok > 0,
			 "%s: %s: owner ops (%s); racer ops (%s); collapsed madvise %ld/%ld, process_madvise %ld/%ld; %ld pages checked, %ld wrong; %ld unexpected errors\n",
			 core_now, mem_type_name[type], own, rac,
			 f.results[BY_MADVISE][RES_OK], calls[BY_MADVISE],
			 f.results[BY_PROCESS_MADVISE][RES_OK],
			 calls[BY_PROCESS_MADVISE], f.checked, f.wrong,
			 f.unexpected);
}

/* The knobs this program changes, as they were ("" if not changed yet). */
static struct {
	char core[16], enabled[64], shmem[64], scan[32], alloc[32];
} knobs;

/* Puts back the knobs this program changed (at exit, whatever way). */
static void knobs_restore(void)
{
	if (knobs.core[0])
		collapse_set_core(knobs.core);
	if (knobs.enabled[0])
		set_str(THP_SYSFS "enabled", knobs.enabled);
	if (knobs.shmem[0])
		set_str(THP_SYSFS "shmem_enabled", knobs.shmem);
	if (knobs.scan[0])
		set_str(THP_SYSFS "khugepaged/scan_sleep_millisecs", knobs.scan);
	if (knobs.alloc[0])
		set_str(THP_SYSFS "khugepaged/alloc_sleep_millisecs", knobs.alloc);
}

/* One run of @secs seconds on @core, and its TAP results. */
static void run_core(const char *core, int secs)
{
	long long before[3], after[3], total[2], total_after[2];
	static const char *const rust_callers[] = {
		"madvise", "process_madvise", "khugepaged",
	};
	struct rust_stats oa[2], ob[2];
	char res[NR_CALLERS][256], exp[256];
	time_t t0 = time(NULL), t1, t2;
	struct figures f;
	int i, s;

	core_now = core;
	race_xfs_truncation = !strcmp(core, "rust") || race_xfs_c;
	if ((types & 1u << MEM_FILE) && !race_xfs_truncation)
		ksft_print_msg("%s: %s\n", core,
			       "XFS truncation and hole punching kept away from collapses of the file (-x races them: a deadlock in upstream's collapse_file())");
	atomic_store(&stop, 0);
	atomic_store(&reports, 0);
	atomic_store(&page_reports, 0);
	collapse_require_core(core);
	for (i = 0; i < nr_racers; i++) {
		struct racer *t = &racers[i];

		t->id = i;
		t->rng = stream_seed(i);
		helper_start(t);
	}
	for (i = 0; i < nr_regions; i++)
		region_setup(&regions[i], i);
	for (i = 0; i < nr_racers; i++) {
		racers[i].uffd = uffd_open();
		if (pipe2(racers[i].forkpipe, O_NONBLOCK))
			ksft_exit_fail_perror("pipe2");
	}
	for (i = 0; i < 3; i++)
		before[i] = rust_stat(rust_callers[i], "succeed");
	for (i = 0; i < 2; i++) {
		total[i] = rust_stat_total(rust_callers[i]);
		rust_stats_read(rust_callers[i], &oa[i]);
	}

	for (i = 0; i < nr_regions; i++)
		if (pthread_create(&regions[i].owner, NULL, owner_main, &regions[i]))
			ksft_exit_fail_perror("pthread_create");
	for (i = 0; i < nr_racers; i++)
		if (pthread_create(&racers[i].th, NULL, racer_main, &racers[i]))
			ksft_exit_fail_perror("pthread_create");
	t1 = time(NULL);
	for (s = 0; s < secs; s++)
		sleep(1);
	atomic_store(&stop, 1);
	for (i = 0; i < nr_racers; i++)
		pthread_join(racers[i].th, NULL);
	for (i = 0; i < nr_regions; i++)
		pthread_join(regions[i].owner, NULL);

	/* Every page of every region, once more, with no one else running. */
	for (i = 0; i < nr_regions; i++) {
		if (regions[i].broken)
			unexpected(&regions[i], "left unchecked: a step failed");
		else
			region_check(&regions[i]);
	}
	t2 = time(NULL);
	ksft_print_msg("%s: %ld s to set up, %ld s to stop and check every page\n",
		       core, (long)(t1 - t0), (long)(t2 - t1 - secs));
	for (i = 0; i < 3; i++)
		after[i] = rust_stat(rust_callers[i], "succeed");
	for (i = 0; i < 2; i++) {
		total_after[i] = rust_stat_total(rust_callers[i]);
		rust_stats_read(rust_callers[i], &ob[i]);
		outcomes_print(rust_callers[i], &oa[i], &ob[i]);
	}

	for (i = 0; i < NR_MEM_TYPES; i++)
		if (types & 1u << i)
			report_type(i);

	figures_sum(&f, -1);
	for (i = 0; i < NR_CALLERS; i++)
		counts_str(res[i], sizeof(res[i]), f.results[i], result_name,
			   NR_RESULTS);
	counts_str(exp, sizeof(exp), f.explained, cause_name, NR_CAUSES);
	if (core[0] == 'r')
		ksft_test_result(!f.unexpected && after[0] > before[0] &&
				 after[1] > before[1],
				 "%s: %d s, seed %llu, %d racers: madvise (%s), process_madvise (%s); EINVAL/EBUSY explained by (%s); %ld fork checks kept, %ld dropped; %ld refused mlock/pageout/uffd; Rust succeed: madvise +%lld, process_madvise +%lld, khugepaged +%lld; %ld unexpected errors\n",
				 core, secs, (unsigned long long)seed, nr_racers,
				 res[0], res[1], exp, f.fork_kept,
				 f.fork_dropped, f.aux_refused,
				 after[0] - before[0], after[1] - before[1],
				 after[2] - before[2], f.unexpected);
	else
		ksft_test_result(!f.unexpected && total_after[0] == total[0] &&
				 total_after[1] == total[1],
				 "%s: %d s, seed %llu, %d racers: madvise (%s), process_madvise (%s); EINVAL/EBUSY explained by (%s); %ld fork checks kept, %ld dropped; %ld refused mlock/pageout/uffd; Rust counters (must stay): madvise +%lld, process_madvise +%lld; %ld unexpected errors\n",
				 core, secs, (unsigned long long)seed, nr_racers,
				 res[0], res[1], exp, f.fork_kept,
				 f.fork_dropped, f.aux_refused,
				 total_after[0] - total[0],
				 total_after[1] - total[1], f.unexpected);

	for (i = 0; i < nr_racers; i++) {
		helper_stop(&racers[i]);
		close(racers[i].uffd);
		close(racers[i].forkpipe[0]);
		close(racers[i].forkpipe[1]);
	}
	for (i = 0; i < nr_regions; i++)
		region_teardown(&regions[i]);
}

/* The memory types named in @arg ("anon,shmem,xfs"), as a mask; 0 if bad. */
static unsigned int parse_types(char *arg)
{
	unsigned int mask = 0, i;
	char *name;

	for (name = strtok(arg, ","); name; name = strtok(NULL, ",")) {
		for (i = 0; i < NR_MEM_TYPES; i++)
			if (!strcmp(name, mem_type_name[i]))
				break;
		if (i == NR_MEM_TYPES)
			return 0;
		mask |= 1u << i;
	}
	return mask;
}

static void __noreturn bad_usage(const char *prog)
{
	ksft_exit_fail_msg("%s %s\n", prog,
			   "[-t secs] [-s seed] [-c rust|c|both] [-d dir] [-j racers] [-m anon,shmem,xfs] [-x]");
}

int main(int argc, char **argv)
{
	const char *cores = "both", *dir = "/mnt/xfs";
	bool seeded = false;
	struct statfs sfs;
	int secs = 60, opt;
	char was[64];

	while ((opt = getopt(argc, argv, "t:s:c:d:j:m:x")) != -1) {
		switch (opt) {
		case 't':
			secs = atoi(optarg);
			break;
		case 's':
			seed = strtoull(optarg, NULL, 0);
			seeded = true;
			break;
		case 'c':
			cores = optarg;
			break;
		case 'd':
			dir = optarg;
			break;
		case 'j':
			nr_racers = atoi(optarg);
			break;
		case 'm':
			types = parse_types(optarg);
			break;
		case 'x':
			race_xfs_c = true;
			break;
		default:
			bad_usage(argv[0]);
		}
	}
	if (secs < 1 || nr_racers < 1 || nr_racers > MAX_RACERS || !types ||
	    (strcmp(cores, "rust") && strcmp(cores, "c") && strcmp(cores, "both")))
		bad_usage(argv[0]);
	if (!seeded) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		seed = (uint64_t)ts.tv_sec * 1000000007ULL ^ ts.tv_nsec;
	}
	mem_file_dir = dir;
	/* A helper that died shows as EPIPE, not as the end of the program. */
	signal(SIGPIPE, SIG_IGN);

	collapse_test_start(knobs.core, sizeof(knobs.core), knobs.enabled,
			    sizeof(knobs.enabled));
	atexit(knobs_restore);
	ksft_print_msg("seed %llu (rerun: -s %llu)\n", (unsigned long long)seed,
		       (unsigned long long)seed);
	ksft_set_plan((strcmp(cores, "both") ? 1 : 2) *
		      (__builtin_popcount(types) + 1));
	if ((types & 1u << MEM_FILE) &&
	    (statfs(dir, &sfs) || sfs.f_type != XFS_MAGIC))
		ksft_exit_fail_msg("%s is not an XFS directory (-d)\n", dir);
	for (opt = 0; opt < MAX_REGIONS; opt++)
		if (types & 1u << (opt / PER_TYPE))
			region_type[nr_regions++] = opt / PER_TYPE;
	if (sysfs_swap_str(THP_SYSFS "shmem_enabled", knobs.shmem,
			   sizeof(knobs.shmem), "never"))
		ksft_exit_fail_msg("cannot set shmem_enabled\n");
	if (sysfs_swap_str(THP_SYSFS "khugepaged/scan_sleep_millisecs",
			   knobs.scan, sizeof(knobs.scan), "0") ||
	    sysfs_swap_str(THP_SYSFS "khugepaged/alloc_sleep_millisecs",
			   knobs.alloc, sizeof(knobs.alloc), "100"))
		ksft_exit_fail_msg("cannot set the khugepaged sleeps\n");
	if (sysfs_swap_str(THP_SYSFS "enabled", was, sizeof(was), "madvise"))
		ksft_exit_fail_msg("cannot set THP enabled\n");

	if (strcmp(cores, "c"))
		run_core("rust", secs);
	if (strcmp(cores, "rust"))
		run_core("c", secs);
	ksft_finished();	/* knobs_restore() runs at exit */
}
