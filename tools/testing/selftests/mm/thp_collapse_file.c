// SPDX-License-Identifier: GPL-2.0
/*
 * MADV_COLLAPSE of shmem and file memory through the Rust and the C collapse
 * cores: data integrity (through the mapping and through read(2)), races with
 * truncation, hole punching, write(2) and munmap of another mapping of the
 * file, a private CoW mapping, userfaultfd minor faults, and bad input.
 *
 *   thp_collapse_file DIR      (as root; DIR on XFS, e.g. /mnt/xfs; swap)
 *
 * Shmem cases use memfds. File cases use a file in DIR, which must be on a
 * filesystem with PMD-sized large folios (XFS); the program fails without
 * it. The "partly swapped out" shmem layout checks in smaps that pages were
 * swapped out before the collapse. Every race runs on a memfd and on a file
 * in DIR, while a racer runs (the whole time, or once a round where that
 * would fail every round by design): at least half the rounds must collapse
 * (each round splits the new folio again, so that every round collapses
 * base pages) and every page must hold its last write. Cases on the Rust
 * core check that its counters moved, so a pass cannot come from the C core;
 * a refusal at the core's entry, which no counter counts, is shown to come
 * from the Rust core by an anonymous PMD before it in the same call, which
 * the Rust core collapses.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest.h"
#include "thp_collapse_mem.h"

#define NR_PMDS 2
#define LEN (NR_PMDS * PMD_SZ)
#define RACE_ROUNDS 8

static const char *const cores[] = { "rust", "c" };
static const char *dir;

/* The word at offset @w of page @pg, for generation @gen. */
static uint64_t pattern(uint64_t gen, size_t pg, size_t w)
{
	return (gen << 48) ^ ((uint64_t)pg << 12) ^ w ^ 0xa5a5a5a500000000ULL;
}

static void fill_buf(char *buf, size_t pg, uint64_t gen)
{
	uint64_t *a = (uint64_t *)buf;
	size_t w;

	for (w = 0; w < PAGE_SZ / 8; w++)
		a[w] = pattern(gen, pg, w);
}

/* Page @pg of the expected contents: @gen[pg] written, or zeroes for 0. */
static bool page_ok(const char *p, size_t pg, uint64_t gen)
{
	const uint64_t *a = (const uint64_t *)p;
	size_t w;

	for (w = 0; w < PAGE_SZ / 8; w++)
		if (a[w] != (gen ? pattern(gen, pg, w) : 0))
			return false;
	return true;
}

/* Writes generation @gen of page @pg with pwrite(). */
static int write_page(int fd, size_t pg, uint64_t gen)
{
	char buf[PAGE_SZ];

	fill_buf(buf, pg, gen);
	return pwrite(fd, buf, PAGE_SZ, pg * PAGE_SZ) == PAGE_SZ ? 0 : -1;
}

/* Pages whose contents differ from @gen, through the mapping and read(2). */
static size_t bad_pages(int fd, const char *p, const uint64_t *gen, size_t nr)
{
	char buf[PAGE_SZ];
	size_t pg, bad = 0;

	for (pg = 0; pg < nr; pg++) {
		if (!page_ok(p + pg * PAGE_SZ, pg, gen[pg]))
			bad++;
		else if (pread(fd, buf, PAGE_SZ, pg * PAGE_SZ) != PAGE_SZ ||
			 !page_ok(buf, pg, gen[pg]))
			bad++;
	}
	return bad;
}

/* A PMD-aligned MADV_HUGEPAGE mapping of @len bytes of @fd, or NULL. */
static char *map_aligned(int fd, size_t len, int prot, int flags)
{
	char *p = mem_map_aligned(fd, len, prot, flags);

	if (p)
		madvise(p, len, MADV_HUGEPAGE);
	return p;
}

static int shmem_fd(size_t len)
{
	int fd = memfd_create("thp_collapse_file", 0);

	if (fd < 0 || ftruncate(fd, len))
		ksft_exit_fail_perror("memfd");
	return fd;
}

/* A new file of @len bytes in @dir, opened read-write and already unlinked. */
static int dir_fd(size_t len)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/thp_collapse_file.XXXXXX", dir);
	fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, len))
		ksft_exit_fail_perror("file");
	unlink(path);
	return fd;
}

/* Whether every PMD of [@p, @p + @len) is PMD-mapped (smaps). */
static bool pmd_mapped(char *p, size_t len, bool shmem)
{
	int nr = len / PMD_SZ;

	return shmem ? check_huge_shmem(p, len, nr, PMD_SZ) :
		       check_huge_file(p, len, nr, PMD_SZ);
}

