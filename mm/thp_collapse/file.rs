// SPDX-License-Identifier: GPL-2.0

//! File and shmem collapse: the scan of a page cache range, the collapse in the page cache
//! (the small folios of the range replaced by one PMD-sized folio), the retraction of the page
//! tables that mapped them, and the PMD mapping of a PMD-sized folio that page tables map.
//!
//! None of it holds the mmap lock but the last step: the page cache is the file's, and every
//! mm that maps it is reached through the i_mmap lock. The folio locks keep truncation, page
//! faults and new mappings of the range out while the folios are replaced; the xarray lock is
//! dropped around everything that sleeps.
//!
//! Upstream reference: `collapse_scan_file()`, `collapse_file()`, `retract_page_tables()`,
//! `try_collapse_pte_mapped_thp()` and the file half of `collapse_single_pmd()` in
//! [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use crate::ffi::page_cache::{
    self, flush_batched_unmaps, Backing, FolioFacts, IMmapRead, IsolateError, IsolatedFolio,
    LockedFolio, Mapping, PageCacheCursor, PageCacheEntry, PageCacheFolio, PageCacheLocked,
    PageCacheState, ReadError, ReadWait, ShmemCharge, Slot,
};
use crate::{
    ffi::{self, trace, CowCopies},
    new_folio,
    outcome::{Attempt, Collapsed, Fail},
    scan::{FileEntry, FileTally},
    spare::{self, Spare},
    vma::{self, CollapseLocked},
    vocab::{
        CollapseMode, Effort, Locked, MmapRead, Tunables, Userfault, PMD_ORDER, PMD_SIZE,
        PTES_PER_PMD,
    },
};
use core::ops::Range;
use kernel::{
    fs::File,
    mm::mmap_lock::MmapLocked,
    mm::{
        anon_vma::AnonVmaWriteGuard,
        folio::Nodes,
        pgtable::{self, PmdClearNotifier, PmdEntry, PmdState, PmdTableLocked, PTRS_PER_PTE},
        virt::VmaRef,
        Mm,
    },
    prelude::*,
    sync::{aref::ARef, atomic::Atomic},
};

/// Pages of a PMD-sized folio.
const NR: usize = PTES_PER_PMD as usize;

/// Page cache entries read per call into C by the scan.
const ENTRY_BATCH: usize = 16;

/// Collapses the PMD range at `addr`, index `pgoff` of `file`, which a file or shmem VMA that
/// `guard` found maps, for `mode`. Releases the mmap lock (the page cache work runs without
/// it) and, after a collapse in the page cache, takes it again for read to map the new folio
/// with the PMD (MADV_COLLAPSE) or only remove the page table left (khugepaged).
///
/// Returns the result, the page-table entries accounted to khugepaged's scan budget, and the
/// lock's state (always released). Upstream: the file half of `collapse_single_pmd()`.
pub(crate) fn collapse_pmd<'a>(
    guard: MmapRead<'a>,
    file: ARef<File>,
    addr: usize,
    pgoff: usize,
    mode: CollapseMode,
    tunables: &Tunables,
) -> (Attempt, u32, Locked<'a>) {
    let mm = guard.mm();
    drop(guard);

    let Some(mapping) = Mapping::of(&file) else {
        return (Err(Fail::Other), 1, Locked::Dropped);
    };
    let mut wrote_back = false;
    let (mut attempt, scanned) = loop {
        let (attempt, scanned) = scan_file(mm, addr, &file, pgoff, mode, tunables);
        // MADV_COLLAPSE writes dirty pages back, and tries once more (unless it must not wait).
        if mode.is_madvise()
            && mode.effort() != Effort::Light
            && attempt == Err(Fail::PageDirtyOrWriteback)
            && !wrote_back
            && mapping.can_writeback()
        {
            // A failed writeback shows as dirty pages in the second scan.
            let _ = mapping.write_and_wait(pgoff, PTES_PER_PMD);
            wrote_back = true;
            continue;
        }
        break (attempt, scanned);
    };
    drop(file);

    // The page cache holds a PMD-sized folio for the range: collapsed now, or found so.
    if let Ok(Collapsed::InPageCache) | Err(Fail::PteMappedHugepage) = attempt {
        let guard = MmapRead::lock(mm);
        let mapped = if guard.exiting_or_thp_disabled() {
            Err(Fail::AnyProcess)
        } else {
            collapse_pte_mapped(&guard, addr, HugeMapping::for_mode(mode), mode.effort())
        };
        attempt = match mapped {
            Ok(()) | Err(Fail::PmdMapped) => Ok(Collapsed::Mapped),
            Err(fail) => Err(fail),
        };
    }
    (attempt, scanned, Locked::Dropped)
}

