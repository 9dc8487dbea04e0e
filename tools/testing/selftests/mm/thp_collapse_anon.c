// SPDX-License-Identifier: GPL-2.0
/*
 * MADV_COLLAPSE of private anonymous memory through the Rust and the C
 * collapse cores: data integrity, races with other users of the range, a
 * process_madvise() target killed mid-call, bad input, mlock accounting,
 * leaks, tracepoints, pagemap bits.
 *
 *   thp_collapse_anon [-r]   (as root; needs swap, hugepages=1 or more,
 *                             /sys/kernel/debug/gup_test, soft-dirty)
 *   -r: the race cases on the Rust core only (the KCSAN boot)
 *
 * Data-integrity cases run on both cores and compare every byte with a
 * shadow copy. Cases on the Rust core also check that its counters moved,
 * so a pass cannot come from the C core.
 *
 * Race cases collapse in a loop while a racer runs the whole time (two
 * writers, mprotect, fork, userfaultfd registration, munmap, MADV_DONTNEED,
 * MADV_FREE and MADV_PAGEOUT of pages the racer owns and rewrites,
 * UFFDIO_MOVE of such pages out and back, long-term pins of them, mremap,
 * khugepaged): at least half the rounds must collapse (one in eight under
 * UFFDIO_MOVE), no write may get lost, pages the racers free must read
 * zeroes (MADV_DONTNEED) or their old data or zeroes (MADV_FREE), paged-out
 * and moved pages their data, and a pin must see what the mapping wrote.
 * Under mprotect and MADV_FREE some early copies must have started over. A
 * single MADV_FREE of one page, timed to land during the early copy, must
 * make it start over, and the new copy hold. A page empty at the scan,
 * written and then MADV_DONTNEED'd during the early copy, must read zeroes.
 * Two threads collapsing the same range at once must both succeed, a scan
 * that meets the other's early copy waiting for it.
 * The killed-target case proves from the Rust counters that the kill landed
 * while the call ran.
 *
 * Pagemap cases compare, page by page, the soft-dirty, exclusive, uffd-wp
 * and present bits the Rust core leaves with the C core's: after a collapse
 * copied early, after one that failed after its early copy (a pin), and
 * after one refused for uffd-wp entries.
 *
 * Bad input must give the documented errno on both cores. Cases decided by
 * mm/madvise.c before any core is called are labelled "madvise:" or
 * "process_madvise:" and check that no Rust counter moved; "rust:" cases
 * prove through the Rust counters that the Rust core did the work.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest.h"
#include "thp_collapse_mem.h"

static const char *const cores[] = { "rust", "c" };

/* The word at offset @w of page @pg, for a test seeded with @seed. */
static uint64_t pattern(uint64_t seed, size_t pg, size_t w)
{
	return (seed << 48) ^ ((uint64_t)pg << 12) ^ w ^ 0x5a5a5a5a00000000ULL;
}

static void fill_page(char *p, char *shadow, size_t pg, uint64_t seed)
{
	uint64_t *a = (uint64_t *)(p + pg * PAGE_SZ);
	uint64_t *b = (uint64_t *)(shadow + pg * PAGE_SZ);
	size_t w;

	for (w = 0; w < PAGE_SZ / sizeof(uint64_t); w++) {
		a[w] = pattern(seed, pg, w);
		b[w] = a[w];
	}
}

/* Private anonymous memory, faulted in base pages only. */
static char *small_pages(size_t nr_pmds)
{
	char *p = mmap_pmd_aligned(nr_pmds, PROT_READ | PROT_WRITE);

	if (!p)
		ksft_exit_fail_perror("mmap");
	if (madvise(p, nr_pmds * PMD_SZ, MADV_NOHUGEPAGE))
		ksft_exit_fail_perror("madvise(MADV_NOHUGEPAGE)");
	return p;
}

/* Allow THPs again (MADV_COLLAPSE respects VM_NOHUGEPAGE). */
static void allow_thp(char *p, size_t len)
{
	if (madvise(p, len, MADV_HUGEPAGE))
		ksft_exit_fail_perror("madvise(MADV_HUGEPAGE)");
}

static bool swap_enabled(void)
{
	char line[256];
	FILE *f = fopen("/proc/swaps", "r");
	int lines = 0;

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		lines++;
	fclose(f);
	return lines > 1;
}

static size_t count_swapped(char *p, size_t nr_pages)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	size_t i, n = 0;

	if (fd < 0)
		ksft_exit_fail_perror("open(pagemap)");
	for (i = 0; i < nr_pages; i++)
		n += pagemap_is_swapped(fd, p + i * PAGE_SZ);
	close(fd);
	return n;
}

/* ---- Data integrity ---------------------------------------------------- */

/* How a case lays out its memory before the collapse. */
enum layout {
	FULL,		/* every page written */
	SPARSE,		/* every third page written, the rest never touched */
	ZERO_PAGE,	/* odd pages written, even pages read (the zero page) */
	SWAPPED,	/* every page written, 64 per PMD paged out to swap */
	SHARED,		/* every page written, then shared with a child */
	SOME_HUGE,	/* the first PMD already huge, the others small */
	MTHP,		/* every page written, in 64 KiB mTHP folios */
	LAZYFREE,	/* every page written, half of them then MADV_FREE'd */
	NR_LAYOUTS,
};

static const char *const layout_name[] = {
	"full", "sparse", "zero page", "partly swapped", "shared after fork",
	"partly huge already", "64KiB mTHP folios", "lazily freed",
};

#define INTEGRITY_PMDS 4

/* The number of 64 KiB (order 4) folios mapping [p, p + len), or -1. */
static int mthp_folios(char *p, size_t len)
{
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	int kpageflags = open("/proc/kpageflags", O_RDONLY);
	int orders[10] = { 0 };
	int ret = -1;

	if (pagemap >= 0 && kpageflags >= 0 &&
	    !gather_folio_orders(p, len, pagemap, kpageflags, orders, 10))
		ret = orders[4];
	if (pagemap >= 0)
		close(pagemap);
	if (kpageflags >= 0)
		close(kpageflags);
	return ret;
}

/*
 * Lay the memory out; returns false (with a failure reported) if the
 * machine cannot provide the layout.
 */
static bool prepare(enum layout l, char *p, char *shadow, uint64_t seed,
		    pid_t *child)
{
	size_t nr = INTEGRITY_PMDS * PAGES_PER_PMD, i;
	char old64[32], old2m[32];

	memset(shadow, 0, INTEGRITY_PMDS * PMD_SZ);
	switch (l) {
	case FULL:
	case SHARED:
	case SWAPPED:
		for (i = 0; i < nr; i++)
			fill_page(p, shadow, i, seed);
		break;
	case LAZYFREE:
		for (i = 0; i < nr; i++)
			fill_page(p, shadow, i, seed);
		/*
		 * Clean lazyfree pages keep their contents until reclaim drops
		 * them (nothing here makes it run); MADV_COLLAPSE copies them,
		 * and the huge page that replaces them is not lazyfree.
		 */
		for (i = 0; i < nr; i += 64)
			if (madvise(p + i * PAGE_SZ, 32 * PAGE_SZ, MADV_FREE))
				ksft_exit_fail_perror("madvise(MADV_FREE)");
		break;
	case SPARSE:
		for (i = 0; i < nr; i += 3)
			fill_page(p, shadow, i, seed);
		break;
	case ZERO_PAGE:
		for (i = 0; i < nr; i++) {
			if (i & 1)
				fill_page(p, shadow, i, seed);
			else	/* A read fault maps the zero page. */
				__atomic_load_n(&p[i * PAGE_SZ], __ATOMIC_RELAXED);
		}
		break;
	case SOME_HUGE:
		for (i = 0; i < nr; i++)
			fill_page(p, shadow, i, seed);
		allow_thp(p, PMD_SZ);
		if (madvise(p, PMD_SZ, MADV_COLLAPSE) ||
		    !check_huge_anon(p, PMD_SZ, 1, PMD_SZ)) {
			ksft_test_result_fail("%s: cannot make the first PMD huge\n",
					      layout_name[l]);
			return false;
		}
		break;
	case MTHP:
		if (sysfs_swap_str(THP_SYSFS "hugepages-64kB/enabled", old64,
				   sizeof(old64), "always")) {
			ksft_test_result_fail("%s: no 64 KiB mTHP size\n",
					      layout_name[l]);
			return false;
		}
		sysfs_swap_str(THP_SYSFS "hugepages-2048kB/enabled", old2m,
			       sizeof(old2m), "never");
		/* mTHP faults need the VMA to allow THPs. */
		allow_thp(p, INTEGRITY_PMDS * PMD_SZ);
		for (i = 0; i < nr; i++)
			fill_page(p, shadow, i, seed);
		set_str(THP_SYSFS "hugepages-64kB/enabled", old64);
		set_str(THP_SYSFS "hugepages-2048kB/enabled", old2m);
		/* The faults must really have made 64 KiB folios. */
		if (mthp_folios(p, INTEGRITY_PMDS * PMD_SZ) < (int)(nr / 16 / 2)) {
			ksft_test_result_fail("%s: the faults made %d of %zu 64 KiB folios\n",
					      layout_name[l],
					      mthp_folios(p, INTEGRITY_PMDS * PMD_SZ),
					      nr / 16);
			return false;
		}
		break;
	default:
		break;
	}
	if (l == SWAPPED) {
		if (!swap_enabled()) {
			ksft_test_result_fail("%s: no swap device\n", layout_name[l]);
			return false;
		}
		for (i = 0; i < INTEGRITY_PMDS; i++)
			madvise(p + i * PMD_SZ + 100 * PAGE_SZ, 64 * PAGE_SZ,
				MADV_PAGEOUT);
		if (count_swapped(p, nr) == 0) {
			ksft_test_result_fail("%s: MADV_PAGEOUT swapped nothing out\n",
					      layout_name[l]);
			return false;
		}
	}
	if (l == SHARED) {
		*child = fork();
		if (*child < 0)
			ksft_exit_fail_perror("fork");
		if (*child == 0) {
			/* Keep the pages shared until the parent is done. */
			for (;;)
				pause();
		}
	}
	allow_thp(p, INTEGRITY_PMDS * PMD_SZ);
	return true;
}

/*
 * Prints the counters of @caller that moved since @before, to tell which
 * outcome a failed case met.
 */
static void stats_print_moved(const char *caller, const struct rust_stats *before)
{
	static struct rust_stats now;
	char line[1024] = "";

	rust_stats_read(caller, &now);
	rust_stats_moved(before, &now, line, sizeof(line));
	ksft_print_msg("%s:%s\n", caller, line);
}

/*
 * rust_switch as test_switch_modes() set it: "read" (the default) switches
 * under the page-table locks with the mmap lock held for read, "ptl" with it
 * held for write, "vma" write-locks the VMA as upstream.
 */
static const char *switch_mode = "read";

static void test_integrity(const char *core, enum layout l)
{
	static struct rust_stats snap;
	size_t len = INTEGRITY_PMDS * PMD_SZ;
	uint64_t seed = (uint64_t)l * 2 + (core[0] == 'r');
	char *p = small_pages(INTEGRITY_PMDS);
	char *shadow = malloc(len);
	pid_t child = -1;
	int ret, err, tries;
	bool same, huge;
	long long ok;

	if (!shadow)
		ksft_exit_fail_perror("malloc");
	if (!prepare(l, p, shadow, seed, &child))
		goto out;

	collapse_require_core(core);
	ok = rust_stat("madvise", "succeed");
	rust_stats_read("madvise", &snap);
	/*
	 * EAGAIN is transient by contract (say, swapped-in pages still in
	 * another CPU's LRU batch): retry a few times. PMDs that collapsed
	 * in an earlier call count as pmd_mapped, not succeed, in the next.
	 */
	ret = madvise(p, len, MADV_COLLAPSE);
	for (tries = 1; ret && errno == EAGAIN && tries < 4; tries++)
		ret = madvise(p, len, MADV_COLLAPSE);
	err = errno;
	huge = check_huge_anon(p, len, INTEGRITY_PMDS, PMD_SZ);
	same = !memcmp(p, shadow, len);
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	if (!strcmp(core, "rust")) {
		static struct rust_stats now;
		long long moved = rust_stat("madvise", "succeed") - ok;
		/* SOME_HUGE: one PMD was huge already (pmd_mapped, not succeed). */
		long long want = l == SOME_HUGE ? INTEGRITY_PMDS - 1 : INTEGRITY_PMDS;
		struct rust_paths d;

		rust_stats_read("madvise", &now);
		d = rust_paths_delta(&snap, &now);
		if (ret || tries > 1 || moved != want)
			stats_print_moved("madvise", &snap);
		/*
		 * Nothing writes meanwhile: every PMD is copied while the
		 * process runs, in one pass, and no page again under the mmap
		 * write lock (but for a page just read back from swap, which
		 * may still be in another CPU's LRU batch). Each switch keeps
		 * the VMA's faults in, holding the page-table locks only (or
		 * gives up and write-locks the VMA, a page being in a batch),
		 * unless rust_switch says "vma"; and with the mmap lock held
		 * for read only, unless it says "ptl".
		 */
		bool vma = !strcmp(switch_mode, "vma");
		bool read = !strcmp(switch_mode, "read");
		bool switches = vma ? !d.switched && !d.fallbacks :
				d.switched > 0 &&
				d.switched + d.fallbacks == d.early &&
				d.read == (read ? d.switched : 0);

		ksft_test_result(!ret && huge && same && moved == want &&
				 d.early == want && !d.locked && !d.retries &&
				 (!d.recopied || l == SWAPPED) && switches,
				 "%s: %s%s%s%s: collapsed, every byte kept, copied early (ret %d %s, %d calls, huge %d, same %d, succeed +%lld, copied early +%lld, retries +%lld, recopied +%lld, copied locked +%lld, switched under the page-table locks +%lld, of them under the mmap read lock +%lld, fell back +%lld)\n",
				 core, layout_name[l],
				 read ? "" : " (rust_switch ", read ? "" : switch_mode,
				 read ? "" : ")",
				 ret, ret ? strerror(err) : "", tries, huge, same,
				 moved, d.early, d.retries, d.recopied, d.locked,
				 d.switched, d.read, d.fallbacks);
	} else {
		ksft_test_result(!ret && huge && same,
				 "%s: %s: collapsed, every byte kept (ret %d %s, %d calls, huge %d, same %d)\n",
				 core, layout_name[l], ret, ret ? strerror(err) : "",
				 tries, huge, same);
	}
out:
	free(shadow);
	munmap(p, len);
}

static void test_in_place(const char *core, bool shared);

/*
 * rust_switch: "ptl" switches under the page-table locks with the mmap lock
 * held for write (the integrity test then sees no switch under the read
 * lock), "vma" write-locks the VMA for every switch, as upstream (it sees no
 * switch under the page-table locks, and maps in place under the write
 * lock), and only "read", "ptl" and "vma" are taken.
 */
static void test_switch_modes(void)
{
	static const char *const modes[] = { "ptl", "vma" };
	int bad = collapse_set_switch("faults");
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(modes); i++) {
		switch_mode = modes[i];
		if (!collapse_set_switch(modes[i])) {
			test_integrity("rust", FULL);
			/* In place, too, takes the mmap lock for write. */
			if (!strcmp(modes[i], "vma"))
				test_in_place("rust", false);
		} else {
			ksft_test_result_fail("rust: rust_switch: cannot select %s\n",
					      modes[i]);
			if (!strcmp(modes[i], "vma"))
				ksft_test_result_fail("rust: in place (vma): not run\n");
		}
	}
	switch_mode = "read";
	ksft_test_result(bad == EINVAL && !collapse_set_switch("read"),
			 "rust: rust_switch: refuses \"faults\" (%s), selects read, ptl and vma\n",
			 strerror(bad));
}

/*
 * A private page shared with a child after fork: the parent's collapse
 * copies it, and the child's copy must not change, including after the
 * parent writes to its new huge page.
 */
static void test_fork_child_view(const char *core)
{
	size_t len = PMD_SZ, i;
	char *p = small_pages(1);
	char *shadow = malloc(len);
	int pipefd[2], status = -1;
	long long ok = rust_stat("madvise", "succeed");
	bool moved;
	pid_t child;
	char c;

	if (!shadow || pipe(pipefd))
		ksft_exit_fail_perror("setup");
	for (i = 0; i < PAGES_PER_PMD; i++)
		fill_page(p, shadow, i, 77);
	allow_thp(p, len);
	child = fork();
	if (child < 0)
		ksft_exit_fail_perror("fork");
	if (child == 0) {
		close(pipefd[1]);
		if (read(pipefd[0], &c, 1) != 1)
			_exit(2);
		_exit(memcmp(p, shadow, len) ? 1 : 0);
	}
	close(pipefd[0]);
	collapse_require_core(core);
	i = madvise(p, len, MADV_COLLAPSE);
	moved = strcmp(core, "rust") || rust_stat("madvise", "succeed") == ok + 1;
	memset(p, 0xee, len);
	if (write(pipefd[1], "x", 1) != 1)
		ksft_exit_fail_perror("write");
	waitpid(child, &status, 0);
	ksft_test_result(!i && moved && WIFEXITED(status) && !WEXITSTATUS(status),
			 "%s: collapse of pages shared with a child leaves the child's copy intact (ret %zu, child status %d)\n",
			 core, i, status);
	close(pipefd[1]);
	free(shadow);
	munmap(p, len);
}

/* ---- Races ------------------------------------------------------------- */

#define RACE_PMDS 2
#define RACE_ROUNDS 32
/*
 * How long each switch under the page-table locks spins during a race, on
 * a test kernel (collapse_set_switch_delay()): longer than a racer's step,
 * so that racers under the VMA lock (faults, zaps, UFFDIO_MOVE) land in it.
 */
#define RACE_SWITCH_DELAY_US 2000
#define RACE_PAGES (RACE_PMDS * PAGES_PER_PMD)

/* CLOCK_MONOTONIC, in ns. */
static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * The pages the MADV_DONTNEED, MADV_FREE, MADV_PAGEOUT, UFFDIO_MOVE and pin
 * racers own: one in eight, never the last page of a PMD (the main thread
 * drops that one between rounds).
 */
static bool racer_owns(size_t pg)
{
	return pg % 8 == 3;
}

struct race {
	char *p;
	size_t len;
	atomic_int stop;
	atomic_long ops;
	atomic_long lost;	/* owned pages the racer found off the model */
	atomic_long errors;	/* racer calls that failed */
	uint64_t last[RACE_PAGES];
	/*
	 * The model of the racers that own pages (racer_owns()): the
	 * generation last written (mem_fill(); 0 for zeroes), and whether the
	 * page was MADV_FREE'd since, so that it may read as zeroes instead.
	 */
	uint64_t gen[RACE_PAGES];
	bool maybe_zero[RACE_PAGES];
	char *shadow;
	int id;
	int nice;		/* writer(): the nice level each writer takes */
	int fd;			/* UFFD_MOVE: the userfaultfd; PIN: gup_test */
	char *scratch;		/* UFFD_MOVE: the page moved out goes here */
	size_t scratch_len;	/* a page, or UFFD_MOVE_OUT's slots */
	/*
	 * PAGEOUT: MADV_PAGEOUTs that left the page swapped out; UFFD_MOVE:
	 * pages moved out and back; PIN: pins that read back the write made
	 * through the mapping; GUP_READ: pages read with their data.
	 */
	atomic_long hits;
	atomic_long busy;	/* UFFD_MOVE: moves out refused (EBUSY) */
	atomic_long filled;	/* UFFD_MOVE: holes a collapse filled */
	atomic_long incoherent;	/* PIN: pins that read other data */
};

/*
 * Writers own every page but the last of each PMD and store a counter in
 * its first word; the main thread splits the PMD mappings again by
 * dropping the last page of each PMD. No write may get lost: each writer
 * reads its page back before the next write, so that a collapse that put
 * an older copy in place shows at once, even if a later write would cover
 * it.
 */
static void *writer(void *arg)
{
	struct race *r = arg;
	/* Read once: the main thread sets the next writer's id in r->id. */
	int id = r->id;
	uint64_t v = 1;
	size_t pg;

	/* Linux's nice is per thread: @who 0 is this writer alone. */
	if (r->nice && setpriority(PRIO_PROCESS, 0, r->nice))
		atomic_fetch_add(&r->errors, 1);
	while (!atomic_load(&r->stop)) {
		for (pg = id; pg < RACE_PAGES; pg += 2) {
			uint64_t *word = (uint64_t *)(r->p + pg * PAGE_SZ);

			if (pg % PAGES_PER_PMD == PAGES_PER_PMD - 1)
				continue;
			if (r->last[pg] &&
			    __atomic_load_n(word, __ATOMIC_RELAXED) != r->last[pg])
				atomic_fetch_add(&r->lost, 1);
			__atomic_store_n(word, v, __ATOMIC_RELAXED);
			r->last[pg] = v;
		}
		v++;
		atomic_fetch_add(&r->ops, 1);
	}
	return NULL;
}

/*
 * Whether the racer-owned page @pg holds what the model allows: its last
 * generation, or zeroes if it was MADV_FREE'd and not written since. A
 * FREE'd page seen as zeroes was discarded, and must stay zeroes.
 */
static bool owned_page_ok(struct race *r, size_t pg)
{
	const char *page = r->p + pg * PAGE_SZ;

	if (mem_page_ok(page, pg, r->gen[pg]))
		return true;
	if (r->maybe_zero[pg] && mem_page_ok(page, pg, 0)) {
		r->gen[pg] = 0;
		r->maybe_zero[pg] = false;
		return true;
	}
	return false;
}

