// SPDX-License-Identifier: GPL-2.0

//! The crate's only raw calls into C: what `kernel::mm` has no abstraction for because only
//! the collapse needs it.
//!
//! - [`PteFacts`]: one PTE of a candidate and the folio it maps, read in one call
//!   (`thp_collapse_read_ptes()` in `mm/thp_collapse_glue.c`, a batch at a time);
//! - [`isolate`]: the folio isolation protocol, a batch of folios per call;
//! - [`page_cache`]: a file's page cache as the collapse walks, locks and replaces it;
//! - [`trace`]: upstream's collapse tracepoints (`kernel::declare_trace!`);
//! - vmstat and memcg events, the khugepaged tunables, LRU drains and rescheduling;
//! - the mapping between [`Fail`], [`Collapsed`] and C's `enum scan_result`.
//!
//! The rest of the crate works through the guards of `kernel::mm` (`mmap_lock`, `anon_vma`,
//! `folio`, `pgtable`, `thp`) and these functions.
//!
//! C headers: [`mm/khugepaged_internal.h`](srctree/mm/khugepaged_internal.h),
//! [`include/linux/vm_event_item.h`](srctree/include/linux/vm_event_item.h)

#[path = "isolate.rs"]
pub(crate) mod isolate;
#[path = "page_cache.rs"]
pub(crate) mod page_cache;

use crate::{
    outcome::{Collapsed, Fail, ScanCode, CODES},
    plan::Occupied,
    scan::{NonPresent, PteView, ScanTally},
    vocab::{AllocPolicy, Caller, Effort, RequestFlags, Tunables, PMD_ORDER},
};
use core::{mem::MaybeUninit, ptr::NonNull};
use kernel::{
    bindings,
    mm::{folio::NewFolio, pgtable::LockedPtes, virt::VmaRef, Mm},
    page::PAGE_SIZE,
};

// The Rust results and callers mirror the C enums one to one: every value, and the counts.
const _: () = {
    assert!(Fail::Other as u32 == bindings::scan_result_SCAN_FAIL);
    assert!(Collapsed::Mapped as u32 == bindings::scan_result_SCAN_SUCCEED);
    assert!(Collapsed::InPageCache as u32 == bindings::scan_result_SCAN_PTE_MAPPED_HUGEPAGE);
    assert!(Fail::NoPteTable as u32 == bindings::scan_result_SCAN_NO_PTE_TABLE);
    assert!(Fail::PmdMapped as u32 == bindings::scan_result_SCAN_PMD_MAPPED);
    assert!(Fail::ExceedNonePte as u32 == bindings::scan_result_SCAN_EXCEED_NONE_PTE);
    assert!(Fail::ExceedSwapPte as u32 == bindings::scan_result_SCAN_EXCEED_SWAP_PTE);
    assert!(Fail::ExceedSharedPte as u32 == bindings::scan_result_SCAN_EXCEED_SHARED_PTE);
    assert!(Fail::PteNonPresent as u32 == bindings::scan_result_SCAN_PTE_NON_PRESENT);
    assert!(Fail::PteUffd as u32 == bindings::scan_result_SCAN_PTE_UFFD);
    assert!(Fail::PteMappedHugepage as u32 == bindings::scan_result_SCAN_PTE_MAPPED_HUGEPAGE);
    assert!(Fail::LackReferencedPage as u32 == bindings::scan_result_SCAN_LACK_REFERENCED_PAGE);
    assert!(Fail::PageNull as u32 == bindings::scan_result_SCAN_PAGE_NULL);
    assert!(Fail::ScanAbort as u32 == bindings::scan_result_SCAN_SCAN_ABORT);
    assert!(Fail::PageCount as u32 == bindings::scan_result_SCAN_PAGE_COUNT);
    assert!(Fail::PageLru as u32 == bindings::scan_result_SCAN_PAGE_LRU);
    assert!(Fail::PageLock as u32 == bindings::scan_result_SCAN_PAGE_LOCK);
    assert!(Fail::PageAnon as u32 == bindings::scan_result_SCAN_PAGE_ANON);
    assert!(Fail::PageLazyfree as u32 == bindings::scan_result_SCAN_PAGE_LAZYFREE);
    assert!(Fail::PageCompound as u32 == bindings::scan_result_SCAN_PAGE_COMPOUND);
    assert!(Fail::AnyProcess as u32 == bindings::scan_result_SCAN_ANY_PROCESS);
    assert!(Fail::VmaNull as u32 == bindings::scan_result_SCAN_VMA_NULL);
    assert!(Fail::VmaCheck as u32 == bindings::scan_result_SCAN_VMA_CHECK);
    assert!(Fail::AddressRange as u32 == bindings::scan_result_SCAN_ADDRESS_RANGE);
    assert!(Fail::DelPageLru as u32 == bindings::scan_result_SCAN_DEL_PAGE_LRU);
    assert!(Fail::AllocHugePage as u32 == bindings::scan_result_SCAN_ALLOC_HUGE_PAGE_FAIL);
    assert!(Fail::CgroupCharge as u32 == bindings::scan_result_SCAN_CGROUP_CHARGE_FAIL);
    assert!(Fail::Truncated as u32 == bindings::scan_result_SCAN_TRUNCATED);
    assert!(Fail::PageHasPrivate as u32 == bindings::scan_result_SCAN_PAGE_HAS_PRIVATE);
    assert!(Fail::StoreFailed as u32 == bindings::scan_result_SCAN_STORE_FAILED);
    assert!(Fail::CopyMc as u32 == bindings::scan_result_SCAN_COPY_MC);
    assert!(Fail::PageFilled as u32 == bindings::scan_result_SCAN_PAGE_FILLED);
    assert!(
        Fail::PageDirtyOrWriteback as u32 == bindings::scan_result_SCAN_PAGE_DIRTY_OR_WRITEBACK
    );
    assert!(Fail::WouldBlock as u32 == bindings::scan_result_SCAN_WOULD_BLOCK);
    assert!(CODES as u32 == bindings::scan_result_SCAN_WOULD_BLOCK + 1);
    assert!(RequestFlags::LIMITS == bindings::MADV_F_COLLAPSE_LIMITS);
    assert!(RequestFlags::DEFRAG == bindings::MADV_F_COLLAPSE_DEFRAG);
    assert!(RequestFlags::LIGHT == bindings::MADV_F_COLLAPSE_LIGHT);
    assert!(RequestFlags::ORDER_SHIFT == bindings::MADV_F_COLLAPSE_ORDER_SHIFT);
    assert!(RequestFlags::ORDER_MASK == bindings::MADV_F_COLLAPSE_ORDER_MASK);
    assert!(Caller::Madvise as u32 == bindings::collapse_caller_COLLAPSE_CALLER_MADVISE);
    assert!(
        Caller::ProcessMadvise as u32 == bindings::collapse_caller_COLLAPSE_CALLER_PROCESS_MADVISE
    );
    assert!(Caller::Khugepaged as u32 == bindings::collapse_caller_COLLAPSE_CALLER_KHUGEPAGED);
    assert!(Caller::COUNT as u32 == bindings::collapse_caller_NR_COLLAPSE_CALLERS);
};

