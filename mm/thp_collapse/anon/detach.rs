// SPDX-License-Identifier: GPL-2.0

//! The write side of a collapse of anonymous memory: detach the page table from its PMD,
//! isolate the pages it maps, copy them into the huge folio and map that with the PMD, or put
//! everything back as it was.
//!
//! Each lock is a guard: [`MmapWrite`] (the mmap lock, for write), [`AnonVmaWrite`] (the
//! anon_vma root lock, for write), and [`DetachedTable`], which owns the detached page table
//! (`kernel::mm::pgtable::DetachedPteTable`) and the isolated folios
//! (`crate::ffi::isolate::IsolatedFolio`) until they are either installed or restored. Dropping
//! a [`DetachedTable`] restores the page table and then releases the folios, so that every
//! early return rolls back completely.
//!
//! Upstream reference: `collapse_huge_page()`, `__collapse_huge_page_isolate()`,
//! `__collapse_huge_page_copy()`, `__collapse_huge_page_copy_succeeded()` and
//! `__collapse_huge_page_copy_failed()` in [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use crate::{
    ffi::{
        self,
        isolate::{self, IsolateError, IsolatedFolio, IsolationQueue, UnmappedFolios},
        trace, FolioPtr, PagePtr, PteFacts, PteRead,
    },
    outcome::{Attempt, Collapsed, Fail},
    plan::{set_bits, Occupied},
    scan::{Checkpoint, EntryKind, PteView, ScanTally, Step, VmaKind},
    spare::{self, Spare},
    stats::Paths,
    vocab::{Candidate, CollapseMode, Effort, Limits, PMD_ORDER, PTES_PER_PMD},
};
use kernel::{
    alloc::{flags::GFP_KERNEL, KVec},
    mm::{
        anon_vma::AnonVmaWriteGuard,
        folio::NewFolio,
        mmap_lock::{MmapLocked, MmapWriteLock},
        pgtable::{DetachedPteTable, NewPteTable, PmdEntry, PteSnapshot, RangeWatch},
        virt::VmaRef,
        Mm,
    },
    page::PAGE_SIZE,
    sync::atomic::Atomic,
    time::Delta,
};

/// The mmap lock held for write (`kernel::mm::mmap_lock`).
pub(crate) type MmapWrite<'a> = MmapWriteLock<'a>;

/// The anon_vma root lock held for write (`kernel::mm::anon_vma`).
pub(crate) type AnonVmaWrite<'a> = AnonVmaWriteGuard<'a>;

/// A page table of PTEs taken out of its PMD (or whose candidate entries were taken out of it,
/// its locks held: `DetachedPteTable::take`), the candidate range of its entries being
/// collapsed, and the folios of that range that were isolated so far.
///
/// No page fault can reach the pages while the table is detached or its entries are out, nor
/// a GUP-fast walk keep a reference it takes (see `DetachedPteTable`), and no rmap walk can
/// reach the isolated ones.
/// [`DetachedTable::install`] maps the new folio (with the PMD for the PMD order, else with PTEs in
/// the table, which goes back in place); dropping the table puts it back, releases the isolated
/// folios and then the anon_vma lock, in that order (the order of the fields).
///
/// # Invariants
///
/// - `table` is the page table of the PMD range at `haddr` of `vma`, an anonymous VMA of `mm`;
///   `first + nr <= PTES_PER_PMD`.
/// - Each folio appears once in `iso.list.folios`.
/// - `iso.list.slots` has `PTES_PER_PMD` entries. Entry `i` is the page that PTE `i` maps and
///   its folio, which is in `iso.list.folios`, or `None`; it is set for the candidate's PTEs
///   once [`DetachedTable::isolate`] succeeded. `iso.zero` marks the PTEs that map the zero
///   page, `iso.writable` those among the others that map their page writable.
pub(crate) struct DetachedTable<'g, 'l> {
    table: DetachedPteTable<'g>,
    iso: Isolation<'l>,
    /// The anon_vma lock taken before the detach: held until the pages are out of the reach of
    /// rmap walkers, and released only after the table and the folios (see
    /// [`DetachedTable::copying`]).
    anon: Option<AnonVmaWrite<'g>>,
    mm: &'g Mm,
    vma: &'g VmaRef,
    haddr: usize,
    first: usize,
    nr: usize,
}

/// What the isolation found and holds; dropping it releases the isolated folios.
struct Isolation<'l> {
    /// The isolated folios, each once, and what each PTE of the table maps.
    list: &'l mut IsolationList,
    /// The PTEs that map the zero page, one bit each.
    zero: [u64; PTES_PER_PMD as usize / 64],
    /// The PTEs that map a page of a large folio, one bit each.
    large: [u64; PTES_PER_PMD as usize / 64],
    /// The PTEs that map a page writable, one bit each.
    writable: [u64; PTES_PER_PMD as usize / 64],
    /// The last folio looked at (for the tracepoint).
    last_folio: Option<FolioPtr>,
    /// The candidate's PTEs that map no page or the zero page: the new folio fills them.
    filled: usize,
}

