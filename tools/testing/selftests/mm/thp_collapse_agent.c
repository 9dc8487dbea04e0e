// SPDX-License-Identifier: GPL-2.0
/*
 * The thp-agent (tools/mm/thp-agent) against a running workload, on the
 * Rust core:
 *  - "collapse PID --range A-B --json" collapses the workload's range: the
 *    report says every range collapsed, the Rust core's process_madvise
 *    succeed counter moved by as many, the workload finds its memory
 *    PMD-mapped (its own smaps) with the same bytes;
 *  - "status PID --json" says how much of the range is PMD-mapped, as the
 *    workload's smaps does, before (0) and after (all);
 *  - an unprivileged agent (user nobody) fails with exit status 2 and says
 *    what it lacks, and the memory stays as it was;
 *  - a target that exits midway gives a report marked incomplete, with the
 *    ranges left not attempted because the process exited, and exit status 1;
 *  - "run --config" (the daemon) follows a workload that keeps reading one
 *    2 MiB range and wrote another once: DAMON reports the first hot, the
 *    daemon collapses it (its log and report.json say so, the Rust core's
 *    counter moved, the workload finds it PMD-mapped with the same bytes) and
 *    leaves the cold one alone (no collapse logged, still base pages), stays
 *    within its budget, and writes a complete report and a PNG plot.
 *
 * THP stays "never", so that khugepaged leaves the workload alone; the agent
 * plans its range with --include-ineligible (MADV_COLLAPSE ignores the
 * setting, smaps' THPeligible does not).
 *
 * Run as root: thp_collapse_agent ./thp-agent
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest.h"
#include "thp_collapse_mem.h"

#define NR_PMDS 8
#define SLOW_PMDS 32

static const char *agent = "./thp-agent";
static char orig_core[16], orig_enabled[64];

/* A workload: @nr PMDs of base pages, filled, then commands on a pipe. */
struct workload {
	pid_t pid;
	char *p;		/* its range (the same address in the child) */
	size_t len;
	int cmd;		/* write end: 'c' check and exit, 'x' exit */
	int res;		/* read end: the range's address, then the check */
};

static void workload_main(char *p, size_t len, int cmd, int res)
{
	char c = 0;
	size_t pg;
	bool ok = true;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Base pages only at fault time; then MADV_COLLAPSE may collapse. */
	if (madvise(p, len, MADV_NOHUGEPAGE))
		_exit(10);
	for (pg = 0; pg < len / PAGE_SZ; pg++)
		mem_fill(p + pg * PAGE_SZ, pg, 1);
	if (madvise(p, len, MADV_HUGEPAGE))
		_exit(11);
	if (write(res, &p, sizeof(p)) != sizeof(p))
		_exit(12);
	if (read(cmd, &c, 1) != 1 || c == 'x')
		_exit(0);
	for (pg = 0; pg < len / PAGE_SZ; pg++)
		ok &= mem_page_ok(p + pg * PAGE_SZ, pg, 1);
	c = ok ? (check_huge_anon(p, len, len / PMD_SZ, PMD_SZ) ? 'H' : 'S') :
		 'B';
	if (write(res, &c, 1) != 1)
		_exit(13);
	_exit(0);
}

static struct workload workload_start(size_t nr_pmds)
{
	struct workload w = { .len = nr_pmds * PMD_SZ };
	int cmd[2], res[2];

	w.p = mmap_pmd_aligned(nr_pmds, PROT_READ | PROT_WRITE);
	if (!w.p || pipe(cmd) || pipe(res))
		ksft_exit_fail_perror("workload");
	w.pid = fork();
	if (w.pid < 0)
		ksft_exit_fail_perror("fork");
	if (!w.pid)
		workload_main(w.p, w.len, cmd[0], res[1]);
	close(cmd[0]);
	close(res[1]);
	w.cmd = cmd[1];
	w.res = res[0];
	/* Ready once it sends its address (the parent's mapping is unused). */
	if (read(w.res, &w.p, sizeof(w.p)) != sizeof(w.p))
		ksft_exit_fail_msg("the workload did not start\n");
	return w;
}

/* Waits for the workload to exit and closes its pipes. */
static void workload_reap(struct workload *w)
{
	waitpid(w->pid, NULL, 0);
	close(w->cmd);
	close(w->res);
}

