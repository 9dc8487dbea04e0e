// SPDX-License-Identifier: GPL-2.0

//! One collapse request: the MADV_COLLAPSE range loop, and the per-PMD step that khugepaged
//! and MADV_COLLAPSE share.
//!
//! Upstream reference: `madvise_collapse()`, `collapse_single_pmd()` and
//! `hugepage_vma_revalidate()` in [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use super::{
    detach::{AnonVmaWrite, DetachedTable, IsolationList, MmapWrite, RequestList, SPARE_LIST},
    ffi::{self, trace},
    file,
    mode::{Caller, CollapseMode, Tunables, PMD_ORDER, PTES_PER_PMD},
    outcome::{Outcome, RangeTally},
    plan::{self, Occupied, ALL_ANON_ORDERS},
    pmd::{self, CollapseLocked, MmapRead, PmdState},
    scan::ScanTally,
    stats::STATS,
};
use kernel::{
    mm::{
        folio::{NewFolio, NodeLoad, Nodes},
        mmap_lock::MmapLocked,
        virt::VmaRef,
    },
    pr_notice_once,
    prelude::*,
    sync::aref::ARef,
};

/// The tunables that `mode` honours: khugepaged's sysfs knobs, read now, for khugepaged;
/// MADV_COLLAPSE ignores them (and does not pay for reading them on every PMD).
fn tunables_for(mode: CollapseMode) -> Tunables {
    match mode {
        CollapseMode::Khugepaged => ffi::khugepaged_tunables(),
        CollapseMode::Madvise => Tunables::DEFAULTS,
    }
}

/// Size of the range one PMD maps.
pub(crate) const PMD_SIZE: usize = 1 << (PMD_ORDER + kernel::page::PAGE_SHIFT as u32);

/// Where the mmap lock stands after a step that may have dropped it.
pub(crate) enum Locked<'a> {
    /// Still held, never released in between.
    Held(MmapRead<'a>),
    /// Released; VMAs seen before are stale.
    Dropped,
}

/// Whether the mmap lock was released (and taken again) during a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockHistory {
    /// Held throughout.
    Kept,
    /// Released at least once; the caller must look its VMAs up again.
    Retaken,
}

/// The end of a MADV_COLLAPSE request.
pub(crate) struct MadviseDone<'a> {
    /// What the request reports to user space.
    pub(crate) result: Result,
    /// The mmap lock, held again, handed back to the caller.
    pub(crate) guard: MmapRead<'a>,
    /// Whether the lock was released in between.
    pub(crate) history: LockHistory,
}

/// The PMD-aligned ranges inside `[start, end)`, as (first address, count).
pub(crate) fn pmd_ranges(start: usize, end: usize) -> (usize, usize) {
    let hend = end & !(PMD_SIZE - 1);
    match start.checked_next_multiple_of(PMD_SIZE) {
        Some(hstart) if hstart < hend => (hstart, (hend - hstart) / PMD_SIZE),
        _ => (start, 0),
    }
}

/// Checks, after the mmap lock was taken again, that the PMD range at `addr` can still be
/// collapsed into a folio of `order`, and returns its VMA.
///
/// Upstream: `hugepage_vma_revalidate()`.
fn revalidate<'g, G: CollapseLocked>(
    guard: &'g G,
    addr: usize,
    mode: CollapseMode,
    order: u32,
) -> Result<&'g VmaRef, Outcome> {
    if guard.exiting_or_thp_disabled() {
        return Err(Outcome::AnyProcess);
    }
    let vma = guard.find_vma(addr).ok_or(Outcome::VmaNull)?;
    // The whole PMD range must be inside the VMA, whatever the order: another VMA sharing the
    // page table could race with us.
    if !vma.thp_suitable_order(addr, PMD_ORDER) {
        return Err(Outcome::AddressRange);
    }
    if pmd::allowed_orders(vma, mode, 1 << order) == 0 {
        return Err(Outcome::VmaCheck);
    }
    Ok(vma)
}

/// One candidate of a collapse: `1 << order` PTEs from entry `first` of the page table of the
/// PMD range at `haddr`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    /// The start of the PMD range.
    pub(crate) haddr: usize,
    /// The first entry.
    pub(crate) first: usize,
    /// The folio order.
    pub(crate) order: u32,
}

impl Candidate {
    /// The number of PTEs it covers.
    pub(crate) fn nr(self) -> usize {
        1 << self.order
    }
}

