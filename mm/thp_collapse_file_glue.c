// SPDX-License-Identifier: GPL-2.0
/*
 * C glue of the Rust THP collapse core for file and shmem memory: the page
 * cache, xarray, shmem and rmap calls of a collapse in the page cache and of
 * the retraction of page tables, most of them static inlines or declared in
 * headers bindgen does not read. Each function runs one fixed sequence; what
 * happens next, and what a failure means, is decided in Rust
 * (mm/thp_collapse/file.rs), as upstream's collapse_file(),
 * collapse_scan_file(), retract_page_tables() and
 * try_collapse_pte_mapped_thp() in mm/khugepaged.c decide it in C.
 */
#define pr_fmt(fmt) "thp_collapse: " fmt

#include <linux/mm.h>
#include <linux/backing-dev.h>
#include <linux/dax.h>
#include <linux/fs.h>
#include <linux/mm_inline.h>
#include <linux/pagemap.h>
#include <linux/page_table_check.h>
#include <linux/rmap.h>
#include <linux/shmem_fs.h>
#include <linux/swap.h>
#include <linux/userfaultfd_k.h>
#include <linux/xarray.h>

#include "internal.h"
#include "khugepaged_internal.h"

/*
 * The body of thp_collapse_pc_folio_facts() (see there), inlined into the
 * loops of this file that read the facts of every folio of a range: with
 * @what known there, the reads it does not ask for fold away, and the call
 * goes. Called out of line from the file scan, it took 30 of the Rust
 * core's 2820 kernel samples of a file collapse under -icount (make
 * profile), about 70 instructions a folio.
 */
static __always_inline unsigned int pc_folio_facts(struct folio *folio,
						   struct address_space *mapping,
						   unsigned int what, long *refs)
{
	unsigned int flags = 0;

	if (folio_test_uptodate(folio))
		flags |= THP_PC_UPTODATE;
	if (folio_test_dirty(folio))
		flags |= THP_PC_DIRTY;
	if (folio_test_writeback(folio))
		flags |= THP_PC_WRITEBACK;
	if (is_pmd_order(folio_order(folio)))
		flags |= THP_PC_PMD_ORDER;
	if (folio_test_lru(folio))
		flags |= THP_PC_LRU;
	if ((what & THP_PC_READ_MAPPING) && folio_mapping(folio) != mapping)
		flags |= THP_PC_OTHER_MAPPING;
	if ((what & THP_PC_READ_MAPPED) && folio_mapped(folio))
		flags |= THP_PC_MAPPED;
	*refs = 0;
	if (what & THP_PC_READ_REFS)
		*refs = folio_ref_count(folio) - folio_expected_ref_count(folio);
	return flags;
}

/**
 * thp_collapse_read_page_cache() - read the entries of a page cache range.
 * @mapping: the mapping, kept alive by the caller (a file reference).
 * @index: the first index to read; on return, the index to read next.
 * @last: the last index of the range.
 * @out: filled with up to @nr entries.
 * @nr: room in @out.
 *
 * Walks the xarray under RCU, taking a speculative reference on each folio
 * for as long as it reads the folio's facts: only those the scan decides on
 * (THP_PC_LRU, THP_PC_PMD_ORDER and the references), the others read as
 * "no". Only reads: the Rust core's file scan decides what the entries mean.
 *
 * Return: the number of entries filled; fewer than @nr when the range ends.
 */