/* Every fourth page of the second half of each PMD left as a hole. */
static bool is_hole(size_t pg)
{
	return pg % PAGES_PER_PMD >= PAGES_PER_PMD / 2 && pg % 4 == 0;
}

enum layout { FULL, SPARSE, SWAPPED, DIRTY, NR_LAYOUTS };
static const char *const layout_name[] = {
	"fully populated", "with holes", "partly swapped out",
	"dirty through the mapping",
};

/*
 * Fills a file (shmem or @dir), maps it, collapses it and compares every
 * byte through the mapping and through read(2), then writes through the
 * huge mapping and checks read(2) sees it.
 */
static void test_integrity(const char *core, bool shmem, enum layout l)
{
	uint64_t gen[NR_PMDS * PAGES_PER_PMD] = { 0 };
	long long ok = rust_stat("madvise", "succeed");
	int fd = shmem ? shmem_fd(LEN) : dir_fd(LEN);
	bool rw = shmem || l == DIRTY;
	char swapped[64] = "";
	long swap_kb = 0;
	size_t pg, bad;
	int ret, err, tries;
	bool huge;
	char *p;

	for (pg = 0; pg < NR_PMDS * PAGES_PER_PMD; pg++) {
		if (l == SPARSE && is_hole(pg))
			continue;
		gen[pg] = 1 + (core[0] == 'r');
		if (l != DIRTY && write_page(fd, pg, gen[pg]))
			ksft_exit_fail_perror("pwrite");
	}
	/* Clean file pages, as for text; DIRTY leaves them to writeback. */
	if (!shmem && l != DIRTY)
		fsync(fd);
	p = map_aligned(fd, LEN, rw ? PROT_READ | PROT_WRITE : PROT_READ,
			MAP_SHARED);
	if (!p)
		ksft_exit_fail_perror("mmap");
	if (l == DIRTY) {
		for (pg = 0; pg < NR_PMDS * PAGES_PER_PMD; pg++)
			fill_buf(p + pg * PAGE_SZ, pg, gen[pg]);
	} else {
		for (pg = 0; pg < NR_PMDS * PAGES_PER_PMD; pg++)
			if (gen[pg])
				force_read_pages(p + pg * PAGE_SZ, 1, PAGE_SZ);
	}
	if (l == SWAPPED) {
		/*
		 * The pages must really be in swap before the collapse: smaps
		 * counts a shared shmem mapping's swapped pages in "Swap:".
		 */
		if (madvise(p + PMD_SZ / 2, PMD_SZ, MADV_PAGEOUT))
			ksft_exit_fail_perror("madvise(MADV_PAGEOUT)");
		swap_kb = smaps_kb(p, "Swap:");
	}

	collapse_require_core(core);
	/*
	 * EAGAIN is transient by contract (say, swapped-in pages still in
	 * another CPU's LRU batch): retry a few times.
	 */
	ret = madvise(p, LEN, MADV_COLLAPSE);
	for (tries = 1; ret && errno == EAGAIN && tries < 4; tries++)
		ret = madvise(p, LEN, MADV_COLLAPSE);
	err = errno;
	huge = pmd_mapped(p, LEN, shmem);
	bad = bad_pages(fd, p, gen, NR_PMDS * PAGES_PER_PMD);
	if (l == SWAPPED)
		snprintf(swapped, sizeof(swapped), ", %ld pages swapped out before",
			 swap_kb / 4);
	if (!bad && rw) {
		/* The new folio is the page cache: writes go through to read(2). */
		for (pg = 0; pg < NR_PMDS * PAGES_PER_PMD; pg += 7) {
			gen[pg] = 9;
			fill_buf(p + pg * PAGE_SZ, pg, gen[pg]);
		}
		bad = bad_pages(fd, p, gen, NR_PMDS * PAGES_PER_PMD);
	}
	ksft_test_result(!ret && huge && !bad && (l != SWAPPED || swap_kb > 0) &&
			 (core[0] == 'c' || rust_stat("madvise", "succeed") >= ok + NR_PMDS),
			 "%s: %s %s: madvise %d (%s, %d calls), PMD-mapped %d, %zu pages differ%s\n",
			 core, shmem ? "shmem" : "file", layout_name[l], ret,
			 ret ? strerror(err) : "ok", tries, huge, bad, swapped);
	munmap(p, LEN);
	close(fd);
}

struct race {
	int fd;
	char *p;
	atomic_int stop;
	atomic_int exited;	/* the racer returned */
	atomic_long ops;
	/*
	 * A paced racer does one turn per round, when the main thread asks,
	 * after the delay it asks for; the others run the whole time.
	 */
	bool paced;
	atomic_long asked, served, delay_us;
	void *(*fn)(void *arg);
	uint64_t gen[NR_PMDS * PAGES_PER_PMD];
};