/*
 * Runs through the pages it owns, concurrently with the collapse loop:
 * checks each against the model, then MADV_DONTNEED (r->id 0: the page must
 * read as zeroes at once, and the read maps the zero page) or MADV_FREE
 * (r->id 1: old data or zeroes), and writes a new generation into about
 * half of them, so that the collapse meets absent, zero-page, lazily freed
 * and freshly written pages. The model stays exact: the racer alone
 * touches these pages.
 *
 * A page it has just faulted (or lazily freed) sits in its CPU's LRU batch,
 * with the batch's reference, until the batch fills or drains, and a
 * collapse that meets it there fails the PMD's isolation (page_lru,
 * page_count: upstream's checks) for a reason that is not the race. So the
 * racer drains its CPU's batches after each page (MADV_COLD of a page
 * outside the range calls lru_add_drain()): a collapse fails only where it
 * meets the page in the few microseconds before.
 */
static void *advice_racer(void *arg)
{
	struct race *r = arg;
	int advice = r->id ? MADV_FREE : MADV_DONTNEED;
	uint64_t rnd = 0x9e3779b97f4a7c15ULL, gen = 1;
	char *page, *cold = mmap(NULL, PAGE_SZ, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	size_t pg = 3;

	if (cold == MAP_FAILED) {
		atomic_fetch_add(&r->errors, 1);
		return NULL;
	}
	while (!atomic_load(&r->stop)) {
		page = r->p + pg * PAGE_SZ;
		if (!owned_page_ok(r, pg))
			atomic_fetch_add(&r->lost, 1);
		if (madvise(page, PAGE_SZ, advice))
			atomic_fetch_add(&r->errors, 1);
		if (advice == MADV_DONTNEED) {
			r->gen[pg] = 0;
			if (!mem_page_ok(page, pg, 0))
				atomic_fetch_add(&r->lost, 1);
		} else {
			r->maybe_zero[pg] = true;
		}
		rnd = rnd * 6364136223846793005ULL + 1442695040888963407ULL;
		if (rnd >> 63) {
			mem_fill(page, pg, ++gen);
			r->gen[pg] = gen;
			r->maybe_zero[pg] = false;
		}
		if (madvise(cold, PAGE_SZ, MADV_COLD))
			atomic_fetch_add(&r->errors, 1);
		pg = (pg + 8) % RACE_PAGES;
		atomic_fetch_add(&r->ops, 1);
	}
	munmap(cold, PAGE_SZ);
	return NULL;
}

/* Makes the whole range read-only and writable again, over and over. */
static void *mprotect_racer(void *arg)
{
	struct race *r = arg;

	while (!atomic_load(&r->stop)) {
		mprotect(r->p, r->len, PROT_READ);
		mprotect(r->p, r->len, PROT_READ | PROT_WRITE);
		atomic_fetch_add(&r->ops, 1);
	}
	return NULL;
}

/* Forks children that check their copy of the first PMD, over and over. */
static void *fork_racer(void *arg)
{
	struct race *r = arg;
	int status;
	pid_t pid;

	while (!atomic_load(&r->stop)) {
		pid = fork();
		if (pid == 0) {
			/* The child's view of the first PMD: the pattern. */
			_exit(memcmp(r->p, r->shadow, PMD_SZ - PAGE_SZ) ? 3 : 0);
		}
		if (pid > 0) {
			waitpid(pid, &status, 0);
			if (!WIFEXITED(status) || WEXITSTATUS(status))
				atomic_store(&r->stop, 2);
		}
		atomic_fetch_add(&r->ops, 1);
	}
	return NULL;
}

/* Registers the range with userfaultfd and unregisters it, over and over. */
static void *uffd_racer(void *arg)
{
	struct race *r = arg;
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = { .api = UFFD_API };

	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api))
		return NULL;
	while (!atomic_load(&r->stop)) {
		/* Pages are all present, so no missing fault is ever raised. */
		if (!uffd_register(uffd, r->p, r->len, true, false, false))
			uffd_unregister(uffd, r->p, r->len);
		atomic_fetch_add(&r->ops, 1);
	}
	close(uffd);
	return NULL;
}

/* Unmaps the second PMD and maps and fills it again, over and over. */
static void *munmap_racer(void *arg)
{
	struct race *r = arg;
	char *second = r->p + PMD_SZ;
	size_t i;

	while (!atomic_load(&r->stop)) {
		munmap(second, PMD_SZ);
		if (mmap(second, PMD_SZ, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
			break;
		madvise(second, PMD_SZ, MADV_HUGEPAGE);
		for (i = 0; i < PAGES_PER_PMD; i++)
			second[i * PAGE_SZ] = 1;
		atomic_fetch_add(&r->ops, 1);
	}
	return NULL;
}

/*
 * How many times the PAGEOUT, UFFD_MOVE and pin racers run through the pages
 * they own in one PMD before they go on to the other PMD: see next_owned().
 */
#define RACER_SWEEPS 8

/*
 * The page a PAGEOUT, UFFD_MOVE or pin racer visits after @pg: the next one
 * it owns in the same PMD, RACER_SWEEPS times over the PMD (*@sweep counts
 * them), then the first one it owns in the other PMD. Each of these racers
 * fails the collapse of the PMD it works in (a page paged out after the
 * swap-in, a hole, a pin), so it stays with one PMD for many collapses'
 * time: a round then meets it in one PMD only, and the other one collapses.
 * One pass over both PMDs in turn (as advice_racer() makes) would put it in
 * both PMDs of most rounds.
 */
static size_t next_owned(size_t pg, unsigned int *sweep)
{
	size_t first = pg - pg % PAGES_PER_PMD;

	if (pg + 8 < first + PAGES_PER_PMD)
		return pg + 8;
	if (++*sweep < RACER_SWEEPS)
		return first + 3;
	*sweep = 0;
	return (first + PAGES_PER_PMD) % RACE_PAGES + 3;
}

/* Where a PAGEOUT, UFFD_MOVE or UFFD_MOVE_OUT racer is in its pages. */
struct owned_walk {
	uint64_t rnd, gen;
	unsigned int sweep;
	size_t pg;		/* the page it works on */
};

#define OWNED_WALK_START { .rnd = 0x9e3779b97f4a7c15ULL, .gen = 1, .pg = 3 }

/*
 * The end of a racer's step on page @w->pg: writes a new generation into
 * about half of the pages (the model follows), goes on to the next page it
 * owns (next_owned()) and counts the step.
 */
static void owned_walk_next(struct race *r, struct owned_walk *w)
{
	w->rnd = w->rnd * 6364136223846793005ULL + 1442695040888963407ULL;
	if (w->rnd >> 63) {
		mem_fill(r->p + w->pg * PAGE_SZ, w->pg, ++w->gen);
		r->gen[w->pg] = w->gen;
	}
	w->pg = next_owned(w->pg, &w->sweep);
	atomic_fetch_add(&r->ops, 1);
}

/*
 * Runs through the pages it owns, concurrently with the collapse loop: checks
 * each against the model (a page paged out before is read back from swap),
 * pages it out with MADV_PAGEOUT, notes whether the page went to swap, and
 * writes a new generation into about half of them (a swap-in, then the
 * write). The collapse meets swapped-out pages, pages read back, and pages
 * paged out under its early copy.
 */
static void *pageout_racer(void *arg)
{
	struct race *r = arg;
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	struct owned_walk w = OWNED_WALK_START;
	size_t pg;
	char *page;

	if (pagemap < 0) {
		atomic_fetch_add(&r->errors, 1);
		return NULL;
	}
	while (!atomic_load(&r->stop)) {
		pg = w.pg;
		page = r->p + pg * PAGE_SZ;
		if (!owned_page_ok(r, pg))
			atomic_fetch_add(&r->lost, 1);
		if (madvise(page, PAGE_SZ, MADV_PAGEOUT))
			atomic_fetch_add(&r->errors, 1);
		else if (pagemap_get_entry(pagemap, page) & PM_SWAP)
			atomic_fetch_add(&r->hits, 1);
		owned_walk_next(r, &w);
	}
	close(pagemap);
	return NULL;
}

/* UFFDIO_MOVE of the page at @src to @dst; 0 or -errno. */
static int uffd_move_page(int uffd, char *dst, char *src)
{
	struct uffdio_move m = {
		.dst = (unsigned long)dst,
		.src = (unsigned long)src,
		.len = PAGE_SZ,
	};

	if (ioctl(uffd, UFFDIO_MOVE, &m))
		return -errno;
	return m.move == PAGE_SZ ? 0 : -EAGAIN;
}

/*
 * Moves owned page @pg back from the scratch page into the race range, where
 * it left a hole. The range is registered for missing faults, so no
 * collapse may fill that hole (max_ptes_none is 0 there): the move must find
 * it empty. Should it find the hole filled (EEXIST: a collapse put a huge
 * PMD there), the page must read zeroes; the data is still in the scratch
 * page, and is copied back so that the model stays exact. Returns false if
 * the page could not be put back: the hole stays, and a read of it would
 * wait for a fault handler forever.
 */
static bool move_back(struct race *r, size_t pg)
{
	char *page = r->p + pg * PAGE_SZ;
	int ret, tries;

	/* EAGAIN, EBUSY: the scratch page is being looked at; it passes. */
	for (tries = 0; tries < 1000; tries++) {
		ret = uffd_move_page(r->fd, page, r->scratch);
		if (ret != -EAGAIN && ret != -EBUSY)
			break;
		usleep(100);
	}
	if (ret == -EEXIST) {
		atomic_fetch_add(&r->filled, 1);
		if (!mem_page_ok(page, pg, 0))
			atomic_fetch_add(&r->lost, 1);
		memcpy(page, r->scratch, PAGE_SZ);
		if (madvise(r->scratch, PAGE_SZ, MADV_DONTNEED))
			atomic_fetch_add(&r->errors, 1);
		return true;
	}
	if (ret)
		return false;
	atomic_fetch_add(&r->hits, 1);
	return true;
}

/*
 * Runs through the pages it owns, concurrently with the collapse loop:
 * checks each against the model, moves it out of the race range into a
 * scratch page with UFFDIO_MOVE and back (the page itself moves, not its
 * data), and writes a new generation into about half of them. The collapse
 * meets holes (in a range registered for missing faults: it must refuse
 * them), pages on their way and pages moved under its early copy. A move out
 * may be refused (EBUSY: a large folio that did not split); the page then
 * stays where it is.
 */
static void *move_racer(void *arg)
{
	struct race *r = arg;
	struct owned_walk w = OWNED_WALK_START;
	size_t pg;
	char *page;
	int ret;

	while (!atomic_load(&r->stop)) {
		pg = w.pg;
		page = r->p + pg * PAGE_SZ;
		if (!owned_page_ok(r, pg))
			atomic_fetch_add(&r->lost, 1);
		ret = uffd_move_page(r->fd, r->scratch, page);
		if (ret == -EBUSY) {
			atomic_fetch_add(&r->busy, 1);
		} else if (ret) {
			atomic_fetch_add(&r->errors, 1);
		} else if (!move_back(r, pg)) {
			atomic_fetch_add(&r->errors, 1);
			break;
		}
		owned_walk_next(r, &w);
	}
	return NULL;
}

/* UFFD_MOVE_OUT's scratch slots: each move goes to a fresh one. */
#define MOVE_OUT_SLOTS 512

/* Where move_out_landed() goes back to when its read of a scratch slot faults. */
static __thread sigjmp_buf move_out_jmp;
/* Whether this thread is in move_out_landed()'s read: any other SIGBUS is fatal. */
static __thread atomic_int move_out_reading;

static void move_out_sigbus(int sig)
{
	if (!atomic_load(&move_out_reading)) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	siglongjmp(move_out_jmp, 1);
}

/*
 * Whether scratch slot @slot holds a page: read it, and take a SIGBUS (the
 * userfaultfd's UFFD_FEATURE_SIGBUS) for a hole rather than a wait.
 */
static bool move_out_landed(char *slot)
{
	bool landed = false;

	if (!sigsetjmp(move_out_jmp, 1)) {
		atomic_store(&move_out_reading, 1);
		(void)__atomic_load_n(slot, __ATOMIC_RELAXED);
		landed = true;
	}
	atomic_store(&move_out_reading, 0);
	return landed;
}

/*
 * Runs through the pages it owns, concurrently with the collapse loop:
 * checks each against the model, moves it out of the race range, which is
 * not registered with userfaultfd (so a collapse may switch it without
 * write-locking the VMA), into a fresh slot of the registered scratch area
 * with UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, copies its data back (a write
 * fault fills the hole), and writes a new generation into about half of
 * them. Nothing in the loop takes the mmap lock (the scratch area, armed,
 * would need it for MADV_DONTNEED: it is emptied once per MOVE_OUT_SLOTS
 * moves only), so the moves meet the collapse's switch rather than wait
 * for its mmap write lock. An owned page is never a hole: each move must
 * move it, its slot then holding its data. A move that took the entries of
 * a table a collapse had just replaced for a hole reports the page moved
 * and leaves the slot empty (counted in filled; the read of the slot takes
 * a SIGBUS instead of waiting for a handler). A move may be refused
 * (EBUSY: a large folio that did not split); the page then stays. The PMD
 * it works in seldom gets as far as a switch (the pages it faults in wait
 * in an LRU batch: page_lru); test_move_during_switch() aims one move at
 * each switch instead.
 */
static void *move_out_racer(void *arg)
{
	struct race *r = arg;
	struct sigaction sa = { .sa_handler = move_out_sigbus }, old;
	struct owned_walk w = OWNED_WALK_START;
	unsigned int next = 0;
	char *page, *slot;
	int ret;

	if (sigaction(SIGBUS, &sa, &old)) {
		atomic_fetch_add(&r->errors, 1);
		return NULL;
	}
	while (!atomic_load(&r->stop)) {
		struct uffdio_move m;

		if (next == MOVE_OUT_SLOTS) {
			if (madvise(r->scratch, r->scratch_len, MADV_DONTNEED))
				atomic_fetch_add(&r->errors, 1);
			next = 0;
		}
		slot = r->scratch + next++ * PAGE_SZ;
		page = r->p + w.pg * PAGE_SZ;
		if (!owned_page_ok(r, w.pg))
			atomic_fetch_add(&r->lost, 1);
		m = (struct uffdio_move){
			.dst = (unsigned long)slot,
			.src = (unsigned long)page,
			.len = PAGE_SZ,
			.mode = UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
		};
		ret = ioctl(r->fd, UFFDIO_MOVE, &m) ? -errno : 0;
		if (ret == -EBUSY) {
			atomic_fetch_add(&r->busy, 1);
		} else if (ret || m.move != PAGE_SZ) {
			atomic_fetch_add(&r->errors, 1);
		} else if (!move_out_landed(slot)) {
			/* Moved as a hole: the data stayed in the range. */
			atomic_fetch_add(&r->filled, 1);
		} else {
			memcpy(page, slot, PAGE_SZ);
			atomic_fetch_add(&r->hits, 1);
		}
		owned_walk_next(r, &w);
	}
	sigaction(SIGBUS, &old, NULL);
	return NULL;
}

/*
 * Runs through the pages it owns, concurrently with the collapse loop:
 * checks each against the model, pins it long-term through gup_test
 * (FOLL_WRITE | FOLL_LONGTERM), writes a new generation through the mapping,
 * reads the page back through the pin and unpins it. A collapse must refuse a
 * pinned page (EAGAIN): one that replaced it would leave the pin on the old
 * page, and the write through the mapping would not show through the pin.
 */
static void *pin_racer(void *arg)
{
	struct race *r = arg;
	unsigned int sweep = 0;
	char buf[PAGE_SZ];
	__u64 to = (unsigned long)buf;
	uint64_t gen = 1;
	size_t pg = 3;
	char *page;

	while (!atomic_load(&r->stop)) {
		page = r->p + pg * PAGE_SZ;
		if (!owned_page_ok(r, pg))
			atomic_fetch_add(&r->lost, 1);
		if (gup_pin(r->fd, page, true)) {
			atomic_fetch_add(&r->errors, 1);
		} else {
			mem_fill(page, pg, ++gen);
			r->gen[pg] = gen;
			if (ioctl(r->fd, PIN_LONGTERM_TEST_READ, &to))
				atomic_fetch_add(&r->errors, 1);
			else if (mem_page_ok(buf, pg, gen))
				atomic_fetch_add(&r->hits, 1);
			else
				atomic_fetch_add(&r->incoherent, 1);
			if (ioctl(r->fd, PIN_LONGTERM_TEST_STOP))
				atomic_fetch_add(&r->errors, 1);
		}
		pg = next_owned(pg, &sweep);
		atomic_fetch_add(&r->ops, 1);
	}
	return NULL;
}

/*
 * Reads the race range through GUP and a page-table walk under the mmap lock
 * for read, concurrently with the collapse loop, which (rust_switch "read")
 * switches the range holding that lock for read only, so that both may meet
 * a switch: process_vm_readv() of a page of this process
 * (get_user_pages_remote()), then mincore() of the whole range. Nobody
 * writes: every page but the last of each PMD (dropped between rounds) keeps
 * the data it was filled with, which each read must find, and stays
 * resident. A walker that took an entry the switch had taken out for a
 * hole, or a table it had replaced for the current one, would read zeroes
 * or report the page gone (counted lost).
 */
static void *gup_read_racer(void *arg)
{
	unsigned char vec[RACE_PAGES];
	struct race *r = arg;
	char buf[PAGE_SZ];
	size_t pg = 0, i;

	while (!atomic_load(&r->stop)) {
		struct iovec local = { .iov_base = buf, .iov_len = PAGE_SZ };
		struct iovec remote = {
			.iov_base = r->p + pg * PAGE_SZ, .iov_len = PAGE_SZ,
		};

		if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != PAGE_SZ)
			atomic_fetch_add(&r->errors, 1);
		else if (memcmp(buf, r->shadow + pg * PAGE_SZ, PAGE_SZ))
			atomic_fetch_add(&r->lost, 1);
		else
			atomic_fetch_add(&r->hits, 1);
		if (mincore(r->p, r->len, vec)) {
			atomic_fetch_add(&r->errors, 1);
		} else {
			for (i = 0; i < RACE_PAGES; i++)
				if (i % PAGES_PER_PMD != PAGES_PER_PMD - 1 &&
				    !(vec[i] & 1))
					atomic_fetch_add(&r->lost, 1);
		}
		/* A stride through every PMD, skipping the last page of each. */
		do
			pg = (pg + 37) % RACE_PAGES;
		while (pg % PAGES_PER_PMD == PAGES_PER_PMD - 1);
		atomic_fetch_add(&r->ops, 1);
	}
	return NULL;
}

enum racer {
	WRITERS, MPROTECT, FORK, UFFD, MUNMAP, DONTNEED, FREE, PAGEOUT,
	UFFD_MOVE, PIN, UFFD_MOVE_OUT, GUP_READ, NR_RACERS,
};

static const char *const racer_name[] = {
	"two faulting writers", "mprotect", "fork",
	"userfaultfd register", "munmap and mmap",
	"MADV_DONTNEED and rewrites of 1 page in 8",
	"MADV_FREE and rewrites of 1 page in 8",
	"MADV_PAGEOUT and rewrites of 1 page in 8",
	"UFFDIO_MOVE out and back of 1 page in 8",
	"long-term pins and writes of 1 page in 8",
	"UFFDIO_MOVE out of an unregistered range (source holes allowed) of 1 page in 8",
	"GUP reads (process_vm_readv) and mincore() under the mmap read lock",
};

static void *(*const racer_fn[])(void *) = {
	writer, mprotect_racer, fork_racer, uffd_racer, munmap_racer,
	advice_racer, advice_racer, pageout_racer, move_racer, pin_racer,
	move_out_racer, gup_read_racer,
};

/* Whether racer @k owns pages (racer_owns()) and keeps a model of them. */
static bool racer_models(enum racer k)
{
	return k == DONTNEED || k == FREE || k == PAGEOUT || k == UFFD_MOVE ||
	       k == PIN || k == UFFD_MOVE_OUT;
}

/*
 * Whether racer @k explains a failed collapse with errno @err, in a call
 * during which the Rust core counted @non_present more pte_non_present.
 */
static bool errno_expected(int err, enum racer k, long long non_present)
{
	/* A racer may remove or change the VMA: those say so by errno. */
	switch (k) {
	case MUNMAP:
		return err == ENOMEM || err == EINVAL || err == EAGAIN;
	case PAGEOUT:
		/*
		 * A page paged out after the collapse read the range's
		 * swapped-out pages back in, and before its switch, is a swap
		 * entry at the isolation: pte_non_present, EINVAL (upstream
		 * meets the same in its shorter window).
		 */
		if (err == EINVAL)
			return non_present > 0;
		return err == EAGAIN || err == EBUSY;
	case PIN:
		/* A pinned page: page_count. */
		return err == EAGAIN;
	case GUP_READ:
		/* A page referenced by a read in flight: page_count. */
		return err == EAGAIN;
	case UFFD_MOVE:
		/*
		 * The hole of a page moved out: exceed_none_pte (EBUSY); a
		 * page being moved, locked or with a reference: EAGAIN.
		 */
	case UFFD_MOVE_OUT:
	case UFFD:
	case MPROTECT:
	case FORK:
	case WRITERS:
	case DONTNEED:
	case FREE:
		return err == EAGAIN || err == EBUSY;
	default:
		return false;
	}
}

/*
 * How many of the RACE_ROUNDS rounds must collapse under racer @k: half,
 * but under fork and UFFDIO_MOVE.
 *
 * The fork racer's children exit one after the other. An exit's zap drops
 * each page's mapping at once and its reference only when its TLB batch is
 * freed, so an isolation that meets it finds more references than mappings
 * and fails the PMD (page_count, upstream's check). Debug and KCSAN boots
 * saw 18 to 26 rounds of 32 collapse (in the run that counted why the
 * others failed, all page_count): a floor of half fails about one run in
 * fifty; one in 4 still shows collapses going through between the
 * children.
 *
 * Under UFFDIO_MOVE, a hole in a range registered for missing faults
 * fails its PMD with exceed_none_pte, which ends the whole MADV_COLLAPSE
 * call (it is not among the failures after which the range loop goes on;
 * upstream's madvise_collapse() neither), so a round collapses only if the
 * first PMD had no hole at its scan and at its isolation. The racer works
 * in the first PMD about half the time (next_owned()), and while it does,
 * its page is out about half the time, at each of those two checks: some 5
 * rounds in 8 collapse, which a run of 32 falls short of half too often.
 * At least one in 8 must, which still shows collapses went through while
 * the racer ran.
 */
static int race_min_done(enum racer k)
{
	if (k == UFFD_MOVE)
		return RACE_ROUNDS / 8;
	return k == FORK ? RACE_ROUNDS / 4 : RACE_ROUNDS / 2;
}

/*
 * Splits the PMD mappings of the race range again for the next round, by
 * dropping the last page of each PMD: the next round then collapses
 * PTE-mapped THPs. Under the userfaultfd racers such a hole would fail every
 * round in which the range happens to be registered (EBUSY: a registered
 * range may not gain pages; under UFFDIO_MOVE it always is), so there the
 * THPs are split into base pages through debugfs instead, and every page
 * stays.
 */
static void race_split(struct race *r, enum racer k)
{
	struct region reg = {
		.type = MEM_ANON, .p = r->p, .len = r->len, .fd = -1,
	};
	int i;

	if (k == UFFD || k == UFFD_MOVE) {
		if (mem_split(&reg))
			ksft_exit_fail_msg("split_huge_pages: %s\n", strerror(errno));
		return;
	}
	for (i = 0; i < RACE_PMDS; i++)
		madvise(r->p + i * PMD_SZ + (PAGES_PER_PMD - 1) * PAGE_SZ,
			PAGE_SZ, MADV_DONTNEED);
}

/* A userfaultfd that offers UFFD_FEATURE_MOVE, or -1 with the reason in @why. */
static int uffd_with_move(char *why, size_t len, __u64 more)
{
	struct uffdio_api api = { .api = UFFD_API };
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
		snprintf(why, len, "no userfaultfd: %s", strerror(errno));
		if (uffd >= 0)
			close(uffd);
		return -1;
	}
	close(uffd);
	if ((api.features & (UFFD_FEATURE_MOVE | more)) != (UFFD_FEATURE_MOVE | more)) {
		snprintf(why, len,
			 "UFFDIO_API does not offer UFFD_FEATURE_MOVE and 0x%llx (features 0x%llx)",
			 (unsigned long long)more, (unsigned long long)api.features);
		return -1;
	}
	/* The features are chosen once per userfaultfd. */
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	api = (struct uffdio_api){
		.api = UFFD_API, .features = UFFD_FEATURE_MOVE | more,
	};
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
		snprintf(why, len, "UFFDIO_API with UFFD_FEATURE_MOVE: %s", strerror(errno));
		if (uffd >= 0)
			close(uffd);
		return -1;
	}
	return uffd;
}