/// Scans the page cache range of `file` from index `start`, which `addr` maps, and collapses
/// it if the scan allows. Returns the result and the entries accounted to the scan budget.
/// Upstream: `collapse_scan_file()`.
fn scan_file(
    mm: &Mm,
    addr: usize,
    file: &File,
    start: usize,
    mode: CollapseMode,
    tunables: &Tunables,
) -> (Attempt, u32) {
    let limits = mode.limits(tunables, PMD_ORDER, Userfault::Unarmed);
    let Some(mapping) = Mapping::of(file) else {
        return (Err(Fail::Other), PTES_PER_PMD);
    };
    let last = start + NR - 1;
    let mut entries = [PageCacheEntry::default(); ENTRY_BATCH];
    let mut index = start;
    let mut tally = FileTally::new(limits);
    let mut failed_pfn = trace::NO_PFN;
    let mut verdict = Ok(());
    'walk: loop {
        let n = mapping.read_entries(&mut index, last, &mut entries);
        for e in &entries[..n] {
            let nr = u32::try_from(e.nr_pages()).unwrap_or(u32::MAX);
            let entry = if e.is_value() {
                FileEntry::Value { nr }
            } else {
                let facts = e.facts();
                FileEntry::Folio {
                    nr,
                    pmd_order: facts.pmd_order(),
                    lru: facts.lru(),
                    refs_beyond_expected: facts.refs_beyond_expected(),
                }
            };
            if let Err(stop) = tally.add(entry) {
                verdict = Err(stop);
                if !e.is_value() {
                    failed_pfn = e.pfn();
                }
                break 'walk;
            }
            if !e.is_value() {
                // Once per folio, as upstream counts it.
                tally.on_node(e.nid(), 1);
            }
        }
        if n < ENTRY_BATCH {
            break;
        }
        ffi::cond_resched();
    }
    let scanned = if verdict == Err(Fail::PteMappedHugepage) {
        1
    } else {
        PTES_PER_PMD
    };
    let attempt = verdict.and_then(|()| tally.finish()).and_then(|()| {
        let nodes = tally.target_nodes();
        collapse_file(mm, addr, file, mapping, start, mode, tunables, &nodes)
    });
    if let Err(fail) = attempt {
        ffi::count_file_exceeded(fail);
    }
    trace::scan_file(
        mm,
        failed_pfn,
        file,
        tally.present(),
        tally.swap(),
        &attempt,
    );
    (attempt, scanned)
}

