// SPDX-License-Identifier: GPL-2.0
/*
 * Helpers for Rust mm code (kernel::mm in rust/kernel/mm/, and the THP
 * collapse core, mm/thp_collapse.rs): the static inlines and macros of
 * <linux/huge_mm.h>, <linux/mm.h>, <linux/pgtable.h> and their neighbours
 * that it calls. Each one but rust_helper_wrprotect_present_ptes() (a batch of
 * four of them, said there) only forwards to the kernel's own definition.
 */

#include <linux/backing-dev.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/highmem.h>
#include <linux/huge_mm.h>
#include <linux/ksm.h>
#include <linux/memcontrol.h>
#include <linux/vmstat.h>
#include <linux/leafops.h>
#include <linux/mm.h>
#include <linux/mm_inline.h>
#include <linux/mmap_lock.h>
#include <linux/mmu_notifier.h>
#include <linux/pagemap.h>
#include <linux/page_idle.h>
#include <linux/page_table_check.h>
#include <linux/pgtable.h>
#include <linux/rmap.h>
#include <linux/pgalloc.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/shmem_fs.h>
#include <linux/userfaultfd_k.h>
#include <linux/xarray.h>

/*
 * The prototype of mm/internal.h, mm's private header: try_to_unmap() with
 * TTU_BATCH_FLUSH leaves the TLB flush to it. Without
 * ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH nothing is batched and the call is a no-op.
 */
#ifdef CONFIG_ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH
void try_to_unmap_flush(void);
#endif

/*
 * The prototype of <asm/tlbflush.h>, which hides it from modules (and so from
 * bindgen, as above); flush_tlb_range() is a macro around it on x86.
 */
#ifdef CONFIG_X86
void flush_tlb_mm_range(struct mm_struct *mm, unsigned long start,
			unsigned long end, unsigned int stride_shift,
			bool freed_tables);
#endif

#ifdef CONFIG_TRANSPARENT_HUGEPAGE

__rust_helper unsigned long
rust_helper_thp_vma_allowable_orders(struct vm_area_struct *vma,
				     vm_flags_t vm_flags, enum tva_type type,
				     unsigned long orders)
{
	return thp_vma_allowable_orders(vma, vm_flags, type, orders);
}

__rust_helper bool rust_helper_thp_vma_suitable_order(struct vm_area_struct *vma,
						      unsigned long addr,
						      int order)
{
	return thp_vma_suitable_order(vma, addr, order);
}

#endif /* CONFIG_TRANSPARENT_HUGEPAGE */

__rust_helper bool rust_helper_vma_is_anonymous(struct vm_area_struct *vma)
{
	return vma_is_anonymous(vma);
}

__rust_helper bool rust_helper_mm_flags_test(int flag,
					     const struct mm_struct *mm)
{
	return mm_flags_test(flag, mm);
}

__rust_helper void rust_helper_cond_resched(void)
{
	cond_resched();
}

__rust_helper bool rust_helper_userfaultfd_armed(struct vm_area_struct *vma)
{
	return userfaultfd_armed(vma);
}

__rust_helper pte_t rust_helper_ptep_get(pte_t *ptep)
{
	return ptep_get(ptep);
}

__rust_helper pte_t rust_helper_ptep_get_lockless(pte_t *ptep)
{
	return ptep_get_lockless(ptep);
}

__rust_helper void rust_helper_pte_unmap(pte_t *pte)
{
	pte_unmap(pte);
}

__rust_helper bool rust_helper_pte_none(pte_t pte)
{
	return pte_none(pte);
}

__rust_helper bool rust_helper_pte_present(pte_t pte)
{
	return pte_present(pte);
}

/* One call for what C reads as two inlines, in a loop that runs per PTE. */
__rust_helper bool rust_helper_mmu_notifier_test_young(struct mm_struct *mm,
						       unsigned long address)
{
	return mmu_notifier_test_young(mm, address);
}

__rust_helper bool rust_helper_vma_is_droppable(struct vm_area_struct *vma)
{
	return vma->vm_flags & VM_DROPPABLE;
}

