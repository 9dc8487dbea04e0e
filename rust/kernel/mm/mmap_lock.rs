// SPDX-License-Identifier: GPL-2.0

//! The mmap lock of an [`Mm`], held for read or for write, as guards.
//!
//! Unlike [`MmapReadGuard`](super::MmapReadGuard), these guards work on an [`Mm`] whose users may
//! be gone (khugepaged only holds `mm_count`), so that code that walks another process's address
//! space can check for exit itself; they can also take over a lock that a C caller acquired, and
//! hand it back. Both implement [`MmapLocked`], which is what looking up VMAs and the upper
//! levels of the page tables needs.
//!
//! C header: [`include/linux/mmap_lock.h`](srctree/include/linux/mmap_lock.h)

use crate::{
    bindings,
    error::{code::EINVAL, Result},
    mm::{virt::VmaRef, Mm},
    types::NotThreadSafe,
};
use core::{cell::Cell, ptr::NonNull};

/// A held mmap lock, for read or for write.
///
/// # Safety
///
/// Implementors guarantee that the mmap lock of [`MmapLocked::locked_mm`] is held by the current
/// thread, for read or for write, for as long as the value exists.
///
/// # Examples
///
/// Code that only looks at VMAs takes either kind of lock:
///
/// ```
/// use kernel::mm::mmap_lock::MmapLocked;
///
/// fn vma_len<L: MmapLocked>(lock: &L, addr: usize) -> Option<usize> {
///     lock.find_vma(addr).map(|vma| vma.end() - vma.start())
/// }
/// ```
pub unsafe trait MmapLocked {
    /// The mm whose lock is held.
    fn locked_mm(&self) -> &Mm;

    /// The first VMA that ends after `addr`, like C's `find_vma()`.
    fn find_vma(&self, addr: usize) -> Option<&VmaRef> {
        // SAFETY: By the trait's safety requirements the mmap lock is held.
        let vma = unsafe { bindings::find_vma(self.locked_mm().as_raw(), addr) };
        if vma.is_null() {
            None
        } else {
            // SAFETY: `vma` is a VMA of this mm; the borrow of `self` keeps the lock held for as
            // long as the reference lives.
            Some(unsafe { VmaRef::from_raw(vma) })
        }
    }

    /// Whether the mm's last user is gone (it is exiting, and its page tables are about to go).
    fn mm_exiting(&self) -> bool {
        let mm = self.locked_mm().as_raw();
        // SAFETY: `mm` is valid; `mm_users` is an atomic and reading it is always allowed.
        unsafe { bindings::atomic_read(&raw const (*mm).__bindgen_anon_1.mm_users) == 0 }
    }
}

/// The mmap lock of an mm, held for read by this thread.
///
/// Dropping it releases the lock. VMAs found through it cannot outlive it.
///
/// # Invariants
///
/// The mmap lock of `mm` is held for read by the current thread while this exists.
///
/// # Examples
///
/// ```
/// use kernel::mm::{mmap_lock::{MmapLocked, MmapReadLock}, Mm};
///
/// /// Whether `addr` is mapped in `mm`.
/// fn mapped(mm: &Mm, addr: usize) -> bool {
///     let lock = MmapReadLock::lock(mm);
///     lock.find_vma(addr).is_some_and(|vma| vma.start() <= addr)
/// }
/// ```
pub struct MmapReadLock<'a> {
    mm: &'a Mm,
    /// The VMA the last lookup found, if any: while the lock is held the VMA tree cannot
    /// change, so it stays valid, and a lookup inside it needs no tree walk.
    last: Cell<Option<NonNull<bindings::vm_area_struct>>>,
    _nts: NotThreadSafe,
}

impl<'a> MmapReadLock<'a> {
    /// Takes the mmap lock of `mm` for read. May sleep.
    pub fn lock(mm: &'a Mm) -> Self {
        // SAFETY: `mm` is valid for `'a` (an `&Mm` keeps the `mm_struct` from being freed).
        unsafe { bindings::mmap_read_lock(mm.as_raw()) };
        // INVARIANT: We just took the lock.
        Self {
            mm,
            last: Cell::new(None),
            _nts: NotThreadSafe,
        }
    }

    /// Takes the mmap lock of `mm` for read if nobody holds it for write; never sleeps (for
    /// callers that hold locks ordered after it, such as a folio lock).
    pub fn try_lock(mm: &'a Mm) -> Option<Self> {
        // SAFETY: `mm` is valid for `'a`.
        let locked = unsafe { bindings::mmap_read_trylock(mm.as_raw()) };
        // INVARIANT: Taken if the trylock succeeded.
        locked.then(|| Self {
            mm,
            last: Cell::new(None),
            _nts: NotThreadSafe,
        })
    }

    /// Takes over a read lock that the (C) caller acquired.
    ///
    /// # Safety
    ///
    /// The current thread must hold the mmap lock of `mm` for read, and must not release it other
    /// than through the returned value.
    pub unsafe fn adopt(mm: &'a Mm) -> Self {
        // INVARIANT: The caller holds the lock and hands it over.
        Self {
            mm,
            last: Cell::new(None),
            _nts: NotThreadSafe,
        }
    }