/// A `struct page` of the memory map (always valid: the memory map is never freed while the
/// page can be reached; what it describes is only stable under the locks its user holds).
pub(crate) type PagePtr = NonNull<bindings::page>;

/// A `struct folio`, with the same caveat as [`PagePtr`].
pub(crate) type FolioPtr = NonNull<bindings::folio>;

/// Converts a result to the C `enum scan_result`.
pub(crate) fn to_scan_result(result: &impl ScanCode) -> bindings::scan_result {
    result.code()
}

/// What one PTE of a collapse candidate maps, as [`for_each_pte`] reads it.
///
/// The predicates of a PTE and its folio are static inlines in C: read one by one, each would
/// be an out-of-line `rust_helper_*` call, a dozen per PTE, 512 times per PMD. The C side only
/// reads; what the facts mean is decided by the caller.
#[repr(transparent)]
pub(crate) struct PteFacts(bindings::thp_collapse_pte);

/// The facts as the scan and the isolation's checks read them ([`PteView`]); the one
/// definition of each.
impl PteView for PteFacts {
    #[inline]
    fn none_or_zero(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_PTE_NONE_OR_ZERO)
    }
    #[inline]
    fn non_present(&self) -> Option<NonPresent> {
        if !self.has(bindings::thp_collapse_pte_flags_THP_PTE_NON_PRESENT) {
            return None;
        }
        let uffd = self.has(bindings::thp_collapse_pte_flags_THP_PTE_SWP_UFFD);
        Some(if uffd {
            NonPresent::Uffd
        } else {
            NonPresent::Plain
        })
    }
    #[inline]
    fn uffd_wp(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_PTE_UFFD_WP)
    }
    #[inline]
    fn maps_page(&self) -> bool {
        self.page().is_some()
    }
    #[inline]
    fn anon(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_ANON)
    }
    #[inline]
    fn clean_lazyfree(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_LAZYFREE)
            && !self.has(bindings::thp_collapse_pte_flags_THP_PTE_DIRTY)
    }
    #[inline]
    fn shared(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_SHARED)
    }
}

/// The facts a plain PTE ([`PteFacts::plain_for_scan`]) has only [`THP_FOLIO_ANON`] of: a
/// present page of an anonymous folio, neither userfaultfd write-protected, lazily freed, nor
/// maybe mapped by another process.
///
/// [`THP_FOLIO_ANON`]: bindings::thp_collapse_pte_flags_THP_FOLIO_ANON
const PLAIN_PAGE_FLAGS: u32 = bindings::thp_collapse_pte_flags_THP_PTE_NONE_OR_ZERO
    | bindings::thp_collapse_pte_flags_THP_PTE_NON_PRESENT
    | bindings::thp_collapse_pte_flags_THP_PTE_UFFD_WP
    | bindings::thp_collapse_pte_flags_THP_FOLIO_ANON
    | bindings::thp_collapse_pte_flags_THP_FOLIO_LAZYFREE
    | bindings::thp_collapse_pte_flags_THP_FOLIO_SHARED;

/// Facts read per call into C by [`for_each_pte`] (a PTE each) and [`for_each_run`] (a run of
/// PTEs each).
const PTE_BATCH: usize = 16;

/// Which facts [`for_each_pte`] reads beyond those every step needs ([`PteRead::ENTRY`]); the
/// others read as `false`. Combined with `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PteRead(u32);

impl PteRead {
    /// The entry, its page and folio, and the folio's kind and sharing: what every step reads.
    pub(crate) const ENTRY: Self = Self(0);
    /// The folio's LRU, lock and reference state ([`PteFacts::lru`], [`PteFacts::locked`],
    /// [`PteFacts::extra_refs`]): the scan needs them, the isolation learns them from the
    /// isolation protocol itself (`isolate::IsolatedFolio::isolate`).
    pub(crate) const FOLIO_STATE: Self = Self(bindings::thp_collapse_read_THP_READ_FOLIO_STATE);
    /// What khugepaged's heuristics look at ([`PteFacts::referenced`],
    /// [`PteView::clean_lazyfree`]), which MADV_COLLAPSE ignores.
    pub(crate) const HEURISTICS: Self = Self(bindings::thp_collapse_read_THP_READ_HEURISTICS);
    /// One fact per run of entries that map consecutive pages of one large folio with the same
    /// facts ([`for_each_run`] asks for it); ignored with [`Self::HEURISTICS`], whose young and
    /// dirty facts are each entry's own.
    const RUNS: Self = Self(bindings::thp_collapse_read_THP_READ_RUNS);