__rust_helper struct folio *rust_helper___folio_alloc(gfp_t gfp,
						      unsigned int order,
						      int nid,
						      nodemask_t *nodemask)
{
	return __folio_alloc(gfp, order, nid, nodemask);
}

__rust_helper int rust_helper_numa_mem_id(void)
{
	return numa_mem_id();
}

__rust_helper void rust_helper_folio_put(struct folio *folio)
{
	folio_put(folio);
}

__rust_helper int rust_helper_mem_cgroup_charge(struct folio *folio,
						struct mm_struct *mm, gfp_t gfp)
{
	return mem_cgroup_charge(folio, mm, gfp);
}

__rust_helper void rust_helper_count_vm_event(enum vm_event_item item)
{
	count_vm_event(item);
}

__rust_helper void rust_helper_count_mthp_stat(int order,
					       enum mthp_stat_item item)
{
	count_mthp_stat(order, item);
}

__rust_helper void rust_helper_count_memcg_folio_events(struct folio *folio,
							enum vm_event_item idx,
							unsigned long nr)
{
	count_memcg_folio_events(folio, idx, nr);
}

/* The write side of a collapse: isolate, copy and install. */

__rust_helper void rust_helper_mmap_write_lock(struct mm_struct *mm)
{
	mmap_write_lock(mm);
}

__rust_helper void rust_helper_mmap_write_unlock(struct mm_struct *mm)
{
	mmap_write_unlock(mm);
}

__rust_helper void rust_helper_mmap_write_downgrade(struct mm_struct *mm)
{
	mmap_write_downgrade(mm);
}

__rust_helper void rust_helper_vma_start_write(struct vm_area_struct *vma)
{
	vma_start_write(vma);
}

__rust_helper void
rust_helper_mmu_notifier_range_init(struct mmu_notifier_range *range,
				    enum mmu_notifier_event event,
				    unsigned int flags, struct mm_struct *mm,
				    unsigned long start, unsigned long end)
{
	mmu_notifier_range_init(range, event, flags, mm, start, end);
}

__rust_helper void
rust_helper_mmu_notifier_invalidate_range_start(struct mmu_notifier_range *range)
{
	mmu_notifier_invalidate_range_start(range);
}

__rust_helper void
rust_helper_mmu_notifier_invalidate_range_end(struct mmu_notifier_range *range)
{
	mmu_notifier_invalidate_range_end(range);
}

__rust_helper spinlock_t *rust_helper_pmd_lock(struct mm_struct *mm, pmd_t *pmd)
{
	return pmd_lock(mm, pmd);
}

__rust_helper void rust_helper_pmd_populate_table(struct mm_struct *mm,
						  pmd_t *pmdp, pmd_t table)
{
	pmd_populate(mm, pmdp, pmd_pgtable(table));
}

/*
 * A page table for @mm, as pte_alloc_one() allocates one, but charged to
 * @mm's memory cgroup rather than to the caller's (khugepaged, or the
 * process_madvise() caller), as a fault in @mm would charge it, and for work
 * that may fail: never with the OOM killer (__GFP_NORETRY), and with
 * @may_reclaim false without direct reclaim.
 */
__rust_helper pgtable_t rust_helper_pte_alloc_one_charged(struct mm_struct *mm,
							  bool may_reclaim)
{
	gfp_t gfp = GFP_PGTABLE_USER | __GFP_NORETRY | __GFP_NOWARN;
	struct mem_cgroup *memcg = get_mem_cgroup_from_mm(mm);
	struct mem_cgroup *old = set_active_memcg(memcg);
	pgtable_t table;

	if (!may_reclaim)
		gfp &= ~__GFP_DIRECT_RECLAIM;
	table = __pte_alloc_one(mm, gfp);

	set_active_memcg(old);
	mem_cgroup_put(memcg);
	return table;
}

__rust_helper void rust_helper_pte_table_free(struct mm_struct *mm,
					      pgtable_t table)
{
	pte_free(mm, table);
}

__rust_helper pgtable_t rust_helper_pmd_deposited_table(struct mm_struct *mm,
							pmd_t *pmdp)
{
	return pmd_huge_pte(mm, pmdp);
}

