// SPDX-License-Identifier: GPL-2.0

//! The write side of a collapse of anonymous memory: detach the page table from its PMD,
//! isolate the pages it maps, copy them into the huge folio and map that with the PMD, or put
//! everything back as it was.
//!
//! Each lock is a guard: [`MmapWrite`] (the mmap lock, for write), [`AnonVmaWrite`] (the
//! anon_vma root lock, for write), and [`DetachedTable`], which owns the detached page table and
//! the isolated folios until they are either installed or restored. Dropping a
//! [`DetachedTable`] restores the page table and then releases the folios, so that every early
//! return rolls back completely.
//!
//! Upstream reference: `collapse_huge_page()`, `__collapse_huge_page_isolate()`,
//! `__collapse_huge_page_copy()`, `__collapse_huge_page_copy_succeeded()` and
//! `__collapse_huge_page_copy_failed()` in [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use super::{
    mode::{CollapseMode, Limits, PMD_ORDER, PTES_PER_PMD},
    outcome::Outcome,
    pmd::{count_exceeded, PteFacts},
    request::Candidate,
    scan::ScanTally,
    trace,
};
use core::{marker::PhantomData, mem::MaybeUninit, ptr, ptr::NonNull};
use kernel::{
    alloc::{flags::GFP_KERNEL, KVec},
    bindings,
    mm::{
        anon_vma::AnonVmaWriteGuard,
        folio::{IsolateError, IsolatedFolio, NewFolio},
        mmap_lock::MmapWriteLock,
        pgtable::PmdEntry,
        virt::VmaRef,
    },
    page::PAGE_SIZE,
};

/// The mmap lock held for write (`kernel::mm::mmap_lock`).
pub(crate) type MmapWrite<'a> = MmapWriteLock<'a>;

/// The anon_vma root lock held for write (`kernel::mm::anon_vma`).
pub(crate) type AnonVmaWrite<'a> = AnonVmaWriteGuard<'a>;

/// A page table of PTEs taken out of its PMD, the candidate range of its entries being
/// collapsed, and the folios of that range that were isolated so far.
///
/// No page fault or GUP-fast walk can reach the pages while the table is detached, and no
/// rmap walk can reach the isolated ones. [`DetachedTable::install`] maps the new folio (with
/// the PMD for the PMD order, else with PTEs in the table, which goes back in place); dropping
/// the table puts it back and releases the isolated folios, in that order.
///
/// # Invariants
///
/// - The mmap lock of `mm` is held for write for `'g`; `vma` is the anonymous VMA that covers
///   `[haddr, haddr + PMD_SIZE)`; `first + nr <= PTES_PER_PMD`.
/// - `*pmdp` is none; `table` is the value it held, a PMD entry pointing to a page table.
/// - `pte` maps that page table (`pte_offset_map()`: the RCU read lock is held), and `ptl` is
///   its lock, not held.
/// - Each folio appears once in `isolated`.
/// - `slots` has `PTES_PER_PMD` entries. Entry `i` is the page that PTE `i` maps and its
///   folio, which is in `isolated`, or `None`; it is set for the candidate's PTEs once
///   [`DetachedTable::isolate`] succeeded. `zero` marks the PTEs that map the zero page.
///   `last_pfn` is the pfn of the last folio the isolation looked at (for the tracepoint).
pub(crate) struct DetachedTable<'g> {
    mm: *mut bindings::mm_struct,
    vma: *mut bindings::vm_area_struct,
    pmdp: *mut bindings::pmd_t,
    table: bindings::pmd_t,
    haddr: usize,
    first: usize,
    nr: usize,
    pte: *mut bindings::pte_t,
    ptl: *mut bindings::spinlock_t,
    isolated: KVec<IsolatedFolio>,
    slots: KVec<Slot>,
    zero: [u64; PTES_PER_PMD as usize / 64],
    last_pfn: usize,
    _lock: PhantomData<&'g MmapWrite<'g>>,
}

/// The page a PTE of the candidate maps, and its folio; `None` for none and zero-page PTEs.
type Slot = Option<(NonNull<bindings::page>, NonNull<bindings::folio>)>;

