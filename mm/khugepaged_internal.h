/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Types shared by the C collapse code in mm/khugepaged.c, the Rust collapse
 * core in mm/thp_collapse.rs and its C glue in mm/thp_collapse_glue.c.
 *
 * Rust sees this header through rust/bindings/bindings_helper.h, so the
 * signatures of the Rust entry points declared here are checked at compile
 * time by #[export].
 */
#ifndef __MM_KHUGEPAGED_INTERNAL_H
#define __MM_KHUGEPAGED_INTERNAL_H

#include <linux/types.h>
#include <linux/mm.h>
#include <linux/swap.h>
#include <linux/jump_label.h>
#include <linux/xarray.h>

struct kobject;
struct mm_struct;
struct vm_area_struct;

/**
 * enum scan_result - outcome of one collapse attempt of one PMD range.
 *
 * The values are ABI for the huge_memory tracepoints (see SCAN_STATUS in
 * include/trace/events/huge_memory.h) and for the Rust core, which mirrors
 * them one to one.
 */
enum scan_result {
	SCAN_FAIL,
	SCAN_SUCCEED,
	SCAN_NO_PTE_TABLE,
	SCAN_PMD_MAPPED,
	SCAN_EXCEED_NONE_PTE,
	SCAN_EXCEED_SWAP_PTE,
	SCAN_EXCEED_SHARED_PTE,
	SCAN_PTE_NON_PRESENT,
	SCAN_PTE_UFFD,
	SCAN_PTE_MAPPED_HUGEPAGE,
	SCAN_LACK_REFERENCED_PAGE,
	SCAN_PAGE_NULL,
	SCAN_SCAN_ABORT,
	SCAN_PAGE_COUNT,
	SCAN_PAGE_LRU,
	SCAN_PAGE_LOCK,
	SCAN_PAGE_ANON,
	SCAN_PAGE_LAZYFREE,
	SCAN_PAGE_COMPOUND,
	SCAN_ANY_PROCESS,
	SCAN_VMA_NULL,
	SCAN_VMA_CHECK,
	SCAN_ADDRESS_RANGE,
	SCAN_DEL_PAGE_LRU,
	SCAN_ALLOC_HUGE_PAGE_FAIL,
	SCAN_CGROUP_CHARGE_FAIL,
	SCAN_TRUNCATED,
	SCAN_PAGE_HAS_PRIVATE,
	SCAN_STORE_FAILED,
	SCAN_COPY_MC,
	SCAN_PAGE_FILLED,
	SCAN_PAGE_DIRTY_OR_WRITEBACK,
	SCAN_WOULD_BLOCK,	/* MADV_F_COLLAPSE_LIGHT: it would have to wait */
};

enum scan_result set_huge_pmd(struct vm_area_struct *vma, unsigned long addr,
			      pmd_t *pmdp, struct folio *folio,
			      struct page *page);

#ifdef CONFIG_THP_COLLAPSE_RUST

/* The folio isolation protocol, a batch at a time (mm/khugepaged.c). */
enum thp_collapse_isolate {
	THP_ISOLATE_OK,
	THP_ISOLATE_LOCKED,	/* someone else holds the folio lock */
	THP_ISOLATE_REFERENCED,	/* references beyond mappings and swap cache */
	THP_ISOLATE_NOT_ON_LRU,	/* someone else isolated it */
};

struct folio_batch;
unsigned int thp_collapse_folios_isolate(struct folio **folios,
					 unsigned int nr,
					 enum thp_collapse_isolate *why);
void thp_collapse_folio_putback(struct folio *folio, bool free_swap);
void thp_collapse_folios_release_unmapped(struct folio_batch *fbatch,
					  unsigned int *refs);
void thp_collapse_folios_free_uncached(struct folio **folios, unsigned int nr,
				       bool shmem);

