// SPDX-License-Identifier: GPL-2.0

//! Outcomes of a collapse attempt and what the range loop does with them.
//!
//! This file is pure logic: no `unsafe`, no `bindings`. The discriminants of [`Outcome`] are
//! checked against the C `enum scan_result` in the crate root.
//!
//! C header: [`mm/khugepaged_internal.h`](srctree/mm/khugepaged_internal.h)

use kernel::{
    error::{code, Error},
    prelude::*,
};

/// The outcome of one collapse attempt of one PMD-sized range.
///
/// Every variant mirrors the C `enum scan_result` value of the same name and number (`ffi/mod.rs`
/// asserts each), so outcomes cross the C boundary and reach the `huge_memory`
/// tracepoints unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Outcome {
    /// Generic failure.
    Fail = 0,
    /// The range was collapsed.
    Succeed = 1,
    /// There is no page table under the PMD.
    NoPteTable = 2,
    /// The range is already mapped by a PMD.
    PmdMapped = 3,
    /// Too many none or zero-page PTEs.
    ExceedNonePte = 4,
    /// Too many swap PTEs.
    ExceedSwapPte = 5,
    /// Too many PTEs map pages shared with another process.
    ExceedSharedPte = 6,
    /// A PTE is neither present nor swap.
    PteNonPresent = 7,
    /// A PTE is userfaultfd-protected.
    PteUffd = 8,
    /// The range is already backed by a PMD-sized folio mapped by PTEs.
    PteMappedHugepage = 9,
    /// Not enough recently referenced pages.
    LackReferencedPage = 10,
    /// A PTE maps no normal page.
    PageNull = 11,
    /// The scan was aborted (node distance).
    ScanAbort = 12,
    /// A page has an unexpected reference count.
    PageCount = 13,
    /// A page is not on an LRU list.
    PageLru = 14,
    /// A page is locked.
    PageLock = 15,
    /// A page is not anonymous.
    PageAnon = 16,
    /// A page is lazily freed.
    PageLazyfree = 17,
    /// A compound page could not be handled.
    PageCompound = 18,
    /// The process is exiting or has THP disabled.
    AnyProcess = 19,
    /// There is no VMA at the address any more.
    VmaNull = 20,
    /// The VMA is not eligible.
    VmaCheck = 21,
    /// The address range is not suitable.
    AddressRange = 22,
    /// A page could not be removed from its LRU list.
    DelPageLru = 23,
    /// The huge page could not be allocated.
    AllocHugePageFail = 24,
    /// The huge page could not be charged to the memory cgroup.
    CgroupChargeFail = 25,
    /// The file was truncated.
    Truncated = 26,
    /// A page has private data that could not be released.
    PageHasPrivate = 27,
    /// The page cache store failed.
    StoreFailed = 28,
    /// The copy hit a machine check.
    CopyMc = 29,
    /// A hole was filled concurrently.
    PageFilled = 30,
    /// A page is dirty or under writeback.
    PageDirtyOrWriteback = 31,
}

impl Outcome {
    /// Number of outcomes, and of counters per caller.
    pub(crate) const COUNT: usize = Outcome::PageDirtyOrWriteback as usize + 1;

    /// All outcomes, in numeric order.
    pub(crate) const ALL: [Outcome; Self::COUNT] = [
        Outcome::Fail,
        Outcome::Succeed,
        Outcome::NoPteTable,
        Outcome::PmdMapped,
        Outcome::ExceedNonePte,
        Outcome::ExceedSwapPte,
        Outcome::ExceedSharedPte,
        Outcome::PteNonPresent,
        Outcome::PteUffd,
        Outcome::PteMappedHugepage,
        Outcome::LackReferencedPage,
        Outcome::PageNull,
        Outcome::ScanAbort,
        Outcome::PageCount,
        Outcome::PageLru,
        Outcome::PageLock,
        Outcome::PageAnon,
        Outcome::PageLazyfree,
        Outcome::PageCompound,
        Outcome::AnyProcess,
        Outcome::VmaNull,
        Outcome::VmaCheck,
        Outcome::AddressRange,
        Outcome::DelPageLru,
        Outcome::AllocHugePageFail,
        Outcome::CgroupChargeFail,
        Outcome::Truncated,
        Outcome::PageHasPrivate,
        Outcome::StoreFailed,
        Outcome::CopyMc,
        Outcome::PageFilled,
        Outcome::PageDirtyOrWriteback,
    ];

