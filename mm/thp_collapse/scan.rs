// SPDX-License-Identifier: GPL-2.0

//! The accounting of a scan of one PMD range: how many PTEs are empty, swapped out or shared,
//! how many were recently referenced, and whether the range is worth collapsing.
//!
//! This file is pure logic: no `unsafe`, no `bindings`. It also holds the checks of one PTE
//! that the scan (`anon/read.rs`) and the isolation (`anon/detach.rs`) share, in one order
//! ([`ScanTally::check_entry`], [`ScanTally::check_page`]); what each step checks beyond them
//! (the folio's LRU, lock and references; its order and isolation) stays with the step.
//!
//! Upstream reference: `collapse_scan_pmd()` in [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use crate::{
    outcome::Fail,
    plan::Occupied,
    vocab::{CollapseMode, Limits, PMD_ORDER, PTES_PER_PMD},
};
use kernel::mm::folio::{NodeLoad, Nodes};
#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
use kernel::prelude::*;

/// What the checks of one PTE read: the entry and the page it maps (`ffi::PteFacts`, read
/// under the page-table lock; a table in the tests).
pub(crate) trait PteView {
    /// None, or mapping the shared zero page.
    fn none_or_zero(&self) -> bool;
    /// What it holds if not present (a swap entry or a marker), `None` if present or none.
    fn non_present(&self) -> Option<NonPresent>;
    /// Present and userfaultfd write-protected.
    fn uffd_wp(&self) -> bool;
    /// It maps a normal page (not a special or ZONE_DEVICE mapping).
    fn maps_page(&self) -> bool;
    /// The folio is anonymous.
    fn anon(&self) -> bool;
    /// The folio is lazily freed (MADV_FREE) and the PTE has not dirtied it since (read only
    /// with `PteRead::HEURISTICS`; false otherwise).
    fn clean_lazyfree(&self) -> bool;
    /// Part of the folio may be mapped by another process.
    fn shared(&self) -> bool;
}

/// A PTE that is not present, as the checks tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonPresent {
    /// A swap or migration entry, or a marker, with no userfaultfd state.
    Plain,
    /// One that carries userfaultfd state (the uffd-wp bit of a swap entry, or a uffd marker).
    Uffd,
}

/// What reclaim does to a VMA's lazily freed (MADV_FREE) pages, which decides whether they
/// stop a collapse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VmaKind {
    /// They are freed: a collapse would bring them back to life.
    Normal,
    /// A `VM_DROPPABLE` VMA: all its pages may be dropped, so collapsing them loses nothing.
    Droppable,
}

impl VmaKind {
    /// The kind of `vma`.
    pub(crate) fn of(vma: &kernel::mm::virt::VmaRef) -> Self {
        if vma.is_droppable() {
            VmaKind::Droppable
        } else {
            VmaKind::Normal
        }
    }
}

/// The step of a collapse that checks a PTE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The scan, under the mmap read lock: a swap entry is counted against `max_ptes_swap`
    /// (the collapse reads it back in first).
    Scan,
    /// The isolation, in the detached table: every page is in memory by then, so a
    /// non-present entry means the range changed.
    Isolate,
}

/// What a PTE holds, once [`ScanTally::check_entry`] accepted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// None or the zero page, counted against `max_ptes_none`.
    Empty,
    /// A swap entry, counted against `max_ptes_swap` (scan only).
    Swapped,
    /// A normal page, for [`ScanTally::check_page`].
    Page,
}

/// Which candidates of an mTHP-sized MADV_COLLAPSE are already in place: each of their PTEs
/// maps, in order, the pages of one naturally aligned block of a folio of the target order or
/// larger. Such a candidate has nothing to collapse (it is what the request asks for), as a
/// PMD-mapped range has nothing to collapse for the PMD order.
///
/// The scan feeds it every entry of its span in order ([`InPlace::see`]).
#[derive(Clone, Debug)]
pub(crate) struct InPlace {
    order: u32,
    /// The folio (its address) and the index in it of the page the current candidate's
    /// first entry maps, while every entry so far continues the block.
    block: Option<(usize, usize)>,
    /// Bit `i` for a candidate starting at entry `i` that is in place.
    done: Occupied,
}

impl InPlace {
    /// Starts looking for candidates of `order` in place.
    pub(crate) const fn new(order: u32) -> Self {
        Self {
            order,
            block: None,
            done: Occupied::EMPTY,
        }
    }

