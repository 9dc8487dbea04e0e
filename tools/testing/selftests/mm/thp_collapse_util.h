/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers for the Rust THP collapse core selftests: select the core, read
 * its counters, map PMD-aligned memory.
 */
#ifndef __THP_COLLAPSE_UTIL_H
#define __THP_COLLAPSE_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kselftest.h"

#define COLLAPSE_SYSFS "/sys/kernel/mm/transparent_hugepage/collapse"
#define THP_SYSFS "/sys/kernel/mm/transparent_hugepage/"

/* The core ("rust" or "c") selected now, or NULL if there is no knob. */
static inline const char *collapse_core(void)
{
	static char buf[32];
	FILE *f = fopen(COLLAPSE_SYSFS "/core", "r");
	char *open, *close;

	if (!f)
		return NULL;
	if (!fgets(buf, sizeof(buf), f)) {
		fclose(f);
		return NULL;
	}
	fclose(f);
	open = strchr(buf, '[');
	close = open ? strchr(open, ']') : NULL;
	if (!close)
		return NULL;
	*close = '\0';
	return open + 1;
}

/* Write @val to the knob @path; returns 0 or the errno of the write. */
static inline int collapse_write_knob(const char *path, const char *val)
{
	FILE *f = fopen(path, "w");
	int err = 0;

	if (!f)
		return errno;
	if (fputs(val, f) == EOF)
		err = errno;
	if (fclose(f) == EOF && !err)
		err = errno;
	return err;
}

/* Write @val to the core knob; returns 0 or the errno of the write. */
static inline int collapse_set_core(const char *val)
{
	return collapse_write_knob(COLLAPSE_SYSFS "/core", val);
}

/*
 * Write @val ("read", "ptl" or "vma") to the Rust core's rust_switch knob; returns 0
 * or the errno of the write.
 */
static inline int collapse_set_switch(const char *val)
{
	return collapse_write_knob(COLLAPSE_SYSFS "/rust_switch", val);
}

/*
 * Widen the Rust core's switch under the page-table locks by @us
 * microseconds (debugfs thp_collapse_switch_delay_us, a hook of test kernels
 * only); returns 0 or the errno (ENOENT: no such hook).
 */
static inline int collapse_set_switch_delay(unsigned int us)
{
	char val[16];

	snprintf(val, sizeof(val), "%u", us);
	return collapse_write_knob("/sys/kernel/debug/thp_collapse_switch_delay_us", val);
}

static inline void collapse_require_core(const char *val)
{
	if (collapse_set_core(val))
		ksft_exit_fail_msg("cannot select the %s collapse core\n", val);
}

/*
 * The Rust core's counter for @caller ("madvise", "process_madvise",
 * "khugepaged") and @outcome ("succeed", "page_lock", ...), or -1.
 */
static inline long long rust_stat(const char *caller, const char *outcome)
{
	char path[256], name[64];
	long long val, ret = -1;
	FILE *f;

	snprintf(path, sizeof(path), COLLAPSE_SYSFS "/rust_stats/%s", caller);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fscanf(f, "%63s %lld", name, &val) == 2) {
		if (!strcmp(name, outcome)) {
			ret = val;
			break;
		}
	}
	fclose(f);
	return ret;
}

/*
 * Whether @name is one of the lines after the outcomes, which tell how
 * anonymous collapses went (in place, copied early or under the lock; the
 * retries and restarts of early copies; the waits for another collapse of a
 * range; switched under the page-table locks, with the mmap lock for read
 * too, or fell back to the VMA write lock; the requests that drained the LRU
 * batches), not how a range ended.
 */
static inline bool rust_stat_is_path(const char *name)
{
	return !strcmp(name, "in_place") || !strcmp(name, "copied_early") ||
	       !strcmp(name, "recopied") || !strcmp(name, "copied_locked") ||
	       !strcmp(name, "early_retries") || !strcmp(name, "recopied_early") ||
	       !strcmp(name, "early_restarts") || !strcmp(name, "claim_waits") ||
	       !strcmp(name, "switched_ptl") || !strcmp(name, "switched_read") ||
	       !strcmp(name, "switch_fallbacks") || !strcmp(name, "in_place_read") ||
	       !strcmp(name, "lru_drains");
}

