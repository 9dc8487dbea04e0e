// SPDX-License-Identifier: GPL-2.0

//! The anonymous-memory backend: the scan of a PMD range (`read.rs`), the planned collapse of
//! its candidates, and for each the allocation, swap-in, detach, isolation, copy and install
//! (`detach.rs`).
//!
//! Upstream reference: `collapse_scan_pmd()`, `collapse_huge_page()` and their helpers in
//! [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

#[path = "detach.rs"]
mod detach;
#[path = "read.rs"]
mod read;

pub(crate) use detach::RequestList;

use crate::{
    ffi::trace,
    new_folio,
    outcome::{Attempt, Fail},
    plan::{self, Occupied, ALL_ANON_ORDERS},
    scan::ScanTally,
    vma::{self, CollapseLocked},
    vocab::{
        Candidate, CollapseMode, Effort, Locked, MmapRead, Tunables, Userfault, PMD_ORDER,
        PTES_PER_PMD,
    },
};
use detach::{AnonVmaWrite, DetachedTable, IsolationList, MmapWrite};
use kernel::mm::{
    folio::{NewFolio, NodeLoad, Nodes},
    mmap_lock::MmapLocked,
    pgtable::PmdState,
};

/// Collapses the PMD range at `addr` of an anonymous VMA that the caller found under `guard`,
/// with the `tunables` of this step.
///
/// Returns the result, the number of page-table entries looked at (khugepaged's scan budget),
/// and the state of the lock. `lists` is the isolation list of the request, allocated at its
/// first collapse.
pub(crate) fn collapse_pmd<'a>(
    guard: MmapRead<'a>,
    addr: usize,
    mode: CollapseMode,
    tunables: &Tunables,
    lists: &mut RequestList,
) -> (Attempt, u32, Locked<'a>) {
    let s = scan(&guard, addr, mode, tunables);
    let mm = guard.mm();
    let (attempt, state) = match s.verdict {
        Ok(()) => {
            drop(guard);
            let attempt = plan::collapse_planned(
                &s.occupied,
                s.enabled,
                s.swapped,
                |order| mode.limits(tunables, order, Userfault::Unarmed).max_none,
                |first, order| {
                    let c = Candidate {
                        haddr: addr,
                        first,
                        order,
                    };
                    collapse_candidate(mm, c, mode, tunables, &s, lists)
                },
            );
            (attempt, Locked::Dropped)
        }
        Err(fail) => (Err(fail), Locked::Held(guard)),
    };
    if s.traced {
        trace::scan_pmd(
            mm,
            s.failed_pfn,
            s.referenced,
            s.none_or_zero,
            &attempt,
            s.swapped,
        );
    }
    (attempt, s.scanned, state)
}

/// Reads the swapped-out pages of candidate `c` back in, under the mmap lock for read, after
/// revalidating the range. Returns with no lock held.
fn swap_in(
    mm: &kernel::mm::Mm,
    c: Candidate,
    mode: CollapseMode,
    referenced: u32,
) -> Result<(), Fail> {
    let guard = MmapRead::lock(mm);
    let vma = vma::revalidate(&guard, c.haddr, mode, c.order)?;
    if !vma.is_anonymous() {
        return Err(Fail::PageAnon);
    }
    read::swap_in(guard, c, referenced).map(drop)
}

/// Replaces the PTEs of candidate `c` by a mapping of `new`, a folio of its order that the
/// caller allocated and charged without the mmap lock: with the PMD for the PMD order, with
/// PTEs of the new folio otherwise.
///
/// Takes the mmap lock for write (revalidating the range), the anon_vma lock, detaches and
/// isolates, copies, and installs; any failure on the way puts everything back. Returns with
/// no lock held. Upstream: `collapse_huge_page()` after `alloc_charge_folio()`.
fn collapse_anon(
    mm: &kernel::mm::Mm,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    mut new: NewFolio,
    lists: &mut RequestList,
) -> Attempt {
    // Sleeping allocations come before the locks.
    let list = lists.get(IsolationList::new)?;
    let guard = MmapWrite::lock(mm);
    let vma = vma::revalidate(&guard, c.haddr, mode, c.order)?;
    // The range may have been unmapped and mapped again as a file while unlocked.
    if !vma.is_anonymous() {
        return Err(Fail::PageAnon);
    }
    if guard.exclude_vma_faults(vma).is_err() {
        return Err(Fail::VmaCheck);
    }
    let pmd = guard.pmd_table(c.haddr)?;
    let anon = AnonVmaWrite::lock(&guard, vma).ok_or(Fail::PageAnon)?;
    let mut table = DetachedTable::detach(&guard, anon, vma, pmd, c, list)?;
    let limits = mode.limits(tunables, c.order, Userfault::of(vma));
    // On failure, dropping `table` restores the page table, releases the isolated folios and
    // unlocks the anon_vma.
    table.isolate(mode, limits)?;
    table.copy(&mut new)?;
    table.install(new)
}