    /// Entry `i` maps page `index` of the folio at `folio` (its address), whose order is
    /// `folio_order`, as `page()` tells; `None` for an entry that maps no page. `page()` is
    /// only called while the candidate can still be in place: once a block is broken, the
    /// rest of the scan of its entries costs a test each.
    ///
    /// Returns whether a later entry of the page table can still be part of a candidate in
    /// place: `false` once the block of a PMD-order candidate, the only one of its table, is
    /// broken, so that the scan stops feeding it (which cost 13 instructions per entry, 6.5 k
    /// per 2 MiB of `make bench-icount`'s `full` workload, where no folio is large).
    #[inline]
    pub(crate) fn see(
        &mut self,
        i: usize,
        page: impl FnOnce() -> Option<(usize, usize, u32)>,
    ) -> bool {
        let nr = 1usize << self.order;
        let k = i % nr;
        if k != 0 && self.block.is_none() {
            return self.order < PMD_ORDER;
        }
        self.block = match (k, self.block, page()) {
            (0, _, Some((folio, index, folio_order)))
                if folio_order >= self.order && index % nr == 0 =>
            {
                Some((folio, index))
            }
            (1.., Some((f, base)), Some((folio, index, _))) if folio == f && index == base + k => {
                Some((f, base))
            }
            _ => None,
        };
        if k == nr - 1 && self.block.is_some() {
            self.done.set(i + 1 - nr);
        }
        self.block.is_some() || self.order < PMD_ORDER
    }

    /// Whether the candidate starting at entry `first` is in place.
    pub(crate) fn covers(&self, first: usize) -> bool {
        self.done.weight(first, first + 1) == 1
    }
}

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
    pub(crate) fn none_or_zero(&mut self) -> Result<(), Fail> {
        self.none_or_zero += 1;
        if self.none_or_zero > self.limits.max_none {
            return Err(Fail::ExceedNonePte);
        }
        Ok(())
    }

    /// A non-present PTE (swap entry or marker) of the scan.
    pub(crate) fn not_present(&mut self, kind: NonPresent) -> Result<(), Fail> {
        self.swapped += 1;
        if self.swapped > self.limits.max_swap {
            return Err(Fail::ExceedSwapPte);
        }
        match kind {
            NonPresent::Plain => Ok(()),
            // Always strict with userfaultfd-protected swap entries.
            NonPresent::Uffd => Err(Fail::PteUffd),
        }
    }

    /// The checks of the entry itself, first for every PTE in the scan and in the isolation,
    /// in upstream's order: empty (within `max_ptes_none`), non-present (within
    /// `max_ptes_swap` for the scan, never for the isolation; never with userfaultfd state),
    /// userfaultfd write-protected, no normal page.
    pub(crate) fn check_entry(
        &mut self,
        pte: &impl PteView,
        step: Step,
    ) -> Result<EntryKind, Fail> {
        if pte.none_or_zero() {
            return self.none_or_zero().map(|()| EntryKind::Empty);
        }
        if let Some(kind) = pte.non_present() {
            return match step {
                Step::Scan => self.not_present(kind).map(|()| EntryKind::Swapped),
                Step::Isolate => Err(Fail::PteNonPresent),
            };
        }
        // Don't collapse over userfaultfd write protection: the huge PMD could raise faults
        // outside the registered range.
        if pte.uffd_wp() {
            return Err(Fail::PteUffd);
        }
        if !pte.maps_page() {
            return Err(Fail::PageNull);
        }
        Ok(EntryKind::Page)
    }

    /// The checks of the folio an entry maps ([`EntryKind::Page`]), next for every such PTE in
    /// the scan and in the isolation: anonymous, not lazily freed (where the mode skips such
    /// pages and the VMA is not [`VmaKind::Droppable`]),
    /// and shared within `max_ptes_shared` (a page counts as shared if any part of its folio
    /// is). A lazily freed folio is anonymous, so the order of the first two is the scan's
    /// and the isolation's both.
    pub(crate) fn check_page(&mut self, pte: &impl PteView, vma: VmaKind) -> Result<(), Fail> {
        if !pte.anon() {
            return Err(Fail::PageAnon);
        }
        if self.skips_lazyfree() && pte.clean_lazyfree() && vma == VmaKind::Normal {
            return Err(Fail::PageLazyfree);
        }
        if pte.shared() {
            self.shared()?;
        }
        Ok(())
    }

    /// A present PTE mapping an anonymous page that another process may map too.
    pub(crate) fn shared(&mut self) -> Result<(), Fail> {
        self.shared += 1;
        if self.shared > self.limits.max_shared {
            return Err(Fail::ExceedSharedPte);
        }
        Ok(())
    }

    /// A present PTE mapping a page that passed every check; `referenced` says whether the page
    /// was used recently, and is asked only in the modes that want to know
    /// ([`Self::wants_referenced`]).
    pub(crate) fn present(&mut self, referenced: impl FnOnce() -> bool) {
        if self.wants_referenced() && referenced() {
            self.referenced += 1;
        }
    }

    /// Entry `i` maps a page (it passed the per-page checks so far): the mTHP plan counts it.
    pub(crate) fn occupy(&mut self, i: usize) {
        self.occupied.set(i);
    }

    /// The `n` entries from entry `i` on map pages of one folio on node `nid`, each of which
    /// passed every check without being counted against a limit: as [`Self::occupy`],
    /// [`Self::present`] and [`Self::on_node`] for each, in a mode that does not count
    /// referenced pages (the caller checks [`Self::wants_referenced`]).
    pub(crate) fn occupy_run(&mut self, i: usize, n: usize, nid: i32) {
        self.occupied.set_range(i, i + n);
        self.nodes.add(nid, n);
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

    /// The verdict once every PTE was seen: `Ok` if the range is worth collapsing.
    pub(crate) fn finish(&self) -> Result<(), Fail> {
        if self.referenced < self.mode.min_referenced(self.swapped) {
            Err(Fail::LackReferencedPage)
        } else {
            Ok(())
        }
    }
}