    /// [`Self::HEURISTICS`] where the mode of `tally` uses them, else [`Self::ENTRY`].
    pub(crate) fn heuristics_of(tally: &ScanTally) -> Self {
        if tally.uses_heuristics() {
            Self::HEURISTICS
        } else {
            Self::ENTRY
        }
    }
}

impl core::ops::BitOr for PteRead {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The entries `first .. first + n` of `table` that are present and writable, read in one call
/// into C; `None` if they are not all in the table (a bug of the caller).
pub(crate) fn writable_entries(
    table: &impl LockedPtes,
    first: usize,
    n: usize,
) -> Option<Occupied> {
    // `Occupied`'s words are handed to C as a bitmap of `unsigned long`s.
    const _: () = assert!(size_of::<kernel::ffi::c_ulong>() == size_of::<u64>());
    let ptep = table.entries(first, n)?;
    let mut writable = Occupied::EMPTY;
    // SAFETY: The entries `first .. first + n` are mapped and locked while `table` is borrowed
    // (`LockedPtes`), and in the table (checked by `entries()`), which `writable` has a bit for
    // each entry of; its words have the size of C's `unsigned long` (asserted above).
    unsafe {
        bindings::thp_collapse_ptes_writable(
            ptep,
            first as u32,
            n as u32,
            writable.words_mut().as_mut_ptr().cast(),
        )
    };
    Some(writable)
}

/// Reads the facts of the `n` consecutive PTEs of `table` from entry `first` on, which map
/// `addr` on in `vma`, for the step `read`, a batch at a time (one call into C per
/// [`PTE_BATCH`] entries), and hands each to `f` with its index from 0, until `f` fails; returns
/// that failure. Entries outside the table are [`Fail::Other`] (a bug of the caller).
///
/// # Safety
///
/// `table` must be a page table of `vma`, with entry `first` mapping `addr`: the folios are
/// looked up through the VMA (`vm_normal_page()`).
#[inline]
pub(crate) unsafe fn for_each_pte(
    vma: &VmaRef,
    addr: usize,
    table: &impl LockedPtes,
    first: usize,
    n: usize,
    read: PteRead,
    mut f: impl FnMut(usize, &PteFacts) -> Result<(), Fail>,
) -> Result<(), Fail> {
    // SAFETY: The function's safety requirements. Without `PteRead::RUNS` each fact is one
    // entry's.
    unsafe {
        read_facts(vma, addr, table, (first, n), read, |k, facts, _| {
            f(k, facts)
        })
    }
}

/// [`for_each_pte`], but the entries that map consecutive pages of one large folio with the
/// same facts come as one run: `f` gets the index of its first entry from 0, the facts of that
/// entry, and the length of the run, at least 1 ([`PteFacts::nth`] gives the facts of the
/// others). Entries with khugepaged's heuristics ([`PteRead::HEURISTICS`]) come one by one.
/// One walk of the entries of a PTE-mapped folio of the PMD order instead of 512.
///
/// # Safety
///
/// As for [`for_each_pte`].
#[inline]
pub(crate) unsafe fn for_each_run(
    vma: &VmaRef,
    addr: usize,
    table: &impl LockedPtes,
    first: usize,
    n: usize,
    read: PteRead,
    f: impl FnMut(usize, &PteFacts, usize) -> Result<(), Fail>,
) -> Result<(), Fail> {
    // SAFETY: The function's safety requirements.
    unsafe { read_facts(vma, addr, table, (first, n), read | PteRead::RUNS, f) }
}

/// The walk of [`for_each_pte`] and [`for_each_run`]: `f` gets each fact read, the index of its
/// first entry and the number of entries it stands for.
///
/// # Safety
///
/// As for [`for_each_pte`].
#[inline]
unsafe fn read_facts(
    vma: &VmaRef,
    addr: usize,
    table: &impl LockedPtes,
    (first, n): (usize, usize),
    read: PteRead,
    mut f: impl FnMut(usize, &PteFacts, usize) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let Some(ptep) = table.entries(first, n) else {
        return Err(Fail::Other);
    };
    let mut buf = [const { MaybeUninit::<bindings::thp_collapse_pte>::uninit() }; PTE_BATCH];
    let mut k = 0;
    while k < n {
        // SAFETY: Entries `k .. n` of the run are mapped and stable while `table` is borrowed
        // (`LockedPtes`), and map `addr + k * PAGE_SIZE` on in `vma` (the function's safety
        // requirements); `vma` is valid (type invariants of `VmaRef`); `buf` has room for
        // `PTE_BATCH` facts, and the callee writes every field of each fact it counts in.
        let read_to = unsafe {
            bindings::thp_collapse_read_ptes(
                vma.as_ptr(),
                addr + k * PAGE_SIZE,
                ptep.add(k),
                (n - k) as u32,
                read.0,
                buf.as_mut_ptr().cast(),
                PTE_BATCH as u32,
            )
        } as usize;
        let end = (k + read_to).min(n);
        for slot in &buf {
            if k >= end {
                break;
            }
            // SAFETY: Written by the call above, as the facts of the entries up to `end`;
            // `PteFacts` is a transparent wrapper.
            let facts = unsafe { &*slot.as_ptr().cast::<PteFacts>() };
            let run = facts.run().min(end - k);
            f(k, facts, run)?;
            k += run;
        }
        if read_to == 0 {
            // Never (C reads at least one entry): no endless loop if it did not.
            return Err(Fail::Other);
        }
    }
    Ok(())
}

impl PteFacts {
    /// The NUMA node of the page it maps (`NUMA_NO_NODE` if none).
    #[inline]
    pub(crate) fn nid(&self) -> i32 {
        self.0.nid
    }

