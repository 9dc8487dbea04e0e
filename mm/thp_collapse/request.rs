// SPDX-License-Identifier: GPL-2.0

//! One collapse request: the MADV_COLLAPSE range loop, and the per-PMD step that khugepaged
//! and MADV_COLLAPSE share.
//!
//! Upstream reference: `madvise_collapse()`, `collapse_single_pmd()` and
//! `hugepage_vma_revalidate()` in [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use crate::{
    anon::{self, RequestState},
    ffi, file,
    outcome::{Attempt, Fail, RangeTally},
    stats::STATS,
    vma,
    vocab::{
        Caller, CollapseMode, Effort, LockHistory, Locked, MmapRead, PteLimits, PteSpan,
        RequestFlags, Tunables, PMD_ORDER, PMD_SIZE,
    },
};
use kernel::{
    fs::File,
    mm::mmap_lock::MmapLocked,
    prelude::*,
    sync::aref::ARef,
    time::{Instant, Monotonic},
};

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

/// The work of a MADV_COLLAPSE of `[start, end)` to folios of `order`: the naturally aligned
/// blocks of that size inside it, as `(start, end, first PMD range, count of PMD ranges)`.
/// For the PMD order these are the PMD-aligned ranges inside it; for a smaller order, the
/// PMD ranges that hold at least one block.
fn order_ranges(start: usize, end: usize, order: u32) -> (usize, usize, usize, usize) {
    let size = kernel::page::PAGE_SIZE << order;
    let bend = end & !(size - 1);
    match start.checked_next_multiple_of(size) {
        Some(bstart) if bstart < bend => {
            let hstart = bstart & !(PMD_SIZE - 1);
            (bstart, bend, hstart, (bend - hstart).div_ceil(PMD_SIZE))
        }
        _ => (start, start, start, 0),
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

/// Collapses the entries `span` of the PMD range at `addr`, whose VMA the caller found or
/// revalidated under `guard`, for a request of `caller` with `flags`.
///
/// Returns the result, the number of page-table entries looked at (khugepaged's scan budget),
/// and the state of the lock. `req` is the state of the request (its isolation list, allocated
/// at its first collapse, and the time it held the mmap lock for write). Fires
/// `mm_collapse_range` with the result and the times.
pub(crate) fn collapse_pmd<'a>(
    guard: MmapRead<'a>,
    addr: usize,
    span: PteSpan,
    caller: Caller,
    flags: RequestFlags,
    req: &mut RequestState,
) -> (Attempt, u32, Locked<'a>) {
    let began = Instant::<Monotonic>::now();
    let mm = guard.mm();
    let mode = caller.mode(flags);
    // Read once for the whole step, whatever it takes.
    let tunables = tunables_for(mode);
    let (attempt, scanned, state) = match memory_at(&guard, addr) {
        Ok(Memory::Anon) => anon::collapse_pmd(guard, addr, span, mode, &tunables, req),
        // Only anonymous memory collapses to mTHP orders on request.
        Ok(Memory::File { .. }) if flags.order != PMD_ORDER => {
            (Err(Fail::VmaCheck), 1, Locked::Held(guard))
        }
        Ok(Memory::File { file, pgoff }) => {
            file::collapse_pmd(guard, file, addr, pgoff, mode, &tunables)
        }
        Err(fail) => (Err(fail), 1, Locked::Held(guard)),
    };
    STATS.count(caller, &attempt);
    STATS.count_paths(caller, &req.take_paths());
    ffi::trace::range(
        mm,
        addr + span.first * kernel::page::PAGE_SIZE,
        flags.order,
        caller,
        flags.to_uapi(),
        &attempt,
        began.elapsed(),
        req.take_write_held(),
    );
    (attempt, scanned, state)
}

/// MADV_COLLAPSE of `[start, end)`, a range inside the VMA that contains `start`, with the
/// process_madvise() `flags` of the request ([`RequestFlags::NONE`] for madvise()).
///
/// Succeeds when every PMD-aligned range inside `[start, end)` is PMD-mapped on return
/// (already-huge ranges count); otherwise fails with the errno of the last failure. With
/// `MADV_F_COLLAPSE_ORDER(n)` (anonymous memory only), the same holds for the naturally
/// aligned blocks of order `n` inside `[start, end)`: each must be mapped by a folio of that
/// order or larger on return; the PMD range around a block must lie inside the VMA (the
/// collapse takes its page table away for a while), else `EINVAL`. May sleep.
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

    let Some(vma) = guard.find_vma(start) else {
        return done(Err(EINVAL), guard, LockHistory::Kept);
    };
    let anon = vma.is_anonymous();
    let allowed = if flags.order == PMD_ORDER {
        vma::pmd_collapse_allowed(vma, mode)
    } else {
        anon && vma::allowed_orders(vma, mode, mode.anon_orders()) != 0
    };
    if !allowed {
        return done(Err(EINVAL), guard, LockHistory::Kept);
    }
    let (bstart, bend, hstart, ranges) = order_ranges(start, end, flags.order);
    if ranges == 0 {
        return done(Ok(()), guard, LockHistory::Kept);
    }

    let mm = guard.mm();
    // Keep the mm_struct itself alive across lock drops, as upstream does.
    let _grab: ARef<kernel::mm::Mm> = ARef::from(mm);
    // Its isolation list is allocated at the first collapse, and reused by the next ones.
    let mut req = RequestState::for_request();
    // Freshly faulted pages sit in LRU batches, with a reference that fails their isolation.
    // Upstream drains every CPU's up front; an anonymous scan sees such a page (off the LRU,
    // or with an extra reference) and drains then, once, so that a request whose pages are
    // all on the LRU (an in-place collapse's folio never enters a batch) does not make the
    // process's CPUs run the drain. The page cache is drained up front, as upstream, and so is
    // this CPU's batch for a LIGHT request (no other CPU to spare; a scan later might run on
    // another CPU than the pages were faulted on).
    if anon && mode.effort() != Effort::Light {
        req.drain_on_demand(mode.effort());
    } else {
        ffi::drain_lru_batches(mode.effort());
    }
    let mut tally = RangeTally::new(ranges);
    let mut history = LockHistory::Kept;
    let mut state = Locked::Held(guard);
    let mut interrupted = false;
    let mut i = 0;
    while i < tally.ranges() {
        // DEFRAG may retry reclaim and compaction for each range: a killed task stops between
        // ranges, as hugetlb's pool growth does. Without it, as upstream, the request runs on.
        if mode.effort() == Effort::Defrag && ffi::fatal_signal_pending() {
            interrupted = true;
            break;
        }
        let addr = hstart + i * PMD_SIZE;
        let guard = match state {
            Locked::Held(guard) => guard,
            Locked::Dropped => {
                ffi::cond_resched();
                let guard = MmapRead::lock(mm);
                history = LockHistory::Retaken;
                match vma::revalidate(&guard, addr, mode, flags.order) {
                    Ok(vma) => {
                        // The VMA may have shrunk: only ranges it still covers count (for an
                        // mTHP order, those it covers a block of).
                        let end = match flags.order {
                            PMD_ORDER => vma.end() & !(PMD_SIZE - 1),
                            _ => vma.end(),
                        };
                        tally.clamp_ranges(end.saturating_sub(hstart).div_ceil(PMD_SIZE));
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
        let span = PteSpan::of(addr, bstart, bend);
        let (attempt, _, next) = collapse_pmd(guard, addr, span, caller, flags, &mut req);
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
    let result = if interrupted {
        Err(EINTR)
    } else {
        tally.finish()
    };
    done(result, guard, history)
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kunit_tests(thp_collapse_range)]
mod tests {
    use super::*;

    const MB2: usize = PMD_SIZE;

    #[test]
    fn order_ranges_hold_whole_blocks() {
        const K64: usize = 0x10000;
        // The PMD order: the PMD ranges inside.
        assert_eq!(order_ranges(1, 4 * MB2, PMD_ORDER), (MB2, 4 * MB2, MB2, 3));
        // 64 KiB blocks inside [start, end), in the PMD ranges that hold them.
        assert_eq!(order_ranges(K64, 2 * K64, 4), (K64, 2 * K64, 0, 1));
        assert_eq!(
            order_ranges(K64 - 1, MB2 + K64 + 1, 4),
            (K64, MB2 + K64, 0, 2)
        );
        assert_eq!(order_ranges(MB2 + 1, MB2 + K64, 4).3, 0);
        assert_eq!(order_ranges(usize::MAX - K64, usize::MAX, 4).3, 0);
        // Order 9 is the PMD order.
        assert_eq!(order_ranges(0, 3 * MB2, 9).3, 3);
    }

    #[test]
    fn order_ranges_pmd_aligns_inwards() {
        let pmd = |start, end| {
            let (_, _, hstart, n) = order_ranges(start, end, PMD_ORDER);
            (hstart, n)
        };
        assert_eq!(pmd(0, 4 * MB2), (0, 4));
        assert_eq!(pmd(1, 4 * MB2), (MB2, 3));
        assert_eq!(pmd(MB2, 3 * MB2 - 1), (MB2, 1));
        assert_eq!(pmd(MB2 + 4096, 2 * MB2 + 4096).1, 0);
        assert_eq!(pmd(0, MB2 - 1).1, 0);
        assert_eq!(pmd(usize::MAX - 4095, usize::MAX).1, 0);
    }
}