impl ScanTally {
    /// The verdict of the isolation step once every PTE was isolated: khugepaged still wants
    /// one recently referenced page, MADV_COLLAPSE nothing.
    ///
    /// Upstream: the end of `__collapse_huge_page_isolate()`.
    pub(crate) fn finish_isolation(&self) -> Result<(), Fail> {
        if self.mode == CollapseMode::Khugepaged && self.referenced == 0 {
            Err(Fail::LackReferencedPage)
        } else {
            Ok(())
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

    /// Accounts `e`; fails with what stops the scan.
    pub(crate) fn add(&mut self, e: FileEntry) -> Result<(), Fail> {
        match e {
            FileEntry::Value { nr } => {
                self.swap = self.swap.saturating_add(nr);
                if self.swap > self.limits.max_swap {
                    return Err(Fail::ExceedSwapPte);
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
                    return Err(Fail::PteMappedHugepage);
                }
                if !lru {
                    return Err(Fail::PageLru);
                }
                // Someone else holds a reference (a GUP pin, say): the collapse would fail.
                if refs_beyond_expected != 1 {
                    return Err(Fail::PageCount);
                }
                self.present = self.present.saturating_add(nr);
            }
        }
        Ok(())
    }

    /// The verdict of a scan that went through the whole range: whether enough is present.
    pub(crate) fn finish(&self) -> Result<(), Fail> {
        let none = PTES_PER_PMD.saturating_sub(self.present);
        if none > self.limits.max_none {
            Err(Fail::ExceedNonePte)
        } else {
            Ok(())
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
    use crate::vocab::{AllocPolicy, Tunables, Userfault, PMD_ORDER, PTES_PER_PMD};

    /// Khugepaged's limits with no room at all.
    const STRICT: Tunables = Tunables {
        max_ptes_none: 0,
        max_ptes_swap: 0,
        max_ptes_shared: 0,
        alloc: AllocPolicy::Light,
    };

    fn tally(mode: CollapseMode, t: &Tunables) -> ScanTally {
        ScanTally::new(mode, mode.limits(t, PMD_ORDER, Userfault::Unarmed))
    }

    /// A PTE as a test states it.
    #[derive(Clone, Copy, Default)]
    struct Pte {
        none_or_zero: bool,
        non_present: Option<NonPresent>,
        uffd_wp: bool,
        no_page: bool,
        not_anon: bool,
        clean_lazyfree: bool,
        shared: bool,
    }

    impl PteView for Pte {
        fn none_or_zero(&self) -> bool {
            self.none_or_zero
        }
        fn non_present(&self) -> Option<NonPresent> {
            self.non_present
        }
        fn uffd_wp(&self) -> bool {
            self.uffd_wp
        }
        fn maps_page(&self) -> bool {
            !self.no_page
        }
        fn anon(&self) -> bool {
            !self.not_anon
        }
        fn clean_lazyfree(&self) -> bool {
            self.clean_lazyfree
        }
        fn shared(&self) -> bool {
            self.shared
        }
    }

    /// The shared checks of `pte` in `step` for khugepaged with no room in any limit, in a
    /// VMA of kind `vma`.
    fn check(pte: Pte, step: Step, vma: VmaKind) -> Result<EntryKind, Fail> {
        let mut s = tally(CollapseMode::Khugepaged, &STRICT);
        let kind = s.check_entry(&pte, step)?;
        if kind == EntryKind::Page {
            s.check_page(&pte, vma)?;
        }
        Ok(kind)
    }

    #[test]
    fn pte_checks_in_order_for_both_steps() {
        let page = Pte::default();
        let empty = Pte {
            none_or_zero: true,
            ..page
        };
        let swap = Pte {
            non_present: Some(NonPresent::Plain),
            ..page
        };
        // Every check fails: the first one in the order decides.
        let worst = Pte {
            uffd_wp: true,
            no_page: true,
            not_anon: true,
            clean_lazyfree: true,
            shared: true,
            ..page
        };
        for step in [Step::Scan, Step::Isolate] {
            assert_eq!(check(page, step, VmaKind::Normal), Ok(EntryKind::Page));
            assert_eq!(
                check(empty, step, VmaKind::Normal),
                Err(Fail::ExceedNonePte)
            );
            assert_eq!(check(worst, step, VmaKind::Normal), Err(Fail::PteUffd));
            let w = Pte {
                uffd_wp: false,
                ..worst
            };
            assert_eq!(check(w, step, VmaKind::Normal), Err(Fail::PageNull));
            let w = Pte {
                no_page: false,
                ..w
            };
            assert_eq!(check(w, step, VmaKind::Normal), Err(Fail::PageAnon));
            let w = Pte {
                not_anon: false,
                ..w
            };
            assert_eq!(check(w, step, VmaKind::Normal), Err(Fail::PageLazyfree));
            // A droppable VMA's lazily freed pages are collapsed.
            assert_eq!(
                check(w, step, VmaKind::Droppable),
                Err(Fail::ExceedSharedPte)
            );
            let w = Pte {
                clean_lazyfree: false,
                ..w
            };
            assert_eq!(check(w, step, VmaKind::Normal), Err(Fail::ExceedSharedPte));
        }
        // Only a swap entry tells the steps apart.
        assert_eq!(
            check(swap, Step::Scan, VmaKind::Normal),
            Err(Fail::ExceedSwapPte)
        );
        assert_eq!(
            check(swap, Step::Isolate, VmaKind::Normal),
            Err(Fail::PteNonPresent)
        );
        let uffd_swap = Pte {
            non_present: Some(NonPresent::Uffd),
            ..page
        };
        assert_eq!(
            check(uffd_swap, Step::Isolate, VmaKind::Normal),
            Err(Fail::PteNonPresent)
        );
        let mut s = tally(CollapseMode::MADVISE, &Tunables::DEFAULTS);
        assert_eq!(s.check_entry(&swap, Step::Scan), Ok(EntryKind::Swapped));
        assert_eq!(s.check_entry(&uffd_swap, Step::Scan), Err(Fail::PteUffd));
        assert_eq!(s.check_entry(&empty, Step::Scan), Ok(EntryKind::Empty));
        // MADV_COLLAPSE keeps lazily freed pages, and has no shared limit.
        let lazy_shared = Pte {
            clean_lazyfree: true,
            shared: true,
            ..page
        };
        assert_eq!(s.check_page(&lazy_shared, VmaKind::Normal), Ok(()));
    }

    #[test]
    fn madvise_full_range_collapses() {
        let mut s = tally(CollapseMode::MADVISE, &Tunables::DEFAULTS);
        for _ in 0..PTES_PER_PMD {
            s.present(|| false);
        }
        assert_eq!(s.finish(), Ok(()));
    }

    #[test]
    fn madvise_ignores_limits_and_references() {
        let mut s = tally(CollapseMode::MADVISE, &STRICT);
        for _ in 0..200 {
            assert_eq!(s.none_or_zero(), Ok(()));
            assert_eq!(s.not_present(NonPresent::Plain), Ok(()));
        }
        for _ in 0..112 {
            assert_eq!(s.shared(), Ok(()));
            s.present(|| false);
        }
        assert!(!s.wants_referenced());
        assert_eq!(s.finish(), Ok(()));
    }

    #[test]
    fn only_khugepaged_reads_the_heuristic_facts() {
        let t = &Tunables::DEFAULTS;
        assert!(!tally(CollapseMode::MADVISE, t).uses_heuristics());
        assert!(tally(CollapseMode::Khugepaged, t).uses_heuristics());
    }

    #[test]
    fn madvise_all_empty_still_collapses() {
        // MADV_COLLAPSE allows all 512 PTEs to be none.
        let mut s = tally(CollapseMode::MADVISE, &Tunables::DEFAULTS);
        for _ in 0..PTES_PER_PMD {
            assert_eq!(s.none_or_zero(), Ok(()));
        }
        assert_eq!(s.none_or_zero_count(), 512);
        assert_eq!(s.finish(), Ok(()));
    }

    #[test]
    fn uffd_armed_allows_no_holes() {
        let mode = CollapseMode::MADVISE;
        let mut s = ScanTally::new(
            mode,
            mode.limits(&Tunables::DEFAULTS, PMD_ORDER, Userfault::Armed),
        );
        assert_eq!(s.none_or_zero(), Err(Fail::ExceedNonePte));
    }

    #[test]
    fn uffd_swap_entry_stops_the_scan() {
        let mut s = tally(CollapseMode::MADVISE, &Tunables::DEFAULTS);
        assert_eq!(s.not_present(NonPresent::Uffd), Err(Fail::PteUffd));
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
        assert_eq!(s.none_or_zero(), Err(Fail::ExceedNonePte));

        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        for _ in 0..64 {
            assert_eq!(s.not_present(NonPresent::Plain), Ok(()));
        }
        assert_eq!(s.not_present(NonPresent::Plain), Err(Fail::ExceedSwapPte));

        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        for _ in 0..256 {
            assert_eq!(s.shared(), Ok(()));
        }
        assert_eq!(s.shared(), Err(Fail::ExceedSharedPte));
    }

    #[test]
    fn khugepaged_needs_references() {
        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        assert!(s.wants_referenced());
        for _ in 0..PTES_PER_PMD {
            s.present(|| false);
        }
        assert_eq!(s.finish(), Err(Fail::LackReferencedPage));

        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        s.present(|| true);
        for _ in 1..PTES_PER_PMD {
            s.present(|| false);
        }
        assert_eq!(s.referenced_count(), 1);
        assert_eq!(s.finish(), Ok(()));
    }

    #[test]
    fn khugepaged_swap_needs_half_referenced() {
        let mut s = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        assert_eq!(s.not_present(NonPresent::Plain), Ok(()));
        for _ in 0..255 {
            s.present(|| true);
        }
        assert_eq!(s.swapped_count(), 1);
        assert_eq!(s.finish(), Err(Fail::LackReferencedPage));
        s.present(|| true);
        assert_eq!(s.finish(), Ok(()));
    }

    #[test]
    fn isolation_needs_one_reference_in_khugepaged_only() {
        let mut k = tally(CollapseMode::Khugepaged, &Tunables::DEFAULTS);
        let mut m = tally(CollapseMode::MADVISE, &Tunables::DEFAULTS);
        for _ in 0..PTES_PER_PMD {
            k.present(|| false);
            m.present(|| false);
        }
        assert_eq!(k.finish_isolation(), Err(Fail::LackReferencedPage));
        assert_eq!(m.finish_isolation(), Ok(()));
        // MADV_COLLAPSE does not even ask (the young bits are a walk of the rmap).
        let mut asked = false;
        m.present(|| {
            asked = true;
            true
        });
        assert!(!asked);
        assert_eq!(m.referenced_count(), 0);
        k.present(|| true);
        assert_eq!(k.finish_isolation(), Ok(()));
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
        assert_eq!(k.none_or_zero(), Err(Fail::ExceedNonePte));
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
        let l = CollapseMode::MADVISE.limits(&Tunables::DEFAULTS, PMD_ORDER, Userfault::Unarmed);
        let mut t = FileTally::new(l);
        assert_eq!(t.add(folio(1)), Ok(()));
        for _ in 0..511 {
            assert_eq!(t.add(FileEntry::Value { nr: 1 }), Ok(()));
        }
        assert_eq!(t.finish(), Ok(()));
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
        assert_eq!(t.add(FileEntry::Value { nr: 1 }), Err(Fail::ExceedSwapPte));
        let mut t = FileTally::new(l);
        assert_eq!(t.add(folio(504)), Ok(()));
        assert_eq!(t.finish(), Ok(()));
        let mut t = FileTally::new(l);
        assert_eq!(t.add(folio(503)), Ok(()));
        assert_eq!(t.finish(), Err(Fail::ExceedNonePte));
    }

    #[test]
    fn file_folio_state_stops_the_scan() {
        let l = CollapseMode::MADVISE.limits(&Tunables::DEFAULTS, PMD_ORDER, Userfault::Unarmed);
        let stop = |pmd_order, lru, refs_beyond_expected| {
            FileTally::new(l).add(FileEntry::Folio {
                nr: 512,
                pmd_order,
                lru,
                refs_beyond_expected,
            })
        };
        assert_eq!(stop(true, true, 1), Err(Fail::PteMappedHugepage));
        assert_eq!(stop(false, false, 1), Err(Fail::PageLru));
        assert_eq!(stop(false, true, 2), Err(Fail::PageCount));
        assert_eq!(stop(false, true, 1), Ok(()));
    }

    #[test]
    fn in_place_needs_one_aligned_block_in_order() {
        // Order 2 (4 entries per candidate), folios at "addresses" 100 and 200.
        let mut p = InPlace::new(2);
        let feed = |p: &mut InPlace, from: usize, pages: &[Option<(usize, usize, u32)>]| {
            for (j, page) in pages.iter().enumerate() {
                p.see(from + j, || *page);
            }
        };
        // Entries 0-3: pages 4-7 of an order-4 folio: in place.
        feed(
            &mut p,
            0,
            &[
                Some((100, 4, 4)),
                Some((100, 5, 4)),
                Some((100, 6, 4)),
                Some((100, 7, 4)),
            ],
        );
        // Entries 4-7: the same pages out of order.
        feed(
            &mut p,
            4,
            &[
                Some((100, 4, 4)),
                Some((100, 6, 4)),
                Some((100, 5, 4)),
                Some((100, 7, 4)),
            ],
        );
        // Entries 8-11: a misaligned block.
        feed(
            &mut p,
            8,
            &[
                Some((100, 2, 4)),
                Some((100, 3, 4)),
                Some((100, 4, 4)),
                Some((100, 5, 4)),
            ],
        );
        // Entries 12-15: a folio of order 1 is too small, even aligned.
        feed(
            &mut p,
            12,
            &[
                Some((200, 0, 1)),
                Some((200, 1, 1)),
                Some((200, 2, 1)),
                Some((200, 3, 1)),
            ],
        );
        // Entries 16-19: two folios.
        feed(
            &mut p,
            16,
            &[
                Some((100, 0, 4)),
                Some((100, 1, 4)),
                Some((200, 2, 4)),
                Some((200, 3, 4)),
            ],
        );
        // Entries 20-23: a hole.
        feed(
            &mut p,
            20,
            &[
                Some((100, 8, 4)),
                None,
                Some((100, 10, 4)),
                Some((100, 11, 4)),
            ],
        );
        // Entries 24-27: a PMD-sized folio, aligned.
        feed(
            &mut p,
            24,
            &[
                Some((300, 24, 9)),
                Some((300, 25, 9)),
                Some((300, 26, 9)),
                Some((300, 27, 9)),
            ],
        );
        let covered: KVec<bool> = {
            let mut v = KVec::new();
            for first in (0..28).step_by(4) {
                let _ = v.push(p.covers(first), GFP_KERNEL);
            }
            v
        };
        assert_eq!(
            &covered[..],
            &[true, false, false, false, false, false, true]
        );
        assert!(!p.covers(1));
    }

    #[test]
    fn in_place_of_pmd_order_stops_at_the_first_break() {
        let nr = PTES_PER_PMD as usize;
        // Entries 0-2 map pages 0-2 of a PMD-order folio: a later entry still matters.
        let mut p = InPlace::new(PMD_ORDER);
        for i in 0..3 {
            assert!(p.see(i, || Some((100, i, PMD_ORDER))));
        }
        // Entry 3 maps another folio: nothing later in the table can be in place.
        assert!(!p.see(3, || Some((200, 3, PMD_ORDER))));
        assert!(!p.covers(0));
        // The whole table in order: in place, and every entry mattered.
        let mut p = InPlace::new(PMD_ORDER);
        assert!((0..nr).all(|i| p.see(i, || Some((100, i, PMD_ORDER)))));
        assert!(p.covers(0));
        // A small folio at entry 0 breaks it at once.
        let mut p = InPlace::new(PMD_ORDER);
        assert!(!p.see(0, || Some((100, 0, 0))));
        // For a smaller order, the next candidate can still be in place.
        let mut p = InPlace::new(2);
        assert!(p.see(0, || Some((100, 0, 0))));
        assert!(p.see(1, || None));
    }
}
