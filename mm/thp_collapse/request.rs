// SPDX-License-Identifier: GPL-2.0

//! One collapse request: the MADV_COLLAPSE range loop, and the per-PMD step that khugepaged
//! and MADV_COLLAPSE share.
//!
//! Upstream reference: `madvise_collapse()`, `collapse_single_pmd()` and
//! `hugepage_vma_revalidate()` in [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use super::{
    detach::{AnonVmaWrite, DetachedTable, IsolationList, MmapWrite},
    mode::{Caller, CollapseMode, PMD_ORDER},
    outcome::{Outcome, RangeTally},
    pmd::{self, MmapLocked, MmapRead, NewFolio, PmdState},
    scan::ScanTally,
    stats::STATS,
};
use kernel::{mm::virt::VmaRef, pr_notice_once, prelude::*, sync::aref::ARef};

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
/// collapsed, and returns its VMA.
///
/// Upstream: `hugepage_vma_revalidate()`.
fn revalidate<'g, G: MmapLocked>(
    guard: &'g G,
    addr: usize,
    mode: CollapseMode,
) -> Result<&'g VmaRef, Outcome> {
    if guard.exiting_or_thp_disabled() {
        return Err(Outcome::AnyProcess);
    }
    let vma = guard.find_vma(addr).ok_or(Outcome::VmaNull)?;
    if !pmd::pmd_suitable(vma, addr) {
        return Err(Outcome::AddressRange);
    }
    if !pmd::pmd_collapse_allowed(vma, mode) {
        return Err(Outcome::VmaCheck);
    }
    Ok(vma)
}

/// Reads the swapped-out pages of the anonymous PMD range at `haddr` back in, under the mmap
/// lock for read, after revalidating the range. Returns with no lock held.
fn swap_in(mm: &kernel::mm::Mm, haddr: usize, mode: CollapseMode) -> Result<(), Outcome> {
    let guard = MmapRead::lock(mm);
    let vma = revalidate(&guard, haddr, mode)?;
    if !pmd::vma_is_anonymous(vma) {
        return Err(Outcome::PageAnon);
    }
    guard.swap_in(haddr).map(drop)
}

/// Replaces the page table of the anonymous PMD range at `haddr` by a PMD mapping of `new`,
/// which the caller allocated and charged without the mmap lock.
///
/// Takes the mmap lock for write (revalidating the range), the anon_vma lock, detaches and
/// isolates, copies, and installs; any failure on the way puts everything back. Returns with
/// no lock held. Upstream: `collapse_huge_page()` after `alloc_charge_folio()`.
fn collapse_anon(mm: &kernel::mm::Mm, haddr: usize, mode: CollapseMode, new: NewFolio) -> Outcome {
    // Sleeping allocations come before the locks.
    let list = match IsolationList::new() {
        Ok(list) => list,
        Err(outcome) => return outcome,
    };
    let guard = MmapWrite::lock(mm);
    let vma = match revalidate(&guard, haddr, mode) {
        Ok(vma) => vma,
        Err(outcome) => return outcome,
    };
    // The range may have been unmapped and mapped again as a file while unlocked.
    if !pmd::vma_is_anonymous(vma) {
        return Outcome::PageAnon;
    }
    guard.exclude_vma_faults(vma);
    let pmd = match guard.pmd_table(haddr) {
        Ok(pmd) => pmd,
        Err(outcome) => return outcome,
    };
    let Some(anon) = AnonVmaWrite::lock(&guard, vma) else {
        return Outcome::PageAnon;
    };
    let mut table = match DetachedTable::detach(&guard, &anon, vma, pmd, haddr, list) {
        Ok(table) => table,
        Err(outcome) => return outcome,
    };
    let limits = mode.limits(
        &pmd::khugepaged_tunables(),
        PMD_ORDER,
        pmd::userfaultfd_armed(vma),
    );
    let outcome = table.isolate(mode, limits);
    if outcome != Outcome::Succeed {
        // Dropping `table` restores the page table and releases the isolated folios.
        return outcome;
    }
    // Every page is isolated and locked: rmap walkers cannot get at them any more.
    drop(anon);
    if let Err(outcome) = table.copy(&new) {
        return outcome;
    }
    table.install(new);
    Outcome::Succeed
}

/// Collapses the PMD range at `addr`, whose VMA the caller found or revalidated under `guard`.
///
/// Returns the outcome, the number of page-table entries looked at (khugepaged's scan budget),
/// and the state of the lock.
pub(crate) fn collapse_pmd<'a>(
    guard: MmapRead<'a>,
    addr: usize,
    caller: Caller,
) -> (Outcome, u32, Locked<'a>) {
    let mode = caller.mode();
    let tunables = pmd::khugepaged_tunables();
    let (outcome, scanned, swapped) = match guard.find_vma(addr) {
        None => (Outcome::VmaNull, 1, 0),
        // File and shmem collapse (page cache and page-table retraction) is not implemented in
        // Rust yet.
        Some(vma) if !pmd::vma_is_anonymous(vma) => (Outcome::NotImplemented, 1, 0),
        Some(vma) => match guard.pmd_state(addr) {
            PmdState::None => (Outcome::NoPteTable, 1, 0),
            PmdState::Huge => (Outcome::PmdMapped, 1, 0),
            PmdState::Table => {
                let uffd = pmd::userfaultfd_armed(vma);
                let limits = mode.limits(&tunables, PMD_ORDER, uffd);
                let mut tally = ScanTally::new(mode, limits);
                let (outcome, scanned) = pmd::scan_anon_pmd(&guard, vma, addr, &mut tally);
                (outcome, scanned, tally.swapped_count())
            }
        },
    };
    let (outcome, state) = match outcome {
        Outcome::Succeed => {
            // The huge folio is allocated without the mmap lock: it may reclaim and compact.
            let mm = guard.mm();
            drop(guard);
            let outcome = match NewFolio::alloc_charge(mm, mode.alloc_policy(&tunables)) {
                Err(outcome) => outcome,
                Ok(folio) if swapped > 0 => match swap_in(mm, addr, mode) {
                    Ok(()) => collapse_anon(mm, addr, mode, folio),
                    Err(outcome) => outcome,
                },
                Ok(folio) => collapse_anon(mm, addr, mode, folio),
            };
            (outcome, Locked::Dropped)
        }
        failed => (failed, Locked::Held(guard)),
    };
    if outcome == Outcome::NotImplemented {
        pr_notice_once!(
            "the Rust core does not implement this collapse yet ({:?}); select 'c' in \
             /sys/kernel/mm/transparent_hugepage/collapse/core\n",
            caller
        );
    }
    STATS.count(caller, outcome);
    (outcome, scanned, state)
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
    pmd::lru_add_drain_all();

    let mut tally = RangeTally::new(ranges);
    let mut history = LockHistory::Kept;
    let mut state = Locked::Held(guard);
    let mut i = 0;
    while i < tally.ranges() {
        let addr = hstart + i * PMD_SIZE;
        let guard = match state {
            Locked::Held(guard) => guard,
            Locked::Dropped => {
                pmd::cond_resched();
                let guard = MmapRead::lock(mm);
                history = LockHistory::Retaken;
                match revalidate(&guard, addr, mode) {
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
        let (outcome, _, next) = collapse_pmd(guard, addr, caller);
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