/// Reads the swapped-out pages of candidate `c` back in, under the mmap lock for read, after
/// revalidating the range. Returns with no lock held.
fn swap_in(
    mm: &kernel::mm::Mm,
    c: Candidate,
    mode: CollapseMode,
    referenced: u32,
) -> Result<(), Outcome> {
    let guard = MmapRead::lock(mm);
    let vma = revalidate(&guard, c.haddr, mode, c.order)?;
    if !vma.is_anonymous() {
        return Err(Outcome::PageAnon);
    }
    pmd::swap_in(guard, c, referenced).map(drop)
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
    mut new: NewFolio,
    lists: &mut RequestList,
) -> Outcome {
    // Sleeping allocations come before the locks.
    let list = match lists.get(IsolationList::new) {
        Ok(list) => list,
        Err(outcome) => return outcome,
    };
    let guard = MmapWrite::lock(mm);
    let vma = match revalidate(&guard, c.haddr, mode, c.order) {
        Ok(vma) => vma,
        Err(outcome) => return outcome,
    };
    // The range may have been unmapped and mapped again as a file while unlocked.
    if !vma.is_anonymous() {
        return Outcome::PageAnon;
    }
    if guard.exclude_vma_faults(vma).is_err() {
        return Outcome::VmaCheck;
    }
    let pmd = match guard.pmd_table(c.haddr) {
        Ok(pmd) => pmd,
        Err(outcome) => return outcome,
    };
    let Some(anon) = AnonVmaWrite::lock(&guard, vma) else {
        return Outcome::PageAnon;
    };
    let mut table = match DetachedTable::detach(&guard, &anon, vma, pmd, c, list) {
        Ok(table) => table,
        Err(outcome) => return outcome,
    };
    let limits = mode.limits(&tunables_for(mode), c.order, vma.userfaultfd_armed());
    let outcome = table.isolate(mode, limits);
    if outcome != Outcome::Succeed {
        // Dropping `table` restores the page table and releases the isolated folios.
        return outcome;
    }
    if c.order == PMD_ORDER {
        // Every page is isolated and locked: rmap walkers cannot get at them any more. For a
        // smaller order the other PTEs of the table still map pages that rmap walkers may
        // look for while the table is detached, so the lock stays until the end.
        drop(anon);
    }
    if let Err(outcome) = table.copy(&mut new) {
        return outcome;
    }
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
) -> Outcome {
    let outcome = (|| {
        // The folio is allocated without the mmap lock: it may reclaim and compact.
        let folio = pmd::alloc_charge(mm, mode.alloc_policy(tunables), c.order, &s.nodes)?;
        if s.swapped > 0 {
            swap_in(mm, c, mode, s.referenced)?;
        }
        Ok(collapse_anon(mm, c, mode, folio, lists))
    })()
    .unwrap_or_else(|outcome| outcome);
    trace::collapse(mm, outcome, c.order);
    outcome
}

