/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Memory of the three types the collapse serves (private anonymous, shmem
 * through a memfd, a file on XFS), PMD-aligned and PMD-sized, with a content
 * pattern that names the page and its generation, for the selftests that hunt
 * for lost data (thp_collapse_pin, _multi, _fail, _stress, _pressure).
 *
 * A region is written page by page with a generation number; the tests keep
 * the generation each page must hold (their shadow model) and check every
 * byte against it, through the mapping and, for files, through read(2).
 */
#ifndef __THP_COLLAPSE_MEM_H
#define __THP_COLLAPSE_MEM_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../../../../mm/gup_test.h"
#include "vm_util.h"
#include "thp_collapse_util.h"

/* The memory types a region can be. */
enum mem_type { MEM_ANON, MEM_SHMEM, MEM_FILE, NR_MEM_TYPES };

static const char *const mem_type_name[] = { "anon", "shmem", "xfs" };

/* The XFS directory for MEM_FILE regions (the programs' argument). */
static const char *mem_file_dir = "/mnt/xfs";

/* A PMD-aligned mapping of one memory type. */
struct region {
	enum mem_type type;
	char *p;		/* PMD-aligned start */
	size_t len;		/* a multiple of PMD_SZ */
	int fd;			/* memfd or file, -1 for anon */
};

/*
 * Pins the page at @page long-term through /sys/kernel/debug/gup_test
 * (@gup_fd; PIN_LONGTERM_TEST_START), writable when @write; 0 or -errno.
 */
static inline int gup_pin(int gup_fd, char *page, bool write)
{
	struct pin_longterm_test args = {
		.addr = (unsigned long)page,
		.size = PAGE_SZ,
		.flags = write ? PIN_LONGTERM_TEST_FLAG_USE_WRITE : 0,
	};

	return ioctl(gup_fd, PIN_LONGTERM_TEST_START, &args) ? -errno : 0;
}

/* The 64-bit word @w of page @pg at generation @gen (never 0 for gen > 0). */
static inline uint64_t mem_pattern(uint64_t gen, size_t pg, size_t w)
{
	return (gen << 40) ^ ((uint64_t)pg << 12) ^ w ^ 0x5aa5c33c00000000ULL;
}

/* Fills the page-sized buffer @buf with generation @gen of page @pg. */
static inline void mem_fill(void *buf, size_t pg, uint64_t gen)
{
	uint64_t *a = buf;
	size_t w;

	for (w = 0; w < PAGE_SZ / 8; w++)
		a[w] = gen ? mem_pattern(gen, pg, w) : 0;
}

/* Whether the page at @buf holds generation @gen of page @pg (0: zeroes). */
static inline bool mem_page_ok(const void *buf, size_t pg, uint64_t gen)
{
	const uint64_t *a = buf;
	size_t w;

	for (w = 0; w < PAGE_SZ / 8; w++)
		if (a[w] != (gen ? mem_pattern(gen, pg, w) : 0))
			return false;
	return true;
}

/* The generation page @pg holds, read from its first word, or -1. */
static inline int64_t mem_page_gen(const void *buf, size_t pg)
{
	uint64_t v = *(const uint64_t *)buf;
	uint64_t gen;

	if (!v)
		return mem_page_ok(buf, pg, 0) ? 0 : -1;
	gen = (v ^ ((uint64_t)pg << 12) ^ 0x5aa5c33c00000000ULL) >> 40;
	return mem_page_ok(buf, pg, gen) ? (int64_t)gen : -1;
}

/* A PMD-aligned mapping of @len bytes of @fd (or anon for -1), or NULL. */
static inline char *mem_map_aligned(int fd, size_t len, int prot, int flags)
{
	char *area = mmap(NULL, len + PMD_SZ, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *p;

	if (area == MAP_FAILED)
		return NULL;
	p = (char *)(((unsigned long)area + PMD_SZ - 1) & ~(PMD_SZ - 1));
	if (mmap(p, len, prot, flags | MAP_FIXED, fd, 0) == MAP_FAILED) {
		munmap(area, len + PMD_SZ);
		return NULL;
	}
	if (p > area)
		munmap(area, p - area);
	munmap(p + len, area + PMD_SZ - p);
	return p;
}

/* A new, unlinked file in @dir, read-write; a failure ends the program. */
static inline int mem_temp_file(const char *dir)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/thp_collapse_mem.XXXXXX", dir);
	fd = mkstemp(path);
	if (fd < 0)
		ksft_exit_fail_perror(path);
	unlink(path);
	return fd;
}

/*
 * Maps @nr_pmds PMDs of memory of @type: anon private, a memfd or a new
 * (unlinked) file in mem_file_dir, both shared. The range is unpopulated
 * and, with @hugepage, MADV_HUGEPAGE; a failure ends the program.
 */