/*
 * Whether the racer should do its next turn: at once for a free-running
 * racer, or, for a paced one, when the main thread asks for it and after
 * the delay it asked for. False once the race is over.
 */
static bool race_turn(struct race *r)
{
	if (!r->paced)
		return !atomic_load(&r->stop);
	while (atomic_load(&r->served) == atomic_load(&r->asked)) {
		if (atomic_load(&r->stop))
			return false;
		usleep(100);
	}
	usleep(atomic_load(&r->delay_us));
	return true;
}

/* Counts a turn of the racer done. */
static void race_turn_done(struct race *r)
{
	atomic_fetch_add(&r->ops, 1);
	if (r->paced)
		atomic_fetch_add(&r->served, 1);
}

/* The racer thread: runs r->fn, and says when it returned. */
static void *race_thread(void *arg)
{
	struct race *r = arg;

	r->fn(r);
	atomic_store(&r->exited, 1);
	return NULL;
}

/* Truncates the second PMD away and writes it back. */
static void *truncate_racer(void *arg)
{
	struct race *r = arg;
	size_t pg;

	while (race_turn(r)) {
		if (ftruncate(r->fd, PMD_SZ) || ftruncate(r->fd, LEN))
			break;
		for (pg = PAGES_PER_PMD; pg < 2 * PAGES_PER_PMD; pg++)
			if (write_page(r->fd, pg, r->gen[pg]))
				return NULL;
		race_turn_done(r);
	}
	return NULL;
}

/* Punches holes in the second PMD and writes them back. */
static void *punch_racer(void *arg)
{
	struct race *r = arg;
	size_t pg = PAGES_PER_PMD;

	while (race_turn(r)) {
		if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      pg * PAGE_SZ, 16 * PAGE_SZ))
			break;
		for (size_t i = pg; i < pg + 16; i++)
			if (write_page(r->fd, i, r->gen[i]))
				return NULL;
		pg = pg + 16 >= 2 * PAGES_PER_PMD ? PAGES_PER_PMD : pg + 16;
		race_turn_done(r);
	}
	return NULL;
}

/*
 * Rewrites pages of both PMDs with write(2), new generations each time, 64
 * a turn (the write racer is always paced).
 */
static void *write_racer(void *arg)
{
	struct race *r = arg;
	size_t pg = 3;
	int i;

	while (race_turn(r)) {
		for (i = 0; i < 64; i++) {
			uint64_t g = r->gen[pg] + 1;

			if (write_page(r->fd, pg, g))
				return NULL;
			r->gen[pg] = g;
			pg = (pg + 37) % (NR_PMDS * PAGES_PER_PMD);
		}
		race_turn_done(r);
	}
	return NULL;
}

/* Maps, touches and unmaps a second mapping of the same file. */
static void *munmap_racer(void *arg)
{
	struct race *r = arg;

	while (race_turn(r)) {
		char *q = map_aligned(r->fd, LEN, PROT_READ, MAP_SHARED);

		if (!q)
			break;
		force_read_pages(q, NR_PMDS * PAGES_PER_PMD, PAGE_SZ);
		munmap(q, LEN);
		race_turn_done(r);
	}
	return NULL;
}

enum racer { TRUNCATE, PUNCH, WRITE, MUNMAP, NR_RACERS };
static const char *const racer_name[] = {
	"ftruncate", "fallocate(PUNCH_HOLE)", "write(2)",
	"munmap of another mapping",
};

/* CLOCK_MONOTONIC, in ns. */
static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The counter @name of /proc/vmstat, or -1. */
static long long vmstat_read(const char *name)
{
	char key[64];
	long long val, ret = -1;
	FILE *f = fopen("/proc/vmstat", "r");

	while (f && fscanf(f, "%63s %lld", key, &val) == 2)
		if (!strcmp(key, name))
			ret = val;
	if (f)
		fclose(f);
	return ret;
}

