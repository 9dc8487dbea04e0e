// SPDX-License-Identifier: GPL-2.0

//! The result of a collapse attempt ([`Attempt`]: [`Collapsed`] or [`Fail`]) and what the range
//! loop does with it.
//!
//! This file is pure logic: no `unsafe`, no `bindings`. The discriminants of [`Fail`] and
//! [`Collapsed`] are checked against the C `enum scan_result` in the crate root.
//!
//! C header: [`mm/khugepaged_internal.h`](srctree/mm/khugepaged_internal.h)

use kernel::{
    error::{code, Error},
    prelude::*,
};

/// Why one collapse attempt of one range did not collapse it.
///
/// Every variant mirrors the C `enum scan_result` value of the same name and number (`ffi/mod.rs`
/// asserts each), so a failure crosses the C boundary and reaches the `huge_memory` tracepoints
/// unchanged. `SCAN_SUCCEED` is not a failure: it is [`Collapsed::Mapped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Fail {
    /// Generic failure (`SCAN_FAIL`).
    Other = 0,
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
    AllocHugePage = 24,
    /// The huge page could not be charged to the memory cgroup.
    CgroupCharge = 25,
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
    /// The range needs something a request that must not block (`MADV_F_COLLAPSE_LIGHT`)
    /// cannot wait for: reclaim or compaction for the new folio, a swap-in, a page cache read,
    /// writeback, or a page or invalidate lock.
    WouldBlock = 32,
}

/// What a collapse attempt that did its work leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Collapsed {
    /// The range is collapsed and mapped: by the PMD, or by the PTEs of the new folio of a
    /// smaller order (`SCAN_SUCCEED`).
    Mapped = 1,
    /// The range is collapsed in the page cache, into one PMD-sized folio still mapped by PTEs:
    /// MADV_COLLAPSE maps it with the PMD next (`SCAN_PTE_MAPPED_HUGEPAGE` from
    /// `collapse_file()`).
    InPageCache = 9,
}

/// The result of one collapse attempt of one range.
pub(crate) type Attempt = Result<Collapsed, Fail>;

/// A result with a C `enum scan_result` code: what the `huge_memory` tracepoints record and
/// the counter it is counted under.
pub(crate) trait ScanCode {
    /// The `enum scan_result` value.
    fn code(&self) -> u32;
}

impl ScanCode for Fail {
    fn code(&self) -> u32 {
        *self as u32
    }
}

impl ScanCode for Collapsed {
    fn code(&self) -> u32 {
        *self as u32
    }
}

/// A step that succeeded and has nothing to report but its success.
impl ScanCode for () {
    fn code(&self) -> u32 {
        Collapsed::Mapped as u32
    }
}

impl<T: ScanCode> ScanCode for Result<T, Fail> {
    fn code(&self) -> u32 {
        match self {
            Ok(done) => done.code(),
            Err(fail) => fail.code(),
        }
    }
}

/// The number of `enum scan_result` codes, and of counters per caller.
pub(crate) const CODES: usize = Fail::WouldBlock as usize + 1;

/// The name under which each code is counted in sysfs, by code.
pub(crate) const NAMES: [&str; CODES] = [
    "fail",
    "succeed",
    "no_pte_table",
    "pmd_mapped",
    "exceed_none_pte",
    "exceed_swap_pte",
    "exceed_shared_pte",
    "pte_non_present",
    "pte_uffd",
    "pte_mapped_hugepage",
    "lack_referenced_page",
    "page_null",
    "scan_abort",
    "page_count",
    "page_lru",
    "page_lock",
    "page_anon",
    "page_lazyfree",
    "page_compound",
    "any_process",
    "vma_null",
    "vma_check",
    "address_range",
    "del_page_lru",
    "alloc_huge_page_fail",
    "cgroup_charge_fail",
    "truncated",
    "page_has_private",
    "store_failed",
    "copy_mc",
    "page_filled",
    "page_dirty_or_writeback",
    "would_block",
];

