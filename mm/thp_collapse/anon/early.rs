// SPDX-License-Identifier: GPL-2.0

//! The copy of a candidate's pages while the process runs, before the switch: the optimistic
//! part of an anonymous collapse.
//!
//! Under the mmap lock for read, [`EarlyCopy::take`] write-protects the candidate's present
//! entries (for the CPUs and secondary MMUs), then reads which pages nobody pins (the order
//! of KSM's `write_protect_page()`: a GUP-fast pin taken before the write-protection shows in
//! the reference count read after it, and none can be taken for writing after it), takes a
//! reference to each, and copies them with no page-table lock held, still under the mmap
//! read lock; another collapse of the range that reaches its switch meanwhile finds our
//! references and fails its isolation. The references go before that lock. A
//! [`RangeWatch`] over the range notes every invalidation from then on but its own. Pages
//! written during the copy have writable entries again: a few more passes write-protect
//! those and copy them again, as long as enough were written to be worth a pass.
//!
//! At the switch (under the mmap lock for read or write: `anon::take_isolated()`), provided
//! nothing invalidated the range ([`EarlyCopy::invalidated`]), [`EarlyCopy::settle`] keeps,
//! once the page table is detached
//! (or its entries taken out under its lock), the copy of each page whose entry still maps it
//! read-only: a write would have made the entry writable first, and making it read-only again
//! is an invalidation (or a later pass of this copy, which copied the page again). The
//! collapse copies the other pages again, under the lock, as before.
//!
//! A copy that something else invalidated starts over once ([`RESTARTS`]), under a new watch
//! taken with no lock held; if that one is invalidated too, the collapse copies everything
//! under the lock.
//!
//! No upstream counterpart: `collapse_huge_page()` copies everything under the mmap lock for
//! write (`__collapse_huge_page_copy()`).

use crate::{
    ffi::{self, FolioPtr, PagePtr, PageRef, PteRead},
    plan::Occupied,
    vma::CollapseLocked,
    vocab::{Candidate, CollapseMode, MmapRead},
};
use kernel::{
    alloc::{flags::GFP_KERNEL, KVec},
    mm::{
        folio::NewFolio,
        pgtable::{PteTableLocked, RangeWatch, WriteProtect},
        virt::VmaRef,
        Mm,
    },
    page::PAGE_SIZE,
};

/// How many more passes at most the early copy makes over the pages written while it copied
/// (write-protecting them again and copying them again), before the switch copies what is
/// left under the lock.
const RETRIES: u32 = 3;

/// How many times at most the early copy starts over, from its first pass, after something
/// else invalidated the range while it copied (a single MADV_FREE, a NUMA hinting scan, a
/// fork): once, so that a range invalidated over and over costs one copy more, not many.
const RESTARTS: u32 = 1;

/// A pass of the early copy that wrote this many pages or fewer is the last: copying them
/// again under the lock costs less than another pass (a walk of the entries and a TLB flush).
const FEW_WRITTEN: u32 = 8;

/// Whether the early copy makes another pass after one that found `written` pages of the copy
/// written meanwhile, the pass before it having copied `copied` pages: if more than
/// [`FEW_WRITTEN`] were, and at most half as many as it copied. A pass finds about as many pages
/// written as the writers dirty while the pass before copies; when that is more than half,
/// they write as fast as the passes copy, and another would find as many again: the switch
/// copies them once, under the lock, instead.
fn another_pass(written: usize, copied: usize) -> bool {
    written > FEW_WRITTEN as usize && 2 * written <= copied
}

/// The pages of a candidate copied into its new folio early, and the watch over
/// the candidate's range since before their entries were write-protected.
///
/// Dropping it ends the watch, which may sleep: it must outlive every
/// lock of the collapse.
pub(crate) struct EarlyCopy {
    /// The entries copied, in entry order (a later pass searches it), and the pages they
    /// mapped then (not held: see `take()`).
    pages: KVec<(usize, PagePtr)>,
    watch: RangeWatch,
    /// The passes made after the first, for the pages written meanwhile.
    retries: u32,
    /// The pages those passes copied again.
    recopied: u32,
    /// How many times the copy started over ([`RESTARTS`]).
    restarts: u32,
}

/// The working space of the passes of an early copy, allocated before any lock.
struct Scratch {
    /// The copyable entries a pass found, with their pages and folios.
    found: KVec<(usize, PagePtr, FolioPtr)>,
    /// The references a pass holds while it copies.
    held: KVec<(usize, PageRef)>,
    /// Whether the first pass found a page off the LRU or with an extra reference (in an LRU
    /// or mlock batch, say).
    batch_sign: bool,
}

