// SPDX-License-Identifier: GPL-2.0
/*
 * thp_collapse_demo - collapse anonymous memory with MADV_COLLAPSE with each
 * core (Rust, then C), from the same state: base pages only, out of
 * khugepaged's reach. Shows AnonHugePages before and after, how long the call
 * took, and which Rust core counters moved.
 *
 * Usage: thp_collapse_demo [MiB [rust|c]]
 *   MiB: default 8, rounded up to 2 MiB; with a core, only that core runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define PMD_SIZE	(2UL << 20)
#define SYSFS		"/sys/kernel/mm/transparent_hugepage/collapse"

/* AnonHugePages of the VMA starting at @addr, from /proc/self/smaps, in kB. */
static long anon_huge_kb(void *addr)
{
	char line[256], start[32];
	long kb = -1;
	int in_vma = 0;
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return -1;
	snprintf(start, sizeof(start), "%lx-", (unsigned long)addr);
	while (fgets(line, sizeof(line), f)) {
		if (strchr(line, '-') && strchr(line, ' ') &&
		    strchr(line, '-') < strchr(line, ' '))
			in_vma = !strncmp(line, start, strlen(start));
		else if (in_vma && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

#define NR_OUTCOMES	64

/* The Rust core's madvise counters: names and values, in file order. */
struct counters {
	int nr;
	char name[NR_OUTCOMES][48];
	long long n[NR_OUTCOMES];
};

static void read_counters(struct counters *c)
{
	FILE *f = fopen(SYSFS "/rust_stats/madvise", "r");

	c->nr = 0;
	if (!f)
		return;
	while (c->nr < NR_OUTCOMES &&
	       fscanf(f, "%47s %lld", c->name[c->nr], &c->n[c->nr]) == 2)
		c->nr++;
	fclose(f);
}

/* Prints the counters that moved from @before to @after. */
static void show_moved(const struct counters *before,
		       const struct counters *after)
{
	int shown = 0;

	for (int i = 0; i < after->nr && i < before->nr; i++) {
		if (after->n[i] == before->n[i])
			continue;
		printf("  rust_stats/madvise %s: +%lld\n", after->name[i],
		       after->n[i] - before->n[i]);
		shown++;
	}
	if (!shown)
		printf("  rust_stats/madvise: no counter moved\n");
}

static void show_core(void)
{
	char line[64] = "";
	FILE *f = fopen(SYSFS "/core", "r");

	if (f && fgets(line, sizeof(line), f))
		printf("  core: %s", line);
	if (f)
		fclose(f);
}

static int set_core(const char *core)
{
	FILE *f = fopen(SYSFS "/core", "w");
	int ok;

	if (!f)
		return -1;
	ok = fputs(core, f) != EOF;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/*
 * A PMD-aligned VMA of @len bytes, every page written, all of them base pages:
 * THP is off for the process while it faults them in, so neither the fault nor
 * khugepaged (which skips such a process) makes a huge page. No MADV_HUGEPAGE
 * either, which would wake khugepaged: MADV_COLLAPSE needs neither.
 */
static char *map_filled(size_t len)
{
	char *raw = mmap(NULL, len + PMD_SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *p;

	if (raw == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	p = (char *)(((unsigned long)raw + PMD_SIZE - 1) & ~(PMD_SIZE - 1));
	/* Trim to exactly [p, p + len), so that smaps shows this VMA alone. */
	if (p > raw)
		munmap(raw, p - raw);
	munmap(p + len, raw + PMD_SIZE - p);
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)) {
		perror("prctl(PR_SET_THP_DISABLE)");
		exit(1);
	}
	for (size_t i = 0; i < len; i += 4096)
		p[i] = (char)(i >> 12);
	if (prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0)) {
		perror("prctl(PR_SET_THP_DISABLE)");
		exit(1);
	}
	return p;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Collapses a fresh range with @core; returns how long the call took, in ms. */
static double collapse_with(const char *core, size_t len)
{
	char *p = map_filled(len);
	long before = anon_huge_kb(p), after;
	struct counters c0, c1;
	double t0, ms;
	int ret, err;

	if (set_core(core))
		printf("\n(cannot select the %s core)\n", core);
	printf("\n== MADV_COLLAPSE of %zu MiB with the %s core\n", len >> 20, core);
	show_core();
	printf("  AnonHugePages before: %ld kB\n", before);
	read_counters(&c0);
	t0 = now_ms();
	ret = madvise(p, len, MADV_COLLAPSE);
	err = errno;
	ms = now_ms() - t0;
	read_counters(&c1);
	after = anon_huge_kb(p);
	printf("  madvise(MADV_COLLAPSE) = %d%s%s, in %.2f ms\n", ret,
	       ret ? ", errno " : "", ret ? strerrorname_np(err) : "", ms);
	printf("  AnonHugePages after:  %ld kB\n", after);
	for (size_t i = 0; i < len; i += 4096)
		if (p[i] != (char)(i >> 12)) {
			printf("  DATA MISMATCH at offset %zu\n", i);
			exit(1);
		}
	printf("  contents verified (%zu pages)\n", len >> 12);
	show_moved(&c0, &c1);
	munmap(p, len);
	return ret ? -1 : ms;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 8;
	size_t len = ((mib << 20) + PMD_SIZE - 1) & ~(PMD_SIZE - 1);
	double rust_ms = 0, c_ms = 0;
	char orig[32] = "";
	FILE *f;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("THP collapse demo: %zu MiB of private anonymous memory\n", len >> 20);
	f = fopen(SYSFS "/core", "r");
	if (!f) {
		printf("no %s: kernel built without CONFIG_THP_COLLAPSE_RUST\n", SYSFS);
		return 1;
	}
	if (fgets(orig, sizeof(orig), f))
		printf("active collapse core at boot: %s", orig);
	fclose(f);

	if (argc > 2 && strcmp(argv[2], "rust") && strcmp(argv[2], "c")) {
		printf("unknown core '%s' (rust or c)\n", argv[2]);
		return 1;
	}
	if (argc <= 2 || !strcmp(argv[2], "rust"))
		rust_ms = collapse_with("rust", len);
	if (argc <= 2 || !strcmp(argv[2], "c"))
		c_ms = collapse_with("c", len);
	if (rust_ms > 0 && c_ms > 0)
		printf("\n%zu MiB by each core: rust %.2f ms, c %.2f ms\n"
		       "(one run each, noisy under emulation: make bench measures)\n",
		       len >> 20, rust_ms, c_ms);

	/* Leave the knob as it was. */
	set_core(strstr(orig, "[rust]") ? "rust" : "c");
	return 0;
}
