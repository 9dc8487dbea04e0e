// SPDX-License-Identifier: GPL-2.0

//! Counters of the Rust collapse core, by caller and outcome.
//!
//! Shown in `/sys/kernel/mm/transparent_hugepage/collapse/rust_stats/<caller>`. Tests read them
//! to prove which implementation did the work.

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
use kernel::prelude::*;

use crate::{outcome::Outcome, vocab::Caller};
use core::fmt;
use kernel::sync::atomic::{Atomic, Relaxed};

/// One counter per (caller, outcome) pair.
pub(crate) struct Stats {
    counts: [[Atomic<u64>; Outcome::COUNT]; Caller::COUNT],
}

impl Stats {
    /// All counters at zero.
    pub(crate) const fn new() -> Self {
        Self {
            counts: [const { [const { Atomic::new(0) }; Outcome::COUNT] }; Caller::COUNT],
        }
    }

    /// Counts one PMD range that ended with `outcome` for `caller`.
    pub(crate) fn count(&self, caller: Caller, outcome: Outcome) {
        self.counts[caller as usize][outcome as usize].add(1, Relaxed);
    }

    /// The current value of one counter.
    pub(crate) fn get(&self, caller: Caller, outcome: Outcome) -> u64 {
        self.counts[caller as usize][outcome as usize].load(Relaxed)
    }

    /// Writes the counters of `caller` to `out`, one `<outcome> <count>` line per outcome in
    /// numeric order: the sysfs file of the caller.
    pub(crate) fn show(&self, caller: Caller, out: &mut impl fmt::Write) -> fmt::Result {
        for outcome in Outcome::ALL {
            writeln!(out, "{} {}", outcome.name(), self.get(caller, outcome))?;
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

    #[test]
    fn counters_are_independent() {
        let s = Stats::new();
        s.count(Caller::Madvise, Outcome::Succeed);
        s.count(Caller::Madvise, Outcome::Succeed);
        s.count(Caller::Khugepaged, Outcome::PageDirtyOrWriteback);
        assert_eq!(s.get(Caller::Madvise, Outcome::Succeed), 2);
        assert_eq!(s.get(Caller::ProcessMadvise, Outcome::Succeed), 0);
        assert_eq!(s.get(Caller::Khugepaged, Outcome::PageDirtyOrWriteback), 1);
        assert_eq!(s.get(Caller::Khugepaged, Outcome::Succeed), 0);
    }

    #[test]
    fn show_writes_one_line_per_outcome() {
        let s = Stats::new();
        s.count(Caller::ProcessMadvise, Outcome::Succeed);
        s.count(Caller::ProcessMadvise, Outcome::PageDirtyOrWriteback);
        s.count(Caller::ProcessMadvise, Outcome::PageDirtyOrWriteback);
        let mut buf = [0u8; 4096];
        let mut out = kernel::str::Formatter::new(&mut buf);
        assert!(s.show(Caller::ProcessMadvise, &mut out).is_ok());
        let len = out.bytes_written();
        let text = core::str::from_utf8(&buf[..len]).unwrap_or("");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("fail 0"));
        assert_eq!(lines.next(), Some("succeed 1"));
        assert_eq!(text.lines().count(), Outcome::COUNT);
        assert_eq!(text.lines().last(), Some("page_dirty_or_writeback 2"));
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