/// How the collapse got the folio at an index of the range.
enum Got<'a> {
    /// A hole (shmem): the xarray stays locked.
    Hole(PageCacheLocked<'a>),
    /// The folio, locked by us, with the xarray unlocked.
    Folio(LockedFolio, PageCacheCursor<'a>),
}

/// Gets the folio at `index` of the page cache range `range` locked, swapping it in (shmem) or
/// reading it (other files) if need be: the xarray is locked on entry, and unlocked for
/// anything that sleeps. `wait` says whether a read may wait for the invalidate lock, which it
/// must not while the collapse holds locks of folios below `index`; `None` is a request that
/// must not wait at all (`MADV_F_COLLAPSE_LIGHT`), which neither swaps in, reads nor
/// instantiates a folio. Upstream: the first half of the loop of `collapse_file()`, which
/// waits for the lock there.
fn lock_old<'a>(
    mut xa: PageCacheLocked<'a>,
    file: &File,
    mapping: Mapping<'_>,
    backing: Backing,
    range: &Range<usize>,
    index: usize,
    wait: Option<ReadWait>,
) -> Result<Got<'a>, Fail> {
    let slot = xa.load(index);
    match slot {
        // Another collapse marks holes only within one hold of the xarray lock.
        Slot::Retry => Err(Fail::Other),
        Slot::Empty if backing == Backing::Shmem => {
            // Truncated or hole-punched, and now completely empty: nothing to collapse.
            if index == range.start && !xa.any_entry_until(range.end - 1) {
                return Err(Fail::Truncated);
            }
            Ok(Got::Hole(xa))
        }
        Slot::Value if backing == Backing::Shmem => {
            // A swap-in waits for I/O.
            if wait.is_none() {
                return Err(Fail::WouldBlock);
            }
            let cursor = xa.unlock();
            let folio = LockedFolio::shmem_get(mapping, index).ok_or(Fail::Other)?;
            Ok(Got::Folio(folio, cursor))
        }
        Slot::Empty | Slot::Value => {
            let Some(wait) = wait else {
                return Err(Fail::WouldBlock);
            };
            let cursor = xa.unlock();
            // A hole punch holds the invalidate lock while it waits for the folio locks the
            // collapse holds: a contended lock makes the collapse give up (EAGAIN).
            let folio = LockedFolio::read(file, index, range.end, wait).map_err(|e| match e {
                ReadError::Contended => Fail::PageLock,
                ReadError::Failed => Fail::Other,
            })?;
            Ok(Got::Folio(folio, cursor))
        }
        // Read with the entry, under the xarray lock (interrupts off): the page flags only.
        Slot::Folio(folio, facts) => {
            if backing == Backing::Shmem && !facts.uptodate() {
                // Fallocated and never written: shmem instantiates it (and may reclaim).
                if wait.is_none() {
                    return Err(Fail::WouldBlock);
                }
                let cursor = xa.unlock();
                let folio = LockedFolio::shmem_get(mapping, index).ok_or(Fail::Other)?;
                return Ok(Got::Folio(folio, cursor));
            }
            if backing == Backing::File && facts.dirty() {
                // Not written back since it was first written: start writeback of a file
                // nobody writes, for the next try (a writable file could be dirtied at any
                // time, and a flush would only cause writeback system-wide).
                drop(xa);
                mapping.flush_unless_writers();
                return Err(Fail::PageDirtyOrWriteback);
            }
            if backing == Backing::File && facts.writeback() {
                return Err(Fail::PageDirtyOrWriteback);
            }
            let folio = LockedFolio::trylock(folio, &xa).ok_or(Fail::PageLock)?;
            Ok(Got::Folio(folio, xa.unlock()))
        }
    }
}

/// Checks the folio the collapse locked at an index, isolates it and unmaps it everywhere;
/// returns it with the xarray locked again. Upstream: the second half of the loop of
/// `collapse_file()`.
fn isolate_old<'a>(
    folio: LockedFolio,
    cursor: PageCacheCursor<'a>,
    mapping: Mapping<'_>,
    backing: Backing,
) -> Result<(IsolatedFolio, PageCacheLocked<'a>), Fail> {
    let facts = folio.facts(
        mapping,
        page_cache::Read {
            mapping: true,
            refs: false,
            mapped: false,
        },
    );
    if !facts.uptodate() {
        return Err(Fail::Other);
    }
    // Truncated and extended, or hole-punched and refilled, before we locked it: a THP may be
    // there already.
    if facts.pmd_order() {
        return Err(Fail::PteMappedHugepage);
    }
    if facts.other_mapping() {
        return Err(Fail::Truncated);
    }
    // Only clean file folios are collapsed (shmem ones are always dirty).
    if backing == Backing::File && facts.dirty_or_writeback() {
        return Err(Fail::PageDirtyOrWriteback);
    }
    let folio = folio.isolate().map_err(|(_, e)| match e {
        IsolateError::NotOnLru => Fail::DelPageLru,
        IsolateError::Private => Fail::PageHasPrivate,
    })?;
    let xa = cursor.lock();
    let facts = folio.facts(
        mapping,
        page_cache::Read {
            mapping: false,
            refs: true,
            mapped: true,
        },
    );
    if let Err(fail) = check_isolated(&facts, backing) {
        drop(xa);
        return Err(fail);
    }
    Ok((folio, xa))
}

