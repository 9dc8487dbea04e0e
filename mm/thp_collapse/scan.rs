// SPDX-License-Identifier: GPL-2.0

//! The accounting of a scan of one PMD range: how many PTEs are empty, swapped out or shared,
//! how many were recently referenced, and whether the range is worth collapsing.
//!
//! This file is pure logic: no `unsafe`, no `bindings`. The page-table walk that feeds it, and
//! the per-page checks that need the folio, are in `anon/read.rs`.
//!
//! Upstream reference: `collapse_scan_pmd()` in [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use crate::{
    outcome::Outcome,
    plan::Occupied,
    vocab::{CollapseMode, Limits, PTES_PER_PMD},
};
use kernel::mm::folio::{NodeLoad, Nodes};
#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
use kernel::prelude::*;

/// The running account of a scan of one PMD range.
#[derive(Debug)]
pub(crate) struct ScanTally {
    mode: CollapseMode,
    limits: Limits,
    none_or_zero: u32,
    swapped: u32,
    shared: u32,
    referenced: u32,
    occupied: Occupied,
    nodes: NodeLoad,
}

impl ScanTally {
    /// Starts the scan of a range for `mode`, within `limits`.
    pub(crate) const fn new(mode: CollapseMode, limits: Limits) -> Self {
        Self {
            mode,
            limits,
            none_or_zero: 0,
            swapped: 0,
            shared: 0,
            referenced: 0,
            occupied: Occupied::EMPTY,
            nodes: NodeLoad::new(),
        }
    }

    /// A present page, counted by [`Self::present`], is on NUMA node `nid`.
    pub(crate) fn on_node(&mut self, nid: i32) {
        self.nodes.add(nid, 1);
    }

    /// The nodes a folio for the range should come from: where most of its pages are.
    /// Upstream: `collapse_find_target_node()`.
    pub(crate) fn target_nodes(&self) -> Nodes {
        self.nodes.target()
    }

    /// A PTE that is none or maps the zero page.
    pub(crate) fn none_or_zero(&mut self) -> Result<(), Outcome> {
        self.none_or_zero += 1;
        if self.none_or_zero > self.limits.max_none {
            return Err(Outcome::ExceedNonePte);
        }
        Ok(())
    }

    /// A non-present PTE (swap entry or marker); `uffd` if it carries userfaultfd state.
    pub(crate) fn not_present(&mut self, uffd: bool) -> Result<(), Outcome> {
        self.swapped += 1;
        if self.swapped > self.limits.max_swap {
            return Err(Outcome::ExceedSwapPte);
        }
        // Always strict with userfaultfd-protected swap entries.
        if uffd {
            return Err(Outcome::PteUffd);
        }
        Ok(())
    }

    /// A present PTE mapping an anonymous page that another process may map too.
    pub(crate) fn shared(&mut self) -> Result<(), Outcome> {
        self.shared += 1;
        if self.shared > self.limits.max_shared {
            return Err(Outcome::ExceedSharedPte);
        }
        Ok(())
    }

    /// A present PTE mapping a page that passed every check.
    pub(crate) fn present(&mut self, referenced: bool) {
        if referenced {
            self.referenced += 1;
        }
    }

    /// Entry `i` maps a page (it passed the per-page checks so far): the mTHP plan counts it.
    pub(crate) fn occupy(&mut self, i: usize) {
        self.occupied.set(i);
    }

    /// The entries that map a page.
    pub(crate) fn occupied(&self) -> &Occupied {
        &self.occupied
    }

    /// Whether this mode needs to know if each page was referenced recently.
    pub(crate) fn wants_referenced(&self) -> bool {
        self.mode == CollapseMode::Khugepaged
    }

    /// Whether lazily-freed (MADV_FREE) pages stop the scan in this mode.
    pub(crate) fn skips_lazyfree(&self) -> bool {
        self.mode.skips_lazyfree()
    }

    /// Whether this mode looks at the referenced or lazily-freed state of pages at all.
    pub(crate) fn uses_heuristics(&self) -> bool {
        self.wants_referenced() || self.skips_lazyfree()
    }

    /// Empty or zero-page PTEs seen.
    pub(crate) fn none_or_zero_count(&self) -> u32 {
        self.none_or_zero
    }