/*
 * What racer @k needs before the race range exists: swap (PAGEOUT), a
 * userfaultfd that can move pages (UFFD_MOVE, in r->fd), gup_test (PIN, in
 * r->fd). Returns false, with the reason in @why, if the machine lacks it.
 */
static bool race_can_run(enum racer k, struct race *r, char *why, size_t len)
{
	switch (k) {
	case PAGEOUT:
		if (!swap_enabled()) {
			snprintf(why, len, "no swap device in /proc/swaps");
			return false;
		}
		return true;
	case UFFD_MOVE:
		r->fd = uffd_with_move(why, len, 0);
		return r->fd >= 0;
	case UFFD_MOVE_OUT:
		/* A hole moved out must read as SIGBUS, not wait for a handler. */
		r->fd = uffd_with_move(why, len, UFFD_FEATURE_SIGBUS);
		return r->fd >= 0;
	case PIN:
		r->fd = open("/sys/kernel/debug/gup_test", O_RDWR);
		if (r->fd < 0) {
			snprintf(why, len, "no /sys/kernel/debug/gup_test (CONFIG_GUP_TEST): %s",
				 strerror(errno));
			return false;
		}
		return true;
	default:
		return true;
	}
}

/*
 * For UFFD_MOVE (@range) and UFFD_MOVE_OUT: registers the race range if
 * @range and a scratch page for missing faults with r->fd (UFFDIO_MOVE wants
 * its destination registered with the same userfaultfd, and UFFD_MOVE's page
 * goes both ways).
 */
static void race_uffd_setup(struct race *r, bool range)
{
	r->scratch_len = range ? PAGE_SZ : MOVE_OUT_SLOTS * PAGE_SZ;
	r->scratch = mmap(NULL, r->scratch_len, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r->scratch == MAP_FAILED)
		ksft_exit_fail_perror("mmap(scratch)");
	if ((range && uffd_register(r->fd, r->p, r->len, true, false, false)) ||
	    uffd_register(r->fd, r->scratch, r->scratch_len, true, false, false))
		ksft_exit_fail_msg("UFFDIO_REGISTER of the race range: %s\n",
				   strerror(errno));
}

/* Racer @k's own figures, and whether they are right, into @out. */
static bool racer_figures(enum racer k, struct race *r, char *out, size_t len)
{
	long hits = atomic_load(&r->hits);

	out[0] = 0;
	switch (k) {
	case PAGEOUT:
		/* Pages went to swap: the race met swapped-out pages. */
		snprintf(out, len, "; %ld pages left in swap by MADV_PAGEOUT", hits);
		return hits > 0;
	case UFFD_MOVE:
		snprintf(out, len,
			 "; %ld pages moved out and back, %ld moves out refused (EBUSY), %ld holes filled by a collapse",
			 hits, atomic_load(&r->busy), atomic_load(&r->filled));
		return hits > 0 && !atomic_load(&r->filled);
	case UFFD_MOVE_OUT:
		snprintf(out, len,
			 "; %ld pages moved out and copied back, %ld moves out refused (EBUSY), %ld pages moved as holes",
			 hits, atomic_load(&r->busy), atomic_load(&r->filled));
		return hits > 0 && !atomic_load(&r->filled);
	case PIN:
		snprintf(out, len,
			 "; %ld pins read back the write made through the mapping, %ld read other data",
			 hits, atomic_load(&r->incoherent));
		return hits > 0 && !atomic_load(&r->incoherent);
	case GUP_READ:
		snprintf(out, len, "; %ld pages read through GUP with their data",
			 hits);
		return hits > 0;
	default:
		return true;
	}
}

/*
 * MADV_COLLAPSE of two PMDs in RACE_ROUNDS rounds while racer @k runs the
 * whole time. A round counts as collapsed when the Rust core collapsed at
 * least one PMD in it (with the munmap racer the call as a whole fails with
 * ENOMEM whenever the second PMD is a hole, though the first one, which is
 * never unmapped, was collapsed); at least half the rounds must be (but
 * see race_min_done()). Every page must hold its last write (or, for the
 * racers that own pages, what their model allows), errors must be the ones
 * the racer explains, and each collapse must have been copied early, copied
 * under the lock or mapped in place.
 */
