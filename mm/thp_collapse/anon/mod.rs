// SPDX-License-Identifier: GPL-2.0

//! The anonymous-memory backend: the scan of a PMD range (`read.rs`), the planned collapse of
//! its candidates, and for each the allocation, swap-in, detach, isolation, copy and install
//! (`detach.rs`).
//!
//! Upstream reference: `collapse_scan_pmd()`, `collapse_huge_page()` and their helpers in
//! [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

#[path = "claim.rs"]
mod claim;
#[path = "detach.rs"]
mod detach;
#[path = "early.rs"]
mod early;
#[path = "read.rs"]
mod read;

pub(crate) use detach::RequestState;

use crate::{
    ffi::{self, trace, SwitchMode},
    new_folio,
    outcome::{verdict, Attempt, Collapsed, Fail, Verdict},
    plan::{self, Occupied},
    scan::{InPlace, ScanTally},
    vma::{self, CollapseLocked},
    vocab::{
        Candidate, CollapseMode, Effort, Locked, MmapRead, PteSpan, Tunables, Userfault, PMD_ORDER,
        PTES_PER_PMD,
    },
};
use detach::{AnonVmaWrite, DetachedTable, IsolationList, MmapWrite};
use early::EarlyCopy;
use kernel::{
    mm::{
        folio::{NewFolio, NodeLoad, Nodes},
        mmap_lock::MmapLocked,
        pgtable::{NewPteTable, PmdState, PteSnapshot},
    },
    page::PAGE_SIZE,
    time::{Instant, Monotonic},
};

/// Collapses the entries `span` of the PMD range at `addr` of an anonymous VMA that the
/// caller found under `guard`, with the `tunables` of this step.
///
/// Returns the result, the number of page-table entries looked at (khugepaged's scan budget),
/// and the state of the lock. `req` is the state of the request (its isolation list, allocated
/// at its first collapse, and the time it held the mmap lock for write).
pub(crate) fn collapse_pmd<'a>(
    guard: MmapRead<'a>,
    addr: usize,
    span: PteSpan,
    mode: CollapseMode,
    tunables: &Tunables,
    req: &mut RequestState,
) -> (Attempt, u32, Locked<'a>) {
    let mm = guard.mm();
    let mut s = scan(&guard, addr, span, mode, tunables);
    // A page off the LRU or with an extra reference may sit in an LRU batch: the request's
    // drain, if it is still to make it, lets it through (see `request::madvise()`), and the
    // range is scanned again. So may the swap-cache folio behind a swap entry (read ahead or
    // rotated after writeback on another CPU), which the scan does not look at: the swap-in
    // would map it and the isolation fail on it (drained for only if the range may collapse;
    // no second scan then). Under the lock, as upstream's drain.
    let batched = matches!(s.verdict, Err(Fail::PageLru | Fail::PageCount));
    let drained = (batched || (s.swapped > 0 && s.verdict.is_ok())) && req.drain_if_due();
    if drained && batched {
        s = scan(&guard, addr, span, mode, tunables);
    }
    let mut retaken = false;
    // Another collapse's early copy holds references to the pages (see `claim.rs`): a
    // MADV_COLLAPSE that may block waits for it and looks again, as upstream's waits for the
    // mmap lock.
    let guard = match mode {
        CollapseMode::Madvise(flags)
            if s.verdict == Err(Fail::PageCount)
                && mode.effort() != Effort::Light
                && claim::claimed(mm, addr) =>
        {
            drop(guard);
            if claim::wait_for_claim(mm, addr) {
                req.waited_for_claim();
            }
            let guard = MmapRead::lock(mm);
            retaken = true;
            s = match revalidate_anon(&guard, addr, mode, flags.order) {
                Ok(_) => scan(&guard, addr, span, mode, tunables),
                Err(fail) => Scanned::failed(fail, false),
            };
            guard
        }
        _ => guard,
    };
    let (attempt, state) = match s.verdict {
        Ok(()) => {
            // Until the last candidate returns: another MADV_COLLAPSE of the range waits
            // instead of failing on an early copy's references.
            let claim = claim::Claim::take(mm, addr);
            drop(guard);
            let max_none = |order| mode.limits(tunables, order, Userfault::Unarmed).max_none;
            let collapse = |first, order| {
                let c = Candidate {
                    haddr: addr,
                    first,
                    order,
                };
                collapse_candidate(mm, c, mode, tunables, &s, req)
            };
            let attempt = match &s.in_place {
                Some(in_place) => collapse_span(span, &s, in_place, max_none, collapse),
                None => {
                    plan::collapse_planned(&s.occupied, s.enabled, s.swapped, max_none, collapse)
                }
            };
            drop(claim);
            (attempt, Locked::Dropped)
        }
        // VMAs the caller saw before are stale.
        Err(fail) if retaken => {
            drop(guard);
            (Err(fail), Locked::Dropped)
        }
        Err(fail) => (Err(fail), Locked::Held(guard)),
    };
    if s.traced {
        trace::scan_pmd(
            mm,
            s.failed_pfn,
            s.referenced,
            s.none_or_zero,
            &attempt,
            s.swapped,
        );
    }
    (attempt, s.scanned, state)
}