unsigned int thp_collapse_read_page_cache(struct address_space *mapping,
					  pgoff_t *index, pgoff_t last,
					  struct thp_collapse_pc_entry *out,
					  unsigned int nr)
{
	XA_STATE(xas, &mapping->i_pages, *index);
	unsigned int n = 0;
	struct folio *folio;

	if (!nr || *index > last)
		return 0;
	rcu_read_lock();
	xas_for_each(&xas, folio, last) {
		struct thp_collapse_pc_entry *e = &out[n];

		if (xas_retry(&xas, folio))
			continue;
		if (xa_is_value(folio)) {
			e->index = xas.xa_index;
			e->nr = 1UL << xas_get_order(&xas);
			e->pfn = -1UL;
			e->refs = 0;
			e->flags = THP_PC_VALUE;
			e->nid = NUMA_NO_NODE;
		} else {
			if (!folio_try_get(folio)) {
				xas_reset(&xas);
				continue;
			}
			if (unlikely(folio != xas_reload(&xas))) {
				folio_put(folio);
				xas_reset(&xas);
				continue;
			}
			e->index = folio->index;
			e->nr = folio_nr_pages(folio);
			e->pfn = folio_pfn(folio);
			e->nid = folio_nid(folio);
			/* Only what the scan decides on. */
			e->refs = folio_ref_count(folio) -
				  folio_expected_ref_count(folio);
			e->flags = folio_test_lru(folio) ? THP_PC_LRU : 0;
			if (is_pmd_order(folio_order(folio)))
				e->flags |= THP_PC_PMD_ORDER;
			folio_put(folio);
		}
		if (++n == nr) {
			*index = e->index + e->nr;
			rcu_read_unlock();
			return n;
		}
	}
	rcu_read_unlock();
	*index = last + 1;
	return n;
}

/**
 * thp_collapse_xas_init() - XA_STATE() on a mapping's page cache.
 * @xas: the state to initialize.
 * @mapping: the mapping.
 * @index: the first index.
 *
 * Also sets the workingset callbacks page cache stores need
 * (mapping_set_update()).
 */
void thp_collapse_xas_init(struct xa_state *xas, struct address_space *mapping,
			   pgoff_t index)
{
	XA_STATE(init, &mapping->i_pages, index);

	*xas = init;
	mapping_set_update(xas, mapping);
}

static enum thp_collapse_slot classify(void *entry, struct folio **folio)
{
	*folio = NULL;
	if (!entry)
		return THP_SLOT_EMPTY;
	if (entry == XA_RETRY_ENTRY)
		return THP_SLOT_RETRY;
	if (xa_is_value(entry))
		return THP_SLOT_VALUE;
	*folio = entry;
	return THP_SLOT_FOLIO;
}

/**
 * thp_collapse_xas_load() - what the page cache holds at an index.
 * @xas: the state; the xarray is locked.
 * @index: the index.
 * @folio: set to the folio, for THP_SLOT_FOLIO.
 * @flags: set, for THP_SLOT_FOLIO, to the folio's THP_PC_* page-flag facts
 *	(what thp_collapse_pc_folio_facts() reads with no THP_PC_READ_*).
 *
 * Return: what the entry is.
 */
enum thp_collapse_slot thp_collapse_xas_load(struct xa_state *xas,
					     pgoff_t index,
					     struct folio **folio,
					     unsigned int *flags)
{
	enum thp_collapse_slot kind;
	long refs;

	xas_set(xas, index);
	kind = classify(xas_load(xas), folio);
	if (kind == THP_SLOT_FOLIO)
		*flags = pc_folio_facts(*folio, NULL, 0, &refs);
	return kind;
}

/**
 * thp_collapse_pc_folio_facts() - what a collapse needs to know of a folio
 * of the page cache.
 * @folio: the folio, referenced by the caller or found under the xarray lock.
 * @mapping: the mapping it should belong to.
 * @what: THP_PC_READ_* facts to read beyond the page flags.
 * @refs: set to folio_ref_count() - folio_expected_ref_count() with
 *	THP_PC_READ_REFS, else to 0.
 *
 * folio_expected_ref_count() counts the mappings' references, so THP_PC_MAPPED
 * tells a folio that page tables still map from one that nobody maps.
 *
 * Return: THP_PC_* flags; THP_PC_OTHER_MAPPING only with THP_PC_READ_MAPPING,
 * THP_PC_MAPPED only with THP_PC_READ_MAPPED.
 */
unsigned int thp_collapse_pc_folio_facts(struct folio *folio,
					 struct address_space *mapping,
					 unsigned int what, long *refs)
{
	return pc_folio_facts(folio, mapping, what, refs);
}

