// SPDX-License-Identifier: GPL-2.0
/*
 * thp_collapse_bench - time the C and the Rust THP collapse cores in one boot.
 *
 * Usage: thp_collapse_bench [-r ROUNDS] [-m MIB] [-k MIB]
 *
 * For each round it measures, on both cores:
 *   full       MADV_COLLAPSE of MIB MiB of fully populated base pages
 *   half       the same with every other page never touched (none PTEs)
 *   huge       MADV_COLLAPSE of the same range once it is PMD-mapped
 *   remote     process_madvise(MADV_COLLAPSE) of another process's memory
 *   khugepaged the daemon collapsing a K MiB region until it is all huge
 *
 * The cores take turns every BLOCK PMDs (C first, then Rust, then Rust, then
 * C, ...), each on its own copy of the workload, so that a slow phase of
 * the host (TCG) hits both alike; khugepaged, which cannot be split, takes
 * turns by round.
 *
 * MADV_COLLAPSE is timed per 2 MiB call. While it runs, a second thread calls
 * mincore() in a loop: mincore() needs the mmap lock for read, so its
 * longest stall during a call is the time the collapse held the mmap lock
 * for write. Every sample goes to stdout as a "CSV," line; a table of medians
 * and rust/c ratios ends the output.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define PMD_SZ (2UL << 20)
#define PAGE_SZ 4096UL
#define THP "/sys/kernel/mm/transparent_hugepage/"
#define MAX_SAMPLES 65536
/* PMDs one core collapses before the other takes its turn. */
#define BLOCK 8

enum workload { FULL, HALF, HUGE, REMOTE, KHUGEPAGED, NR_WORKLOADS };
static const char *const wname[] = { "full", "half", "huge", "remote", "khugepaged" };
static const char *const cores[] = { "c", "rust" };

struct series {
	double ns[MAX_SAMPLES];
	double stall[MAX_SAMPLES];
	int n;
};

static struct series results[2][NR_WORKLOADS];