__rust_helper unsigned long rust_helper_mm_pgtables_bytes(const struct mm_struct *mm)
{
	return mm_pgtables_bytes(mm);
}

__rust_helper void rust_helper_clear_user_highpage(struct page *page,
						   unsigned long vaddr)
{
	clear_user_highpage(page, vaddr);
}

__rust_helper int rust_helper_copy_mc_user_highpage(struct page *to,
						    struct page *from,
						    unsigned long vaddr,
						    struct vm_area_struct *vma)
{
	return copy_mc_user_highpage(to, from, vaddr, vma);
}

__rust_helper void rust_helper_clear_highpage(struct page *page)
{
	clear_highpage(page);
}

__rust_helper int rust_helper_copy_mc_highpage(struct page *to,
					       struct page *from)
{
	return copy_mc_highpage(to, from);
}

__rust_helper pmd_t rust_helper_pmdp_get_lockless(pmd_t *pmdp)
{
	return pmdp_get_lockless(pmdp);
}

__rust_helper void rust_helper_pmdp_get_lockless_sync(void)
{
	pmdp_get_lockless_sync();
}

__rust_helper int rust_helper_pmd_none(pmd_t pmd)
{
	return pmd_none(pmd);
}

__rust_helper int rust_helper_pmd_present(pmd_t pmd)
{
	return pmd_present(pmd);
}

__rust_helper int rust_helper_pmd_trans_huge(pmd_t pmd)
{
	return pmd_trans_huge(pmd);
}

__rust_helper int rust_helper_pmd_bad(pmd_t pmd)
{
	return pmd_bad(pmd);
}

__rust_helper bool rust_helper_pmd_is_migration_entry(pmd_t pmd)
{
	return pmd_is_migration_entry(pmd);
}

__rust_helper pgtable_t rust_helper_pmd_pgtable(pmd_t pmd)
{
	return pmd_pgtable(pmd);
}

__rust_helper void rust_helper_mm_dec_nr_ptes(struct mm_struct *mm)
{
	mm_dec_nr_ptes(mm);
}

__rust_helper void
rust_helper_page_table_check_pte_clear_range(struct mm_struct *mm,
					     unsigned long addr, pmd_t pmd)
{
	page_table_check_pte_clear_range(mm, addr, pmd);
}

__rust_helper spinlock_t *rust_helper_pte_lockptr(struct mm_struct *mm,
						  pmd_t *pmd)
{
	return pte_lockptr(mm, pmd);
}

__rust_helper long rust_helper_folio_nr_pages(const struct folio *folio)
{
	return folio_nr_pages(folio);
}

__rust_helper unsigned long rust_helper_folio_pfn(const struct folio *folio)
{
	return folio_pfn(folio);
}

__rust_helper void rust_helper_folio_ref_sub(struct folio *folio, int nr)
{
	folio_ref_sub(folio, nr);
}

__rust_helper int rust_helper_mm_counter_file(struct folio *folio)
{
	return mm_counter_file(folio);
}

__rust_helper void rust_helper_add_mm_counter(struct mm_struct *mm, int member,
					      long value)
{
	add_mm_counter(mm, member, value);
}

__rust_helper void rust_helper_ksm_might_unmap_zero_page(struct mm_struct *mm,
							 pte_t pte)
{
	ksm_might_unmap_zero_page(mm, pte);
}

__rust_helper void rust_helper_clear_ptes(struct mm_struct *mm,
					  unsigned long addr, pte_t *ptep,
					  unsigned int nr)
{
	clear_ptes(mm, addr, ptep, nr);
}

__rust_helper void rust_helper_folio_put_refs(struct folio *folio, int refs)
{
	folio_put_refs(folio, refs);
}

__rust_helper void rust_helper___folio_mark_uptodate(struct folio *folio)
{
	__folio_mark_uptodate(folio);
}

/* Declared in a header that bindgen does not read (<linux/rmap.h>). */