/* The sum of the Rust core's outcome counters for @caller, or -1. */
static inline long long rust_stat_total(const char *caller)
{
	char path[256], name[64];
	long long val, sum = 0;
	FILE *f;

	snprintf(path, sizeof(path), COLLAPSE_SYSFS "/rust_stats/%s", caller);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fscanf(f, "%63s %lld", name, &val) == 2)
		if (!rust_stat_is_path(name))
			sum += val;
	fclose(f);
	return sum;
}

/* A snapshot of the Rust core's counters for one caller, by outcome. */
#define RUST_MAX_OUTCOMES 64
struct rust_stats {
	int n;
	char name[RUST_MAX_OUTCOMES][48];
	long long v[RUST_MAX_OUTCOMES];
};

/* Reads every counter of @caller into @s (n = 0 if there are none). */
static inline void rust_stats_read(const char *caller, struct rust_stats *s)
{
	char path[256];
	FILE *f;

	s->n = 0;
	snprintf(path, sizeof(path), COLLAPSE_SYSFS "/rust_stats/%s", caller);
	f = fopen(path, "r");
	if (!f)
		return;
	while (s->n < RUST_MAX_OUTCOMES &&
	       fscanf(f, "%47s %lld", s->name[s->n], &s->v[s->n]) == 2)
		s->n++;
	fclose(f);
}

/* How much outcome @name moved from @a to @b. */
static inline long long rust_stats_delta(const struct rust_stats *a,
					 const struct rust_stats *b,
					 const char *name)
{
	int i;

	for (i = 0; i < a->n && i < b->n; i++)
		if (!strcmp(a->name[i], name))
			return b->v[i] - a->v[i];
	return 0;
}

/*
 * How the Rust core's collapses for a caller went between two reads
 * (rust_stats_read()): the ranges collapsed, and the path counters (see
 * rust_stat_is_path()), each by how much it moved.
 */
struct rust_paths {
	long long succeed;	/* ranges collapsed */
	long long early;	/* copied_early: copied as the process ran */
	long long recopied;	/* pages of those copied again under the lock */
	long long locked;	/* copied_locked: all copied under the lock */
	long long retries;	/* early_retries: passes after the first */
	long long again;	/* recopied_early: pages those copied again */
	long long restarts;	/* early_restarts: early copies started over */
	long long in_place;	/* PMD ranges mapped in place, without a copy */
	long long waits;	/* claim_waits: waits for another collapse */
	long long switched;	/* switched_ptl: VMA's faults let in */
	long long read;		/* switched_read: mmap-lock readers too */
	long long fallbacks;	/* switch_fallbacks: VMA write-locked after all */
};

/* How the path counters (and succeed) moved from @a to @b. */
static inline struct rust_paths rust_paths_delta(const struct rust_stats *a,
						 const struct rust_stats *b)
{
	return (struct rust_paths){
		.succeed = rust_stats_delta(a, b, "succeed"),
		.early = rust_stats_delta(a, b, "copied_early"),
		.recopied = rust_stats_delta(a, b, "recopied"),
		.locked = rust_stats_delta(a, b, "copied_locked"),
		.retries = rust_stats_delta(a, b, "early_retries"),
		.again = rust_stats_delta(a, b, "recopied_early"),
		.restarts = rust_stats_delta(a, b, "early_restarts"),
		.in_place = rust_stats_delta(a, b, "in_place"),
		.waits = rust_stats_delta(a, b, "claim_waits"),
		.switched = rust_stats_delta(a, b, "switched_ptl"),
		.read = rust_stats_delta(a, b, "switched_read"),
		.fallbacks = rust_stats_delta(a, b, "switch_fallbacks"),
	};
}

/*
 * Whether @d adds up: each range collapsed went one way (copied early, copied
 * locked or mapped in place), and no early copy started over more than once.
 */
static inline bool rust_paths_add_up(const struct rust_paths *d)
{
	return d->early + d->locked + d->in_place == d->succeed &&
	       d->restarts <= d->succeed && d->switched <= d->early &&
	       d->read <= d->switched &&
	       d->fallbacks <= d->early + d->locked;
}