static void test_race(enum racer k)
{
	static struct rust_stats snap, first, last;
	static struct race r;
	long long ok = rust_stat("madvise", "succeed");
	void *(*fn)(void *) = racer_fn[k];
	int nth = k == WRITERS ? 2 : 1, i, n, bad = 0, done = 0, calls_ok = 0;
	bool model = racer_models(k), figures_ok;
	long long start = now_ns();
	char why[160], figures[192];
	size_t pg, lost = 0;
	struct rust_paths d;
	unsigned int delay_us;
	pthread_t th[2];
	char *shadow;

	memset(&r, 0, sizeof(r));
	r.fd = -1;
	if (!race_can_run(k, &r, why, sizeof(why))) {
		ksft_test_result_skip("rust: collapse racing with %s: %s\n",
				      racer_name[k], why);
		return;
	}
	r.len = RACE_PMDS * PMD_SZ;
	r.p = small_pages(RACE_PMDS);
	shadow = malloc(r.len);
	if (!shadow)
		ksft_exit_fail_perror("malloc");
	for (pg = 0; pg < RACE_PAGES; pg++)
		fill_page(r.p, shadow, pg, 9);
	for (pg = 0; model && pg < RACE_PAGES; pg++) {
		if (racer_owns(pg)) {
			mem_fill(r.p + pg * PAGE_SZ, pg, 1);
			r.gen[pg] = 1;
		}
	}
	r.shadow = shadow;
	r.id = k == FREE;
	allow_thp(r.p, r.len);
	if (k == UFFD_MOVE || k == UFFD_MOVE_OUT)
		race_uffd_setup(&r, k == UFFD_MOVE);
	collapse_require_core("rust");
	/* Racers under the VMA lock land in the switch (test kernels). */
	delay_us = collapse_set_switch_delay(RACE_SWITCH_DELAY_US) ? 0 :
		   RACE_SWITCH_DELAY_US;

	for (i = 0; i < nth; i++) {
		if (k == WRITERS)
			r.id = i;
		if (pthread_create(&th[i], NULL, fn, &r))
			ksft_exit_fail_perror("pthread_create");
		/* Let the thread read its id. */
		while (k == WRITERS && atomic_load(&r.ops) == 0 && i == 0)
			usleep(1000);
	}
	rust_stats_read("madvise", &first);
	for (n = 0; n < RACE_ROUNDS; n++) {
		long long before = rust_stat("madvise", "succeed");
		long long np = rust_stat("madvise", "pte_non_present");

		rust_stats_read("madvise", &snap);
		if (madvise(r.p, r.len, MADV_COLLAPSE)) {
			int err = errno;

			np = rust_stat("madvise", "pte_non_present") - np;
			if (!errno_expected(err, k, np)) {
				ksft_print_msg("round %d: %s\n", n, strerror(err));
				stats_print_moved("madvise", &snap);
				bad++;
			}
		} else {
			calls_ok++;
		}
		done += rust_stat("madvise", "succeed") > before;
		race_split(&r, k);
	}
	if (atomic_load(&r.stop) == 2)
		bad++;
	atomic_store(&r.stop, 1);
	for (i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	if (delay_us)
		collapse_set_switch_delay(0);
	/*
	 * Unregisters the range (UFFD_MOVE): a page the racer could not put
	 * back reads zeroes now, and counts as lost, rather than waiting for a
	 * fault handler forever.
	 */
	if (r.fd >= 0)
		close(r.fd);

	for (pg = 0; pg < RACE_PAGES; pg++) {
		char *page = r.p + pg * PAGE_SZ;

		if (pg % PAGES_PER_PMD == PAGES_PER_PMD - 1)
			continue;
		if (k == WRITERS)
			lost += *(uint64_t *)page != r.last[pg];
		else if (model && racer_owns(pg))
			lost += !owned_page_ok(&r, pg);
		/* The second PMD may have been unmapped and mapped again. */
		else if (k != MUNMAP || pg < PAGES_PER_PMD)
			lost += !!memcmp(page, shadow + pg * PAGE_SZ, PAGE_SZ);
	}
	rust_stats_read("madvise", &last);
	/* What the Rust core met during the race: why rounds failed. */
	stats_print_moved("madvise", &first);
	d = rust_paths_delta(&first, &last);
	figures_ok = racer_figures(k, &r, figures, sizeof(figures));
	/*
	 * Each collapse copied either early or under the lock (or, where a
	 * split through debugfs left a PMD-sized folio PTE-mapped, mapped it
	 * in place); writers hammering every page make the early copies'
	 * pages change under them, which a retry of the early copy or the
	 * switch must see and copy again (and so many that an early copy
	 * retries). mprotect and MADV_FREE invalidate the range during
	 * nearly every early copy: in RACE_ROUNDS rounds the core must have
	 * started one over (a new watch, a second copy) at least once.
	 */
	ksft_test_result(!bad && !lost && !atomic_load(&r.lost) &&
			 !atomic_load(&r.errors) && done >= race_min_done(k) &&
			 atomic_load(&r.ops) > 0 && figures_ok &&
			 rust_stat("madvise", "succeed") > ok &&
			 rust_paths_add_up(&d) &&
			 (k != WRITERS || d.recopied + d.again + d.locked * PAGES_PER_PMD > 0) &&
			 (k != WRITERS || !d.early || d.retries > 0) &&
			 ((k != MPROTECT && k != FREE) || d.restarts > 0) &&
			 (k != UFFD_MOVE_OUT || d.switched > 0) &&
			 (k != GUP_READ || d.read > 0),
			 "rust: collapse racing with %s: %d/%d rounds collapsed (at least %d wanted; %lld PMDs: %lld copied early, in %lld retries %lld pages of them again early and %lld under the lock; %lld early copies started over; %lld copied locked; %lld in place; %lld switched under the page-table locks, %lld of them under the mmap read lock, %lld fell back; switch widened by %u us), %d calls returned 0, %d unexpected errors, %zu pages lost at the end, %ld seen off the model (or off their data) during the race, %ld racer ops (%ld failed)%s, %.1f s\n",
			 racer_name[k], done, RACE_ROUNDS, race_min_done(k),
			 d.succeed, d.early, d.retries, d.again, d.recopied, d.restarts,
			 d.locked, d.in_place, d.switched, d.read, d.fallbacks, delay_us,
			 calls_ok, bad,
			 lost, atomic_load(&r.lost),
			 atomic_load(&r.ops), atomic_load(&r.errors), figures,
			 (now_ns() - start) / 1e9);
	free(shadow);
	munmap(r.p, r.len);
	if (r.scratch)
		munmap(r.scratch, r.scratch_len);
}

struct mover {
	char *a, *b;
	atomic_int stop;
	atomic_long asked;	/* moves the main thread asked for */
	atomic_long moves;	/* moves done */
	atomic_long delay_us;	/* how long to wait before the move asked for */
	atomic_llong start_ns;	/* when the last move called mremap() */
	atomic_llong moved_ns;	/* when it returned */
	atomic_int at_b;
	atomic_int err;		/* errno of the mremap() that stopped the mover */
};

/*
 * Moves one PMD of memory between its two places, once for each move the
 * main thread asks for, after the delay it asks for.
 */
static void *mremap_racer(void *arg)
{
	struct mover *m = arg;

	while (!atomic_load(&m->stop)) {
		char *from, *to;

		if (atomic_load(&m->moves) == atomic_load(&m->asked)) {
			usleep(100);
			continue;
		}
		usleep(atomic_load(&m->delay_us));
		from = atomic_load(&m->at_b) ? m->b : m->a;
		to = from == m->a ? m->b : m->a;
		atomic_store(&m->start_ns, now_ns());
		if (mremap(from, PMD_SZ, PMD_SZ, MREMAP_MAYMOVE | MREMAP_FIXED,
			   to) == MAP_FAILED) {
			atomic_store(&m->err, errno);
			break;
		}
		atomic_store(&m->moved_ns, now_ns());
		atomic_store(&m->at_b, to == m->b);
		atomic_fetch_add(&m->moves, 1);
	}
	return NULL;
}

#define MREMAP_ROUNDS 48

/*
 * mremap moves the range while collapses run on it. Each round splits the
 * PMD mapping (drops the last page), asks the mover for one move and
 * collapses the range where it is. A mover moving as fast as it can would
 * leave almost no call to complete, and one that moves rarely would hardly
 * race; so each move waits a delay spread over [0, 4) times the length of
 * one collapse (measured first, then the mean of the rounds' calls so far:
 * the first call is the slowest, by far on a kernel without KASAN): about a
 * quarter of the moves start while a call runs, and the rest after it, so
 * that at least half the rounds must collapse. A move that starts during a
 * call waits for the mmap lock the call holds, or lands where the call
 * dropped it (the call then fails); at least one move must start during a
 * call.
 */
static void test_race_mremap(void)
{
	static struct mover m;
	char *shadow = malloc(PMD_SZ);
	long long ok = rust_stat("madvise", "succeed"), t0, t1, call_ns;
	long long first_ns, calls_ns = 0;
	int n, bad = 0, done = 0, started = 0, during = 0, last_err = 0;
	pthread_t th;
	size_t pg;
	char *cur;

	memset(&m, 0, sizeof(m));
	m.a = small_pages(1);
	m.b = mmap_pmd_aligned(1, PROT_NONE);
	if (!m.b || !shadow)
		ksft_exit_fail_perror("setup");
	for (pg = 0; pg < PAGES_PER_PMD; pg++)
		fill_page(m.a, shadow, pg, 11);
	allow_thp(m.a, PMD_SZ);
	collapse_require_core("rust");
	t0 = now_ns();
	bad += madvise(m.a, PMD_SZ, MADV_COLLAPSE) && errno != EAGAIN;
	first_ns = now_ns() - t0;
	call_ns = first_ns;
	/* The last page is dropped before every round: zeroes from now on. */
	memset(shadow + PMD_SZ - PAGE_SZ, 0, PAGE_SZ);
	if (pthread_create(&th, NULL, mremap_racer, &m))
		ksft_exit_fail_perror("pthread_create");
	for (n = 0; n < MREMAP_ROUNDS && !atomic_load(&m.err); n++) {
		long long before = rust_stat("madvise", "succeed"), moved;

		cur = atomic_load(&m.at_b) ? m.b : m.a;
		madvise(cur + PMD_SZ - PAGE_SZ, PAGE_SZ, MADV_DONTNEED);
		atomic_store(&m.delay_us, (n % 16) * call_ns / 4 / 1000);
		atomic_fetch_add(&m.asked, 1);
		t0 = now_ns();
		/* The range may have moved away already: ENOMEM then. */
		if (madvise(cur, PMD_SZ, MADV_COLLAPSE)) {
			last_err = errno;
			bad += errno != ENOMEM && errno != EAGAIN && errno != EINVAL;
		}
		t1 = now_ns();
		calls_ns += t1 - t0;
		call_ns = calls_ns / (n + 1);
		done += rust_stat("madvise", "succeed") > before;
		while (atomic_load(&m.moves) < atomic_load(&m.asked) &&
		       !atomic_load(&m.err))
			usleep(100);
		moved = atomic_load(&m.start_ns);
		started += moved > t0 && moved < t1;
		moved = atomic_load(&m.moved_ns);
		during += moved > t0 && moved < t1;
	}
	atomic_store(&m.stop, 1);
	pthread_join(th, NULL);
	cur = atomic_load(&m.at_b) ? m.b : m.a;
	ksft_test_result(!bad && !atomic_load(&m.err) && 2 * done >= MREMAP_ROUNDS &&
			 atomic_load(&m.moves) == MREMAP_ROUNDS && started > 0 &&
			 !memcmp(cur, shadow, PMD_SZ) &&
			 rust_stat("madvise", "succeed") > ok,
			 "rust: collapse racing with mremap keeps every byte (%d/%d rounds collapsed; %d moves started and %d ended during a call of %lld us (the first %lld us); last error %s; %ld moves, mover error %s)\n",
			 done, n, started, during, call_ns / 1000, first_ns / 1000,
			 strerror(last_err),
			 atomic_load(&m.moves), strerror(atomic_load(&m.err)));
	munmap(m.a, PMD_SZ);
	munmap(m.b, PMD_SZ);
	free(shadow);
}

#define ONCE_ROUNDS 24
#define ONCE_PAGE 5		/* the page MADV_FREE'd, once a round */
#define ONCE_STEP_US 400	/* round n frees it n * ONCE_STEP_US in */

/*
 * One madvise() of one page, after a delay: free_one_page(). With a @mark,
 * the thread first writes it into every byte of the page (faulting the page
 * in if it was not mapped), and advises @then_us after the write.
 */
struct one_free {
	char *page;
	int advice;		/* MADV_FREE or MADV_DONTNEED */
	long delay_us;
	int mark;		/* 0, or the byte to write first */
	char *cold;		/* with @mark: a page outside the range */
	long then_us;		/* with @mark: from the write to madvise() */
	long long written_ns;	/* with @mark: when the page was written */
	long long at_ns;	/* when madvise() was called */
	int err;		/* its errno, or 0 */
	long long t0, t1;	/* when the collapse was called, and returned */
};

static void *free_one_page(void *arg)
{
	struct one_free *f = arg;

	usleep(f->delay_us);
	if (f->mark) {
		memset(f->page, f->mark, PAGE_SZ);
		f->written_ns = now_ns();
		/*
		 * The page just faulted sits in this CPU's LRU batch, with
		 * the batch's reference, and an early copy skips a page with
		 * references its mappings do not explain: MADV_COLD of a page
		 * outside the range drains the batch (lru_add_drain()).
		 */
		if (madvise(f->cold, PAGE_SZ, MADV_COLD))
			f->err = errno;
		usleep(f->then_us);
	}
	f->at_ns = now_ns();
	if (madvise(f->page, PAGE_SZ, f->advice))
		f->err = errno;
	return NULL;
}

/*
 * MADV_COLLAPSE of the PMD at @p, tried again on EAGAIN up to three more
 * times, while @f's racer (free_one_page()) runs; @s0 and @s1 get the Rust
 * core's madvise stats before and after, @f the times of the call. Returns
 * the call's errno, or 0.
 */
static int collapse_racing_one(char *p, struct one_free *f,
			       struct rust_stats *s0, struct rust_stats *s1)
{
	int ret, tries, err;
	pthread_t th;

	rust_stats_read("madvise", s0);
	if (pthread_create(&th, NULL, free_one_page, f))
		ksft_exit_fail_perror("pthread_create");
	f->t0 = now_ns();
	ret = madvise(p, PMD_SZ, MADV_COLLAPSE);
	for (tries = 1; ret && errno == EAGAIN && tries < 4; tries++)
		ret = madvise(p, PMD_SZ, MADV_COLLAPSE);
	err = ret ? errno : 0;
	f->t1 = now_ns();
	pthread_join(th, NULL);
	rust_stats_read("madvise", s1);
	return err;
}

#define SWITCH_MOVE_ROUNDS 48
#define SWITCH_MOVE_PAGE 77	/* the page moved out, once a round */
#define SWITCH_MOVE_DELAY_US 8000	/* the switch, widened (test kernels) */
#define SWITCH_MOVE_WAITED_NS 4000000LL	/* a move this long waited for it */

/* One UFFDIO_MOVE out of the range, after a delay: move_during_switch(). */
struct switch_move {
	char *page, *slot;
	int fd;
	long delay_us;
	int err;		/* the move's errno, or 0 */
	bool moved;		/* it reported the page moved */
	bool landed;		/* and the slot then held a page */
	long long took_ns;	/* the first UFFDIO_MOVE call */
};

static void *move_during_switch(void *arg)
{
	struct sigaction sa = { .sa_handler = move_out_sigbus }, old;
	struct switch_move *m = arg;
	struct uffdio_move mv = {
		.dst = (unsigned long)m->slot,
		.src = (unsigned long)m->page,
		.len = PAGE_SZ,
		.mode = UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
	};
	long long t0;
	int tries;

	usleep(m->delay_us);
	/* EBUSY: a large folio that did not split yet (a PMD just split). */
	for (tries = 0; tries < 100; tries++) {
		t0 = now_ns();
		m->err = ioctl(m->fd, UFFDIO_MOVE, &mv) ? errno : 0;
		if (!tries)
			m->took_ns = now_ns() - t0;
		if (m->err != EBUSY && m->err != EAGAIN)
			break;
		mv.move = 0;
		usleep(100);
	}
	m->moved = !m->err && mv.move == PAGE_SZ;
	if (m->moved && !sigaction(SIGBUS, &sa, &old)) {
		m->landed = move_out_landed(m->slot);
		sigaction(SIGBUS, &old, NULL);
	}
	return NULL;
}

/*
 * UFFDIO_MOVE of a page out of a range (not registered with userfaultfd)
 * while the Rust core switches that range under the page-table locks
 * (patch 0014). Each of SWITCH_MOVE_ROUNDS rounds faults one PMD of small
 * pages and collapses it while a thread moves page SWITCH_MOVE_PAGE to a
 * registered scratch page, once, with UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES, at a
 * delay that sweeps the time a collapse takes (measured first, without a
 * move: the host's speed varies); on a test kernel
 * each switch spins SWITCH_MOVE_DELAY_US with the range's entries taken
 * out, so that some moves wait for it (they take that long). The page is
 * never a hole: every move must move it, its data in the scratch page, and
 * the range read zeroes there and the data elsewhere. Before patch 0014 a
 * move that waited for the switch found the entries of the table the
 * switch had replaced, none, and took them for a hole: reported moved,
 * with nothing in the scratch page (the data stayed in the huge page).
 */
static void test_move_during_switch(void)
{
	static const char zero[PAGE_SZ];
	static struct rust_stats s0, s1;
	char *p = small_pages(1), *shadow = malloc(PMD_SZ), *scratch;
	int n, fd, holes = 0, errs = 0, waited = 0, lost = 0, unexpected = 0;
	long long start = now_ns(), switched = 0, t0;
	long step_us;
	bool delay;
	size_t pg;
	char why[160];

	if (!shadow)
		ksft_exit_fail_perror("malloc");
	fd = uffd_with_move(why, sizeof(why), UFFD_FEATURE_SIGBUS);
	if (fd < 0) {
		ksft_test_result_skip("rust: UFFDIO_MOVE out of a range during its switch: %s\n",
				      why);
		goto out;
	}
	scratch = mmap(NULL, PAGE_SZ, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (scratch == MAP_FAILED)
		ksft_exit_fail_perror("mmap(scratch)");
	if (uffd_register(fd, scratch, PAGE_SZ, true, false, false))
		ksft_exit_fail_msg("UFFDIO_REGISTER: %s\n", strerror(errno));
	allow_thp(p, PMD_SZ);
	collapse_require_core("rust");
	delay = !collapse_set_switch_delay(SWITCH_MOVE_DELAY_US);
	/* How long a collapse takes, the switch widened: the sweep's span. */
	for (pg = 0; pg < PAGES_PER_PMD; pg++)
		fill_page(p, shadow, pg, 299);
	t0 = now_ns();
	madvise(p, PMD_SZ, MADV_COLLAPSE);
	step_us = (now_ns() - t0) / 1000 / SWITCH_MOVE_ROUNDS + 1;
	for (n = 0; n < SWITCH_MOVE_ROUNDS; n++) {
		struct switch_move m = {
			.page = p + SWITCH_MOVE_PAGE * PAGE_SZ, .slot = scratch,
			.fd = fd, .delay_us = n * step_us,
		};
		struct rust_paths d;
		pthread_t th;
		int ret, err;

		madvise(p, PMD_SZ, MADV_DONTNEED);
		madvise(scratch, PAGE_SZ, MADV_DONTNEED);
		for (pg = 0; pg < PAGES_PER_PMD; pg++)
			fill_page(p, shadow, pg, 300 + n);
		rust_stats_read("madvise", &s0);
		if (pthread_create(&th, NULL, move_during_switch, &m))
			ksft_exit_fail_perror("pthread_create");
		ret = madvise(p, PMD_SZ, MADV_COLLAPSE);
		err = ret ? errno : 0;
		if (ret && err != EAGAIN && err != EBUSY)
			unexpected++;
		pthread_join(th, NULL);
		rust_stats_read("madvise", &s1);
		d = rust_paths_delta(&s0, &s1);
		switched += d.switched;
		waited += m.took_ns > SWITCH_MOVE_WAITED_NS;
		holes += m.moved && !m.landed;
		errs += !m.moved;
		if (m.landed && memcmp(scratch, shadow + SWITCH_MOVE_PAGE * PAGE_SZ, PAGE_SZ))
			lost++;
		for (pg = 0; pg < PAGES_PER_PMD; pg++) {
			const char *want = pg == SWITCH_MOVE_PAGE && m.moved ? zero :
					   shadow + pg * PAGE_SZ;

			/* A hole left behind reads zeroes: lost if not. */
			if (memcmp(p + pg * PAGE_SZ, want, PAGE_SZ))
				lost++;
		}
		if (m.moved != m.landed || !m.moved || m.took_ns > SWITCH_MOVE_WAITED_NS)
			ksft_print_msg("round %d: move %ld us in: %s, %s, %.1f ms; collapse %s\n",
				       n, m.delay_us, m.err ? strerror(m.err) : "done",
				       !m.moved ? "not moved" :
				       m.landed ? "landed" : "moved as a hole",
				       m.took_ns / 1e6, ret ? strerror(err) : "done");
	}
	if (delay)
		collapse_set_switch_delay(0);
	/*
	 * Without the test kernel's delay no move need meet a switch: the
	 * rounds then only show that moves and collapses of one range agree.
	 */
	ksft_test_result(!holes && !errs && !lost && !unexpected && switched > 0 &&
			 (!delay || waited > 0),
			 "rust: UFFDIO_MOVE out of a range during its switch under the page-table locks: %d rounds %ld us apart, %lld switched, %d moves waited for a switch (switch widened by %d us), %d moved as holes, %d failed, %d pages lost, %d unexpected errors, %.1f s\n",
			 SWITCH_MOVE_ROUNDS, step_us, switched, waited,
			 delay ? SWITCH_MOVE_DELAY_US : 0, holes, errs, lost,
			 unexpected, (now_ns() - start) / 1e9);
	munmap(scratch, PAGE_SZ);
	close(fd);
out:
	free(shadow);
	munmap(p, PMD_SZ);
}

#define READERS_ROUNDS 16	/* per rust_switch mode */
#define READERS_DELAY_US 10000	/* the switch, widened (test kernels) */
/*
 * A reader that waited this long was held up by the switch under the mmap
 * read lock ("read"): under TCG a vCPU spinning in the switch slows the
 * other (up to 9.6 ms seen), hence no less. Under the write lock ("ptl"),
 * a reader waits the whole spin less the time between its mincore()'s
 * up_read() and its next clock read, in which the writer may take the lock
 * and start spinning: a vCPU of a busy host lags there now and then (one
 * round in 48 came under 10 ms), hence a tenth less.
 */
#define READERS_BLOCKED_NS (READERS_DELAY_US * 1000LL)
#define READERS_HELD_NS (READERS_DELAY_US * 900LL)
#define READERS_NAME "rust: mmap-lock readers during the switch"

struct gap_reader {
	char *other;		/* a page of another mapping, for mincore() */
	int cpu;		/* the CPU it runs on */
	atomic_int stop;
	atomic_llong longest;	/* the longest time between two returns */
	atomic_long calls;
	atomic_long errors;
};

/*
 * Calls mincore() on a page outside the range collapsed, back to back, and
 * keeps the longest time between two of its returns since the main thread
 * reset it. mincore() takes the mmap lock for read: a collapse that holds
 * it for write across its switch, widened, shows as a wait that long.
 */
static void *gap_reader(void *arg)
{
	struct gap_reader *g = arg;
	long long last, t;
	unsigned char vec;
	cpu_set_t cpus;

	/* Not on the CPU that spins in the switch, preemption off. */
	CPU_ZERO(&cpus);
	CPU_SET(g->cpu, &cpus);
	if (sched_setaffinity(0, sizeof(cpus), &cpus))
		atomic_fetch_add(&g->errors, 1);
	last = now_ns();
	while (!atomic_load(&g->stop)) {
		if (mincore(g->other, PAGE_SZ, &vec))
			atomic_fetch_add(&g->errors, 1);
		t = now_ns();
		if (t - last > atomic_load(&g->longest))
			atomic_store(&g->longest, t - last);
		last = t;
		atomic_fetch_add(&g->calls, 1);
	}
	return NULL;
}

/*
 * The process's mmap-lock readers go on while the Rust core switches a range
 * (rust_switch "read"): a thread calls mincore() elsewhere, back to back,
 * while READERS_ROUNDS collapses of one PMD of small pages each spin
 * READERS_DELAY_US inside their switch (a test kernel's hook). With "read"
 * the reader is hardly ever held up that long (a quarter of the rounds at
 * most, for the host's hiccups), and every switch went under the mmap read
 * lock (switched_read); with "ptl", the same rounds under the mmap write
 * lock, every switch holds it up nearly as long (which shows that the
 * figure measures the lock). Every byte of the range is kept in both. The
 * collapsing thread and the reader each run on a CPU of their own (the first
 * two this thread may use): the spin, with preemption off, does not keep the
 * reader off its CPU.
 */
static void test_readers_during_switch(void)
{
	static const char *const modes[] = { "read", "ptl" };
	static const char round_fmt[] =
		"%s round %u: %s, switched %lld (%lld under the read lock), fell back %lld\n";
	static struct rust_stats s0, s1;
	char *p = small_pages(1), *shadow = malloc(PMD_SZ);
	int counted[2] = { 0, 0 }, blocked[2] = { 0, 0 };
	long long start = now_ns(), reads = 0, longest[2] = { 0, 0 };
	const long long held[2] = { READERS_BLOCKED_NS, READERS_HELD_NS };
	long long shortest = -1;	/* the shortest wait under "ptl" */
	int lost = 0, unexpected = 0;
	cpu_set_t cpus, mask;
	struct gap_reader g;
	unsigned int m, n;
	int cpu, mine[2];
	pthread_t th;
	size_t pg;

	if (!shadow)
		ksft_exit_fail_perror("malloc");
	memset(&g, 0, sizeof(g));
	g.other = mmap(NULL, PAGE_SZ, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g.other == MAP_FAILED)
		ksft_exit_fail_perror("mmap");
	allow_thp(p, PMD_SZ);
	collapse_require_core("rust");
	if (sched_getaffinity(0, sizeof(mask), &mask))
		ksft_exit_fail_perror("sched_getaffinity");
	for (cpu = 0, n = 0; cpu < CPU_SETSIZE && n < 2; cpu++)
		if (CPU_ISSET(cpu, &mask))
			mine[n++] = cpu;
	if (n < 2) {
		ksft_test_result_skip("%s: one CPU (the reader needs its own)\n",
				      READERS_NAME);
		goto out;
	}
	if (collapse_set_switch_delay(READERS_DELAY_US)) {
		ksft_test_result_skip("%s: no switch delay hook (not a test kernel)\n",
				      READERS_NAME);
		goto out;
	}
	g.cpu = mine[1];
	CPU_ZERO(&cpus);
	CPU_SET(mine[0], &cpus);
	if (sched_setaffinity(0, sizeof(cpus), &cpus))
		ksft_exit_fail_perror("sched_setaffinity");
	if (pthread_create(&th, NULL, gap_reader, &g))
		ksft_exit_fail_perror("pthread_create");
	for (m = 0; m < ARRAY_SIZE(modes); m++) {
		if (collapse_set_switch(modes[m]))
			ksft_exit_fail_msg("rust_switch %s: %s\n", modes[m],
					   strerror(errno));
		for (n = 0; n < READERS_ROUNDS; n++) {
			struct rust_paths d;
			long long gap;
			int ret, err;

			madvise(p, PMD_SZ, MADV_DONTNEED);
			for (pg = 0; pg < PAGES_PER_PMD; pg++)
				fill_page(p, shadow, pg, 500 + n);
			rust_stats_read("madvise", &s0);
			atomic_store(&g.longest, 0);
			ret = madvise(p, PMD_SZ, MADV_COLLAPSE);
			err = ret ? errno : 0;
			gap = atomic_load(&g.longest);
			rust_stats_read("madvise", &s1);
			d = rust_paths_delta(&s0, &s1);
			if (ret && err != EAGAIN && err != EBUSY)
				unexpected++;
			lost += !!memcmp(p, shadow, PMD_SZ);
			/* The rounds whose collapse switched as the mode says. */
			if (!ret && d.switched == 1 && d.read == !m) {
				counted[m]++;
				blocked[m] += gap >= held[m];
				if (gap > longest[m])
					longest[m] = gap;
				if (m && (shortest < 0 || gap < shortest))
					shortest = gap;
			} else {
				ksft_print_msg(round_fmt, modes[m], n,
					       ret ? strerror(err) : "collapsed",
					       d.switched, d.read, d.fallbacks);
			}
		}
	}
	atomic_store(&g.stop, 1);
	pthread_join(th, NULL);
	reads = atomic_load(&g.calls);
	collapse_set_switch("read");
	collapse_set_switch_delay(0);
	sched_setaffinity(0, sizeof(mask), &mask);
	ksft_test_result(!lost && !unexpected && !atomic_load(&g.errors) &&
			 counted[0] >= READERS_ROUNDS / 2 &&
			 counted[1] >= READERS_ROUNDS / 2 &&
			 blocked[0] <= counted[0] / 4 && blocked[1] == counted[1],
			 "%s (widened by %d us): read: %d of %d rounds switched under the mmap read lock, %d held the reader up >= %lld us (longest %lld us); ptl: %d switched under the write lock, %d held it up >= %lld us (shortest %lld us, longest %lld us); %lld mincore() calls (%ld failed), %d rounds lost data, %d unexpected errors, %.1f s\n",
			 READERS_NAME, READERS_DELAY_US, counted[0], READERS_ROUNDS,
			 blocked[0],
			 READERS_BLOCKED_NS / 1000, longest[0] / 1000, counted[1],
			 blocked[1], READERS_HELD_NS / 1000, shortest / 1000,
			 longest[1] / 1000, reads,
			 atomic_load(&g.errors), lost, unexpected,
			 (now_ns() - start) / 1e9);
out:
	munmap(g.other, PAGE_SZ);
	free(shadow);
	munmap(p, PMD_SZ);
}

#define FORCE_ROUNDS 24

/* Shared between test_race_force_write() and its writer, a child process. */
struct force_writer {
	char *p;		/* the range, in the parent */
	atomic_int go;		/* the parent set p and let the child trace it */
	atomic_int ready;	/* 1: tracing and writing; -errno: could not */
	atomic_int stop;
	atomic_long writes;
	atomic_long lost;
	atomic_long errors;
	uint64_t last[PAGES_PER_PMD];
};

/*
 * The child's loop: traces the parent without stopping it (PTRACE_SEIZE), so
 * that its writes to /proc/<parent>/mem get FOLL_FORCE (as a debugger's do,
 * CONFIG_PROC_MEM_FORCE_PTRACE), and writes a new generation into the first
 * word of each page of the parent's read-only range (PROT_READ once filled):
 * GUP writes straight through the read-only entry of an exclusive anonymous
 * page (can_follow_write_pte()), with no fault, no change of the entry and
 * no mmu notifier. Each page is read back before its next write. The last
 * page of the PMD is left alone (dropped between rounds).
 */
static void force_writer(struct force_writer *f, pid_t parent)
{
	uint64_t gen = 0, v;
	char path[64];
	long long t0;
	size_t pg = 0;
	int fd;

	while (!atomic_load(&f->go))
		usleep(1000);
	snprintf(path, sizeof(path), "/proc/%d/mem", parent);
	fd = open(path, O_RDWR);
	if (fd < 0 || ptrace(PTRACE_SEIZE, parent, 0, 0)) {
		atomic_store(&f->ready, -errno);
		return;
	}
	atomic_store(&f->ready, 1);
	while (!atomic_load(&f->stop)) {
		off_t addr = (off_t)(uintptr_t)(f->p + pg * PAGE_SZ);

		if (pread(fd, &v, sizeof(v), addr) != sizeof(v))
			atomic_fetch_add(&f->errors, 1);
		else if (v != f->last[pg])
			atomic_fetch_add(&f->lost, 1);
		gen++;
		if (pwrite(fd, &gen, sizeof(gen), addr) != sizeof(gen)) {
			atomic_fetch_add(&f->errors, 1);
		} else {
			f->last[pg] = gen;
			atomic_fetch_add(&f->writes, 1);
		}
		pg = (pg + 1) % (PAGES_PER_PMD - 1);
		/*
		 * A write every 200 us or so (spun: a sleep that short takes
		 * far longer under TCG): back to back, the writes' page
		 * references fail every collapse's isolation (page_count).
		 */
		for (t0 = now_ns(); now_ns() - t0 < 200000;)
			;
	}
}

/*
 * FOLL_FORCE writes into a read-only anonymous range during its collapses
 * (a debugger's POKEDATA or /proc/pid/mem): no write may be lost. An early
 * copy cannot see such a write (the entry stays read-only, the page the
 * same, nothing is invalidated), so the Rust core copies a VMA without
 * VM_WRITE under the lock, as upstream. Each of FORCE_ROUNDS rounds
 * collapses the range and drops its last page again (the next round finds
 * it PTE-mapped) while a child process that traces this one writes into it
 * through /proc/<pid>/mem. The range is mapped after the fork: the child
 * shares none of its pages.
 */
static void test_race_force_write(void)
{
	static const char name[] =
		"rust: FOLL_FORCE writes into a read-only range during collapses";
	static struct rust_stats s0, s1;
	long long start = now_ns(), before;
	int n, done = 0, unexpected = 0;
	struct force_writer *f;
	struct rust_paths d;
	size_t pg, lost = 0;
	char *p, *page;
	pid_t child;

	f = mmap(NULL, sizeof(*f), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (f == MAP_FAILED)
		ksft_exit_fail_perror("mmap(shared)");
	child = fork();
	if (child < 0)
		ksft_exit_fail_perror("fork");
	if (!child) {
		force_writer(f, getppid());
		_exit(0);
	}
	p = small_pages(1);
	for (pg = 0; pg < PAGES_PER_PMD; pg++) {
		page = p + pg * PAGE_SZ;
		memset(page, (int)(pg & 0xff) | 1, PAGE_SZ);
		*(uint64_t *)page = 0;
	}
	allow_thp(p, PMD_SZ);
	if (mprotect(p, PMD_SZ, PROT_READ))
		ksft_exit_fail_perror("mprotect");
	f->p = p;
	/* Yama's ptrace_scope 1 lets only a named tracer trace a parent. */
	prctl(PR_SET_PTRACER, child, 0, 0, 0);
	atomic_store(&f->go, 1);
	for (n = 0; n < 5000 && !atomic_load(&f->ready); n++)
		usleep(1000);
	if (atomic_load(&f->ready) != 1) {
		int err = -atomic_load(&f->ready);

		atomic_store(&f->stop, 1);
		waitpid(child, NULL, 0);
		ksft_test_result_skip("%s: the child cannot trace this process: %s\n",
				      name, err > 0 ? strerror(err) : "no answer");
		goto out;
	}
	/*
	 * Two sweeps first: a write marks its page accessed, which queues it
	 * for activation in a per-CPU batch holding a reference (page_count
	 * for a collapse) until the page is active.
	 */
	for (n = 0; n < 20000 && atomic_load(&f->writes) < 2 * (PAGES_PER_PMD - 1); n++)
		usleep(1000);
	collapse_require_core("rust");
	rust_stats_read("madvise", &s0);
	for (n = 0; n < FORCE_ROUNDS; n++) {
		static struct rust_stats snap;

		rust_stats_read("madvise", &snap);
		before = rust_stat("madvise", "succeed");
		if (madvise(p, PMD_SZ, MADV_COLLAPSE)) {
			int err = errno;

			ksft_print_msg("round %d: %s\n", n, strerror(err));
			stats_print_moved("madvise", &snap);
			unexpected += err != EAGAIN && err != EBUSY;
		}
		done += rust_stat("madvise", "succeed") > before;
		madvise(p + (PAGES_PER_PMD - 1) * PAGE_SZ, PAGE_SZ, MADV_DONTNEED);
	}
	atomic_store(&f->stop, 1);
	waitpid(child, NULL, 0);
	rust_stats_read("madvise", &s1);
	d = rust_paths_delta(&s0, &s1);
	for (pg = 0; pg < PAGES_PER_PMD - 1; pg++) {
		page = p + pg * PAGE_SZ;
		lost += *(uint64_t *)page != f->last[pg] ||
			(unsigned char)page[PAGE_SZ - 1] != ((pg & 0xff) | 1);
	}
	ksft_test_result(!lost && !atomic_load(&f->lost) && !atomic_load(&f->errors) &&
			 !unexpected && done >= FORCE_ROUNDS / 2 &&
			 atomic_load(&f->writes) > 0,
			 "%s: %d/%d rounds collapsed (%lld copied early, %lld copied locked), %ld writes (%ld failed), %ld seen lost during the race, %zu pages off at the end, %d unexpected errors, %.1f s\n",
			 name, done, FORCE_ROUNDS, d.early, d.locked,
			 atomic_load(&f->writes), atomic_load(&f->errors),
			 atomic_load(&f->lost), lost, unexpected,
			 (now_ns() - start) / 1e9);
out:
	prctl(PR_SET_PTRACER, 0, 0, 0, 0);
	munmap(p, PMD_SZ);
	munmap(f, sizeof(*f));
}

/*
 * An early copy that something else invalidates once starts over, and the
 * new copy holds. Each of ONCE_ROUNDS rounds faults one PMD of small pages
 * with new data (the range is dropped first: MADV_FREE of a page of the last
 * round's THP, PTE-mapped, would split it, and the split invalidate the range
 * again), and collapses it while a thread MADV_FREEs page ONCE_PAGE, once,
 * round n's n * ONCE_STEP_US after its start: the delays sweep the several
 * milliseconds of an early copy on a debug kernel under TCG, so that some
 * land during one. One MADV_FREE is one invalidation (one mmu notifier
 * range): it spoils the copy it lands in, which starts over and holds. A
 * collapse that started over must end copied early; one ending copied
 * locked with no restart had the FREE land between the copy's last look at
 * its watch and the mmap write lock, a window no restart covers, and at most
 * one round may hit it (a core that does not restart ends copied locked in
 * every round whose FREE lands during the copy). The FREE'd page reads its
 * data or, if reclaim discarded it, zeroes, every other page its data. A
 * FREE after the collapse may split the new THP: the range need not stay
 * huge.
 */
static void test_race_invalidated_once(void)
{
	static struct rust_stats first, last, s0, s1;
	static const char zero[PAGE_SZ];
	int n, ret, err, bad = 0, calls_ok = 0, hit = 0, during = 0;
	int spoiled = 0, late = 0;
	char *p = small_pages(1), *shadow = malloc(PMD_SZ);
	long long start = now_ns();
	size_t pg, lost = 0;
	struct rust_paths d;
	struct one_free f;
	long long t0, t1;
	bool pass;

	if (!shadow)
		ksft_exit_fail_perror("malloc");
	allow_thp(p, PMD_SZ);
	collapse_require_core("rust");
	rust_stats_read("madvise", &first);
	for (n = 0; n < ONCE_ROUNDS; n++) {
		struct rust_paths rd;
		size_t r_lost = 0;
		bool r_bad;

		/* Small pages (THP "enabled" is "never"), all dirty. */
		madvise(p, PMD_SZ, MADV_DONTNEED);
		for (pg = 0; pg < PAGES_PER_PMD; pg++)
			fill_page(p, shadow, pg, 100 + n);
		f = (struct one_free){
			.page = p + ONCE_PAGE * PAGE_SZ,
			.advice = MADV_FREE,
			.delay_us = n * ONCE_STEP_US,
		};
		err = collapse_racing_one(p, &f, &s0, &s1);
		ret = err ? -1 : 0;
		t0 = f.t0;
		t1 = f.t1;
		for (pg = 0; pg < PAGES_PER_PMD; pg++) {
			const char *page = p + pg * PAGE_SZ;

			if (memcmp(page, shadow + pg * PAGE_SZ, PAGE_SZ) &&
			    (pg != ONCE_PAGE || memcmp(page, zero, PAGE_SZ)))
				r_lost++;
		}
		rd = rust_paths_delta(&s0, &s1);
		r_bad = f.err || (ret && !errno_expected(err, FREE, 0)) ||
			rd.restarts > rd.succeed;
		lost += r_lost;
		bad += r_bad;
		calls_ok += !ret;
		hit += rd.restarts > 0;
		during += f.at_ns > t0 && f.at_ns < t1;
		spoiled += rd.restarts && rd.locked;
		late += !rd.restarts && rd.locked;
		if (r_lost || r_bad || rd.locked) {
			/* And every counter that moved in the round. */
			ksft_print_msg("round %d: MADV_FREE (%s) %ld us in, %s the call\n",
				       n, f.err ? strerror(f.err) : "done", f.delay_us,
				       f.at_ns < t0 ? "before" :
				       f.at_ns < t1 ? "during" : "after");
			ksft_print_msg("round %d: %s, %zu pages lost\n", n,
				       ret ? strerror(err) : "collapsed", r_lost);
			stats_print_moved("madvise", &s0);
		}
	}
	rust_stats_read("madvise", &last);
	d = rust_paths_delta(&first, &last);
	/* At most one restart a collapse, and one FREE a round to restart. */
	pass = !lost && !bad && !spoiled && late <= 1 && hit > 0 &&
	       rust_paths_add_up(&d) && 2 * calls_ok >= ONCE_ROUNDS;
	if (!pass)
		stats_print_moved("madvise", &first);
	ksft_test_result(pass,
			 "rust: an early copy invalidated once (MADV_FREE of 1 page) starts over and holds: %d rounds, %d FREEs during the call; %lld early copies started over (in %d rounds); %lld PMDs: %lld copied early, %lld copied locked (%d after starting over, %d with no restart: at most 1 wanted), %lld in place; %zu pages lost, %d/%d calls returned 0, %d rounds with unexpected errors, %.1f s\n",
			 ONCE_ROUNDS, during, d.restarts, hit, d.succeed, d.early,
			 d.locked, spoiled, late, d.in_place, lost, calls_ok,
			 ONCE_ROUNDS, bad, (now_ns() - start) / 1e9);
	free(shadow);
	munmap(p, PMD_SZ);
}

#define ZAP_ROUNDS 144
#define ZAP_PAGE 100		/* empty at the scan, then written and zapped */
#define ZAP_MARK 0xa5		/* the byte the racer writes into it */

/*
 * A page the scan found empty, written before the early copy and zapped
 * while it ran, reads zeroes after the collapse. The Rust core clears the
 * pages of the new folio whose entries the scan found empty before it copies
 * (anon::clear_empty(), `cleared`), and its switch leaves those still empty
 * alone. A write after the scan maps page ZAP_PAGE, the first pass copies it
 * over its cleared page, and a MADV_DONTNEED of it during the copy starts
 * the copy over (one invalidation), which finds the entry empty again and
 * copies nothing there: the new folio holds what the process zapped, unless
 * the entry left `cleared` when the first pass wrote its page
 * (EarlyCopy::pass()). Before that fix it stayed there, the switch skipped
 * the page, and the process read back the bytes it had zapped.
 *
 * The racer (free_one_page() with a mark) writes the page round n's
 * n * step / 2 after its start, drains its LRU batch (a page still in it is
 * not copied early) and zaps the page a step after the write: it must write
 * between the scan and the first pass, and zap during the copy. Every even
 * page stays empty: their clearing, between the scan and the first pass,
 * makes the window for the write about as long as the copy of the odd
 * pages, the window for the zap. The step is measured: ZAP_ROUNDS half
 * steps span one collapse of the range (with nothing racing), about
 * ONCE_STEP_US on a debug kernel under TCG, a third of that on the faster
 * KCSAN kernel, where a fixed step missed both windows. That copy is a few
 * hundredths of the call: 48 rounds hit the window 1 to 3 times, and none
 * in 2 of 3 runs once the Rust core drained the LRU batches after its scan
 * instead of before (the scan fails on the pages the round just wrote, and
 * scans again): 144 rounds, each half step a third as long.
 *
 * The zapped page must read zeroes, so must the other even pages, and the
 * odd pages their data. A call that returns 0 must be a collapse by the Rust
 * core, PMD-mapped unless the zap came after its switch (which splits the
 * mapping, and leaves the page unmapped). Some round must have started its
 * copy over after a write during the call: the interleaving needs both,
 * though nothing outside the kernel shows that the write came before the
 * first pass.
 */
static void test_race_refault_then_zap(void)
{
	static struct rust_stats first, last, s0, s1;
	char *p = small_pages(1), *x = p + ZAP_PAGE * PAGE_SZ;
	char *shadow = calloc(1, PMD_SZ);
	char *cold = mmap(NULL, PAGE_SZ, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	const uint64_t *word = (const uint64_t *)x;
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	int n, ret, err, bad = 0, calls_ok = 0, hit = 0, primed = 0;
	int written = 0, zapped = 0, dirty = 0;
	long long start = now_ns(), t0, t1;
	size_t pg, w, lost = 0;
	long long span[3];
	long step_us;
	struct rust_paths d;
	struct one_free f;
	bool pass;

	if (!shadow || cold == MAP_FAILED || pagemap < 0)
		ksft_exit_fail_perror("setup");
	allow_thp(p, PMD_SZ);
	collapse_require_core("rust");
	/*
	 * Collapses of the range as the rounds make it, nothing racing: the
	 * median of three (one may compact for its THP) is the sweep's span.
	 */
	for (n = 0; n < 3; n++) {
		madvise(p, PMD_SZ, MADV_DONTNEED);
		for (pg = 1; pg < PAGES_PER_PMD; pg += 2)
			fill_page(p, shadow, pg, 199);
		t0 = now_ns();
		span[n] = madvise(p, PMD_SZ, MADV_COLLAPSE) ? 0 : now_ns() - t0;
	}
	t1 = span[0] < span[1] ? span[0] : span[1];
	t0 = span[0] < span[1] ? span[1] : span[0];
	/* The median: the middle one of the three. */
	t0 = span[2] > t0 ? t0 : span[2] < t1 ? t1 : span[2];
	step_us = 2 * t0 / 1000 / ZAP_ROUNDS;
	/* Without a collapse to time (all failed): the debug kernel's. */
	if (!t0)
		step_us = ONCE_STEP_US;
	if (step_us < 20)
		step_us = 20;
	if (step_us > 2 * ONCE_STEP_US)
		step_us = 2 * ONCE_STEP_US;
	rust_stats_read("madvise", &first);
	for (n = 0; n < ZAP_ROUNDS; n++) {
		struct rust_paths rd;
		bool huge, mapped, r_dirty, r_bad;
		size_t r_lost = 0;

		/* The odd pages written, the even ones (ZAP_PAGE) left empty. */
		madvise(p, PMD_SZ, MADV_DONTNEED);
		for (pg = 1; pg < PAGES_PER_PMD; pg += 2)
			fill_page(p, shadow, pg, 200 + n);
		f = (struct one_free){
			.page = x,
			.advice = MADV_DONTNEED,
			.delay_us = n * step_us / 2,
			.mark = ZAP_MARK,
			.cold = cold,
			.then_us = step_us,
		};
		err = collapse_racing_one(p, &f, &s0, &s1);
		ret = err ? -1 : 0;
		t0 = f.t0;
		t1 = f.t1;
		/* Before the reads, which map the zero page where none is. */
		huge = check_huge_anon(p, PMD_SZ, 1, PMD_SZ);
		mapped = pagemap_get_pfn(pagemap, x) != -1UL;
		for (pg = 0; pg < PAGES_PER_PMD; pg++)
			r_lost += pg != ZAP_PAGE &&
				  memcmp(p + pg * PAGE_SZ, shadow + pg * PAGE_SZ, PAGE_SZ);
		for (w = 0; w < PAGE_SZ / sizeof(*word) && !word[w]; w++)
			;
		r_dirty = w < PAGE_SZ / sizeof(*word);
		rd = rust_paths_delta(&s0, &s1);
		r_bad = f.err || (ret && !errno_expected(err, DONTNEED, 0)) ||
			rd.restarts > rd.succeed ||
			(!ret && (!rd.succeed || (!huge && mapped)));
		lost += r_lost;
		dirty += r_dirty;
		bad += r_bad;
		calls_ok += !ret;
		hit += rd.restarts > 0;
		primed += rd.restarts > 0 && f.written_ns > t0;
		written += f.written_ns > t0 && f.written_ns < t1;
		zapped += f.at_ns > t0 && f.at_ns < t1;
		if (r_lost || r_bad || r_dirty) {
			ksft_print_msg("round %d: written %ld us in, %s the call; zap (%s) %s it\n",
				       n, f.delay_us,
				       f.written_ns < t0 ? "before" :
				       f.written_ns < t1 ? "during" : "after",
				       f.err ? strerror(f.err) : "done",
				       f.at_ns < t0 ? "before" :
				       f.at_ns < t1 ? "during" : "after");
			ksft_print_msg("round %d: %s, %sPMD-mapped, page %smapped, %zu lost\n",
				       n, ret ? strerror(err) : "collapsed",
				       huge ? "" : "not ", mapped ? "" : "not ", r_lost);
			if (r_dirty)
				ksft_print_msg("round %d: page not zeroes: word %zu is 0x%016llx\n",
					       n, w, (unsigned long long)word[w]);
			stats_print_moved("madvise", &s0);
		}
	}
	rust_stats_read("madvise", &last);
	d = rust_paths_delta(&first, &last);
	ksft_print_msg("refault, zap: %lld copies started over, in %d rounds (%d after a write)\n",
		       d.restarts, hit, primed);
	/* At most one restart a collapse, and one DONTNEED a round to restart. */
	pass = !lost && !dirty && !bad && primed > 0 &&
	       rust_paths_add_up(&d) && 2 * calls_ok >= ZAP_ROUNDS;
	if (!pass)
		stats_print_moved("madvise", &first);
	ksft_test_result(pass,
			 "rust: a page empty at the scan, written then MADV_DONTNEED'd during the early copy, reads zeroes: %d rounds, step %ld us, %d writes and %d DONTNEEDs during the call; %lld early copies started over (in %d rounds, %d after the write); %lld PMDs: %lld copied early, %lld copied locked; %d rounds with the page not zeroes, %zu other pages lost, %d/%d calls returned 0, %d rounds with unexpected errors, %.1f s\n",
			 ZAP_ROUNDS, step_us, written, zapped, d.restarts, hit, primed,
			 d.succeed, d.early, d.locked, dirty, lost, calls_ok,
			 ZAP_ROUNDS, bad, (now_ns() - start) / 1e9);
	close(pagemap);
	munmap(cold, PAGE_SZ);
	free(shadow);
	munmap(p, PMD_SZ);
}

#define KHUGEPAGED_ROUNDS 12

/*
 * khugepaged collapsing while two threads write every page but the last of
 * each PMD (writer()): each round waits for both PMDs to be PMD-mapped, then
 * splits them again by dropping the last page of each, so that the next
 * round collapses PTE-mapped THPs (large folios) as well as base pages. No
 * write may get lost, and the Rust core's khugepaged counter must move.
 *
 * The writers run at khugepaged's nice level (19): at 0, two of them busy on
 * the guest's two CPUs leave khugepaged about 1.5 % of one, and a collapse
 * whose pages are all written while it copies (copied early, again, then
 * under the lock) may then take longer than a round's 10 s. They still run
 * whenever khugepaged does not.
 */
static void test_race_khugepaged(void)
{
	static struct rust_stats first;
	static struct race r;
	char enabled[32], sleep_ms[32];
	long long ok = rust_stat("khugepaged", "succeed");
	int i, n, t, done = 0;
	size_t pg, lost = 0;
	pthread_t th[2];

	memset(&r, 0, sizeof(r));
	r.nice = 19;
	r.len = RACE_PMDS * PMD_SZ;
	r.p = small_pages(RACE_PMDS);
	for (pg = 0; pg < RACE_PMDS * PAGES_PER_PMD; pg++)
		r.p[pg * PAGE_SZ] = 1;
	collapse_require_core("rust");
	if (sysfs_swap_str(THP_SYSFS "khugepaged/scan_sleep_millisecs", sleep_ms,
			   sizeof(sleep_ms), "10") ||
	    sysfs_swap_str(THP_SYSFS "enabled", enabled, sizeof(enabled), "madvise"))
		ksft_exit_fail_msg("cannot set up khugepaged\n");
	for (i = 0; i < 2; i++) {
		r.id = i;
		if (pthread_create(&th[i], NULL, writer, &r))
			ksft_exit_fail_perror("pthread_create");
		/* Let the thread read its id. */
		while (atomic_load(&r.ops) == 0 && i == 0)
			usleep(1000);
	}
	allow_thp(r.p, r.len);
	rust_stats_read("khugepaged", &first);
	for (n = 0; n < KHUGEPAGED_ROUNDS; n++) {
		/* Up to 10 s a round. */
		for (t = 0; t < 1000 && !check_huge_anon(r.p, r.len, RACE_PMDS, PMD_SZ); t++)
			usleep(10000);
		if (t == 1000)
			break;
		done++;
		for (i = 0; i < RACE_PMDS; i++)
			madvise(r.p + i * PMD_SZ + (PAGES_PER_PMD - 1) * PAGE_SZ,
				PAGE_SZ, MADV_DONTNEED);
	}
	atomic_store(&r.stop, 1);
	for (i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	set_str(THP_SYSFS "enabled", enabled);
	set_str(THP_SYSFS "khugepaged/scan_sleep_millisecs", sleep_ms);

	for (pg = 0; pg < RACE_PMDS * PAGES_PER_PMD; pg++)
		if (pg % PAGES_PER_PMD != PAGES_PER_PMD - 1 &&
		    *(uint64_t *)(r.p + pg * PAGE_SZ) != r.last[pg])
			lost++;
	/* What khugepaged met, should a round have waited in vain. */
	if (done < KHUGEPAGED_ROUNDS)
		stats_print_moved("khugepaged", &first);
	ksft_test_result(!lost && done == KHUGEPAGED_ROUNDS && !atomic_load(&r.errors) &&
			 rust_stat("khugepaged", "succeed") - ok >= RACE_PMDS * KHUGEPAGED_ROUNDS,
			 "rust: khugepaged collapsing under writers at nice 19: %d/%d rounds collapsed, %lld khugepaged succeed, %zu pages lost, %ld writer passes, %ld setpriority errors\n",
			 done, KHUGEPAGED_ROUNDS, rust_stat("khugepaged", "succeed") - ok,
			 lost, atomic_load(&r.ops), atomic_load(&r.errors));
	munmap(r.p, r.len);
}

/* The PMDs each call of test_same_range_twice() collapses. */
#define TWICE_PMDS 4
/* Its rounds: at least, and at most while no scan has waited. */
#define TWICE_ROUNDS_MIN 8
#define TWICE_ROUNDS_MAX 32

/* The second caller's delays sweep 0 to 15 times this, round by round. */
#define TWICE_STEP_US 500

/* One of the two callers of test_same_range_twice(). */
struct twice_caller {
	struct region *r;
	atomic_int *go;
	int delay_us;		/* from the go to the call */
	int err;		/* the call's errno, or 0 */
};

static void *collapse_when_told(void *arg)
{
	struct twice_caller *t = arg;

	while (!atomic_load(t->go))
		;
	if (t->delay_us)
		usleep(t->delay_us);
	t->err = madvise(t->r->p, t->r->len, MADV_COLLAPSE) ? errno : 0;
	return NULL;
}

/*
 * Two threads MADV_COLLAPSE the same TWICE_PMDS PMDs at once: both calls
 * succeed, as upstream's do, whose second scan of a PMD waits for the first
 * collapse's mmap write lock and finds the PMD mapped. The Rust core's early
 * copy holds references to the pages without that lock: a scan of the PMD
 * meanwhile stops at them, and must wait for that collapse (claim_waits)
 * instead of failing with EAGAIN. Each round faults new data in small pages,
 * lets both threads go, the second after a delay that sweeps an early copy's
 * few milliseconds (or together, every 16th round), and checks every byte
 * and that every PMD is mapped; on the Rust core the rounds go on (TWICE_ROUNDS_MAX at most) until
 * a scan has waited, and each PMD must be collapsed once by the Rust core.
 */
static void test_same_range_twice(const char *core)
{
	static struct rust_stats s0, s1;
	uint64_t *shadow = calloc(TWICE_PMDS * PAGES_PER_PMD, sizeof(*shadow));
	int n, i, failed = 0, last_err = 0, not_huge = 0;
	bool rust = core[0] == 'r';
	struct rust_paths d = { 0 };
	char moved[512] = "";
	size_t bad = 0;
	long long other;

	if (!shadow)
		ksft_exit_fail_perror("calloc");
	collapse_require_core(core);
	rust_stats_read("madvise", &s0);
	for (n = 0; n < TWICE_ROUNDS_MAX;) {
		struct region r = mem_region(MEM_ANON, TWICE_PMDS);
		struct twice_caller t[2];
		atomic_int go = 0;
		pthread_t th[2];

		if (mem_populate(&r, shadow, n + 1))
			ksft_exit_fail_perror("populate");
		for (i = 0; i < 2; i++) {
			t[i] = (struct twice_caller){
				.r = &r, .go = &go,
				.delay_us = i * (n % 16) * TWICE_STEP_US,
			};
			if (pthread_create(&th[i], NULL, collapse_when_told, &t[i]))
				ksft_exit_fail_perror("pthread_create");
		}
		atomic_store(&go, 1);
		for (i = 0; i < 2; i++) {
			pthread_join(th[i], NULL);
			if (t[i].err) {
				failed++;
				last_err = t[i].err;
			}
		}
		not_huge += !mem_pmd_mapped(&r);
		bad += mem_bad_pages(&r, shadow);
		mem_region_free(&r);
		n++;
		rust_stats_read("madvise", &s1);
		d = rust_paths_delta(&s0, &s1);
		if (n >= TWICE_ROUNDS_MIN && (!rust || d.waits > 0))
			break;
	}
	other = rust_stats_moved(&s0, &s1, moved, sizeof(moved));
	free(shadow);
	ksft_test_result(!failed && !not_huge && !bad &&
			 (rust ? d.waits > 0 && d.succeed == n * TWICE_PMDS &&
				 rust_paths_add_up(&d) :
				 other == 0),
			 "%s: two threads collapse the same %d PMDs at once: %d rounds, %d calls failed%s%s, %d rounds not huge, %zu pages differ; Rust madvise:%s\n",
			 core, TWICE_PMDS, n, failed, failed ? ", last " : "",
			 failed ? strerror(last_err) : "", not_huge, bad, moved);
}

/* ---- Bad input --------------------------------------------------------- */

static int collapse_errno(const char *core, void *p, size_t len)
{
	collapse_require_core(core);
	return madvise(p, len, MADV_COLLAPSE) ? errno : 0;
}

/*
 * MADV_COLLAPSE of @p on each core, the errnos in *@r and *@c; returns how
 * much the Rust core's madvise counters moved.
 */
static long long collapse_errnos(void *p, size_t len, int *r, int *c)
{
	long long total = rust_stat_total("madvise");

	*r = collapse_errno("rust", p, len);
	*c = collapse_errno("c", p, len);
	return rust_stat_total("madvise") - total;
}

/*
 * A range that madvise() itself rejects (check_input_range() in
 * mm/madvise.c) before any collapse core is called: the same errno whichever
 * core the knob selects, and no Rust counter moves. This tests the generic
 * code, not a core, and is labelled so.
 */
static void expect_generic(const char *what, void *p, size_t len, int want)
{
	int r, c;
	long long moved = collapse_errnos(p, len, &r, &c);

	ksft_test_result(r == want && c == want && !moved,
			 "madvise: %s gives %s in check_input_range(), before any collapse core (knob rust: %s, knob c: %s; Rust counters +%lld)\n",
			 what, strerror(want), strerror(r), strerror(c), moved);
}

/*
 * A VMA that reaches madvise_collapse() but that no collapse may touch: both
 * cores refuse it at their entry (thp_vma_allowable_orders()), before any
 * PMD, so the Rust core counts nothing; its counters must not move.
 */
static void expect_refused(const char *what, void *p, size_t len, int want)
{
	int r, c;
	long long moved = collapse_errnos(p, len, &r, &c);

	ksft_test_result(r == want && c == want && !moved,
			 "bad input: %s gives %s on both cores, refused at the core's entry before any PMD (rust %s, c %s; Rust counters +%lld)\n",
			 what, strerror(want), strerror(r), strerror(c), moved);
}

static void test_bad_ranges(void)
{
	char *p = small_pages(3);
	long long ok;
	size_t pg;
	int r;

	for (pg = 0; pg < 3 * PAGES_PER_PMD; pg++)
		p[pg * PAGE_SZ] = 1;
	allow_thp(p, 3 * PMD_SZ);
	expect_generic("an unaligned start", p + 1, PMD_SZ, EINVAL);
	expect_generic("a range that wraps around", p, -(uintptr_t)p + PAGE_SZ,
		       EINVAL);
	munmap(p + PMD_SZ, PMD_SZ);
	/*
	 * The VMA walk in mm/madvise.c reports the hole (ENOMEM) after calling
	 * the core for the VMAs on both sides, which the Rust core collapses.
	 */
	ok = rust_stat("madvise", "succeed");
	r = collapse_errno("rust", p, 3 * PMD_SZ);
	ksft_test_result(r == ENOMEM && rust_stat("madvise", "succeed") == ok + 2 &&
			 check_huge_anon(p, PMD_SZ, 1, PMD_SZ) &&
			 check_huge_anon(p + 2 * PMD_SZ, PMD_SZ, 1, PMD_SZ),
			 "rust: a hole gives ENOMEM (the VMA walk), the Rust core collapses the mapped parts (%s, succeed +%lld)\n",
			 strerror(r), rust_stat("madvise", "succeed") - ok);
	munmap(p, 3 * PMD_SZ);
}

/*
 * A hugetlb VMA right after a PMD of small anonymous pages, in one call:
 * the core collapses the anonymous PMD (on the Rust core its succeed counter
 * moves, which proves that this core served the call) and refuses the
 * hugetlb VMA at its entry, EINVAL, on both cores.
 */
static void test_bad_hugetlb(void)
{
	char *p = small_pages(2), *h;
	long long ok, moved;
	bool r_huge, c_huge;
	int r, c;

	h = mmap(p + PMD_SZ, PMD_SZ, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED, -1, 0);
	if (h == MAP_FAILED) {
		ksft_test_result_fail("bad input: hugetlb: no huge page: %s\n",
				      strerror(errno));
		munmap(p, 2 * PMD_SZ);
		return;
	}
	h[0] = 1;
	memset(p, 1, PMD_SZ);
	allow_thp(p, PMD_SZ);
	ok = rust_stat("madvise", "succeed");
	r = collapse_errno("rust", p, 2 * PMD_SZ);
	moved = rust_stat("madvise", "succeed") - ok;
	r_huge = check_huge_anon(p, PMD_SZ, 1, PMD_SZ);
	/* Split the anonymous PMD again for the C core. */
	madvise(p + PMD_SZ - PAGE_SZ, PAGE_SZ, MADV_DONTNEED);
	c = collapse_errno("c", p, 2 * PMD_SZ);
	c_huge = check_huge_anon(p, PMD_SZ, 1, PMD_SZ);
	ksft_test_result(r == EINVAL && c == EINVAL && moved == 1 && r_huge && c_huge,
			 "bad input: a hugetlb VMA after an anon PMD gives EINVAL on both cores, the anon PMD collapses (rust %s, succeed +%lld, huge %d; c %s, huge %d)\n",
			 strerror(r), moved, r_huge, strerror(c), c_huge);
	munmap(p, 2 * PMD_SZ);
}

/* The vDSO data pages are VM_PFNMAP or VM_MIXEDMAP special mappings. */
static void test_bad_special(void)
{
	unsigned long start = 0, end = 0;
	char line[512];
	FILE *f = fopen("/proc/self/maps", "r");

	while (f && fgets(line, sizeof(line), f)) {
		if (strstr(line, "[vvar]") &&
		    sscanf(line, "%lx-%lx", &start, &end) == 2)
			break;
		start = 0;
	}
	if (f)
		fclose(f);
	if (!start) {
		ksft_test_result_fail("bad input: no [vvar] mapping to try\n");
		return;
	}
	expect_refused("a special ([vvar], VM_PFNMAP) mapping", (void *)start,
		       end - start, EINVAL);
}

/*
 * PR_SET_THP_DISABLE: both cores refuse the VMA at their entry, EINVAL, and
 * the Rust core counts no PMD.
 */
static void test_bad_thp_disabled(void)
{
	int status = -1;
	pid_t pid = fork();

	if (pid == 0) {
		char *p = small_pages(1);
		long long total;
		int r, c;

		memset(p, 1, PMD_SZ);
		allow_thp(p, PMD_SZ);
		if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0))
			_exit(2);
		total = rust_stat_total("madvise");
		r = collapse_errno("rust", p, PMD_SZ);
		c = collapse_errno("c", p, PMD_SZ);
		if (rust_stat_total("madvise") != total)
			_exit(3);
		_exit(r == EINVAL && c == EINVAL ? 0 : 1);
	}
	waitpid(pid, &status, 0);
	ksft_test_result(WIFEXITED(status) && !WEXITSTATUS(status),
			 "bad input: PR_SET_THP_DISABLE gives EINVAL on both cores, refused at the core's entry before any PMD (child status %d: 1 wrong errno, 3 a Rust counter moved)\n",
			 WIFEXITED(status) ? WEXITSTATUS(status) : status);
}

static long vmstat_read(const char *name)
{
	char key[64];
	long val, ret = -1;
	FILE *f = fopen("/proc/vmstat", "r");

	while (f && fscanf(f, "%63s %ld", key, &val) == 2)
		if (!strcmp(key, name))
			ret = val;
	if (f)
		fclose(f);
	return ret;
}

/*
 * A userfaultfd-registered range may not gain pages behind the monitor's
 * back: one empty PTE stops the collapse with EBUSY, and the scan counts
 * thp_scan_exceed_none_pte, on both cores; on the Rust core its
 * exceed_none_pte counter moves too.
 */
static void test_uffd_hole(void)
{
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = { .api = UFFD_API };
	long long none = rust_stat("madvise", "exceed_none_pte");
	char *p = small_pages(1);
	long before, r_moved, c_moved;
	int r, c;

	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
		ksft_test_result_fail("userfaultfd hole: no userfaultfd\n");
		munmap(p, PMD_SZ);
		return;
	}
	memset(p, 1, PMD_SZ);
	madvise(p + 5 * PAGE_SZ, PAGE_SZ, MADV_DONTNEED);
	allow_thp(p, PMD_SZ);
	if (uffd_register(uffd, p, PMD_SZ, true, false, false))
		ksft_exit_fail_perror("uffd_register");
	before = vmstat_read("thp_scan_exceed_none_pte");
	r = collapse_errno("rust", p, PMD_SZ);
	r_moved = vmstat_read("thp_scan_exceed_none_pte") - before;
	none = rust_stat("madvise", "exceed_none_pte") - none;
	before += r_moved;
	c = collapse_errno("c", p, PMD_SZ);
	c_moved = vmstat_read("thp_scan_exceed_none_pte") - before;
	ksft_test_result(r == EBUSY && c == EBUSY && r_moved == 1 && c_moved == 1 &&
			 none == 1,
			 "userfaultfd-registered range with a hole: EBUSY and thp_scan_exceed_none_pte +1 on both cores (rust %s +%ld, exceed_none_pte +%lld; c %s +%ld)\n",
			 strerror(r), r_moved, none, strerror(c), c_moved);
	uffd_unregister(uffd, p, PMD_SZ);
	close(uffd);
	munmap(p, PMD_SZ);
}

/* /proc/kpageflags bits (Documentation/admin-guide/mm/pagemap.rst). */
#define KPF_UNEVICTABLE_BIT 18
#define KPF_MLOCKED_BIT 33
/* A PMD, in kB. */
#define PMD_KB ((long)(PMD_SZ >> 10))

/*
 * /proc/meminfo's Mlocked, in kB, exact: the per-CPU vmstat deltas folded
 * first (writing /proc/sys/vm/stat_refresh, as root). -1 if unreadable.
 */
static long mlocked_kb(void)
{
	if (write_str("/proc/sys/vm/stat_refresh", "1"))
		return -1;
	return meminfo_kb("Mlocked");
}

/*
 * mlocked_kb() once it reads @want, or as it read last, after about a
 * second. A munlock is counted only when the per-CPU mlock batch that holds
 * the folio drains: the collapse may leave up to 30 old pages in a batch,
 * this CPU's or, had the task moved meanwhile, another's. So each try after
 * the first drains every CPU's batches (if @drain): a write to
 * /proc/sys/vm/compact_memory starts with lru_add_drain_all(). (A
 * MADV_COLLAPSE of a PMD-mapped range did on both cores until the Rust core
 * stopped draining where no page needs it.)
 */
static long mlocked_kb_await(bool drain, long want)
{
	long kb = -1;
	int i;

	for (i = 0; i < 20; i++) {
		if (i)
			usleep(50 * 1000);
		if (i && drain)
			write_str("/proc/sys/vm/compact_memory", "1");
		kb = mlocked_kb();
		if (kb == want)
			break;
	}
	return kb;
}

/*
 * The /proc/kpageflags word of the page mapped at @p into *@flags: 0, or
 * -errno of opening or reading pagemap or kpageflags (-ENXIO: nothing mapped
 * at @p; -EPERM: pagemap hides the PFN, from a reader without CAP_SYS_ADMIN).
 */
static int kpageflags_at(char *p, uint64_t *flags)
{
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	unsigned long pfn;
	int kpf, err = 0;

	*flags = 0;
	if (pagemap < 0)
		return -errno;
	pfn = pagemap_get_pfn(pagemap, p);
	close(pagemap);
	if (pfn == -1UL)
		return -ENXIO;
	if (!pfn)
		return -EPERM;
	kpf = open("/proc/kpageflags", O_RDONLY);
	if (kpf < 0)
		return -errno;
	if (pageflags_get(pfn, kpf, flags))
		err = -EIO;
	close(kpf);
	return err;
}

/* What an mlocked range's collapse showed on one core (sizes in kB). */
struct mlock_figures {
	const char *failed;	/* the step before the collapse that failed */
	int err;		/* its errno, or the collapse's, or 0 */
	bool huge, same;	/* PMD-mapped after the collapse; every byte kept */
	long locked[3];		/* smaps Locked: before, after, after munlock */
	long mlocked[3];	/* meminfo Mlocked: before, after, after munlock */
	int kpf_err;		/* why the THP's kpageflags are unknown (-errno), or 0 */
	uint64_t kpf;		/* the THP head's kpageflags after the collapse */
	long long succeed, early; /* the Rust core's madvise counters' moves */
};

/* Collapses an mlocked PMD on @core (@seed for its contents), then munlocks it. */
static void mlocked_collapse(const char *core, uint64_t seed, struct mlock_figures *f)
{
	static struct rust_stats s0, s1;
	char *p = small_pages(1);
	char *shadow = malloc(PMD_SZ);
	size_t pg;

	memset(f, 0, sizeof(*f));
	if (!shadow)
		ksft_exit_fail_perror("malloc");
	for (pg = 0; pg < PAGES_PER_PMD; pg++)
		fill_page(p, shadow, pg, seed);
	allow_thp(p, PMD_SZ);
	if (mlock(p, PMD_SZ)) {
		f->failed = "mlock";
		f->err = errno;
		goto out;
	}
	/* mlock counts a folio at once (munlock does not: see mlocked_kb_await()). */
	f->locked[0] = smaps_kb(p, "Locked:");
	f->mlocked[0] = mlocked_kb();

	rust_stats_read("madvise", &s0);
	f->err = collapse_errno(core, p, PMD_SZ);
	rust_stats_read("madvise", &s1);
	f->succeed = rust_stats_delta(&s0, &s1, "succeed");
	f->early = rust_stats_delta(&s0, &s1, "copied_early");
	f->huge = check_huge_anon(p, PMD_SZ, 1, PMD_SZ);
	f->same = !memcmp(p, shadow, PMD_SZ);
	f->locked[1] = smaps_kb(p, "Locked:");
	f->kpf_err = kpageflags_at(p, &f->kpf);
	f->mlocked[1] = mlocked_kb_await(f->huge, f->mlocked[0]);

	munlock(p, PMD_SZ);
	f->locked[2] = smaps_kb(p, "Locked:");
	f->mlocked[2] = mlocked_kb_await(f->huge, f->mlocked[1] - PMD_KB);
out:
	free(shadow);
	munmap(p, PMD_SZ);
}

/*
 * mlock() does not stop a collapse, and the collapse keeps the range's mlock
 * accounting: the VMA's smaps Locked: stays at the whole PMD, the system's
 * Mlocked does not move (the old pages are munlocked as they are unmapped,
 * the huge page mlocked as it is mapped), and the huge page is mlocked and
 * unevictable in /proc/kpageflags, so reclaim leaves it alone. The munlock
 * afterwards takes the whole PMD off Mlocked, which it would not if the huge
 * page had not been counted. The Rust core (which copies the pages early,
 * while the process runs) and the C core must show the same figures; the
 * Rust core's counters prove that it did the collapse.
 */
static void test_mlocked(const char *core)
{
	bool rust = !strcmp(core, "rust");
	struct mlock_figures f;
	char flags[64], counters[96] = "";
	bool flags_ok;

	mlocked_collapse(core, rust ? 5 : 6, &f);
	if (f.failed) {
		ksft_test_result_fail("%s: mlocked range: %s: %s\n", core, f.failed,
				      strerror(f.err));
		return;
	}
	flags_ok = !f.kpf_err && (f.kpf & BIT_ULL(KPF_MLOCKED_BIT)) &&
		   (f.kpf & BIT_ULL(KPF_UNEVICTABLE_BIT)) && (f.kpf & KPF_THP);
	if (f.kpf_err)
		snprintf(flags, sizeof(flags), "kpageflags unread: %s", strerror(-f.kpf_err));
	else
		snprintf(flags, sizeof(flags), "kpageflags mlocked %d unevictable %d thp %d",
			 !!(f.kpf & BIT_ULL(KPF_MLOCKED_BIT)),
			 !!(f.kpf & BIT_ULL(KPF_UNEVICTABLE_BIT)), !!(f.kpf & KPF_THP));
	if (rust)
		snprintf(counters, sizeof(counters), ", succeed +%lld, copied early +%lld",
			 f.succeed, f.early);
	ksft_test_result(!f.err && f.huge && f.same && flags_ok &&
			 f.locked[0] == PMD_KB && f.locked[1] == PMD_KB && !f.locked[2] &&
			 f.mlocked[0] >= PMD_KB && f.mlocked[1] == f.mlocked[0] &&
			 f.mlocked[2] == f.mlocked[1] - PMD_KB &&
			 (!rust || (f.succeed == 1 && f.early == 1)),
			 "%s: mlocked range collapses, keeps its contents and its mlock accounting (%s, huge %d, same %d, Locked %ld -> %ld kB, %ld after munlock, Mlocked %ld kB, %+ld kB by the collapse, %+ld kB by munlock, %s%s)\n",
			 core, f.err ? strerror(f.err) : "collapsed", f.huge, f.same,
			 f.locked[0], f.locked[1], f.locked[2], f.mlocked[0],
			 f.mlocked[1] - f.mlocked[0], f.mlocked[2] - f.mlocked[1], flags,
			 counters);
}

static long process_collapse(int pidfd, void *p, size_t len)
{
	struct iovec iov = { .iov_base = p, .iov_len = len };

	return syscall(SYS_process_madvise, pidfd, &iov, 1, MADV_COLLAPSE, 0);
}

/*
 * A target that maps @nr PMDs of small pages, reports where, and waits; as
 * user @uid if it is not 0.
 */
static pid_t spawn_target(size_t nr, char **where, uid_t uid)
{
	int fds[2];
	pid_t pid;

	if (pipe(fds))
		ksft_exit_fail_perror("pipe");
	pid = fork();
	if (pid < 0)
		ksft_exit_fail_perror("fork");
	if (pid == 0) {
		char *p = small_pages(nr);

		memset(p, 3, nr * PMD_SZ);
		allow_thp(p, nr * PMD_SZ);
		/* Changing user makes the mm non-dumpable: undo that. */
		if (uid && (setgid(uid) || setuid(uid) ||
			    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)))
			p = NULL;
		if (write(fds[1], &p, sizeof(p)) != sizeof(p))
			_exit(1);
		for (;;)
			pause();
	}
	close(fds[1]);
	if (read(fds[0], where, sizeof(*where)) != sizeof(*where) || !*where)
		ksft_exit_fail_msg("target did not start\n");
	close(fds[0]);
	return pid;
}

/*
 * process_madvise(MADV_COLLAPSE) by user @caller_uid on a target running as
 * @target_uid: the errno, or 0.
 */
static int unprivileged_collapse(uid_t caller_uid, uid_t target_uid)
{
	char *where;
	pid_t target = spawn_target(1, &where, target_uid), caller;
	int status = -1;

	collapse_require_core("rust");
	caller = fork();
	if (caller == 0) {
		int pidfd = syscall(SYS_pidfd_open, target, 0);

		if (pidfd < 0 || setgid(caller_uid) || setuid(caller_uid))
			_exit(255);
		_exit(process_collapse(pidfd, where, PMD_SZ) < 0 ? errno : 0);
	}
	waitpid(caller, &status, 0);
	kill(target, SIGKILL);
	waitpid(target, NULL, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

/*
 * Another user's process: no ptrace access, EACCES (mm_access()). The same
 * user's process without CAP_SYS_NICE: EPERM. Both are decided in
 * process_madvise() (mm/madvise.c) before any collapse core is called: no
 * Rust counter moves.
 */
static void test_bad_unprivileged(void)
{
	long long total = rust_stat_total("process_madvise");
	int other = unprivileged_collapse(65534, 0);
	long long moved = rust_stat_total("process_madvise") - total;
	int same = unprivileged_collapse(65534, 65534);

	ksft_test_result(other == EACCES && !moved,
			 "process_madvise: another user's process gives EACCES in mm_access(), before any collapse core (%s; Rust counters +%lld)\n",
			 strerror(other), moved);
	moved = rust_stat_total("process_madvise") - total - moved;
	ksft_test_result(same == EPERM && !moved,
			 "process_madvise: no CAP_SYS_NICE gives EPERM, before any collapse core (%s; Rust counters +%lld)\n",
			 strerror(same), moved);
}

#define EXIT_PMDS 16
#define EXIT_TRIES 5

struct killer {
	pid_t pid;
	int pidfd;
	atomic_int call_done;
	long long base;		/* process_madvise succeed before the call */
	long long at_kill;	/* ... when the kill was sent */
	long long at_death;	/* ... once the target had exited */
	bool dead;
};

/*
 * Kills the target as soon as the Rust core has collapsed one of its PMDs
 * (the call is under way), waits until the target has exited (its pidfd
 * polls readable), and reads the counter again.
 */
static void *kill_during_call(void *arg)
{
	struct killer *k = arg;
	struct pollfd pfd = { .fd = k->pidfd, .events = POLLIN };

	do {
		k->at_kill = rust_stat("process_madvise", "succeed");
	} while (k->at_kill <= k->base && !atomic_load(&k->call_done));
	if (k->at_kill <= k->base)
		return NULL;
	kill(k->pid, SIGKILL);
	k->dead = poll(&pfd, 1, 30000) == 1;
	k->at_death = rust_stat("process_madvise", "succeed");
	return NULL;
}

/*
 * The target is killed while a process_madvise() collapses its memory. The
 * kill provably lands during the call when the Rust core had collapsed a
 * first PMD before the kill and, once the target had exited, had not yet
 * collapsed all EXIT_PMDS (the counter is read after the exit, and counts
 * every PMD before the call returns). Tried up to EXIT_TRIES times until it
 * lands so. The caller's mm reference (mm_access()) keeps the mm's users
 * above zero, so the core's exiting check (any_process) cannot fire: the
 * call must finish every PMD of the orphaned mm, return the whole length,
 * and count EXIT_PMDS successes.
 */
static void test_target_exits(void)
{
	long long any = rust_stat("process_madvise", "any_process");
	static struct killer k;
	long long after = 0;
	bool landed = false, alive;
	int tries, bad = 0, err = 0;
	struct pollfd pfd;
	pthread_t th;
	char *where;
	long ret = 0;

	collapse_require_core("rust");
	for (tries = 1; tries <= EXIT_TRIES; tries++) {
		memset(&k, 0, sizeof(k));
		k.pid = spawn_target(EXIT_PMDS, &where, 0);
		k.pidfd = syscall(SYS_pidfd_open, k.pid, 0);
		if (k.pidfd < 0)
			ksft_exit_fail_perror("pidfd_open");
		pfd = (struct pollfd){ .fd = k.pidfd, .events = POLLIN };
		alive = poll(&pfd, 1, 0) == 0;
		k.base = rust_stat("process_madvise", "succeed");
		if (pthread_create(&th, NULL, kill_during_call, &k))
			ksft_exit_fail_perror("pthread_create");
		ret = process_collapse(k.pidfd, where, EXIT_PMDS * PMD_SZ);
		err = ret < 0 ? errno : 0;
		atomic_store(&k.call_done, 1);
		pthread_join(th, NULL);
		after = rust_stat("process_madvise", "succeed");
		landed = alive && k.dead && k.at_kill > k.base &&
			 k.at_death < k.base + EXIT_PMDS;
		/* Otherwise: done before the kill, or stopped with a clear errno. */
		if (!landed && ret < 0 && err != ESRCH)
			bad++;
		kill(k.pid, SIGKILL);
		waitpid(k.pid, NULL, 0);
		close(k.pidfd);
		if (landed)
			break;
	}
	ksft_test_result(landed && !bad && ret == EXIT_PMDS * PMD_SZ &&
			 after - k.base == EXIT_PMDS,
			 "rust: process_madvise on a target killed mid-call: landed after %d tries (succeed +%lld at the kill, +%lld once it had exited), call returned %ld (%s) of %lu, succeed +%lld, any_process +%lld, %d unexpected errors\n",
			 tries > EXIT_TRIES ? EXIT_TRIES : tries,
			 k.at_kill - k.base, k.at_death - k.base, ret,
			 strerror(err), EXIT_PMDS * PMD_SZ, after - k.base,
			 rust_stat("process_madvise", "any_process") - any, bad);
}

/* ---- Memory ------------------------------------------------------------ */

/*
 * Shrinks every slab cache: frees its empty slabs and, under KASAN, the
 * objects it keeps in quarantine (freed, but not yet reusable), so that
 * SUnreclaim counts what is still allocated.
 */
static void shrink_slabs(void)
{
	DIR *d = opendir("/sys/kernel/slab");
	struct dirent *e;
	char path[300];

	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/kernel/slab/%s/shrink", e->d_name);
		set_str(path, "1");
	}
	if (d)
		closedir(d);
}

#define LEAK_ROUNDS 200

/*
 * Growth of the kernel's unreclaimable slab memory (kB) over LEAK_ROUNDS
 * collapses of one PMD on @core, each after a MADV_DONTNEED of one page
 * split its PMD mapping; LONG_MIN if a collapse failed.
 */
static long slab_growth(const char *core)
{
	char *p = small_pages(1);
	long before;
	size_t pg;
	int n;

	for (pg = 0; pg < PAGES_PER_PMD; pg++)
		p[pg * PAGE_SZ] = 1;
	allow_thp(p, PMD_SZ);
	collapse_require_core(core);
	/* Warm up the caches the path uses before counting. */
	if (madvise(p, PMD_SZ, MADV_COLLAPSE)) {
		munmap(p, PMD_SZ);
		return LONG_MIN;
	}
	shrink_slabs();
	before = meminfo_kb("SUnreclaim");
	for (n = 0; n < LEAK_ROUNDS; n++) {
		madvise(p + PMD_SZ - PAGE_SZ, PAGE_SZ, MADV_DONTNEED);
		if (madvise(p, PMD_SZ, MADV_COLLAPSE)) {
			munmap(p, PMD_SZ);
			return LONG_MIN;
		}
	}
	munmap(p, PMD_SZ);
	shrink_slabs();
	return meminfo_kb("SUnreclaim") - before;
}

/*
 * Collapses leave no kernel memory behind: a leak of even one 4 KiB
 * allocation per collapse would grow the slab by 800 kB here.
 */
static void test_no_leak(void)
{
	long c = slab_growth("c");
	long long ok = rust_stat("madvise", "succeed");
	long rust = slab_growth("rust");
	long long moved = rust_stat("madvise", "succeed") - ok;

	ksft_test_result(rust != LONG_MIN && c != LONG_MIN && rust < 400 &&
			 moved == LEAK_ROUNDS + 1,
			 "memory: %d collapses leave no slab memory behind (growth: rust %ld kB, c %ld kB; succeed +%lld)\n",
			 LEAK_ROUNDS, rust, c, moved);
}

#define FREE_ROUNDS 40

/*
 * Loss of free memory (kB) over FREE_ROUNDS collapses of one PMD of small
 * pages on @core, each range unmapped after its collapse; LONG_MIN if a
 * collapse failed. Every old page must go back to the page allocator,
 * whichever way the core frees it.
 */
static long free_loss(const char *core)
{
	long before;
	size_t pg;
	int n;

	collapse_require_core(core);
	before = meminfo_kb("MemFree");
	for (n = 0; n < FREE_ROUNDS; n++) {
		char *p = small_pages(1);

		for (pg = 0; pg < PAGES_PER_PMD; pg++)
			p[pg * PAGE_SZ] = (char)(n + pg);
		allow_thp(p, PMD_SZ);
		if (madvise(p, PMD_SZ, MADV_COLLAPSE)) {
			munmap(p, PMD_SZ);
			return LONG_MIN;
		}
		munmap(p, PMD_SZ);
	}
	shrink_slabs();
	return before - meminfo_kb("MemFree");
}

/*
 * The old small pages of a collapse are freed: a leak of them would cost
 * FREE_ROUNDS * 2 MiB (80 MiB) of free memory here; per-CPU page lists may
 * hold a few MiB.
 */
static void test_no_page_leak(void)
{
	long c = free_loss("c");
	long long ok = rust_stat("madvise", "succeed");
	long rust = free_loss("rust");
	long long moved = rust_stat("madvise", "succeed") - ok;

	ksft_test_result(rust != LONG_MIN && c != LONG_MIN &&
			 rust < 24 * 1024 && moved == FREE_ROUNDS,
			 "memory: %d collapses of small pages free the old pages (free memory lost: rust %ld kB, c %ld kB; succeed +%lld)\n",
			 FREE_ROUNDS, rust, c, moved);
}

/* ---- Tracepoints ------------------------------------------------------- */

#define TRACEFS "/sys/kernel/tracing/"

static const char *const trace_events[] = {
	"mm_khugepaged_scan_pmd", "mm_collapse_huge_page",
	"mm_collapse_huge_page_isolate", "mm_collapse_huge_page_swapin",
};

/*
 * Enables the collapse events for this process only, or disables them. A
 * filter on the PID, not set_event_pid, which registers scheduler probes:
 * under TCG, patching the scheduler's tracepoint call has crashed the guest
 * (scripts/guest/init).
 */
static int trace_collapse_events(bool on)
{
	char enable[128], filter_path[128], filter[48];
	size_t i;

	if (access(TRACEFS "trace", F_OK) &&
	    mount("nodev", "/sys/kernel/tracing", "tracefs", 0, NULL))
		return -1;
	snprintf(filter, sizeof(filter), "common_pid == %d", getpid());
	for (i = 0; i < ARRAY_SIZE(trace_events); i++) {
		snprintf(enable, sizeof(enable),
			 TRACEFS "events/huge_memory/%s/enable", trace_events[i]);
		snprintf(filter_path, sizeof(filter_path),
			 TRACEFS "events/huge_memory/%s/filter", trace_events[i]);
		/* The filter is in place for as long as the event is on. */
		if (on ? write_str(filter_path, filter) || write_str(enable, "1") :
			 write_str(enable, "0") || write_str(filter_path, "0"))
			return -1;
	}
	return write_str(TRACEFS "tracing_on", on ? "1" : "0");
}

/*
 * Reads the trace buffer and empties it: one line per collapse event, from
 * the event's name on, without the fields that differ between runs (the mm
 * and the pfns).
 */
static void trace_take(char *out, size_t len)
{
	FILE *f = fopen(TRACEFS "trace", "r");
	char line[512];
	size_t used = 0;
	int fd;

	out[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *ev = strstr(line, ": mm_"), *tok, *save;

		if (!ev || line[0] == '#')
			continue;
		for (tok = strtok_r(ev + 2, " ,\n", &save); tok;
		     tok = strtok_r(NULL, " ,\n", &save)) {
			if (!strncmp(tok, "mm=", 3) || !strncmp(tok, "scan_pfn=", 9))
				continue;
			used += snprintf(out + used, len > used ? len - used : 0,
					 "%s ", tok);
		}
		used += snprintf(out + used, len > used ? len - used : 0, "\n");
	}
	fclose(f);
	fd = open(TRACEFS "trace", O_WRONLY | O_TRUNC);
	if (fd >= 0)
		close(fd);
}

/* Both cores fire upstream's events, in the same order, with the same fields. */
static void test_tracepoints(void)
{
	static const char scan_ok[] =
		"mm_khugepaged_scan_pmd: referenced=0 none_or_zero=128 status=succeeded";
	static char got[2][4096];
	long long ok = rust_stat("madvise", "succeed");
	unsigned int c;
	size_t pg;
	int ret[2];

	if (trace_collapse_events(true)) {
		trace_collapse_events(false);
		ksft_test_result_fail("tracepoints: cannot enable the huge_memory events\n");
		return;
	}
	for (c = 0; c < 2; c++) {
		char *p = small_pages(1);
		static char shadow[PMD_SZ];

		/* Every fourth page left empty: none_or_zero is 128. */
		for (pg = 0; pg < PAGES_PER_PMD; pg++)
			if (pg % 4)
				fill_page(p, shadow, pg, 13);
		allow_thp(p, PMD_SZ);
		collapse_require_core(cores[c]);
		trace_take(got[c], sizeof(got[c]));
		ret[c] = madvise(p, PMD_SZ, MADV_COLLAPSE);
		trace_take(got[c], sizeof(got[c]));
		munmap(p, PMD_SZ);
	}
	trace_collapse_events(false);
	ksft_print_msg("rust events:\n%s", got[0]);
	ksft_print_msg("c events:\n%s", got[1]);
	ksft_test_result(!ret[0] && !ret[1] && rust_stat("madvise", "succeed") > ok &&
			 strstr(got[0], "mm_collapse_huge_page: isolated=1 status=succeeded") &&
			 strstr(got[0], "mm_collapse_huge_page_isolate: none_or_zero=128") &&
			 strstr(got[0], scan_ok) &&
			 !strcmp(got[0], got[1]),
			 "tracepoints: the Rust core fires upstream's collapse events with the same fields as C\n");
}

/* ---- In place: a PMD-sized folio mapped by PTEs -------------------------- */

#define IN_PLACE_PMDS 2

/*
 * Writes @shadow's pattern to [p, p + IN_PLACE_PMDS PMDs), collapses it into
 * PMD-sized folios, then splits each PMD mapping (an mprotect() of one page,
 * undone): every PTE maps its page of one PMD-sized folio. Records each
 * folio's pfn.
 */
static bool pte_mapped_thps(char *p, char *shadow, unsigned long *pfn)
{
	size_t len = IN_PLACE_PMDS * PMD_SZ, i;
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	int kpageflags = open("/proc/kpageflags", O_RDONLY);
	int orders[10] = { 0 };
	bool huge, split = true;

	if (pagemap < 0 || kpageflags < 0)
		ksft_exit_fail_perror("open pagemap/kpageflags");
	for (i = 0; i < IN_PLACE_PMDS * PAGES_PER_PMD; i++)
		fill_page(p, shadow, i, 77);
	allow_thp(p, len);
	huge = !madvise(p, len, MADV_COLLAPSE) &&
	       check_huge_anon(p, len, IN_PLACE_PMDS, PMD_SZ);
	for (i = 0; i < IN_PLACE_PMDS; i++) {
		char *at = p + i * PMD_SZ;

		if (mprotect(at, PAGE_SZ, PROT_READ) ||
		    mprotect(at, PAGE_SZ, PROT_READ | PROT_WRITE))
			ksft_exit_fail_perror("mprotect");
		pfn[i] = pagemap_get_pfn(pagemap, at);
		split &= pagemap_get_pfn(pagemap, at + PMD_SZ - PAGE_SZ) ==
			 pfn[i] + PAGES_PER_PMD - 1;
	}
	if (gather_folio_orders(p, len, pagemap, kpageflags, orders, 10))
		orders[9] = -1;
	close(pagemap);
	close(kpageflags);
	if (!huge || !split || orders[9] != IN_PLACE_PMDS ||
	    !check_huge_anon(p, len, 0, PMD_SZ)) {
		ksft_print_msg("layout: collapsed %d, in order %d, 2M folios %d, PTE-mapped %d\n",
			       huge, split, orders[9],
			       check_huge_anon(p, len, 0, PMD_SZ));
		return false;
	}
	return true;
}

/*
 * The Rust core maps a PTE-mapped PMD-sized folio with the PMD where it is:
 * no allocation, no copy, the same pfn, counted as in_place. The C core (as
 * upstream) copies it into a new folio. A folio shared with a child after
 * fork is not exclusive to the parent: the Rust core copies it too, and the
 * child's view of the old pages stays.
 */
static void test_in_place(const char *core, bool shared)
{
	static struct rust_stats before, after;
	size_t len = IN_PLACE_PMDS * PMD_SZ, i;
	unsigned long pfn[IN_PLACE_PMDS], now[IN_PLACE_PMDS];
	char *p = mmap_pmd_aligned(IN_PLACE_PMDS, PROT_READ | PROT_WRITE);
	char *shadow = malloc(len);
	bool rust = !strcmp(core, "rust");
	int pagemap, ret, err, kept = 0, child_ok = 0, status;
	long long in_place, in_place_read, ok;
	pid_t child = -1;
	bool huge, same, read;

	if (!p || !shadow)
		ksft_exit_fail_perror("mmap/malloc");
	if (!pte_mapped_thps(p, shadow, pfn)) {
		ksft_test_result_fail("%s: in place%s: no PTE-mapped PMD-sized folios\n",
				      core, shared ? ", shared after fork" : "");
		goto out;
	}
	if (shared) {
		child = fork();
		if (child < 0)
			ksft_exit_fail_perror("fork");
		if (child == 0) {
			/* Until the parent has collapsed and written: the old pages stay. */
			raise(SIGSTOP);
			_exit(memcmp(p, shadow, len) ? 1 : 0);
		}
		waitpid(child, &status, WUNTRACED);
	}
	collapse_require_core(core);
	rust_stats_read("madvise", &before);
	ret = madvise(p, len, MADV_COLLAPSE);
	err = errno;
	rust_stats_read("madvise", &after);
	huge = check_huge_anon(p, len, IN_PLACE_PMDS, PMD_SZ);
	same = !memcmp(p, shadow, len);
	pagemap = open("/proc/self/pagemap", O_RDONLY);
	if (pagemap < 0)
		ksft_exit_fail_perror("open pagemap");
	for (i = 0; i < IN_PLACE_PMDS; i++) {
		now[i] = pagemap_get_pfn(pagemap, p + i * PMD_SZ);
		kept += now[i] == pfn[i];
	}
	close(pagemap);
	if (child > 0) {
		/* The parent's writes go to its own pages. */
		memset(p, 0x5a, len);
		kill(child, SIGCONT);
		waitpid(child, &status, 0);
		child_ok = WIFEXITED(status) && !WEXITSTATUS(status);
	}
	in_place = rust_stats_delta(&before, &after, "in_place");
	in_place_read = rust_stats_delta(&before, &after, "in_place_read");
	ok = rust_stats_delta(&before, &after, "succeed");
	/* Under the mmap read lock with rust_switch "read", else write-locked. */
	read = !strcmp(switch_mode, "read");
	if (rust && !shared)
		ksft_test_result(!ret && huge && same && kept == IN_PLACE_PMDS &&
				 in_place == IN_PLACE_PMDS && ok == IN_PLACE_PMDS &&
				 in_place_read == (read ? IN_PLACE_PMDS : 0),
				 "rust: in place%s%s%s: each PTE-mapped PMD-sized folio mapped with its PMD where it is (ret %d %s, huge %d, same %d, pfn kept %d of %d, in_place +%lld, of them under the mmap read lock +%lld, succeed +%lld)\n",
				 read ? "" : " (rust_switch ", read ? "" : switch_mode,
				 read ? "" : ")",
				 ret, ret ? strerror(err) : "", huge, same, kept,
				 IN_PLACE_PMDS, in_place, in_place_read, ok);
	else if (rust)
		ksft_test_result(!ret && huge && same && !kept && !in_place &&
				 ok == IN_PLACE_PMDS && child_ok,
				 "rust: in place, shared after fork: copied, not remapped (ret %d %s, huge %d, same %d, pfn kept %d, in_place +%lld, succeed +%lld, child's view kept %d)\n",
				 ret, ret ? strerror(err) : "", huge, same, kept,
				 in_place, ok, child_ok);
	else
		ksft_test_result(!ret && huge && same && !kept &&
				 (!shared || child_ok),
				 "c: in place%s: copied into new folios, as upstream (ret %d %s, huge %d, same %d, pfn kept %d, child's view kept %d)\n",
				 shared ? ", shared after fork" : "", ret,
				 ret ? strerror(err) : "", huge, same, kept,
				 shared ? child_ok : 1);
out:
	if (child > 0 && !child_ok) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	free(shadow);
	munmap(p, len);
}

/* ---- Pagemap bits after an early copy ------------------------------------ */

/* The pagemap bits of an entry that a collapse must treat as the C core does. */
#define PM_KEPT (PM_SOFT_DIRTY | PM_MMAP_EXCLUSIVE | PM_UFFD_WP | PM_PRESENT)
/* Half the pages of a PMD, as an int. */
#define HALF_PMD ((int)PAGES_PER_PMD / 2)

/* The PM_KEPT bits of each page of the PMD range at @p, into @bits. */
static void pagemap_bits(char *p, uint64_t *bits)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	ssize_t len = PAGES_PER_PMD * sizeof(*bits);
	size_t i;

	if (fd < 0 || pread(fd, bits, len, (uintptr_t)p / PAGE_SZ * sizeof(*bits)) != len)
		ksft_exit_fail_perror("pagemap");
	close(fd);
	for (i = 0; i < PAGES_PER_PMD; i++)
		bits[i] &= PM_KEPT;
}

/* How many pages of @bits have @bit set. */
static int bits_count(const uint64_t *bits, uint64_t bit)
{
	int i, n = 0;

	for (i = 0; i < (int)PAGES_PER_PMD; i++)
		n += !!(bits[i] & bit);
	return n;
}

/* How many pages have other bits in @a than in @b. */
static int bits_differ(const uint64_t *a, const uint64_t *b)
{
	int i, n = 0;

	for (i = 0; i < (int)PAGES_PER_PMD; i++)
		n += a[i] != b[i];
	return n;
}

/* How many pages of @bits have each bit, as text in @buf. */
static const char *bits_str(const uint64_t *bits, char *buf, size_t len)
{
	snprintf(buf, len, "soft-dirty %d exclusive %d uffd-wp %d present %d",
		 bits_count(bits, PM_SOFT_DIRTY), bits_count(bits, PM_MMAP_EXCLUSIVE),
		 bits_count(bits, PM_UFFD_WP), bits_count(bits, PM_PRESENT));
	return buf;
}

/*
 * MADV_COLLAPSE of the PMD range at @p on @core: the Rust core's madvise
 * counters before and after into @s0 and @s1, the PM_KEPT bits of each page
 * after into @after. Returns 0 or the call's errno.
 */
static int collapse_read_bits(const char *core, char *p, struct rust_stats *s0,
			      struct rust_stats *s1, uint64_t *after)
{
	int ret, err;

	collapse_require_core(core);
	rust_stats_read("madvise", s0);
	ret = madvise(p, PMD_SZ, MADV_COLLAPSE);
	err = errno;
	rust_stats_read("madvise", s1);
	pagemap_bits(p, after);
	return ret ? err : 0;
}

/*
 * A fresh PMD of small pages, all written (@seed), the soft-dirty bits
 * cleared (clear_refs 4, which also write-protects every entry), then the even
 * pages written again (@seed + 1): 256 pages soft-dirty and writable, 256
 * clean and read-only. @shadow follows.
 */
static char *softdirty_layout(char *shadow, uint64_t seed)
{
	char *p = small_pages(1);
	size_t pg;

	for (pg = 0; pg < PAGES_PER_PMD; pg++)
		fill_page(p, shadow, pg, seed);
	allow_thp(p, PMD_SZ);
	clear_softdirty();
	for (pg = 0; pg < PAGES_PER_PMD; pg += 2)
		fill_page(p, shadow, pg, seed + 1);
	return p;
}

/*
 * A collapse copied early: the Rust core's entries, read through pagemap,
 * must carry the same soft-dirty, exclusive, uffd-wp and present bits as the
 * C core's after a collapse of the same layout.
 */
static void test_pagemap_collapsed(void)
{
	static uint64_t before[2][PAGES_PER_PMD], after[2][PAGES_PER_PMD];
	static struct rust_stats s0, s1;
	static char shadow[PMD_SZ];
	struct rust_paths d = { 0 };
	int ret[2], err[2], sd[2];
	char b[2][96], a[2][96];
	bool huge[2], same[2];
	unsigned int c;

	for (c = 0; c < 2; c++) {
		char *p = softdirty_layout(shadow, 40 + 2 * c);

		pagemap_bits(p, before[c]);
		sd[c] = bits_count(before[c], PM_SOFT_DIRTY);
		err[c] = collapse_read_bits(cores[c], p, &s0, &s1, after[c]);
		ret[c] = err[c] ? -1 : 0;
		huge[c] = check_huge_anon(p, PMD_SZ, 1, PMD_SZ);
		same[c] = !memcmp(p, shadow, PMD_SZ);
		if (c == 0)
			d = rust_paths_delta(&s0, &s1);
		bits_str(before[c], b[c], sizeof(b[c]));
		bits_str(after[c], a[c], sizeof(a[c]));
		munmap(p, PMD_SZ);
	}
	ksft_test_result(!ret[0] && !ret[1] && huge[0] && huge[1] && same[0] && same[1] &&
			 sd[0] == HALF_PMD && sd[1] == HALF_PMD &&
			 !bits_differ(before[0], before[1]) &&
			 !bits_differ(after[0], after[1]) &&
			 d.succeed == 1 && d.early == 1 && !d.locked,
			 "rust: pagemap: after a collapse copied early, the bits of every page equal the C core's (rust: %s, huge %d, same %d, succeed +%lld, copied early +%lld, copied locked +%lld, [%s] -> [%s]; c: %s, huge %d, same %d, [%s] -> [%s]; %d pages differ from C's after)\n",
			 ret[0] ? strerror(err[0]) : "collapsed", huge[0], same[0],
			 d.succeed, d.early, d.locked, b[0], a[0],
			 ret[1] ? strerror(err[1]) : "collapsed", huge[1], same[1],
			 b[1], a[1], bits_differ(after[0], after[1]));
}

/* The pages of case B: written by the trigger, pinned, probed, written last. */
#define B_X 10
#define B_Y 100
#define B_Z 200
#define B_W 301
/* Tries of case B on the Rust core until the pin lands during the copy. */
#define B_TRIES 5

/* Minor and major faults of the calling thread so far. */
static long thread_faults(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_THREAD, &ru))
		ksft_exit_fail_perror("getrusage");
	return ru.ru_minflt + ru.ru_majflt;
}

