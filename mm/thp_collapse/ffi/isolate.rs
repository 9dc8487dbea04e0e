// SPDX-License-Identifier: GPL-2.0

//! The folio isolation protocol of a collapse: folios locked and taken off their LRU lists
//! ([`IsolatedFolio`], a batch at a time through [`IsolationQueue`]), put back on failure, and
//! released in batches once their PTEs are gone ([`UnmappedFolios`]).
//!
//! Each step is a fixed sequence of static inlines and mm calls, which `mm/khugepaged.c` runs
//! for a whole batch (`thp_collapse_folios_isolate()`, `thp_collapse_folios_release_unmapped()`,
//! `thp_collapse_folio_putback()`): from Rust every inline would be an out-of-line helper call,
//! several per PTE. What a failure means is decided here.
//!
//! C headers: [`mm/khugepaged_internal.h`](srctree/mm/khugepaged_internal.h),
//! [`include/linux/rmap.h`](srctree/include/linux/rmap.h)

use core::ptr::{self, NonNull};
use kernel::{bindings, error::Result, mm::virt::VmaRef};

/// Why [`IsolatedFolio::isolate`] could not isolate a folio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IsolateError {
    /// Someone else holds the folio lock.
    Locked,
    /// There are references beyond the folio's mappings and swap cache (a GUP pin, say).
    Referenced,
    /// The folio is not on an LRU list (someone else isolated it).
    NotOnLru,
}

/// A folio this thread has locked and taken off its LRU list: reclaim, migration and
/// compaction leave it alone until it is put back, which dropping the value does.
///
/// # Invariants
///
/// `folio` is a folio of `nr` pages, locked by us, isolated from its LRU list (with
/// the reference that holds) and counted in the node's `NR_ISOLATED_*`.
pub(crate) struct IsolatedFolio {
    folio: NonNull<bindings::folio>,
    nr: usize,
}

// SAFETY: A folio lock belongs to no thread (whoever holds the value unlocks it), and the
// isolation and the reference are counts, not tied to the thread that took them.
unsafe impl Send for IsolatedFolio {}

impl IsolatedFolio {
    /// Locks `folio` without waiting, checks that nobody holds a reference to it beyond its
    /// mappings and swap cache, and takes it off its LRU list, in that order.
    ///
    /// # Safety
    ///
    /// `folio` must point to a folio of `nr` pages that stays valid during the call (mapped by
    /// a page table the caller has locked or detached, for instance).
    #[inline]
    pub(crate) unsafe fn isolate(
        folio: NonNull<bindings::folio>,
        nr: usize,
    ) -> Result<Self, IsolateError> {
        let mut queue = IsolationQueue::new();
        // SAFETY: `folio` is a folio of `nr` pages that stays valid during the call (safety
        // requirements), queued once, and isolated before this returns.
        unsafe { queue.push(folio, nr) };
        let mut isolated = None;
        queue
            .isolate(|f| isolated = Some(f))
            .map_err(|(_, why)| why)?;
        isolated.ok_or(IsolateError::NotOnLru)
    }

    /// The folio.
    #[inline]
    pub(crate) fn as_ptr(&self) -> NonNull<bindings::folio> {
        self.folio
    }

    /// Its number of pages.
    #[inline]
    pub(crate) fn nr_pages(&self) -> usize {
        self.nr
    }

    /// Puts the folio back, first dropping its swap cache entry if nothing maps it any more.
    #[inline]
    pub(crate) fn putback_free_swap(self) {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the release runs once.
        unsafe { this.release(SwapCache::FreeUnmapped) };
    }

    /// Uncounts, unlocks and puts back the folio, dropping the isolation reference, and does
    /// with its swap cache entry what `swap` says.
    ///
    /// # Safety
    ///
    /// Called once, after which the value must be forgotten.
    unsafe fn release(&self, swap: SwapCache) {
        let free_swap = swap == SwapCache::FreeUnmapped;
        // SAFETY: By the type invariants the folio is locked by us, isolated and counted.
        unsafe { bindings::thp_collapse_folio_putback(self.folio.as_ptr(), free_swap) };
    }
}