/// Room for the isolated folios of one page table and for what each PTE maps, allocated
/// before any lock is taken.
pub(crate) struct IsolationList {
    folios: KVec<IsolatedFolio>,
    slots: KVec<Slot>,
}

impl IsolationList {
    /// Allocates room for one folio and one slot per PTE. May sleep.
    pub(crate) fn new() -> Result<Self, Outcome> {
        let n = PTES_PER_PMD as usize;
        let folios = KVec::with_capacity(n, GFP_KERNEL).map_err(|_| Outcome::AllocHugePageFail)?;
        let mut slots =
            KVec::with_capacity(n, GFP_KERNEL).map_err(|_| Outcome::AllocHugePageFail)?;
        for _ in 0..n {
            slots
                .push_within_capacity(None)
                .map_err(|_| Outcome::AllocHugePageFail)?;
        }
        Ok(Self { folios, slots })
    }
}

/// A run of PTEs mapping consecutive pages of one folio: `(first PTE, page, folio, count)`.
type Run = (
    usize,
    NonNull<bindings::page>,
    NonNull<bindings::folio>,
    usize,
);

impl<'g> DetachedTable<'g> {
    /// Clears the PMD entry `pmd` that maps the page table of candidate `c` in `vma`, flushes
    /// the TLB, waits for lockless page-table walkers, and maps the detached table.
    ///
    /// The mmu notifier range brackets the clear; it covers the candidate only, as only its
    /// PTEs change. Upstream: the middle of `collapse_huge_page()`.
    pub(crate) fn detach(
        guard: &'g MmapWrite<'_>,
        _anon: &AnonVmaWrite<'_>,
        vma: &'g VmaRef,
        pmd: PmdEntry<'g>,
        c: Candidate,
        list: IsolationList,
    ) -> Result<Self, Outcome> {
        let mm = guard.mm().as_raw();
        let vma = vma.as_ptr();
        let pmdp = pmd.as_ptr();
        let haddr = c.haddr;
        let nr = c.nr().min(PTES_PER_PMD as usize);
        let first = c.first.min(PTES_PER_PMD as usize - nr);
        let start = haddr + first * PAGE_SIZE;
        let end = start + nr * PAGE_SIZE;
        let mut range = MaybeUninit::<bindings::mmu_notifier_range>::zeroed();
        // SAFETY: `range` is valid for writes and zeroed (a valid value of the C struct);
        // `mm` is valid. Everything below runs with the mmap write lock and the anon_vma lock
        // held, as `pmdp_collapse_flush()` requires; `pmdp` points to a PMD entry of `mm` that
        // points to a page table (`PmdEntry` was found under this lock).
        let table = unsafe {
            let range = range.as_mut_ptr();
            bindings::mmu_notifier_range_init(
                range,
                bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR,
                0,
                mm,
                start,
                end,
            );
            bindings::mmu_notifier_invalidate_range_start(range);
            let pmd_ptl = bindings::pmd_lock(mm, pmdp);
            // Removes the PMD and flushes the TLB for the range; GUP-fast sees the change and
            // backs off.
            let table = bindings::pmdp_collapse_flush(vma, haddr, pmdp);
            bindings::spin_unlock(pmd_ptl);
            bindings::mmu_notifier_invalidate_range_end(range);
            // Waits until lockless walkers (GUP-fast) are done with the detached table.
            bindings::thp_collapse_tlb_remove_table_sync_one();
            table
        };
        let mut ptl = ptr::null_mut();
        let mut copy = table;
        // SAFETY: `copy` holds the detached PMD value; `pte_offset_map_lock()` reads it only
        // during the call. The page table it points to stays allocated: only we can free it.
        let pte = unsafe { bindings::pte_offset_map_lock(mm, &mut copy, haddr, &mut ptl) };
        if pte.is_null() {
            // SAFETY: `pmdp` is none and `table` is what it held: put it back.
            unsafe { restore_pmd(mm, pmdp, table) };
            return Err(Outcome::NoPteTable);
        }
        // SAFETY: `pte_offset_map_lock()` succeeded and took `ptl`; the table stays mapped.
        unsafe { bindings::spin_unlock(ptl) };
        let IsolationList {
            folios: mut isolated,
            slots,
        } = list;
        isolated.clear();
        // INVARIANT: The PMD is none, `table` is its old value, `pte` is mapped with `ptl` not
        // held, and nothing is isolated yet.
        Ok(Self {
            mm,
            vma,
            pmdp,
            table,
            haddr,
            first,
            nr,
            pte,
            ptl,
            isolated,
            slots,
            zero: [0; PTES_PER_PMD as usize / 64],
            last_pfn: trace::NO_PFN,
            _lock: PhantomData,
        })
    }