/* Tells the workload to check its memory and exit: 'H' huge and intact,
 * 'S' intact but not all PMD-mapped, 'B' bad bytes, 0 no answer.
 */
static char workload_check(struct workload *w)
{
	char c = 'c', r = 0;

	if (write(w->cmd, &c, 1) != 1 || read(w->res, &r, 1) != 1)
		r = 0;
	workload_reap(w);
	return r;
}

/*
 * Runs the agent with the arguments after @len (NULL-terminated), as user
 * @uid (-1: as is), its stdout and stderr into @out (of @len bytes,
 * NUL-terminated). Returns its exit status, or -1.
 */
static int run_agent(int uid, char *out, size_t len, ...)
{
	char path[] = "/tmp/thp_agent_out.XXXXXX";
	const char *argv[16] = { agent };
	int fd = mkstemp(path), status, i;
	va_list ap;
	ssize_t n;
	pid_t pid;

	if (fd < 0)
		ksft_exit_fail_perror("mkstemp");
	unlink(path);
	va_start(ap, len);
	for (i = 1; i < 15 && (argv[i] = va_arg(ap, const char *)); i++)
		;
	va_end(ap);
	pid = fork();
	if (pid < 0)
		ksft_exit_fail_perror("fork");
	if (!pid) {
		dup2(fd, 1);
		dup2(fd, 2);
		if (uid >= 0 && (setgroups(0, NULL) || setresgid(uid, uid, uid) ||
				 setresuid(uid, uid, uid)))
			_exit(126);
		execv(agent, (char *const *)argv);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid)
		return -1;
	n = pread(fd, out, len - 1, 0);
	out[n > 0 ? n : 0] = '\0';
	close(fd);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The integer after the first "@key": in @json, or -1. */
static long long json_int(const char *json, const char *key)
{
	char pat[64];
	const char *s;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	s = strstr(json, pat);
	if (!s)
		return -1;
	s += strlen(pat);
	while (*s == ' ')
		s++;
	return strtoll(s, NULL, 10);
}

/* Whether "@key": false is in @json. */
static bool json_false(const char *json, const char *key)
{
	char pat[64];
	const char *s;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	s = strstr(json, pat);
	if (!s)
		return false;
	s += strlen(pat);
	while (*s == ' ')
		s++;
	return !strncmp(s, "false", 5);
}

/* The @key of the VMA that starts at @start in a status report, or -1. */
static long long vma_int(const char *json, void *start, const char *key)
{
	char pat[64];
	const char *s;

	snprintf(pat, sizeof(pat), "\"start\":%lu", (unsigned long)start);
	s = strstr(json, pat);
	if (!s) {
		snprintf(pat, sizeof(pat), "\"start\": %lu",
			 (unsigned long)start);
		s = strstr(json, pat);
	}
	return s ? json_int(s, key) : -1;
}

/* AnonHugePages of the VMA at @start of process @pid, in bytes, or -1. */
static long long smaps_anon_huge(pid_t pid, void *start)
{
	char path[64], line[256];
	unsigned long a, b;
	long long kb = -1;
	bool in = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps", pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		/* A VMA's first line: "start-end perms ..." */
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2) {
			in = a == (unsigned long)start;
			continue;
		}
		if (in && sscanf(line, "AnonHugePages: %lld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

static void range_arg(char *buf, size_t len, struct workload *w)
{
	snprintf(buf, len, "%lx-%lx", (unsigned long)w->p,
		 (unsigned long)w->p + w->len);
}

static void test_collapse_and_status(void)
{
	static char out[1 << 16];
	struct workload w = workload_start(NR_PMDS);
	long long before = rust_stat("process_madvise", "succeed");
	char pid[16], range[64];
	long long st_pmd, st_smaps, sm;
	bool ok;
	int rc;
	char r;

	collapse_require_core("rust");
	snprintf(pid, sizeof(pid), "%d", w.pid);
	range_arg(range, sizeof(range), &w);

	rc = run_agent(-1, out, sizeof(out), "status", pid, "--json", NULL);
	st_pmd = vma_int(out, w.p, "pmd_mapped");
	sm = smaps_anon_huge(w.pid, w.p);
	ksft_test_result(rc == 0 && st_pmd == 0 && sm == 0,
			 "status --json before: the range is not PMD-mapped, as smaps says (rc %d, %lld, smaps %lld)\n",
			 rc, st_pmd, sm);

	rc = run_agent(-1, out, sizeof(out), "collapse", pid, "--range", range,
		       "--include-ineligible", "--json", NULL);
	ok = rc == 0 && json_int(out, "planned") == NR_PMDS &&
	     json_int(out, "collapsed") == NR_PMDS &&
	     json_int(out, "failed") == 0 &&
	     rust_stat("process_madvise", "succeed") == before + NR_PMDS;
	ksft_test_result(ok,
			 "collapse --json: %d of %d ranges collapsed, by the Rust core (rc %d, planned %lld, collapsed %lld, Rust succeed +%lld)\n",
			 NR_PMDS, NR_PMDS, rc, json_int(out, "planned"),
			 json_int(out, "collapsed"),
			 rust_stat("process_madvise", "succeed") - before);
	if (!ok)
		ksft_print_msg("agent: %.1000s\n", out);

	rc = run_agent(-1, out, sizeof(out), "status", pid, "--json", NULL);
	st_pmd = vma_int(out, w.p, "pmd_mapped");
	st_smaps = vma_int(out, w.p, "smaps_pmd_mapped");
	sm = smaps_anon_huge(w.pid, w.p);
	ksft_test_result(rc == 0 && st_pmd == (long long)w.len &&
			 st_smaps == (long long)w.len && sm == (long long)w.len,
			 "status --json after: all %zu MiB PMD-mapped, as smaps says (pagemap %lld, its smaps %lld, smaps %lld)\n",
			 w.len >> 20, st_pmd, st_smaps, sm);

	r = workload_check(&w);
	ksft_test_result(r == 'H',
			 "the workload finds its range PMD-mapped with the same bytes (%c)\n",
			 r ? r : '?');
}

static void test_unprivileged(void)
{
	static char out[1 << 14];
	struct workload w = workload_start(1);
	long long before = rust_stat_total("process_madvise");
	char pid[16];
	int rc;
	char r;

	collapse_require_core("rust");
	snprintf(pid, sizeof(pid), "%d", w.pid);
	rc = run_agent(65534, out, sizeof(out), "collapse", pid,
		       "--include-ineligible", NULL);
	ksft_test_result(rc == 2 && strstr(out, "CAP_SYS_NICE") &&
			 rust_stat_total("process_madvise") == before,
			 "as nobody: exit 2, says it needs CAP_SYS_NICE, no collapse attempted (rc %d)\n",
			 rc);
	if (rc != 2)
		ksft_print_msg("agent: %.600s\n", out);
	r = workload_check(&w);
	ksft_test_result(r == 'S',
			 "as nobody: the workload's memory is unchanged and not collapsed (%c)\n",
			 r ? r : '?');
}

static void test_target_exits(void)
{
	static char out[1 << 16];
	struct workload w = workload_start(SLOW_PMDS);
	char pid[16], range[64];
	int rc, status;
	pid_t killer;
	bool ok;

	collapse_require_core("rust");
	snprintf(pid, sizeof(pid), "%d", w.pid);
	range_arg(range, sizeof(range), &w);
	/* At 4 MiB/s, 32 ranges take 16 s: the workload leaves after 1.5. */
	killer = fork();
	if (killer < 0)
		ksft_exit_fail_perror("fork");
	if (!killer) {
		char c = 'x';

		usleep(1500 * 1000);
		if (write(w.cmd, &c, 1) != 1)
			_exit(1);
		_exit(0);
	}
	rc = run_agent(-1, out, sizeof(out), "collapse", pid, "--range", range,
		       "--include-ineligible", "--budget", "4", "--json", NULL);
	waitpid(killer, &status, 0);
	workload_reap(&w);
	ok = rc == 1 && json_false(out, "complete") &&
	     strstr(out, "\"not_attempted\"") &&
	     strstr(out, "\"process exited\"") &&
	     json_int(out, "collapsed") > 0 &&
	     json_int(out, "collapsed") < SLOW_PMDS;
	ksft_test_result(ok,
			 "the target exits midway: exit 1, report incomplete, the rest not attempted (rc %d, collapsed %lld of %d)\n",
			 rc, json_int(out, "collapsed"), SLOW_PMDS);
	if (!ok)
		ksft_print_msg("agent: %.1500s\n", out);
}

/* ---- The daemon ------------------------------------------------------- */

#define DAEMON_DIR "/tmp/thp_agent_daemon"
#define DAEMON_SECONDS "20"
/* PMDs between the daemon test's hot and cold ranges. */
#define DAEMON_GAP_PMDS 32

/*
 * DAMON sees a page accessed when the CPU has set its accessed bit again
 * since DAMON cleared it; the CPU sets it when it walks the page table, after
 * the translation has left its TLB, and DAMON does not flush the TLB. A
 * reader whose pages all stay in the TLB of its CPU looks idle to DAMON until
 * something flushes that TLB: a switch to another process, a flush IPI. QEMU's
 * software TLB holds the workload's 2 MiB; the workload, mostly alone on a
 * CPU, went unseen for a whole run now and then (no hot region in 19 scans:
 * two CI runs, one in nine runs here with the workload pinned). So the
 * workload has its TLB flushed every millisecond, as a context switch would:
 * mprotect() of more of its own mapped pages than the kernel's single-page
 * flush ceiling (tlb_single_page_flush_ceiling, 33) flushes the whole mm.
 * And the test always runs the harder case: the workload alone on one CPU,
 * the agent, the test and kdamond on another.
 */
#define FLUSH_PAGES 64

/* Whether the test can put the workload and the rest on different CPUs. */
static bool two_cpus(int *workload_cpu, int *other_cpu)
{
	cpu_set_t set;
	int cpu;

	*workload_cpu = *other_cpu = -1;
	if (sched_getaffinity(0, sizeof(set), &set))
		return false;
	for (cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &set))
			continue;
		if (*other_cpu < 0)
			*other_cpu = cpu;
		else
			*workload_cpu = cpu;
	}
	return *workload_cpu >= 0;
}

static int pin_to(pid_t pid, int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(pid, sizeof(set), &set);
}

/*
 * Keeps every kdamond on @cpu until killed (the agent starts its kdamond
 * after this begins, and a new one each time its targets change).
 */
static void kdamond_pinner_main(int cpu)
{
	pid_t pids[8];
	int i, n;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() == 1)
		_exit(1);
	for (;;) {
		n = collapse_tasks_named("kdamond", pids, ARRAY_SIZE(pids));
		for (i = 0; i < n; i++)
			pin_to(pids[i], cpu);
		usleep(100 * 1000);
	}
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * The daemon's workload: @hot and @cold, one PMD each, written once; then,
 * on @cpu (-1: anywhere), it reads every page of @hot over and over, its TLB
 * flushed every millisecond, until a command comes ('c': report whether
 * @hot is PMD-mapped with its bytes and @cold is not).
 */
static void daemon_workload_main(char *hot, char *cold, int cpu, int cmd,
				 int res)
{
	struct pollfd pfd = { .fd = cmd, .events = POLLIN };
	/* Shared: never merged with @hot's or @cold's VMA. */
	char *flush = mmap(NULL, FLUSH_PAGES * PAGE_SZ, PROT_READ | PROT_WRITE,
			   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	double last = now_s();
	uint64_t sum = 0;
	bool ok = true, ro = false;
	char c = 0;
	size_t pg;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (flush == MAP_FAILED || (cpu >= 0 && pin_to(0, cpu)))
		_exit(9);
	memset(flush, 1, FLUSH_PAGES * PAGE_SZ);
	if (madvise(hot, PMD_SZ, MADV_NOHUGEPAGE) ||
	    madvise(cold, PMD_SZ, MADV_NOHUGEPAGE))
		_exit(10);
	for (pg = 0; pg < PAGES_PER_PMD; pg++) {
		mem_fill(hot + pg * PAGE_SZ, pg, 1);
		mem_fill(cold + pg * PAGE_SZ, pg, 1);
	}
	if (madvise(hot, PMD_SZ, MADV_HUGEPAGE) ||
	    madvise(cold, PMD_SZ, MADV_HUGEPAGE))
		_exit(11);
	if (write(res, &hot, sizeof(hot)) != sizeof(hot) ||
	    write(res, &cold, sizeof(cold)) != sizeof(cold))
		_exit(12);
	while (poll(&pfd, 1, 0) == 0) {
		for (pg = 0; pg < PAGES_PER_PMD; pg++)
			sum += __atomic_load_n((uint64_t *)(hot + pg * PAGE_SZ),
					       __ATOMIC_RELAXED);
		if (now_s() - last < 0.001)
			continue;
		/*
		 * Write permission taken from its present PTEs or given back
		 * (shared memory: no write notification): a flush each time.
		 */
		ro = !ro;
		if (mprotect(flush, FLUSH_PAGES * PAGE_SZ,
			     ro ? PROT_READ : PROT_READ | PROT_WRITE))
			_exit(14);
		last = now_s();
	}
	if (read(cmd, &c, 1) != 1 || c != 'c' || !sum)
		_exit(0);
	for (pg = 0; pg < PAGES_PER_PMD; pg++)
		ok &= mem_page_ok(hot + pg * PAGE_SZ, pg, 1) &&
		      mem_page_ok(cold + pg * PAGE_SZ, pg, 1);
	c = !ok ? 'B' :
	    !check_huge_anon(hot, PMD_SZ, 1, PMD_SZ) ? 'S' :
	    check_huge_anon(cold, PMD_SZ, 0, PMD_SZ) ? 'H' : 'C';
	if (write(res, &c, 1) != 1)
		_exit(13);
	_exit(0);
}

static void test_daemon(void)
{
	static char out[1 << 14], log[1 << 16], report[1 << 17];
	long long before = rust_stat("process_madvise", "succeed");
	/*
	 * The hot and the cold range DAEMON_GAP_PMDS apart. DAMON samples one
	 * page of a region per sample: a region spanning both is at most
	 * 2 / (DAEMON_GAP_PMDS + 2) hot, far below min_hotness 5 of 20 samples,
	 * even in the first aggregations, before DAMON has split the address
	 * space finely (seen with the ranges 2 MiB apart: a region spanning
	 * both at hotness 6 and both collapsed).
	 */
	char *area = mmap_pmd_aligned(DAEMON_GAP_PMDS + 2,
				      PROT_READ | PROT_WRITE);
	char *hot = area, *cold = area + (DAEMON_GAP_PMDS + 1) * PMD_SZ;
	char hot_pat[64], cold_pat[64];
	static const char png_sig[8] = "\x89PNG\r\n\x1a\n";
	char cfg[1024], png[8], r = 0, c = 'c';
	int cmd[2], res[2], rc, fd, workload_cpu, other_cpu;
	bool collapsed, cold_left, complete, plotted, pinned;
	pid_t pid, pinner = -1;
	cpu_set_t orig_cpus;

	collapse_require_core("rust");
	if (!area || pipe(cmd) || pipe(res) ||
	    sched_getaffinity(0, sizeof(orig_cpus), &orig_cpus))
		ksft_exit_fail_perror("daemon workload");
	munmap(area + PMD_SZ, DAEMON_GAP_PMDS * PMD_SZ);
	pinned = two_cpus(&workload_cpu, &other_cpu);
	if (!pinned)
		ksft_print_msg("one CPU: the workload shares it with the agent\n");
	else if (pin_to(0, other_cpu))
		ksft_exit_fail_perror("sched_setaffinity");
	pid = fork();
	if (pid < 0)
		ksft_exit_fail_perror("fork");
	if (!pid)
		daemon_workload_main(hot, cold, workload_cpu, cmd[0], res[1]);
	close(cmd[0]);
	close(res[1]);
	if (read(res[0], &hot, sizeof(hot)) != sizeof(hot) ||
	    read(res[0], &cold, sizeof(cold)) != sizeof(cold))
		ksft_exit_fail_msg("the daemon's workload did not start\n");
	if (pinned) {
		pinner = fork();
		if (pinner < 0)
			ksft_exit_fail_perror("fork");
		if (!pinner) {
			close(cmd[1]);
			close(res[0]);
			kdamond_pinner_main(other_cpu);
		}
	}

	/* Quick DAMON intervals for a slow emulated guest. */
	snprintf(cfg, sizeof(cfg),
		 "budget_mib_per_s = 16\n"
		 "scan_interval_s = 1\n"
		 "min_hotness = 5\n"
		 "max_psi_some_avg10 = 90.0\n"
		 "include_ineligible = true\n"
		 "[damon]\n"
		 "sample_us = 5000\n"
		 "aggr_us = 100000\n"
		 "update_us = 1000000\n"
		 "min_age_ms = 300\n"
		 "[[target]]\n"
		 "pid = %d\n", pid);
	mkdir(DAEMON_DIR, 0700);
	/* The agent appends to its log: only this run's decisions in it. */
	unlink(DAEMON_DIR "/agent.log");
	fd = open(DAEMON_DIR "/agent.toml", O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, cfg, strlen(cfg)) != (ssize_t)strlen(cfg))
		ksft_exit_fail_perror("config");
	close(fd);
	rc = run_agent(-1, out, sizeof(out), "run", "--config",
		       DAEMON_DIR "/agent.toml", "--duration", DAEMON_SECONDS,
		       "--report", DAEMON_DIR, "--log", DAEMON_DIR "/agent.log",
		       NULL);
	if (pinner > 0) {
		kill(pinner, SIGKILL);
		waitpid(pinner, NULL, 0);
	}
	if (write(cmd[1], &c, 1) != 1 || read(res[0], &r, 1) != 1)
		r = 0;
	waitpid(pid, NULL, 0);
	sched_setaffinity(0, sizeof(orig_cpus), &orig_cpus);
	close(cmd[1]);
	close(res[0]);

	collapse_read_file(DAEMON_DIR "/agent.log", log, sizeof(log));
	collapse_read_file(DAEMON_DIR "/report.json", report, sizeof(report));
	snprintf(hot_pat, sizeof(hot_pat), "event=collapse pid=%d range=%lx-",
		 pid, (unsigned long)hot);
	snprintf(cold_pat, sizeof(cold_pat), "event=collapse pid=%d range=%lx-",
		 pid, (unsigned long)cold);
	collapsed = strstr(log, hot_pat) &&
		    strstr(strstr(log, hot_pat), "result=collapsed") &&
		    rust_stat("process_madvise", "succeed") > before;
	cold_left = !strstr(log, cold_pat);
	complete = !strstr(report, "\"complete\":false") &&
		   (strstr(report, "\"complete\":true") ||
		    strstr(report, "\"complete\": true"));
	fd = open(DAEMON_DIR "/report.png", O_RDONLY);
	plotted = fd >= 0 && read(fd, png, 8) == 8 && !memcmp(png, png_sig, 8);
	if (fd >= 0)
		close(fd);

	ksft_test_result(rc == 0 && collapsed && r == 'H',
			 "run: the hot range DAMON reports is collapsed by the Rust core, the workload finds it PMD-mapped with the same bytes (rc %d, Rust succeed +%lld, workload %c)\n",
			 rc, rust_stat("process_madvise", "succeed") - before,
			 r ? r : '?');
	ksft_test_result(cold_left && r == 'H',
			 "run: the cold range is left alone: no collapse logged, still base pages\n");
	/* The summary comes first in report.json, before the targets. */
	ksft_test_result(json_int(report, "bytes_collapsed") >= (long long)PMD_SZ &&
			 json_int(report, "bytes_collapsed") <=
				 16LL * (json_int(report, "elapsed_s") + 1) << 20 &&
			 complete && plotted,
			 "run: within its budget of 16 MiB/s (%lld bytes in %lld s), the report complete, report.png a PNG\n",
			 json_int(report, "bytes_collapsed"),
			 json_int(report, "elapsed_s"));
	if (rc != 0 || !collapsed || !cold_left || !complete)
		ksft_print_msg("agent: %.600s\nlog: %.3000s\n", out, log);
}

static void restore(void)
{
	if (orig_core[0])
		collapse_set_core(orig_core);
	if (orig_enabled[0])
		write_str(THP_SYSFS "enabled", orig_enabled);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		agent = argv[1];
	collapse_test_start(orig_core, sizeof(orig_core), orig_enabled,
			    sizeof(orig_enabled));
	atexit(restore);
	/*
	 * THP stays "never" (collapse_test_start()), so that khugepaged does not
	 * collapse the workload first; MADV_COLLAPSE ignores the setting, and the
	 * agent plans the VMAs smaps calls ineligible with --include-ineligible.
	 */
	if (access(agent, X_OK))
		ksft_exit_fail_msg("no agent at %s\n", agent);
	ksft_set_plan(4 + 2 + 1 + 3);
	test_collapse_and_status();
	test_unprivileged();
	test_target_exits();
	test_daemon();
	ksft_finished();
}