/* What the trigger thread of case B shares with the main thread. */
struct wp_trigger {
	char *x, *y;
	int gup_fd;
	atomic_int ready, stop, call_done;
	atomic_int pinned;	/* 1: during the call, 2: after it returned */
	int err;		/* of the pin */
};

/*
 * Writes page x (written since clear_refs: writable) with what it holds,
 * over and over, until a write faults: the Rust core's early copy has just
 * write-protected the range (nothing else write-protects it meanwhile), and
 * its copy runs. Then pins page y read-only and long-term at once (no
 * fault: the page is exclusive), before the switch: its isolation must find
 * the pin (page_count, EAGAIN), after the early copy.
 */
static void *pin_on_wp(void *arg)
{
	struct wp_trigger *t = arg;
	uint64_t *x = (uint64_t *)t->x;
	uint64_t v = __atomic_load_n(x, __ATOMIC_RELAXED);
	long base;

	__atomic_store_n(x, v, __ATOMIC_RELAXED);
	/* The first call may fault on its own stack (clear_refs protected it). */
	thread_faults();
	base = thread_faults();
	atomic_store(&t->ready, 1);
	while (!atomic_load(&t->stop)) {
		__atomic_store_n(x, v, __ATOMIC_RELAXED);
		if (thread_faults() == base)
			continue;
		t->err = gup_pin(t->gup_fd, t->y, false);
		if (!t->err)
			atomic_store(&t->pinned, atomic_load(&t->call_done) ? 2 : 1);
		break;
	}
	return NULL;
}

