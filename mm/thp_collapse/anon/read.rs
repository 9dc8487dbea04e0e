// SPDX-License-Identifier: GPL-2.0

//! The read side of a collapse of anonymous memory: the scan of a PMD range and the swap-in of
//! its pages, under the mmap lock for read.
//!
//! C headers: [`include/linux/mm.h`](srctree/include/linux/mm.h),
//! [`mm/khugepaged.c`](srctree/mm/khugepaged.c)

use crate::{
    ffi::{self, trace, PteFacts, PteRead},
    outcome::Fail,
    scan::{EntryKind, InPlace, ScanTally, Step, VmaKind},
    vma::CollapseLocked,
    vocab::{Candidate, MmapRead, PteSpan, PMD_ORDER, PTES_PER_PMD},
};
use kernel::{
    mm::{
        mmap_lock::MmapLocked,
        pgtable::{PmdEntry, PmdState, PteTableLocked, PteTableMapped, SwapInFault},
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
/// had to release the lock gives [`Fail::PageLock`]. Upstream:
/// `__collapse_huge_page_swapin()`.
pub(crate) fn swap_in<'a>(
    guard: MmapRead<'a>,
    c: Candidate,
    referenced: u32,
) -> Result<MmapRead<'a>, Fail> {
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
        SwapIn::Failed(fail) => Err(fail),
        SwapIn::LockReleased => {
            // SAFETY: The fault released the mmap lock (`VM_FAULT_RETRY`).
            unsafe { guard.released() };
            // Most likely the folio lock could not be taken at once.
            Err(Fail::PageLock)
        }
    };
    let step = result.as_ref().map(drop).map_err(|&fail| fail);
    trace::swapin(mm, swapped_in, referenced, &step, c.order);
    result
}