/// [`vma::revalidate`] for an anonymous range: also fails with [`Fail::PageAnon`] if the range
/// was unmapped and mapped again as a file while the lock was dropped.
fn revalidate_anon<'g, G: CollapseLocked>(
    guard: &'g G,
    addr: usize,
    mode: CollapseMode,
    order: u32,
) -> Result<&'g kernel::mm::virt::VmaRef, Fail> {
    let vma = vma::revalidate(guard, addr, mode, order)?;
    if !vma.is_anonymous() {
        return Err(Fail::PageAnon);
    }
    Ok(vma)
}

/// The most pages a switch under the page-table locks copies again (written after the early
/// copy's last pass, or not copied early): with more it puts everything back, and the switch
/// write-locks the VMA instead, so that a long copy never holds the page-table spinlocks.
const SWITCH_RECOPY_MAX: usize = 32;

/// Whether a switch under the page-table locks that failed with `fail` is tried again with the
/// VMA write-locked: if a page fault or another walker under the VMA's lock, which that one
/// waits for, may have been in the way (a folio locked or referenced meanwhile, an entry
/// being swapped or migrated, the table freed empty).
fn switch_falls_back(fail: Fail) -> bool {
    matches!(
        fail,
        Fail::PageLock
            | Fail::PageCount
            | Fail::PageLru
            | Fail::DelPageLru
            | Fail::PteNonPresent
            | Fail::NoPteTable
    )
}

/// Reads the swapped-out pages of candidate `c` back in, under the mmap lock for read, after
/// revalidating the range. Returns with no lock held.
fn swap_in(
    mm: &kernel::mm::Mm,
    c: Candidate,
    mode: CollapseMode,
    referenced: u32,
) -> Result<(), Fail> {
    let guard = MmapRead::lock(mm);
    revalidate_anon(&guard, c.haddr, mode, c.order)?;
    read::swap_in(guard, c, referenced).map(drop)
}

/// Replaces the PTEs of candidate `c` by a mapping of `new`, a folio of its order that the
/// caller allocated and charged without the mmap lock: with the PMD for the PMD order, with
/// PTEs of the new folio otherwise.
///
/// Copies the pages early, while the process runs ([`EarlyCopy`]). Then, if that copy holds
/// and sysfs `rust_switch` is `read` (the default), switches under the mmap lock for read and
/// the page-table locks ([`switch_read_locked`]): the process runs on but for the range. If
/// that gives up, or for the other modes, takes the mmap lock for write (revalidating the
/// range), the anon_vma lock, detaches and isolates, copies again the pages that changed
/// meanwhile (all of them if the early copy could not be made or was invalidated), and
/// installs; any failure on the way puts everything back. Then downgrades the mmap lock to
/// read, and removes the old pages' rmap and frees them under that. Returns with no lock
/// held, and adds the time it held the mmap lock for write, and how it copied, to `req`.
/// Upstream: `collapse_huge_page()` after `alloc_charge_folio()`, which copies everything and
/// unmaps and frees the old pages under the write lock.
fn collapse_anon(
    mm: &kernel::mm::Mm,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    mut new: NewFolio,
    cleared: &Occupied,
    req: &mut RequestState,
) -> Attempt {
    // Less the pages the early copy writes over, whatever becomes of it.
    let mut cleared = cleared.clone();
    let mut early = EarlyCopy::take(mm, c, mode, (&mut new, &mut cleared));
    let restarts = early.as_ref().map_or(0, EarlyCopy::restarts);
    // Sleeping allocations come before the locks.
    let list = req.list()?;
    // The table deposited in place of the detached one; mTHP orders put that back.
    let mut fresh = (c.order == PMD_ORDER)
        .then(|| new_folio::alloc_table(mm, mode.alloc_policy(tunables)))
        .transpose()?;
    // Room to take the entries out into, for a switch under the page-table locks: with an
    // early copy to keep, unless sysfs asks for the VMA write-locked (and without, if the
    // memory is short).
    let switch = ffi::switch_mode();
    let mut snapshot = early
        .as_ref()
        .filter(|_| switch != SwitchMode::Vma)
        .and_then(|_| PteSnapshot::new().ok());
    let mut copy = CopyKind::Locked;
    let valid_early = early.as_mut().filter(|early| !early.invalidated());
    let read = match switch {
        SwitchMode::Read => snapshot.take(),
        SwitchMode::Ptl | SwitchMode::Vma => None,
    };
    if let (Some(e), Some(saved)) = (valid_early, read) {
        let room = (&mut *list, saved);
        match switch_read_locked(
            mm,
            c,
            mode,
            tunables,
            (new, fresh, &cleared),
            (e, room),
            &mut copy,
        ) {
            Ok(attempt) => return finish(req, attempt, copy, restarts, early),
            // Gave up, everything put back: with the mmap lock held for write.
            Err(back) => (new, fresh) = back,
        }
    }
    let guard = MmapWrite::lock(mm);
    let held = Instant::<Monotonic>::now();
    let attempt = collapse_write_locked(
        &guard,
        c,
        mode,
        tunables,
        (new, fresh, &cleared),
        &mut *list,
        (early.as_mut(), &mut copy, snapshot),
    );
    // Faults and mmap readers come in again; no writer can until the old folios are gone.
    let guard = guard.downgrade();
    let held = held.elapsed();
    // SAFETY: The VMA of the range, found under the lock held since the install.
    unsafe { list.release_unmapped(guard.find_vma(c.haddr)) };
    drop(guard);
    req.held_for_write(held);
    finish(req, attempt, copy, restarts, early)
}

