// SPDX-License-Identifier: GPL-2.0

//! The read side of a collapse: what the collapse asks of a held mmap lock, the scan of a
//! PMD range, swap-in, and the allocation and charge of the new folio. The locks, page tables
//! and folios are guards of `kernel::mm`; what C is asked directly is in `ffi.rs`.
//!
//! C headers: [`include/linux/huge_mm.h`](srctree/include/linux/huge_mm.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h),
//! [`mm/khugepaged.c`](srctree/mm/khugepaged.c)

use super::{
    ffi::{self, trace, CollapseEvent, PteFacts, PteRead},
    mode::{AllocPolicy, CollapseMode, PMD_ORDER, PTES_PER_PMD},
    outcome::Outcome,
    request::Candidate,
    scan::ScanTally,
};
use kernel::{
    mm::{
        folio::{NewFolio, Nodes},
        mmap_lock::{MmapLocked, MmapReadLock},
        pgtable::{PmdEntry, PteTableLocked, PteTableMapped, SwapInFault},
        thp::TvaType,
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
        self.mm_exiting() || self.locked_mm().thp_disabled_completely()
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
                // Drops the LRU batch's extra reference on the pages just read in, which would
                // fail isolation.
                ffi::lru_add_drain();
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
    // The table, mapped until a fault takes it over.
    let mut mapped: Option<PteTableMapped<'_>> = None;
    for i in c.first..(c.first + c.nr()).min(PTES_PER_PMD as usize) {
        let table = match mapped.take() {
            Some(table) => table,
            None => match PteTableMapped::map(pmd, haddr) {
                Some(table) => table,
                None => return SwapIn::Failed(Outcome::NoPteTable),
            },
        };
        // Read once: the fault must start from the entry that was found non-present, which
        // may be present again by now (a migration entry a split has just replaced).
        let Some(entry) = table.non_present(i) else {
            mapped = Some(table);
            continue;
        };
        if c.order != PMD_ORDER {
            // Reading pages in could make a later scan collapse a larger folio here.
            ffi::count_exceeded(c.order, Outcome::ExceedSwapPte);
            return SwapIn::Failed(Outcome::ExceedSwapPte);
        }
        match table.swap_in(vma, entry) {
            SwapInFault::Done => *swapped_in += 1,
            SwapInFault::LockReleased => return SwapIn::LockReleased,
            SwapInFault::Failed => return SwapIn::Failed(Outcome::Fail),
        }
    }
    SwapIn::Done
}

/// How a swap-in loop ended.
enum SwapIn {
    /// Every swapped-out page is back.
    Done,
    /// A fault failed, or the range changed; the mmap lock is still held.
    Failed(Outcome),
    /// A fault released the mmap lock.
    LockReleased,
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
    let mm = guard.mm();
    let droppable = vma.is_droppable();
    let mut scanned = 0;
    let mut failed_pfn = trace::NO_PFN;
    // SAFETY: The `PTES_PER_PMD` entries of `table` are mapped and locked, so they and what
    // they map are stable; `vma` is the VMA the table was found in.
    let result = unsafe {
        ffi::for_each_pte(
            vma,
            addr,
            table.entry(0),
            PTES_PER_PMD as usize,
            PteRead {
                folio_state: true,
                heuristics: tally.uses_heuristics(),
            },
            |i, facts| {
                scanned += 1;
                scan_one(mm, facts, (addr, i), droppable, tally).inspect_err(|_| {
                    failed_pfn = facts.folio_pfn();
                })
            },
        )
    };
    drop(table);
    match result {
        Ok(()) => (tally.finish(), scanned, trace::NO_PFN),
        Err(outcome) => {
            ffi::count_exceeded(PMD_ORDER, outcome);
            (outcome, scanned, failed_pfn)
        }
    }
}

/// Accounts entry `i` of the page table at `haddr`, whose facts are `facts`; `Err` stops the
/// scan with that outcome.
fn scan_one(
    mm: &Mm,
    facts: &PteFacts,
    (haddr, i): (usize, usize),
    droppable: bool,
    tally: &mut ScanTally,
) -> Result<(), Outcome> {
    let addr = haddr + i * PAGE_SIZE;
    if facts.plain_for_scan() {
        // Every check below would pass.
        let referenced = tally.wants_referenced() && facts.referenced(mm, addr);
        tally.occupy(i);
        tally.present(referenced);
        tally.on_node(facts.nid());
        return Ok(());
    }
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
    tally.on_node(facts.nid());
    Ok(())
}

/// Allocates a folio of `order` (2 to the PMD order) for a collapse with `policy`, and
/// charges it to `mm`'s memory cgroup; dropping it frees and uncharges it. It comes from
/// `nodes` (where the scan found most of the range's pages).
///
/// Must be called without the mmap lock: it may enter direct reclaim and compaction. May
/// sleep. Upstream: `alloc_charge_folio()`.
pub(crate) fn alloc_charge(
    mm: &Mm,
    policy: AllocPolicy,
    order: u32,
    nodes: &Nodes,
) -> Result<NewFolio, Outcome> {
    let order = order.min(PMD_ORDER);
    let gfp = ffi::collapse_gfp(policy);
    let Ok(folio) = NewFolio::alloc_on(gfp, order, nodes) else {
        ffi::count_collapse_event(order, CollapseEvent::AllocFailed);
        return Err(Outcome::AllocHugePageFail);
    };
    ffi::count_collapse_event(order, CollapseEvent::Alloc);
    if folio.charge(mm, gfp).is_err() {
        return Err(Outcome::CgroupChargeFail);
    }
    if !ffi::memcg_account_collapse_alloc(&folio) {
        return Err(Outcome::AllocHugePageFail);
    }
    Ok(folio)
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
    let who = match mode {
        CollapseMode::Khugepaged => TvaType::Khugepaged,
        CollapseMode::Madvise => TvaType::ForcedCollapse,
    };
    vma.thp_allowable_orders(who, orders)
}