/* One try of case B on one core, and what it saw. */
struct failed_try {
	uint64_t before[PAGES_PER_PMD], after[PAGES_PER_PMD], last[PAGES_PER_PMD];
	int ret, err, pinned, faults, tries;
	bool huge, same;
	long long page_count, succeed;
};

/*
 * Case B on @core: softdirty_layout(), a long-term pin of page B_Y (on the
 * Rust core taken while its early copy runs, by pin_on_wp(); on the C core,
 * which makes no early copy, before the call), MADV_COLLAPSE. Then writes
 * page B_Z (written, so writable before the call) with what it holds,
 * counting the faults, unpins, and writes clean page B_W. Returns whether
 * the try is one to judge: on the Rust core, the collapse failed with EAGAIN
 * after the pin was taken during the call, and the write to B_Z faulted
 * (the early copy had write-protected it).
 */
static bool failed_try(const char *core, int gup, struct failed_try *ft, uint64_t seed)
{
	static struct rust_stats s0, s1;
	static char shadow[PMD_SZ];
	bool rust = !strcmp(core, "rust");
	struct wp_trigger t;
	pthread_t th;
	uint64_t z;
	long f;
	char *p;

	memset(&t, 0, sizeof(t));
	p = softdirty_layout(shadow, seed);
	pagemap_bits(p, ft->before);
	t.x = p + B_X * PAGE_SZ;
	t.y = p + B_Y * PAGE_SZ;
	t.gup_fd = gup;
	collapse_require_core(core);
	if (rust) {
		if (pthread_create(&th, NULL, pin_on_wp, &t))
			ksft_exit_fail_perror("pthread_create");
		while (!atomic_load(&t.ready))
			usleep(100);
	} else {
		t.err = gup_pin(gup, t.y, false);
		atomic_store(&t.pinned, !t.err);
	}
	rust_stats_read("madvise", &s0);
	ft->ret = madvise(p, PMD_SZ, MADV_COLLAPSE);
	ft->err = errno;
	atomic_store(&t.call_done, 1);
	rust_stats_read("madvise", &s1);
	if (rust) {
		atomic_store(&t.stop, 1);
		pthread_join(th, NULL);
	}
	if (t.err)
		ksft_print_msg("%s: long-term gup_test pin: %s\n", core, strerror(-t.err));
	ft->pinned = atomic_load(&t.pinned);
	ft->huge = check_huge_anon(p, PMD_SZ, 1, PMD_SZ);
	pagemap_bits(p, ft->after);
	memcpy(&z, shadow + B_Z * PAGE_SZ, sizeof(z));
	thread_faults();
	f = thread_faults();
	__atomic_store_n((uint64_t *)(p + B_Z * PAGE_SZ), z, __ATOMIC_RELAXED);
	ft->faults = thread_faults() - f;
	if (ft->pinned && ioctl(gup, PIN_LONGTERM_TEST_STOP))
		ksft_exit_fail_perror("PIN_LONGTERM_TEST_STOP");
	fill_page(p, shadow, B_W, seed + 2);
	pagemap_bits(p, ft->last);
	ft->same = !memcmp(p, shadow, PMD_SZ);
	ft->page_count = rust_stats_delta(&s0, &s1, "page_count");
	ft->succeed = rust_stats_delta(&s0, &s1, "succeed");
	munmap(p, PMD_SZ);
	return !rust || (ft->ret && ft->err == EAGAIN && ft->pinned == 1 && ft->faults == 1);
}

