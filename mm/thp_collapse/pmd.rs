// SPDX-License-Identifier: GPL-2.0

//! The read side of the collapse core's contact with C: what the collapse asks of a held
//! mmap lock, the facts of a PTE, the scan walk, swap-in, and the allocation and charge of the
//! new folio with its vmstat events. The locks and the folio themselves are guards of
//! `kernel::mm` (`mmap_lock`, `pgtable`, `folio`).
//!
//! With `detach.rs` (the write side), `trace.rs` (the tracepoint forwarders) and the crate
//! root (the entry points from C), this is where the crate's `unsafe` blocks live, next to
//! the lock that makes each sound.
//!
//! C headers: [`include/linux/huge_mm.h`](srctree/include/linux/huge_mm.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h),
//! [`mm/khugepaged.c`](srctree/mm/khugepaged.c)

use super::{
    mode::{AllocPolicy, CollapseMode, Tunables, PMD_ORDER, PTES_PER_PMD},
    outcome::Outcome,
    request::Candidate,
    scan::ScanTally,
    trace,
};
use core::{mem::MaybeUninit, ptr, ptr::NonNull};
use kernel::{
    bindings,
    mm::{
        folio::NewFolio,
        mmap_lock::{MmapLocked, MmapReadLock},
        pgtable::{PmdEntry, PteTableLocked, PTRS_PER_PTE},
        virt::VmaRef,
        Mm,
    },
    page::PAGE_SIZE,
};

pub(crate) use kernel::mm::pgtable::PmdState;

/// The mmap lock held for read (`kernel::mm::mmap_lock`).
pub(crate) type MmapRead<'a> = MmapReadLock<'a>;

/// What the collapse core asks of a held mmap lock, for read or for write, on top of
/// [`MmapLocked`].
pub(crate) trait CollapseLocked: MmapLocked {
    /// Whether the mm's last user is gone, or THP was disabled for the whole process
    /// (`prctl(PR_SET_THP_DISABLE)`). Upstream: `collapse_test_exit_or_disable()`.
    fn exiting_or_thp_disabled(&self) -> bool {
        let mm = self.locked_mm().as_raw();
        // SAFETY: `mm` is valid; testing a flag is an atomic bit test.
        let disabled =
            unsafe { bindings::mm_flags_test(bindings::MMF_DISABLE_THP_COMPLETELY as i32, mm) };
        self.mm_exiting() || disabled
    }

    /// What the PMD covering `addr` holds, read without the page-table lock.
    ///
    /// Upstream: `find_pmd_or_thp_or_none()`.
    fn pmd_state(&self, addr: usize) -> PmdState {
        PmdEntry::find(self, addr).map_or(PmdState::None, PmdEntry::state)
    }

    /// The PMD entry covering `addr`, if it points to a page table; otherwise the outcome that
    /// says why not. Upstream: `find_pmd_or_thp_or_none()`.
    fn pmd_table(&self, addr: usize) -> Result<PmdEntry<'_>, Outcome> {
        let pmd = PmdEntry::find(self, addr).ok_or(Outcome::NoPteTable)?;
        match pmd.state() {
            PmdState::Table => Ok(pmd),
            PmdState::Huge => Err(Outcome::PmdMapped),
            PmdState::None => Err(Outcome::NoPteTable),
        }
    }
}

impl<L: MmapLocked> CollapseLocked for L {}

/// Maps and locks the page table of PTEs under the PMD covering `addr`, if there is one.
///
/// Upstream: `mm_find_pmd()` + `pte_offset_map_lock()`.
pub(crate) fn pte_table_locked<'g>(
    guard: &'g MmapRead<'_>,
    addr: usize,
) -> Option<PteTableLocked<'g>> {
    PmdEntry::find(guard, addr).and_then(|pmd| PteTableLocked::lock(pmd, addr))
}