impl Fail {
    /// All failures, in numeric order (for the KUnit cases).
    #[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
    pub(crate) const ALL: [Fail; CODES - 1] = [
        Fail::Other,
        Fail::NoPteTable,
        Fail::PmdMapped,
        Fail::ExceedNonePte,
        Fail::ExceedSwapPte,
        Fail::ExceedSharedPte,
        Fail::PteNonPresent,
        Fail::PteUffd,
        Fail::PteMappedHugepage,
        Fail::LackReferencedPage,
        Fail::PageNull,
        Fail::ScanAbort,
        Fail::PageCount,
        Fail::PageLru,
        Fail::PageLock,
        Fail::PageAnon,
        Fail::PageLazyfree,
        Fail::PageCompound,
        Fail::AnyProcess,
        Fail::VmaNull,
        Fail::VmaCheck,
        Fail::AddressRange,
        Fail::DelPageLru,
        Fail::AllocHugePage,
        Fail::CgroupCharge,
        Fail::Truncated,
        Fail::PageHasPrivate,
        Fail::StoreFailed,
        Fail::CopyMc,
        Fail::PageFilled,
        Fail::PageDirtyOrWriteback,
        Fail::WouldBlock,
    ];

    /// The errno MADV_COLLAPSE reports when this was the last failure of a request.
    ///
    /// MADV_COLLAPSE departs from madvise(2) conventions to tell the caller what kind of fallback
    /// makes sense: `ENOMEM` (no memory), `EBUSY` (memcg limit, or userfaultfd holes), `EAGAIN`
    /// (transient page state, worth retrying) and `EINVAL` for everything intrinsic to the range.
    /// The mapping is upstream's `madvise_collapse_errno()`.
    pub(crate) fn errno(self) -> Error {
        match self {
            Fail::AllocHugePage => code::ENOMEM,
            Fail::CgroupCharge | Fail::ExceedNonePte => code::EBUSY,
            Fail::PageCount
            | Fail::PageLock
            | Fail::PageLru
            | Fail::DelPageLru
            | Fail::PageFilled
            | Fail::PageHasPrivate
            | Fail::PageDirtyOrWriteback
            | Fail::WouldBlock => code::EAGAIN,
            _ => code::EINVAL,
        }
    }
}

/// What the MADV_COLLAPSE range loop does after a PMD range ended with `attempt`.
pub(crate) fn verdict(attempt: Attempt) -> Verdict {
    match attempt {
        Ok(Collapsed::Mapped) | Err(Fail::PmdMapped) => Verdict::Huge,
        // The whitelist of failures after which the next PMD range is still worth trying.
        Err(
            Fail::NoPteTable
            | Fail::PteNonPresent
            | Fail::PteUffd
            | Fail::LackReferencedPage
            | Fail::PageNull
            | Fail::PageCount
            | Fail::PageLock
            | Fail::PageCompound
            | Fail::PageLru
            | Fail::DelPageLru
            // Not upstream's (it has no such failure): the next range may need no wait.
            | Fail::WouldBlock,
        ) => Verdict::Continue,
        _ => Verdict::Abort,
    }
}

/// What the MADV_COLLAPSE range loop does with one PMD range's result.
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
    last_fail: Fail,
}

impl RangeTally {
    /// Starts the account of a request over `ranges` PMD ranges.
    pub(crate) const fn new(ranges: usize) -> Self {
        Self {
            ranges,
            huge: 0,
            last_fail: Fail::Other,
        }
    }

    /// Records one range's `attempt`; returns `false` when the loop must stop.
    pub(crate) fn record(&mut self, attempt: Attempt) -> bool {
        // Only `Collapsed::InPageCache` can be neither huge nor a failure: a collapse that
        // was not finished, which C would report as its code.
        let fail = attempt.err().unwrap_or(Fail::PteMappedHugepage);
        match verdict(attempt) {
            Verdict::Huge => {
                self.huge += 1;
                true
            }
            Verdict::Continue => {
                self.last_fail = fail;
                true
            }
            Verdict::Abort => {
                self.last_fail = fail;
                false
            }
        }
    }

    /// Records a failure that ends the request before the next range was tried (for example,
    /// the VMA changed while the mmap lock was dropped).
    pub(crate) fn abort(&mut self, fail: Fail) {
        self.last_fail = fail;
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
        assert_eq!(Collapsed::Mapped.code(), 1);
        let codes = Fail::ALL.iter().map(ScanCode::code);
        let expect = (0..CODES as u32).filter(|&c| c != Collapsed::Mapped.code());
        assert!(codes.eq(expect));
        assert_eq!(
            Collapsed::InPageCache.code(),
            Fail::PteMappedHugepage.code()
        );
        assert_eq!(NAMES[Collapsed::Mapped as usize], "succeed");
        assert_eq!(NAMES[Fail::Other as usize], "fail");
    }