/// What becomes of an isolated folio's swap cache entry when it is put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SwapCache {
    /// It stays (the folio is still mapped, or the collapse was rolled back).
    Keep,
    /// It is dropped if nothing maps the folio any more (its data was copied away).
    FreeUnmapped,
}

impl Drop for IsolatedFolio {
    fn drop(&mut self) {
        // SAFETY: Drop runs once; nothing uses the value afterwards.
        unsafe { self.release(SwapCache::Keep) };
    }
}

/// Folios queued to be isolated together, as [`IsolatedFolio::isolate`] would one after the
/// other, but with one call into C for the lot: the lruvec lock is taken once per run of folios
/// of one lruvec, and the node's `NR_ISOLATED_*` counter updated once per run of one node,
/// instead of once per folio.
///
/// # Invariants
///
/// The first `len` entries of `folios` (with their sizes in `nr`) are distinct folios that
/// stay valid until the queue is isolated or dropped (by the safety requirements of
/// [`IsolationQueue::push`]); `len <= IsolationQueue::CAPACITY`.
pub(crate) struct IsolationQueue {
    folios: [*mut bindings::folio; IsolationQueue::CAPACITY],
    nr: [usize; IsolationQueue::CAPACITY],
    len: usize,
}

impl IsolationQueue {
    /// How many folios the queue holds at most.
    pub(crate) const CAPACITY: usize = 16;

    /// An empty queue.
    #[inline]
    pub(crate) const fn new() -> Self {
        // INVARIANT: Empty.
        Self {
            folios: [ptr::null_mut(); Self::CAPACITY],
            nr: [0; Self::CAPACITY],
            len: 0,
        }
    }

    /// The number of folios queued.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the queue is full: [`IsolationQueue::isolate`] must run before the next push.
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.len == Self::CAPACITY
    }

    /// Queues `folio`, of `nr` pages, to be isolated; ignored if the queue is full.
    ///
    /// # Safety
    ///
    /// `folio` must stay valid until the queue is isolated or dropped (mapped by a page table
    /// the caller has locked or detached, for instance), and must not be queued already.
    #[inline]
    pub(crate) unsafe fn push(&mut self, folio: NonNull<bindings::folio>, nr: usize) {
        if let (Some(f), Some(n)) = (self.folios.get_mut(self.len), self.nr.get_mut(self.len)) {
            *f = folio.as_ptr();
            *n = nr;
            // INVARIANT: A valid folio, not queued before (safety requirements).
            self.len += 1;
        }
    }

    /// Locks each queued folio without waiting, checks that nobody holds a reference to it
    /// beyond its mappings and swap cache, and takes it off its LRU list, in queue order,
    /// handing each isolated folio to `f`; stops at the first folio that fails, and returns
    /// its index in the queue and why; it and those after it are left as they were. Empties
    /// the queue.
    pub(crate) fn isolate(
        &mut self,
        mut f: impl FnMut(IsolatedFolio),
    ) -> core::result::Result<(), (usize, IsolateError)> {
        let len = core::mem::take(&mut self.len);
        if len == 0 {
            return Ok(());
        }
        let mut why = bindings::thp_collapse_isolate_THP_ISOLATE_OK;
        // SAFETY: The first `len` entries are distinct folios that stay valid during the call
        // (type invariants). The glue runs the isolation protocol on each in order: lock
        // without waiting, check the references under the lock (the folio lock serializes
        // against split_huge_page()), isolate, count; it stops at the first failure, leaving
        // that folio and those after it as they were.
        let done = unsafe {
            bindings::thp_collapse_folios_isolate(self.folios.as_mut_ptr(), len as u32, &mut why)
        } as usize;
        let done = done.min(len);
        for (folio, &nr) in self.folios.iter().zip(self.nr.iter()).take(done) {
            if let Some(folio) = NonNull::new(*folio) {
                // INVARIANT: Locked, isolated and counted by the call above.
                f(IsolatedFolio { folio, nr });
            }
        }
        if done == len {
            return Ok(());
        }
        let why = match why {
            bindings::thp_collapse_isolate_THP_ISOLATE_LOCKED => IsolateError::Locked,
            bindings::thp_collapse_isolate_THP_ISOLATE_REFERENCED => IsolateError::Referenced,
            _ => IsolateError::NotOnLru,
        };
        Err((done, why))
    }
}