    /// The name under which the outcome is counted in sysfs.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Outcome::Fail => "fail",
            Outcome::Succeed => "succeed",
            Outcome::NoPteTable => "no_pte_table",
            Outcome::PmdMapped => "pmd_mapped",
            Outcome::ExceedNonePte => "exceed_none_pte",
            Outcome::ExceedSwapPte => "exceed_swap_pte",
            Outcome::ExceedSharedPte => "exceed_shared_pte",
            Outcome::PteNonPresent => "pte_non_present",
            Outcome::PteUffd => "pte_uffd",
            Outcome::PteMappedHugepage => "pte_mapped_hugepage",
            Outcome::LackReferencedPage => "lack_referenced_page",
            Outcome::PageNull => "page_null",
            Outcome::ScanAbort => "scan_abort",
            Outcome::PageCount => "page_count",
            Outcome::PageLru => "page_lru",
            Outcome::PageLock => "page_lock",
            Outcome::PageAnon => "page_anon",
            Outcome::PageLazyfree => "page_lazyfree",
            Outcome::PageCompound => "page_compound",
            Outcome::AnyProcess => "any_process",
            Outcome::VmaNull => "vma_null",
            Outcome::VmaCheck => "vma_check",
            Outcome::AddressRange => "address_range",
            Outcome::DelPageLru => "del_page_lru",
            Outcome::AllocHugePageFail => "alloc_huge_page_fail",
            Outcome::CgroupChargeFail => "cgroup_charge_fail",
            Outcome::Truncated => "truncated",
            Outcome::PageHasPrivate => "page_has_private",
            Outcome::StoreFailed => "store_failed",
            Outcome::CopyMc => "copy_mc",
            Outcome::PageFilled => "page_filled",
            Outcome::PageDirtyOrWriteback => "page_dirty_or_writeback",
        }
    }

    /// The errno MADV_COLLAPSE reports when this was the last failure of a request.
    ///
    /// MADV_COLLAPSE departs from madvise(2) conventions to tell the caller what kind of fallback
    /// makes sense: `ENOMEM` (no memory), `EBUSY` (memcg limit, or userfaultfd holes), `EAGAIN`
    /// (transient page state, worth retrying) and `EINVAL` for everything intrinsic to the range.
    /// The mapping is upstream's `madvise_collapse_errno()`.
    pub(crate) fn errno(self) -> Error {
        match self {
            Outcome::AllocHugePageFail => code::ENOMEM,
            Outcome::CgroupChargeFail | Outcome::ExceedNonePte => code::EBUSY,
            Outcome::PageCount
            | Outcome::PageLock
            | Outcome::PageLru
            | Outcome::DelPageLru
            | Outcome::PageFilled
            | Outcome::PageHasPrivate
            | Outcome::PageDirtyOrWriteback => code::EAGAIN,
            _ => code::EINVAL,
        }
    }

    /// What the MADV_COLLAPSE range loop does after a PMD range ended with this outcome.
    pub(crate) fn verdict(self) -> Verdict {
        match self {
            Outcome::Succeed | Outcome::PmdMapped => Verdict::Huge,
            // The whitelist of failures after which the next PMD range is still worth trying.
            Outcome::NoPteTable
            | Outcome::PteNonPresent
            | Outcome::PteUffd
            | Outcome::LackReferencedPage
            | Outcome::PageNull
            | Outcome::PageCount
            | Outcome::PageLock
            | Outcome::PageCompound
            | Outcome::PageLru
            | Outcome::DelPageLru => Verdict::Continue,
            _ => Verdict::Abort,
        }
    }
}

/// What the MADV_COLLAPSE range loop does with one PMD range's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The range is PMD-mapped now (collapsed, or it already was).
    Huge,
    /// The range failed, but the next one is still tried.
    Continue,
    /// The range failed and the request stops here.
    Abort,
}

/// The running account of one MADV_COLLAPSE request over its PMD ranges.
///
/// The request succeeds iff every PMD range ends up PMD-mapped; otherwise it reports the errno of
/// the last failure, whether the loop went on after it or stopped there.
#[derive(Debug)]
pub(crate) struct RangeTally {
    ranges: usize,
    huge: usize,
    last_fail: Outcome,
}

impl RangeTally {
    /// Starts the account of a request over `ranges` PMD ranges.
    pub(crate) const fn new(ranges: usize) -> Self {
        Self {
            ranges,
            huge: 0,
            last_fail: Outcome::Fail,
        }
    }

    /// Records one range's outcome; returns `false` when the loop must stop.
    pub(crate) fn record(&mut self, outcome: Outcome) -> bool {
        match outcome.verdict() {
            Verdict::Huge => {
                self.huge += 1;
                true
            }
            Verdict::Continue => {
                self.last_fail = outcome;
                true
            }
            Verdict::Abort => {
                self.last_fail = outcome;
                false
            }
        }
    }

    /// Records a failure that ends the request before the next range was tried (for example,
    /// the VMA changed while the mmap lock was dropped).
    pub(crate) fn abort(&mut self, outcome: Outcome) {
        self.last_fail = outcome;
    }