/*
 * A collapse that fails after the early copy leaves the entries read-only
 * (as a fork does), but their pagemap bits as they were; a write afterwards
 * faults, and sets the soft-dirty bit of a clean page. Both cores, compared.
 * Two results.
 */
static void test_pagemap_failed(void)
{
	static struct failed_try ft[2];
	int gup = open("/sys/kernel/debug/gup_test", O_RDWR);
	char b[2][96], a[2][96];
	unsigned int c;
	bool ok[2];
	int sd[2];

	if (gup < 0) {
		ksft_test_result_skip("rust: pagemap: failed collapse: no gup_test: %s\n",
				      strerror(errno));
		ksft_test_result_skip("rust: pagemap: write after failed collapse: no gup_test\n");
		return;
	}
	for (c = 0; c < 2; c++) {
		for (ft[c].tries = 1; ft[c].tries <= B_TRIES; ft[c].tries++)
			if (failed_try(cores[c], gup, &ft[c], 50 + 4 * c))
				break;
		if (ft[c].tries > B_TRIES)
			ft[c].tries = B_TRIES;
		bits_str(ft[c].before, b[c], sizeof(b[c]));
		bits_str(ft[c].last, a[c], sizeof(a[c]));
		sd[c] = bits_count(ft[c].before, PM_SOFT_DIRTY);
	}
	close(gup);
	/*
	 * Rust: the pin came while the early copy ran (1), the switch refused
	 * it (page_count), and the entries stayed write-protected (the write
	 * to a page written before the call faulted once). C: pinned before
	 * the call, no write-protection (no fault).
	 */
	ok[0] = ft[0].ret && ft[0].err == EAGAIN && ft[0].pinned == 1 && !ft[0].huge &&
		ft[0].page_count == 1 && !ft[0].succeed && ft[0].faults == 1 &&
		!bits_differ(ft[0].before, ft[0].after);
	ok[1] = ft[1].ret && ft[1].err == EAGAIN && ft[1].pinned == 1 && !ft[1].huge &&
		!ft[1].faults && !bits_differ(ft[1].before, ft[1].after);
	ksft_test_result(ok[0] && ok[1] && sd[0] == HALF_PMD &&
			 sd[1] == HALF_PMD &&
			 !bits_differ(ft[0].before, ft[1].before) &&
			 !bits_differ(ft[0].after, ft[1].after),
			 "rust: pagemap: a collapse failing after the early copy (pin taken while it copied) leaves every page's bits as they were, as C's failed collapse does (rust: %s after %d tries, pin %s, page_count +%lld, succeed +%lld, %d pages changed, a write to a written page faulted %d times; c: %s, pin %s, %d pages changed, %d faults; [%s]; %d pages differ from C's)\n",
			 ft[0].ret ? strerror(ft[0].err) : "collapsed", ft[0].tries,
			 ft[0].pinned == 1 ? "during the call" :
			 ft[0].pinned ? "after the call" : "not taken",
			 ft[0].page_count, ft[0].succeed,
			 bits_differ(ft[0].before, ft[0].after), ft[0].faults,
			 ft[1].ret ? strerror(ft[1].err) : "collapsed",
			 ft[1].pinned ? "taken before" : "not taken",
			 bits_differ(ft[1].before, ft[1].after), ft[1].faults, b[0],
			 bits_differ(ft[0].after, ft[1].after));
	ksft_test_result(ok[0] && ok[1] && ft[0].same && ft[1].same &&
			 (ft[0].last[B_W] & PM_SOFT_DIRTY) && (ft[1].last[B_W] & PM_SOFT_DIRTY) &&
			 bits_count(ft[0].last, PM_SOFT_DIRTY) == HALF_PMD + 1 &&
			 !bits_differ(ft[0].last, ft[1].last),
			 "rust: pagemap: after the failed collapse and the unpin, a write to a clean page sets its soft-dirty bit and no other, as on C (soft-dirty %d -> %d, every byte kept %d, [%s]; c: %d -> %d, every byte kept %d, [%s]; %d pages differ from C's)\n",
			 sd[0], bits_count(ft[0].last, PM_SOFT_DIRTY), ft[0].same, a[0],
			 sd[1], bits_count(ft[1].last, PM_SOFT_DIRTY), ft[1].same, a[1],
			 bits_differ(ft[0].last, ft[1].last));
}

