// SPDX-License-Identifier: GPL-2.0

//! Counters of the Rust collapse core, by caller and result (its `enum scan_result` code), and
//! of the PMD collapses it did in place, without a copy.
//!
//! Shown in `/sys/kernel/mm/transparent_hugepage/collapse/rust_stats/<caller>`. Tests read them
//! to prove which implementation did the work.

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
use kernel::prelude::*;

use crate::{
    outcome::{ScanCode, CODES, NAMES},
    vocab::Caller,
};
use core::fmt;
use kernel::sync::atomic::{Atomic, Relaxed};

/// How many collapses took each path, and how many pages they copied twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Paths {
    /// PMD ranges mapped in place, without a copy.
    pub(crate) in_place: u32,
    /// Collapses whose copy was made early, while the process ran.
    pub(crate) early: u32,
    /// Pages those copied again under the mmap lock for write.
    pub(crate) recopied: u32,
    /// Collapses that copied everything under the mmap lock for write.
    pub(crate) locked: u32,
    /// The passes that early copies made after their first, over the pages written during
    /// the one before.
    pub(crate) retries: u32,
    /// The pages those passes copied again.
    pub(crate) recopied_early: u32,
    /// The early copies started over because something else invalidated the range while
    /// they copied, of the collapses counted in `early` and `locked`.
    pub(crate) restarts: u32,
    /// MADV_COLLAPSE scans that found another collapse of their range copying its pages, and
    /// waited for it to end before they looked again (whatever came of the range then).
    pub(crate) claim_waits: u32,
    /// Collapses copied early whose switch held the page-table locks only, the VMA's page
    /// faults going on meanwhile.
    pub(crate) switched: u32,
    /// Of those, the collapses whose switch held the mmap lock for read only, the process's
    /// mmap-lock readers going on meanwhile too.
    pub(crate) switched_read: u32,
    /// Collapses whose switch under the page-table locks gave up and went on with the VMA
    /// write-locked.
    pub(crate) switch_fallbacks: u32,
    /// Of the PMD ranges mapped in place, those mapped under the mmap lock for read only.
    pub(crate) in_place_read: u32,
    /// MADV_COLLAPSE requests that drained the LRU batches, once, because a scan found a
    /// page off the LRU or with an extra reference (which a batch may hold), or swap entries
    /// in a range that may collapse. A request whose pages are all on the LRU drains nothing.
    pub(crate) lru_drains: u32,
}

/// The names of the path counters, in the order of [`Stats::count_paths`]'s fields, as the
/// sysfs file shows them after the result codes.
const PATH_NAMES: [&str; PATHS] = [
    "in_place",
    "copied_early",
    "recopied",
    "copied_locked",
    "early_retries",
    "recopied_early",
    "early_restarts",
    "claim_waits",
    "switched_ptl",
    "switched_read",
    "switch_fallbacks",
    "in_place_read",
    "lru_drains",
];

/// How many path counters each caller has.
const PATHS: usize = 13;

/// One counter per (caller, result code) pair, and per caller the path counters
/// ([`PATH_NAMES`]): PMD ranges mapped in place, collapses copied early (while the process
/// ran), the pages those copied again under the mmap write lock, collapses that copied
/// everything under it, the retries of early copies with the pages they copied again, the
/// early copies started over, and the waits for another collapse of the same range.
pub(crate) struct Stats {
    counts: [[Atomic<u64>; CODES]; Caller::COUNT],
    paths: [[Atomic<u64>; PATHS]; Caller::COUNT],
}

impl Stats {
    /// All counters at zero.
    pub(crate) const fn new() -> Self {
        Self {
            counts: [const { [const { Atomic::new(0) }; CODES] }; Caller::COUNT],
            paths: [const { [const { Atomic::new(0) }; PATHS] }; Caller::COUNT],
        }
    }

    /// Adds the paths `p` that `caller`'s collapses took (each collapse also counted as a
    /// success by [`Stats::count`]).
    pub(crate) fn count_paths(&self, caller: Caller, p: &Paths) {
        let values = [
            p.in_place,
            p.early,
            p.recopied,
            p.locked,
            p.retries,
            p.recopied_early,
            p.restarts,
            p.claim_waits,
            p.switched,
            p.switched_read,
            p.switch_fallbacks,
            p.in_place_read,
            p.lru_drains,
        ];
        for (counter, &v) in self.paths[caller as usize].iter().zip(&values) {
            if v > 0 {
                counter.add(u64::from(v), Relaxed);
            }
        }
    }

    /// Counts one PMD range that ended with `result` for `caller`.
    pub(crate) fn count(&self, caller: Caller, result: &impl ScanCode) {
        if let Some(counter) = self.counts[caller as usize].get(result.code() as usize) {
            counter.add(1, Relaxed);
        }
    }