impl Drop for Isolation<'_> {
    fn drop(&mut self) {
        // Puts every folio still isolated back, unless a collapse left them unmapped for its
        // caller to release ([`IsolationList::release_unmapped`]); the list's memory stays for
        // the next collapse.
        if !self.list.unmapped {
            self.list.folios.clear();
        }
    }
}

/// The page a PTE of the candidate maps, and its folio; `None` for none and zero-page PTEs.
type Slot = Option<(PagePtr, FolioPtr)>;

/// Room for the isolated folios of one page table and for what each PTE maps, allocated
/// before any lock is taken, once per request: collapses of successive PMDs reuse it.
pub(crate) struct IsolationList {
    folios: KVec<IsolatedFolio>,
    slots: KVec<Slot>,
    /// Whether `folios` are the old folios of a collapse that went through: no longer mapped
    /// by its range (each small one with the reference of its removed mapping, now ours),
    /// waiting for [`IsolationList::release_unmapped`], after the switch.
    unmapped: bool,
    /// Whether the rmap of those folios, all small, is still to be removed: their PTEs are
    /// cleared, but each still counts its mapping.
    rmap_pending: bool,
}

impl IsolationList {
    /// Allocates room for one folio and one slot per PTE. May sleep.
    pub(crate) fn new() -> Result<Self, Fail> {
        let n = PTES_PER_PMD as usize;
        let folios = KVec::with_capacity(n, GFP_KERNEL).map_err(|_| Fail::AllocHugePage)?;
        let mut slots = KVec::with_capacity(n, GFP_KERNEL).map_err(|_| Fail::AllocHugePage)?;
        for _ in 0..n {
            slots
                .push_within_capacity(None)
                .map_err(|_| Fail::AllocHugePage)?;
        }
        Ok(Self {
            folios,
            slots,
            unmapped: false,
            rmap_pending: false,
        })
    }

    /// Releases the old folios of the collapse that went through last, if it left them here
    /// (see [`DetachedTable::install`]), first removing their rmap if the install left that
    /// to do too: the small ones are freed unless something else holds them, the large ones
    /// go back on the LRU without their swap cache entry. Called after the switch, under the
    /// mmap lock for read (downgraded from write, or held so for a switch under the read
    /// lock): the rmap updates and the freeing of 512 pages need not hold it for write. Until then the folios stay isolated and locked, as they were
    /// under the lock: reclaim, migration and compaction leave them alone, and no page table
    /// maps them, so that an rmap walker finds none of their mappings.
    ///
    /// # Safety
    ///
    /// If the install left the rmap to remove, `vma` must be the VMA of its range, and the
    /// caller must hold the mmap lock of its mm since then, without a break (for read at
    /// least; downgraded from write counts).
    pub(crate) unsafe fn release_unmapped(&mut self, vma: Option<&VmaRef>) {
        if !core::mem::replace(&mut self.unmapped, false) {
            return;
        }
        let rmap_pending = core::mem::replace(&mut self.rmap_pending, false);
        if kernel::warn_on!(rmap_pending && vma.is_none()) {
            // Never: the caller of a collapse releases its folios under the lock it switched
            // under, or downgraded to read (`anon::collapse_anon()`). Freeing a folio that counts a mapping would be worse
            // than leaking it.
            for folio in self.folios.drain_all() {
                core::mem::forget(folio);
            }
            return;
        }
        let mut unmapped = UnmappedFolios::new();
        for folio in self.folios.drain_all() {
            if folio.nr_pages() == 1 {
                if let Some(vma) = vma.filter(|_| rmap_pending) {
                    // SAFETY: The small folio was mapped by one PTE of `vma`, which the install
                    // cleared, and by no other (each folio is isolated once); the mmap lock is
                    // held since (by this function's requirements); the folio is ours.
                    unsafe { isolate::remove_rmap_small(folio.as_ptr(), vma) };
                }
                // SAFETY: A small folio of the collapsed range was mapped by one of its PTEs,
                // whose mapping, removed by `install()` or above, held one reference, ours
                // since, which goes with it.
                unsafe { unmapped.add(folio, 1) };
            } else {
                // No longer mapped there: its swap cache entry can go.
                folio.putback_free_swap();
            }
        }
        // Frees the last batch.
        drop(unmapped);
    }
}

/// A run of PTEs mapping consecutive pages of one folio.
#[derive(Clone, Copy)]
struct Run {
    /// The first PTE of the run.
    first: usize,
    /// The page it maps.
    page: PagePtr,
    /// The folio of the pages.
    folio: FolioPtr,
    /// The number of PTEs (and pages).
    n: usize,
}

/// One PTE of a candidate, as the isolation sees it: entry `i` of the detached table, which
/// maps `addr` of `vma` (a VMA of `mm`), in a candidate of `order`.
#[derive(Clone, Copy)]
struct Entry<'a> {
    mm: &'a Mm,
    vma: &'a VmaRef,
    addr: usize,
    i: usize,
    order: u32,
}