impl Default for IsolationQueue {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes the rmap of `nr` pages of `folio` from `page` on, which `nr` PTEs of `vma` mapped
/// and no longer do. The references those mappings held are the caller's to drop
/// ([`put_refs`]). C: `folio_remove_rmap_ptes()`.
///
/// # Safety
///
/// The caller must have cleared the `nr` PTEs (under their page-table lock, which it still
/// holds); they mapped consecutive pages of `folio` from `page` on, in `vma`, and `folio`
/// must stay valid until the call returns.
#[inline]
pub(crate) unsafe fn remove_rmap_ptes(
    folio: NonNull<bindings::folio>,
    page: NonNull<bindings::page>,
    nr: usize,
    vma: &VmaRef,
) {
    // SAFETY: By the function's safety requirements.
    unsafe {
        bindings::folio_remove_rmap_ptes(folio.as_ptr(), page.as_ptr(), nr as i32, vma.as_ptr())
    };
}

/// Removes the mapping of the small folio `folio` by a PTE of `vma` that the caller
/// cleared, with preemption off for the per-CPU statistics (glue:
/// `thp_collapse_remove_rmap_small()`).
///
/// # Safety
///
/// A PTE of `vma` mapped `folio`, a small folio, and the caller cleared it; the caller holds
/// the mmap lock of `vma`'s mm since (for read at least), and `folio` stays valid until the
/// call returns.
#[inline]
pub(crate) unsafe fn remove_rmap_small(folio: NonNull<bindings::folio>, vma: &VmaRef) {
    // SAFETY: By the function's safety requirements.
    unsafe { bindings::thp_collapse_remove_rmap_small(folio.as_ptr(), vma.as_ptr()) };
}

/// Drops `nr` references to `folio`, which the caller holds (the mappings of PTEs it removed
/// with [`remove_rmap_ptes`], for instance). C: `folio_put_refs()`.
///
/// # Safety
///
/// The caller must own `nr` references to `folio` and not use them afterwards.
#[inline]
pub(crate) unsafe fn put_refs(folio: NonNull<bindings::folio>, nr: usize) {
    // SAFETY: By the function's safety requirements.
    unsafe { bindings::folio_put_refs(folio.as_ptr(), nr as i32) };
}

/// Folios a caller isolated and then unmapped everywhere, on their way back to the page
/// allocator, released a batch at a time (one call into C per batch).
///
/// Each one nothing else holds is freed without going back to the LRU (where its last reference
/// would only take it off again), as the LRU's own batches are: one memory cgroup uncharge, one
/// trip to the per-CPU free lists and one update of the node's `NR_ISOLATED_*` counter per
/// batch. Others are put back on the LRU. Dropping the value releases what is left.
/// C: `folios_put_refs()`.
///
/// # Invariants
///
/// The first `batch.nr` entries of `batch.folios` are folios locked by this thread,
/// isolated and counted (as [`IsolatedFolio`]s are), that nothing maps, whose `refs`
/// references (same index) from their removed mappings we own, besides the isolation's;
/// `batch.nr < FOLIO_BATCH_SIZE` between calls.
pub(crate) struct UnmappedFolios {
    batch: bindings::folio_batch,
    refs: [u32; FOLIO_BATCH_SIZE],
}

/// Folios in a C `struct folio_batch`.
const FOLIO_BATCH_SIZE: usize = bindings::FOLIO_BATCH_SIZE as usize;

impl UnmappedFolios {
    /// An empty batch.
    #[inline]
    pub(crate) fn new() -> Self {
        // INVARIANT: Empty.
        Self {
            batch: bindings::folio_batch::default(),
            refs: [0; FOLIO_BATCH_SIZE],
        }
    }

