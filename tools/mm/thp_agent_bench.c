// SPDX-License-Identifier: GPL-2.0
/*
 * thp_agent_bench - what the thp-agent does for a process that reads its
 * memory at random.
 *
 * Usage: thp_agent_bench [-m MIB] [-t SECONDS] [-b MIB_PER_S] [-c CORE] AGENT
 *
 * A child process maps MIB MiB (default 1024) of private anonymous memory,
 * writes every page (with THP "never": base pages only) and then reads 8-byte
 * words at random addresses in a loop. The benchmark measures it in three
 * phases:
 *   before  SECONDS (default 5) of reading, nothing else running
 *   during  while `AGENT collapse PID --range A-B --include-ineligible`
 *           collapses the whole region (with --budget MIB_PER_S under -b),
 *           on the collapse core CORE (default rust); its report (and
 *           stderr) goes to REPORT (/tmp/thp_agent_bench.txt), its summary
 *           line to stdout, the whole report too if it failed
 *   after   SECONDS more of reading
 * and prints, per phase: reads per second, the worst stall (the longest gap
 * between two timestamps the reader takes every 1024 reads: a read that
 * faulted on a PMD under collapse waits there for the mmap lock, and so does
 * the reader while the agent's collapse has its CPU), and the region's
 * AnonHugePages at the end of the phase. Then the agent's own CPU time (its
 * rusage, which includes the kernel's collapse work done in its
 * process_madvise() calls) per GiB collapsed, its wall time, its exit code
 * and the Rust core's collapse counters, which must have moved by the
 * region's PMD count. Last, untimed, `AGENT status` of the reader and the
 * first lines of the collapse report: the agent in use.
 *
 * Under TCG the reads go through QEMU's software TLB and page walk, not the
 * CPU's, so the throughput ratio says little about real hardware; the
 * coverage, the CPU time and the stall are the figures to read there. Lines
 * "AGENTBENCH," are CSV.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PMD_SZ (2UL << 20)
#define PAGE_SZ 4096UL
#define THP "/sys/kernel/mm/transparent_hugepage/"
#define READS_PER_STAMP 1024
#define REPORT "/tmp/thp_agent_bench.txt"

enum { BEFORE, DURING, AFTER, NR_PHASES };

static const char *const phase_name[] = { "before", "during", "after" };

/* Shared with the reader child: the phase, and what it measured in each. */
struct shared {
	atomic_int phase;	/* NR_PHASES: stop measuring, wait for stop */
	atomic_int stop;
	atomic_int ready;
	struct {
		atomic_llong reads;
		atomic_llong ns;
		atomic_llong worst_gap_ns;
	} m[NR_PHASES];
	uint64_t sink;
};