/// Faults the swapped-out pages of candidate `c` back in, so that it can be collapsed, under
/// `guard`; `referenced` is what the scan saw (for the tracepoint).
///
/// Returns the lock if it is still held, or why the range cannot be collapsed; a fault that
/// had to release the lock gives [`Outcome::PageLock`]. Upstream:
/// `__collapse_huge_page_swapin()`.
pub(crate) fn swap_in<'a>(
    guard: MmapRead<'a>,
    c: Candidate,
    referenced: u32,
) -> Result<MmapRead<'a>, Outcome> {
    let mm = guard.mm();
    let mut swapped_in = 0;
    let result = match swap_in_locked(&guard, c, &mut swapped_in) {
        SwapIn::Done => {
            if swapped_in > 0 {
                // SAFETY: Always safe from process context. Drops the LRU batch's extra
                // reference on the pages just read in, which would fail isolation.
                unsafe { bindings::lru_add_drain() };
            }
            Ok(guard)
        }
        SwapIn::Failed(outcome) => Err(outcome),
        SwapIn::LockReleased => {
            // SAFETY: The fault released the mmap lock (`VM_FAULT_RETRY`).
            unsafe { guard.released() };
            // Most likely the folio lock could not be taken at once.
            Err(Outcome::PageLock)
        }
    };
    let outcome = result.as_ref().err().copied().unwrap_or(Outcome::Succeed);
    trace::swapin(mm, swapped_in, referenced, outcome, c.order);
    result
}

/// The loop of [`swap_in`].
fn swap_in_locked(guard: &MmapRead<'_>, c: Candidate, swapped_in: &mut u32) -> SwapIn {
    let haddr = c.haddr;
    let Some(vma) = guard.find_vma(haddr) else {
        return SwapIn::Failed(Outcome::VmaNull);
    };
    let pmd = match guard.pmd_table(haddr) {
        Ok(pmd) => pmd,
        Err(outcome) => return SwapIn::Failed(outcome),
    };
    let mm = guard.mm().as_raw();
    // A mapped run of the page table: the first entry, its index and its lock.
    let mut mapped: Option<(*mut bindings::pte_t, usize, *mut bindings::spinlock_t)> = None;
    for i in c.first..(c.first + c.nr()).min(PTES_PER_PMD as usize) {
        let addr = haddr + i * PAGE_SIZE;
        let (base, first, ptl) = match mapped {
            Some(run) => run,
            None => {
                let mut ptl = ptr::null_mut();
                // SAFETY: `pmd` is a PMD entry of `mm`, kept alive by the mmap lock; the
                // function fails if it no longer points to a page table. The lock is only
                // used by the fault to recheck the entry.
                let pte =
                    unsafe { bindings::pte_offset_map_ro_nolock(mm, pmd.as_ptr(), addr, &mut ptl) };
                if pte.is_null() {
                    return SwapIn::Failed(Outcome::NoPteTable);
                }
                mapped = Some((pte, i, ptl));
                (pte, i, ptl)
            }
        };
        // SAFETY: `base` maps entry `first` of the table; `i` is an entry of the same
        // table, at or after `first`.
        let ptep = unsafe { base.add(i - first) };
        // SAFETY: `ptep` is mapped (above); the value may change under us, which the
        // fault detects (`pte_same()` under the lock).
        let pte = unsafe { bindings::ptep_get_lockless(ptep) };
        // SAFETY: The PTE predicates only inspect the value.
        if unsafe { bindings::pte_none(pte) || bindings::pte_present(pte) } {
            continue;
        }
        if c.order != PMD_ORDER {
            // Reading pages in could make a later scan collapse a larger folio here.
            // SAFETY: Mapped above and not handed to a fault.
            unsafe { bindings::pte_unmap(base) };
            count_exceeded(c.order, Outcome::ExceedSwapPte);
            return SwapIn::Failed(Outcome::ExceedSwapPte);
        }
        // SAFETY: `vma` covers `addr` (the caller revalidated the range under this lock),
        // `ptep` is mapped and unmapped by the call, `pte` is a swap entry read from it.
        let ret = unsafe {
            bindings::thp_collapse_swap_in_pte(vma.as_ptr(), addr, pmd.as_ptr(), ptep, ptl, pte)
        };
        mapped = None;
        if ret & bindings::vm_fault_reason_VM_FAULT_RETRY != 0 {
            return SwapIn::LockReleased;
        }
        if ret & VM_FAULT_ERROR != 0 {
            return SwapIn::Failed(Outcome::Fail);
        }
        *swapped_in += 1;
    }
    if let Some((base, _, _)) = mapped {
        // SAFETY: Mapped above and not handed to a fault.
        unsafe { bindings::pte_unmap(base) };
    }
    SwapIn::Done
}