    /// Takes over `folio`, which no page table maps any more, with `refs` references of the
    /// mappings the caller removed. With its batch it is uncounted and unlocked, its swap cache
    /// entry dropped, and it is freed if nothing else holds it; otherwise (a large folio, say)
    /// it goes back on the LRU, from where its last reference frees it.
    ///
    /// # Safety
    ///
    /// The caller must own `refs` references to the folio, from mappings it removed
    /// (page-table entries and rmap), and must not use them afterwards.
    #[inline]
    pub(crate) unsafe fn add(&mut self, folio: IsolatedFolio, refs: usize) {
        let folio = core::mem::ManuallyDrop::new(folio);
        let n = usize::from(self.batch.nr).min(FOLIO_BATCH_SIZE - 1);
        self.batch.folios[n] = folio.folio.as_ptr();
        self.refs[n] = refs as u32;
        // INVARIANT: An isolated folio nothing maps, with the references we own; `folio` is
        // never dropped, so the batch releases it, once.
        self.batch.nr = (n + 1) as u8;
        if n + 1 == FOLIO_BATCH_SIZE {
            self.flush();
        }
    }

    /// Releases the batch, freeing the folios nothing else holds.
    fn flush(&mut self) {
        if self.batch.nr == 0 {
            return;
        }
        // SAFETY: By the type invariants the batch holds `nr` folios, isolated and locked
        // by us, nothing maps, with the references in `refs`, ours to drop; the call empties
        // the batch.
        unsafe {
            bindings::thp_collapse_folios_release_unmapped(&mut self.batch, self.refs.as_mut_ptr())
        };
        // INVARIANT: Empty again (as the call leaves it).
        self.batch.nr = 0;
        self.batch.i = 0;
    }
}

impl Default for UnmappedFolios {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for UnmappedFolios {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kernel::macros::kunit_tests(thp_collapse_isolate)]
mod tests {
    use super::*;
    use kernel::{
        error::code::EINVAL,
        mm::{
            mmap_lock::{MmapLocked, MmapReadLock, MmapWriteLock},
            pgtable::{PmdEntry, PmdTableLocked},
            test_mm::{drain_lru, facts, page_folio, Facts, TestMm, UserPage, PAGE},
        },
    };

    /// The index, in its page table, of the entry that maps `addr`.
    fn idx(addr: usize) -> usize {
        (addr & (kernel::mm::pgtable::PMD_SIZE - 1)) / PAGE
    }

    /// The facts of the folio mapped at `addr` of `t`'s mm, read under the page-table locks.
    fn facts_at(t: &TestMm, addr: usize) -> Option<Facts> {
        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(addr)?;
        let table = PmdTableLocked::lock(PmdEntry::find(&lock, addr)?, addr)?;
        // SAFETY: The page is mapped by the locked table, which keeps its folio.
        table
            .normal_page(vma, idx(addr))
            .map(|page| unsafe { facts(page_folio(page)) })
    }

    /// Isolating a mapped LRU folio of the test's mm locks it, takes it off the LRU with a
    /// reference of its own, and refuses a second isolation; dropping it puts it back.
    #[test]
    fn isolate_and_put_back() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(PAGE)?;
        t.write(a, b"on the LRU")?;
        drain_lru();
        let before = facts_at(&t, a);

        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let table = PmdTableLocked::lock(pmd, a).ok_or(EINVAL)?;
        let page = table.normal_page(vma, idx(a)).ok_or(EINVAL)?;
        // SAFETY: The locked table maps the page, which keeps its folio.
        let folio = unsafe { page_folio(page) };
        // SAFETY: As above: the folio stays valid during the call.
        let isolated = unsafe { IsolatedFolio::isolate(folio, 1) };
        // SAFETY: As above.
        let during = unsafe { facts(folio) };
        // SAFETY: As above.
        let again = unsafe { IsolatedFolio::isolate(folio, 1) }.err();
        let same = isolated
            .as_ref()
            .map(|i| (i.as_ptr() == folio, i.nr_pages()))
            .map_err(|e| *e);
        drop(isolated);
        // SAFETY: As above.
        let put_back = unsafe { facts(folio) };
        drop(table);
        drop(lock);
        drain_lru();
        let after = facts_at(&t, a);