/// What one request (an MADV_COLLAPSE call, or one khugepaged step) keeps across the collapses
/// of its ranges: the isolation list, taken at its first collapse and given back when it ends
/// (see `spare.rs`), how long the current range held the mmap lock for write, and whether it
/// is still to drain the LRU batches.
pub(crate) struct RequestState {
    list: Spare<IsolationList>,
    write_held: Delta,
    /// How the collapses since the last count went, not yet counted.
    paths: Paths,
    /// The effort of the drain of the LRU batches that the request makes the first time a
    /// scan finds a page that a batch may hold ([`RequestState::drain_if_due`]); `None` once
    /// drained, or if the caller drains itself (khugepaged, once per pass).
    drain: Option<Effort>,
}

/// The isolation list kept between requests.
static SPARE_LIST: spare::Slot<IsolationList> = Atomic::new(core::ptr::null_mut());

impl RequestState {
    /// The state of a new request: its isolation list is allocated (or taken from the one
    /// kept) at its first collapse.
    pub(crate) const fn for_request() -> Self {
        Self {
            list: Spare::new(&SPARE_LIST, IsolationList::clear),
            write_held: Delta::from_nanos(0),
            paths: Paths {
                in_place: 0,
                early: 0,
                recopied: 0,
                locked: 0,
                retries: 0,
                recopied_early: 0,
                restarts: 0,
                claim_waits: 0,
                switched: 0,
                switched_read: 0,
                switch_fallbacks: 0,
                in_place_read: 0,
                lru_drains: 0,
            },
            drain: None,
        }
    }

    /// Makes the request drain the LRU batches as a request of `effort` may
    /// ([`ffi::drain_lru_batches`]) when, and only when, one of its scans finds a page off the
    /// LRU or with an extra reference, or swap entries in a range that may collapse
    /// ([`RequestState::drain_if_due`]), instead of up front.
    pub(crate) fn drain_on_demand(&mut self, effort: Effort) {
        self.drain = Some(effort);
    }

    /// Drains the LRU batches if the request is still to, and returns whether it did (the
    /// caller then scans again if a page failed the scan). Once per request, as upstream's
    /// `madvise_collapse()` drains once (up front, whatever the pages: its
    /// `lru_add_drain_all()` queues work on, and waits for, every CPU whose batches hold a
    /// folio, most often the process's own busy CPUs). May sleep.
    pub(crate) fn drain_if_due(&mut self) -> bool {
        let Some(effort) = self.drain.take() else {
            return false;
        };
        ffi::drain_lru_batches(effort);
        self.paths.lru_drains += 1;
        true
    }

    /// The request's isolation list. May sleep.
    pub(crate) fn list(&mut self) -> Result<&mut IsolationList, Fail> {
        self.list.get(IsolationList::new)
    }

    /// Adds `held` to the time the current range held the mmap lock for write.
    pub(crate) fn held_for_write(&mut self, held: Delta) {
        self.write_held += held;
    }

    /// The time the range that just ended held the mmap lock for write; starts the next
    /// range's count.
    pub(crate) fn take_write_held(&mut self) -> Delta {
        core::mem::replace(&mut self.write_held, Delta::from_nanos(0))
    }

    /// Counts a scan that waited for another collapse of its range (`claim.rs`).
    pub(crate) fn waited_for_claim(&mut self) {
        self.paths.claim_waits += 1;
    }

    /// Notes that a PMD range was mapped in place, without a copy, under the mmap lock for
    /// read only if `read`.
    pub(crate) fn mapped_in_place(&mut self, read: bool) {
        self.paths.in_place += 1;
        self.paths.in_place_read += u32::from(read);
    }

    /// Notes how a collapse that went through copied its pages, and how many times its early
    /// copy started over.
    pub(crate) fn copied(&mut self, kind: super::CopyKind, restarts: u32) {
        self.paths.restarts += restarts;
        match kind {
            super::CopyKind::Locked => self.paths.locked += 1,
            super::CopyKind::FellBack => {
                self.paths.locked += 1;
                self.paths.switch_fallbacks += 1;
            }
            super::CopyKind::Early {
                retries,
                recopied_early,
                recopied,
                switch,
            } => {
                match switch {
                    super::Switch::Read => {
                        self.paths.switched += 1;
                        self.paths.switched_read += 1;
                    }
                    super::Switch::Ptl => self.paths.switched += 1,
                    super::Switch::FellBack => self.paths.switch_fallbacks += 1,
                    super::Switch::Vma => {}
                }
                self.paths.early += 1;
                self.paths.recopied += recopied;
                self.paths.retries += retries;
                self.paths.recopied_early += recopied_early;
            }
        }
    }

    /// How the collapses since the last call went.
    pub(crate) fn take_paths(&mut self) -> Paths {
        core::mem::take(&mut self.paths)
    }
}

// SAFETY: The folios are `Send`; the slots are addresses in the memory map, valid on any CPU,
// which only the collapse that wrote them reads, under its locks.
unsafe impl Send for IsolationList {}

impl IsolationList {
    /// Puts back any folio still isolated; the slots are written by each isolation before
    /// anything reads them.
    fn clear(&mut self) {
        // SAFETY: Without a VMA, nothing is asked of the caller.
        unsafe { self.release_unmapped(None) };
        self.folios.clear();
    }
}