/// The loop of [`swap_in`].
fn swap_in_locked(guard: &MmapRead<'_>, c: Candidate, swapped_in: &mut u32) -> SwapIn {
    let haddr = c.haddr;
    let Some(vma) = guard.find_vma(haddr) else {
        return SwapIn::Failed(Fail::VmaNull);
    };
    let pmd = match guard.pmd_table(haddr) {
        Ok(pmd) => pmd,
        Err(fail) => return SwapIn::Failed(fail),
    };
    // The table, mapped until a fault takes it over.
    let mut mapped: Option<PteTableMapped<'_>> = None;
    for i in c.first..(c.first + c.nr()).min(PTES_PER_PMD as usize) {
        let table = match mapped.take() {
            Some(table) => table,
            None => match PteTableMapped::map(pmd, haddr) {
                Some(table) => table,
                // Mapped with the PMD by another collapse meanwhile, as in the scan.
                None if guard.pmd_state(haddr) == PmdState::Huge => {
                    return SwapIn::Failed(Fail::PmdMapped)
                }
                None => return SwapIn::Failed(Fail::NoPteTable),
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
            ffi::count_exceeded(c.order, Fail::ExceedSwapPte);
            return SwapIn::Failed(Fail::ExceedSwapPte);
        }
        match table.swap_in(vma, entry) {
            SwapInFault::Done => *swapped_in += 1,
            SwapInFault::LockReleased => return SwapIn::LockReleased,
            SwapInFault::Failed => return SwapIn::Failed(Fail::Other),
        }
    }
    SwapIn::Done
}

/// How a swap-in loop ended.
enum SwapIn {
    /// Every swapped-out page is back.
    Done,
    /// A fault failed, or the range changed; the mmap lock is still held.
    Failed(Fail),
    /// A fault released the mmap lock.
    LockReleased,
}

/// Scans the entries `span` of the page table under the PMD range at `addr` of the anonymous
/// `vma`, feeding `tally`, and `in_place` if there is one.
///
/// Returns the verdict (`Ok` if the range is worth collapsing), how many
/// entries were looked at, and the pfn of the folio that stopped the scan (or
/// [`trace::NO_PFN`]). Upstream: `collapse_scan_pmd()`.
pub(crate) fn scan_anon_pmd(
    guard: &MmapRead<'_>,
    vma: &VmaRef,
    addr: usize,
    span: PteSpan,
    tally: &mut ScanTally,
    mut in_place: Option<&mut InPlace>,
) -> (Result<(), Fail>, u32, usize) {
    let Some(table) = pte_table_locked(guard, addr) else {
        // Another collapse of the range may have mapped it with the PMD since the caller
        // looked, under the mmap lock for read too (`super::switch_read_locked()`).
        let fail = match guard.pmd_state(addr) {
            PmdState::Huge => Fail::PmdMapped,
            PmdState::None | PmdState::Table => Fail::NoPteTable,
        };
        return (Err(fail), 1, trace::NO_PFN);
    };
    let site = Site {
        mm: guard.mm(),
        vma,
        haddr: addr,
    };
    let mut scanned = 0;
    let mut failed_pfn = trace::NO_PFN;
    let span = PteSpan {
        first: span.first,
        end: span.end.min(PTES_PER_PMD as usize),
    };
    // SAFETY: `table` was found in `vma` for the PMD range at `addr`, so its entry `span.first`
    // maps `addr + span.first * PAGE_SIZE`.
    let result = unsafe {
        ffi::for_each_run(
            vma,
            addr + span.first * PAGE_SIZE,
            &table,
            span.first,
            span.len(),
            PteRead::FOLIO_STATE | PteRead::heuristics_of(tally),
            |j, facts, run| {
                let i = span.first + j;
                if run > 1 {
                    return scan_run(&site, (i, run), facts, tally, &mut in_place, &mut scanned)
                        .inspect_err(|&(_, pfn)| failed_pfn = pfn)
                        .map_err(|(fail, _)| fail);
                }
                if let Some(p) = in_place.as_deref_mut() {
                    if !p.see(i, || facts.folio_block()) {
                        // No later entry can be in place.
                        in_place = None;
                    }
                }
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
        Err(fail) => {
            ffi::count_exceeded(PMD_ORDER, fail);
            (Err(fail), scanned, failed_pfn)
        }
    }
}

/// The page table a scan walks: the PMD range at `haddr` of `vma`, a VMA of `mm`.
struct Site<'a> {
    mm: &'a Mm,
    vma: &'a VmaRef,
    haddr: usize,
}

/// Accounts the `run` entries from entry `i` on of the page table of `site`, which map
/// consecutive pages of one large folio with `facts` (but for the page, see
/// `ffi::for_each_run()`), feeding `in_place` and counting them in `scanned` as [`scan_one`]
/// for each would; a plain run ([`PteFacts::plain_for_scan`]) at once. `Err` stops the scan
/// with that failure and the pfn of the folio.
#[inline(never)]
fn scan_run(
    site: &Site<'_>,
    (i, run): (usize, usize),
    facts: &PteFacts,
    tally: &mut ScanTally,
    in_place: &mut Option<&mut InPlace>,
    scanned: &mut u32,
) -> Result<(), (Fail, usize)> {
    if let Some(p) = in_place.as_deref_mut() {
        if !(0..run).all(|t| p.see(i + t, || facts.nth(t).folio_block())) {
            // No later entry can be in place.
            *in_place = None;
        }
    }
    if facts.plain_for_scan() && !tally.wants_referenced() {
        *scanned += run as u32;
        tally.occupy_run(i, run, facts.nid());
        return Ok(());
    }
    (0..run).try_for_each(|t| {
        *scanned += 1;
        scan_one(site, i + t, &facts.nth(t), tally).map_err(|fail| (fail, facts.folio_pfn()))
    })
}

/// Accounts entry `i` of the page table of `site`, whose facts are `facts`; `Err` stops the
/// scan with that failure.
#[inline(always)]
fn scan_one(
    site: &Site<'_>,
    i: usize,
    facts: &PteFacts,
    tally: &mut ScanTally,
) -> Result<(), Fail> {
    let mm = site.mm;
    let addr = site.haddr + i * PAGE_SIZE;
    if facts.plain_for_scan() {
        // Every check below would pass.
        tally.occupy(i);
        tally.present(|| facts.referenced(mm, addr));
        tally.on_node(facts.nid());
        return Ok(());
    }
    match tally.check_entry(facts, Step::Scan)? {
        EntryKind::Empty | EntryKind::Swapped => return Ok(()),
        EntryKind::Page => {}
    }
    tally.check_page(facts, VmaKind::of(site.vma))?;
    if !facts.lru() {
        return Err(Fail::PageLru);
    }
    if facts.locked() {
        return Err(Fail::PageLock);
    }
    // Racy, like upstream: pins come and go, and the isolation step checks again.
    if facts.extra_refs() {
        return Err(Fail::PageCount);
    }
    tally.occupy(i);
    tally.present(|| facts.referenced(mm, addr));
    tally.on_node(facts.nid());
    Ok(())
}