/// Allocates, swaps in and collapses one candidate, of a range whose scan `s` saw. Returns
/// with no lock held. Upstream: `collapse_huge_page()`.
fn collapse_candidate(
    mm: &kernel::mm::Mm,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    s: &Scanned,
    lists: &mut RequestList,
) -> Attempt {
    let attempt = (|| {
        // The folio is allocated without the mmap lock: it may reclaim and compact.
        let folio = new_folio::alloc_charge(mm, mode.alloc_policy(tunables), c.order, &s.nodes)?;
        if s.swapped > 0 {
            // A swap-in waits for I/O.
            if mode.effort() == Effort::Light {
                return Err(Fail::WouldBlock);
            }
            swap_in(mm, c, mode, s.referenced)?;
        }
        collapse_anon(mm, c, mode, tunables, folio, lists)
    })();
    trace::collapse(mm, &attempt, c.order);
    attempt
}

/// What a scan found, for the collapse that follows it.
struct Scanned {
    /// `Ok` if the range is worth collapsing.
    verdict: Result<(), Fail>,
    scanned: u32,
    swapped: u32,
    referenced: u32,
    none_or_zero: u32,
    /// The folio the scan stopped at, or [`trace::NO_PFN`].
    failed_pfn: usize,
    /// Whether the scan of the page table ran (and so upstream's tracepoint fires).
    traced: bool,
    occupied: Occupied,
    enabled: u64,
    /// Where the new folio should come from (where most of the pages are).
    nodes: Nodes,
}

/// Scans the PMD range at `addr` under `guard`.
fn scan(guard: &MmapRead<'_>, addr: usize, mode: CollapseMode, t: &Tunables) -> Scanned {
    let done = |fail, traced| Scanned {
        verdict: Err(fail),
        scanned: 1,
        swapped: 0,
        referenced: 0,
        none_or_zero: 0,
        failed_pfn: trace::NO_PFN,
        traced,
        occupied: Occupied::EMPTY,
        enabled: 0,
        nodes: NodeLoad::new().target(),
    };
    let Some(vma) = guard.find_vma(addr) else {
        return done(Fail::VmaNull, false);
    };
    match guard.pmd_state(addr) {
        PmdState::None => return done(Fail::NoPteTable, true),
        PmdState::Huge => return done(Fail::PmdMapped, true),
        PmdState::Table => {}
    }
    // khugepaged also collapses anonymous memory into smaller (mTHP) folios where enabled.
    let enabled = match mode {
        CollapseMode::Khugepaged => vma::allowed_orders(vma, mode, ALL_ANON_ORDERS),
        CollapseMode::Madvise(_) => 1 << PMD_ORDER,
    };
    let mut limits = mode.limits(t, PMD_ORDER, Userfault::of(vma));
    if enabled != 1 << PMD_ORDER {
        // Look at every PTE: the plan decides per order how many may be empty.
        limits.max_none = PTES_PER_PMD - 1;
    }
    let mut tally = ScanTally::new(mode, limits);
    let (verdict, scanned, failed_pfn) = read::scan_anon_pmd(guard, vma, addr, &mut tally);
    Scanned {
        verdict,
        scanned,
        swapped: tally.swapped_count(),
        referenced: tally.referenced_count(),
        none_or_zero: tally.none_or_zero_count(),
        failed_pfn,
        traced: true,
        occupied: tally.occupied().clone(),
        enabled,
        nodes: tally.target_nodes(),
    }
}