    /// Swapped-out PTEs seen.
    pub(crate) fn swapped_count(&self) -> u32 {
        self.swapped
    }

    /// Referenced pages seen.
    pub(crate) fn referenced_count(&self) -> u32 {
        self.referenced
    }

    /// The counts that a failure of the entry seen next would report; see
    /// [`ScanTally::rewind`].
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            none_or_zero: self.none_or_zero,
            referenced: self.referenced,
        }
    }

    /// Goes back to the counts of `cp`, for an entry whose failure is only known after later
    /// entries were counted (the isolation of its folio, done a batch at a time): the
    /// tracepoint reports what upstream's entry-by-entry isolation would have seen.
    pub(crate) fn rewind(&mut self, cp: Checkpoint) {
        self.none_or_zero = cp.none_or_zero;
        self.referenced = cp.referenced;
    }

    /// The verdict once every PTE was seen: [`Outcome::Succeed`] if the range is worth
    /// collapsing.
    pub(crate) fn finish(&self) -> Outcome {
        if self.referenced < self.mode.min_referenced(self.swapped) {
            Outcome::LackReferencedPage
        } else {
            Outcome::Succeed
        }
    }
}

impl ScanTally {
    /// The verdict of the isolation step once every PTE was isolated: khugepaged still wants
    /// one recently referenced page, MADV_COLLAPSE nothing.
    ///
    /// Upstream: the end of `__collapse_huge_page_isolate()`.
    pub(crate) fn finish_isolation(&self) -> Outcome {
        if self.mode == CollapseMode::Khugepaged && self.referenced == 0 {
            Outcome::LackReferencedPage
        } else {
            Outcome::Succeed
        }
    }
}

/// The counts of a [`ScanTally`] that its tracepoint reports, at one point of the scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    none_or_zero: u32,
    referenced: u32,
}

/// One entry of a page cache range, as the file scan sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FileEntry {
    /// A swap (or shadow) entry covering `nr` pages.
    Value { nr: u32 },
    /// A folio of `nr` pages.
    Folio {
        /// Its pages.
        nr: u32,
        /// Whether it is of the PMD order already.
        pmd_order: bool,
        /// Whether it is on an LRU list.
        lru: bool,
        /// References beyond those of the page cache and its mappings, the scan's included.
        refs_beyond_expected: isize,
    },
}

/// The running account of a scan of one page cache range (`collapse_scan_file()`).
#[derive(Debug)]
pub(crate) struct FileTally {
    limits: Limits,
    present: u32,
    swap: u32,
    nodes: NodeLoad,
}

impl FileTally {
    /// Starts the scan of a range within `limits` (those of the PMD order: the file scan knows
    /// no VMA, so no userfaultfd rule applies).
    pub(crate) const fn new(limits: Limits) -> Self {
        Self {
            limits,
            present: 0,
            swap: 0,
            nodes: NodeLoad::new(),
        }
    }

    /// `nr` pages of a folio accounted by [`Self::add`] are on NUMA node `nid`.
    pub(crate) fn on_node(&mut self, nid: i32, nr: usize) {
        self.nodes.add(nid, nr);
    }

    /// The nodes a folio for the range should come from: where most of its pages are.
    /// Upstream: `collapse_find_target_node()`.
    pub(crate) fn target_nodes(&self) -> Nodes {
        self.nodes.target()
    }

    /// Accounts `e`; fails with the outcome that stops the scan.
    pub(crate) fn add(&mut self, e: FileEntry) -> Result<(), Outcome> {
        match e {
            FileEntry::Value { nr } => {
                self.swap = self.swap.saturating_add(nr);
                if self.swap > self.limits.max_swap {
                    return Err(Outcome::ExceedSwapPte);
                }
            }
            FileEntry::Folio {
                nr,
                pmd_order,
                lru,
                refs_beyond_expected,
            } => {
                // A huge folio already: only the page tables are left to collapse.
                if pmd_order {
                    return Err(Outcome::PteMappedHugepage);
                }
                if !lru {
                    return Err(Outcome::PageLru);
                }
                // Someone else holds a reference (a GUP pin, say): the collapse would fail.
                if refs_beyond_expected != 1 {
                    return Err(Outcome::PageCount);
                }
                self.present = self.present.saturating_add(nr);
            }
        }
        Ok(())
    }