static void die(const char *what)
{
	fprintf(stderr, "thp_agent_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void die_msg(const char *what)
{
	fprintf(stderr, "thp_agent_bench: %s\n", what);
	exit(1);
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void put(const char *path, const char *val)
{
	FILE *f = fopen(path, "w");

	if (!f || fputs(val, f) == EOF || fclose(f) == EOF)
		die(path);
}

/* The knobs the benchmark sets, as they were: the selected word of each. */
static char old_enabled[16], old_core[16];
/* The benchmark's own pid: a forked child that exits restores nothing. */
static pid_t main_pid;

/* The selected word of the sysfs knob at @path ("[never]", or a bare value). */
static void knob_read(const char *path, char *buf, size_t len)
{
	char line[128], *b, *e;
	FILE *f = fopen(path, "r");

	if (!f || !fgets(line, sizeof(line), f))
		die(path);
	fclose(f);
	b = strchr(line, '[');
	b = b ? b + 1 : line;
	e = b + strcspn(b, "]\n ");
	*e = '\0';
	snprintf(buf, len, "%s", b);
}

static void knobs_restore(void)
{
	FILE *f;

	if (getpid() != main_pid)
		return;
	/* Not put(): it would exit from an exit handler. */
	f = fopen(THP "enabled", "w");
	if (f) {
		fputs(old_enabled, f);
		fclose(f);
	}
	f = fopen(THP "collapse/core", "w");
	if (f) {
		fputs(old_core, f);
		fclose(f);
	}
}

/* The Rust core's count of @outcome for @caller (collapse/rust_stats/<caller>). */
static long long rust_stat(const char *caller, const char *outcome)
{
	char path[256], name[64];
	long long val, v = -1;
	FILE *f;

	snprintf(path, sizeof(path), THP "collapse/rust_stats/%s", caller);
	f = fopen(path, "r");
	while (f && fscanf(f, "%63s %lld", name, &val) == 2)
		if (!strcmp(name, outcome))
			v = val;
	if (f)
		fclose(f);
	if (v < 0)
		die(path);
	return v;
}

/* kB of AnonHugePages in process @pid. */
static long anon_huge_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", pid);
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	if (kb < 0)
		die(path);
	return kb;
}

/*
 * Prints the lines of the agent's report that start with @prefix (NULL: all),
 * at most @max of them (0: no limit).
 */
static void print_agent_report(const char *prefix, int max)
{
	char line[512];
	FILE *f = fopen(REPORT, "r");
	int n = 0;

	while (f && fgets(line, sizeof(line), f) && (!max || n < max))
		if (!prefix || !strncmp(line, prefix, strlen(prefix))) {
			printf("agent: %s", line);
			n++;
		}
	if (f)
		fclose(f);
	fflush(stdout);
}

/* Runs `@agent status @pid`, its table to stdout. */
static void agent_status(const char *agent, pid_t pid)
{
	char arg[16];
	int status;
	pid_t st;

	fflush(stdout);
	st = fork();
	if (st < 0)
		die("fork");
	if (st == 0) {
		snprintf(arg, sizeof(arg), "%d", pid);
		execl(agent, agent, "status", arg, NULL);
		die(agent);
	}
	if (waitpid(st, &status, 0) != st || !WIFEXITED(status) || WEXITSTATUS(status))
		die_msg("thp-agent status failed");
}

/* The reader: random 8-byte reads over @len bytes at @p until told to stop. */
static void reader(struct shared *sh, uint64_t *p, size_t len)
{
	uint64_t x = 0x9e3779b97f4a7c15ULL, sum = 0, words = len / sizeof(*p);
	long long t, last;
	int phase, i;

	for (size_t off = 0; off < len; off += PAGE_SZ)
		p[off / sizeof(*p)] = off;
	atomic_store(&sh->ready, 1);
	last = now_ns();
	while ((phase = atomic_load(&sh->phase)) < NR_PHASES) {
		for (i = 0; i < READS_PER_STAMP; i++) {
			/* xorshift64 */
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			sum += p[x % words];
		}
		t = now_ns();
		atomic_fetch_add(&sh->m[phase].reads, READS_PER_STAMP);
		atomic_fetch_add(&sh->m[phase].ns, t - last);
		if (t - last > atomic_load(&sh->m[phase].worst_gap_ns))
			atomic_store(&sh->m[phase].worst_gap_ns, t - last);
		last = t;
	}
	sh->sink = sum;
	/* Alive, idle, for the untimed `status` that follows. */
	while (!atomic_load(&sh->stop))
		usleep(10000);
	_exit(0);
}

int main(int argc, char **argv)
{
	const char *core = "rust", *agent;
	size_t mib = 1024, len;
	long long ok0, ok1, t0, t1;
	long huge_kb[NR_PHASES];
	int seconds = 5, budget = 0, opt, status, ph;
	char range[64], budget_s[16];
	struct rusage ru;
	struct shared *sh;
	pid_t child, ag;
	double cpu_s, gib;
	char *p, *a;

	while ((opt = getopt(argc, argv, "m:t:b:c:")) != -1) {
		switch (opt) {
		case 'm':
			mib = strtoul(optarg, NULL, 0);
			break;
		case 't':
			seconds = atoi(optarg);
			break;
		case 'b':
			budget = atoi(optarg);
			if (budget < 0)
				goto usage;
			break;
		case 'c':
			core = optarg;
			break;
		default:
			goto usage;
		}
	}
	if (optind != argc - 1 || mib < 2 || seconds < 1) {
usage:
		fprintf(stderr, "usage: %s [-m MiB] [-t seconds] [-b MiB/s] [-c c|rust] AGENT\n",
			argv[0]);
		return 2;
	}
	agent = argv[optind];
	len = mib / 2 * PMD_SZ;

	/* Base pages only, and nobody else collapsing; as they were at the end. */
	knob_read(THP "enabled", old_enabled, sizeof(old_enabled));
	knob_read(THP "collapse/core", old_core, sizeof(old_core));
	main_pid = getpid();
	atexit(knobs_restore);
	put(THP "enabled", "never");
	put(THP "collapse/core", core);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	p = mmap(NULL, len + PMD_SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED || p == MAP_FAILED)
		die("mmap");
	a = (char *)(((uintptr_t)p + PMD_SZ - 1) & ~(PMD_SZ - 1));
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		/* Never outlive the benchmark, whatever way it ends. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() == 1)
			_exit(1);
		reader(sh, (uint64_t *)a, len);
	}
	while (!atomic_load(&sh->ready)) {
		/* A reader that died filling its memory would be waited for forever. */
		if (waitpid(child, &status, WNOHANG) == child)
			die_msg("the reader exited before it was ready");
		usleep(10000);
	}
	snprintf(range, sizeof(range), "%lx-%lx", (unsigned long)a, (unsigned long)(a + len));
	snprintf(budget_s, sizeof(budget_s), "%d", budget);

	sleep(seconds);
	huge_kb[BEFORE] = anon_huge_kb(child);
	ok0 = rust_stat("process_madvise", "succeed");
	atomic_store(&sh->phase, DURING);
	t0 = now_ns();
	ag = fork();
	if (ag < 0)
		die("fork");
	if (ag == 0) {
		char pid[16];

		if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() == 1)
			_exit(1);
		snprintf(pid, sizeof(pid), "%d", child);
		/* Both outputs to the report: no progress bar on a terminal. */
		if (!freopen(REPORT, "w", stdout) || dup2(STDOUT_FILENO, STDERR_FILENO) < 0)
			die(REPORT);
		if (budget)
			execl(agent, agent, "collapse", pid, "--range", range,
			      "--include-ineligible", "--budget", budget_s, NULL);
		else
			execl(agent, agent, "collapse", pid, "--range", range,
			      "--include-ineligible", NULL);
		die(agent);
	}
	if (wait4(ag, &status, 0, &ru) != ag)
		die("wait4");
	t1 = now_ns();
	huge_kb[DURING] = anon_huge_kb(child);
	ok1 = rust_stat("process_madvise", "succeed");
	atomic_store(&sh->phase, AFTER);
	sleep(seconds);
	huge_kb[AFTER] = anon_huge_kb(child);
	/* The reader stops measuring, and stays for `status`. */
	atomic_store(&sh->phase, NR_PHASES);
	printf("\n`thp-agent status` of the reader after the run (untimed):\n");
	agent_status(agent, child);
	printf("\nthe first lines of the collapse report:\n");
	print_agent_report(NULL, 6);
	atomic_store(&sh->stop, 1);
	waitpid(child, NULL, 0);

	cpu_s = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
	gib = (huge_kb[DURING] - huge_kb[BEFORE]) / 1048576.0;

	printf("AGENTBENCH,core,phase,seconds,reads_per_s,worst_stall_us,anon_huge_mib\n");
	printf("\nagent bench: %zu MiB read at random; `thp-agent collapse%s%s` on the %s core\n",
	       mib, budget ? " --budget " : "", budget ? budget_s : "", core);
	printf("%-8s %9s %14s %16s %18s\n", "phase", "seconds", "reads/s", "worst stall us",
	       "AnonHugePages MiB");
	for (ph = 0; ph < NR_PHASES; ph++) {
		double s = atomic_load(&sh->m[ph].ns) / 1e9;
		double rate = s > 0 ? atomic_load(&sh->m[ph].reads) / s : 0;
		double worst = atomic_load(&sh->m[ph].worst_gap_ns) / 1e3;

		printf("AGENTBENCH,%s,%s,%.2f,%.0f,%.0f,%ld\n", core, phase_name[ph], s, rate,
		       worst, huge_kb[ph] / 1024);
		printf("%-8s %9.2f %14.0f %16.0f %18ld\n", phase_name[ph], s, rate, worst,
		       huge_kb[ph] / 1024);
	}
	printf("agent: exit %d, %.2f s wall, %.3f s CPU (user %.3f, system %.3f): ",
	       WIFEXITED(status) ? WEXITSTATUS(status) : -1, (t1 - t0) / 1e9, cpu_s,
	       ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
	       ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	printf("%.0f ms of CPU per GiB collapsed\n", gib > 0 ? cpu_s * 1e3 / gib : 0);
	printf("coverage: %ld of %zu MiB PMD-mapped after the agent; ",
	       huge_kb[DURING] / 1024, mib / 2 * 2);
	printf("Rust core process_madvise succeed +%lld (of %zu PMDs)\n", ok1 - ok0, mib / 2);
	print_agent_report("summary:", 0);
	printf("throughput after/before: %.3f (under TCG: QEMU's software TLB, not the CPU's)\n",
	       atomic_load(&sh->m[BEFORE].reads) && atomic_load(&sh->m[AFTER].ns) ?
	       ((double)atomic_load(&sh->m[AFTER].reads) / atomic_load(&sh->m[AFTER].ns)) /
	       ((double)atomic_load(&sh->m[BEFORE].reads) / atomic_load(&sh->m[BEFORE].ns)) : 0);
	/* A run that did not collapse the region through the Rust core is no result. */
	if (!WIFEXITED(status) || WEXITSTATUS(status) ||
	    huge_kb[DURING] / 1024 != (long)(mib / 2 * 2) ||
	    (!strcmp(core, "rust") && ok1 - ok0 != (long long)(mib / 2))) {
		fprintf(stderr, "thp_agent_bench: %s; its report:\n",
			"the agent did not collapse the whole region");
		print_agent_report(NULL, 0);
		return 1;
	}
	return 0;
}