/*
 * uffd-wp: half the pages of a range registered for write-protect faults are
 * write-protected with UFFDIO_WRITEPROTECT. Both cores refuse the range at
 * the scan (upstream's SCAN_PTE_UFFD, which madvise_collapse_errno() turns
 * into EINVAL; the Rust core's pte_uffd), before any early copy, and every
 * page keeps its bits, uffd-wp included.
 */
static void test_pagemap_uffd_wp(void)
{
	static uint64_t before[2][PAGES_PER_PMD], after[2][PAGES_PER_PMD];
	static struct rust_stats s0, s1;
	static char shadow[PMD_SZ];
	long long uffd_d = 0, ok_d = 0;
	int ret[2], err[2], wp[2];
	bool huge[2], same[2];
	char b[2][96];
	unsigned int c;
	size_t pg;

	for (c = 0; c < 2; c++) {
		struct uffdio_api api = { .api = UFFD_API };
		int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
		char *p;

		if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
			ksft_test_result_skip("rust: pagemap: uffd-wp: no userfaultfd: %s\n",
					      strerror(errno));
			return;
		}
		if (!(api.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)) {
			ksft_test_result_skip("rust: pagemap: uffd-wp: no uffd-wp faults\n");
			close(uffd);
			return;
		}
		p = small_pages(1);
		for (pg = 0; pg < PAGES_PER_PMD; pg++)
			fill_page(p, shadow, pg, 60 + 2 * c);
		allow_thp(p, PMD_SZ);
		if (uffd_register(uffd, p, PMD_SZ, false, true, false))
			ksft_exit_fail_perror("UFFDIO_REGISTER_MODE_WP");
		for (pg = 1; pg < PAGES_PER_PMD; pg += 2) {
			struct uffdio_writeprotect w = {
				.range = {
					.start = (unsigned long)(p + pg * PAGE_SZ),
					.len = PAGE_SZ,
				},
				.mode = UFFDIO_WRITEPROTECT_MODE_WP,
			};

			if (ioctl(uffd, UFFDIO_WRITEPROTECT, &w))
				ksft_exit_fail_perror("UFFDIO_WRITEPROTECT");
		}
		pagemap_bits(p, before[c]);
		wp[c] = bits_count(before[c], PM_UFFD_WP);
		err[c] = collapse_read_bits(cores[c], p, &s0, &s1, after[c]);
		ret[c] = err[c] ? -1 : 0;
		huge[c] = check_huge_anon(p, PMD_SZ, 1, PMD_SZ);
		/* Reads only: a write to a write-protected page would wait. */
		same[c] = !memcmp(p, shadow, PMD_SZ);
		if (c == 0) {
			uffd_d = rust_stats_delta(&s0, &s1, "pte_uffd");
			ok_d = rust_stats_delta(&s0, &s1, "succeed");
		}
		bits_str(after[c], b[c], sizeof(b[c]));
		close(uffd);
		munmap(p, PMD_SZ);
	}
	ksft_test_result(ret[0] && err[0] == EINVAL && ret[1] && err[1] == EINVAL &&
			 !huge[0] && !huge[1] && same[0] && same[1] &&
			 wp[0] == HALF_PMD && wp[1] == HALF_PMD &&
			 !bits_differ(before[0], after[0]) && !bits_differ(before[1], after[1]) &&
			 !bits_differ(after[0], after[1]) && uffd_d == 1 && !ok_d,
			 "rust: pagemap: uffd-wp on half the pages: refused with EINVAL on both cores, every page's bits kept, as C's (rust: %s, pte_uffd +%lld, succeed +%lld, uffd-wp %d, %d pages changed, huge %d, same %d, [%s]; c: %s, uffd-wp %d, %d pages changed, huge %d, same %d, [%s]; %d pages differ from C's)\n",
			 ret[0] ? strerror(err[0]) : "collapsed", uffd_d, ok_d, wp[0],
			 bits_differ(before[0], after[0]), huge[0], same[0], b[0],
			 ret[1] ? strerror(err[1]) : "collapsed", wp[1],
			 bits_differ(before[1], after[1]), huge[1], same[1], b[1],
			 bits_differ(after[0], after[1]));
}

/*
 * Cases A, B and C of the pagemap bits (four results), skipped if the kernel
 * does not track soft-dirty bits.
 */
static void test_pagemap(void)
{
	if (!softdirty_supported()) {
		ksft_test_result_skip("rust: pagemap: collapsed: no CONFIG_MEM_SOFT_DIRTY\n");
		ksft_test_result_skip("rust: pagemap: failed collapse: no soft-dirty tracking\n");
		ksft_test_result_skip("rust: pagemap: the write after it: no soft-dirty\n");
	} else {
		test_pagemap_collapsed();
		test_pagemap_failed();
	}
	test_pagemap_uffd_wp();
}

/* Whatever a test left behind: no widened switch, the default switch. */
static void reset_switch_knobs(void)
{
	collapse_set_switch_delay(0);
	collapse_set_switch("read");
}

int main(int argc, char **argv)
{
	char orig[16], thp_enabled[32];
	bool races_only = argc > 1 && !strcmp(argv[1], "-r");
	unsigned int c;
	int l;

	if (argc > 1 && !races_only) {
		fprintf(stderr, "usage: %s [-r]\n", argv[0]);
		return KSFT_FAIL;
	}
	collapse_test_start(orig, sizeof(orig), thp_enabled, sizeof(thp_enabled));
	atexit(reset_switch_knobs);
	if (races_only) {
		/* The KCSAN boot: the racers against the Rust core, no more. */
		ksft_set_plan(NR_RACERS + 7);
		for (l = 0; l < NR_RACERS; l++)
			test_race(l);
		test_move_during_switch();
		test_readers_during_switch();
		test_race_force_write();
		test_race_mremap();
		test_race_invalidated_once();
		test_race_refault_then_zap();
		test_same_range_twice("rust");
		collapse_set_core(orig);
		set_str(THP_SYSFS "enabled", thp_enabled);
		ksft_finished();
	}
	ksft_set_plan(2 * NR_LAYOUTS + 4 + 2 + 4 + 4 + NR_RACERS + 7 + 2 + 15);

	for (c = 0; c < 2; c++)
		for (l = 0; l < NR_LAYOUTS; l++)
			test_integrity(cores[c], l);
	test_switch_modes();
	for (c = 0; c < 2; c++)
		test_fork_child_view(cores[c]);
	for (c = 0; c < 2; c++) {
		test_in_place(cores[c], false);
		test_in_place(cores[c], true);
	}
	test_pagemap();

	for (l = 0; l < NR_RACERS; l++)
		test_race(l);
	test_move_during_switch();
	test_readers_during_switch();
	test_race_force_write();
	test_race_mremap();
	test_race_invalidated_once();
	test_race_refault_then_zap();
	test_race_khugepaged();
	for (c = 0; c < 2; c++)
		test_same_range_twice(cores[c]);

	test_bad_ranges();
	test_bad_hugetlb();
	test_bad_special();
	test_bad_thp_disabled();
	for (c = 0; c < 2; c++)
		test_mlocked(cores[c]);
	test_uffd_hole();
	test_bad_unprivileged();
	test_target_exits();
	test_tracepoints();
	test_no_leak();
	test_no_page_leak();

	collapse_set_core(orig);
	set_str(THP_SYSFS "enabled", thp_enabled);
	ksft_finished();
}
