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

    /// Turns this write lock into a read lock, with no writer in between: the VMAs stay as
    /// they are, while page faults (and the per-VMA write locks taken under this lock, which
    /// end here) and other readers come in again. C: `mmap_write_downgrade()`.
    pub fn downgrade(self) -> MmapReadLock<'a> {
        let mm = self.mm;
        // Released as a read lock, by the guard returned, not as a write lock.
        core::mem::forget(self);
        // SAFETY: By the type invariants this thread holds the lock for write; `self`, which
        // would release it, is forgotten.
        unsafe { bindings::mmap_write_downgrade(mm.as_raw()) };
        // INVARIANT: The lock is held for read now.
        MmapReadLock {
            mm,
            last: Cell::new(None),
            _nts: NotThreadSafe,
        }
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

#[cfg(CONFIG_RUST_MM_KUNIT_TEST)]
#[macros::kunit_tests(rust_mm_mmap_lock)]
mod tests {
    use super::*;
    use crate::mm::test_mm::{mmap_lock_held, OtherMm, TestMm, PAGE};

    /// `find_vma()` under either lock finds the VMA at a mapped address, the next one from a
    /// hole, and none above the last; the read lock's remembered VMA never answers for another.
    #[test]
    fn find_vma_mapped_hole_and_above() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(3 * PAGE)?;
        t.unmap(a + PAGE, PAGE)?;
        let span = |v: Option<&VmaRef>| v.map(|v| (v.start(), v.end()));
        let lock = MmapReadLock::lock(t.mm());
        let read = [
            span(lock.find_vma(a)),
            span(lock.find_vma(a + PAGE)),
            span(lock.find_vma(a + 2 * PAGE + 8)),
            span(lock.find_vma(a + 8)),
            span(lock.find_vma(a + 3 * PAGE)),
        ];
        let exiting = lock.mm_exiting();
        drop(lock);
        let lock = MmapWriteLock::lock(t.mm());
        let write = [
            span(lock.find_vma(a)),
            span(lock.find_vma(a + PAGE)),
            span(lock.find_vma(a + 3 * PAGE)),
        ];
        drop(lock);
        let first = Some((a, a + PAGE));
        let second = Some((a + 2 * PAGE, a + 3 * PAGE));
        assert_eq!(read, [first, second, second, first, None]);
        assert_eq!(write, [first, second, None]);
        assert!(!exiting);
        Ok(())
    }

    /// The read lock is shared and the write lock exclusive; each is released when dropped.
    #[test]
    fn read_shares_write_excludes() -> Result {
        let t = TestMm::attach()?;
        let mm = t.mm();
        let free_before = !mmap_lock_held(mm);
        let read = MmapReadLock::lock(mm);
        let held_read = mmap_lock_held(mm);
        let second_reader = MmapReadLock::try_lock(mm).is_some();
        drop(read);
        let free_after_read = !mmap_lock_held(mm);
        let write = MmapWriteLock::lock(mm);
        let held_write = mmap_lock_held(mm);
        let reader_in_write = MmapReadLock::try_lock(mm).is_some();
        drop(write);
        let free_after_write = !mmap_lock_held(mm);
        let tried = MmapReadLock::try_lock(mm);
        let held_tried = tried.is_some() && mmap_lock_held(mm);
        drop(tried);
        assert!(free_before);
        assert!(held_read);
        assert!(second_reader);
        assert!(free_after_read);
        assert!(held_write);
        assert!(!reader_in_write);
        assert!(free_after_write);
        assert!(held_tried);
        assert!(!mmap_lock_held(mm));
        Ok(())
    }

    /// A read lock taken by C can be adopted (and dropping releases it), handed back with
    /// `keep()` (still held), and forgotten with `released()` after C released it (not
    /// released twice).
    #[test]
    fn adopt_keep_released() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(PAGE)?;
        let mm = t.mm();

        // SAFETY: The mm is valid; the lock is handed to `adopt()` at once.
        unsafe { bindings::mmap_read_lock(mm.as_raw()) };
        // SAFETY: This thread holds the lock for read and releases it only through `lock`.
        let lock = unsafe { MmapReadLock::adopt(mm) };
        let adopted_finds = lock.find_vma(a).map(|v| v.start());
        drop(lock);
        let free_after_adopt = !mmap_lock_held(mm);

        MmapReadLock::lock(mm).keep();
        let held_after_keep = mmap_lock_held(mm);
        // SAFETY: `keep()` handed the read lock back to us.
        unsafe { bindings::mmap_read_unlock(mm.as_raw()) };
        let free_after_unlock = !mmap_lock_held(mm);

        let lock = MmapReadLock::lock(mm);
        // SAFETY: The read lock `lock` holds; it is forgotten below without a second unlock.
        unsafe { bindings::mmap_read_unlock(mm.as_raw()) };
        // SAFETY: We just released the lock.
        unsafe { lock.released() };
        let free_after_released = !mmap_lock_held(mm);

        assert_eq!(adopted_finds, Some(a));
        assert!(free_after_adopt);
        assert!(held_after_keep);
        assert!(free_after_unlock);
        assert!(free_after_released);
        Ok(())
    }

    /// A VMA remembered from C answers for its own addresses only.
    #[test]
    fn remembered_vma_answers_for_itself_only() -> Result {
        let t = TestMm::attach()?;
        // Two VMAs with a hole between them (adjacent anonymous mappings would merge).
        let a = t.map_anon(3 * PAGE)?;
        t.unmap(a + PAGE, PAGE)?;
        let b = a + 2 * PAGE;
        let lock = MmapReadLock::lock(t.mm());
        let vma_a = lock.find_vma(a).map(|v| v.as_ptr());
        drop(lock);
        let lock = MmapReadLock::lock(t.mm());
        if let Some(vma) = vma_a {
            // SAFETY: `vma` is the VMA at `a`, found under a read lock of this mm; the mm has
            // no other user that could change its VMAs in between.
            unsafe { lock.remember_vma(vma) };
        }
        let at_b = lock.find_vma(b).map(|v| v.start());
        let at_a = lock.find_vma(a + 8).map(|v| (v.start(), v.as_ptr()));
        drop(lock);
        assert!(vma_a.is_some());
        assert_eq!(at_b, Some(b));
        assert_eq!(at_a, vma_a.map(|v| (a, v)));
        Ok(())
    }

    /// `exclude_vma_faults()` keeps per-VMA-lock readers (page faults) out of the VMA until
    /// the write lock goes; the write lock alone does not.
    #[test]
    fn exclude_vma_faults_until_unlock() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(PAGE)?;
        t.write(a, b"fault")?;
        let mmu = t.mm_with_user();
        let before = mmu.lock_vma_under_rcu(a).map(|v| v.start());
        let lock = MmapWriteLock::lock(t.mm());
        let under_write_lock = mmu.lock_vma_under_rcu(a).is_some();
        let excluded = lock.find_vma(a).map(|v| lock.exclude_vma_faults(v));
        let while_excluded = mmu.lock_vma_under_rcu(a).is_some();
        drop(lock);
        let after = mmu.lock_vma_under_rcu(a).is_some();
        assert_eq!(before, Some(a));
        assert!(under_write_lock);
        assert_eq!(excluded, Some(Ok(())));
        assert!(!while_excluded);
        assert!(after);
        Ok(())
    }

    /// `downgrade()` keeps the lock held, as a read lock: other readers and the VMA's faults
    /// come in again, the VMAs are the same, and dropping it releases the lock.
    #[test]
    fn downgrade_lets_readers_in() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(PAGE)?;
        let mmu = t.mm_with_user();
        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(a).map(|v| v.as_ptr());
        let excluded = lock.find_vma(a).map(|v| lock.exclude_vma_faults(v));
        let reader_before = MmapReadLock::try_lock(t.mm()).is_some();
        let read = lock.downgrade();
        let held = mmap_lock_held(t.mm());
        let reader_after = MmapReadLock::try_lock(t.mm()).is_some();
        let fault_after = mmu.lock_vma_under_rcu(a).is_some();
        let same = read.find_vma(a).map(|v| v.as_ptr());
        drop(read);
        let free = !mmap_lock_held(t.mm());
        assert!(vma.is_some());
        assert_eq!(excluded, Some(Ok(())));
        assert!(!reader_before);
        assert!(held);
        assert!(reader_after);
        assert!(fault_after);
        assert_eq!(same, vma);
        assert!(free);
        Ok(())
    }

    /// `exclude_vma_faults()` refuses a VMA of another mm.
    #[test]
    fn exclude_vma_faults_refuses_other_mm() -> Result {
        let t = TestMm::attach()?;
        let other = OtherMm::new(&t)?;
        let b = other.with(&t, || t.map_anon(PAGE))?;
        let lock = MmapWriteLock::lock(t.mm());
        // A trylock: the two mmap locks are of one lock class, which lockdep would not nest.
        let other_lock = MmapReadLock::try_lock(other.mm());
        let refused = other_lock
            .as_ref()
            .and_then(|o| o.find_vma(b))
            .map(|v| lock.exclude_vma_faults(v));
        drop(other_lock);
        drop(lock);
        assert_eq!(refused, Some(Err(EINVAL)));
        Ok(())
    }
}