    /// The outcome of a scan that went through the whole range: whether enough is present.
    pub(crate) fn finish(&self) -> Outcome {
        let none = PTES_PER_PMD.saturating_sub(self.present);
        if none > self.limits.max_none {
            Outcome::ExceedNonePte
        } else {
            Outcome::Succeed
        }
    }

    /// Pages present so far.
    pub(crate) fn present(&self) -> u32 {
        self.present
    }

    /// Swap entries so far.
    pub(crate) fn swap(&self) -> u32 {
        self.swap
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kunit_tests(thp_collapse_scan)]
mod tests {
    use super::*;
    use crate::vocab::{Tunables, Userfault, PMD_ORDER, PTES_PER_PMD};

    fn tally(mode: CollapseMode, t: &Tunables) -> ScanTally {
        ScanTally::new(mode, mode.limits(t, PMD_ORDER, Userfault::Unarmed))
    }

    #[test]
    fn madvise_full_range_collapses() {
        let mut s = tally(CollapseMode::Madvise, &Tunables::DEFAULTS);
        for _ in 0..PTES_PER_PMD {
            s.present(false);
        }
        assert_eq!(s.finish(), Outcome::Succeed);
    }

    #[test]
    fn madvise_ignores_limits_and_references() {
        let strict = Tunables {
            max_ptes_none: 0,
            max_ptes_swap: 0,
            max_ptes_shared: 0,
            defrag: false,
        };
        let mut s = tally(CollapseMode::Madvise, &strict);
        for _ in 0..200 {
            assert_eq!(s.none_or_zero(), Ok(()));
            assert_eq!(s.not_present(false), Ok(()));
        }
        for _ in 0..112 {
            assert_eq!(s.shared(), Ok(()));
            s.present(false);
        }
        assert!(!s.wants_referenced());
        assert_eq!(s.finish(), Outcome::Succeed);
    }

    #[test]
    fn only_khugepaged_reads_the_heuristic_facts() {
        let t = &Tunables::DEFAULTS;
        assert!(!tally(CollapseMode::Madvise, t).uses_heuristics());
        assert!(tally(CollapseMode::Khugepaged, t).uses_heuristics());
    }

    #[test]
    fn madvise_all_empty_still_collapses() {
        // MADV_COLLAPSE allows all 512 PTEs to be none.
        let mut s = tally(CollapseMode::Madvise, &Tunables::DEFAULTS);
        for _ in 0..PTES_PER_PMD {
            assert_eq!(s.none_or_zero(), Ok(()));
        }
        assert_eq!(s.none_or_zero_count(), 512);
        assert_eq!(s.finish(), Outcome::Succeed);
    }

    #[test]
    fn uffd_armed_allows_no_holes() {
        let mode = CollapseMode::Madvise;
        let mut s = ScanTally::new(
            mode,
            mode.limits(&Tunables::DEFAULTS, PMD_ORDER, Userfault::Armed),
        );
        assert_eq!(s.none_or_zero(), Err(Outcome::ExceedNonePte));
    }

    #[test]
    fn uffd_swap_entry_stops_the_scan() {
        let mut s = tally(CollapseMode::Madvise, &Tunables::DEFAULTS);
        assert_eq!(s.not_present(true), Err(Outcome::PteUffd));
    }

    #[test]
    fn khugepaged_limits_are_exact() {
        let t = Tunables {
            max_ptes_none: 256,
            ..Tunables::DEFAULTS
        };
        let mut s = tally(CollapseMode::Khugepaged, &t);
        for _ in 0..256 {
            assert_eq!(s.none_or_zero(), Ok(()));
        }
        assert_eq!(s.none_or_zero(), Err(Outcome::ExceedNonePte));

        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        for _ in 0..64 {
            assert_eq!(s.not_present(false), Ok(()));
        }
        assert_eq!(s.not_present(false), Err(Outcome::ExceedSwapPte));

        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        for _ in 0..256 {
            assert_eq!(s.shared(), Ok(()));
        }
        assert_eq!(s.shared(), Err(Outcome::ExceedSharedPte));
    }

