// SPDX-License-Identifier: GPL-2.0

//! The read side of a collapse of anonymous memory: the scan of a PMD range and the swap-in of
//! its pages, under the mmap lock for read.
//!
//! C headers: [`include/linux/mm.h`](srctree/include/linux/mm.h),
//! [`mm/khugepaged.c`](srctree/mm/khugepaged.c)

use crate::{
    ffi::{self, trace, PteFacts, PteRead},
    outcome::Outcome,
    scan::ScanTally,
    vma::CollapseLocked,
    vocab::{Candidate, MmapRead, PMD_ORDER, PTES_PER_PMD},
};
use kernel::{
    mm::{
        mmap_lock::MmapLocked,
        pgtable::{PmdEntry, PteTableLocked, PteTableMapped, SwapInFault},
        virt::VmaRef,
        Mm,
    },
    page::PAGE_SIZE,
};

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
    let site = Site {
        mm: guard.mm(),
        vma,
        haddr: addr,
    };
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
                scan_one(&site, i, facts, tally).inspect_err(|_| {
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

/// The page table a scan walks: the PMD range at `haddr` of `vma`, a VMA of `mm`.
struct Site<'a> {
    mm: &'a Mm,
    vma: &'a VmaRef,
    haddr: usize,
}

/// Accounts entry `i` of the page table of `site`, whose facts are `facts`; `Err` stops the
/// scan with that outcome.
fn scan_one(
    site: &Site<'_>,
    i: usize,
    facts: &PteFacts,
    tally: &mut ScanTally,
) -> Result<(), Outcome> {
    let mm = site.mm;
    let addr = site.haddr + i * PAGE_SIZE;
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
    if tally.skips_lazyfree() && facts.clean_lazyfree() && !site.vma.is_droppable() {
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
