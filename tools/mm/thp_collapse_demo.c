// SPDX-License-Identifier: GPL-2.0
/*
 * thp_collapse_demo - collapse anonymous memory with MADV_COLLAPSE and show
 * which collapse core (Rust or C) did the work, with AnonHugePages and the
 * Rust core's counters before and after.
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

static void show_file(const char *path, const char *label)
{
	char line[128];
	FILE *f = fopen(path, "r");

	if (!f) {
		printf("  %s: (%s missing)\n", label, path);
		return;
	}
	while (fgets(line, sizeof(line), f)) {
		long long n;
		char name[64];

		/* Counters: show the non-zero ones only. */
		if (sscanf(line, "%63s %lld", name, &n) == 2) {
			if (n)
				printf("  %s.%s = %lld\n", label, name, n);
		} else {
			printf("  %s: %s", label, line);
		}
	}
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
	/* Base pages at fault time, so there is something to collapse. */
	madvise(p, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < len; i += 4096)
		p[i] = (char)(i >> 12);
	madvise(p, len, MADV_HUGEPAGE);
	return p;
}

static void collapse_with(const char *core, size_t len)
{
	char *p = map_filled(len);
	long before = anon_huge_kb(p), after;
	int ret, err;

	if (set_core(core))
		printf("\n(cannot select the %s core)\n", core);
	printf("\n== MADV_COLLAPSE of %zu MiB with the %s core\n", len >> 20, core);
	show_file(SYSFS "/core", "core");
	printf("  AnonHugePages before: %ld kB\n", before);
	ret = madvise(p, len, MADV_COLLAPSE);
	err = errno;
	after = anon_huge_kb(p);
	printf("  madvise(MADV_COLLAPSE) = %d%s%s\n", ret, ret ? ", errno " : "",
	       ret ? strerrorname_np(err) : "");
	printf("  AnonHugePages after:  %ld kB\n", after);
	for (size_t i = 0; i < len; i += 4096)
		if (p[i] != (char)(i >> 12)) {
			printf("  DATA MISMATCH at offset %zu\n", i);
			exit(1);
		}
	printf("  contents verified (%zu pages)\n", len >> 12);
	printf("  Rust core counters (non-zero) after:\n");
	show_file(SYSFS "/rust_stats/madvise", "madvise");
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 8;
	size_t len = ((mib << 20) + PMD_SIZE - 1) & ~(PMD_SIZE - 1);
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
		collapse_with("rust", len);
	if (argc <= 2 || !strcmp(argv[2], "c"))
		collapse_with("c", len);

	/* Leave the knob as it was. */
	set_core(strstr(orig, "[rust]") ? "rust" : "c");
	return 0;
}