/*
 * MADV_COLLAPSE of a shared mapping of a memfd (@shmem) or of a file in DIR,
 * in RACE_ROUNDS rounds, while a racer changes the file. Each round splits
 * the new folios again through debugfs (page cache and mapping alike), so
 * that every round has to build its folio anew: a MADV_DONTNEED would only
 * unmap the huge folio, which the next call would map again without a copy.
 * A round counts as collapsed when the Rust core collapsed a PMD in it; at
 * least half the rounds must (the truncation and hole-punching racers work
 * on the second PMD only, so the first can always collapse). Failures must
 * be the transient ones (or, with truncation and hole punching, a page gone
 * under the collapse); at the end every page holds its last write, through
 * the mapping and through read(2).
 *
 * Two racers would fail most rounds if they ran the whole time, by design:
 * a second mapping faulting the pages back in, and write(2), whose page
 * cache look-up takes a reference while it waits for the folio lock that
 * the collapse holds (the collapse then finds an unexpected reference:
 * EAGAIN); on XFS, write(2) also dirties pages, and a file collapse takes
 * clean pages only (MADV_COLLAPSE writes back and retries just once:
 * EAGAIN). They are paced: one turn per round (a map, read and unmap of
 * the whole file; 64 writes), after a delay of n * 5/16 times the length of
 * one collapse in round n (0 to 2.2), measured first: the first turns land
 * while the call runs and the rest after it, so that half the rounds can
 * collapse.
 */
static void test_race(enum racer k, bool shmem)
{
	static struct race r;
	long long ok = rust_stat("madvise", "succeed");
	long long allocs = vmstat_read("thp_collapse_alloc");
	void *(*fn)(void *) = k == TRUNCATE ? truncate_racer :
			      k == PUNCH ? punch_racer :
			      k == WRITE ? write_racer : munmap_racer;
	int n, bad = 0, done = 0, last_err = 0;
	long long call_ns = 0, t0, start = now_ns();
	struct region reg;
	pthread_t th;
	size_t pg, lost;

	memset(&r, 0, sizeof(r));
	r.fn = fn;
	r.paced = k == MUNMAP || k == WRITE;
	r.fd = shmem ? shmem_fd(LEN) : dir_fd(LEN);
	for (pg = 0; pg < NR_PMDS * PAGES_PER_PMD; pg++) {
		r.gen[pg] = 1;
		if (write_page(r.fd, pg, 1))
			ksft_exit_fail_perror("pwrite");
	}
	/* A file collapse takes clean pages only: start from clean ones. */
	if (!shmem && fsync(r.fd))
		ksft_exit_fail_perror("fsync");
	r.p = map_aligned(r.fd, LEN, PROT_READ | PROT_WRITE, MAP_SHARED);
	if (!r.p)
		ksft_exit_fail_perror("mmap");
	reg = (struct region){
		.type = shmem ? MEM_SHMEM : MEM_FILE, .p = r.p, .len = LEN,
		.fd = r.fd,
	};
	collapse_require_core("rust");
	if (r.paced) {
		/* How long one collapse takes, to pace the racer. */
		t0 = now_ns();
		bad += madvise(r.p, LEN, MADV_COLLAPSE) && errno != EAGAIN;
		call_ns = now_ns() - t0;
		if (mem_split(&reg))
			ksft_exit_fail_msg("split_huge_pages: %s\n", strerror(errno));
	}
	if (pthread_create(&th, NULL, race_thread, &r))
		ksft_exit_fail_perror("pthread_create");
	for (n = 0; n < RACE_ROUNDS; n++) {
		long long before = rust_stat("madvise", "succeed");

		if (r.paced) {
			atomic_store(&r.delay_us, n * call_ns * 5 / 16 / 1000);
			atomic_fetch_add(&r.asked, 1);
		}

		/*
		 * Transient page state gives EAGAIN or EBUSY; a page that went
		 * away under the collapse (truncated, or punched out between
		 * the look-up and the swap-in) fails it as upstream does, with
		 * EINVAL.
		 */
		if (madvise(r.p, LEN, MADV_COLLAPSE)) {
			last_err = errno;
			if (errno != EAGAIN && errno != EBUSY &&
			    !((k == TRUNCATE || k == PUNCH) && errno == EINVAL)) {
				ksft_print_msg("round %d: %s\n", n, strerror(errno));
				bad++;
			}
		}
		done += rust_stat("madvise", "succeed") > before;
		/* A paced racer finishes its turn before the split. */
		while (r.paced && atomic_load(&r.served) < atomic_load(&r.asked) &&
		       !atomic_load(&r.exited))
			usleep(100);
		if (mem_split(&reg))
			ksft_exit_fail_msg("split_huge_pages: %s\n", strerror(errno));
	}
	/* A racer that gave up early (a failed syscall) fails the case. */
	bad += atomic_load(&r.exited);
	atomic_store(&r.stop, 1);
	pthread_join(th, NULL);
	lost = bad_pages(r.fd, r.p, r.gen, NR_PMDS * PAGES_PER_PMD);
	ksft_test_result(!bad && !lost && 2 * done >= RACE_ROUNDS &&
			 atomic_load(&r.ops) > 0 &&
			 rust_stat("madvise", "succeed") > ok,
			 "rust: %s collapse racing with %s%s: %d/%d rounds collapsed (%lld PMDs, %lld new folios), last error %s, %d unexpected errors, %zu pages differ, %ld racer turns, %.1f s\n",
			 shmem ? "shmem" : "xfs file", racer_name[k],
			 r.paced ? " (paced)" : "", done,
			 RACE_ROUNDS, rust_stat("madvise", "succeed") - ok,
			 vmstat_read("thp_collapse_alloc") - allocs,
			 strerror(last_err), bad, lost, atomic_load(&r.ops),
			 (now_ns() - start) / 1e9);
	munmap(r.p, LEN);
	close(r.fd);
}

