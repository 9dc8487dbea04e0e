// SPDX-License-Identifier: GPL-2.0

//! The anon_vma of a VMA, locked for write.
//!
//! While the root of an anon_vma is write-locked, rmap walkers (reclaim, migration, folio split)
//! cannot reach the anonymous pages of the VMAs that share it.
//!
//! C header: [`include/linux/rmap.h`](srctree/include/linux/rmap.h)

use crate::{
    bindings,
    mm::{mmap_lock::MmapLocked, virt::VmaRef},
};
use core::{marker::PhantomData, ptr::NonNull};

/// The anon_vma of a VMA, its root's rwsem held for write by this thread.
///
/// It can only be taken under the mmap write lock (which keeps the VMA's anon_vma from changing)
/// and cannot outlive it. Dropping it releases the lock.
///
/// # Invariants
///
/// `anon_vma` is valid, and its root's rwsem is held for write by this thread.
///
/// # Examples
///
/// ```
/// use kernel::mm::{anon_vma::AnonVmaWriteGuard, mmap_lock::{MmapLocked, MmapWriteLock}, Mm};
///
/// /// Whether the VMA at `addr` has anonymous pages that rmap can reach.
/// fn has_anon_vma(mm: &Mm, addr: usize) -> bool {
///     let lock = MmapWriteLock::lock(mm);
///     let Some(vma) = lock.find_vma(addr) else {
///         return false;
///     };
///     // Nothing can map, unmap or split its pages through rmap while `guard` lives.
///     let guard = AnonVmaWriteGuard::lock(&lock, vma);
///     guard.is_some()
/// }
/// ```
pub struct AnonVmaWriteGuard<'a> {
    anon_vma: NonNull<bindings::anon_vma>,
    _lock: PhantomData<&'a ()>,
}

impl<'a> AnonVmaWriteGuard<'a> {
    /// Write-locks the anon_vma of `vma`, a VMA of the mm whose lock `mmap` is (for read or
    /// write), or returns `None` if it has none (or is not a VMA of that mm). May sleep.
    pub fn lock<L: MmapLocked + ?Sized>(mmap: &'a L, vma: &'a VmaRef) -> Option<Self> {
        if !core::ptr::eq(vma.mm().as_raw(), mmap.locked_mm().as_raw()) {
            return None;
        }
        // SAFETY: `vma` is valid. Its `anon_vma` is only set once (a page fault may set it
        // under the read lock, hence the volatile read) and only cleared when the VMA goes,
        // which needs the mmap write lock.
        let anon_vma =
            NonNull::new(unsafe { core::ptr::read_volatile(&raw const (*vma.as_ptr()).anon_vma) })?;
        // SAFETY: The anon_vma of a live VMA is valid; the mmap lock keeps it attached.
        unsafe { bindings::thp_collapse_anon_vma_lock_write(anon_vma.as_ptr()) };
        // INVARIANT: We just took the lock.
        Some(Self {
            anon_vma,
            _lock: PhantomData,
        })
    }
}

impl Drop for AnonVmaWriteGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the lock is held by this thread.
        unsafe { bindings::thp_collapse_anon_vma_unlock_write(self.anon_vma.as_ptr()) };
    }
}