/// Checks the `facts` of an old folio that was isolated and unmapped, read with the xarray
/// locked again. Upstream: the end of the loop of `collapse_file()`.
fn check_isolated(facts: &FolioFacts, backing: Backing) -> Result<(), Fail> {
    // Ours and the isolation's must be the only references beyond the page cache's: any new
    // user of the folio has to find it in the page cache, and lock it, and waits. A mapping
    // the unmap left (its reference is among the expected ones) fails too, as upstream's
    // `folio_ref_count() != 2 + folio_nr_pages()` does.
    if facts.refs_beyond_expected() != 2 || facts.mapped() {
        return Err(Fail::PageCount);
    }
    // Unmapping moved a dirty PTE's bit to the folio: it must not go into a clean folio.
    if backing == Backing::File && facts.dirty() {
        return Err(Fail::PageDirtyOrWriteback);
    }
    Ok(())
}

/// The list of old folios of a page cache collapse kept between collapses (see `spare.rs`).
static SPARE_OLD: spare::Slot<KVec<IsolatedFolio>> = Atomic::new(core::ptr::null_mut());

/// Collapses the page cache range `[start, start + 512)` of `file` into one new folio, for the
/// scan at `addr` of `mm`, and retracts the page tables that mapped the range. For MADV_COLLAPSE
/// a success is [`Collapsed::InPageCache`]: the caller maps the new folio.
/// Upstream: `collapse_file()`.
#[expect(
    clippy::too_many_arguments,
    reason = "the backend restructuring (one request struct) is its own change"
)]
fn collapse_file(
    mm: &Mm,
    addr: usize,
    file: &File,
    mapping: Mapping<'_>,
    start: usize,
    mode: CollapseMode,
    tunables: &Tunables,
    nodes: &Nodes,
) -> Attempt {
    let backing = Backing::of(file);
    let end = start + NR;
    let mut new_pfn = trace::NO_PFN;
    let mut reached = start;
    let attempt = (|| -> Attempt {
        let folio = new_folio::alloc_charge(mm, mode.alloc_policy(tunables), PMD_ORDER, nodes)?;
        let mut new = PageCacheFolio::prepare(folio, mapping, start, backing);
        new_pfn = new.pfn();
        // Dropped in reverse order on failure: the charge, the old folios, the new one.
        let mut old_list = Spare::new(&SPARE_OLD, KVec::clear);
        let old = old_list.get(|| KVec::with_capacity(NR, GFP_KERNEL).map_err(|_| Fail::Other))?;
        let mut state = PageCacheState::new(mapping, start);
        let mut xa = state
            .cursor()
            .create_range(PMD_ORDER)
            .map_err(|_| Fail::Other)?;

        let mut nr_none = 0;
        let mut index = start;
        while index < end {
            reached = index;
            // The common case in one call into C; anything else step by step below.
            if let Some(taken) = xa.take_plain(index, mapping, backing) {
                if let Err(fail) = check_isolated(&taken.facts, backing) {
                    // The xarray lock goes before the folio is put back.
                    drop(xa);
                    drop(taken);
                    return Err(fail);
                }
                index = taken.next;
                old.push(taken.folio, GFP_NOWAIT).map_err(|_| Fail::Other)?;
                continue;
            }
            let wait = match mode.effort() {
                Effort::Light => None,
                Effort::Standard | Effort::Defrag if old.is_empty() => Some(ReadWait::Block),
                Effort::Standard | Effort::Defrag => Some(ReadWait::Try),
            };
            match lock_old(xa, file, mapping, backing, &(start..end), index, wait)? {
                Got::Hole(locked) => {
                    xa = locked;
                    nr_none += 1;
                    index += 1;
                }
                Got::Folio(folio, cursor) => {
                    let (folio, locked) = isolate_old(folio, cursor, mapping, backing)?;
                    xa = locked;
                    index = folio.index() + folio.nr_pages();
                    old.push(folio, GFP_NOWAIT).map_err(|_| Fail::Other)?;
                }
            }
        }
        reached = end;
        let cursor = xa.unlock();
        // The copy must not race with writes through TLB entries of the unmapped PTEs.
        flush_batched_unmaps();
        let charge = match nr_none {
            0 => None,
            n => Some(ShmemCharge::charge(mapping, n).ok_or(Fail::Other)?),
        };

        // The old folios are locked and unmapped: their data cannot change any more.
        let mut dst = 0;
        for folio in old.iter() {
            while start + dst < folio.index() {
                new.folio().clear_page(dst);
                dst += 1;
            }
            for i in 0..folio.nr_pages() {
                // SAFETY: The old folio is locked and unmapped: its pages stay valid and
                // nobody writes them.
                unsafe { new.folio().copy_mc_page(dst, folio.page(i)) }
                    .map_err(|_| Fail::CopyMc)?;
                dst += 1;
            }
        }
        while dst < NR {
            new.folio().clear_page(dst);
            dst += 1;
        }

        let mut xa = if nr_none > 0 {
            fill_holes(cursor, mapping, (start, end), nr_none)?
        } else {
            cursor.lock()
        };
        // SAFETY: The old folios of the range are locked by us, its holes marked, and the new
        // folio holds their data.
        let inserted = unsafe { new.insert(&mut xa) };
        drop(xa);
        if let Some(charge) = charge {
            charge.keep();
        }
        // Page faults map the new folio with a PMD once the page tables are gone.
        retract_page_tables(mapping, start);
        drop(inserted);
        // SAFETY: The new folio replaced them in the page cache.
        unsafe { IsolatedFolio::release_replaced(old, backing) };
        Ok(match mode {
            CollapseMode::Madvise(_) => Collapsed::InPageCache,
            CollapseMode::Khugepaged => Collapsed::Mapped,
        })
    })();
    trace::collapse_file(mm, new_pfn, reached, addr, backing, file, &attempt);
    attempt
}