__rust_helper void rust_helper_folio_remove_rmap_ptes(struct folio *folio,
						      struct page *page,
						      int nr_pages,
						      struct vm_area_struct *vma)
{
	folio_remove_rmap_ptes(folio, page, nr_pages, vma);
}

__rust_helper void rust_helper_spin_lock_nested(spinlock_t *lock, int subclass)
{
	spin_lock_nested(lock, subclass);
}

/* Facts the KUnit cases of rust/kernel/mm/ assert on, and what they set up. */

__rust_helper struct folio *rust_helper_page_folio(struct page *page)
{
	return page_folio(page);
}

__rust_helper int rust_helper_folio_ref_count(const struct folio *folio)
{
	return folio_ref_count(folio);
}

__rust_helper void rust_helper_folio_get(struct folio *folio)
{
	folio_get(folio);
}

__rust_helper bool rust_helper_folio_test_lru(const struct folio *folio)
{
	return folio_test_lru(folio);
}

__rust_helper bool rust_helper_folio_test_locked(const struct folio *folio)
{
	return folio_test_locked(folio);
}

__rust_helper int rust_helper_folio_mapcount(const struct folio *folio)
{
	return folio_mapcount(folio);
}

__rust_helper bool rust_helper_folio_memcg_charged(struct folio *folio)
{
	return folio_memcg_charged(folio);
}

__rust_helper int rust_helper_rwsem_is_locked(struct rw_semaphore *sem)
{
	return rwsem_is_locked(sem);
}

__rust_helper void rust_helper_mm_flags_set(int flag, struct mm_struct *mm)
{
	mm_flags_set(flag, mm);
}

__rust_helper void rust_helper_mm_flags_clear(int flag, struct mm_struct *mm)
{
	mm_flags_clear(flag, mm);
}

__rust_helper bool rust_helper_node_online(int nid)
{
	return node_online(nid);
}

__rust_helper int rust_helper_fatal_signal_pending(struct task_struct *p)
{
	return fatal_signal_pending(p);
}

__rust_helper void rust_helper_try_to_unmap_flush(void)
{
#ifdef CONFIG_ARCH_WANT_BATCHED_UNMAP_TLB_FLUSH
	try_to_unmap_flush();
#endif
}

__rust_helper bool rust_helper_userfaultfd_protected(struct vm_area_struct *vma)
{
	return userfaultfd_protected(vma);
}

__rust_helper void rust_helper_i_mmap_lock_read(struct address_space *mapping)
{
	i_mmap_lock_read(mapping);
}

__rust_helper void rust_helper_i_mmap_unlock_read(struct address_space *mapping)
{
	i_mmap_unlock_read(mapping);
}

__rust_helper bool rust_helper_mapping_can_writeback(struct address_space *mapping)
{
	return mapping_can_writeback(mapping);
}

__rust_helper bool rust_helper_shmem_file(struct file *file)
{
	return shmem_file(file);
}

__rust_helper void rust_helper_xa_lock_irq(struct xarray *xa)
{
	xa_lock_irq(xa);
}

__rust_helper void rust_helper_xa_unlock_irq(struct xarray *xa)
{
	xa_unlock_irq(xa);
}

__rust_helper void rust_helper_xas_lock_irq(struct xa_state *xas)
{
	xas_lock_irq(xas);
}

__rust_helper void rust_helper_xas_unlock_irq(struct xa_state *xas)
{
	xas_unlock_irq(xas);
}

__rust_helper void *rust_helper_xas_next_entry(struct xa_state *xas,
					       unsigned long max)
{
	return xas_next_entry(xas, max);
}

__rust_helper int rust_helper_xas_error(const struct xa_state *xas)
{
	return xas_error(xas);
}

__rust_helper void *rust_helper_xa_mk_internal(unsigned long v)
{
	return xa_mk_internal(v);
}

__rust_helper void rust_helper_xas_set_order(struct xa_state *xas,
					     unsigned long index,
					     unsigned int order)
{
	xas_set_order(xas, index, order);
}

__rust_helper bool rust_helper_folio_trylock(struct folio *folio)
{
	return folio_trylock(folio);
}

__rust_helper unsigned int rust_helper_folio_order(const struct folio *folio)
{
	return folio_order(folio);
}