    #[test]
    fn khugepaged_needs_references() {
        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        assert!(s.wants_referenced());
        for _ in 0..PTES_PER_PMD {
            s.present(false);
        }
        assert_eq!(s.finish(), Outcome::LackReferencedPage);

        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        s.present(true);
        for _ in 1..PTES_PER_PMD {
            s.present(false);
        }
        assert_eq!(s.referenced_count(), 1);
        assert_eq!(s.finish(), Outcome::Succeed);
    }

    #[test]
    fn khugepaged_swap_needs_half_referenced() {
        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        assert_eq!(s.not_present(false), Ok(()));
        for _ in 0..255 {
            s.present(true);
        }
        assert_eq!(s.swapped_count(), 1);
        assert_eq!(s.finish(), Outcome::LackReferencedPage);
        s.present(true);
        assert_eq!(s.finish(), Outcome::Succeed);
    }

    #[test]
    fn isolation_needs_one_reference_in_khugepaged_only() {
        let mut k = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        let mut m = tally(CollapseMode::Madvise, &Tunables::DEFAULTS);
        for _ in 0..PTES_PER_PMD {
            k.present(false);
            m.present(false);
        }
        assert_eq!(k.finish_isolation(), Outcome::LackReferencedPage);
        assert_eq!(m.finish_isolation(), Outcome::Succeed);
        k.present(true);
        assert_eq!(k.finish_isolation(), Outcome::Succeed);
    }

    #[test]
    fn isolation_none_limit_is_the_scan_limit() {
        let t = Tunables {
            max_ptes_none: 2,
            ..Tunables::DEFAULTS
        };
        let mut k = tally(CollapseMode::Khugepaged, &t);
        assert_eq!(k.none_or_zero(), Ok(()));
        assert_eq!(k.none_or_zero(), Ok(()));
        assert_eq!(k.none_or_zero(), Err(Outcome::ExceedNonePte));
    }
    fn folio(nr: u32) -> FileEntry {
        FileEntry::Folio {
            nr,
            pmd_order: false,
            lru: true,
            refs_beyond_expected: 1,
        }
    }

    #[test]
    fn file_madvise_collapses_one_page_and_any_swap() {
        let l = CollapseMode::Madvise.limits(&Tunables::DEFAULTS, PMD_ORDER, Userfault::Unarmed);
        let mut t = FileTally::new(l);
        assert_eq!(t.add(folio(1)), Ok(()));
        for _ in 0..511 {
            assert_eq!(t.add(FileEntry::Value { nr: 1 }), Ok(()));
        }
        assert_eq!(t.finish(), Outcome::Succeed);
        assert_eq!((t.present(), t.swap()), (1, 511));
    }

    #[test]
    fn file_khugepaged_limits_are_exact() {
        let tun = Tunables {
            max_ptes_none: 8,
            max_ptes_swap: 4,
            ..Tunables::DEFAULTS
        };
        let l = CollapseMode::Khugepaged.limits(&tun, PMD_ORDER, Userfault::Unarmed);
        let mut t = FileTally::new(l);
        // Large folios count all their pages; swap entries all the pages they cover.
        assert_eq!(t.add(folio(4)), Ok(()));
        assert_eq!(t.add(FileEntry::Value { nr: 4 }), Ok(()));
        assert_eq!(
            t.add(FileEntry::Value { nr: 1 }),
            Err(Outcome::ExceedSwapPte)
        );
        let mut t = FileTally::new(l);
        assert_eq!(t.add(folio(504)), Ok(()));
        assert_eq!(t.finish(), Outcome::Succeed);
        let mut t = FileTally::new(l);
        assert_eq!(t.add(folio(503)), Ok(()));
        assert_eq!(t.finish(), Outcome::ExceedNonePte);
    }

    #[test]
    fn file_folio_state_stops_the_scan() {
        let l = CollapseMode::Madvise.limits(&Tunables::DEFAULTS, PMD_ORDER, Userfault::Unarmed);
        let stop = |pmd_order, lru, refs_beyond_expected| {
            FileTally::new(l).add(FileEntry::Folio {
                nr: 512,
                pmd_order,
                lru,
                refs_beyond_expected,
            })
        };
        assert_eq!(stop(true, true, 1), Err(Outcome::PteMappedHugepage));
        assert_eq!(stop(false, false, 1), Err(Outcome::PageLru));
        assert_eq!(stop(false, true, 2), Err(Outcome::PageCount));
        assert_eq!(stop(false, true, 1), Ok(()));
    }
}