/// Marks the `nr_none` holes of the range `[start, end)` as being filled, under the i_mmap and
/// xarray locks, and returns with the xarray locked; fails, with the marks removed, if a hole
/// was filled meanwhile or a VMA of the range expects userfaultfd missing faults (whose
/// user space saw the hole, and must get its fault). Upstream: the `nr_none` block of
/// `collapse_file()`.
fn fill_holes<'a>(
    cursor: PageCacheCursor<'a>,
    mapping: Mapping<'_>,
    (start, end): (usize, usize),
    nr_none: usize,
) -> Result<PageCacheLocked<'a>, Fail> {
    let immap = IMmapRead::lock(mapping);
    let mut xa = cursor.lock();
    let marked = (|| {
        let mut marked = 0;
        for index in start..end {
            if xa.load(index) == Slot::Empty {
                xa.store_retry().map_err(|_| Fail::StoreFailed)?;
                marked += 1;
            }
        }
        if marked != nr_none {
            return Err(Fail::PageFilled);
        }
        // Userfaultfds registered from now on cannot see the holes: they are marked.
        if immap.userfaultfd_missing_in(start, end) {
            return Err(Fail::ExceedNonePte);
        }
        Ok(())
    })();
    drop(immap);
    if let Err(outcome) = marked {
        for index in start..end {
            if xa.load(index) == Slot::Retry {
                xa.store_empty();
            }
        }
        return Err(outcome);
    }
    Ok(xa)
}

/// Removes the page tables of the PMD range at index `pgoff` of `mapping` in every VMA that
/// maps it whole and may lose them, in every mm; page faults map the new folio with the PMD.
/// The caller holds the lock of the new folio, which keeps faults from filling the tables.
/// Upstream: `retract_page_tables()`.
fn retract_page_tables(mapping: Mapping<'_>, pgoff: usize) {
    let immap = IMmapRead::lock(mapping);
    immap.for_each_vma(pgoff, pgoff, |v| {
        let addr = v.address_of(pgoff);
        if addr & (PMD_SIZE - 1) != 0 || v.end < addr + PMD_SIZE {
            return;
        }
        let vma = v.vma.as_ptr();
        // SAFETY: The VMA's mm is valid while the VMA is (the i_mmap lock keeps it).
        if unsafe { ffi::mm_exiting(v.mm) } {
            return;
        }
        // SAFETY: The i_mmap lock keeps `vma` valid.
        if !unsafe { ffi::vma_retractable(vma, CowCopies::Unknown) } {
            // SAFETY: As above.
            if unsafe { ffi::vma_retractable(vma, CowCopies::Excluded) } {
                retract_private(v, addr);
            }
            return;
        }
        let retractable = || {
            // SAFETY: As above.
            unsafe { ffi::vma_retractable(vma, CowCopies::Unknown) }
        };
        // SAFETY: The mm is alive (not exiting, checked above; the i_mmap lock keeps the VMA
        // and so its mm); `addr` is PMD-aligned and the range inside the VMA (checked above);
        // the caller holds the new folio's lock, and `retractable` (checked again under the
        // PTE lock) rules out the rest.
        unsafe { pgtable::retract_empty_table(v.vma, addr, retractable) };
    });
}