    #[inline]
    fn has(&self, flag: bindings::thp_collapse_pte_flags) -> bool {
        self.0.flags & flag != 0
    }

    /// The shared zero page (present, but nothing to copy).
    #[inline]
    pub(crate) fn zero(&self) -> bool {
        self.none_or_zero() && !self.has(bindings::thp_collapse_pte_flags_THP_PTE_NONE)
    }

    /// The normal page mapped and its folio, or `None` (special or ZONE_DEVICE mapping).
    #[inline]
    pub(crate) fn page(&self) -> Option<(PagePtr, FolioPtr)> {
        Some((NonNull::new(self.0.page)?, NonNull::new(self.0.folio)?))
    }

    /// How many entries these facts stand for, from the one read on (see [`for_each_run`]).
    #[inline]
    fn run(&self) -> usize {
        (self.0.run as usize).max(1)
    }

    /// The facts of the entry `t` entries after the one read, within its run (`t` less than
    /// the run's length, see [`for_each_run`]): the same, but for the page, the `t`th after.
    #[inline]
    pub(crate) fn nth(&self, t: usize) -> PteFacts {
        let mut facts = self.0;
        if !facts.page.is_null() {
            // A run maps consecutive pages of one folio, consecutive `struct page`s.
            facts.page = facts.page.wrapping_add(t);
        }
        PteFacts(facts)
    }

    /// The pfn of the folio mapped, or [`trace::NO_PFN`] (for the tracepoints; a call into C).
    pub(crate) fn folio_pfn(&self) -> usize {
        folio_pfn(self.page().map(|(_, folio)| folio))
    }

    /// The page mapped as (the folio's address, the page's index in the folio, the folio's
    /// order), or `None` (no normal page): what [`InPlace`](crate::scan::InPlace) compares.
    #[inline]
    pub(crate) fn folio_block(&self) -> Option<(usize, usize, u32)> {
        let (page, folio) = self.page()?;
        // The pages of a folio are consecutive `struct page`s from the folio's own address.
        let index = (page.as_ptr() as usize - folio.as_ptr() as usize)
            / core::mem::size_of::<bindings::page>();
        Some((folio.as_ptr() as usize, index, self.0.order))
    }

    /// The number of pages of the folio mapped (1 without a folio).
    #[inline]
    pub(crate) fn folio_nr_pages(&self) -> usize {
        1 << self.0.order.min(usize::BITS - 1)
    }

    /// Whether the scan can take the entry as it is, without looking at each fact in turn:
    /// a present, anonymous page that nobody else may map, on the LRU, unlocked, without
    /// extra references, neither userfaultfd write-protected nor lazily freed. The same as
    /// all of the scan's checks passing, one flag test instead of a dozen.
    #[inline]
    pub(crate) fn plain_for_scan(&self) -> bool {
        const LOOK: u32 = PLAIN_PAGE_FLAGS
            | bindings::thp_collapse_pte_flags_THP_FOLIO_LRU
            | bindings::thp_collapse_pte_flags_THP_FOLIO_LOCKED
            | bindings::thp_collapse_pte_flags_THP_FOLIO_EXTRA_REFS;
        const WANT: u32 = bindings::thp_collapse_pte_flags_THP_FOLIO_ANON
            | bindings::thp_collapse_pte_flags_THP_FOLIO_LRU;
        self.0.flags & LOOK == WANT
    }

    /// Whether the isolation can take the entry as it is: a present page of a small
    /// anonymous folio that nobody else may map, neither userfaultfd write-protected nor
    /// lazily freed. The same as all of the isolation's checks before the folio's own passing.
    #[inline]
    pub(crate) fn plain_small_for_isolation(&self) -> bool {
        const LOOK: u32 = PLAIN_PAGE_FLAGS | bindings::thp_collapse_pte_flags_THP_FOLIO_LARGE;
        self.0.flags & LOOK == bindings::thp_collapse_pte_flags_THP_FOLIO_ANON
    }

    /// Whether the isolation can take the entry as it is once an earlier entry with the same
    /// facts passed every check and isolated its folio, a large one (the order check and the
    /// isolation are the folio's): a present page of a large anonymous folio that nobody else
    /// may map, neither userfaultfd write-protected nor lazily freed, so that none of the
    /// entry's own checks counts it against a limit.
    #[inline]
    pub(crate) fn plain_large_for_isolation(&self) -> bool {
        const LOOK: u32 = PLAIN_PAGE_FLAGS | bindings::thp_collapse_pte_flags_THP_FOLIO_LARGE;
        self.0.flags & LOOK
            == bindings::thp_collapse_pte_flags_THP_FOLIO_ANON
                | bindings::thp_collapse_pte_flags_THP_FOLIO_LARGE
    }

    /// Whether the page can be copied early, without the mmap lock for write: a present,
    /// normal page of an anonymous folio without references that its mappings and swap cache
    /// do not explain (with [`PteRead::FOLIO_STATE`]; read after the entry was
    /// write-protected, so that a GUP pin taken before shows).
    #[inline]
    pub(crate) fn copyable(&self) -> bool {
        const LOOK: u32 = bindings::thp_collapse_pte_flags_THP_PTE_NONE_OR_ZERO
            | bindings::thp_collapse_pte_flags_THP_PTE_NON_PRESENT
            | bindings::thp_collapse_pte_flags_THP_FOLIO_ANON
            | bindings::thp_collapse_pte_flags_THP_FOLIO_EXTRA_REFS;
        self.page().is_some()
            && self.0.flags & LOOK == bindings::thp_collapse_pte_flags_THP_FOLIO_ANON
    }

    /// The folio is on an LRU list (with [`PteRead::FOLIO_STATE`]).
    #[inline]
    pub(crate) fn lru(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_LRU)
    }

