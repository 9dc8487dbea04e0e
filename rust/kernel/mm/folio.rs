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
        // SAFETY: `folio` is valid (safety requirements). The glue runs the isolation
        // protocol: lock without waiting, check the references under the lock (the folio lock
        // serializes against split_huge_page()), isolate, count; on failure nothing changed.
        let ret = unsafe { bindings::thp_collapse_folio_isolate(folio.as_ptr()) };
        match ret {
            bindings::thp_collapse_isolate_THP_ISOLATE_OK => {}
            bindings::thp_collapse_isolate_THP_ISOLATE_LOCKED => return Err(IsolateError::Locked),
            bindings::thp_collapse_isolate_THP_ISOLATE_REFERENCED => {
                return Err(IsolateError::Referenced)
            }
            _ => return Err(IsolateError::NotOnLru),
        }
        // INVARIANT: Locked, isolated and counted above.
        Ok(Self { folio, nr })
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
/// allocator.
///
/// Each one nothing else holds is freed without going back to the LRU (where its last reference
/// would only take it off again), in batches, as the LRU's own batches are: one memory cgroup
/// uncharge and one trip to the per-CPU free lists per batch. Others are put back on the LRU.
/// Dropping the value frees what is left. C: `folios_put_refs()`.
///
/// # Invariants
///
/// The first `batch.nr` entries of `batch.folios` are folios nothing maps, not on the LRU,
/// whose `refs` references (same index) we own; `batch.nr < FOLIO_BATCH_SIZE` between calls.
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
    /// mappings the caller removed: uncounts and unlocks it, drops its swap cache entry, and
    /// frees it (with the next batch) if nothing else holds it; otherwise puts it back on the
    /// LRU, from where its last reference frees it.
    ///
    /// # Safety
    ///
    /// The caller must own `refs` references to the folio, from mappings it removed
    /// (page-table entries and rmap), and must not use them afterwards.
    #[inline]
    pub unsafe fn add(&mut self, folio: IsolatedFolio, refs: usize) {
        let folio = core::mem::ManuallyDrop::new(folio);
        let f = folio.folio.as_ptr();
        let refs = refs as u32;
        // SAFETY: By the type invariants of `IsolatedFolio` the folio is locked by us, isolated
        // and counted, and nothing maps it; the mappings' references are ours (the function's
        // safety requirements) and go with it. `folio` is never dropped, so this runs once.
        if !unsafe { bindings::thp_collapse_folio_release_unmapped(f, refs as i32) } {
            // Put back on the LRU, with the references dropped.
            return;
        }
        let n = usize::from(self.batch.nr).min(FOLIO_BATCH_SIZE - 1);
        self.batch.folios[n] = f;
        // The mappings' references and the isolation's.
        self.refs[n] = refs + 1;
        // INVARIANT: A folio nothing maps, off the LRU, with the references we own.
        self.batch.nr = (n + 1) as u8;
        if n + 1 == FOLIO_BATCH_SIZE {
            self.flush();
        }
    }

    /// Drops the references of the batch, freeing its folios.
    fn flush(&mut self) {
        if self.batch.nr == 0 {
            return;
        }
        // SAFETY: By the type invariants the batch holds `nr` folios with the references in
        // `refs`, ours to drop.
        unsafe { bindings::folios_put_refs(&mut self.batch, self.refs.as_mut_ptr()) };
        // INVARIANT: Empty again (as `folios_put_refs()` leaves it).
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