/// The end of [`collapse_anon`], with no lock held: notes in `req` how a collapse that went
/// through copied (`copy`, after `restarts` of its early copy), and ends the `early` copy's
/// watch, which may sleep.
fn finish(
    req: &mut RequestState,
    attempt: Attempt,
    copy: CopyKind,
    restarts: u32,
    early: Option<EarlyCopy>,
) -> Attempt {
    if attempt.is_ok() {
        req.copied(copy, restarts);
    }
    drop(early);
    attempt
}

/// The switch under the mmap lock for read and the page-table locks of candidate `c` of `mm`
/// into `new` (and `fresh`, for the PMD order), for an early copy `e` that nothing invalidated
/// yet: takes the read lock, revalidates the range and takes its entries out into `saved`
/// ([`try_take`], which reads the watch again once they are out), isolating into `list`,
/// copies the pages that changed since the early copy (`cleared` has those of the new folio
/// cleared already), installs, and releases the old folios. Returns with no lock held, the
/// result; or `new` and `fresh` back, with everything put back, if it gave up (`copy` then
/// says whether it was tried).
fn switch_read_locked<'m>(
    mm: &'m kernel::mm::Mm,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    (new, fresh, cleared): (NewFolio, Option<NewPteTable<'m>>, &Occupied),
    (e, (list, saved)): (&mut EarlyCopy, (&mut IsolationList, PteSnapshot)),
    copy: &mut CopyKind,
) -> Result<Attempt, (NewFolio, Option<NewPteTable<'m>>)> {
    let guard = MmapRead::lock(mm);
    let early_copy = e.retried();
    let room = (&mut *list, (saved, true));
    let (table, valid) = match try_take(&guard, c, mode, tunables, (e, cleared), room, copy) {
        Ok(Some(taken)) => taken,
        Ok(None) => return Err((new, fresh)),
        Err(fail) => return Ok(Err(fail)),
    };
    let switch = (early_copy, Switch::Read);
    let attempt = copy_install(table, Some(valid), (new, fresh, cleared), switch, copy);
    // SAFETY: The VMA of the range, found under the lock held since the install.
    unsafe { list.release_unmapped(guard.find_vma(c.haddr)) };
    Ok(attempt)
}

/// Maps the PMD-order folio that every entry of candidate `c` (of the PMD order) maps in
/// order with the PMD instead, without allocating or copying: as [`collapse_anon`], with the
/// same locks and checks, but the folio stays where it is; with `rust_switch` at `read`,
/// under the mmap lock for read first ([`in_place_read_locked`]). Returns `None`, having
/// changed nothing, if the entries no longer map such a folio, exclusively: the caller copies
/// them instead. Returns with no lock held. Upstream has no such path: it copies the folio
/// into a new one.
fn remap_in_place(
    mm: &kernel::mm::Mm,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    req: &mut RequestState,
) -> Option<Attempt> {
    let policy = mode.alloc_policy(tunables);
    let allocated = req
        .list()
        .and_then(|list| Ok((list, new_folio::alloc_table(mm, policy)?)));
    let (list, mut fresh) = match allocated {
        Ok(allocated) => allocated,
        Err(fail) => return Some(Err(fail)),
    };
    let saved = (ffi::switch_mode() == SwitchMode::Read)
        .then(PteSnapshot::new)
        .and_then(Result::ok);
    if let Some(saved) = saved {
        match in_place_read_locked(mm, (c, mode, tunables), &mut *list, saved, fresh) {
            Ok(attempt) => {
                if attempt.as_ref().is_some_and(Result::is_ok) {
                    req.mapped_in_place(true);
                }
                return attempt;
            }
            // Gave up, everything put back: with the mmap lock held for write.
            Err(back) => fresh = back,
        }
    }
    let guard = MmapWrite::lock(mm);
    let held = Instant::<Monotonic>::now();
    // `None` if no longer in place: the table was dropped, which put everything back.
    let attempt = detach_isolated(&guard, c, mode, tunables, list, None)
        .map(|(table, _)| table.install_in_place(fresh));
    req.held_for_write(held.elapsed());
    drop(guard);
    let attempt = match attempt {
        Ok(None) => return None,
        Ok(Some(attempt)) => attempt,
        Err(fail) => Err(fail),
    };
    if attempt.is_ok() {
        req.mapped_in_place(false);
    }
    Some(attempt)
}