__rust_helper struct folio *rust_helper_filemap_lock_folio(struct address_space *mapping,
							   pgoff_t index)
{
	return filemap_lock_folio(mapping, index);
}

__rust_helper pgoff_t rust_helper_folio_pgoff(const struct folio *folio)
{
	return folio_pgoff(folio);
}

__rust_helper bool rust_helper_inode_is_open_for_write(const struct inode *inode)
{
	return inode_is_open_for_write(inode);
}

__rust_helper bool rust_helper_userfaultfd_missing(struct vm_area_struct *vma)
{
	return userfaultfd_missing(vma);
}

__rust_helper bool rust_helper_vma_test_atomic_flag(struct vm_area_struct *vma,
						    vma_flag_t bit)
{
	return vma_test_atomic_flag(vma, bit);
}

/* Mapping a PTE-mapped anonymous folio with its PMD in place. */

__rust_helper unsigned long rust_helper_pte_pfn(pte_t pte)
{
	return pte_pfn(pte);
}

__rust_helper bool rust_helper_folio_test_anon(const struct folio *folio)
{
	return folio_test_anon(folio);
}

__rust_helper bool rust_helper_folio_test_swapcache(const struct folio *folio)
{
	return folio_test_swapcache(folio);
}

__rust_helper bool
rust_helper_folio_test_partially_mapped(const struct folio *folio)
{
	return folio_test_partially_mapped(folio);
}

__rust_helper int rust_helper_PageAnonExclusive(const struct page *page)
{
	return PageAnonExclusive(page);
}

__rust_helper void rust_helper_ClearPageAnonExclusive(struct page *page)
{
	ClearPageAnonExclusive(page);
}

__rust_helper pmd_t rust_helper_folio_mk_pmd(const struct folio *folio,
					     pgprot_t pgprot)
{
	return folio_mk_pmd(folio, pgprot);
}

__rust_helper pmd_t rust_helper_pmd_mkdirty(pmd_t pmd)
{
	return pmd_mkdirty(pmd);
}

__rust_helper void rust_helper_set_pmd_at(struct mm_struct *mm,
					  unsigned long addr, pmd_t *pmdp,
					  pmd_t pmd)
{
	set_pmd_at(mm, addr, pmdp, pmd);
}

__rust_helper void rust_helper_update_mmu_cache_pmd(struct vm_area_struct *vma,
						    unsigned long addr,
						    pmd_t *pmd)
{
	update_mmu_cache_pmd(vma, addr, pmd);
}

__rust_helper int rust_helper_pte_write(pte_t pte)
{
	return pte_write(pte);
}

/*
 * Not a plain forwarder: the walk of kernel::mm::pgtable::WriteProtect, one
 * call for a run of PTEs instead of four per PTE (ptep_get(), pte_present(),
 * pte_write(), ptep_set_wrprotect()), as copy_present_ptes() batches fork's.
 * Write-protects the present, writable PTEs of the @nr from @ptep on, which
 * map @addr on in @mm, with their page table locked, and sets the bit in
 * @changed of each one's index, counted from @first. Returns how many changed.
 */
__rust_helper unsigned int
rust_helper_wrprotect_present_ptes(struct mm_struct *mm, unsigned long addr,
				   pte_t *ptep, unsigned int first,
				   unsigned int nr, unsigned long *changed)
{
	unsigned int i, n = 0;

	for (i = 0; i < nr; i++) {
		pte_t pte = ptep_get(ptep + i);

		if (pte_present(pte) && pte_write(pte)) {
			ptep_set_wrprotect(mm, addr + i * PAGE_SIZE, ptep + i);
			__set_bit(first + i, changed);
			n++;
		}
	}
	return n;
}

/*
 * Not a plain forwarder: the walk of kernel::mm::pgtable::DetachedPteTable::take(),
 * one call for a run of PTEs. Takes the @nr PTEs from @ptep on, which map
 * @addr on in @mm, out of their page table, locked: each one that is not none
 * is cleared (ptep_get_and_clear(), which keeps the page table check's count
 * and the hardware's accessed and dirty bits) and its value saved in @saved.
 */
