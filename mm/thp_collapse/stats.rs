// SPDX-License-Identifier: GPL-2.0

//! Counters of the Rust collapse core, by caller and outcome.
//!
//! Shown in `/sys/kernel/mm/transparent_hugepage/collapse/rust_stats/<caller>`. Tests read them
//! to prove which implementation did the work.

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
use kernel::prelude::*;

use super::{mode::Caller, outcome::Outcome};
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
        s.count(Caller::Khugepaged, Outcome::NotImplemented);
        assert_eq!(s.get(Caller::Madvise, Outcome::Succeed), 2);
        assert_eq!(s.get(Caller::ProcessMadvise, Outcome::Succeed), 0);
        assert_eq!(s.get(Caller::Khugepaged, Outcome::NotImplemented), 1);
        assert_eq!(s.get(Caller::Khugepaged, Outcome::Succeed), 0);
    }
}