/* Facts about one PTE of a collapse candidate (struct thp_collapse_pte). */
enum thp_collapse_pte_flags {
	THP_PTE_NONE_OR_ZERO	= 1 << 0,	/* pte_none_or_zero() */
	THP_PTE_NONE		= 1 << 1,	/* pte_none() */
	THP_PTE_NON_PRESENT	= 1 << 2,	/* a swap or other non-present entry */
	THP_PTE_SWP_UFFD	= 1 << 3,	/* ... with a uffd-wp marker or bit */
	THP_PTE_UFFD_WP		= 1 << 4,	/* present and uffd-wp */
	THP_PTE_DIRTY		= 1 << 5,	/* THP_READ_HEURISTICS only */
	THP_PTE_YOUNG		= 1 << 6,	/* THP_READ_HEURISTICS only */
	THP_FOLIO_ANON		= 1 << 7,
	THP_FOLIO_LAZYFREE	= 1 << 8,	/* THP_READ_HEURISTICS only */
	THP_FOLIO_SHARED	= 1 << 9,	/* folio_maybe_mapped_shared() */
	/* These three with THP_READ_FOLIO_STATE only. */
	THP_FOLIO_LRU		= 1 << 10,
	THP_FOLIO_LOCKED	= 1 << 11,
	THP_FOLIO_EXTRA_REFS	= 1 << 12,	/* refcount != expected */
	THP_FOLIO_LARGE		= 1 << 13,
	THP_FOLIO_YOUNG		= 1 << 14,	/* young or referenced; THP_READ_HEURISTICS */
	THP_PTE_WRITE		= 1 << 15,	/* present, not the zero page, and writable */
};

/* What thp_collapse_read_ptes() reads beyond what every step needs. */
enum thp_collapse_read {
	/* The folio's LRU, lock and reference state (the scan). */
	THP_READ_FOLIO_STATE	= 1 << 0,
	/* Young and referenced bits, lazyfree and dirty (khugepaged's heuristics). */
	THP_READ_HEURISTICS	= 1 << 1,
	/*
	 * One fact per run of PTEs that map consecutive pages of one large
	 * folio with the same facts (struct thp_collapse_pte's @run); not
	 * with THP_READ_HEURISTICS, whose young and dirty facts are per PTE.
	 */
	THP_READ_RUNS		= 1 << 2,
};

/**
 * struct thp_collapse_pte - what one PTE of a collapse candidate maps.
 * @page: the normal page it maps (vm_normal_page(), not ZONE_DEVICE), or NULL.
 * @folio: the folio of @page, or NULL.
 * @flags: THP_PTE_* and THP_FOLIO_* facts; the THP_FOLIO_* ones only with @folio.
 * @order: folio_order(@folio), or 0.
 * @nid: folio_nid(@folio), or NUMA_NO_NODE without a folio.
 * @run: how many PTEs, from this one on, the fact stands for: 1, or with
 *	THP_READ_RUNS the length of a run of PTEs that map consecutive pages of
 *	@folio, a large one, from @page on, with the same THP_PTE_* facts.
 */
struct thp_collapse_pte {
	struct page *page;
	struct folio *folio;
	unsigned int flags;
	unsigned int order;
	int nid;
	unsigned int run;
};

unsigned int thp_collapse_read_ptes(struct vm_area_struct *vma,
				    unsigned long addr, pte_t *ptep,
				    unsigned int nr, unsigned int what,
				    struct thp_collapse_pte *out,
				    unsigned int nr_out);
void thp_collapse_ptes_writable(pte_t *ptep, unsigned int first,
				unsigned int nr, unsigned long *writable);
void thp_collapse_remove_rmap_small(struct folio *folio,
				    struct vm_area_struct *vma);
long thp_collapse_wait_claim(unsigned long *slot, unsigned long claim,
			     long timeout);
void thp_collapse_drop_claim(unsigned long *slot);
/* How the Rust core switches an anonymous range: sysfs collapse/rust_switch. */
enum thp_collapse_switch {
	THP_COLLAPSE_SWITCH_VMA,	/* the VMA write-locked, as upstream */
	THP_COLLAPSE_SWITCH_PTL,	/* the page-table locks, mmap lock for write */
	THP_COLLAPSE_SWITCH_READ,	/* the page-table locks, mmap lock for read */
};