/// Removes the page table at `addr` of `v`, a MAP_PRIVATE VMA with an anon_vma (written to
/// somewhere, perhaps in another extent), if no entry of the table is in use: an extent that
/// holds CoW copies keeps its table; the others get their PMD mapping back, which upstream
/// gives up on for the whole VMA. Takes the mmap lock (only if free: the new folio's lock,
/// which we hold, comes after it) to keep the anon_vma, and the anon_vma lock to keep anon
/// rmap walks (of CoW copies of this extent elsewhere) away while the table goes.
fn retract_private(v: page_cache::FileVma<'_>, addr: usize) {
    // SAFETY: The mm of a VMA in the i_mmap tree is valid while the VMA is.
    let mm = unsafe { Mm::from_raw(v.mm) };
    let Some(lock) = MmapRead::try_lock(mm) else {
        return;
    };
    let Some(vma) = lock
        .find_vma(addr)
        .filter(|vma| core::ptr::eq(vma.as_ptr(), v.vma.as_ptr()))
    else {
        return;
    };
    let Some(_anon) = AnonVmaWriteGuard::lock(&lock, vma) else {
        return;
    };
    let Some(pmd) = PmdEntry::find(&lock, addr).filter(|p| p.state() == PmdState::Table) else {
        return;
    };
    let _notifier = PmdClearNotifier::start(&lock, addr);
    let Some(table) = PmdTableLocked::lock(pmd, addr) else {
        return;
    };
    if (0..PTRS_PER_PTE).any(|i| !table.is_none(i)) {
        return;
    }
    // SAFETY: The VMA is valid under the mmap lock; both locks the check asks for are held,
    // and the table was found empty above. Checked under the PTE lock (guard regions).
    if !unsafe { ffi::vma_retractable(vma.as_ptr(), CowCopies::Excluded) } {
        return;
    }
    // Empty (checked above), so it goes.
    table.remove(vma);
}

/// When a PMD-sized folio of the page cache gets its PMD mapping, once the page table that
/// maps its pages is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HugeMapping {
    /// Now, by the collapse (MADV_COLLAPSE: the caller wants the range huge on return).
    Now,
    /// At the next fault (khugepaged only removes the table; upstream's `install_pmd` false).
    OnFault,
}

impl HugeMapping {
    /// What a collapse for `mode` does.
    fn for_mode(mode: CollapseMode) -> Self {
        match mode {
            CollapseMode::Madvise(_) => HugeMapping::Now,
            CollapseMode::Khugepaged => HugeMapping::OnFault,
        }
    }
}

/// Removes the page table whose entries map the pages of the PMD-sized folio of the page cache
/// at the PMD range at `addr` (if there is one), and maps the folio with the PMD as `when`
/// says. Waits for the folio's lock unless `effort` is [`Effort::Light`]. Runs under the mmap
/// lock (read). Upstream: `try_collapse_pte_mapped_thp()`.
fn collapse_pte_mapped(
    guard: &MmapRead<'_>,
    addr: usize,
    when: HugeMapping,
    effort: Effort,
) -> Result<(), Fail> {
    let haddr = addr & !(PMD_SIZE - 1);
    let Some(vma) = guard.find_vma(haddr) else {
        return Err(Fail::VmaCheck);
    };
    if vma.start() > haddr || vma.end() < haddr + PMD_SIZE {
        return Err(Fail::VmaCheck);
    }
    let Some(file) = vma.file() else {
        return Err(Fail::VmaCheck);
    };
    if guard.pmd_state(haddr) == PmdState::Huge {
        return Err(Fail::PmdMapped);
    }
    // The page cache holds a huge folio: a fault would map it with the PMD whatever sysfs says,
    // so the settings are bypassed here too.
    if !vma::pmd_collapse_allowed(vma, CollapseMode::MADVISE) {
        return Err(Fail::VmaCheck);
    }
    // uffd-wp keeps per-PTE state: the page table stays.
    if vma.userfaultfd_protected() {
        return Err(Fail::PteUffd);
    }
    let Some(mapping) = Mapping::of(file) else {
        return Err(Fail::VmaCheck);
    };
    let index = vma.linear_page_index(haddr);
    let folio = match effort {
        Effort::Standard | Effort::Defrag => LockedFolio::lock(mapping, index),
        Effort::Light => LockedFolio::try_lock(mapping, index).map_err(|_| Fail::WouldBlock)?,
    };
    let Some(folio) = folio else {
        return Err(Fail::PageNull);
    };
    if folio.nr_pages() != NR {
        return Err(Fail::PageCompound);
    }
    let pmd = PmdEntry::find(guard, haddr);
    match pmd.map_or(PmdState::None, |p| p.state()) {
        PmdState::Huge => return Err(Fail::PmdMapped),
        // All the entries were removed, and the table with them.
        PmdState::None => return install_pmd(vma, haddr, pmd, &folio, when),
        PmdState::Table => {}
    }
    let Some(pmd) = pmd else {
        return Err(Fail::Other);
    };
    // No anonymous page is touched (any entry mapping one aborts), but CoW copies of this
    // extent elsewhere may send anon rmap walks here: keep them away while the table goes.
    let anon = AnonVmaWriteGuard::lock(guard, vma);
    let unmapped = unmap_ptes(guard, vma, pmd, haddr, &folio);
    drop(anon);
    unmapped?;
    install_pmd(vma, haddr, PmdEntry::find(guard, haddr), &folio, when)
}

