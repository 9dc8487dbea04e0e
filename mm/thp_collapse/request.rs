// SPDX-License-Identifier: GPL-2.0

//! One collapse request: the MADV_COLLAPSE range loop, and the per-PMD step that khugepaged
//! and MADV_COLLAPSE share.
//!
//! Upstream reference: `madvise_collapse()`, `collapse_single_pmd()` and
//! `hugepage_vma_revalidate()` in [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use crate::{
    anon::{self, RequestList},
    ffi, file,
    outcome::{Attempt, Fail, RangeTally},
    stats::STATS,
    vma,
    vocab::{
        Caller, CollapseMode, Effort, LockHistory, Locked, MmapRead, PteLimits, RequestFlags,
        Tunables, PMD_ORDER, PMD_SIZE,
    },
};
use kernel::{fs::File, mm::mmap_lock::MmapLocked, prelude::*, sync::aref::ARef};

/// The tunables that `mode` honours: khugepaged's sysfs knobs, read now, for khugepaged and
/// for MADV_COLLAPSE with `MADV_F_COLLAPSE_LIMITS`; MADV_COLLAPSE otherwise ignores them (and
/// does not pay for reading them on every PMD).
fn tunables_for(mode: CollapseMode) -> Tunables {
    match mode {
        CollapseMode::Khugepaged
        | CollapseMode::Madvise(RequestFlags {
            limits: PteLimits::Khugepaged,
            ..
        }) => ffi::khugepaged_tunables(),
        CollapseMode::Madvise(_) => Tunables::DEFAULTS,
    }
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

/// The memory a PMD range maps, which decides the backend that collapses it.
enum Memory {
    /// Anonymous memory: `anon::collapse_pmd()`.
    Anon,
    /// Shmem or a file: `file::collapse_pmd()`.
    File {
        /// The file.
        file: ARef<File>,
        /// The index of the page at the start of the range.
        pgoff: usize,
    },
}

/// The memory the VMA covering `addr` maps, or why no backend can collapse it.
fn memory_at(guard: &MmapRead<'_>, addr: usize) -> Result<Memory, Fail> {
    let vma = guard.find_vma(addr).ok_or(Fail::VmaNull)?;
    if vma.is_anonymous() {
        return Ok(Memory::Anon);
    }
    match vma.file() {
        Some(file) if vma.start() <= addr => Ok(Memory::File {
            file: ARef::from(file),
            pgoff: vma.linear_page_index(addr),
        }),
        _ => Err(Fail::VmaCheck),
    }
}

/// Collapses the PMD range at `addr`, whose VMA the caller found or revalidated under `guard`,
/// for a request of `caller` with `flags`.
///
/// Returns the result, the number of page-table entries looked at (khugepaged's scan budget),
/// and the state of the lock. `lists` is the isolation list of the request, allocated at its
/// first collapse.
pub(crate) fn collapse_pmd<'a>(
    guard: MmapRead<'a>,
    addr: usize,
    caller: Caller,
    flags: RequestFlags,
    lists: &mut RequestList,
) -> (Attempt, u32, Locked<'a>) {
    let mode = caller.mode(flags);
    // Read once for the whole step, whatever it takes.
    let tunables = tunables_for(mode);
    let (attempt, scanned, state) = match memory_at(&guard, addr) {
        Ok(Memory::Anon) => anon::collapse_pmd(guard, addr, mode, &tunables, lists),
        Ok(Memory::File { file, pgoff }) => {
            file::collapse_pmd(guard, file, addr, pgoff, mode, &tunables)
        }
        Err(fail) => (Err(fail), 1, Locked::Held(guard)),
    };
    STATS.count(caller, &attempt);
    (attempt, scanned, state)
}

/// MADV_COLLAPSE of `[start, end)`, a range inside the VMA that contains `start`, with the
/// process_madvise() `flags` of the request ([`RequestFlags::NONE`] for madvise()).
///
/// Succeeds when every PMD-aligned range inside `[start, end)` is PMD-mapped on return
/// (already-huge ranges count); otherwise fails with the errno of the last failure. May sleep.
pub(crate) fn madvise<'a>(
    guard: MmapRead<'a>,
    start: usize,
    end: usize,
    caller: Caller,
    flags: RequestFlags,
) -> MadviseDone<'a> {
    let mode = caller.mode(flags);
    let done = |result, guard, history| MadviseDone {
        result,
        guard,
        history,
    };

    let allowed = guard
        .find_vma(start)
        .is_some_and(|vma| vma::pmd_collapse_allowed(vma, mode));
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
    match mode.effort() {
        Effort::Full => ffi::lru_add_drain_all(),
        // Draining other CPUs waits for work on each of them: only this one's batches.
        Effort::Light => ffi::lru_add_drain(),
    }

    // Allocated at the first collapse, and reused by the next ones.
    let mut lists = RequestList::for_request();
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
                match vma::revalidate(&guard, addr, mode, PMD_ORDER) {
                    Ok(vma) => {
                        // The VMA may have shrunk: only ranges it still covers count.
                        let hend = vma.end() & !(PMD_SIZE - 1);
                        tally.clamp_ranges(hend.saturating_sub(hstart) / PMD_SIZE);
                    }
                    Err(fail) => {
                        STATS.count(caller, &fail);
                        tally.abort(fail);
                        state = Locked::Held(guard);
                        break;
                    }
                }
                guard
            }
        };
        let (attempt, _, next) = collapse_pmd(guard, addr, caller, flags, &mut lists);
        state = next;
        if !tally.record(attempt) {
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