int thp_collapse_switch_mode(void);
void thp_collapse_switch_test_delay(void);
/* Where thp_collapse_early_test_pause() may pause an early copy. */
enum thp_collapse_early_pause {
	/* Before each first pass over the range, with no lock held. */
	THP_EARLY_PAUSE_BEFORE	= 1 << 0,
	/* After each first pass, with the mmap lock held for read. */
	THP_EARLY_PAUSE_AFTER	= 1 << 1,
	/* Once the copy is made, before the switch, with no lock held. */
	THP_EARLY_PAUSE_DONE	= 1 << 2,
};

void thp_collapse_early_test_pause(unsigned int at);

/* Upstream's tracepoints (include/trace/events/huge_memory.h), for Rust. */

/**
 * struct collapse_tunables - khugepaged's sysfs knobs, as the Rust core reads them.
 * @max_ptes_none: max_ptes_none.
 * @max_ptes_swap: max_ptes_swap.
 * @max_ptes_shared: max_ptes_shared.
 * @defrag: khugepaged/defrag: direct reclaim and compaction allowed.
 */
struct collapse_tunables {
	unsigned int max_ptes_none;
	unsigned int max_ptes_swap;
	unsigned int max_ptes_shared;
	bool defrag;
};

void khugepaged_collapse_tunables(struct collapse_tunables *t);

/*
 * File and shmem collapse (mm/thp_collapse_file_glue.c): the page cache and
 * rmap calls of the Rust core's collapse in the page cache, one fixed
 * sequence each; every decision is the Rust core's.
 */

/* What a page cache entry holds (thp_collapse_xas_load()). */
enum thp_collapse_slot {
	THP_SLOT_EMPTY,		/* nothing */
	THP_SLOT_VALUE,		/* a swap or shadow entry */
	THP_SLOT_RETRY,		/* XA_RETRY_ENTRY: a hole being collapsed */
	THP_SLOT_FOLIO,		/* a folio */
};

/* Facts about a folio of the page cache (thp_collapse_pc_folio_facts()). */
enum thp_collapse_pc_flags {
	THP_PC_UPTODATE		= 1 << 0,
	THP_PC_DIRTY		= 1 << 1,
	THP_PC_WRITEBACK	= 1 << 2,
	THP_PC_PMD_ORDER	= 1 << 3,	/* a folio of the PMD order */
	THP_PC_OTHER_MAPPING	= 1 << 4,	/* folio_mapping() is not the mapping */
	THP_PC_LRU		= 1 << 5,
	THP_PC_VALUE		= 1 << 6,	/* a swap or shadow entry, no folio */
	THP_PC_MAPPED		= 1 << 7,	/* page tables map it */
};

/* What thp_collapse_pc_folio_facts() reads beyond the page flags. */
enum thp_collapse_pc_read {
	THP_PC_READ_MAPPING	= 1 << 0,	/* THP_PC_OTHER_MAPPING */
	THP_PC_READ_REFS	= 1 << 1,	/* the reference count */
	THP_PC_READ_MAPPED	= 1 << 2,	/* THP_PC_MAPPED */
};

/**
 * struct thp_collapse_pc_entry - one entry of the page cache, as the file scan
 * reads it.
 * @index: its first index.
 * @nr: the pages it covers.
 * @pfn: the folio's first pfn, or -1 for a value entry.
 * @refs: folio_ref_count() - folio_expected_ref_count(), our reference
 *	included; 0 for a value entry.
 * @flags: THP_PC_VALUE, or the folio's THP_PC_LRU and THP_PC_PMD_ORDER.
 */
struct thp_collapse_pc_entry {
	pgoff_t index;
	unsigned long nr;
	unsigned long pfn;
	long refs;
	unsigned int flags;
	int nid;		/* folio_nid(), or NUMA_NO_NODE for a value */
};

unsigned int thp_collapse_read_page_cache(struct address_space *mapping,
					  pgoff_t *index, pgoff_t last,
					  struct thp_collapse_pc_entry *out,
					  unsigned int nr);
void thp_collapse_xas_init(struct xa_state *xas, struct address_space *mapping,
			   pgoff_t index);