    /// Pointer to entry `i` of the detached table.
    fn ptep(&self, i: usize) -> *mut bindings::pte_t {
        let i = i.min(PTES_PER_PMD as usize - 1);
        // SAFETY: By the type invariants `pte` maps the `PTES_PER_PMD` entries of the table,
        // and `i` is in range.
        unsafe { self.pte.add(i) }
    }

    /// The slot of PTE `i`.
    fn slot(&self, i: usize) -> Slot {
        self.slots.get(i).copied().flatten()
    }

    /// The runs of PTEs in the candidate that map consecutive pages of one folio, in order.
    fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        let end = self.first + self.nr;
        let mut i = self.first;
        core::iter::from_fn(move || {
            while i < end {
                let start = i;
                i += 1;
                let Some((page, folio)) = self.slot(start) else {
                    continue;
                };
                // The pages of a folio are consecutive `struct page`s (`folio_page()`).
                while i < end
                    && self.slot(i).is_some_and(|(p, f)| {
                        f == folio && p.as_ptr() == page.as_ptr().wrapping_add(i - start)
                    })
                {
                    i += 1;
                }
                return Some((start, page, folio, i - start));
            }
            None
        })
    }

    /// Locks each folio mapped by the detached table, checks that nobody else holds a
    /// reference to it, and isolates it from the LRU, within `limits` for `mode`.
    ///
    /// Returns [`Outcome::Succeed`], or why the range cannot be collapsed; in that case the
    /// table is to be dropped, which releases what was isolated.
    /// Upstream: `__collapse_huge_page_isolate()`.
    pub(crate) fn isolate(&mut self, mode: CollapseMode, limits: Limits) -> Outcome {
        let mut tally = ScanTally::new(mode, limits);
        // SAFETY: By the type invariants `ptl` is the detached table's lock, not held.
        unsafe { bindings::spin_lock(self.ptl) };
        let order = self.nr.trailing_zeros();
        let outcome = (self.first..self.first + self.nr)
            .try_for_each(|i| self.isolate_one(i, order, &mut tally))
            .map_or_else(|outcome| outcome, |()| tally.finish_isolation());
        count_exceeded(order, outcome);
        // SAFETY: Taken above.
        unsafe { bindings::spin_unlock(self.ptl) };
        trace::isolate(
            self.last_pfn,
            tally.none_or_zero_count(),
            tally.referenced_count(),
            outcome,
            order,
        );
        outcome
    }

    /// Isolates the folio that entry `i` maps, if it was not isolated yet, for a collapse to
    /// `order`, and records what the entry maps.
    fn isolate_one(&mut self, i: usize, order: u32, tally: &mut ScanTally) -> Result<(), Outcome> {
        let addr = self.haddr + i * PAGE_SIZE;
        // SAFETY: `vma` is valid under the mmap write lock; entry `i` is in the detached
        // table, which nobody else can change, and the folio it maps stays valid while mapped.
        let facts = unsafe { PteFacts::read(self.vma, addr, self.ptep(i)) };
        if facts.none_or_zero() {
            if facts.zero() {
                self.zero[i / 64] |= 1 << (i % 64);
            }
            return tally.none_or_zero();
        }
        if facts.non_present().is_some() {
            return Err(Outcome::PteNonPresent);
        }
        if facts.uffd_wp() {
            return Err(Outcome::PteUffd);
        }
        let Some((page, folio)) = facts.page() else {
            return Err(Outcome::PageNull);
        };
        self.last_pfn = facts.folio_pfn();
        if !facts.anon() {
            return Err(Outcome::PageAnon);
        }
        if tally.skips_lazyfree()
            && facts.clean_lazyfree()
            // SAFETY: `vma` is valid under the mmap write lock.
            && !unsafe { bindings::vma_is_droppable(self.vma) }
        {
            return Err(Outcome::PageLazyfree);
        }
        if facts.shared() {
            tally.shared()?;
        }
        // A folio as large as the new one already: nothing to gain.
        if order != PMD_ORDER && facts.folio_nr_pages() >= 1 << order {
            return Err(Outcome::PteMappedHugepage);
        }
        let seen = facts.large() && self.isolated.iter().any(|f| f.as_ptr() == folio);
        if !seen {
            // SAFETY: `folio` is mapped by the detached table, which only we can change, so
            // it stays valid.
            let isolated = unsafe { IsolatedFolio::isolate(folio, facts.folio_nr_pages()) }
                .map_err(|e| match e {
                    IsolateError::Locked => Outcome::PageLock,
                    IsolateError::Referenced => Outcome::PageCount,
                    IsolateError::NotOnLru => Outcome::DelPageLru,
                })?;
            // There is room for one folio per PTE (`IsolationList`), so the push cannot
            // fail; if it did, dropping the folio puts it back at once.
            if self.isolated.push_within_capacity(isolated).is_err() {
                return Err(Outcome::Fail);
            }
        }
        if let Some(slot) = self.slots.get_mut(i) {
            // INVARIANT: The page this entry maps and its folio, which is isolated now.
            *slot = Some((page, folio));
        }
        let referenced = tally.wants_referenced() && facts.referenced(self.mm, addr);
        tally.present(referenced);
        Ok(())
    }

    /// Copies the pages of the detached table into `new`, zero-filling where no page (or the
    /// zero page) is mapped. Machine-check safe: a poisoned source page fails the copy with
    /// [`Outcome::CopyMc`] instead of crashing. Upstream: `__collapse_huge_page_copy()`.
    pub(crate) fn copy(&self, new: &NewFolio) -> Result<(), Outcome> {
        if 1 << new.order() != self.nr {
            return Err(Outcome::Fail);
        }
        let dst0 = new.first_page();
        for k in 0..self.nr {
            let i = self.first + k;
            let addr = self.haddr + i * PAGE_SIZE;
            // SAFETY: `new` has `nr` pages (checked above), consecutive `struct page`s
            // (`folio_page()`), so page `k` exists; we own it and nobody else reads or writes
            // it. A slot holds a page mapped by the detached table, of a folio we isolated and
            // locked, which cannot be freed or changed under us.
            unsafe {
                let dst = dst0.add(k);
                match self.slot(i) {
                    None => bindings::clear_user_highpage(dst, addr),
                    Some((src, _)) => {
                        if bindings::copy_mc_user_highpage(dst, src.as_ptr(), addr, self.vma) > 0 {
                            return Err(Outcome::CopyMc);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Maps `new`, which holds a copy of every page of the candidate (see
    /// [`DetachedTable::copy`]), and frees the old pages. For the PMD order the PMD maps it and
    /// the detached table is deposited for a later split; otherwise the table goes back in
    /// place with the candidate's PTEs mapping the new folio.
    ///
    /// Upstream: `__collapse_huge_page_copy_succeeded()` and the end of `collapse_huge_page()`.
    pub(crate) fn install(mut self, new: NewFolio) {
        let mm = self.mm;
        let (first, end) = (self.first, self.first + self.nr);
        // The new folio maps a page where there was none, or the zero page.
        let filled = (first..end).filter(|&i| self.slot(i).is_none()).count();
        // SAFETY: The detached table is ours; `ptl` is its lock, taken once for the whole
        // range (nobody else can reach the table; the rmap update needs preemption off for
        // its per-CPU statistics). Every slot holds a page of a folio we isolated, mapped by
        // its PTE, which holds a reference for the mapping.
        unsafe {
            bindings::spin_lock(self.ptl);
            for i in first..end {
                if self.zero[i / 64] & (1 << (i % 64)) != 0 {
                    bindings::ksm_might_unmap_zero_page(mm, bindings::ptep_get(self.ptep(i)));
                }
            }
            bindings::clear_ptes(
                mm,
                self.haddr + first * PAGE_SIZE,
                self.ptep(first),
                self.nr as u32,
            );
            for (_, page, folio, nr) in self.runs() {
                bindings::folio_remove_rmap_ptes(
                    folio.as_ptr(),
                    page.as_ptr(),
                    nr as i32,
                    self.vma,
                );
            }
            bindings::spin_unlock(self.ptl);
            bindings::add_mm_counter(mm, bindings::MM_ANONPAGES as i32, filled as isize);
            for (_, _, folio, nr) in self.runs() {
                bindings::folio_put_refs(folio.as_ptr(), nr as i32);
            }
        }
        for folio in self.isolated.drain_all() {
            // No longer mapped here: its swap cache entry can go.
            folio.putback_free_swap();
        }
        let pmd_order = new.order() == PMD_ORDER;
        let folio = new.into_raw();
        // SAFETY: `folio` is ours, fully written; marking it uptodate orders the copy before
        // the page-table store. The PMD is none (type invariants) and `table` is the detached
        // table. For the PMD order it is deposited for a later split and
        // `map_anon_folio_pmd_nopf()` maps the folio with the PMD; otherwise the table goes
        // back (`pmd_populate()`) and `map_anon_folio_pte_nopf()` maps the folio with the
        // candidate's PTEs, which are none now, under the PTE lock nested in the PMD lock.
        // Either takes over our reference for the mapping.
        unsafe {
            bindings::__folio_mark_uptodate(folio);
            let pmd_ptl = bindings::pmd_lock(mm, self.pmdp);
            if pmd_order {
                bindings::pgtable_trans_huge_deposit_table(mm, self.pmdp, self.table);
                bindings::map_anon_folio_pmd_nopf(folio, self.pmdp, self.vma, self.haddr);
            } else {
                let nested = self.ptl != pmd_ptl;
                if nested {
                    bindings::spin_lock_nested(self.ptl, bindings::SINGLE_DEPTH_NESTING as i32);
                }
                bindings::pmd_populate_table(mm, self.pmdp, self.table);
                bindings::map_anon_folio_pte_nopf(
                    folio,
                    self.pte.add(self.first),
                    self.vma,
                    self.haddr + self.first * PAGE_SIZE,
                    false,
                );
                if nested {
                    bindings::spin_unlock(self.ptl);
                }
            }
            bindings::spin_unlock(pmd_ptl);
            bindings::pte_unmap(self.pte);
        }
        // The table is in use again: nothing may roll back now. Only the memory of the two
        // lists (`isolated` is empty) is left to free, after `self` is forgotten.
        let lists = (
            core::mem::take(&mut self.isolated),
            core::mem::take(&mut self.slots),
        );
        core::mem::forget(self);
        drop(lists);
    }
}

impl Drop for DetachedTable<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the PMD is none and `table` is its old value: putting
        // it back comes before releasing the folios, which are still isolated and locked, so
        // no rmap walker can look at the range in between.
        unsafe { restore_pmd(self.mm, self.pmdp, self.table) };
        // Puts every isolated folio back.
        self.isolated.clear();
        // SAFETY: By the type invariants `pte` is mapped.
        unsafe { bindings::pte_unmap(self.pte) };
    }
}

/// Points the none PMD entry `pmdp` back at the page table that `table` describes.
///
/// # Safety
///
/// The mmap lock of `mm` must be held for write; `*pmdp` must be none and `table` the value it
/// held before, pointing to a page table.
unsafe fn restore_pmd(
    mm: *mut bindings::mm_struct,
    pmdp: *mut bindings::pmd_t,
    table: bindings::pmd_t,
) {
    // SAFETY: By the function's safety requirements. A page table is installed with
    // `pmd_populate()`, never `set_pmd_at()`.
    unsafe {
        let pmd_ptl = bindings::pmd_lock(mm, pmdp);
        bindings::pmd_populate_table(mm, pmdp, table);
        bindings::spin_unlock(pmd_ptl);
    }
}
