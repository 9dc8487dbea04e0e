// SPDX-License-Identifier: GPL-2.0

//! Folios this code allocated and owns alone, before they are mapped anywhere.
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)

use crate::{
    bindings,
    error::{code::ENOMEM, Error, Result},
    mm::Mm,
};
#[cfg(CONFIG_THP_COLLAPSE_RUST)]
use crate::{
    error::code::{EHWPOISON, EINVAL},
    mm::virt::VmaRef,
};
use core::ptr::{self, NonNull};

/// A folio of `1 << order` pages that this value holds the only reference to.
///
/// Dropping it frees it (and uncharges it, if it was charged).
///
/// # Invariants
///
/// `folio` points to a folio of order `order`, and this value holds the only reference to it.
///
/// # Examples
///
/// ```
/// use kernel::{bindings, mm::folio::NewFolio};
///
/// // A 16 KiB folio on this CPU's node, freed at the end of the block.
/// let folio = NewFolio::alloc(bindings::GFP_KERNEL, 2, None)?;
/// assert_eq!(folio.order(), 2);
/// # Ok::<(), Error>(())
/// ```
pub struct NewFolio {
    folio: NonNull<bindings::folio>,
    order: u32,
}

impl NewFolio {
    /// Allocates a folio of `order` with `gfp`, on node `nid` (or this CPU's memory node).
    ///
    /// May sleep if `gfp` allows it. Fails with `ENOMEM`.
    pub fn alloc(gfp: bindings::gfp_t, order: u32, nid: Option<i32>) -> Result<Self> {
        if order > bindings::MAX_PAGE_ORDER {
            return Err(ENOMEM);
        }
        // SAFETY: Always safe to call; a NULL nodemask allows every node.
        let nid = nid.unwrap_or_else(|| unsafe { bindings::numa_mem_id() });
        // SAFETY: `order` is valid (checked above); a NULL nodemask allows every node.
        let folio = unsafe { bindings::__folio_alloc(gfp, order, nid, ptr::null_mut()) };
        // INVARIANT: A new folio of `order`, and its only reference.
        NonNull::new(folio)
            .map(|folio| Self { folio, order })
            .ok_or(ENOMEM)
    }

    /// Charges the folio to the memory cgroup of `mm`. May sleep if `gfp` allows it (to reclaim
    /// within the cgroup).
    pub fn charge(&self, mm: &Mm, gfp: bindings::gfp_t) -> Result {
        // SAFETY: By the type invariants the folio is not shared, so nobody else charges it; `mm`
        // is valid.
        let ret = unsafe { bindings::mem_cgroup_charge(self.folio.as_ptr(), mm.as_raw(), gfp) };
        if ret == 0 {
            Ok(())
        } else {
            Err(Error::from_errno(ret))
        }
    }

    /// The folio, for C functions that fill it in (it stays owned by this value).
    #[inline]
    pub fn as_ptr(&self) -> *mut bindings::folio {
        self.folio.as_ptr()
    }

    /// The `struct page`s of the folio, consecutive: page `n` is `first_page().add(n)` for
    /// `n < 1 << order`. C: `folio_page()`, which is `&folio->page + n`.
    #[inline]
    pub fn first_page(&self) -> *mut bindings::page {
        // SAFETY: By the type invariants the folio is valid; this only computes the address of
        // the `struct page` it starts with, without reading it.
        unsafe { &raw mut (*self.folio.as_ptr()).__bindgen_anon_1.page }
    }

    /// Its order.
    #[inline]
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Gives up ownership: the caller takes over the reference (to map the folio).
    pub fn into_raw(self) -> *mut bindings::folio {
        let folio = self.folio.as_ptr();
        core::mem::forget(self);
        folio
    }

    /// Page `n` of the folio, if it has one.
    #[cfg(CONFIG_THP_COLLAPSE_RUST)]
    #[inline]
    fn page(&self, n: usize) -> Option<*mut bindings::page> {
        // The `struct page`s of a folio are consecutive (`folio_page()`).
        (n < 1 << self.order).then(|| self.first_page().wrapping_add(n))
    }

    /// Fills page `n` with zeroes, for user address `addr` (which matters on machines with
    /// virtually indexed caches). Does nothing past the last page. C: `clear_user_highpage()`.
    #[cfg(CONFIG_THP_COLLAPSE_RUST)]
    #[inline]
    pub fn clear_user_page(&mut self, n: usize, addr: usize) {
        if let Some(page) = self.page(n) {
            // SAFETY: `page` is a page of the folio, which only this value can reach.
            unsafe { bindings::clear_user_highpage(page, addr) };
        }
    }

