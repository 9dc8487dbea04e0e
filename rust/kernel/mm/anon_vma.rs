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
/// It is taken under the VMA's mmap lock, for read or for write, and cannot outlive it: the lock
/// keeps the VMA, and the VMA's anon_vma, once set, until the VMA goes. Dropping it releases the
/// rwsem.
///
/// # Invariants
///
/// `rwsem` is the rwsem of the root of a valid anon_vma, held for write by this thread.
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
    rwsem: NonNull<bindings::rw_semaphore>,
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
        // SAFETY: The anon_vma of a live VMA is valid (the mmap lock keeps it attached), and so
        // is its root, which is set when the anon_vma is created and never changes.
        let rwsem = unsafe { &raw mut (*(*anon_vma.as_ptr()).root).rwsem };
        // SAFETY: `rwsem` is a valid, initialised rwsem (see above). C: `anon_vma_lock_write()`
        // in `mm/internal.h`, which Rust cannot include.
        unsafe { bindings::down_write(rwsem) };
        // INVARIANT: We just took the lock.
        Some(Self {
            // SAFETY: A field of a valid object is not null.
            rwsem: unsafe { NonNull::new_unchecked(rwsem) },
            _lock: PhantomData,
        })
    }
}

impl Drop for AnonVmaWriteGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the rwsem is held for write by this thread.
        // C: `anon_vma_unlock_write()`.
        unsafe { bindings::up_write(self.rwsem.as_ptr()) };
    }
}

#[cfg(CONFIG_RUST_MM_KUNIT_TEST)]
#[macros::kunit_tests(rust_mm_anon_vma)]
mod tests {
    use super::*;
    use crate::{
        mm::{
            mmap_lock::{MmapReadLock, MmapWriteLock},
            test_mm::{held_locks, OtherMm, TestMm, PAGE},
        },
        prelude::*,
    };

    /// There is no anon_vma to lock before the first anonymous fault, and one after; the guard
    /// holds one lock more (its root's rwsem, as lockdep counts it) until it is dropped.
    #[test]
    fn none_before_first_fault_some_after() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(4 * PAGE)?;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let before = AnonVmaWriteGuard::lock(&lock, vma).is_some();
        drop(lock);

        t.write(a + PAGE, b"first anonymous fault")?;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let depth = held_locks();
        let guard = AnonVmaWriteGuard::lock(&lock, vma);
        let after = guard.is_some();
        let depth_held = held_locks();
        drop(guard);
        let depth_after = held_locks();
        drop(lock);

        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let under_read_lock = AnonVmaWriteGuard::lock(&lock, vma).is_some();
        drop(lock);

        assert!(!before);
        assert!(after);
        assert_eq!(depth_held, depth.map(|d| d + 1));
        assert_eq!(depth_after, depth);
        assert!(under_read_lock);
        Ok(())
    }

    /// A VMA of another mm, anon_vma and all, is refused.
    #[test]
    fn refuses_vma_of_other_mm() -> Result {
        let t = TestMm::attach()?;
        let other = OtherMm::new(&t)?;
        let b = other.with(&t, || -> Result<usize> {
            let b = t.map_anon(PAGE)?;
            t.write(b, b"anon_vma")?;
            Ok(b)
        })?;
        let lock = MmapWriteLock::lock(t.mm());
        // A trylock: the two mmap locks are of one lock class, which lockdep would not nest.
        let other_lock = MmapReadLock::try_lock(other.mm());
        let vma = other_lock.as_ref().and_then(|o| o.find_vma(b));
        // SAFETY: The VMA is valid under `other_lock`.
        let has_anon_vma = vma.is_some_and(|v| unsafe { !(*v.as_ptr()).anon_vma.is_null() });
        let refused = vma.map(|v| AnonVmaWriteGuard::lock(&lock, v).is_none());
        let own = other_lock
            .as_ref()
            .zip(vma)
            .map(|(o, v)| AnonVmaWriteGuard::lock(o, v).is_some());
        drop(other_lock);
        drop(lock);
        assert!(has_anon_vma);
        assert_eq!(refused, Some(true));
        assert_eq!(own, Some(true));
        Ok(())
    }
}