/// Faults that mean a page could not be brought in: C's `VM_FAULT_ERROR`.
const VM_FAULT_ERROR: bindings::vm_fault_t = bindings::vm_fault_reason_VM_FAULT_OOM
    | bindings::vm_fault_reason_VM_FAULT_SIGBUS
    | bindings::vm_fault_reason_VM_FAULT_SIGSEGV
    | bindings::vm_fault_reason_VM_FAULT_HWPOISON
    | bindings::vm_fault_reason_VM_FAULT_HWPOISON_LARGE
    | bindings::vm_fault_reason_VM_FAULT_FALLBACK;

/// How a swap-in loop ended.
enum SwapIn {
    /// Every swapped-out page is back.
    Done,
    /// A fault failed, or the range changed; the mmap lock is still held.
    Failed(Outcome),
    /// A fault released the mmap lock.
    LockReleased,
}

/// The facts of entry `i` of `table`, which maps `addr` in `vma`, or `None` past the end.
/// `vma` must be the VMA the table was found in.
fn read_entry(
    table: &PteTableLocked<'_>,
    vma: *mut bindings::vm_area_struct,
    addr: usize,
    i: usize,
) -> Option<PteFacts> {
    if i >= PTRS_PER_PTE {
        return None;
    }
    // SAFETY: Entry `i` of `table` is mapped and locked, so it and what it maps are stable;
    // `vma` is valid under the mmap lock the table was found under.
    Some(unsafe { PteFacts::read(vma, addr, table.entry(i)) })
}

/// Scans the page table under the PMD range at `addr` of the anonymous `vma`, feeding `tally`.
///
/// Returns the outcome ([`Outcome::Succeed`] if the range is worth collapsing), how many
/// entries were looked at, and the pfn of the folio that stopped the scan (or
/// [`trace::NO_PFN`]). Upstream: `collapse_scan_pmd()`.
pub(crate) fn scan_anon_pmd(
    guard: &MmapRead<'_>,
    vma: &VmaRef,
    addr: usize,
    tally: &mut ScanTally,
) -> (Outcome, u32, usize) {
    let Some(table) = pte_table_locked(guard, addr) else {
        return (Outcome::NoPteTable, 1, trace::NO_PFN);
    };
    let mm = guard.mm().as_raw();
    let vma_ptr = vma.as_ptr();
    // SAFETY: `vma` is valid and its lock is held.
    let droppable = unsafe { bindings::vma_is_droppable(vma_ptr) };
    let mut scanned = 0;
    for i in 0..PTES_PER_PMD as usize {
        let Some(facts) = read_entry(&table, vma_ptr, addr + i * PAGE_SIZE, i) else {
            break;
        };
        scanned += 1;
        match scan_one(mm, &facts, (addr, i), droppable, tally) {
            Ok(()) => {}
            Err(outcome) => {
                count_exceeded(PMD_ORDER, outcome);
                return (outcome, scanned, facts.folio_pfn());
            }
        }
    }
    drop(table);
    (tally.finish(), scanned, trace::NO_PFN)
}

/// What one PTE of a collapse candidate maps, read in one call.
///
/// The predicates of a PTE and its folio are static inlines in C: read one by one, each would
/// be an out-of-line `rust_helper_*` call, a dozen per PTE, 512 times per PMD. The C side only
/// reads; what the facts mean is decided here.
pub(crate) struct PteFacts(bindings::thp_collapse_pte);