    /// The folio was locked when read (with [`PteRead::FOLIO_STATE`]).
    #[inline]
    pub(crate) fn locked(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_LOCKED)
    }

    /// The folio had more references than its mappings and swap cache explain (pins; with
    /// [`PteRead::FOLIO_STATE`]).
    #[inline]
    pub(crate) fn extra_refs(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_EXTRA_REFS)
    }

    /// The folio has more than one page.
    #[inline]
    pub(crate) fn large(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_LARGE)
    }

    /// The entry is present, maps a page other than the zero page, and is writable.
    #[inline]
    pub(crate) fn writable(&self) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_PTE_WRITE)
    }

    /// Whether the page was referenced recently: the folio's or the PTE's young bit (with
    /// [`PteRead::HEURISTICS`]), or a secondary MMU's (asked only when the others say no).
    #[inline]
    pub(crate) fn referenced(&self, mm: &Mm, addr: usize) -> bool {
        self.has(bindings::thp_collapse_pte_flags_THP_FOLIO_YOUNG)
            || self.has(bindings::thp_collapse_pte_flags_THP_PTE_YOUNG)
            // SAFETY: `mm` is the valid mm whose page table was read; the notifier only tests.
            || unsafe { bindings::mmu_notifier_test_young(mm.as_raw(), addr) }
    }
}

/// A reference to the folio of a page, which keeps the page from being freed (or reused)
/// while the collapse reads it without a page-table lock; dropping it puts it back.
pub(crate) struct PageRef {
    page: PagePtr,
    folio: FolioPtr,
}

impl PageRef {
    /// Takes a reference to `folio` for its page `page`.
    ///
    /// # Safety
    ///
    /// `folio` must be valid (mapped by a page table that the caller holds locked, for
    /// instance), and `page` one of its pages.
    #[inline]
    pub(crate) unsafe fn get(page: PagePtr, folio: FolioPtr) -> Self {
        // SAFETY: `folio` is valid (the function's safety requirements).
        unsafe { bindings::folio_get(folio.as_ptr()) };
        Self { page, folio }
    }

    /// The page.
    #[inline]
    pub(crate) fn page(&self) -> PagePtr {
        self.page
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        // SAFETY: The reference taken in `get`, ours until now.
        unsafe { bindings::folio_put(self.folio.as_ptr()) };
    }
}

// SAFETY: A folio reference can be put from any thread.
unsafe impl Send for PageRef {}

/// The pfn of `folio`, or [`trace::NO_PFN`] for none (for the tracepoints).
pub(crate) fn folio_pfn(folio: Option<FolioPtr>) -> usize {
    // SAFETY: A folio the caller holds valid (mapped by a table it locked or detached); the
    // pfn is only computed from its address.
    folio.map_or(trace::NO_PFN, |f| unsafe {
        bindings::folio_pfn(f.as_ptr())
    })
}

/// Counts the allocation of `folio`, a new PMD-order folio charged to a memory cgroup, in the
/// cgroup's `thp_collapse_alloc`, and gives it the memcg state its size needs; `false` if that
/// failed.
pub(crate) fn memcg_account_collapse_alloc(folio: &NewFolio) -> bool {
    if folio.order() == PMD_ORDER {
        // SAFETY: `folio` is a charged, PMD-order folio that we own.
        unsafe {
            bindings::count_memcg_folio_events(
                folio.as_ptr(),
                bindings::vm_event_item_THP_COLLAPSE_ALLOC,
                1,
            )
        };
    }
    // SAFETY: `folio` is valid and ours.
    unsafe { bindings::folio_memcg_alloc_deferred(folio.as_ptr()) == 0 }
}

/// A collapse event, counted in `/proc/vmstat` for the PMD order and in the per-size THP stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CollapseEvent {
    /// A folio was allocated for a collapse (`thp_collapse_alloc`).
    Alloc,
    /// The allocation failed (`thp_collapse_alloc_failed`).
    AllocFailed,
}

/// Counts `event` for a folio of `order`.
pub(crate) fn count_collapse_event(order: u32, event: CollapseEvent) {
    let (vm_event, mthp) = match event {
        CollapseEvent::Alloc => (
            bindings::vm_event_item_THP_COLLAPSE_ALLOC,
            bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_ALLOC,
        ),
        CollapseEvent::AllocFailed => (
            bindings::vm_event_item_THP_COLLAPSE_ALLOC_FAILED,
            bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_ALLOC_FAILED,
        ),
    };
    count_events(order, vm_event, mthp);
}

/// Counts a vmstat event (for the PMD order) and a per-size THP stat for a folio of `order`.
fn count_events(order: u32, vm_event: bindings::vm_event_item, mthp: bindings::mthp_stat_item) {
    // SAFETY: Per-CPU event counters; safe from any context.
    unsafe {
        if order == PMD_ORDER {
            bindings::count_vm_event(vm_event);
        }
        bindings::count_mthp_stat(order as i32, mthp);
    }
}

/// Counts a scan or isolation of a range for a folio of `order` that stopped because a limit
/// was exceeded (`thp_scan_exceed_*_pte` in `/proc/vmstat` for the PMD order, and the
/// per-size `collapse_exceed_*` stats); other outcomes count nothing.
pub(crate) fn count_exceeded(order: u32, fail: Fail) {
    let (vm_event, mthp) = match fail {
        Fail::ExceedNonePte => (
            bindings::vm_event_item_THP_SCAN_EXCEED_NONE_PTE,
            bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_EXCEED_NONE,
        ),
        Fail::ExceedSwapPte => (
            bindings::vm_event_item_THP_SCAN_EXCEED_SWAP_PTE,
            bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_EXCEED_SWAP,
        ),
        Fail::ExceedSharedPte => (
            bindings::vm_event_item_THP_SCAN_EXCEED_SHARED_PTE,
            bindings::mthp_stat_item_MTHP_STAT_COLLAPSE_EXCEED_SHARED,
        ),
        _ => return,
    };
    count_events(order, vm_event, mthp);
}