    /// Lets the next lookups start from `vma`, which the (C) caller found under this lock.
    ///
    /// # Safety
    ///
    /// `vma` must be a VMA of this lock's mm, found while the lock was held, as it is since.
    pub unsafe fn remember_vma(&self, vma: *mut bindings::vm_area_struct) {
        self.last.set(NonNull::new(vma));
    }

    /// Gives the lock back to the (C) caller, which releases it.
    pub fn keep(self) {
        core::mem::forget(self);
    }

    /// Forgets a lock that a callee already released (a page fault that returned
    /// `VM_FAULT_RETRY`, for instance).
    ///
    /// # Safety
    ///
    /// The lock must no longer be held by this thread.
    pub unsafe fn released(self) {
        core::mem::forget(self);
    }

    /// The mm whose lock this is.
    pub fn mm(&self) -> &'a Mm {
        self.mm
    }
}

// SAFETY: By the type invariants the mmap lock of `mm` is held while an `MmapReadLock` exists.
unsafe impl MmapLocked for MmapReadLock<'_> {
    fn locked_mm(&self) -> &Mm {
        self.mm
    }

    /// The first VMA that ends after `addr`, like C's `find_vma()`; a lookup inside the VMA the
    /// last one found (MADV_COLLAPSE's walk over the PMDs of one VMA, say) needs no tree walk.
    fn find_vma(&self, addr: usize) -> Option<&VmaRef> {
        if let Some(last) = self.last.get() {
            // SAFETY: `last` is a VMA of this mm found under this lock, which has been held
            // since, so the VMA tree has not changed and it is alive (see `last`).
            let vma = unsafe { VmaRef::from_raw(last.as_ptr()) };
            if vma.start() <= addr && addr < vma.end() {
                return Some(vma);
            }
        }
        // SAFETY: By the type invariants the mmap lock is held.
        let vma = NonNull::new(unsafe { bindings::find_vma(self.mm.as_raw(), addr) })?;
        self.last.set(Some(vma));
        // SAFETY: `vma` is a VMA of this mm; the borrow of `self` keeps the lock held for as
        // long as the reference lives.
        Some(unsafe { VmaRef::from_raw(vma.as_ptr()) })
    }
}

impl Drop for MmapReadLock<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the lock is held for read by this thread.
        unsafe { bindings::mmap_read_unlock(self.mm.as_raw()) };
    }
}

/// The mmap lock of an mm, held for write by this thread.
///
/// Dropping it releases the lock, and every per-VMA write lock taken under it.
///
/// # Invariants
///
/// The mmap lock of `mm` is held for write by the current thread while this exists.
///
/// # Examples
///
/// ```
/// use kernel::mm::{mmap_lock::{MmapLocked, MmapWriteLock}, Mm};
///
/// /// Keeps page faults out of the VMA at `addr` while `f` runs.
/// fn with_vma_quiet(mm: &Mm, addr: usize, f: impl FnOnce()) {
///     let lock = MmapWriteLock::lock(mm);
///     if let Some(vma) = lock.find_vma(addr) {
///         if lock.exclude_vma_faults(vma).is_ok() {
///             f();
///         }
///     }
/// }
/// ```
pub struct MmapWriteLock<'a> {
    mm: &'a Mm,
    _nts: NotThreadSafe,
}

impl<'a> MmapWriteLock<'a> {
    /// Takes the mmap lock of `mm` for write. May sleep.
    pub fn lock(mm: &'a Mm) -> Self {
        // SAFETY: `mm` is valid for `'a`.
        unsafe { bindings::mmap_write_lock(mm.as_raw()) };
        // INVARIANT: We just took the lock.
        Self {
            mm,
            _nts: NotThreadSafe,
        }
    }

    /// Excludes the page faults that run under the per-VMA lock of `vma`, until this guard is
    /// dropped. C: `vma_start_write()`.
    ///
    /// Fails with `EINVAL` if `vma` is not a VMA of this mm.
    pub fn exclude_vma_faults(&self, vma: &VmaRef) -> Result {
        if !core::ptr::eq(vma.mm().as_raw(), self.mm.as_raw()) {
            return Err(EINVAL);
        }
        // SAFETY: By the type invariants the mmap write lock of `vma`'s mm (checked above) is
        // held, which `vma_start_write()` requires. The per-VMA write lock ends when the mmap
        // write lock is released (`vma_end_write_all()`).
        unsafe { bindings::vma_start_write(vma.as_ptr()) };
        Ok(())
    }

    /// The mm whose lock this is.
    pub fn mm(&self) -> &'a Mm {
        self.mm
    }
}

// SAFETY: By the type invariants the mmap lock of `mm` is held while an `MmapWriteLock` exists.
unsafe impl MmapLocked for MmapWriteLock<'_> {
    fn locked_mm(&self) -> &Mm {
        self.mm
    }
}

impl Drop for MmapWriteLock<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the lock is held for write by this thread.
        unsafe { bindings::mmap_write_unlock(self.mm.as_raw()) };
    }
}