__rust_helper void rust_helper_take_ptes(struct mm_struct *mm,
					 unsigned long addr, pte_t *ptep,
					 unsigned int nr, pte_t *saved)
{
	unsigned int i;

	for (i = 0; i < nr; i++) {
		pte_t pte = ptep_get(ptep + i);

		if (!pte_none(pte))
			pte = ptep_get_and_clear(mm, addr + i * PAGE_SIZE,
						 ptep + i);
		saved[i] = pte;
	}
}

/*
 * Undoes rust_helper_take_ptes() for @nr of the PTEs it took, with their page
 * table still locked since: puts back each saved value that is not none.
 */
__rust_helper void rust_helper_restore_ptes(struct mm_struct *mm,
					    unsigned long addr, pte_t *ptep,
					    unsigned int nr, const pte_t *saved)
{
	unsigned int i;

	for (i = 0; i < nr; i++)
		if (!pte_none(saved[i]))
			set_pte_at(mm, addr + i * PAGE_SIZE, ptep + i, saved[i]);
}

/*
 * Not a plain forwarder: the per-page walk of
 * kernel::mm::pgtable::DetachedPteTable::maps_in_place(), one call instead of
 * four per PTE. Whether the folio_nr_pages(@folio) PTEs from @ptep on map the
 * pages of @folio in order, each present and PageAnonExclusive().
 */
__rust_helper bool rust_helper_ptes_map_folio_exclusive(const pte_t *ptep,
							struct folio *folio)
{
	unsigned long pfn = folio_pfn(folio);
	long i, nr = folio_nr_pages(folio);

	for (i = 0; i < nr; i++) {
		pte_t pte = ptep_get((pte_t *)ptep + i);

		if (!pte_present(pte) || pte_pfn(pte) != pfn + i ||
		    !PageAnonExclusive(folio_page(folio, i)))
			return false;
	}
	return true;
}

/*
 * Not a plain forwarder: clears PageAnonExclusive() on every page of @folio
 * but the first, where a PMD mapping keeps it (its first page speaks for the
 * folio); kernel::mm::pgtable::DetachedPteTable::install_pmd_in_place().
 */
__rust_helper void rust_helper_folio_clear_tail_anon_exclusive(struct folio *folio)
{
	long i, nr = folio_nr_pages(folio);

	for (i = 1; i < nr; i++)
		ClearPageAnonExclusive(folio_page(folio, i));
}

#ifdef CONFIG_X86
/*
 * A TLB flush of a range of a VMA that is not hugetlb, after changes to its
 * entries only: unlike <asm/tlbflush.h>'s flush_tlb_range(), it passes
 * freed_tables false, so CPUs in lazy TLB mode are spared (they flush when
 * they switch back to the mm).
 */
__rust_helper void rust_helper_flush_tlb_range(struct vm_area_struct *vma,
					       unsigned long start,
					       unsigned long end)
{
	flush_tlb_mm_range(vma->vm_mm, start, end, PAGE_SHIFT, false);
}

/*
 * flush_tlb_range() of a VMA that is not hugetlb, as <asm/tlbflush.h> has it
 * (freed_tables true): before a page table that the range's PMD pointed to is
 * freed, every CPU, lazy ones included, must forget that pointer.
 */
__rust_helper void rust_helper_flush_tlb_table_range(struct vm_area_struct *vma,
						     unsigned long start,
						     unsigned long end)
{
	flush_tlb_mm_range(vma->vm_mm, start, end, PAGE_SHIFT, true);
}
#endif

#ifdef CONFIG_MMU_NOTIFIER
__rust_helper void
rust_helper_mmu_interval_set_seq(struct mmu_interval_notifier *interval_sub,
				 unsigned long cur_seq)
{
	mmu_interval_set_seq(interval_sub, cur_seq);
}

__rust_helper bool
rust_helper_mmu_interval_check_retry(struct mmu_interval_notifier *interval_sub,
				     unsigned long seq)
{
	return mmu_interval_check_retry(interval_sub, seq);
}
#endif