/* The ShmemPmdMapped of the VMA at @p, in kB, or -1. */
static long shmem_pmd_kb(char *p)
{
	return smaps_kb(p, "ShmemPmdMapped:");
}

/*
 * A MAP_PRIVATE mapping of the file written in its first PMD (a CoW copy:
 * the VMA has an anon_vma) and read in its second. A collapse through a
 * shared mapping of the same file retracts the private mapping's second page
 * table too (upstream skips every VMA with an anon_vma); the first keeps its
 * table and its CoW copy. Then MADV_COLLAPSE of the private mapping itself:
 * the first PMD cannot be collapsed (EINVAL), the second is PMD-mapped.
 * A forked child with a CoW copy of its own in the second PMD keeps its page
 * table there. Every view, the child's too, keeps its contents.
 */
static void test_private_cow(const char *core)
{
	uint64_t gen[NR_PMDS * PAGES_PER_PMD], mine[NR_PMDS * PAGES_PER_PMD];
	long long ok = rust_stat("madvise", "succeed");
	int fd = shmem_fd(LEN), ret_shared, ret_priv, err_priv = 0, status = 0;
	int to_child[2], to_parent[2];
	char *priv, *shared, go = 0;
	pid_t child;
	size_t pg, bad;
	long kb_after_shared, kb_after_priv;

	for (pg = 0; pg < NR_PMDS * PAGES_PER_PMD; pg++) {
		gen[pg] = 3;
		mine[pg] = 3;
		if (write_page(fd, pg, 3))
			ksft_exit_fail_perror("pwrite");
	}
	priv = map_aligned(fd, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	shared = map_aligned(fd, LEN, PROT_READ, MAP_SHARED);
	if (!priv || !shared)
		ksft_exit_fail_perror("mmap");
	force_read_pages(priv, NR_PMDS * PAGES_PER_PMD, PAGE_SZ);
	mine[5] = 4;
	fill_buf(priv + 5 * PAGE_SZ, 5, 4);
	/* A child with its own CoW copy in the second PMD, checked after. */
	if (pipe(to_child) || pipe(to_parent))
		ksft_exit_fail_perror("pipe");
	child = fork();
	if (child < 0)
		ksft_exit_fail_perror("fork");
	if (!child) {
		char c = 0;

		mine[PAGES_PER_PMD + 7] = 8;
		fill_buf(priv + (PAGES_PER_PMD + 7) * PAGE_SZ, PAGES_PER_PMD + 7, 8);
		if (write(to_parent[1], &c, 1) != 1 || read(to_child[0], &c, 1) != 1)
			_exit(2);
		for (pg = 0; pg < NR_PMDS * PAGES_PER_PMD; pg++)
			if (!page_ok(priv + pg * PAGE_SZ, pg, mine[pg]))
				_exit(1);
		_exit(0);
	}
	if (read(to_parent[0], &go, 1) != 1)
		ksft_exit_fail_perror("read(pipe)");

	collapse_require_core(core);
	ret_shared = madvise(shared, LEN, MADV_COLLAPSE);
	/* Fault the private mapping back in: a PMD where the table went. */
	force_read_pages(priv, NR_PMDS * PAGES_PER_PMD, PAGE_SZ);
	kb_after_shared = shmem_pmd_kb(priv);
	ret_priv = madvise(priv, LEN, MADV_COLLAPSE);
	if (ret_priv)
		err_priv = errno;
	kb_after_priv = shmem_pmd_kb(priv);
	if (write(to_child[1], &go, 1) != 1 || waitpid(child, &status, 0) != child)
		ksft_exit_fail_perror("child");
	/* The child's view counts as one bad page if it differs. */
	bad = bad_pages(fd, shared, gen, NR_PMDS * PAGES_PER_PMD) +
	      (!WIFEXITED(status) || WEXITSTATUS(status));
	for (pg = 0; pg < NR_PMDS * PAGES_PER_PMD; pg++)
		if (!page_ok(priv + pg * PAGE_SZ, pg, mine[pg]))
			bad++;
	if (core[0] == 'r')
		ksft_test_result(!ret_shared && kb_after_shared == 2048 &&
				 ret_priv && err_priv == EINVAL &&
				 kb_after_priv == 2048 && !bad &&
				 pmd_mapped(shared, LEN, true) &&
				 rust_stat("madvise", "succeed") >= ok + NR_PMDS,
				 "rust: private CoW mapping of shmem, and a forked child: shared collapse %d, private PMD-mapped %ld kB after it; private collapse %s, %ld kB; %zu pages differ\n",
				 ret_shared, kb_after_shared,
				 ret_priv ? strerror(err_priv) : "ok",
				 kb_after_priv, bad);
	else
		/*
		 * Upstream keeps the tables of a VMA with an anon_vma, and stops
		 * at the first PMD: the private mapping stays PTE-mapped.
		 */
		ksft_test_result(!ret_shared && ret_priv && err_priv == EINVAL && !bad,
				 "c: private CoW mapping of shmem, and a forked child: shared collapse %d, private PMD-mapped %ld kB after it; private collapse %s, %ld kB; %zu pages differ\n",
				 ret_shared, kb_after_shared,
				 ret_priv ? strerror(err_priv) : "ok",
				 kb_after_priv, bad);
	close(to_child[0]);
	close(to_child[1]);
	close(to_parent[0]);
	close(to_parent[1]);
	munmap(priv, LEN);
	munmap(shared, LEN);
	close(fd);
}

/*
 * The live-migration pattern: the guest's mapping of shmem is registered
 * for userfaultfd minor faults while a second mapping fills the memory;
 * each 2 MiB is collapsed as soon as it is filled, and the guest mapping
 * then reads it PMD-mapped, with no minor fault.
 */
static void test_uffd_minor(void)
{
	uint64_t gen[NR_PMDS * PAGES_PER_PMD];
	long long ok = rust_stat("madvise", "succeed");
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = {
		.api = UFFD_API, .features = UFFD_FEATURE_MINOR_SHMEM,
	};
	int fd = shmem_fd(LEN), i, fails = 0;
	char *guest, *filler;
	struct uffd_msg msg;
	size_t pg, bad;
	bool huge;

	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) ||
	    !(api.features & UFFD_FEATURE_MINOR_SHMEM)) {
		ksft_test_result_fail("rust: uffd minor faults on shmem: %s\n",
				      "not supported by this kernel");
		if (uffd >= 0)
			close(uffd);
		close(fd);
		return;
	}
	guest = map_aligned(fd, LEN, PROT_READ | PROT_WRITE, MAP_SHARED);
	filler = map_aligned(fd, LEN, PROT_READ | PROT_WRITE, MAP_SHARED);
	if (!guest || !filler)
		ksft_exit_fail_perror("mmap");
	if (uffd_register(uffd, guest, LEN, false, false, true))
		ksft_exit_fail_perror("UFFDIO_REGISTER minor");
	collapse_require_core("rust");
	for (i = 0; i < NR_PMDS; i++) {
		for (pg = i * PAGES_PER_PMD; pg < (i + 1) * PAGES_PER_PMD; pg++) {
			gen[pg] = 5;
			fill_buf(filler + pg * PAGE_SZ, pg, 5);
		}
		fails += !!madvise(guest + i * PMD_SZ, PMD_SZ, MADV_COLLAPSE);
	}
	huge = pmd_mapped(guest, LEN, true);
	bad = bad_pages(fd, guest, gen, NR_PMDS * PAGES_PER_PMD);
	/* Reads through a PMD mapping raise no minor fault. */
	ksft_test_result(!fails && huge && !bad &&
			 read(uffd, &msg, sizeof(msg)) < 0 && errno == EAGAIN &&
			 rust_stat("madvise", "succeed") >= ok + NR_PMDS,
			 "rust: uffd minor faults on shmem: %d failed collapses, PMD-mapped %d, %zu pages differ\n",
			 fails, huge, bad);
	munmap(guest, LEN);
	munmap(filler, LEN);
	close(uffd);
	close(fd);
}