    /// Copies the user page `src`, mapped at `addr` in `vma`, into page `n`, safely against
    /// machine checks: a poisoned source fails the copy with `EHWPOISON` instead of crashing
    /// the kernel. Fails with `EINVAL` past the last page. C: `copy_mc_user_highpage()`.
    ///
    /// # Safety
    ///
    /// `src` must be a page that stays valid, and is not written, during the call (locked, or
    /// only mapped by a page table the caller has detached).
    #[cfg(CONFIG_THP_COLLAPSE_RUST)]
    #[inline]
    pub unsafe fn copy_mc_user_page(
        &mut self,
        n: usize,
        src: NonNull<bindings::page>,
        addr: usize,
        vma: &VmaRef,
    ) -> Result {
        let dst = self.page(n).ok_or(EINVAL)?;
        // SAFETY: `dst` is a page of the folio, which only this value can reach; `src` is valid
        // by the function's safety requirements, and `vma` by the type invariants of `VmaRef`.
        if unsafe { bindings::copy_mc_user_highpage(dst, src.as_ptr(), addr, vma.as_ptr()) } > 0 {
            return Err(EHWPOISON);
        }
        Ok(())
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST)]
impl NewFolio {
    /// Fills page `n` with zeroes (a page of the page cache, not mapped by user space yet).
    /// Does nothing past the last page. C: `clear_highpage()`.
    #[inline]
    pub fn clear_page(&mut self, n: usize) {
        if let Some(page) = self.page(n) {
            // SAFETY: `page` is a page of the folio, which only this value can reach.
            unsafe { bindings::clear_highpage(page) };
        }
    }

    /// Copies `src` into page `n`, safely against machine checks: a poisoned source fails the
    /// copy with `EHWPOISON`. Fails with `EINVAL` past the last page. C: `copy_mc_highpage()`.
    ///
    /// # Safety
    ///
    /// `src` must be a page that stays valid, and is not written, during the call (of a locked
    /// folio that nothing maps, for instance).
    #[inline]
    pub unsafe fn copy_mc_page(&mut self, n: usize, src: NonNull<bindings::page>) -> Result {
        let dst = self.page(n).ok_or(EINVAL)?;
        // SAFETY: `dst` is a page of the folio, which only this value can reach; `src` is valid
        // by the function's safety requirements.
        if unsafe { bindings::copy_mc_highpage(dst, src.as_ptr()) } > 0 {
            return Err(EHWPOISON);
        }
        Ok(())
    }
}

impl Drop for NewFolio {
    fn drop(&mut self) {
        // SAFETY: By the type invariants we hold the only reference; dropping it frees the folio.
        unsafe { bindings::folio_put(self.folio.as_ptr()) };
    }
}

/// Why [`IsolatedFolio::isolate`] could not isolate a folio.
#[cfg(CONFIG_THP_COLLAPSE_RUST)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsolateError {
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
/// `folio` is a folio of `nr` pages, locked by this thread, isolated from its LRU list (with
/// the reference that holds) and counted in the node's `NR_ISOLATED_*`.
///
/// # Examples
///
/// ```
/// use core::ptr::NonNull;
/// use kernel::{bindings, mm::folio::IsolatedFolio};
///
/// /// Whether `folio` (of `nr` pages) could be taken off the LRU for a moment.
/// ///
/// /// # Safety
/// ///
/// /// `folio` must stay valid during the call.
/// unsafe fn can_isolate(folio: NonNull<bindings::folio>, nr: usize) -> bool {
///     // SAFETY: By the function's safety requirements. Dropping the result puts the folio
///     // back at once.
///     unsafe { IsolatedFolio::isolate(folio, nr) }.is_ok()
/// }
/// ```
#[cfg(CONFIG_THP_COLLAPSE_RUST)]
pub struct IsolatedFolio {
    folio: NonNull<bindings::folio>,
    nr: usize,
}