        let lru_folio = |lru, locked, refs| {
            Some(Facts {
                lru,
                locked,
                refs,
                mapcount: 1,
            })
        };
        assert_eq!(before, lru_folio(true, false, 1));
        assert_eq!(same, Ok((true, 1)));
        assert_eq!(Some(during), lru_folio(false, true, 2));
        assert_eq!(again, Some(IsolateError::Locked));
        assert!(!put_back.locked);
        assert_eq!(after, before);
        Ok(())
    }

    /// A folio with a reference beyond its mapping (GUP's) is refused and left unlocked; one
    /// that someone else took off the LRU is refused as not on the LRU.
    #[test]
    fn isolate_refuses_referenced_and_off_lru() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(PAGE)?;
        t.write(a, b"referenced")?;
        drain_lru();

        let lock = MmapReadLock::lock(t.mm());
        let gup = UserPage::get(&lock, a)?;
        let folio = gup.folio();
        // SAFETY: GUP's reference keeps the folio.
        let referenced = unsafe { IsolatedFolio::isolate(folio, 1) }.err();
        // SAFETY: As above.
        let after_referenced = unsafe { facts(folio) };

        // Someone else isolates it (with a reference of its own, which we drop for them so
        // that only the LRU state differs), then puts it back.
        // SAFETY: GUP's reference keeps the folio; the isolation's is dropped at once, and
        // taken again before `folio_putback_lru()` drops it.
        let off_lru = unsafe {
            let taken = bindings::folio_isolate_lru(folio.as_ptr());
            bindings::folio_put(folio.as_ptr());
            drop(gup);
            let refused = IsolatedFolio::isolate(folio, 1).err();
            let gup = UserPage::get(&lock, a);
            if taken {
                bindings::folio_get(folio.as_ptr());
                bindings::folio_putback_lru(folio.as_ptr());
            }
            drop(gup);
            (taken, refused)
        };
        drop(lock);
        drain_lru();
        let after = facts_at(&t, a);

        assert_eq!(referenced, Some(IsolateError::Referenced));
        assert!(!after_referenced.locked);
        assert_eq!(after_referenced.refs, 2);
        assert_eq!(off_lru, (true, Some(IsolateError::NotOnLru)));
        assert_eq!(
            after.map(|f| (f.lru, f.locked, f.refs)),
            Some((true, false, 1))
        );
        Ok(())
    }