/// Counts a file scan that stopped at a limit (`thp_scan_exceed_*_pte` in `/proc/vmstat`
/// only: the per-size stats are for anonymous memory); other outcomes count nothing.
pub(crate) fn count_file_exceeded(fail: Fail) {
    let vm_event = match fail {
        Fail::ExceedNonePte => bindings::vm_event_item_THP_SCAN_EXCEED_NONE_PTE,
        Fail::ExceedSwapPte => bindings::vm_event_item_THP_SCAN_EXCEED_SWAP_PTE,
        _ => return,
    };
    // SAFETY: Per-CPU counter, safe from any context.
    unsafe { bindings::count_vm_event(vm_event) };
}

/// What the retraction of a file VMA's page table knows about the CoW copies a private
/// mapping may hold in it (the VMA has an anon_vma once one was made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CowCopies {
    /// Nothing: a VMA with an anon_vma is not retractable.
    Unknown,
    /// The caller holds the mm's mmap lock and the anon_vma lock, and checks that the table is
    /// empty: an anon_vma does not matter.
    Excluded,
}

/// Whether the page tables of file VMA `vma` may be removed after a collapse: not with
/// uffd-wp or guard regions, nor with an anon_vma unless `cow` says copies are excluded.
/// Checked again under the PTE lock.
///
/// # Safety
///
/// `vma` must be valid (the caller holds its file's i_mmap lock). With
/// [`CowCopies::Excluded`], the caller must hold its mm's mmap lock and anon_vma lock, and
/// check the table is empty.
pub(crate) unsafe fn vma_retractable(vma: *mut bindings::vm_area_struct, cow: CowCopies) -> bool {
    // SAFETY: By the function's safety requirements `vma` is valid. Its anon_vma may be set
    // concurrently (by a fault under the mmap read lock), hence the volatile read; the guard
    // flag is set under the PTE lock, where the caller checks again.
    let (anon_vma, uffd_wp, maybe_guard) = unsafe {
        (
            !core::ptr::read_volatile(&raw const (*vma).anon_vma).is_null(),
            bindings::userfaultfd_protected(vma),
            bindings::vma_test_atomic_flag(
                vma,
                bindings::VMA_MAYBE_GUARD_BIT as bindings::vma_flag_t,
            ),
        )
    };
    // Its page tables may hold CoW copies, uffd-wp markers, or guard markers.
    let cow_copies = anon_vma && cow == CowCopies::Unknown;
    !cow_copies && !uffd_wp && !maybe_guard
}

/// Whether the mm has no users left.
///
/// # Safety
///
/// `mm` must be valid (an mm of a VMA the caller reached under the i_mmap lock).
pub(crate) unsafe fn mm_exiting(mm: *mut bindings::mm_struct) -> bool {
    // SAFETY: By the function's safety requirements.
    unsafe { bindings::thp_collapse_mm_exiting(mm) }
}

/// Maps `folio`, a PMD-order page cache folio locked by the caller, with the PMD entry `pmd`
/// (or one it allocates, if `None`) at `haddr` of `vma`; the mapping takes a reference.
/// Fails if the entry is no longer none or a level could not be allocated.
/// Upstream: `set_huge_pmd()`.
pub(crate) fn set_huge_pmd(
    vma: &VmaRef,
    haddr: usize,
    pmd: Option<kernel::mm::pgtable::PmdEntry<'_>>,
    folio: &page_cache::LockedFolio,
) -> bool {
    let pmdp = pmd.map_or(core::ptr::null_mut(), |p| p.as_ptr());
    // SAFETY: The VMA is valid under the mmap lock the `PmdEntry` (or the caller) holds; the
    // folio is locked and referenced, and the page is its first.
    let r = unsafe {
        bindings::set_huge_pmd(
            vma.as_ptr(),
            haddr,
            pmdp,
            folio.as_ptr().as_ptr(),
            folio.page(0).as_ptr(),
        )
    };
    r == bindings::scan_result_SCAN_SUCCEED
}

/// Adds `n` pages to the anonymous RSS of `mm` (`MM_ANONPAGES`).
pub(crate) fn add_anon_rss(mm: &Mm, n: usize) {
    // SAFETY: `mm` is valid; the counter is per-CPU and safe to update from any context.
    unsafe { bindings::add_mm_counter(mm.as_raw(), bindings::MM_ANONPAGES as i32, n as isize) };
}

/// The khugepaged tunables, read now.
pub(crate) fn khugepaged_tunables() -> Tunables {
    let mut t = bindings::collapse_tunables {
        max_ptes_none: 0,
        max_ptes_swap: 0,
        max_ptes_shared: 0,
        defrag: false,
    };
    // SAFETY: `t` is valid for writes.
    unsafe { bindings::khugepaged_collapse_tunables(&mut t) };
    Tunables {
        max_ptes_none: t.max_ptes_none,
        max_ptes_swap: t.max_ptes_swap,
        max_ptes_shared: t.max_ptes_shared,
        alloc: if t.defrag {
            AllocPolicy::Reclaim
        } else {
            AllocPolicy::Light
        },
    }
}

/// Drains this CPU's LRU add batch, which holds an extra reference on pages just read in.
pub(crate) fn lru_add_drain() {
    // SAFETY: Always safe from process context.
    unsafe { bindings::lru_add_drain() };
}

/// Drains every CPU's LRU add batches, so that freshly faulted pages can be isolated.
///
/// May sleep.
pub(crate) fn lru_add_drain_all() {
    // SAFETY: Always safe to call from process context.
    unsafe { bindings::lru_add_drain_all() };
}