impl PteFacts {
    /// Reads the PTE at `ptep`, which maps `addr` in `vma`.
    ///
    /// # Safety
    ///
    /// `vma` must be valid (its mm's mmap lock held) and `ptep` must point to a mapped entry
    /// of one of its page tables that is locked, or detached by us, so that the folio it maps
    /// stays valid while the facts are used.
    pub(crate) unsafe fn read(
        vma: *mut bindings::vm_area_struct,
        addr: usize,
        ptep: *mut bindings::pte_t,
    ) -> Self {
        let mut out = MaybeUninit::<bindings::thp_collapse_pte>::uninit();
        // SAFETY: By the function's safety requirements; `out` is valid for writes, and the
        // callee writes every field.
        unsafe {
            bindings::thp_collapse_read_pte(vma, addr, ptep, out.as_mut_ptr());
            Self(out.assume_init())
        }
    }

    fn has(&self, flag: bindings::thp_collapse_pte_flags) -> bool {
        self.0.flags & flag != 0
    }

    /// No page, or the shared zero page.
    pub(crate) fn none_or_zero(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_PTE_NONE_OR_ZERO)
    }

    /// The shared zero page (present, but nothing to copy).
    pub(crate) fn zero(&self) -> bool {
        self.none_or_zero() && !self.has(bindings::thp_collapse_pte_flags_THP_PTE_NONE)
    }

    /// A swap entry or another non-present entry, and whether it carries a uffd-wp marker.
    pub(crate) fn non_present(&self) -> Option<bool> {
        self.has(bindings::thp_collapse_pte_flags_THP_PTE_NON_PRESENT)
            .then(|| self.has(bindings::thp_collapse_pte_flags_THP_PTE_SWP_UFFD))
    }

    /// Present and userfaultfd write-protected.
    pub(crate) fn uffd_wp(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_PTE_UFFD_WP)
    }

    /// The normal page mapped and its folio, or `None` (special or ZONE_DEVICE mapping).
    pub(crate) fn page(&self) -> Option<(NonNull<bindings::page>, NonNull<bindings::folio>)> {
        Some((NonNull::new(self.0.page)?, NonNull::new(self.0.folio)?))
    }

    /// The pfn of the folio mapped, or [`trace::NO_PFN`].
    pub(crate) fn folio_pfn(&self) -> usize {
        self.0.folio_pfn
    }

    /// The number of pages of the folio mapped.
    pub(crate) fn folio_nr_pages(&self) -> usize {
        self.0.nr_pages
    }

    /// Whether the folio is a lazily freed one (MADV_FREE) that the PTE has not dirtied since:
    /// collapsing it would lose its freedom to be dropped.
    pub(crate) fn clean_lazyfree(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_LAZYFREE)
            && !self.has(bindings::thp_collapse_pte_flags_THP_PTE_DIRTY)
    }

    /// The folio is anonymous.
    pub(crate) fn anon(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_ANON)
    }

    /// Part of the folio may be mapped by another process.
    pub(crate) fn shared(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_SHARED)
    }

    /// The folio is on an LRU list.
    pub(crate) fn lru(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_LRU)
    }

    /// The folio was locked when read.
    pub(crate) fn locked(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_LOCKED)
    }

    /// The folio had more references than its mappings and swap cache explain (pins).
    pub(crate) fn extra_refs(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_EXTRA_REFS)
    }

    /// The folio has more than one page.
    pub(crate) fn large(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_LARGE)
    }

    /// Whether the page was referenced recently: the folio's or the PTE's young bit, or a
    /// secondary MMU's (asked only when the others say no).
    pub(crate) fn referenced(&self, mm: *mut bindings::mm_struct, addr: usize) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_YOUNG)
            || self.has(bindings::thp_collapse_pte_flags_THP_PTE_YOUNG)
            // SAFETY: `mm` is the mm whose page table was read; the notifier only tests.
            || unsafe { bindings::mmu_notifier_test_young(mm, addr) }
    }
}