/// Maps `folio` at `haddr` of `vma` with the PMD, if `when` says now. Upstream:
/// `set_huge_pmd()`.
fn install_pmd(
    vma: &VmaRef,
    haddr: usize,
    pmd: Option<PmdEntry<'_>>,
    folio: &LockedFolio,
    when: HugeMapping,
) -> Result<(), Fail> {
    if when == HugeMapping::OnFault || ffi::set_huge_pmd(vma, haddr, pmd, folio) {
        Ok(())
    } else {
        Err(Fail::Other)
    }
}

/// Clears the entries of the page table of `pmd` at `haddr`, each of which must be none or
/// map the page of `folio` at its offset, drops their rmap, references and RSS, and removes
/// the table. Changes nothing if an entry maps anything else (a CoW copy, say) or is not
/// present. Upstream: steps 1 to 4 of `try_collapse_pte_mapped_thp()`, in one pass under the
/// PMD and PTE locks (upstream drops the PTE lock between checking and clearing, so it has to
/// recheck, and may leave half the entries cleared when the recheck fails).
fn unmap_ptes(
    guard: &MmapRead<'_>,
    vma: &VmaRef,
    pmd: PmdEntry<'_>,
    haddr: usize,
    folio: &LockedFolio,
) -> Result<(), Fail> {
    let notifier = PmdClearNotifier::start(guard, haddr);
    let Some(mut table) = PmdTableLocked::lock(pmd, haddr) else {
        return Err(Fail::Other);
    };
    // Step 1: every entry is none or maps the folio's page at its offset.
    for i in 0..PTRS_PER_PTE {
        if table.is_none(i) {
            continue;
        }
        match table.normal_page(vma, i) {
            Some(page) if page == folio.page(i) => {}
            Some(_) => return Err(Fail::Other),
            // A swap or migration entry, or a special mapping.
            None => return Err(Fail::PteNonPresent),
        }
    }
    // Step 2: clear them, run by run, and drop the rmap of each run.
    let mut mapped = 0;
    let mut i = 0;
    while i < PTRS_PER_PTE {
        if table.is_none(i) {
            i += 1;
            continue;
        }
        let first = i;
        while i < PTRS_PER_PTE && !table.is_none(i) {
            i += 1;
        }
        let nr = i - first;
        table.clear(first, nr);
        // SAFETY: The `nr` entries mapped consecutive pages of the folio from `first` on in
        // `vma` (checked above) and were just cleared under the PTE lock, still held.
        unsafe {
            crate::ffi::isolate::remove_rmap_ptes(folio.as_ptr(), folio.page(first), nr, vma)
        };
        mapped += nr;
    }
    // Step 4: the table goes, and the TLB is flushed. Every entry was cleared above.
    if !table.remove(vma) {
        return Err(Fail::Other);
    }
    drop(notifier);
    // Step 3: the references and RSS of the mappings.
    // SAFETY: The cleared mappings, in `guard`'s mm, held `mapped` references to the folio,
    // ours to drop.
    unsafe { folio.drop_mappings(guard.mm(), mapped) };
    Ok(())
}