/*
 * Appends " outcome +n" to @out (of @len bytes) for every counter that moved
 * from @a to @b, or " none" if none did; returns the sum of the outcomes'
 * moves (not of the path counters, see rust_stat_is_path()).
 */
static inline long long rust_stats_moved(const struct rust_stats *a,
					 const struct rust_stats *b,
					 char *out, size_t len)
{
	long long total = 0;
	size_t at = strlen(out);
	int i;

	for (i = 0; i < a->n && i < b->n && at < len; i++) {
		if (b->v[i] == a->v[i])
			continue;
		if (!rust_stat_is_path(a->name[i]))
			total += b->v[i] - a->v[i];
		at += snprintf(out + at, len - at, " %s +%lld", a->name[i],
			       b->v[i] - a->v[i]);
	}
	if (!total && at < len)
		snprintf(out + at, len - at, " none");
	return total;
}

/*
 * Save the current value of the sysfs file @path in @old (the bracketed
 * choice, for "a [b] c" files) and write @val. Returns 0 or an errno.
 */
static inline int sysfs_swap_str(const char *path, char *old, size_t len,
				 const char *val)
{
	FILE *f = fopen(path, "r");

	if (!f)
		return errno;
	if (!fgets(old, len, f)) {
		int err = ferror(f) ? errno : ENODATA;

		fclose(f);
		return err;
	}
	fclose(f);
	/* "always [madvise] never" -> "madvise" */
	if (strchr(old, '[')) {
		char *s = strchr(old, '[') + 1;

		memmove(old, s, strlen(s) + 1);
		if (!strchr(old, ']')) {
			/* @old too short for the whole line. */
			errno = ENOBUFS;
			return errno;
		}
		*strchr(old, ']') = '\0';
	}
	f = fopen(path, "w");
	if (!f)
		return errno;
	fputs(val, f);
	return fclose(f) ? errno : 0;
}

/* Writes @val to the file at @path (truncating it); 0 or -1. */
static inline int write_str(const char *path, const char *val)
{
	FILE *f = fopen(path, "w");
	int ok;

	if (!f)
		return -1;
	ok = fputs(val, f) != EOF;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/*
 * Reads the file at @path into @buf, NUL-terminated (at most @len - 1 bytes,
 * with one read(2), as sysfs and procfs files want); the bytes read, or -1.
 */
static inline ssize_t collapse_read_file(const char *path, char *buf,
					 size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	buf[0] = '\0';
	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return n;
}

/*
 * The PIDs of the tasks whose comm begins with @prefix (a kernel thread's
 * name: "khugepaged", "kdamond"), at most @max of them into @pids; how many
 * were found.
 */
static inline int collapse_tasks_named(const char *prefix, pid_t *pids,
				       int max)
{
	char path[300], comm[32];
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;

	while (d && n < max && (e = readdir(d))) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/comm", e->d_name);
		if (collapse_read_file(path, comm, sizeof(comm)) > 0 &&
		    !strncmp(comm, prefix, strlen(prefix)))
			pids[n++] = atoi(e->d_name);
	}
	if (d)
		closedir(d);
	return n;
}

/* Writes @val to the file at @path, where failing does not matter. */
static inline void set_str(const char *path, const char *val)
{
	write_str(path, val);
}

/* A field of /proc/meminfo, in kB, or -1. */
static inline long meminfo_kb(const char *field)
{
	FILE *f = fopen("/proc/meminfo", "r");
	size_t n = strlen(field);
	char line[128];
	long kb = -1;

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, field, n) && line[n] == ':') {
			kb = atol(line + n + 1);
			break;
		}
	if (f)
		fclose(f);
	return kb;
}

/*
 * The field @field (with its colon: "Swap:", "Locked:") of the VMA that
 * contains @addr in /proc/self/smaps, in kB, or -1.
 */