/// Drains the LRU add batches as a request of `effort` may: every CPU's (which waits for work
/// on each of them), or only this one's for [`Effort::Light`].
pub(crate) fn drain_lru_batches(effort: Effort) {
    match effort {
        Effort::Standard | Effort::Defrag => lru_add_drain_all(),
        Effort::Light => lru_add_drain(),
    }
}

/// How an anonymous collapse whose early copy holds switches the range (sysfs
/// `collapse/rust_switch`): see [`SwitchMode`].
pub(crate) fn switch_mode() -> SwitchMode {
    // SAFETY: Reads a value; callable from any context.
    let mode = unsafe { bindings::thp_collapse_switch_mode() };
    match u32::try_from(mode) {
        Ok(bindings::thp_collapse_switch_THP_COLLAPSE_SWITCH_READ) => SwitchMode::Read,
        Ok(bindings::thp_collapse_switch_THP_COLLAPSE_SWITCH_PTL) => SwitchMode::Ptl,
        _ => SwitchMode::Vma,
    }
}

/// How an anonymous collapse whose early copy holds switches the range: the values of sysfs
/// `collapse/rust_switch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SwitchMode {
    /// `vma`: with the VMA write-locked under the mmap write lock, as upstream.
    Vma,
    /// `ptl`: under the page-table locks, the VMA's page faults going on, with the mmap lock
    /// held for write.
    Ptl,
    /// `read`, the default: under the page-table locks with the mmap lock held for read only,
    /// the process's mmap-lock readers going on too.
    Read,
}

/// A testing hook: spins for debugfs's `thp_collapse_switch_delay_us` inside a switch under the
/// page-table locks, so that the selftests' racers land in it. Does nothing unless the kernel
/// is built for tests (`CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST`) and the file says so.
pub(crate) fn switch_test_delay() {
    // SAFETY: Reads a value and spins; callable in atomic context.
    unsafe { bindings::thp_collapse_switch_test_delay() }
}

/// Where [`early_test_pause`] may pause an early copy.
#[derive(Clone, Copy)]
pub(crate) enum EarlyPause {
    /// Before each first pass over the range, with no lock held.
    Before,
    /// After each first pass, with the mmap lock held for read.
    After,
    /// Once the copy is made, before the switch, with no lock held.
    Done,
}

/// A testing hook: pauses the early copy of the calling thread at `at` while a selftest
/// changes the range (debugfs's `thp_collapse_early_pause_*`; see the C side for the
/// protocol). Does nothing unless the kernel is built for tests
/// (`CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST`) and the files name this thread. May sleep.
pub(crate) fn early_test_pause(at: EarlyPause) {
    let at = match at {
        EarlyPause::Before => bindings::thp_collapse_early_pause_THP_EARLY_PAUSE_BEFORE,
        EarlyPause::After => bindings::thp_collapse_early_pause_THP_EARLY_PAUSE_AFTER,
        EarlyPause::Done => bindings::thp_collapse_early_pause_THP_EARLY_PAUSE_DONE,
    };
    // SAFETY: Reads a few values and may sleep; called from process context with no spinlock
    // held.
    unsafe { bindings::thp_collapse_early_test_pause(at) }
}

/// Whether the current task has been sent a fatal signal. C: `fatal_signal_pending(current)`.
pub(crate) fn fatal_signal_pending() -> bool {
    // SAFETY: `current` is always a valid task in process context, where collapses run.
    unsafe { bindings::fatal_signal_pending(bindings::get_current()) != 0 }
}

/// Gives the scheduler a chance to run something else. May sleep.
pub(crate) fn cond_resched() {
    // SAFETY: Called without spinlocks held, from process context.
    unsafe { bindings::cond_resched() };
}

/// Upstream's collapse tracepoints (`huge_memory` events), fired where upstream fires them,
/// with the same fields, so that tools reading them see no difference between the cores.
///
/// The events are defined in C (`include/trace/events/huge_memory.h`, created in
/// `mm/khugepaged.c`); the forwarders are in `mm/thp_collapse_glue.c`. A disabled event costs
/// one call and a static-key test.
pub(crate) mod trace {
    use super::{page_cache::Backing, FolioPtr};
    use crate::{outcome::ScanCode, vocab::Caller};
    use kernel::{
        bindings,
        ffi::{c_int, c_uint, c_ulong},
        mm::Mm,
        time::Delta,
    };

    /// The pfn the events record when there is no folio.
    pub(crate) const NO_PFN: usize = usize::MAX;

    // Upstream's events (`include/trace/events/huge_memory.h`), called directly: `khugepaged.c`
    // creates their Rust entry points next to the events themselves.
    kernel::declare_trace! {
        /// `mm_khugepaged_scan_pmd`. Safe to call with a valid `mm`.
        unsafe fn mm_khugepaged_scan_pmd(mm: *mut bindings::mm_struct, pfn: c_ulong,
            referenced: c_int, none_or_zero: c_int, status: c_int, unmapped: c_int);
        /// `mm_collapse_huge_page`. Safe to call with a valid `mm`.
        unsafe fn mm_collapse_huge_page(mm: *mut bindings::mm_struct, isolated: c_int,
            status: c_int, order: c_uint);
        /// `mm_collapse_huge_page_isolate`. Safe to call with a valid `folio`, or NULL.
        unsafe fn mm_collapse_huge_page_isolate(folio: *mut bindings::folio,
            none_or_zero: c_int, referenced: c_int, status: c_int, order: c_uint);
        /// `mm_collapse_huge_page_swapin`. Safe to call with a valid `mm`.
        unsafe fn mm_collapse_huge_page_swapin(mm: *mut bindings::mm_struct, swapped_in: c_int,
            referenced: c_int, ret: c_int, order: c_uint);
        /// `mm_khugepaged_scan_file`. Safe to call with a valid `mm` and `file`.
        unsafe fn mm_khugepaged_scan_file(mm: *mut bindings::mm_struct, pfn: c_ulong,
            file: *mut bindings::file, present: c_int, swap: c_int, result: c_int);
        /// `mm_khugepaged_collapse_file`. Safe to call with a valid `mm` and `file`.
        #[allow(clippy::too_many_arguments)] // The event's eight fields.
        unsafe fn mm_khugepaged_collapse_file(mm: *mut bindings::mm_struct, new_pfn: c_ulong,
            index: c_ulong, addr: c_ulong, is_shmem: bool, file: *mut bindings::file, nr: c_int,
            result: c_int);
        /// `mm_collapse_range` (patch 0013, ours). Safe to call with a valid `mm`.
        #[allow(clippy::too_many_arguments)] // The event's eight fields.
        unsafe fn mm_collapse_range(mm: *mut bindings::mm_struct, addr: c_ulong, order: c_uint,
            caller: c_int, flags: c_uint, status: c_int, time_ns: u64, mmap_write_ns: u64);
    }

