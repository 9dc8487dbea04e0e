// SPDX-License-Identifier: GPL-2.0

//! The copy of a candidate's pages while the process runs, before the mmap lock is taken for
//! write: the optimistic part of an anonymous collapse.
//!
//! Under the mmap lock for read, [`EarlyCopy::take`] write-protects the candidate's present
//! entries (for the CPUs and secondary MMUs), then reads which pages nobody pins (the order
//! of KSM's `write_protect_page()`: a GUP-fast pin taken before the write-protection shows in
//! the reference count read after it, and none can be taken for writing after it), takes a
//! reference to each, and copies them with no page-table lock held, still under the mmap
//! read lock, so that no other collapse of the range reaches its switch meanwhile (it would
//! find our references and fail the isolation); the references go before that lock. A [`RangeWatch`] over the range
//! notes every invalidation from then on but its own.
//!
//! Under the mmap lock for write, provided nothing invalidated the range
//! ([`EarlyCopy::invalidated`]), [`EarlyCopy::settle`] keeps, once the page table is detached,
//! the copy of each page whose entry still maps it read-only: a write would have made the
//! entry writable first, and making it read-only again is an invalidation. The collapse copies the other pages again, under the
//! lock, as before.
//!
//! No upstream counterpart: `collapse_huge_page()` copies everything under the mmap lock for
//! write (`__collapse_huge_page_copy()`).

use crate::{
    ffi::{self, FolioPtr, PagePtr, PageRef, PteRead},
    plan::Occupied,
    vma::{self, CollapseLocked},
    vocab::{Candidate, CollapseMode, MmapRead},
};
use kernel::{
    alloc::{flags::GFP_KERNEL, KVec},
    mm::{
        folio::NewFolio,
        pgtable::{PteTableLocked, RangeWatch, WriteProtect},
        Mm,
    },
    page::PAGE_SIZE,
};

/// The pages of a candidate copied into its new folio early, and the watch over
/// the candidate's range since before their entries were write-protected.
///
/// Dropping it ends the watch, which may sleep: it must outlive every
/// lock of the collapse.
pub(crate) struct EarlyCopy {
    /// The entries copied, and the pages they mapped then (not held: see `take()`).
    pages: KVec<(usize, PagePtr)>,
    watch: RangeWatch,
}

impl EarlyCopy {
    /// Write-protects the present entries of candidate `c` of `mm`, and copies into `new`
    /// each page they map that nothing else holds a reference to, under the mmap lock for
    /// read, with no page-table lock held. Its own references to the pages go before it
    /// returns: once the copy is made, a page that stays mapped in a range that nobody
    /// invalidates is the same page, which its mapping keeps.
    ///
    /// Returns `None`, having copied nothing that counts, if the range changed since the scan,
    /// a page could not be read (hardware poison), or memory for the watch ran out: the
    /// collapse then copies everything under the lock, as upstream does. The entries stay
    /// write-protected in any case; a write faults them writable again.
    pub(crate) fn take(
        mm: &Mm,
        c: Candidate,
        mode: CollapseMode,
        new: &mut NewFolio,
    ) -> Option<Self> {
        let nr = c.nr();
        let start = c.haddr + c.first * PAGE_SIZE;
        let watch = RangeWatch::new(mm, start, start + nr * PAGE_SIZE).ok()?;
        let mut found = KVec::<(usize, PagePtr, FolioPtr)>::with_capacity(nr, GFP_KERNEL).ok()?;
        let mut held = KVec::with_capacity(nr, GFP_KERNEL).ok()?;
        let mut pages = KVec::with_capacity(nr, GFP_KERNEL).ok()?;
        // Held across the copy: another collapse of the range cannot reach its switch (which
        // takes the lock for write and would find our references) until the copy is over.
        let guard = MmapRead::lock(mm);
        {
            let vma = vma::revalidate(&guard, c.haddr, mode, c.order).ok()?;
            if !vma.is_anonymous() {
                return None;
            }
            // Started before the page-table lock is taken: it may sleep.
            let wp = WriteProtect::start(&guard, vma, start, start + nr * PAGE_SIZE, &watch)?;
            let pmd = guard.pmd_table(c.haddr).ok()?;
            let mut table = PteTableLocked::lock(pmd, c.haddr)?;
            wp.protect(&mut table);
            // SAFETY: `table` is the page table of `vma` at `c.haddr`; its entry `c.first` maps
            // `start`.
            let read = unsafe {
                ffi::for_each_pte(
                    vma,
                    start,
                    &table,
                    c.first,
                    nr,
                    PteRead::FOLIO_STATE,
                    |k, facts| {
                        if let Some((page, folio)) = facts.page().filter(|_| facts.copyable()) {
                            // Room for one per entry: cannot fail.
                            let _ = found.push_within_capacity((c.first + k, page, folio));
                        }
                        Ok(())
                    },
                )
            };
            read.ok()?;
            // Only once every folio's references were read: a large folio maps several
            // entries, and ours would count as extra.
            for &(i, page, folio) in found.iter() {
                // SAFETY: `folio` is mapped by `table`, which is locked, and `page` is its page
                // that entry `i` maps.
                let page_ref = unsafe { PageRef::get(page, folio) };
                // Room for one per entry: cannot fail; a reference that did not fit is put
                // back at once.
                let _ = held.push_within_capacity((i, page_ref));
            }
            // The page-table lock, then the notifier range go.
        }
        for (i, page_ref) in held.iter() {
            // SAFETY: The page is held (above). A write to it during the copy faults its
            // entry writable first, which `settle()` sees.
            unsafe { new.copy_mc_page(i - c.first, page_ref.page()) }.ok()?;
            // Room for one per entry: cannot fail.
            let _ = pages.push_within_capacity((*i, page_ref.page()));
        }
        // The references go before the mmap lock: from here on, a page that stays mapped in
        // a range nobody invalidates is the same page, which its mapping keeps.
        drop(held);
        drop(guard);
        Some(Self { pages, watch })
    }

    /// The entries whose pages were copied.
    pub(crate) fn copied(&self) -> Occupied {
        let mut copied = Occupied::EMPTY;
        for &(i, _) in self.pages.iter() {
            copied.set(i);
        }
        copied
    }

    /// Whether anything but this copy invalidated the range since before its entries were
    /// write-protected; then no page of the copy counts. To be asked with every invalidator
    /// of the range shut out (the mmap lock for write, the VMA's faults, the anon_vma lock),
    /// and before the page table is detached, which invalidates the range itself.
    pub(crate) fn invalidated(&self) -> bool {
        self.watch.invalidated()
    }

    /// Returns the entries whose early copy holds, those that `maps_read_only(i, page)` says
    /// still map their page read-only, or `None` if it does not hold at all (`holds` is
    /// false: see [`EarlyCopy::invalidated`]). To be called once the entries can no longer
    /// change (the page table detached).
    pub(crate) fn settle(
        &mut self,
        holds: bool,
        maps_read_only: impl Fn(usize, PagePtr) -> bool,
    ) -> Option<Occupied> {
        let valid = holds.then(|| {
            let mut valid = Occupied::EMPTY;
            for &(i, page) in self.pages.iter() {
                if maps_read_only(i, page) {
                    valid.set(i);
                }
            }
            valid
        });
        self.pages.clear();
        valid
    }
}