impl Isolation<'_> {
    /// The slot of PTE `i`.
    #[inline]
    fn slot(&self, i: usize) -> Slot {
        self.list.slots.get(i).copied().flatten()
    }

    /// The runs of PTEs in `[first, end)` that map consecutive pages of one folio, in order.
    fn runs(&self, first: usize, end: usize) -> impl Iterator<Item = Run> + '_ {
        let mut i = first;
        core::iter::from_fn(move || {
            while i < end {
                let start = i;
                i += 1;
                let Some((page, folio)) = self.slot(start) else {
                    continue;
                };
                // The pages of a folio are consecutive `struct page`s (`folio_page()`).
                while i < end
                    && self.slot(i).is_some_and(|(p, f)| {
                        f == folio && p.as_ptr() == page.as_ptr().wrapping_add(i - start)
                    })
                {
                    i += 1;
                }
                return Some(Run {
                    first: start,
                    page,
                    folio,
                    n: i - start,
                });
            }
            None
        })
    }

    /// Whether PTE `i` maps the zero page.
    #[inline]
    fn is_zero(&self, i: usize) -> bool {
        self.zero[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether PTE `i` maps a page of a large folio.
    #[inline]
    fn is_large(&self, i: usize) -> bool {
        self.large[i / 64] & (1 << (i % 64)) != 0
    }

    /// Whether PTE `i` maps its page writable.
    #[inline]
    fn is_writable(&self, i: usize) -> bool {
        self.writable[i / 64] & (1 << (i % 64)) != 0
    }

    /// Notes whether PTE `i`, as `facts` read it, maps its page writable.
    #[inline]
    fn note_writable(&mut self, i: usize, facts: &PteFacts) {
        if facts.writable() {
            self.writable[i / 64] |= 1 << (i % 64);
        }
    }

    /// Whether any PTE maps a page of a large folio.
    #[inline]
    fn any_large(&self) -> bool {
        self.large.iter().any(|&w| w != 0)
    }

    /// Whether any PTE maps the zero page.
    #[inline]
    fn any_zero(&self) -> bool {
        self.zero.iter().any(|&w| w != 0)
    }
}

impl<'g, 'l> DetachedTable<'g, 'l> {
    /// Clears the PMD entry `pmd` that maps the page table of candidate `c` in `vma`, flushes
    /// the TLB, and maps the detached table (`DetachedPteTable::detach`). The table keeps
    /// `anon`, the lock of the VMA's anon_vma.
    ///
    /// The mmu notifier range brackets the clear; it covers the candidate only, as only its
    /// PTEs change. Upstream: the middle of `collapse_huge_page()`.
    pub(crate) fn detach(
        guard: &'g MmapWrite<'_>,
        anon: AnonVmaWrite<'g>,
        (vma, pmd): (&'g VmaRef, PmdEntry<'g>),
        c: Candidate,
        list: &'l mut IsolationList,
    ) -> Result<Self, Fail> {
        let (_, _, (start, end)) = Self::range(c);
        list.clear();
        let table = DetachedPteTable::detach(guard, &anon, vma, pmd, start, end);
        let table = table.ok_or(Fail::NoPteTable)?;
        Ok(Self::new(table, anon, guard.mm(), vma, c, list))
    }

    /// As [`DetachedTable::detach`], under the mmap lock `guard`, held for read or write, but
    /// the PMD entry stays in place: the candidate's entries are taken out of the table into
    /// `saved`, the page-table locks held until the install (`DetachedPteTable::take`), the
    /// notifier range owned by `watch`, if there is one (so that it does not report it).
    pub(crate) fn take<G: MmapLocked>(
        guard: &'g G,
        anon: AnonVmaWrite<'g>,
        (vma, pmd): (&'g VmaRef, PmdEntry<'g>),
        c: Candidate,
        list: &'l mut IsolationList,
        (saved, watch): (PteSnapshot, Option<&RangeWatch>),
    ) -> Result<Self, Fail> {
        let (_, _, range) = Self::range(c);
        // Empty: the collapse that went through before released its old folios after its
        // lock (else they would be released here, correctly if late, but with the page-table
        // locks held). The slots of the candidate are all written by the isolation.
        list.clear();
        let table = DetachedPteTable::take(guard, &anon, vma, pmd, range, saved, watch);
        let table = table.ok_or(Fail::NoPteTable)?;
        Ok(Self::new(table, anon, guard.locked_mm(), vma, c, list))
    }

    /// The first entry of candidate `c`, their number, and the range of addresses they map.
    fn range(c: Candidate) -> (usize, usize, (usize, usize)) {
        let nr = c.nr().min(PTES_PER_PMD as usize);
        let first = c.first.min(PTES_PER_PMD as usize - nr);
        let start = c.haddr + first * PAGE_SIZE;
        (first, nr, (start, start + nr * PAGE_SIZE))
    }

    /// The table of candidate `c` of `vma` in `mm`, with its entries out, nothing isolated
    /// yet, `list` to isolate into.
    fn new(
        table: DetachedPteTable<'g>,
        anon: AnonVmaWrite<'g>,
        mm: &'g Mm,
        vma: &'g VmaRef,
        c: Candidate,
        list: &'l mut IsolationList,
    ) -> Self {
        let (first, nr, _) = Self::range(c);
        // INVARIANT: Nothing is isolated yet; the list has one slot per PTE.
        Self {
            table,
            iso: Isolation {
                list,
                zero: [0; PTES_PER_PMD as usize / 64],
                large: [0; PTES_PER_PMD as usize / 64],
                writable: [0; PTES_PER_PMD as usize / 64],
                last_folio: None,
                filled: 0,
            },
            anon: Some(anon),
            mm,
            vma,
            haddr: c.haddr,
            first,
            nr,
        }
    }

    /// Locks each folio mapped by the detached table, checks that nobody else holds a
    /// reference to it, and isolates it from the LRU, within `limits` for `mode`.
    ///
    /// Returns `Ok`, or why the range cannot be collapsed; in that case the
    /// table is to be dropped, which releases what was isolated. The anon_vma lock stays (see
    /// [`DetachedTable::copying`]). Upstream: `__collapse_huge_page_isolate()`.
    pub(crate) fn isolate(&mut self, mode: CollapseMode, limits: Limits) -> Result<(), Fail> {
        let mut tally = ScanTally::new(mode, limits);
        let mut queued = Queued::new();
        let order = self.nr.trailing_zeros();
        let (haddr, first, nr) = (self.haddr, self.first, self.nr);
        let (mm, vma) = (self.mm, self.vma);
        let iso = &mut self.iso;
        let locked = self.table.lock();
        let start = haddr + first * PAGE_SIZE;
        // SAFETY: The detached table is `vma`'s, and its entry `first` maps `start`.
        let result = unsafe {
            ffi::for_each_run(
                vma,
                start,
                &locked,
                first,
                nr,
                PteRead::heuristics_of(&tally),
                |k, facts, run| {
                    let at = Entry {
                        mm,
                        vma,
                        addr: start + k * PAGE_SIZE,
                        i: first + k,
                        order,
                    };
                    let mut isolated = iso.isolate_one(facts, at, &mut tally, &mut queued);
                    if run > 1 && isolated.is_ok() {
                        isolated = iso.isolate_run_rest(facts, at, run, &mut tally, &mut queued);
                    }
                    match isolated {
                        Ok(()) => Ok(()),
                        // The folios queued before this entry come first, and so would their
                        // failures.
                        Err(fail) => iso.isolate_queued(&mut queued, &mut tally).and(Err(fail)),
                    }
                },
            )
        }
        .and_then(|()| iso.isolate_queued(&mut queued, &mut tally))
        .and_then(|()| tally.finish_isolation());
        if let Err(fail) = result {
            ffi::count_exceeded(order, fail);
        }
        drop(locked);
        iso.filled = tally.none_or_zero_count() as usize;
        trace::isolate(
            iso.last_folio,
            tally.none_or_zero_count(),
            tally.referenced_count(),
            &result,
            order,
        );
        result
    }

    /// Notes that the isolated pages are to be copied, not kept: when the whole table was
    /// isolated, the anon_vma lock goes at once, since rmap walkers cannot get at the pages
    /// any more (the table is detached, or its entries taken out). For a smaller order the
    /// other PTEs of the table still map pages that rmap walkers may look for while the table
    /// is detached (or its lock held), so the lock stays until the end, as
    /// it does for a folio mapped in place ([`DetachedTable::install_in_place`]).
    /// Upstream: the `anon_vma_unlock_write()` after `__collapse_huge_page_isolate()`.
    pub(crate) fn copying(&mut self) {
        if self.nr == PTES_PER_PMD as usize {
            self.anon = None;
        }
    }

    /// Copies the pages of the detached table into `new`, zero-filling where no page (or the
    /// zero page) is mapped, unless `cleared` says the page was cleared already (before the
    /// lock, see `anon::clear_empty()`) or `copied` that it was copied already and is still
    /// mapped read-only (`early::EarlyCopy`). Returns how many pages it copied.
    /// Machine-check safe: a poisoned source page fails the copy with [`Fail::CopyMc`] instead
    /// of crashing. Upstream: `__collapse_huge_page_copy()`.
    pub(crate) fn copy(
        &self,
        new: &mut NewFolio,
        cleared: &Occupied,
        copied: &Occupied,
    ) -> Result<u32, Fail> {
        if 1 << new.order() != self.nr {
            return Err(Fail::Other);
        }
        let mut n = 0;
        for k in 0..self.nr {
            let i = self.first + k;
            let addr = self.haddr + i * PAGE_SIZE;
            match self.iso.slot(i) {
                // Cleared before the lock, and nothing else can write to `new`.
                None if cleared.contains(i) => {}
                None => new.clear_user_page(k, addr),
                // Copied early, and not written since.
                Some(_) if copied.contains(i) => {}
                Some((src, _)) => {
                    // SAFETY: A slot holds a page mapped by the detached table, of a folio we
                    // isolated and locked, which cannot be freed or changed under us.
                    unsafe { new.copy_mc_user_page(k, src, addr, self.vma) }
                        .map_err(|_| Fail::CopyMc)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// How many of the candidate's entries map their page writable: written since the early
    /// copy write-protected them, or mapped since. Read before the isolation, to decide
    /// whether a switch under the page-table locks goes on. `None` if the entries cannot be
    /// read (a bug).
    pub(crate) fn writable(&mut self) -> Option<u32> {
        let (first, nr) = (self.first, self.nr);
        let locked = self.table.lock();
        ffi::writable_entries(&locked, first, nr).map(|w| w.weight(first, first + nr))
    }

    /// How many pages of the candidate [`DetachedTable::copy`] would copy or clear, given the
    /// entries `copied` early and `cleared` before the lock: those mapped but not copied, and
    /// those empty but not cleared.
    pub(crate) fn to_copy(&self, copied: &Occupied, cleared: &Occupied) -> usize {
        (self.first..self.first + self.nr)
            .filter(|&i| match self.iso.slot(i) {
                Some(_) => !copied.contains(i),
                None => !cleared.contains(i),
            })
            .count()
    }

    /// Whether entry `i` of the detached table maps `page` read-only, as the isolation read
    /// it: the entries cannot change while the table is detached. Meaningful for the
    /// candidate's entries once [`DetachedTable::isolate`] succeeded (always `false` before).
    pub(crate) fn maps_read_only(&self, i: usize, page: PagePtr) -> bool {
        self.iso.slot(i).is_some_and(|(p, _)| p == page) && !self.iso.is_writable(i)
    }

    /// Maps `new`, which holds a copy of every page of the candidate (see
    /// [`DetachedTable::copy`]), and unmaps the old pages. For the PMD order the PMD maps it,
    /// `fresh` is deposited for a later split and the detached table freed after an RCU grace
    /// period; otherwise the table goes back in place with the candidate's PTEs mapping the new
    /// folio, and `fresh` must be `None`. The old folios stay in the
    /// isolation list, isolated and locked, for the caller to release after the switch, under
    /// the mmap lock for read ([`IsolationList::release_unmapped`]); if all are small, the
    /// removal of their rmap waits for that too.
    ///
    /// Returns [`Fail::Other`], having put everything back, if `new` or `fresh` does not fit
    /// the candidate. Upstream: `__collapse_huge_page_copy_succeeded()` and the end of
    /// `collapse_huge_page()`, which remove the old pages' rmap and free them under the mmap
    /// write lock, and deposit the old table.
    pub(crate) fn install(self, new: NewFolio, fresh: Option<NewPteTable<'_>>) -> Attempt {
        if 1 << new.order() != self.nr || (new.order() == PMD_ORDER) != fresh.is_some() {
            // Dropping `self` puts everything back.
            return Err(Fail::Other);
        }
        let Self {
            mut table,
            iso,
            anon,
            mm,
            vma,
            first,
            nr,
            ..
        } = self;
        let end = first + nr;
        // The new folio maps a page where there was none, or the zero page.
        let filled = iso.filled;
        {
            // Taken once for the whole range: nobody else can reach the table, and the rmap
            // updates of large folios need preemption off for their per-CPU statistics.
            let mut locked = table.lock();
            if iso.any_zero() {
                for i in (first..end).filter(|&i| iso.is_zero(i)) {
                    locked.ksm_unmap_zero_page(i);
                }
            }
            locked.clear(first, nr);
            if iso.any_large() {
                for Run { page, folio, n, .. } in iso.runs(first, end) {
                    // SAFETY: The `n` PTEs were cleared above, under their lock, and mapped `n`
                    // consecutive pages of `folio` from `page` on in `vma`; the folio is
                    // isolated and locked.
                    unsafe { isolate::remove_rmap_ptes(folio, page, n, vma) };
                }
            } else {
                // Small folios only, each mapped by one of the PTEs just cleared: their rmap
                // is removed under the mmap lock for read, after the switch
                // (`IsolationList::release_unmapped()`), as nothing finds them mapped meanwhile.
                iso.list.rmap_pending = true;
            }
        }
        ffi::add_anon_rss(mm, filled);
        // Most candidates map small folios only: then there is no run to walk again.
        if iso.any_large() {
            for Run { folio, n, .. } in iso.runs(first, end).filter(|run| iso.is_large(run.first)) {
                // SAFETY: The `n` mappings removed above each held a reference, now ours; the
                // isolation holds another one until the folio is put back below.
                unsafe { isolate::put_refs(folio, n) };
            }
        }
        // The old folios, each small one with the reference of its removed mapping, wait in
        // the list for the caller to release them after the mmap lock.
        iso.list.unmapped = true;
        let installed = match fresh {
            Some(fresh) => table.install_pmd(new, fresh),
            None => table.install_ptes(new),
        };
        // The sizes match (checked above) and the candidate's entries were cleared, so the
        // install cannot refuse the folio; if it did, the table went back as it is, without
        // the pages, and the folio is freed.
        // Last, after the table is back or deposited and the old folios are unmapped.
        drop(anon);
        installed
            .map(|()| Collapsed::Mapped)
            .map_err(|_| Fail::Other)
    }
}

impl DetachedTable<'_, '_> {
    /// The first page and the folio, if every entry of the page table maps, in order, a page
    /// of one isolated anonymous folio of the PMD order that only they map, each page
    /// exclusively (`DetachedPteTable::maps_in_place`). Meaningful after
    /// [`DetachedTable::isolate`] succeeded.
    fn in_place(&self) -> Option<(PagePtr, FolioPtr)> {
        if self.first != 0 || self.nr != PTES_PER_PMD as usize {
            return None;
        }
        let [isolated] = &self.iso.list.folios[..] else {
            return None;
        };
        let folio = isolated.as_ptr();
        let (page, first) = self.iso.slot(0)?;
        // SAFETY: The folio is isolated and locked by us: it stays valid.
        (first == folio && unsafe { self.table.maps_in_place(folio) }).then_some((page, folio))
    }

    /// Maps the folio that the candidate's entries map in place (see [`DetachedTable::in_place`])
    /// with the PMD, without a copy, deposits `fresh` in place of the table (freed after an RCU
    /// grace period), and puts the folio back on the LRU.
    /// Returns `None`, having changed nothing (the table is to be dropped, which puts
    /// everything back), if the entries do not map such a folio. No upstream counterpart:
    /// upstream copies the folio into a new one.
    pub(crate) fn install_in_place(self, fresh: NewPteTable<'_>) -> Option<Attempt> {
        let (page, folio) = self.in_place()?;
        let Self {
            mut table,
            iso,
            anon,
            vma,
            ..
        } = self;
        {
            // The rmap update needs preemption off for its per-CPU statistics.
            let mut locked = table.lock();
            if !locked.clear(0, PTES_PER_PMD as usize) {
                // Never (`in_place()` saw every entry as it was): everything goes back, the
                // rmap and references untouched, in the order of the fields.
                drop(locked);
                drop(table);
                drop(iso);
                drop(anon);
                return Some(Err(Fail::Other));
            }
            // SAFETY: The entries cleared above, under their lock, mapped the folio's pages in
            // order from `page` on in `vma`; the folio is isolated and locked.
            unsafe { isolate::remove_rmap_ptes(folio, page, PTES_PER_PMD as usize, vma) };
        }
        // SAFETY: Each mapping removed above held a reference, now ours; the PMD mapping takes
        // over the one kept.
        unsafe { isolate::put_refs(folio, PTES_PER_PMD as usize - 1) };
        // SAFETY: `in_place()` found the folio in place before the clear; it is locked (by its
        // isolation), its rmap removed, and one of the mappings' references is handed over.
        let installed = unsafe { table.install_pmd_in_place(folio, fresh) };
        // The folio goes back on the LRU, unlocked, with the isolation's reference; the
        // anon_vma lock goes last.
        drop(iso);
        drop(anon);
        Some(
            installed
                .map(|()| Collapsed::Mapped)
                .map_err(|_| Fail::Other),
        )
    }
}

/// Small folios queued for isolation by [`DetachedTable::isolate`], isolated a batch at a
/// time, and for each what a failure to isolate it reports.
struct Queued {
    queue: IsolationQueue,
    /// For each queued folio: the folio, and the tally before its entry was counted.
    failure: [(Option<FolioPtr>, Checkpoint); IsolationQueue::CAPACITY],
}

impl Queued {
    fn new() -> Self {
        Self {
            queue: IsolationQueue::new(),
            failure: [(None, Checkpoint::default()); IsolationQueue::CAPACITY],
        }
    }
}

impl Isolation<'_> {
    /// Isolates the folios of `queued`, in order, and adds them to the list; on a failure
    /// the tally and the last pfn go back to what the entry of the failed folio saw.
    fn isolate_queued(&mut self, queued: &mut Queued, tally: &mut ScanTally) -> Result<(), Fail> {
        let folios = &mut self.list.folios;
        let mut no_room = false;
        let result = queued.queue.isolate(|folio| {
            // There is room for one folio per PTE (`IsolationList`), so the push cannot fail;
            // if it did, dropping the folio puts it back at once.
            no_room |= folios.push_within_capacity(folio).is_err();
        });
        if no_room {
            return Err(Fail::Other);
        }
        let Err((failed, why)) = result else {
            return Ok(());
        };
        if let Some(&(folio, cp)) = queued.failure.get(failed) {
            self.last_folio = folio;
            tally.rewind(cp);
        }
        Err(isolate_fail(why))
    }

    /// Checks the folio that a PTE maps, for a collapse to a folio of `order`, and queues it
    /// for isolation (`queued`), or isolates it at once if it is large and not isolated yet;
    /// records what the entry maps. `facts` are those of entry `i`, which maps `addr` in `vma`
    /// of `mm`.
    #[inline]
    fn isolate_one(
        &mut self,
        facts: &PteFacts,
        at: Entry<'_>,
        tally: &mut ScanTally,
        queued: &mut Queued,
    ) -> Result<(), Fail> {
        let Some((page, folio)) = facts.page().filter(|_| facts.plain_small_for_isolation()) else {
            return self.isolate_one_slow(facts, at, tally, queued);
        };
        let Entry { mm, addr, i, .. } = at;
        // Every check of the slow path would pass.
        self.last_folio = Some(folio);
        self.queue_small(folio, page, i, tally, queued)?;
        self.note_writable(i, facts);
        tally.present(|| facts.referenced(mm, addr));
        Ok(())
    }

    /// The entries after the first of a run of `run` entries (see `ffi::for_each_run()`), all
    /// with `facts` but for the page, whose first entry `at` was isolated: each is isolated as
    /// that one. Those of a plain large folio ([`PteFacts::plain_large_for_isolation`]), which
    /// the first isolated and whose checks count nothing, are recorded at once.
    #[inline(never)]
    fn isolate_run_rest(
        &mut self,
        facts: &PteFacts,
        at: Entry<'_>,
        run: usize,
        tally: &mut ScanTally,
        queued: &mut Queued,
    ) -> Result<(), Fail> {
        let (from, to) = (at.i + 1, at.i + run);
        if facts.plain_large_for_isolation() && !tally.wants_referenced() {
            set_bits(&mut self.large, from, to);
            if facts.writable() {
                set_bits(&mut self.writable, from, to);
            }
            let slots = self.list.slots.get_mut(from..to).unwrap_or_default();
            for (t, slot) in (1..).zip(slots) {
                // INVARIANT: The page the entry maps and its folio, isolated for the run's
                // first entry.
                *slot = facts.nth(t).page();
            }
            return Ok(());
        }
        (1..run).try_for_each(|t| {
            let at = Entry {
                addr: at.addr + t * PAGE_SIZE,
                i: at.i + t,
                ..at
            };
            // A large folio's: what `isolate_one()` would do.
            self.isolate_one_slow(&facts.nth(t), at, tally, queued)
        })
    }

    /// Queues the small folio `folio`, which entry `i` maps (at `page`), for isolation, and
    /// records what the entry maps; the queue is isolated first if it is full.
    #[inline]
    fn queue_small(
        &mut self,
        folio: FolioPtr,
        page: PagePtr,
        i: usize,
        tally: &mut ScanTally,
        queued: &mut Queued,
    ) -> Result<(), Fail> {
        if queued.queue.is_full() {
            self.isolate_queued(queued, tally)?;
        }
        if let Some(failure) = queued.failure.get_mut(queued.queue.len()) {
            *failure = (Some(folio), tally.checkpoint());
        }
        // SAFETY: `folio` is mapped by the detached table, which only we can change, so it
        // stays valid; a small folio is mapped by this entry only, so it is queued once.
        unsafe { queued.queue.push(folio, 1) };
        if let Some(slot) = self.list.slots.get_mut(i) {
            // INVARIANT: The page this entry maps and its folio, isolated by the time
            // `DetachedTable::isolate` returns success.
            *slot = Some((page, folio));
        }
        Ok(())
    }

    /// [`Isolation::isolate_one`] for an entry that is not a plain one: each check in turn, in
    /// upstream's order.
    fn isolate_one_slow(
        &mut self,
        facts: &PteFacts,
        at: Entry<'_>,
        tally: &mut ScanTally,
        queued: &mut Queued,
    ) -> Result<(), Fail> {
        let Entry {
            mm,
            vma,
            addr,
            i,
            order,
        } = at;
        if facts.none_or_zero() {
            if facts.zero() {
                self.zero[i / 64] |= 1 << (i % 64);
            }
            if let Some(slot) = self.list.slots.get_mut(i) {
                *slot = None;
            }
        }
        match tally.check_entry(facts, Step::Isolate)? {
            EntryKind::Empty => return Ok(()),
            // Not after `Step::Isolate`; the range changed if it were.
            EntryKind::Swapped => return Err(Fail::PteNonPresent),
            EntryKind::Page => {}
        }
        let Some((page, folio)) = facts.page() else {
            return Err(Fail::PageNull);
        };
        self.last_folio = Some(folio);
        tally.check_page(facts, VmaKind::of(vma))?;
        // A folio as large as the new one already: nothing to gain.
        if order != PMD_ORDER && facts.folio_nr_pages() >= 1 << order {
            return Err(Fail::PteMappedHugepage);
        }
        if facts.large() {
            // In order: the small folios queued before this one first.
            self.isolate_queued(queued, tally)?;
            if !self.list.folios.iter().any(|f| f.as_ptr() == folio) {
                // SAFETY: `folio` is mapped by the detached table, which only we can change, so
                // it stays valid.
                let isolated = unsafe { IsolatedFolio::isolate(folio, facts.folio_nr_pages()) }
                    .map_err(isolate_fail)?;
                if self.list.folios.push_within_capacity(isolated).is_err() {
                    return Err(Fail::Other);
                }
            }
            self.large[i / 64] |= 1 << (i % 64);
            if let Some(slot) = self.list.slots.get_mut(i) {
                // INVARIANT: The page this entry maps and its folio, isolated above.
                *slot = Some((page, folio));
            }
        } else {
            self.queue_small(folio, page, i, tally, queued)?;
        }
        self.note_writable(i, facts);
        tally.present(|| facts.referenced(mm, addr));
        Ok(())
    }
}

/// Why a folio could not be isolated, as a collapse failure.
fn isolate_fail(why: IsolateError) -> Fail {
    match why {
        IsolateError::Locked => Fail::PageLock,
        IsolateError::Referenced => Fail::PageCount,
        IsolateError::NotOnLru => Fail::DelPageLru,
    }
}