/// What a scan found, for the collapse that follows it.
struct Scanned {
    outcome: Outcome,
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
    let done = |outcome, traced| Scanned {
        outcome,
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
        return done(Outcome::VmaNull, false);
    };
    // File and shmem memory take another path (`file::collapse_pmd()`).
    if !vma.is_anonymous() {
        return done(Outcome::VmaCheck, false);
    }
    match guard.pmd_state(addr) {
        PmdState::None => return done(Outcome::NoPteTable, true),
        PmdState::Huge => return done(Outcome::PmdMapped, true),
        PmdState::Table => {}
    }
    // khugepaged also collapses anonymous memory into smaller (mTHP) folios where enabled.
    let enabled = match mode {
        CollapseMode::Khugepaged => pmd::allowed_orders(vma, mode, ALL_ANON_ORDERS),
        CollapseMode::Madvise => 1 << PMD_ORDER,
    };
    let mut limits = mode.limits(t, PMD_ORDER, vma.userfaultfd_armed());
    if enabled != 1 << PMD_ORDER {
        // Look at every PTE: the plan decides per order how many may be empty.
        limits.max_none = PTES_PER_PMD - 1;
    }
    let mut tally = ScanTally::new(mode, limits);
    let (outcome, scanned, failed_pfn) = pmd::scan_anon_pmd(guard, vma, addr, &mut tally);
    Scanned {
        outcome,
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

/// Collapses the PMD range at `addr`, whose VMA the caller found or revalidated under `guard`.
///
/// Returns the outcome, the number of page-table entries looked at (khugepaged's scan budget),
/// and the state of the lock. `lists` is the isolation list of the request, allocated at its
/// first collapse.
pub(crate) fn collapse_pmd<'a>(
    guard: MmapRead<'a>,
    addr: usize,
    caller: Caller,
    lists: &mut RequestList,
) -> (Outcome, u32, Locked<'a>) {
    let mode = caller.mode();
    let tunables = tunables_for(mode);
    let file = guard
        .find_vma(addr)
        .filter(|vma| vma.start() <= addr && !vma.is_anonymous())
        .and_then(|vma| Some((ARef::from(vma.file()?), vma.linear_page_index(addr))));
    if let Some((file, pgoff)) = file {
        let (outcome, scanned, state) =
            file::collapse_pmd(guard, file, addr, pgoff, mode, &tunables);
        STATS.count(caller, outcome);
        return (outcome, scanned, state);
    }
    let s = scan(&guard, addr, mode, &tunables);
    let mm = guard.mm();
    let (outcome, state) = match s.outcome {
        Outcome::Succeed => {
            drop(guard);
            let outcome = plan::collapse_planned(
                &s.occupied,
                s.enabled,
                s.swapped,
                |order| mode.limits(&tunables, order, false).max_none,
                |first, order| {
                    let c = Candidate {
                        haddr: addr,
                        first,
                        order,
                    };
                    collapse_candidate(mm, c, mode, &tunables, &s, lists)
                },
            );
            (outcome, Locked::Dropped)
        }
        failed => (failed, Locked::Held(guard)),
    };
    if s.traced {
        trace::scan_pmd(
            mm,
            s.failed_pfn,
            s.referenced,
            s.none_or_zero,
            outcome,
            s.swapped,
        );
    }
    if outcome == Outcome::NotImplemented {
        pr_notice_once!(
            "the Rust core does not implement this collapse yet ({:?}); select 'c' in \
             /sys/kernel/mm/transparent_hugepage/collapse/core\n",
            caller
        );
    }
    STATS.count(caller, outcome);
    (outcome, s.scanned, state)
}

/// MADV_COLLAPSE of `[start, end)`, a range inside the VMA that contains `start`.
///
/// Succeeds when every PMD-aligned range inside `[start, end)` is PMD-mapped on return
/// (already-huge ranges count); otherwise fails with the errno of the last failure. May sleep.
pub(crate) fn madvise<'a>(
    guard: MmapRead<'a>,
    start: usize,
    end: usize,
    caller: Caller,
) -> MadviseDone<'a> {
    let mode = caller.mode();
    let done = |result, guard, history| MadviseDone {
        result,
        guard,
        history,
    };

    let allowed = guard
        .find_vma(start)
        .is_some_and(|vma| pmd::pmd_collapse_allowed(vma, mode));
    if !allowed {
        return done(Err(EINVAL), guard, LockHistory::Kept);
    }
    let (hstart, ranges) = pmd_ranges(start, end);
    if ranges == 0 {
        return done(Ok(()), guard, LockHistory::Kept);
    }

    let mm = guard.mm();
    // Keep the mm_struct itself alive across lock drops, as upstream does.
    let _grab: ARef<kernel::mm::Mm> = ARef::from(mm);
    ffi::lru_add_drain_all();

    // Allocated at the first collapse, and reused by the next ones.
    let mut lists = RequestList::new(&SPARE_LIST);
    let mut tally = RangeTally::new(ranges);
    let mut history = LockHistory::Kept;
    let mut state = Locked::Held(guard);
    let mut i = 0;
    while i < tally.ranges() {
        let addr = hstart + i * PMD_SIZE;
        let guard = match state {
            Locked::Held(guard) => guard,
            Locked::Dropped => {
                ffi::cond_resched();
                let guard = MmapRead::lock(mm);
                history = LockHistory::Retaken;
                match revalidate(&guard, addr, mode, PMD_ORDER) {
                    Ok(vma) => {
                        // The VMA may have shrunk: only ranges it still covers count.
                        let hend = vma.end() & !(PMD_SIZE - 1);
                        tally.clamp_ranges(hend.saturating_sub(hstart) / PMD_SIZE);
                    }
                    Err(outcome) => {
                        STATS.count(caller, outcome);
                        tally.abort(outcome);
                        state = Locked::Held(guard);
                        break;
                    }
                }
                guard
            }
        };
        let (outcome, _, next) = collapse_pmd(guard, addr, caller, &mut lists);
        state = next;
        if !tally.record(outcome) {
            break;
        }
        i += 1;
    }

    let guard = match state {
        Locked::Held(guard) => guard,
        Locked::Dropped => {
            history = LockHistory::Retaken;
            MmapRead::lock(mm)
        }
    };
    done(tally.finish(), guard, history)
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kunit_tests(thp_collapse_range)]
mod tests {
    use super::*;

    const MB2: usize = PMD_SIZE;

    #[test]
    fn pmd_ranges_align_inwards() {
        assert_eq!(pmd_ranges(0, 4 * MB2), (0, 4));
        assert_eq!(pmd_ranges(1, 4 * MB2), (MB2, 3));
        assert_eq!(pmd_ranges(MB2, 3 * MB2 - 1), (MB2, 1));
        assert_eq!(pmd_ranges(MB2 + 4096, 2 * MB2 + 4096).1, 0);
        assert_eq!(pmd_ranges(0, MB2 - 1).1, 0);
        assert_eq!(pmd_ranges(usize::MAX - 4095, usize::MAX).1, 0);
    }
}