#define KHUGEPAGED_SYSFS THP_SYSFS "khugepaged/"

/*
 * khugepaged collapses a shmem VM_HUGEPAGE range (shmem_enabled "advise")
 * through the Rust core: its page cache becomes one huge folio and the page
 * table goes, so the next fault maps it with a PMD.
 */
static void test_khugepaged_shmem(void)
{
	unsigned long sleep_ms = read_num(KHUGEPAGED_SYSFS "scan_sleep_millisecs");
	long long ok = rust_stat("khugepaged", "succeed");
	uint64_t gen[PAGES_PER_PMD];
	char old[128];
	int fd = shmem_fd(PMD_SZ), i;
	char *p;
	size_t pg, bad;
	bool huge = false;

	if (sysfs_swap_str(THP_SYSFS "shmem_enabled", old, sizeof(old), "advise"))
		ksft_exit_fail_msg("cannot set shmem_enabled\n");
	collapse_require_core("rust");
	write_num(KHUGEPAGED_SYSFS "scan_sleep_millisecs", 10);
	p = map_aligned(fd, PMD_SZ, PROT_READ | PROT_WRITE, MAP_SHARED);
	if (!p)
		ksft_exit_fail_perror("mmap");
	for (pg = 0; pg < PAGES_PER_PMD; pg++) {
		gen[pg] = 7;
		fill_buf(p + pg * PAGE_SZ, pg, 7);
	}
	for (i = 0; i < 200 && !huge; i++) {
		usleep(100000);
		force_read_pages(p, PAGES_PER_PMD, PAGE_SZ);
		huge = rust_stat("khugepaged", "succeed") > ok &&
		       pmd_mapped(p, PMD_SZ, true);
	}
	bad = bad_pages(fd, p, gen, PAGES_PER_PMD);
	write_num(KHUGEPAGED_SYSFS "scan_sleep_millisecs", sleep_ms);
	set_str(THP_SYSFS "shmem_enabled", old);
	ksft_test_result(huge && !bad,
			 "rust: khugepaged collapses shmem through the Rust core (%lld new succeed, PMD-mapped %d, %zu pages differ)\n",
			 rust_stat("khugepaged", "succeed") - ok, huge, bad);
	munmap(p, PMD_SZ);
	close(fd);
}