/// Accounts entry `i` of the page table at `haddr`, whose facts are `facts`; `Err` stops the
/// scan with that outcome.
fn scan_one(
    mm: *mut bindings::mm_struct,
    facts: &PteFacts,
    (haddr, i): (usize, usize),
    droppable: bool,
    tally: &mut ScanTally,
) -> Result<(), Outcome> {
    let addr = haddr + i * PAGE_SIZE;
    if facts.none_or_zero() {
        return tally.none_or_zero();
    }
    if let Some(uffd) = facts.non_present() {
        return tally.not_present(uffd);
    }
    if facts.uffd_wp() {
        // Don't collapse over userfaultfd write protection: the huge PMD could raise faults
        // outside the registered range.
        return Err(Outcome::PteUffd);
    }
    if facts.page().is_none() {
        return Err(Outcome::PageNull);
    }
    if tally.skips_lazyfree() && !droppable && facts.clean_lazyfree() {
        return Err(Outcome::PageLazyfree);
    }
    if !facts.anon() {
        return Err(Outcome::PageAnon);
    }
    // A page counts as shared if any part of its folio is.
    if facts.shared() {
        tally.shared()?;
    }
    if !facts.lru() {
        return Err(Outcome::PageLru);
    }
    if facts.locked() {
        return Err(Outcome::PageLock);
    }
    // Racy, like upstream: pins come and go, and the isolation step checks again.
    if facts.extra_refs() {
        return Err(Outcome::PageCount);
    }
    let referenced = tally.wants_referenced() && facts.referenced(mm, addr);
    tally.occupy(i);
    tally.present(referenced);
    Ok(())
}

/// Allocates a folio of `order` (2 to the PMD order) for a collapse with `policy`, and
/// charges it to `mm`'s memory cgroup; dropping it frees and uncharges it.
///
/// Must be called without the mmap lock: it may enter direct reclaim and compaction. May
/// sleep. Upstream: `alloc_charge_folio()`.
pub(crate) fn alloc_charge(mm: &Mm, policy: AllocPolicy, order: u32) -> Result<NewFolio, Outcome> {
    let order = order.min(PMD_ORDER);
    let gfp = match policy {
        AllocPolicy::Reclaim => bindings::GFP_TRANSHUGE,
        AllocPolicy::Light => bindings::GFP_TRANSHUGE_LIGHT,
    };
    let Ok(folio) = NewFolio::alloc(gfp, order, None) else {
        count_collapse_event(
            order,
            bindings::vm_event_item_THP_COLLAPSE_ALLOC_FAILED,
            bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_ALLOC_FAILED,
        );
        return Err(Outcome::AllocHugePageFail);
    };
    count_collapse_event(
        order,
        bindings::vm_event_item_THP_COLLAPSE_ALLOC,
        bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_ALLOC,
    );
    if folio.charge(mm, gfp).is_err() {
        return Err(Outcome::CgroupChargeFail);
    }
    if order == PMD_ORDER {
        // SAFETY: `folio` is a charged, PMD-order folio.
        unsafe {
            bindings::count_memcg_folio_events(
                folio.as_ptr(),
                bindings::vm_event_item_THP_COLLAPSE_ALLOC,
                1,
            )
        };
    }
    // SAFETY: `folio` is valid and ours.
    if unsafe { bindings::folio_memcg_alloc_deferred(folio.as_ptr()) } != 0 {
        return Err(Outcome::AllocHugePageFail);
    }
    Ok(folio)
}

/// Counts a collapse event for a folio of `order`: in `/proc/vmstat` for the PMD order, and
/// in the per-size THP stats.
pub(crate) fn count_collapse_event(
    order: u32,
    vm_event: bindings::vm_event_item,
    mthp: bindings::mthp_stat_item,
) {
    // SAFETY: Per-CPU event counters; safe from any context.
    unsafe {
        if order == PMD_ORDER {
            bindings::count_vm_event(vm_event);
        }
        bindings::count_mthp_stat(order as i32, mthp);
    }
}

/// Counts a scan or isolation of a range for a folio of `order` that stopped because a limit
/// was exceeded (`thp_scan_exceed_*_pte` in `/proc/vmstat` for the PMD order, and the
/// per-size `collapse_exceed_*` stats); other outcomes count nothing.
pub(crate) fn count_exceeded(order: u32, outcome: Outcome) {
    let (vm_event, mthp) = match outcome {
        Outcome::ExceedNonePte => (
            bindings::vm_event_item_THP_SCAN_EXCEED_NONE_PTE,
            bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_EXCEED_NONE,
        ),
        Outcome::ExceedSwapPte => (
            bindings::vm_event_item_THP_SCAN_EXCEED_SWAP_PTE,
            bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_EXCEED_SWAP,
        ),
        Outcome::ExceedSharedPte => (
            bindings::vm_event_item_THP_SCAN_EXCEED_SHARED_PTE,
            bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_EXCEED_SHARED,
        ),
        _ => return,
    };
    count_collapse_event(order, vm_event, mthp);
}