enum thp_collapse_slot thp_collapse_xas_load(struct xa_state *xas,
					     pgoff_t index,
					     struct folio **folio,
					     unsigned int *flags);
unsigned int thp_collapse_pc_folio_facts(struct folio *folio,
					 struct address_space *mapping,
					 unsigned int what, long *refs);
struct folio *thp_collapse_file_read_locked(struct file *file, pgoff_t index,
					    pgoff_t end, bool nowait);
enum thp_collapse_pc_isolate {
	THP_PC_ISOLATE_OK,
	THP_PC_ISOLATE_NOT_ON_LRU,	/* folio_isolate_lru() failed */
	THP_PC_ISOLATE_PRIVATE,		/* filemap_release_folio() failed */
};

enum thp_collapse_pc_isolate thp_collapse_pc_folio_isolate(struct folio *folio);

/**
 * struct thp_collapse_pc_taken - a folio thp_collapse_pc_take() took.
 * @folio: the folio, locked, referenced, isolated and unmapped.
 * @index: its first index.
 * @nr: its pages.
 * @refs: folio_ref_count() - folio_nr_pages(), read after the xarray lock
 *	was taken again: the references beyond the page cache's, which are
 *	all it expects of an unmapped folio with no private data.
 * @flags: THP_PC_DIRTY if the folio was dirty then.
 */
struct thp_collapse_pc_taken {
	struct folio *folio;
	pgoff_t index;
	unsigned long nr;
	long refs;
	unsigned int flags;
};

bool thp_collapse_pc_take(struct xa_state *xas, struct address_space *mapping,
			  pgoff_t index, bool shmem,
			  struct thp_collapse_pc_taken *out);
void thp_collapse_pc_prepare_new(struct folio *folio,
				 struct address_space *mapping, pgoff_t index,
				 bool shmem);
void thp_collapse_pc_abandon_new(struct folio *folio);
void thp_collapse_pc_account_new(struct folio *folio, bool shmem);
bool thp_collapse_mm_exiting(struct mm_struct *mm);

DECLARE_STATIC_KEY_TRUE(thp_collapse_rust_key);

/**
 * thp_collapse_use_rust() - whether the Rust core serves collapse requests.
 *
 * Selected at run time with /sys/kernel/mm/transparent_hugepage/collapse/core
 * or at boot with thp_collapse_core=. Read once per request.
 */
static inline bool thp_collapse_use_rust(void)
{
	return static_branch_likely(&thp_collapse_rust_key);
}

int thp_collapse_sysfs_init(struct kobject *hugepage_kobj);

/* Implemented in Rust (mm/thp_collapse.rs). */
int thp_collapse_rust_madvise(struct vm_area_struct *vma, unsigned long start,
			      unsigned long end, bool *lock_dropped,
			      enum collapse_caller caller, unsigned int flags);
enum scan_result thp_collapse_rust_khugepaged_pmd(struct mm_struct *mm,
						  struct vm_area_struct *vma,
						  unsigned long addr,
						  bool *lock_dropped,
						  unsigned int *progress);
ssize_t thp_collapse_rust_stats_show(enum collapse_caller caller, char *buf);

#else /* !CONFIG_THP_COLLAPSE_RUST */

static inline bool thp_collapse_use_rust(void)
{
	return false;
}

static inline int thp_collapse_sysfs_init(struct kobject *hugepage_kobj)
{
	return 0;
}

static inline enum scan_result
thp_collapse_rust_khugepaged_pmd(struct mm_struct *mm,
				 struct vm_area_struct *vma,
				 unsigned long addr, bool *lock_dropped,
				 unsigned int *progress)
{
	return SCAN_FAIL;
}

static inline int thp_collapse_rust_madvise(struct vm_area_struct *vma,
					    unsigned long start,
					    unsigned long end,
					    bool *lock_dropped,
					    enum collapse_caller caller,
					    unsigned int flags)
{
	return -EINVAL;
}

#endif /* CONFIG_THP_COLLAPSE_RUST */

#endif /* __MM_KHUGEPAGED_INTERNAL_H */