/* A range past the end of the file: nothing to collapse (EINVAL). */
static void test_bad_past_eof(void)
{
	long long trunc = rust_stat("madvise", "truncated");
	int fd = shmem_fd(LEN);
	char *p = map_aligned(fd, LEN, PROT_READ | PROT_WRITE, MAP_SHARED);
	int ret, err;

	if (!p || ftruncate(fd, PMD_SZ))
		ksft_exit_fail_perror("setup");
	memset(p, 1, PMD_SZ);
	collapse_require_core("rust");
	ret = madvise(p + PMD_SZ, PMD_SZ, MADV_COLLAPSE);
	err = errno;
	ksft_test_result(ret && err == EINVAL &&
			 rust_stat("madvise", "truncated") > trunc,
			 "rust: shmem range past the end of the file: %s\n",
			 ret ? strerror(err) : "collapsed");
	munmap(p, LEN);
	close(fd);
}

/*
 * shmem_enabled "deny" forbids even MADV_COLLAPSE: both cores refuse the
 * shmem VMA at their entry (thp_vma_allowable_orders()), EINVAL, before any
 * PMD, so no Rust counter counts the refusal itself. To show that the Rust
 * core is the one that answers, the call starts with a PMD of small
 * anonymous pages right before the shmem VMA: the core collapses it first
 * (on the Rust core: succeed +1 and no other outcome), then refuses the
 * shmem VMA.
 */