impl EarlyCopy {
    /// Write-protects the present entries of candidate `c` of `mm`, and copies into `new`
    /// each page they map that nothing else holds a reference to, under the mmap lock for
    /// read, with no page-table lock held. For MADV_COLLAPSE, drains the LRU batches then if a
    /// page the switch isolates may sit in one ([`EarlyCopy::may_be_batched`]). Then, at most
    /// [`RETRIES`] times, and while the passes converge ([`another_pass`]: each finds more
    /// than [`FEW_WRITTEN`] of the pages of the copy written meanwhile, their entries
    /// writable again, and at most half as many as the pass before copied; a pass that finds
    /// none is a look at the entries under the PTE lock, no retry), write-protects those
    /// again and copies them again. Its own references to the pages go before it returns:
    /// once the copy is made, a page that stays mapped in a range that nobody invalidates is
    /// the same page, which its mapping keeps.
    /// If something else invalidated the range meanwhile, starts over once ([`RESTARTS`]),
    /// under a new watch.
    ///
    /// `cleared` has the entries whose pages of `new` are clear (`anon::clear_empty()`);
    /// every page the copy writes leaves it, whatever becomes of the copy.
    ///
    /// Returns `None`, having copied nothing that counts, if the range changed since the scan,
    /// a page could not be read (hardware poison), or memory for the watch ran out: the
    /// collapse then copies everything under the lock, as upstream does. The entries stay
    /// write-protected in any case; a write faults them writable again.
    pub(crate) fn take(
        mm: &Mm,
        c: Candidate,
        mode: CollapseMode,
        (new, cleared): (&mut NewFolio, &mut Occupied),
    ) -> Option<Self> {
        let nr = c.nr();
        let start = c.haddr + c.first * PAGE_SIZE;
        let end = start + nr * PAGE_SIZE;
        let mut early = Self {
            pages: KVec::with_capacity(nr, GFP_KERNEL).ok()?,
            watch: RangeWatch::new(mm, start, end).ok()?,
            retries: 0,
            recopied: 0,
            restarts: 0,
        };
        let mut scratch = Scratch {
            found: KVec::with_capacity(nr, GFP_KERNEL).ok()?,
            held: KVec::with_capacity(nr, GFP_KERNEL).ok()?,
            batch_sign: false,
        };
        loop {
            ffi::early_test_pause(ffi::EarlyPause::Before);
            early.passes(mm, c, mode, (new, cleared), &mut scratch)?;
            if !early.watch.invalidated() || early.restarts == RESTARTS {
                ffi::early_test_pause(ffi::EarlyPause::Done);
                return Some(early);
            }
            // Unmapped, protected or migrated while copied: from the start, under a new watch,
            // made with no lock held (its insertion may take the mmap lock). What the copy
            // wrote stays in `new` until copied over, and out of `cleared`.
            early.watch = RangeWatch::new(mm, start, end).ok()?;
            early.pages.clear();
            early.restarts += 1;
        }
    }

    /// The passes of one copy of [`EarlyCopy::take`], under an mmap read lock of their own:
    /// the first over every entry, then the retries. Returns `None` as `take()` does.
    fn passes(
        &mut self,
        mm: &Mm,
        c: Candidate,
        mode: CollapseMode,
        (new, cleared): (&mut NewFolio, &mut Occupied),
        scratch: &mut Scratch,
    ) -> Option<()> {
        // Held across the passes, as upstream's scan holds it: our references are taken and
        // dropped under it.
        let guard = MmapRead::lock(mm);
        let vma = super::revalidate_anon(&guard, c.haddr, mode, c.order).ok()?;
        // Without `VM_WRITE`, a `FOLL_FORCE` write (ptrace, `/proc/pid/mem`) goes through a
        // read-only entry to an exclusive page (`can_follow_write_pte()`): no fault, no
        // notifier, nothing the watch or the entries would show. Such a range is copied under
        // the lock. Adding `VM_WRITE` (mprotect) takes the write lock and invalidates the range.
        if vma.flags() & kernel::mm::virt::flags::WRITE == 0 {
            return None;
        }
        self.pass(&guard, vma, c, (&mut *new, &mut *cleared), scratch, None)?;
        ffi::early_test_pause(ffi::EarlyPause::After);
        if mode.is_madvise() && self.may_be_batched(&guard, c, scratch.batch_sign) {
            // The copy took a while, and pages faulted meanwhile sit in LRU batches, with a
            // reference that would fail their isolation: drained as a request drains
            // (khugepaged drains once per pass, and tries a failed range again on the next).
            // Before the retries, which copy again what was written meanwhile. Upstream
            // drains under the mmap read lock too (`madvise_collapse()`).
            ffi::drain_lru_batches(mode.effort());
        }
        // What the last pass copied: the next one finds at most that many written.
        let mut last = self.pages.len();
        while self.retries < RETRIES && !self.watch.invalidated() {
            let copied = self.copied();
            let again = Some(&copied);
            let written = self.pass(&guard, vma, c, (&mut *new, &mut *cleared), scratch, again)?;
            if !another_pass(written as usize, last) {
                break;
            }
            last = written as usize;
        }
        Some(())
    }