/**
 * thp_collapse_file_read_locked() - read a file's folio at an index, locked
 * and referenced.
 * @file: the file.
 * @index: the index.
 * @end: the end of the range the collapse reads ahead to.
 * @nowait: the caller holds locks of folios of @file below @index.
 *
 * Reads ahead synchronously, drains this CPU's LRU batches and locks the
 * folio. May sleep.
 *
 * Truncation and hole punching hold the mapping's invalidate_lock exclusively
 * while they wait for folio locks, and readahead takes it shared: a caller that
 * holds folio locks must not wait for it, or it deadlocks with a hole punch
 * over its range. With @nowait the read gives up at once if the lock is
 * contended.
 *
 * Return: the folio; ERR_PTR(-EAGAIN) if @nowait and the invalidate_lock is
 * contended; another ERR_PTR if the folio could not be read.
 */
struct folio *thp_collapse_file_read_locked(struct file *file, pgoff_t index,
					    pgoff_t end, bool nowait)
{
	struct address_space *mapping = file->f_mapping;
	DEFINE_READAHEAD(ractl, file, &file->f_ra, mapping, index);

	if (!nowait) {
		page_cache_sync_readahead(mapping, &file->f_ra, file, index,
					  end - index);
	} else {
		if (!filemap_invalidate_trylock_shared(mapping))
			return ERR_PTR(-EAGAIN);
		page_cache_ra_unbounded(&ractl, end - index, 0);
		filemap_invalidate_unlock_shared(mapping);
	}
	lru_add_drain();
	return filemap_lock_folio(mapping, index);
}

/**
 * thp_collapse_pc_folio_isolate() - take a locked page cache folio off the
 * LRU, release its private data, and unmap it everywhere.
 * @folio: the folio, locked and referenced by the caller.
 *
 * The unmap batches its TLB flush (try_to_unmap_flush()).
 * May sleep.
 *
 * Return: THP_PC_ISOLATE_OK; or, with nothing changed, THP_PC_ISOLATE_NOT_ON_LRU
 * or THP_PC_ISOLATE_PRIVATE.
 */
enum thp_collapse_pc_isolate thp_collapse_pc_folio_isolate(struct folio *folio)
{
	if (!folio_isolate_lru(folio))
		return THP_PC_ISOLATE_NOT_ON_LRU;
	if (!filemap_release_folio(folio, GFP_KERNEL)) {
		folio_putback_lru(folio);
		return THP_PC_ISOLATE_PRIVATE;
	}
	if (folio_mapped(folio))
		try_to_unmap(folio, TTU_IGNORE_MLOCK | TTU_BATCH_FLUSH);
	return THP_PC_ISOLATE_OK;
}

/**
 * thp_collapse_pc_take() - the common case of one index of a page cache
 * collapse, in one call.
 * @xas: the state; the xarray is locked.
 * @mapping: the mapping.
 * @index: the index.
 * @shmem: whether the mapping is shmem.
 * @out: what was taken.
 *
 * If @index holds a folio of @mapping that is uptodate, not of the PMD
 * order and, for a file other than shmem, neither dirty nor under writeback,
 * and whose lock it can take at once: locks and references it, releases the
 * xarray lock, takes the folio off the LRU, releases its private data and
 * unmaps it (thp_collapse_pc_folio_isolate()), takes the xarray lock again
 * and reads the folio's references and dirty bit. These are the steps
 * the Rust core takes one call at a time for such an index, with the same
 * checks before each; what the facts read at the end mean stays its
 * decision. Anything else (a hole, a swap entry, a folio to read, swap in or
 * write back, a lock or a step that fails) is undone and left to those
 * steps. May sleep.
 *
 * Return: true, with *@out filled and the xarray locked again; false with
 * nothing changed (the xarray locked, perhaps released in between).
 */