    /// A queue isolates its folios in order up to the first that fails, hands over those before
    /// it and leaves the others as they were; it holds at most `CAPACITY` folios.
    #[test]
    fn isolation_queue_stops_at_first_failure() -> Result {
        let t = TestMm::attach()?;
        const N: usize = IsolationQueue::CAPACITY + 1;
        let a = t.map_pmd_range()?;
        for n in 0..N {
            t.write(a + n * PAGE, b"queued")?;
        }
        drain_lru();

        let lock = MmapReadLock::lock(t.mm());
        let pinned = UserPage::get(&lock, a + PAGE)?;
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let table = PmdTableLocked::lock(pmd, a).ok_or(EINVAL)?;
        let mut folios = [None; N];
        for (n, f) in folios.iter_mut().enumerate() {
            // SAFETY: The locked table maps the page, which keeps its folio.
            *f = table
                .normal_page(vma, idx(a) + n)
                .map(|p| unsafe { page_folio(p) });
        }
        let mut queue = IsolationQueue::new();
        for f in folios.iter().take(3).flatten() {
            // SAFETY: The locked table keeps the folios until the queue is isolated; each is
            // queued once.
            unsafe { queue.push(*f, 1) };
        }
        let queued = queue.len();
        let mut handed = [None, None, None];
        let mut n = 0;
        let result = queue.isolate(|f| {
            if let Some(slot) = handed.get_mut(n) {
                *slot = Some(f);
            }
            n += 1;
        });
        let emptied = queue.len() == 0;
        let first_handed = handed[0].as_ref().map(|f| Some(f.as_ptr()) == folios[0]);
        // SAFETY: The locked table keeps the folios.
        let left = [1, 2].map(|i| folios[i].map(|f| unsafe { facts(f) }.locked));
        drop(handed);

        let mut full = IsolationQueue::new();
        for f in folios.iter().flatten() {
            // SAFETY: As above; the queue is dropped without isolating.
            unsafe { full.push(*f, 1) };
        }
        // The queue is dropped without isolating (it has no destructor).
        let (full_len, is_full) = (full.len(), full.is_full());
        drop(table);
        drop(pinned);
        drop(lock);
        drain_lru();
        let first_after = facts_at(&t, a);

        assert_eq!(queued, 3);
        assert_eq!(result, Err((1, IsolateError::Referenced)));
        assert_eq!(n, 1);
        assert!(emptied);
        assert_eq!(first_handed, Some(true));
        assert_eq!(left, [Some(false), Some(false)]);
        assert_eq!((full_len, is_full), (IsolationQueue::CAPACITY, true));
        assert_eq!(
            first_after.map(|f| (f.lru, f.locked, f.refs)),
            Some((true, false, 1))
        );
        Ok(())
    }

    /// A folio isolated and unmapped (its PTE cleared and its rmap removed, through a detached
    /// table) is released by `UnmappedFolios`; the page reads as new afterwards.
    #[test]
    fn unmapped_folios_release() -> Result {
        use kernel::mm::{anon_vma::AnonVmaWriteGuard, pgtable::DetachedPteTable};
        let t = TestMm::attach()?;
        let p = t.map_pmd_range()?;
        t.write(p, b"stays")?;
        t.write(p + PAGE, b"goes away")?;
        drain_lru();

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let anon = AnonVmaWriteGuard::lock(&lock, vma).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;
        let end = p + kernel::mm::pgtable::PMD_SIZE;
        let mut table = DetachedPteTable::detach(&lock, &anon, vma, pmd, p, end).ok_or(EINVAL)?;
        // SAFETY: Entry 1 is mapped, and only the detached table can change it.
        let page = NonNull::new(unsafe {
            bindings::vm_normal_page(vma.as_ptr(), p + PAGE, bindings::ptep_get(table.entry(1)))
        })
        .ok_or(EINVAL)?;
        // SAFETY: The detached table maps the page, which keeps its folio.
        let folio = unsafe { page_folio(page) };
        // SAFETY: As above.
        let isolated = unsafe { IsolatedFolio::isolate(folio, 1) };
        let ok = isolated.is_ok();
        // SAFETY: As above.
        let before = unsafe { facts(folio) };
        let mut released = false;
        if let Ok(isolated) = isolated {
            let mut locked = table.lock();
            if locked.clear(1, 1) {
                // SAFETY: The PTE that mapped `page` of `folio` in `vma` was just cleared, under
                // the table's lock, which we hold; the isolation keeps the folio.
                unsafe { remove_rmap_ptes(folio, page, 1, vma) };
                drop(locked);
                // The mapping is gone: uncount it as the page table's owner would.
                t.count_anon(-1);
                let mut batch = UnmappedFolios::new();
                // SAFETY: The reference of the mapping just removed is ours.
                unsafe { batch.add(isolated, 1) };
                released = true;
            }
        }
        drop(table);
        drop(anon);
        drop(lock);

        let mut stays = [0u8; 5];
        let mut gone = [0xffu8; 9];
        t.read(p, &mut stays)?;
        t.read(p + PAGE, &mut gone)?;
        assert!(ok);
        assert_eq!((before.locked, before.lru, before.refs), (true, false, 2));
        assert!(released);
        assert_eq!(&stays, b"stays");
        assert_eq!(gone, [0u8; 9]);
        Ok(())
    }
}