static void test_bad_shmem_deny(void)
{
	long long ok, total, moved = 0, others = 0;
	bool anon_huge[2], shmem_huge = false;
	int fd = shmem_fd(PMD_SZ), ret[2], err[2];
	char *a = mmap_pmd_aligned(2, PROT_READ | PROT_WRITE), *p;
	unsigned int c;
	char old[128];

	if (!a)
		ksft_exit_fail_perror("mmap");
	p = mmap(a + PMD_SZ, PMD_SZ, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_FIXED, fd, 0);
	if (p == MAP_FAILED)
		ksft_exit_fail_perror("mmap(shmem)");
	/* Small pages only in the anonymous PMD, then allow the collapse. */
	if (madvise(a, PMD_SZ, MADV_NOHUGEPAGE))
		ksft_exit_fail_perror("madvise(MADV_NOHUGEPAGE)");
	memset(a, 1, PMD_SZ);
	memset(p, 1, PMD_SZ);
	if (madvise(a, 2 * PMD_SZ, MADV_HUGEPAGE))
		ksft_exit_fail_perror("madvise(MADV_HUGEPAGE)");
	if (sysfs_swap_str(THP_SYSFS "shmem_enabled", old, sizeof(old), "deny")) {
		ksft_test_result_fail("bad input: shmem_enabled=deny: cannot set it\n");
		goto out;
	}
	for (c = 0; c < 2; c++) {
		ok = rust_stat("madvise", "succeed");
		total = rust_stat_total("madvise");
		collapse_require_core(cores[c]);
		ret[c] = madvise(a, 2 * PMD_SZ, MADV_COLLAPSE);
		err[c] = ret[c] ? errno : 0;
		anon_huge[c] = check_huge_anon(a, PMD_SZ, 1, PMD_SZ);
		shmem_huge |= pmd_mapped(p, PMD_SZ, true);
		if (c == 0) {
			moved = rust_stat("madvise", "succeed") - ok;
			others = rust_stat_total("madvise") - total - moved;
		}
		/* Split the anonymous PMD again for the next core. */
		madvise(a + PMD_SZ - PAGE_SZ, PAGE_SZ, MADV_DONTNEED);
	}
	set_str(THP_SYSFS "shmem_enabled", old);
	ksft_test_result(err[0] == EINVAL && err[1] == EINVAL && moved == 1 &&
			 !others && anon_huge[0] && anon_huge[1] && !shmem_huge,
			 "bad input: shmem with shmem_enabled=deny gives EINVAL on both cores, refused at the core's entry after the anon PMD before it collapsed (rust %s, succeed +%lld, other outcomes +%lld, anon huge %d; c %s, anon huge %d; shmem PMD-mapped %d)\n",
			 strerror(err[0]), moved, others, anon_huge[0],
			 strerror(err[1]), anon_huge[1], shmem_huge);
out:
	munmap(a, 2 * PMD_SZ);
	close(fd);
}

/*
 * uffd-wp keeps per-PTE state: the page cache is collapsed but the PMD is
 * not installed (EINVAL), and every byte stays.
 */
static void test_bad_uffd_wp(void)
{
	uint64_t gen[PAGES_PER_PMD];
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = {
		.api = UFFD_API, .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
	};
	long long uffd_stat = rust_stat("madvise", "pte_uffd");
	int fd = shmem_fd(PMD_SZ), ret, err;
	char *p = map_aligned(fd, PMD_SZ, PROT_READ | PROT_WRITE, MAP_SHARED);
	size_t pg, bad;

	if (!p)
		ksft_exit_fail_perror("mmap");
	for (pg = 0; pg < PAGES_PER_PMD; pg++) {
		gen[pg] = 6;
		fill_buf(p + pg * PAGE_SZ, pg, 6);
	}
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) ||
	    !(api.features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM) ||
	    uffd_register(uffd, p, PMD_SZ, false, true, false)) {
		ksft_test_result_fail("rust: uffd-wp on shmem: not supported by this kernel\n");
		goto out;
	}
	collapse_require_core("rust");
	ret = madvise(p, PMD_SZ, MADV_COLLAPSE);
	err = errno;
	bad = bad_pages(fd, p, gen, PAGES_PER_PMD);
	ksft_test_result(ret && err == EINVAL && !bad &&
			 rust_stat("madvise", "pte_uffd") > uffd_stat,
			 "rust: uffd-wp registered shmem: %s, %zu pages differ\n",
			 ret ? strerror(err) : "collapsed", bad);
out:
	if (uffd >= 0)
		close(uffd);
	munmap(p, PMD_SZ);
	close(fd);
}

int main(int argc, char **argv)
{
	char orig[16], thp_enabled[32];
	unsigned int c;
	int l;

	dir = argc > 1 ? argv[1] : NULL;
	collapse_test_start(orig, sizeof(orig), thp_enabled, sizeof(thp_enabled));
	if (!dir)
		ksft_exit_fail_msg("usage: %s DIR (a directory on XFS)\n", argv[0]);
	ksft_set_plan(2 * 3 + 2 * 2 + 2 * NR_RACERS + 2 + 2 + 3);

	for (c = 0; c < 2; c++) {
		test_integrity(cores[c], true, FULL);
		test_integrity(cores[c], true, SPARSE);
		test_integrity(cores[c], true, SWAPPED);
	}
	for (c = 0; c < 2; c++) {
		test_integrity(cores[c], false, FULL);
		test_integrity(cores[c], false, DIRTY);
	}
	for (l = 0; l < NR_RACERS; l++) {
		test_race(l, true);
		test_race(l, false);
	}
	for (c = 0; c < 2; c++)
		test_private_cow(cores[c]);
	test_uffd_minor();
	test_khugepaged_shmem();
	test_bad_past_eof();
	test_bad_shmem_deny();
	test_bad_uffd_wp();

	collapse_set_core(orig);
	set_str(THP_SYSFS "enabled", thp_enabled);
	ksft_finished();
}