    #[test]
    fn codes_of_results() {
        assert_eq!(Ok::<(), Fail>(()).code(), 1);
        assert_eq!(Err::<(), Fail>(Fail::PageLock).code(), 15);
        assert_eq!(Ok::<Collapsed, Fail>(Collapsed::InPageCache).code(), 9);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in NAMES.iter().enumerate() {
            for b in &NAMES[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn errno_matches_madvise_collapse_errno() {
        let expect = |f: Fail| match f {
            Fail::AllocHugePage => code::ENOMEM,
            Fail::CgroupCharge | Fail::ExceedNonePte => code::EBUSY,
            Fail::PageCount
            | Fail::PageLock
            | Fail::PageLru
            | Fail::DelPageLru
            | Fail::PageFilled
            | Fail::PageHasPrivate
            | Fail::PageDirtyOrWriteback
            | Fail::WouldBlock => code::EAGAIN,
            _ => code::EINVAL,
        };
        let mut eagain = 0;
        for f in Fail::ALL {
            assert_eq!(f.errno(), expect(f));
            if f.errno() == code::EAGAIN {
                eagain += 1;
            }
        }
        assert_eq!(eagain, 8);
        assert_eq!(Fail::Other.errno(), code::EINVAL);
        assert_eq!(Fail::ScanAbort.errno(), code::EINVAL);
        assert_eq!(Fail::CopyMc.errno(), code::EINVAL);
    }

    #[test]
    fn verdicts_match_the_upstream_whitelist() {
        let cont = [
            Fail::NoPteTable,
            Fail::PteNonPresent,
            Fail::PteUffd,
            Fail::LackReferencedPage,
            Fail::PageNull,
            Fail::PageCount,
            Fail::PageLock,
            Fail::PageCompound,
            Fail::PageLru,
            Fail::DelPageLru,
            Fail::WouldBlock,
        ];
        for f in Fail::ALL {
            let want = if f == Fail::PmdMapped {
                Verdict::Huge
            } else if cont.contains(&f) {
                Verdict::Continue
            } else {
                Verdict::Abort
            };
            assert_eq!(verdict(Err(f)), want);
        }
        assert_eq!(verdict(Ok(Collapsed::Mapped)), Verdict::Huge);
        assert_eq!(verdict(Ok(Collapsed::InPageCache)), Verdict::Abort);
    }

    #[test]
    fn tally_all_huge_is_success() {
        let mut t = RangeTally::new(3);
        assert!(t.record(Ok(Collapsed::Mapped)));
        assert!(t.record(Err(Fail::PmdMapped)));
        assert!(t.record(Ok(Collapsed::Mapped)));
        assert_eq!(t.finish(), Ok(()));
    }

    #[test]
    fn tally_empty_request_is_success() {
        assert_eq!(RangeTally::new(0).finish(), Ok(()));
    }

    #[test]
    fn tally_reports_last_failure_after_continuing() {
        let mut t = RangeTally::new(3);
        assert!(t.record(Err(Fail::PageLock)));
        assert!(t.record(Ok(Collapsed::Mapped)));
        assert!(t.record(Err(Fail::NoPteTable)));
        // The last failure wins: NO_PTE_TABLE maps to EINVAL, not PAGE_LOCK's EAGAIN.
        assert_eq!(t.finish(), Err(code::EINVAL));
    }

    #[test]
    fn tally_stops_on_abort() {
        let mut t = RangeTally::new(4);
        assert!(t.record(Ok(Collapsed::Mapped)));
        assert!(!t.record(Err(Fail::AllocHugePage)));
        assert_eq!(t.finish(), Err(code::ENOMEM));
        let mut t = RangeTally::new(1);
        assert!(!t.record(Err(Fail::CgroupCharge)));
        assert_eq!(t.finish(), Err(code::EBUSY));
    }

    #[test]
    fn tally_clamped_ranges() {
        // The VMA shrank to two ranges while the lock was dropped; both are huge.
        let mut t = RangeTally::new(4);
        assert!(t.record(Ok(Collapsed::Mapped)));
        assert!(t.record(Ok(Collapsed::Mapped)));
        t.clamp_ranges(2);
        assert_eq!(t.finish(), Ok(()));
        t.clamp_ranges(5);
        assert_eq!(t.finish(), Ok(()));
    }

    #[test]
    fn tally_revalidation_abort() {
        let mut t = RangeTally::new(2);
        assert!(t.record(Ok(Collapsed::Mapped)));
        t.abort(Fail::VmaNull);
        assert_eq!(t.finish(), Err(code::EINVAL));
    }
}