static inline long smaps_kb(const void *addr, const char *field)
{
	unsigned long start, end, at = (unsigned long)addr;
	size_t flen = strlen(field);
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[256];
	bool in = false;
	long kb = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		/* A VMA's first line: "start-end perms offset dev inode path" */
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
			in = start <= at && at < end;
		else if (in && !strncmp(line, field, flen) &&
			 sscanf(line + flen, "%ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

#define CG_ROOT "/sys/fs/cgroup"

/*
 * Makes the cgroup @dir (a directory under CG_ROOT) with the memory
 * controller, no limit and no swap (its anonymous memory stays put: only page
 * cache can be reclaimed from it), and moves this process into it. A @dir
 * left by an earlier run is reused, its limit lifted. Returns 0, or -1 with
 * the step that failed in @why.
 */
static inline int cgroup_enter(const char *dir, const char **why)
{
	char path[256], pid[16];

	snprintf(pid, sizeof(pid), "%d", getpid());
	*why = "+memory in " CG_ROOT "/cgroup.subtree_control";
	if (write_str(CG_ROOT "/cgroup.subtree_control", "+memory"))
		return -1;
	*why = "mkdir";
	if (mkdir(dir, 0755) && errno != EEXIST)
		return -1;
	*why = "memory.max";
	snprintf(path, sizeof(path), "%s/memory.max", dir);
	if (write_str(path, "max"))
		return -1;
	*why = "memory.swap.max";
	snprintf(path, sizeof(path), "%s/memory.swap.max", dir);
	if (write_str(path, "0"))
		return -1;
	*why = "cgroup.procs";
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	return write_str(path, pid);
}

/* Moves this process back to the root cgroup and removes @dir; 0 or -1. */
static inline int cgroup_leave(const char *dir)
{
	char path[256], pid[16];

	snprintf(pid, sizeof(pid), "%d", getpid());
	snprintf(path, sizeof(path), "%s/memory.max", dir);
	write_str(path, "max");
	if (write_str(CG_ROOT "/cgroup.procs", pid))
		return -1;
	return rmdir(dir);
}

/*
 * The value of @key in the flat-keyed file @file (memory.stat,
 * memory.events) of cgroup @dir, or -1.
 */
static inline long long cgroup_stat(const char *dir, const char *file,
				    const char *key)
{
	char path[256], k[64];
	long long v, found = -1;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fscanf(f, "%63s %lld", k, &v) == 2)
		if (!strcmp(k, key))
			found = v;
	fclose(f);
	return found;
}

/*
 * The common start of the collapse selftests: the TAP header, a skip without
 * the core knob, and the active core saved in @orig. khugepaged is kept away
 * from the ranges under test (THP "enabled" set to "never", the old mode
 * saved in @enabled), so that the counters show the program's own collapses
 * only; MADV_COLLAPSE ignores that setting.
 */
static inline void collapse_test_start(char *orig, size_t olen, char *enabled,
				       size_t elen)
{
	const char *core = collapse_core();

	ksft_print_header();
	if (!core)
		ksft_exit_skip("no " COLLAPSE_SYSFS "/core (CONFIG_THP_COLLAPSE_RUST=n)\n");
	snprintf(orig, olen, "%s", core);
	if (sysfs_swap_str(THP_SYSFS "enabled", enabled, elen, "never"))
		ksft_exit_fail_msg("cannot set " THP_SYSFS "enabled\n");
}

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

#define PMD_SZ (2UL << 20)
#define PAGE_SZ 4096UL
#define PAGES_PER_PMD (PMD_SZ / PAGE_SZ)

/* @nr_pmds PMD-aligned, PMD-sized, private anonymous ranges, or NULL. */
static inline char *mmap_pmd_aligned(size_t nr_pmds, int prot)
{
	size_t len = nr_pmds * PMD_SZ;
	char *p = mmap(NULL, len + PMD_SZ, prot, MAP_PRIVATE | MAP_ANONYMOUS,
		       -1, 0);
	char *aligned;

	if (p == MAP_FAILED)
		return NULL;
	aligned = (char *)(((unsigned long)p + PMD_SZ - 1) & ~(PMD_SZ - 1));
	if (aligned > p)
		munmap(p, aligned - p);
	munmap(aligned + len, p + PMD_SZ - aligned);
	return aligned;
}

#endif /* __THP_COLLAPSE_UTIL_H */