bool thp_collapse_pc_take(struct xa_state *xas, struct address_space *mapping,
			  pgoff_t index, bool shmem,
			  struct thp_collapse_pc_taken *out)
{
	struct folio *folio;
	void *entry;

	xas_set(xas, index);
	entry = xas_load(xas);
	if (!entry || xa_is_value(entry) || xa_is_internal(entry))
		return false;
	folio = entry;
	if (shmem ? !folio_test_uptodate(folio) :
		    folio_test_dirty(folio) || folio_test_writeback(folio))
		return false;
	if (!folio_trylock(folio))
		return false;
	folio_get(folio);
	xas_unlock_irq(xas);

	if (!folio_test_uptodate(folio) || is_pmd_order(folio_order(folio)) ||
	    folio_mapping(folio) != mapping ||
	    (!shmem && (folio_test_dirty(folio) || folio_test_writeback(folio))) ||
	    thp_collapse_pc_folio_isolate(folio) != THP_PC_ISOLATE_OK) {
		folio_unlock(folio);
		folio_put(folio);
		xas_lock_irq(xas);
		return false;
	}

	xas_lock_irq(xas);
	out->folio = folio;
	out->index = folio->index;
	out->nr = folio_nr_pages(folio);
	/*
	 * Unmapped and without private data (the isolation saw to both), the
	 * folio's expected references are the page cache's alone. A mapping
	 * made again since (or private data) shows as more references, as in
	 * upstream's folio_ref_count() != 2 + folio_nr_pages() check.
	 */
	out->refs = folio_ref_count(folio) - out->nr;
	out->flags = folio_test_dirty(folio) ? THP_PC_DIRTY : 0;
	return true;
}

/**
 * thp_collapse_pc_prepare_new() - make a new folio ready to enter a mapping.
 * @folio: the new folio, ours alone.
 * @mapping: the mapping.
 * @index: its index there.
 * @shmem: whether the mapping is shmem (the folio is swap-backed).
 *
 * Locks it (nobody else can see it yet) and sets its index and mapping.
 */
void thp_collapse_pc_prepare_new(struct folio *folio,
				 struct address_space *mapping, pgoff_t index,
				 bool shmem)
{
	__folio_set_locked(folio);
	if (shmem)
		__folio_set_swapbacked(folio);
	folio->index = index;
	folio->mapping = mapping;
}

/**
 * thp_collapse_pc_abandon_new() - undo thp_collapse_pc_prepare_new().
 * @folio: a new folio that never entered the page cache.
 */
void thp_collapse_pc_abandon_new(struct folio *folio)
{
	folio->mapping = NULL;
	folio_unlock(folio);
}

/**
 * thp_collapse_pc_account_new() - count a new folio into the page cache.
 * @folio: the new folio, locked, about to be stored in the page cache.
 * @shmem: whether the mapping is shmem.
 *
 * Moves the vmstat counters, marks it uptodate (before it is visible, so that
 * it is not taken for a fallocated, unwritten folio), takes the page cache's
 * references and puts it on the LRU. Dirty for shmem, which has no other
 * copy.
 */
void thp_collapse_pc_account_new(struct folio *folio, bool shmem)
{
	long nr = folio_nr_pages(folio);

	if (shmem) {
		lruvec_stat_mod_folio(folio, NR_SHMEM, nr);
		lruvec_stat_mod_folio(folio, NR_SHMEM_THPS, nr);
	} else {
		lruvec_stat_mod_folio(folio, NR_FILE_THPS, nr);
	}
	lruvec_stat_mod_folio(folio, NR_FILE_PAGES, nr);
	folio_mark_uptodate(folio);
	folio_ref_add(folio, nr - 1);
	if (shmem)
		folio_mark_dirty(folio);
	folio_add_lru(folio);
}

/**
 * thp_collapse_mm_exiting() - whether an mm has no users left.
 * @mm: the mm.
 *
 * Return: true if it is exiting.
 */
bool thp_collapse_mm_exiting(struct mm_struct *mm)
{
	return atomic_read(&mm->mm_users) == 0;
}