#[cfg(CONFIG_THP_COLLAPSE_RUST)]
impl IsolatedFolio {
    /// Locks `folio` without waiting, checks that nobody holds a reference to it beyond its
    /// mappings and swap cache, and takes it off its LRU list, in that order.
    ///
    /// # Safety
    ///
    /// `folio` must point to a folio of `nr` pages that stays valid during the call (mapped by
    /// a page table the caller has locked or detached, for instance).
    #[inline]
    pub unsafe fn isolate(
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
    pub fn as_ptr(&self) -> NonNull<bindings::folio> {
        self.folio
    }

    /// Its number of pages.
    #[inline]
    pub fn nr_pages(&self) -> usize {
        self.nr
    }

    /// Puts the folio back, first dropping its swap cache entry if nothing maps it any more.
    #[inline]
    pub fn putback_free_swap(self) {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the release runs once.
        unsafe { this.release(true) };
    }

    /// Uncounts, unlocks and puts back the folio, dropping the isolation reference; with
    /// `free_swap`, drops its swap cache entry in between if nothing maps it any more.
    ///
    /// # Safety
    ///
    /// Called once, after which the value must be forgotten.
    unsafe fn release(&self, free_swap: bool) {
        // SAFETY: By the type invariants the folio is locked by us, isolated and counted.
        unsafe { bindings::thp_collapse_folio_putback(self.folio.as_ptr(), free_swap) };
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST)]
impl Drop for IsolatedFolio {
    fn drop(&mut self) {
        // SAFETY: Drop runs once; nothing uses the value afterwards.
        unsafe { self.release(false) };
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
#[cfg(CONFIG_THP_COLLAPSE_RUST)]
pub struct IsolationQueue {
    folios: [*mut bindings::folio; IsolationQueue::CAPACITY],
    nr: [usize; IsolationQueue::CAPACITY],
    len: usize,
}

#[cfg(CONFIG_THP_COLLAPSE_RUST)]
impl IsolationQueue {
    /// How many folios the queue holds at most.
    pub const CAPACITY: usize = 16;

    /// An empty queue.
    #[inline]
    pub const fn new() -> Self {
        // INVARIANT: Empty.
        Self {
            folios: [ptr::null_mut(); Self::CAPACITY],
            nr: [0; Self::CAPACITY],
            len: 0,
        }
    }

    /// The number of folios queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no folio is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the queue is full: [`IsolationQueue::isolate`] must run before the next push.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == Self::CAPACITY
    }

    /// Queues `folio`, of `nr` pages, to be isolated; ignored if the queue is full.
    ///
    /// # Safety
    ///
    /// `folio` must stay valid until the queue is isolated or dropped (mapped by a page table
    /// the caller has locked or detached, for instance), and must not be queued already.
    #[inline]
    pub unsafe fn push(&mut self, folio: NonNull<bindings::folio>, nr: usize) {
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
    pub fn isolate(
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

#[cfg(CONFIG_THP_COLLAPSE_RUST)]
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
#[cfg(CONFIG_THP_COLLAPSE_RUST)]
#[inline]
pub unsafe fn remove_rmap_ptes(
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

/// Drops `nr` references to `folio`, which the caller holds (the mappings of PTEs it removed
/// with [`remove_rmap_ptes`], for instance). C: `folio_put_refs()`.
///
/// # Safety
///
/// The caller must own `nr` references to `folio` and not use them afterwards.
#[cfg(CONFIG_THP_COLLAPSE_RUST)]
#[inline]
pub unsafe fn put_refs(folio: NonNull<bindings::folio>, nr: usize) {
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
///
/// # Examples
///
/// ```
/// use kernel::mm::folio::{IsolatedFolio, UnmappedFolios};
///
/// /// Frees folios whose one mapping each the caller has just removed.
/// ///
/// /// # Safety
/// ///
/// /// The caller owns the reference of each folio's removed mapping.
/// unsafe fn free_all(folios: impl Iterator<Item = IsolatedFolio>) {
///     let mut batch = UnmappedFolios::new();
///     for folio in folios {
///         // SAFETY: By the function's safety requirements.
///         unsafe { batch.add(folio, 1) };
///     }
/// }
/// ```
#[cfg(CONFIG_THP_COLLAPSE_RUST)]
pub struct UnmappedFolios {
    batch: bindings::folio_batch,
    refs: [u32; FOLIO_BATCH_SIZE],
}

/// Folios in a C `struct folio_batch`.
#[cfg(CONFIG_THP_COLLAPSE_RUST)]
const FOLIO_BATCH_SIZE: usize = bindings::FOLIO_BATCH_SIZE as usize;

#[cfg(CONFIG_THP_COLLAPSE_RUST)]
impl UnmappedFolios {
    /// An empty batch.
    #[inline]
    pub fn new() -> Self {
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
    pub unsafe fn add(&mut self, folio: IsolatedFolio, refs: usize) {
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

#[cfg(CONFIG_THP_COLLAPSE_RUST)]
impl Default for UnmappedFolios {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST)]
impl Drop for UnmappedFolios {
    fn drop(&mut self) {
        self.flush();
    }
}