    /// The number of PMD ranges the request covers now.
    pub(crate) fn ranges(&self) -> usize {
        self.ranges
    }

    /// The number of ranges the request covers, clamped when the VMA shrank under it.
    pub(crate) fn clamp_ranges(&mut self, ranges: usize) {
        self.ranges = self.ranges.min(ranges);
    }

    /// The result of the whole request.
    pub(crate) fn finish(&self) -> Result {
        if self.huge == self.ranges {
            Ok(())
        } else {
            Err(self.last_fail.errno())
        }
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kunit_tests(thp_collapse_outcome)]
mod tests {
    use super::*;

    #[test]
    fn numbering_is_dense() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in Outcome::ALL.iter().enumerate() {
            for b in &Outcome::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn errno_matches_madvise_collapse_errno() {
        let expect = |o: Outcome| match o {
            Outcome::AllocHugePageFail => code::ENOMEM,
            Outcome::CgroupChargeFail | Outcome::ExceedNonePte => code::EBUSY,
            Outcome::PageCount
            | Outcome::PageLock
            | Outcome::PageLru
            | Outcome::DelPageLru
            | Outcome::PageFilled
            | Outcome::PageHasPrivate
            | Outcome::PageDirtyOrWriteback => code::EAGAIN,
            _ => code::EINVAL,
        };
        let mut eagain = 0;
        for o in Outcome::ALL {
            assert_eq!(o.errno(), expect(o));
            if o.errno() == code::EAGAIN {
                eagain += 1;
            }
        }
        assert_eq!(eagain, 7);
        assert_eq!(Outcome::Fail.errno(), code::EINVAL);
        assert_eq!(Outcome::ScanAbort.errno(), code::EINVAL);
        assert_eq!(Outcome::CopyMc.errno(), code::EINVAL);
    }

    #[test]
    fn verdicts_match_the_upstream_whitelist() {
        let cont = [
            Outcome::NoPteTable,
            Outcome::PteNonPresent,
            Outcome::PteUffd,
            Outcome::LackReferencedPage,
            Outcome::PageNull,
            Outcome::PageCount,
            Outcome::PageLock,
            Outcome::PageCompound,
            Outcome::PageLru,
            Outcome::DelPageLru,
        ];
        for o in Outcome::ALL {
            let want = if o == Outcome::Succeed || o == Outcome::PmdMapped {
                Verdict::Huge
            } else if cont.contains(&o) {
                Verdict::Continue
            } else {
                Verdict::Abort
            };
            assert_eq!(o.verdict(), want);
        }
    }

    #[test]
    fn tally_all_huge_is_success() {
        let mut t = RangeTally::new(3);
        assert!(t.record(Outcome::Succeed));
        assert!(t.record(Outcome::PmdMapped));
        assert!(t.record(Outcome::Succeed));
        assert_eq!(t.finish(), Ok(()));
    }

    #[test]
    fn tally_empty_request_is_success() {
        assert_eq!(RangeTally::new(0).finish(), Ok(()));
    }

    #[test]
    fn tally_reports_last_failure_after_continuing() {
        let mut t = RangeTally::new(3);
        assert!(t.record(Outcome::PageLock));
        assert!(t.record(Outcome::Succeed));
        assert!(t.record(Outcome::NoPteTable));
        // The last failure wins: NO_PTE_TABLE maps to EINVAL, not PAGE_LOCK's EAGAIN.
        assert_eq!(t.finish(), Err(code::EINVAL));
    }

    #[test]
    fn tally_stops_on_abort() {
        let mut t = RangeTally::new(4);
        assert!(t.record(Outcome::Succeed));
        assert!(!t.record(Outcome::AllocHugePageFail));
        assert_eq!(t.finish(), Err(code::ENOMEM));
        let mut t = RangeTally::new(1);
        assert!(!t.record(Outcome::CgroupChargeFail));
        assert_eq!(t.finish(), Err(code::EBUSY));
    }

    #[test]
    fn tally_clamped_ranges() {
        // The VMA shrank to two ranges while the lock was dropped; both are huge.
        let mut t = RangeTally::new(4);
        assert!(t.record(Outcome::Succeed));
        assert!(t.record(Outcome::Succeed));
        t.clamp_ranges(2);
        assert_eq!(t.finish(), Ok(()));
        t.clamp_ranges(5);
        assert_eq!(t.finish(), Ok(()));
    }

    #[test]
    fn tally_revalidation_abort() {
        let mut t = RangeTally::new(2);
        assert!(t.record(Outcome::Succeed));
        t.abort(Outcome::VmaNull);
        assert_eq!(t.finish(), Err(code::EINVAL));
    }
}