/// The khugepaged tunables, read now.
pub(crate) fn khugepaged_tunables() -> Tunables {
    let mut t = bindings::collapse_tunables {
        max_ptes_none: 0,
        max_ptes_swap: 0,
        max_ptes_shared: 0,
        defrag: false,
    };
    // SAFETY: `t` is valid for writes.
    unsafe { bindings::khugepaged_collapse_tunables(&mut t) };
    Tunables {
        max_ptes_none: t.max_ptes_none,
        max_ptes_swap: t.max_ptes_swap,
        max_ptes_shared: t.max_ptes_shared,
        defrag: t.defrag,
    }
}

/// Whether `vma` is registered with userfaultfd (missing, minor or write-protect faults).
pub(crate) fn userfaultfd_armed(vma: &VmaRef) -> bool {
    // SAFETY: `vma` is valid and its lock is held (type invariant of `VmaRef`).
    unsafe { bindings::userfaultfd_armed(vma.as_ptr()) }
}

/// The mm a VMA belongs to.
pub(crate) fn vma_mm(vma: &VmaRef) -> &Mm {
    // SAFETY: `vm_mm` of a live VMA is a valid mm for at least as long as the VMA; it is
    // written once, at creation.
    unsafe { Mm::from_raw((*vma.as_ptr()).vm_mm) }
}

/// Whether `vma` maps private anonymous memory.
pub(crate) fn vma_is_anonymous(vma: &VmaRef) -> bool {
    // SAFETY: `vma` is valid and its lock is held (type invariant of `VmaRef`).
    unsafe { bindings::vma_is_anonymous(vma.as_ptr()) }
}

/// Whether a PMD-sized collapse is allowed in `vma` for `mode`, by flags, prctl and sysfs.
///
/// Upstream: `collapse_possible()` / `thp_vma_allowable_order()`.
pub(crate) fn pmd_collapse_allowed(vma: &VmaRef, mode: CollapseMode) -> bool {
    allowed_orders(vma, mode, 1 << PMD_ORDER) != 0
}

/// Which of `orders` (bit `n` for order `n`) a collapse in `vma` for `mode` may produce, by
/// flags, prctl and sysfs. Upstream: `thp_vma_allowable_orders()`.
pub(crate) fn allowed_orders(vma: &VmaRef, mode: CollapseMode, orders: u64) -> u64 {
    let tva = match mode {
        CollapseMode::Khugepaged => bindings::tva_type_TVA_KHUGEPAGED,
        CollapseMode::Madvise => bindings::tva_type_TVA_FORCED_COLLAPSE,
    };
    // SAFETY: `vma` is valid and its lock is held (type invariant of `VmaRef`).
    let allowed = unsafe {
        bindings::thp_vma_allowable_orders(vma.as_ptr(), vma.flags(), tva, orders as usize)
    };
    allowed as u64
}

/// Whether the PMD range at `addr` lies inside `vma` and is suitably aligned for a PMD mapping.
pub(crate) fn pmd_suitable(vma: &VmaRef, addr: usize) -> bool {
    // SAFETY: `vma` is valid and its lock is held (type invariant of `VmaRef`).
    unsafe { bindings::thp_vma_suitable_order(vma.as_ptr(), addr, PMD_ORDER as i32) }
}

/// Drains every CPU's LRU add batches, so that freshly faulted pages can be isolated.
///
/// May sleep.
pub(crate) fn lru_add_drain_all() {
    // SAFETY: Always safe to call from process context.
    unsafe { bindings::lru_add_drain_all() };
}

/// Gives the scheduler a chance to run something else. May sleep.
pub(crate) fn cond_resched() {
    // SAFETY: Called without spinlocks held, from process context.
    unsafe { bindings::cond_resched() };
}