static void die(const char *what)
{
	fprintf(stderr, "thp_collapse_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void put(const char *path, const char *val)
{
	FILE *f = fopen(path, "w");

	if (!f || fputs(val, f) == EOF || fclose(f) == EOF)
		die(path);
}

/* @nr PMD-aligned PMDs of private anonymous memory, without THPs yet. */
static char *map_pmds(size_t nr)
{
	size_t len = nr * PMD_SZ;
	char *p = mmap(NULL, len + PMD_SZ, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *a;

	if (p == MAP_FAILED)
		die("mmap");
	a = (char *)(((uintptr_t)p + PMD_SZ - 1) & ~(PMD_SZ - 1));
	if (a > p)
		munmap(p, a - p);
	munmap(a + len, p + PMD_SZ - a);
	if (madvise(a, len, MADV_NOHUGEPAGE))
		die("madvise(MADV_NOHUGEPAGE)");
	return a;
}

static void populate(char *p, size_t len, size_t stride)
{
	size_t off;

	for (off = 0; off < len; off += stride)
		p[off] = (char)(off >> 12);
	if (madvise(p, len, MADV_HUGEPAGE))
		die("madvise(MADV_HUGEPAGE)");
}

/* The mincore() loop that measures how long the mmap lock is unavailable. */
static struct {
	char *probe;
	atomic_int stop;
	atomic_llong max_stall;	/* ns */
	atomic_long iterations;
} stall;

static void *stall_thread(void *arg)
{
	unsigned char vec;
	long long d, cur;
	double t0;

	(void)arg;
	while (!atomic_load(&stall.stop)) {
		t0 = now_ns();
		if (mincore(stall.probe, PAGE_SZ, &vec))
			break;
		d = (long long)(now_ns() - t0);
		cur = atomic_load(&stall.max_stall);
		while (d > cur && !atomic_compare_exchange_weak(&stall.max_stall, &cur, d))
			;
		atomic_fetch_add(&stall.iterations, 1);
	}
	return NULL;
}

/*
 * The longest stall since the last reset. A mincore() that was blocked by
 * the collapse may record its wait only after the collapse returned: wait
 * for two more iterations of the loop, so that it is counted.
 */
static double settled_stall(void)
{
	long it = atomic_load(&stall.iterations);

	while (atomic_load(&stall.iterations) < it + 2)
		sched_yield();
	return atomic_load(&stall.max_stall);
}

static void record(int core, enum workload w, int round, int i, double ns, double st)
{
	struct series *s = &results[core][w];

	if (s->n < MAX_SAMPLES) {
		s->ns[s->n] = ns;
		s->stall[s->n] = st;
		s->n++;
	}
	printf("CSV,%d,%s,%s,%d,%.0f,%.0f\n", round, cores[core], wname[w], i, ns, st);
}

static void set_core(int core)
{
	put(THP "collapse/core", cores[core]);
}

/* MADV_COLLAPSE of PMDs [from, to) of @p, one call each. */
static void time_local(int core, enum workload w, int round, char *p, size_t from,
		       size_t to)
{
	size_t i;
	double t0, t1;

	for (i = from; i < to; i++) {
		atomic_store(&stall.max_stall, 0);
		t0 = now_ns();
		if (madvise(p + i * PMD_SZ, PMD_SZ, MADV_COLLAPSE))
			die("madvise(MADV_COLLAPSE)");
		t1 = now_ns();
		record(core, w, round, i, t1 - t0, settled_stall());
	}
}

/* A process whose memory process_madvise() collapses. */
struct target {
	char *p;
	pid_t pid;
	int pidfd;
};

static void target_start(struct target *t, size_t nr)
{
	int fds[2];
	char c;

	t->p = map_pmds(nr);
	if (pipe(fds))
		die("pipe");
	t->pid = fork();
	if (t->pid < 0)
		die("fork");
	if (t->pid == 0) {
		populate(t->p, nr * PMD_SZ, PAGE_SZ);
		if (write(fds[1], "x", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	if (read(fds[0], &c, 1) != 1)
		die("child setup");
	close(fds[0]);
	close(fds[1]);
	t->pidfd = syscall(SYS_pidfd_open, t->pid, 0);
	if (t->pidfd < 0)
		die("pidfd_open");
}

static void target_stop(struct target *t, size_t nr)
{
	close(t->pidfd);
	kill(t->pid, SIGKILL);
	waitpid(t->pid, NULL, 0);
	munmap(t->p, nr * PMD_SZ);
}

/* process_madvise(MADV_COLLAPSE) of PMDs [from, to) of @t, one call each. */
static void time_remote(int core, int round, struct target *t, size_t from, size_t to)
{
	double t0, t1;
	size_t i;

	for (i = from; i < to; i++) {
		struct iovec iov = { .iov_base = t->p + i * PMD_SZ, .iov_len = PMD_SZ };

		t0 = now_ns();
		if (syscall(SYS_process_madvise, t->pidfd, &iov, 1, MADV_COLLAPSE, 0) < 0)
			die("process_madvise(MADV_COLLAPSE)");
		t1 = now_ns();
		record(core, REMOTE, round, i, t1 - t0, 0);
	}
}

/* kB of AnonHugePages in this process. */
static long anon_huge_kb(void)
{
	char line[256];
	long kb = -1;
	FILE *f = fopen("/proc/self/smaps_rollup", "r");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

static void time_khugepaged(int core, int round, size_t nr)
{
	char *p = map_pmds(nr);
	double t0, t1;
	int polls = 0;

	set_core(core);
	put(THP "enabled", "madvise");
	populate(p, nr * PMD_SZ, PAGE_SZ);
	t0 = now_ns();
	while (anon_huge_kb() < (long)(nr * PMD_SZ / 1024)) {
		if (++polls > 600000)
			die("khugepaged did not finish");
		usleep(1000);
	}
	t1 = now_ns();
	put(THP "enabled", "never");
	record(core, KHUGEPAGED, round, 0, (t1 - t0) / nr, 0);
	munmap(p, nr * PMD_SZ);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(*v), cmp);
	return n ? (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2) : 0;
}

static size_t min(size_t a, size_t b)
{
	return a < b ? a : b;
}

/*
 * Which core takes turn @k (0 or 1) of block @b (in PMDs) in @round: C then
 * Rust, or the other way round, alternating block by block and round by
 * round.
 */
static int turn_core(size_t b, int round, int k)
{
	return (int)((b / BLOCK + round + k) % 2);
}

/*
 * Workload @w of @round on PMDs [0, @nr), the cores taking turns block by
 * block: on mem[core] (MADV_COLLAPSE) or on t[core] (process_madvise).
 */
static void take_turns(enum workload w, int round, size_t nr, char *mem[2],
		       struct target t[2])
{
	size_t b, end;
	int k, core;

	for (b = 0; b < nr; b += BLOCK) {
		end = min(b + BLOCK, nr);
		for (k = 0; k < 2; k++) {
			core = turn_core(b, round, k);
			set_core(core);
			if (w == REMOTE)
				time_remote(core, round, &t[core], b, end);
			else
				time_local(core, w, round, mem[core], b, end);
		}
	}
}

/* One row of the closing table. */
static const char table_row[] =
	"%-11s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %7.2f %8.2f %12.1f %12.1f\n";

int main(int argc, char **argv)
{
	int rounds = 3, opt, round, k, w;
	size_t mib = 256, kmib = 32, nr;
	pthread_t th;

	while ((opt = getopt(argc, argv, "r:m:k:")) != -1) {
		switch (opt) {
		case 'r':
			rounds = atoi(optarg);
			break;
		case 'm':
			mib = strtoul(optarg, NULL, 0);
			break;
		case 'k':
			kmib = strtoul(optarg, NULL, 0);
			break;
		default:
			fprintf(stderr, "usage: %s [-r rounds] [-m MiB] [-k MiB]\n", argv[0]);
			return 2;
		}
	}
	nr = mib / 2;
	if (!nr || rounds < 1)
		return 2;

	/* khugepaged only where this program asks for it, and at full speed. */
	put(THP "enabled", "never");
	put(THP "khugepaged/scan_sleep_millisecs", "0");
	put(THP "khugepaged/alloc_sleep_millisecs", "0");
	put(THP "khugepaged/pages_to_scan", "32768");

	stall.probe = map_pmds(1);
	stall.probe[0] = 1;
	if (pthread_create(&th, NULL, stall_thread, NULL))
		die("pthread_create");

	printf("CSV,round,core,workload,index,ns_per_2MiB,mmap_write_stall_ns\n");
	for (round = 0; round < rounds; round++) {
		char *full[2], *half[2];
		struct target t[2];

		for (k = 0; k < 2; k++) {
			full[k] = map_pmds(nr);
			populate(full[k], nr * PMD_SZ, PAGE_SZ);
		}
		take_turns(FULL, round, nr, full, NULL);
		take_turns(HUGE, round, nr, full, NULL);
		for (k = 0; k < 2; k++) {
			munmap(full[k], nr * PMD_SZ);
			half[k] = map_pmds(nr);
			populate(half[k], nr * PMD_SZ, 2 * PAGE_SZ);
		}
		take_turns(HALF, round, nr, half, NULL);
		for (k = 0; k < 2; k++) {
			munmap(half[k], nr * PMD_SZ);
			target_start(&t[k], nr);
		}
		take_turns(REMOTE, round, nr, NULL, t);
		for (k = 0; k < 2; k++)
			target_stop(&t[k], nr);
		for (k = 0; k < 2; k++)
			time_khugepaged((round + k) % 2, round, kmib / 2);
	}
	atomic_store(&stall.stop, 1);
	pthread_join(th, NULL);

	printf("\n%-11s %10s %10s %10s %10s %10s %10s %7s %8s %12s %12s\n", "workload",
	       "c med us", "c min", "c max", "rust med", "rust min", "rust max",
	       "rust/c", "r/c p10", "c stall us", "rust stall");
	for (w = 0; w < NR_WORKLOADS; w++) {
		double med[2], lo[2], hi[2], p10[2], st[2];

		for (k = 0; k < 2; k++) {
			struct series *s = &results[k][w];

			/* median() sorts the samples. */
			med[k] = median(s->ns, s->n) / 1e3;
			lo[k] = s->n ? s->ns[0] / 1e3 : 0;
			hi[k] = s->n ? s->ns[s->n - 1] / 1e3 : 0;
			p10[k] = s->n ? s->ns[s->n / 10] / 1e3 : 0;
			st[k] = median(s->stall, s->n) / 1e3;
		}
		printf(table_row, wname[w], med[0], lo[0], hi[0], med[1], lo[1], hi[1],
		       med[0] > 0 ? med[1] / med[0] : 0,
		       p10[0] > 0 ? p10[1] / p10[0] : 0, st[0], st[1]);
	}
	printf("(times per 2 MiB; r/c p10: the ratio of the 10th percentiles;\n"
	       " stall: median over calls of the longest mincore() wait during\n"
	       " the call, the mmap lock write-hold time)\n");
	return 0;
}