    /// Whether a folio that the switch of candidate `c` isolates may sit in an LRU batch after
    /// the first pass, under `guard`: that pass found a page off the LRU or with an extra
    /// reference (`batch_sign`); or the range was invalidated since the watch began (a page
    /// the copy read may have been replaced: zapped and faulted again, copied on write,
    /// migrated); or an entry that no pass copied is writable now, a write fault having mapped
    /// a new page there since (or a swap-in: the first pass write-protected every entry it
    /// found present; a read fault maps the zero page, which no batch holds). A look at the
    /// entries under the PTE lock; `true` if it cannot look. A folio that comes after the look
    /// fails the isolation: that of a switch under the read lock puts everything back, drains
    /// and goes on under the write lock (`anon::try_take()`); where the switch gives up before
    /// its isolation, or none is tried (a uffd-armed VMA, `rust_switch` `vma`), the isolation
    /// under the write lock fails and the range with it (`EAGAIN`), as after an unconditional
    /// drain here.
    fn may_be_batched(&self, guard: &MmapRead<'_>, c: Candidate, batch_sign: bool) -> bool {
        if batch_sign || self.watch.invalidated() {
            return true;
        }
        let Ok(pmd) = guard.pmd_table(c.haddr) else {
            return true;
        };
        let Some(table) = PteTableLocked::lock(pmd, c.haddr) else {
            return true;
        };
        let copied = self.copied();
        ffi::writable_entries(&table, c.first, c.nr()).is_none_or(|w| !w.is_subset(&copied))
    }