static inline struct region mem_region_advised(enum mem_type type,
					       size_t nr_pmds, bool hugepage)
{
	struct region r = { .type = type, .len = nr_pmds * PMD_SZ, .fd = -1 };

	if (type == MEM_SHMEM)
		r.fd = memfd_create("thp_collapse_mem", 0);
	else if (type == MEM_FILE)
		r.fd = mem_temp_file(mem_file_dir);
	if (type != MEM_ANON && (r.fd < 0 || ftruncate(r.fd, r.len)))
		ksft_exit_fail_perror(mem_type_name[type]);
	r.p = mem_map_aligned(r.fd, r.len, PROT_READ | PROT_WRITE,
			      type == MEM_ANON ? MAP_PRIVATE | MAP_ANONYMOUS :
						 MAP_SHARED);
	if (!r.p)
		ksft_exit_fail_perror("mmap");
	if (hugepage && madvise(r.p, r.len, MADV_HUGEPAGE))
		ksft_exit_fail_perror("madvise(MADV_HUGEPAGE)");
	return r;
}

/* mem_region_advised() with MADV_HUGEPAGE. */
static inline struct region mem_region(enum mem_type type, size_t nr_pmds)
{
	return mem_region_advised(type, nr_pmds, true);
}

static inline void mem_region_free(struct region *r)
{
	munmap(r->p, r->len);
	if (r->fd >= 0)
		close(r->fd);
	r->p = NULL;
	r->fd = -1;
}

/*
 * Writes generation @gen into every page of @r through the mapping (anon,
 * shmem) or with pwrite(2) (the file: its page cache then holds small
 * folios, which only a collapse turns into a PMD-sized one), so that the
 * range is populated with base pages. Returns 0 or -1.
 */
static inline int mem_populate(struct region *r, uint64_t *shadow,
			       uint64_t gen)
{
	char buf[PAGE_SZ];
	size_t pg;

	for (pg = 0; pg < r->len / PAGE_SZ; pg++) {
		if (r->type == MEM_FILE) {
			mem_fill(buf, pg, gen);
			if (pwrite(r->fd, buf, PAGE_SZ, pg * PAGE_SZ) != PAGE_SZ)
				return -1;
		} else {
			mem_fill(r->p + pg * PAGE_SZ, pg, gen);
		}
		if (shadow)
			shadow[pg] = gen;
	}
	if (r->type == MEM_FILE) {
		/* Map every page (read faults), as a collapse needs PTEs. */
		for (pg = 0; pg < r->len / PAGE_SZ; pg++)
			(void)__atomic_load_n(r->p + pg * PAGE_SZ, __ATOMIC_ACQUIRE);
	}
	return 0;
}

/*
 * The pages of @r whose contents differ from @shadow, read through the
 * mapping and, for shmem and files, through pread(2) as well.
 */
static inline size_t mem_bad_pages(const struct region *r,
				   const uint64_t *shadow)
{
	char buf[PAGE_SZ];
	size_t pg, bad = 0;

	for (pg = 0; pg < r->len / PAGE_SZ; pg++) {
		if (!mem_page_ok(r->p + pg * PAGE_SZ, pg, shadow[pg]))
			bad++;
		else if (r->fd >= 0 &&
			 (pread(r->fd, buf, PAGE_SZ, pg * PAGE_SZ) != PAGE_SZ ||
			  !mem_page_ok(buf, pg, shadow[pg])))
			bad++;
	}
	return bad;
}

/* Whether every PMD of @r is PMD-mapped (smaps). */
static inline bool mem_pmd_mapped(const struct region *r)
{
	int nr = r->len / PMD_SZ;

	switch (r->type) {
	case MEM_ANON:
		return check_huge_anon(r->p, r->len, nr, PMD_SZ);
	case MEM_SHMEM:
		return check_huge_shmem(r->p, r->len, nr, PMD_SZ);
	default:
		return check_huge_file(r->p, r->len, nr, PMD_SZ);
	}
}

/*
 * Splits the large folios mapped in @r back into base pages (and so its PMD
 * mappings), for the next round of a loop, through the kernel's debugfs
 * splitter, which handles anonymous, shmem and file folios alike. Contents
 * do not change. Returns 0 or -1.
 */
static inline int mem_split(struct region *r)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "%d,0x%lx,0x%lx", getpid(),
		 (unsigned long)r->p, (unsigned long)r->p + r->len);
	return write_str("/sys/kernel/debug/split_huge_pages", cmd);
}

#endif /* __THP_COLLAPSE_MEM_H */