    /// `mm_collapse_range`: the end of one range of a request of `caller` with the
    /// process_madvise() `flags`, at `addr`, to folios of `order`: its result, the time it
    /// took and the part of it under the mmap lock for write.
    #[allow(clippy::too_many_arguments)] // The event's eight fields.
    pub(crate) fn range(
        mm: &Mm,
        addr: usize,
        order: u32,
        caller: Caller,
        flags: u32,
        result: &impl ScanCode,
        took: Delta,
        write_held: Delta,
    ) {
        let ns = |d: Delta| u64::try_from(d.as_nanos()).unwrap_or(0);
        // SAFETY: `mm` is valid; the event only records its address and the values.
        unsafe {
            mm_collapse_range(
                mm.as_raw(),
                addr,
                order,
                caller as c_int,
                flags,
                status(result),
                ns(took),
                ns(write_held),
            )
        }
    }

    fn status(result: &impl ScanCode) -> c_int {
        c_int::try_from(result.code()).unwrap_or(c_int::MAX)
    }

    fn count(n: u32) -> c_int {
        c_int::try_from(n).unwrap_or(c_int::MAX)
    }

    /// `mm_khugepaged_scan_pmd`: the end of the scan of a PMD range, with the final result
    /// (that of the collapse, if one followed). `pfn` is the folio the scan stopped at, or
    /// [`NO_PFN`].
    pub(crate) fn scan_pmd(
        mm: &Mm,
        pfn: usize,
        referenced: u32,
        none_or_zero: u32,
        result: &impl ScanCode,
        unmapped: u32,
    ) {
        // SAFETY: `mm` is valid; the event only records its address and the values.
        unsafe {
            mm_khugepaged_scan_pmd(
                mm.as_raw(),
                pfn,
                count(referenced),
                count(none_or_zero),
                status(result),
                count(unmapped),
            )
        }
    }

    /// `mm_collapse_huge_page`: the end of the collapse of one candidate into a folio of
    /// `order`.
    pub(crate) fn collapse(mm: &Mm, result: &impl ScanCode, order: u32) {
        let isolated = result.code() == bindings::scan_result_SCAN_SUCCEED;
        // SAFETY: As above.
        unsafe { mm_collapse_huge_page(mm.as_raw(), isolated.into(), status(result), order) }
    }

    /// `mm_collapse_huge_page_isolate`: the end of the isolation step. `folio` is the last one
    /// looked at, still mapped by the caller's detached table.
    pub(crate) fn isolate(
        folio: Option<FolioPtr>,
        none_or_zero: u32,
        referenced: u32,
        result: &impl ScanCode,
        order: u32,
    ) {
        let folio = folio.map_or(core::ptr::null_mut(), |f| f.as_ptr());
        // SAFETY: `folio` is NULL or a folio the caller keeps valid; the event records its pfn.
        unsafe {
            mm_collapse_huge_page_isolate(
                folio,
                count(none_or_zero),
                count(referenced),
                status(result),
                order,
            )
        }
    }

    /// `mm_khugepaged_scan_file`: the end of the scan of a page cache range, with the final
    /// result (that of the collapse, if one followed).
    pub(crate) fn scan_file(
        mm: &Mm,
        pfn: usize,
        file: &kernel::fs::File,
        present: u32,
        swap: u32,
        result: &impl ScanCode,
    ) {
        // SAFETY: `mm` and `file` are valid; the event only records them and the values.
        unsafe {
            mm_khugepaged_scan_file(
                mm.as_raw(),
                pfn,
                file.as_ptr(),
                count(present),
                count(swap),
                status(result),
            )
        }
    }

    /// `mm_khugepaged_collapse_file`: the end of a collapse in the page cache. `index` is
    /// where it stopped.
    pub(crate) fn collapse_file(
        mm: &Mm,
        new_pfn: usize,
        index: usize,
        addr: usize,
        backing: Backing,
        file: &kernel::fs::File,
        result: &impl ScanCode,
    ) {
        // SAFETY: As above.
        unsafe {
            mm_khugepaged_collapse_file(
                mm.as_raw(),
                new_pfn,
                index,
                addr,
                backing.is_shmem(),
                file.as_ptr(),
                count(crate::vocab::PTES_PER_PMD),
                status(result),
            )
        }
    }

    /// `mm_collapse_huge_page_swapin`: the end of the swap-in step.
    pub(crate) fn swapin(
        mm: &Mm,
        swapped_in: u32,
        referenced: u32,
        result: &impl ScanCode,
        order: u32,
    ) {
        // SAFETY: `mm` is valid; the event only records its address and the values.
        unsafe {
            mm_collapse_huge_page_swapin(
                mm.as_raw(),
                count(swapped_in),
                count(referenced),
                status(result),
                order,
            )
        }
    }
}