/// [`remap_in_place`] under the mmap lock for read: the candidate's entries are taken out
/// into `saved` under the page-table locks, as by a switch under the read lock
/// ([`take_isolated`]), with no watch (nothing is copied: the folio itself is mapped), and
/// its folio isolated into `list`; if the entries still map it in place, it is mapped with
/// the PMD, `fresh` deposited. Returns with no lock held what [`remap_in_place`] returns; or
/// `fresh` back, with everything put back, if it gave up: the VMA is registered with
/// userfaultfd, or the isolation failed in a way a walker under the VMA's lock or the mmap
/// read lock may have caused ([`switch_falls_back`]).
fn in_place_read_locked<'m>(
    mm: &'m kernel::mm::Mm,
    (c, mode, tunables): (Candidate, CollapseMode, &Tunables),
    list: &mut IsolationList,
    saved: PteSnapshot,
    fresh: NewPteTable<'m>,
) -> Result<Option<Attempt>, NewPteTable<'m>> {
    let guard = MmapRead::lock(mm);
    let taken = take_in_place(&guard, (c, mode, tunables), list, saved);
    match taken {
        // `None` if no longer in place: the table was dropped, which put everything back.
        Ok(Some(table)) => Ok(table.install_in_place(fresh)),
        Ok(None) => Err(fresh),
        // The folio isolated, if any, is of the PMD order: no LRU batch holds it (unlike
        // after a switch that gave up, `try_take()`), so nothing to drain.
        Err(fail) if switch_falls_back(fail) => Err(fresh),
        Err(fail) => Ok(Some(Err(fail))),
    }
}

/// The steps of [`in_place_read_locked`] up to the install, under `guard`: the table with
/// its entries out and its folio isolated, or `None`, nothing changed, for a VMA registered
/// with userfaultfd (see [`take_isolated`]).
fn take_in_place<'g, 'l>(
    guard: &'g MmapRead<'_>,
    (c, mode, tunables): (Candidate, CollapseMode, &Tunables),
    list: &'l mut IsolationList,
    saved: PteSnapshot,
) -> Result<Option<DetachedTable<'g, 'l>>, Fail> {
    let vma = revalidate_anon(guard, c.haddr, mode, c.order)?;
    if Userfault::of(vma) == Userfault::Armed {
        return Ok(None);
    }
    let pmd = guard.pmd_table(c.haddr)?;
    let anon = AnonVmaWrite::lock(guard, vma).ok_or(Fail::PageAnon)?;
    let mut table = DetachedTable::take(guard, anon, (vma, pmd), c, list, (saved, None))?;
    table.isolate(mode, mode.limits(tunables, c.order, Userfault::Unarmed))?;
    Ok(Some(table))
}

/// The part of [`collapse_anon`] under the mmap lock for write, `guard`: `new` and the
/// entries `cleared` in it, the `early` copy if there is one, `copy`, where what the copy
/// came to goes, and `held`, room to take the entries out into for a switch under the
/// page-table locks.
///
/// With `held` and an early copy that nothing invalidated, the switch leaves the VMA's page
/// faults (and the other walkers under its lock) in, and holds the page-table locks instead
/// ([`try_take`]). If it cannot go through that way, it switches with the VMA write-locked,
/// as without `held`.
fn collapse_write_locked(
    guard: &MmapWrite<'_>,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    (new, fresh, cleared): (NewFolio, Option<NewPteTable<'_>>, &Occupied),
    list: &mut IsolationList,
    (mut early, copy, held): (Option<&mut EarlyCopy>, &mut CopyKind, Option<PteSnapshot>),
) -> Attempt {
    let early_copy = early.as_ref().map_or((0, 0), |early| early.retried());
    let held = held.filter(|_| early.as_ref().is_some_and(|early| !early.invalidated()));
    if let (Some(held), Some(e)) = (held, early.as_deref_mut()) {
        let room = (&mut *list, (held, false));
        if let Some((table, valid)) = try_take(guard, c, mode, tunables, (e, cleared), room, copy)?
        {
            let switch = (early_copy, Switch::Ptl);
            return copy_install(table, Some(valid), (new, fresh, cleared), switch, copy);
        }
    }
    // On failure, dropping `table` restores the page table, releases the isolated folios and
    // unlocks the anon_vma.
    let (table, valid) = detach_isolated(guard, c, mode, tunables, list, early)?;
    let switch = if *copy == CopyKind::FellBack {
        Switch::FellBack
    } else {
        Switch::Vma
    };
    copy_install(
        table,
        valid,
        (new, fresh, cleared),
        (early_copy, switch),
        copy,
    )
}