    /// The current value of the counter of `caller` and `result` (for the KUnit cases).
    #[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
    pub(crate) fn get(&self, caller: Caller, result: &impl ScanCode) -> u64 {
        self.counts[caller as usize]
            .get(result.code() as usize)
            .map_or(0, |counter| counter.load(Relaxed))
    }

    /// Writes the counters of `caller` to `out`, one `<result> <count>` line per code in
    /// numeric order, then one `<path> <count>` line per path counter ([`PATH_NAMES`]): the
    /// sysfs file of the caller.
    pub(crate) fn show(&self, caller: Caller, out: &mut impl fmt::Write) -> fmt::Result {
        for (name, counter) in NAMES.iter().zip(&self.counts[caller as usize]) {
            writeln!(out, "{} {}", name, counter.load(Relaxed))?;
        }
        for (name, counter) in PATH_NAMES.iter().zip(&self.paths[caller as usize]) {
            writeln!(out, "{} {}", name, counter.load(Relaxed))?;
        }
        Ok(())
    }
}

/// The counters of this kernel's Rust collapse core.
pub(crate) static STATS: Stats = Stats::new();

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kunit_tests(thp_collapse_stats)]
mod tests {
    use super::*;
    use crate::outcome::{Collapsed, Fail};

    const OK: Collapsed = Collapsed::Mapped;

    #[test]
    fn counters_are_independent() {
        let s = Stats::new();
        s.count(Caller::Madvise, &OK);
        s.count(Caller::Madvise, &OK);
        s.count(Caller::Khugepaged, &Fail::PageDirtyOrWriteback);
        assert_eq!(s.get(Caller::Madvise, &OK), 2);
        assert_eq!(s.get(Caller::ProcessMadvise, &OK), 0);
        assert_eq!(s.get(Caller::Khugepaged, &Fail::PageDirtyOrWriteback), 1);
        assert_eq!(s.get(Caller::Khugepaged, &OK), 0);
    }

    #[test]
    fn show_writes_one_line_per_outcome() {
        let s = Stats::new();
        s.count(Caller::ProcessMadvise, &OK);
        s.count(Caller::ProcessMadvise, &Fail::PageDirtyOrWriteback);
        s.count(Caller::ProcessMadvise, &Fail::PageDirtyOrWriteback);
        let p = Paths {
            in_place: 3,
            early: 2,
            recopied: 7,
            locked: 1,
            retries: 4,
            recopied_early: 90,
            restarts: 5,
            claim_waits: 6,
            switched: 8,
            switched_read: 11,
            switch_fallbacks: 9,
            in_place_read: 12,
            lru_drains: 13,
        };
        s.count_paths(Caller::ProcessMadvise, &p);
        s.count_paths(Caller::Madvise, &Paths::default());
        let mut buf = [0u8; 4096];
        let mut out = kernel::str::Formatter::new(&mut buf);
        assert!(s.show(Caller::ProcessMadvise, &mut out).is_ok());
        let len = out.bytes_written();
        let text = core::str::from_utf8(&buf[..len]).unwrap_or("");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("fail 0"));
        assert_eq!(lines.next(), Some("succeed 1"));
        assert_eq!(text.lines().count(), CODES + PATHS);
        assert!(text.lines().any(|l| l == "page_dirty_or_writeback 2"));
        assert_eq!(text.lines().nth(CODES - 1), Some("would_block 0"));
        let mut paths = text.lines().skip(CODES);
        assert_eq!(paths.next(), Some("in_place 3"));
        assert_eq!(paths.next(), Some("copied_early 2"));
        assert_eq!(paths.next(), Some("recopied 7"));
        assert_eq!(paths.next(), Some("copied_locked 1"));
        assert_eq!(paths.next(), Some("early_retries 4"));
        assert_eq!(paths.next(), Some("recopied_early 90"));
        assert_eq!(paths.next(), Some("early_restarts 5"));
        assert_eq!(paths.next(), Some("claim_waits 6"));
        assert_eq!(paths.next(), Some("switched_ptl 8"));
        assert_eq!(paths.next(), Some("switched_read 11"));
        assert_eq!(paths.next(), Some("switch_fallbacks 9"));
        assert_eq!(paths.next(), Some("in_place_read 12"));
        assert_eq!(paths.next(), Some("lru_drains 13"));
        assert_eq!(paths.next(), None);
        // Too small a buffer is an error, not a truncated file.
        let mut small = [0u8; 16];
        assert!(s
            .show(
                Caller::ProcessMadvise,
                &mut kernel::str::Formatter::new(&mut small)
            )
            .is_err());
    }
}
