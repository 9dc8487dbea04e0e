// SPDX-License-Identifier: GPL-2.0
/*
 * thp_brk_pick - run a program only once exec has placed its brk heap in a
 * given range, to reproduce address-space collisions that depend on the
 * heap's random placement.
 *
 * Usage: thp_brk_pick LO HI PROGRAM [ARGS...]
 *   Forks traced children that stop at exec; reads start_brk (field 47 of
 *   /proc/PID/stat) and kills the child if it is outside [LO, HI), else lets
 *   it run to its end. Prints the try, the heap start and how the program
 *   ended; exits 0 once a program ran, 1 if no try within 20000 placed the
 *   heap in range, 2 on a usage or system error.
 *
 * The harness builds test programs as static PIEs, so this is for position-
 * dependent binaries built on purpose (scripts/repro-brk-collision.sh).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TRIES	20000
#define START_BRK_FIELD	47

/* start_brk of @pid, or 0 if it cannot be read. */
static unsigned long start_brk(pid_t pid)
{
	char path[64], buf[4096];
	size_t n;
	char *p;
	FILE *f;
	int field;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* The command name (field 2) may hold spaces: count after its ')'. */
	p = strrchr(buf, ')');
	if (!p || p[1] != ' ')
		return 0;
	p += 2;
	for (field = 3; field < START_BRK_FIELD; field++) {
		p = strchr(p, ' ');
		if (!p)
			return 0;
		p++;
	}
	return strtoul(p, NULL, 10);
}

int main(int argc, char **argv)
{
	unsigned long lo, hi, brk;
	int tries, status;
	pid_t pid;

	if (argc < 4) {
		fprintf(stderr, "usage: %s LO HI PROGRAM [ARGS...]\n", argv[0]);
		return 2;
	}
	lo = strtoul(argv[1], NULL, 0);
	hi = strtoul(argv[2], NULL, 0);
	for (tries = 1; tries <= MAX_TRIES; tries++) {
		pid = fork();
		if (pid < 0) {
			perror("fork");
			return 2;
		}
		if (!pid) {
			ptrace(PTRACE_TRACEME, 0, NULL, NULL);
			execv(argv[3], argv + 3);
			_exit(127);
		}
		/* The child stops with SIGTRAP once exec succeeded. */
		if (waitpid(pid, &status, 0) != pid || !WIFSTOPPED(status)) {
			fprintf(stderr, "%s: cannot run %s\n", argv[0], argv[3]);
			return 2;
		}
		brk = start_brk(pid);
		if (brk < lo || brk >= hi) {
			kill(pid, SIGKILL);
			ptrace(PTRACE_DETACH, pid, NULL, NULL);
			waitpid(pid, &status, 0);
			continue;
		}
		printf("# thp_brk_pick: try %d, start_brk %#lx\n", tries, brk);
		fflush(stdout);
		ptrace(PTRACE_DETACH, pid, NULL, NULL);
		if (waitpid(pid, &status, 0) != pid) {
			perror("waitpid");
			return 2;
		}
		if (WIFSIGNALED(status))
			printf("# thp_brk_pick: killed by signal %d (%s)\n",
			       WTERMSIG(status), strsignal(WTERMSIG(status)));
		else
			printf("# thp_brk_pick: exit status %d\n",
			       WEXITSTATUS(status));
		return 0;
	}
	printf("# thp_brk_pick: no heap in [%#lx, %#lx) in %d tries\n", lo, hi,
	       MAX_TRIES);
	return 1;
}