/// The switch under the page-table locks under `guard`, the mmap lock held for read or write,
/// up to the copy ([`take_isolated`]): returns the table with its entries out and their folios
/// isolated, and the entries whose `early` copy holds; or `None`, everything put back, if it
/// gave up, `copy` then [`CopyKind::FellBack`] unless it was not tried; or the failure that
/// ends the collapse. `list` is where the folios are isolated to, `saved` where the entries
/// go, `readers` whether the mmap lock is held for read only.
fn try_take<'g, 'l, G: CollapseLocked>(
    guard: &'g G,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    (early, cleared): (&mut EarlyCopy, &Occupied),
    (list, (saved, readers)): (&'l mut IsolationList, (PteSnapshot, bool)),
    copy: &mut CopyKind,
) -> Result<Option<(DetachedTable<'g, 'l>, Occupied)>, Fail> {
    let room = (list, saved, readers);
    let isolated = match take_isolated(guard, c, mode, tunables, (early, cleared), room) {
        Ok(Ok(taken)) => return Ok(Some(taken)),
        Ok(Err(GaveUp::Armed)) => None,
        Ok(Err(GaveUp::PutBack { isolated })) => Some(isolated),
        Err(fail) if !switch_falls_back(fail) => return Err(fail),
        // Before the isolation: the table was gone, or became huge.
        Err(Fail::NoPteTable) => Some(false),
        Err(_) => Some(true),
    };
    if isolated == Some(true) {
        // Dropping the table put everything back. The folios it isolated went back through an
        // LRU batch, which holds a reference to each until drained: the isolation of the next
        // switch would fail on them. This CPU's, unless the task moved since (every CPU's,
        // but for a request that may not wait).
        ffi::drain_lru_batches(mode.effort());
    }
    if isolated.is_some() {
        *copy = CopyKind::FellBack;
    }
    Ok(None)
}

/// Why [`take_isolated`] did not go through, with nothing changed.
enum GaveUp {
    /// Not tried: the VMA is registered with userfaultfd.
    Armed,
    /// Put back (the range invalidated through the rmap, or too many pages to copy again):
    /// `isolated` if folios were isolated first.
    PutBack {
        /// Whether folios were isolated, and put back.
        isolated: bool,
    },
}

/// What [`take_isolated`] returns: the table with its entries out and their folios isolated,
/// and the entries whose early copy holds; or why it gave up, or failed.
type Held<'g, 'l> = Result<Result<(DetachedTable<'g, 'l>, Occupied), GaveUp>, Fail>;

/// The switch under the page-table locks, up to the copy, for an `early` copy that nothing
/// invalidated up to the mmap lock `guard`: as [`detach_isolated`], but the VMA's page faults
/// are not kept out; the candidate's entries are taken out of the table into `saved` under
/// the PMD lock and the table's lock (`DetachedPteTable::take`), which stay held until the
/// install or the drop of the table. Not tried if the VMA is registered with userfaultfd.
/// Gives up, putting everything back, if the watch shows an invalidation once the anon_vma
/// lock is held (and, with `readers`, once the entries are out), if more than
/// [`SWITCH_RECOPY_MAX`] entries map a page written since the early copy's last pass (or
/// mapped since), checked before the isolation, or if more than that many pages are to be
/// copied or cleared after it (`cleared` has the pages of the new folio cleared already).
///
/// The early copy holds for each entry that still maps its page read-only
/// ([`EarlyCopy::settle`]), unless something wrote it and then write-protected it again with
/// its page kept. Those who may do that are walkers under the mmap lock (fork, mprotect,
/// UFFDIO_WRITEPROTECT, KSM, NUMA hinting, soft-dirty clearing) and an unmap through the rmap
/// (reclaim swapping the page out) followed by a fault that maps the same folio again
/// read-only (a swap-in from the swap cache); each begins its notifier range, which the watch
/// sees, before it changes the entry under the table's lock. With the mmap lock held for
/// write (not `readers`), the walkers ended before it, and the anon_vma lock shuts the rmap
/// out from the time the watch is read with it held: the entries need not be out yet, and a
/// MADV_FREE waiting for the table's lock, its notifier range begun, does not cost the copy.
/// With `readers`, KSM and NUMA hinting may run meanwhile (fork, mprotect and soft-dirty
/// clearing take the lock for write, UFFDIO_WRITEPROTECT needs the VMA registered): the
/// watch is read again once the entries are out, under the table's lock, after every change
/// made before it; one that began its range but waits for the lock gives up the switch too.
/// What runs under the VMA's lock alone (faults, MADV_DONTNEED and MADV_FREE, UFFDIO_MOVE,
/// guard regions) only ever makes an entry writable, none, or map another page there, which
/// the entries taken out show.
fn take_isolated<'g, 'l, G: CollapseLocked>(
    guard: &'g G,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    (early, cleared): (&mut EarlyCopy, &Occupied),
    (list, saved, readers): (&'l mut IsolationList, PteSnapshot, bool),
) -> Held<'g, 'l> {
    let vma = revalidate_anon(guard, c.haddr, mode, c.order)?;
    // A fault in a VMA registered with userfaultfd reads the entry without its lock to decide
    // whether to wait for the handler (`userfaultfd_must_wait()`): one it read none during the
    // switch could wait for nothing. Registration takes the mmap lock for write, so the VMA's
    // flags stay as they are now.
    if Userfault::of(vma) == Userfault::Armed {
        return Ok(Err(GaveUp::Armed));
    }
    let pmd = guard.pmd_table(c.haddr)?;
    let anon = AnonVmaWrite::lock(guard, vma).ok_or(Fail::PageAnon)?;
    // Unmapped through the rmap since the write lock (and maybe faulted back in read-only).
    if early.invalidated() {
        return Ok(Err(GaveUp::PutBack { isolated: false }));
    }
    let room = (saved, Some(early.watch()));
    let mut table = DetachedTable::take(guard, anon, (vma, pmd), c, list, room)?;
    ffi::switch_test_delay();
    // Nothing isolated yet: the cheap reasons to give up first. Write-protected again since
    // the early copy, by a walker under the mmap lock for read.
    if readers && early.invalidated() {
        return Ok(Err(GaveUp::PutBack { isolated: false }));
    }
    if table
        .writable()
        .is_none_or(|n| n as usize > SWITCH_RECOPY_MAX)
    {
        return Ok(Err(GaveUp::PutBack { isolated: false }));
    }
    table.isolate(mode, mode.limits(tunables, c.order, Userfault::Unarmed))?;
    match early.settle(true, |i, page| table.maps_read_only(i, page)) {
        Some(valid) if table.to_copy(&valid, cleared) <= SWITCH_RECOPY_MAX => {
            Ok(Ok((table, valid)))
        }
        _ => Ok(Err(GaveUp::PutBack { isolated: true })),
    }
}

/// The end of a switch: copies into `new` the pages of `table` not `valid` from the early
/// copy (which made `retries` passes after its first, copying `recopied_early` pages again),
/// and installs it; `copy` gets what the copy came to, with how the `switch` went.
fn copy_install(
    mut table: DetachedTable<'_, '_>,
    valid: Option<Occupied>,
    (mut new, fresh, cleared): (NewFolio, Option<NewPteTable<'_>>, &Occupied),
    ((retries, recopied_early), switch): ((u32, u32), Switch),
    copy: &mut CopyKind,
) -> Attempt {
    table.copying();
    let copied_here = table.copy(
        &mut new,
        cleared,
        valid.as_ref().unwrap_or(&Occupied::EMPTY),
    )?;
    if valid.is_some() {
        *copy = CopyKind::Early {
            retries,
            recopied_early,
            recopied: copied_here,
            switch,
        };
    }
    table.install(new, fresh)
}

/// How a collapse that went through copied its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyKind {
    /// All under the mmap lock for write: no early copy could be made, or the range was
    /// invalidated meanwhile.
    Locked,
    /// Not known yet: a switch under the page-table locks gave up, and the switch with the
    /// VMA write-locked is under way (`Early` or `Locked` once it went through).
    FellBack,
    /// Early, while the process ran ([`EarlyCopy`]), in `1 + retries` passes, the later ones
    /// copying `recopied_early` pages written meanwhile again; but for `recopied` pages, copied
    /// again under the lock because their entries changed after the last pass (or they could
    /// not be copied early).
    Early {
        /// The passes of the early copy after its first.
        retries: u32,
        /// The pages those copied again.
        recopied_early: u32,
        /// The pages copied again under the lock.
        recopied: u32,
        /// How the switch kept the VMA's page faults away from the range.
        switch: Switch,
    },
}

/// How the switch of a collapse whose early copy held kept the VMA's page faults away from
/// the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Switch {
    /// With the page-table locks and the mmap lock for read only: faults elsewhere in the VMA
    /// and the process's mmap-lock readers went on (`DetachedPteTable::take`).
    Read,
    /// With the page-table locks and the mmap lock for write: faults elsewhere in the VMA went
    /// on (`DetachedPteTable::take`).
    Ptl,
    /// With the VMA write-locked, after a switch under the page-table locks gave up.
    FellBack,
    /// With the VMA write-locked, as upstream (sysfs `rust_switch` is `vma`, the VMA is
    /// registered with userfaultfd, or no memory for the snapshot).
    Vma,
}

/// The first steps under the mmap lock for write, `guard`, for a copy and in place alike:
/// revalidates candidate `c`, keeps the VMA's faults out, takes the anon_vma lock, detaches
/// the page table and isolates what it maps. With an `early` copy, also returns the entries
/// whose early copy holds (see [`EarlyCopy::settle`]), `None` if it does not hold at all.
fn detach_isolated<'g, 'l>(
    guard: &'g MmapWrite<'_>,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    list: &'l mut IsolationList,
    early: Option<&mut EarlyCopy>,
) -> Result<(DetachedTable<'g, 'l>, Option<Occupied>), Fail> {
    let vma = revalidate_anon(guard, c.haddr, mode, c.order)?;
    if guard.exclude_vma_faults(vma).is_err() {
        return Err(Fail::VmaCheck);
    }
    let pmd = guard.pmd_table(c.haddr)?;
    let anon = AnonVmaWrite::lock(guard, vma).ok_or(Fail::PageAnon)?;
    // Every invalidator of the range is shut out now, and the detach invalidates it itself.
    let holds = early.as_ref().is_some_and(|early| !early.invalidated());
    let mut table = DetachedTable::detach(guard, anon, (vma, pmd), c, list)?;
    table.isolate(mode, mode.limits(tunables, c.order, Userfault::of(vma)))?;
    // From what the isolation read of each entry: no second walk of the table.
    let valid =
        early.and_then(|early| early.settle(holds, |i, page| table.maps_read_only(i, page)));
    Ok((table, valid))
}

/// Collapses every candidate of the one order `s.enabled` holds in `span`, for a MADV_COLLAPSE
/// to an mTHP order: each naturally aligned block of `span` that is not `in_place` already
/// and has at most `max_none(order)` empty entries goes to `collapse(first, order)`.
///
/// Returns [`Collapsed::Mapped`] if every candidate is collapsed or in place and one at least
/// was collapsed, [`Fail::PmdMapped`] ("already there") if all were in place, else the last
/// failure; after a failure that ends a request (`outcome::verdict`) the next candidates are
/// not tried.
fn collapse_span(
    span: PteSpan,
    s: &Scanned,
    in_place: &InPlace,
    max_none: impl Fn(u32) -> u32,
    mut collapse: impl FnMut(usize, u32) -> Attempt,
) -> Attempt {
    let order = s.enabled.trailing_zeros();
    let nr = 1usize << order;
    let mut result = Err(Fail::PmdMapped);
    for first in (span.first..span.end).step_by(nr) {
        if in_place.covers(first) {
            continue;
        }
        let attempt = if s.occupied.weight(first, first + nr) + max_none(order) >= nr as u32 {
            collapse(first, order)
        } else {
            ffi::count_exceeded(order, Fail::ExceedNonePte);
            Err(Fail::ExceedNonePte)
        };
        match attempt {
            Ok(_) if result.is_ok() || result == Err(Fail::PmdMapped) => {
                result = Ok(Collapsed::Mapped);
            }
            Ok(_) => {}
            Err(fail) => {
                result = Err(fail);
                if verdict(attempt) == Verdict::Abort {
                    break;
                }
            }
        }
    }
    result
}

/// Allocates, swaps in and collapses one candidate, of a range whose scan `s` saw. Returns
/// with no lock held. Upstream: `collapse_huge_page()`.
fn collapse_candidate(
    mm: &kernel::mm::Mm,
    c: Candidate,
    mode: CollapseMode,
    tunables: &Tunables,
    s: &Scanned,
    req: &mut RequestState,
) -> Attempt {
    let attempt = (|| {
        if c.order == PMD_ORDER && s.remap && s.swapped == 0 {
            if let Some(attempt) = remap_in_place(mm, c, mode, tunables, req) {
                return attempt;
            }
            // No longer in place: copied, as any other range.
        }
        // The folio is allocated without the mmap lock: it may reclaim and compact.
        let mut folio =
            new_folio::alloc_charge(mm, mode.alloc_policy(tunables), c.order, &s.nodes)?;
        let cleared = if s.swapped == 0 {
            clear_empty(&mut folio, c, &s.occupied)
        } else {
            // Most of what the scan found absent is about to be read back in.
            Occupied::EMPTY
        };
        if s.swapped > 0 {
            // A swap-in waits for I/O.
            if mode.effort() == Effort::Light {
                return Err(Fail::WouldBlock);
            }
            swap_in(mm, c, mode, s.referenced)?;
        }
        collapse_anon(mm, c, mode, tunables, folio, &cleared, req)
    })();
    trace::collapse(mm, &attempt, c.order);
    attempt
}

/// Clears the pages of `new`, the folio for candidate `c`, whose entries the scan found empty
/// (none or the zero page; `occupied` has the others), with no lock held, and returns which
/// entries those are. The copy under the mmap write lock then skips them if they are still
/// empty: the clearing is no longer part of the time faults wait. Upstream clears them under
/// the lock (`__collapse_huge_page_copy()`); Lance Yang's 2024 patch measured what moving it
/// saves.
fn clear_empty(new: &mut NewFolio, c: Candidate, occupied: &Occupied) -> Occupied {
    let mut cleared = Occupied::EMPTY;
    let nr = 1usize << c.order;
    // The common case, every entry present: a few word counts instead of a test per entry.
    if occupied.weight(c.first, c.first + nr) as usize == nr {
        return cleared;
    }
    for k in 0..nr {
        let i = c.first + k;
        if !occupied.contains(i) {
            new.clear_user_page(k, c.haddr + i * PAGE_SIZE);
            cleared.set(i);
        }
    }
    cleared
}

/// What a scan found, for the collapse that follows it.
struct Scanned {
    /// `Ok` if the range is worth collapsing.
    verdict: Result<(), Fail>,
    scanned: u32,
    swapped: u32,
    referenced: u32,
    none_or_zero: u32,
    /// The folio the scan stopped at, or [`trace::NO_PFN`].
    failed_pfn: usize,
    /// Whether the scan of the page table ran (and so upstream's tracepoint fires).
    traced: bool,
    occupied: Occupied,
    enabled: u64,
    /// Where the new folio should come from (where most of the pages are).
    nodes: Nodes,
    /// For a MADV_COLLAPSE to an mTHP order: which of its candidates are in place already.
    in_place: Option<InPlace>,
    /// For the PMD order: whether the range is in place, its entries mapping in order the
    /// pages of one folio of the PMD order, which the PMD can then map without a copy.
    remap: bool,
}

impl Scanned {
    /// A scan that stopped at `fail` before the entries; upstream's tracepoint fires for it if
    /// `traced` (it looked at the page table).
    fn failed(fail: Fail, traced: bool) -> Self {
        Scanned {
            verdict: Err(fail),
            scanned: 1,
            swapped: 0,
            referenced: 0,
            none_or_zero: 0,
            failed_pfn: trace::NO_PFN,
            traced,
            occupied: Occupied::EMPTY,
            enabled: 0,
            nodes: NodeLoad::new().target(),
            in_place: None,
            remap: false,
        }
    }
}

/// Scans the entries `span` of the PMD range at `addr` under `guard`.
fn scan(
    guard: &MmapRead<'_>,
    addr: usize,
    span: PteSpan,
    mode: CollapseMode,
    t: &Tunables,
) -> Scanned {
    let done = Scanned::failed;
    let Some(vma) = guard.find_vma(addr) else {
        return done(Fail::VmaNull, false);
    };
    match guard.pmd_state(addr) {
        PmdState::None => return done(Fail::NoPteTable, true),
        PmdState::Huge => return done(Fail::PmdMapped, true),
        PmdState::Table => {}
    }
    // khugepaged also collapses anonymous memory into smaller (mTHP) folios where enabled;
    // MADV_COLLAPSE into the one order of its request, which the VMA was checked to allow.
    let enabled = match mode {
        CollapseMode::Khugepaged => vma::allowed_orders(vma, mode, mode.anon_orders()),
        CollapseMode::Madvise(_) => mode.anon_orders(),
    };
    let mut limits = mode.limits(t, PMD_ORDER, Userfault::of(vma));
    let mut in_place = None;
    if enabled != 1 << PMD_ORDER {
        // Look at every PTE: the plan decides per order how many may be empty.
        limits.max_none = limits.max_none.max(PTES_PER_PMD - 1);
        if mode.is_madvise() {
            // A collapse takes the whole page table away for a while, whatever the order: no
            // other VMA may share it. khugepaged and PMD-sized MADV_COLLAPSE only come with
            // such ranges; an mTHP-sized one may be asked for any block.
            if !vma.thp_suitable_order(addr, PMD_ORDER) {
                return done(Fail::AddressRange, false);
            }
            in_place = Some(InPlace::new(enabled.trailing_zeros()));
        }
    }
    // A PMD range whose entries all map, in order, one folio of the PMD order is mapped with
    // the PMD in place rather than copied.
    let mut pmd_in_place = (enabled == 1 << PMD_ORDER).then(|| InPlace::new(PMD_ORDER));
    let mut tally = ScanTally::new(mode, limits);
    let (verdict, scanned, failed_pfn) = read::scan_anon_pmd(
        guard,
        vma,
        addr,
        span,
        &mut tally,
        in_place.as_mut().or(pmd_in_place.as_mut()),
    );
    Scanned {
        verdict,
        scanned,
        swapped: tally.swapped_count(),
        referenced: tally.referenced_count(),
        none_or_zero: tally.none_or_zero_count(),
        failed_pfn,
        traced: true,
        occupied: tally.occupied().clone(),
        enabled,
        nodes: tally.target_nodes(),
        in_place,
        remap: pmd_in_place.is_some_and(|p| p.covers(span.first)),
    }
}