    /// One pass of [`EarlyCopy::take`] under `guard`: write-protects the present entries of
    /// candidate `c` in `vma`, then copies into `new` the pages that nothing else holds: on
    /// the first pass (`again` is `None`), of every entry; on a later one, of the entries
    /// `again` (copied before) that this pass found writable, that is written since; such a
    /// pass counts as a retry. An entry of `again` found writable whose page can no longer be
    /// copied (a pin came, or another page) leaves the copy: the switch copies it again under
    /// the lock. Each page it copies into leaves `cleared`. Returns how many entries of `again`
    /// were found written (0 on the first).
    fn pass(
        &mut self,
        guard: &MmapRead<'_>,
        vma: &VmaRef,
        c: Candidate,
        (new, cleared): (&mut NewFolio, &mut Occupied),
        scratch: &mut Scratch,
        again: Option<&Occupied>,
    ) -> Option<u32> {
        let nr = c.nr();
        let start = c.haddr + c.first * PAGE_SIZE;
        let mut written = Occupied::EMPTY;
        scratch.found.clear();
        if again.is_none() {
            scratch.batch_sign = false;
        }
        if let Some(again) = again {
            // Most often nothing was written: then a look at the entries under the PTE lock
            // is the whole pass, without a notifier range. An entry written after the look
            // is copied again under the lock, as after any pass.
            let pmd = guard.pmd_table(c.haddr).ok()?;
            let table = PteTableLocked::lock(pmd, c.haddr)?;
            if !ffi::writable_entries(&table, c.first, nr)?.intersects(again) {
                return Some(0);
            }
        }
        {
            // Started before the page-table lock is taken: it may sleep.
            let wp = WriteProtect::start(guard, vma, start, start + nr * PAGE_SIZE, &self.watch)?;
            let pmd = guard.pmd_table(c.haddr).ok()?;
            let mut table = PteTableLocked::lock(pmd, c.haddr)?;
            wp.protect(&mut table, |i| {
                if again.is_none_or(|a| a.contains(i)) {
                    written.set(i);
                }
            });
            // Protected again since the look (by a fork, say, which the watch saw): nothing
            // to copy again.
            if again.is_some() && written == Occupied::EMPTY {
                return Some(0);
            }
            let pages = &self.pages;
            // On a later pass, an entry written since it was copied, which maps the same page.
            let wanted = |i: usize, page: PagePtr| {
                again.is_none()
                    || written.contains(i)
                        && pages
                            .binary_search_by_key(&i, |&(j, _)| j)
                            .is_ok_and(|k| pages.get(k).is_some_and(|&(_, p)| p == page))
            };
            let (found, batch_sign) = (&mut scratch.found, &mut scratch.batch_sign);
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
                        let i = c.first + k;
                        // Read on every pass, looked at after the first only.
                        *batch_sign |=
                            facts.page().is_some() && (!facts.lru() || facts.extra_refs());
                        if let Some((page, folio)) = facts
                            .page()
                            .filter(|&(page, _)| wanted(i, page) && facts.copyable())
                        {
                            // Room for one per entry: cannot fail.
                            let _ = found.push_within_capacity((i, page, folio));
                        }
                        Ok(())
                    },
                )
            };
            read.ok()?;
            if again.is_some() {
                // Written, and not to be copied again (or mapping another page now): out of
                // the copy.
                let mut refound = Occupied::EMPTY;
                for &(i, _, _) in scratch.found.iter() {
                    refound.set(i);
                }
                self.pages
                    .retain(|&mut (i, _)| !written.contains(i) || refound.contains(i));
            }
            // Only once every folio's references were read: a large folio maps several
            // entries, and ours would count as extra.
            for &(i, page, folio) in scratch.found.iter() {
                // SAFETY: `folio` is mapped by `table`, which is locked, and `page` is its page
                // that entry `i` maps.
                let page_ref = unsafe { PageRef::get(page, folio) };
                // Room for one per entry: cannot fail; a reference that did not fit is put
                // back at once.
                let _ = scratch.held.push_within_capacity((i, page_ref));
            }
            // The page-table lock, then the notifier range go.
        }
        for (i, page_ref) in scratch.held.iter() {
            // Not clear any more, even if the copy fails half-way.
            cleared.remove(*i);
            // SAFETY: The page is held (above). A write to it during the copy faults its
            // entry writable first, which the next pass or `settle()` sees.
            unsafe { new.copy_mc_page(i - c.first, page_ref.page()) }.ok()?;
            if again.is_none() {
                // Room for one per entry: cannot fail.
                let _ = self.pages.push_within_capacity((*i, page_ref.page()));
            } else {
                self.recopied += 1;
            }
        }
        // The references go before the mmap lock: from here on, a page that stays mapped in
        // a range nobody invalidates is the same page, which its mapping keeps.
        scratch.held.clear();
        if again.is_none() {
            return Some(0);
        }
        self.retries += 1;
        Some(written.weight(c.first, c.first + nr))
    }

    /// How many passes the copy made after its first one, and how many pages they copied
    /// again.
    pub(crate) fn retried(&self) -> (u32, u32) {
        (self.retries, self.recopied)
    }

    /// How many times the copy started over ([`RESTARTS`]).
    pub(crate) fn restarts(&self) -> u32 {
        self.restarts
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
    /// write-protected; then no page of the copy counts. To be asked at the switch, with the
    /// anon_vma lock held and, if the mmap lock is held for read only, again once the entries
    /// are taken out under the table's lock (see `anon::take_isolated()` for what may run
    /// meanwhile); before the page table is detached, which invalidates the range itself
    /// (taking its entries out under the watch's own notifier range does not).
    pub(crate) fn invalidated(&self) -> bool {
        self.watch.invalidated()
    }

    /// Returns the entries whose early copy holds, those that `maps_read_only(i, page)` says
    /// still map their page read-only, or `None` if it does not hold at all (`holds` is
    /// false: see [`EarlyCopy::invalidated`]). To be called once the entries can no longer
    /// change (the page table detached, or its entries taken out); again after a switch that
    /// gave up, for the next one.
    pub(crate) fn settle(
        &mut self,
        holds: bool,
        maps_read_only: impl Fn(usize, PagePtr) -> bool,
    ) -> Option<Occupied> {
        holds.then(|| {
            let mut valid = Occupied::EMPTY;
            for &(i, page) in self.pages.iter() {
                if maps_read_only(i, page) {
                    valid.set(i);
                }
            }
            valid
        })
    }

    /// The watch over the candidate's range, which a switch under the page-table locks owns
    /// its notifier range with (so that it does not count as an invalidation).
    pub(crate) fn watch(&self) -> &RangeWatch {
        &self.watch
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kernel::macros::kunit_tests(thp_collapse_early)]
mod tests {
    use super::*;

    /// The passes go on while each finds more than a few pages written and at most half of
    /// what the one before copied.
    #[test]
    fn another_pass_only_while_the_passes_converge() {
        // A few written: copied again under the lock instead.
        assert!(!another_pass(FEW_WRITTEN as usize, 512));
        assert!(another_pass(FEW_WRITTEN as usize + 1, 512));
        // Half of what the pass before copied: converging.
        assert!(another_pass(256, 512));
        assert!(another_pass(128, 256));
        // More than half: the writers keep up with the copy.
        assert!(!another_pass(257, 512));
        assert!(!another_pass(511, 511));
        assert!(!another_pass(20, 30));
    }
}
