// SPDX-License-Identifier: GPL-2.0

//! An address space of a KUnit case's own, for the KUnit cases of the guards of `kernel::mm`
//! and of their users.
//!
//! KUnit runs each case in a kernel thread of its own. [`TestMm::attach`] gives that thread an
//! mm (C: `kunit_attach_mm()`), in which the case maps anonymous memory and shmem files
//! (`kunit_vm_mmap()`) and touches them as user space would (`copy_to_user()`), so that the
//! guards run on real VMAs, page tables, folios and page caches. The mm goes with the thread.
//!
//! The cases only assert once they have dropped their guards: a failed assertion ends the
//! thread at once, and must not do so with a spinlock or the mmap lock held.
//!
//! C header: [`include/kunit/test.h`](srctree/include/kunit/test.h)

use crate::{
    bindings,
    error::{
        code::{EFAULT, EINVAL, ENOMEM},
        from_err_ptr, to_result, Result,
    },
    fs::File,
    mm::{Mm, MmWithUser},
    str::CStrExt,
};
use core::ptr::{self, NonNull};

/// Size of the range one PMD entry maps (the one definition, in `pgtable`).
pub use crate::mm::pgtable::PMD_SIZE;

/// Size of a base page.
pub const PAGE: usize = crate::page::PAGE_SIZE;

/// The mm of the current KUnit case's thread, which maps nothing but what the case maps.
///
/// # Invariants
///
/// `mm` is `current->mm` of this thread, a KUnit case's thread, which keeps it until it exits.
pub struct TestMm {
    mm: NonNull<bindings::mm_struct>,
    _nts: crate::types::NotThreadSafe,
}

impl TestMm {
    /// Gives the current KUnit case's thread an mm of its own. May sleep.
    pub fn attach() -> Result<Self> {
        // SAFETY: Called from a KUnit case's thread, in process context.
        to_result(unsafe { bindings::kunit_attach_mm() })?;
        // SAFETY: `current` is valid; only this thread changes its `mm`.
        let mm = unsafe { (*bindings::get_current()).mm };
        // INVARIANT: The thread's mm, which it keeps.
        NonNull::new(mm).map_or(Err(ENOMEM), |mm| {
            Ok(Self {
                mm,
                _nts: crate::types::NotThreadSafe,
            })
        })
    }

    /// The mm.
    pub fn mm(&self) -> &Mm {
        // SAFETY: By the type invariants the mm lives as long as the thread, which outlives
        // `self` (it is not `Send`).
        unsafe { Mm::from_raw(self.mm.as_ptr()) }
    }

    /// The mm, with its user (this thread) counted.
    pub fn mm_with_user(&self) -> &MmWithUser {
        // SAFETY: As above; the thread's reference to its mm counts as a user (`mm_users`).
        unsafe { MmWithUser::from_raw(self.mm.as_ptr()) }
    }

    /// Maps `len` bytes of `file` (or anonymous memory) from page `pgoff` with `flags`,
    /// readable and writable, and returns the address.
    fn map(
        &self,
        file: *mut bindings::file,
        len: usize,
        flags: u32,
        pgoff: usize,
    ) -> Result<usize> {
        // SAFETY: Always safe to call.
        let test = unsafe { bindings::kunit_get_current_test() };
        if test.is_null() {
            return Err(EINVAL);
        }
        let prot = bindings::PROT_READ | bindings::PROT_WRITE;
        // SAFETY: `test` is the running case; `file` is NULL or a file the caller holds.
        let addr = unsafe {
            bindings::kunit_vm_mmap(
                test,
                file,
                0,
                len,
                prot as usize,
                flags as usize,
                pgoff << crate::page::PAGE_SHIFT,
            )
        };
        // `vm_mmap()` returns an error as a negative value.
        if addr == 0 || addr > usize::MAX - bindings::MAX_ERRNO as usize {
            return Err(ENOMEM);
        }
        Ok(addr)
    }

    /// Maps `len` bytes of private anonymous memory and returns the address.
    pub fn map_anon(&self, len: usize) -> Result<usize> {
        self.map(
            ptr::null_mut(),
            len,
            bindings::MAP_PRIVATE | bindings::MAP_ANONYMOUS,
            0,
        )
    }

    /// Maps `len` bytes of droppable anonymous memory (`MAP_DROPPABLE`) and returns the address.
    pub fn map_droppable(&self, len: usize) -> Result<usize> {
        self.map(
            ptr::null_mut(),
            len,
            bindings::MAP_DROPPABLE | bindings::MAP_ANONYMOUS,
            0,
        )
    }

    /// Maps `len` bytes of `file` from page `pgoff`, shared, and returns the address.
    pub fn map_shared(&self, file: &ShmemFile, len: usize, pgoff: usize) -> Result<usize> {
        self.map(file.file.as_ptr(), len, bindings::MAP_SHARED, pgoff)
    }

    /// Maps two PMD ranges of private anonymous memory and returns the PMD-aligned address of
    /// a whole PMD range inside the mapping.
    pub fn map_pmd_range(&self) -> Result<usize> {
        let addr = self.map_anon(2 * PMD_SIZE)?;
        Ok((addr + PMD_SIZE - 1) & !(PMD_SIZE - 1))
    }

    /// Writes `data` at user address `addr`, faulting the pages in as user space would.
    pub fn write(&self, addr: usize, data: &[u8]) -> Result {
        // SAFETY: This thread's mm is the one mapped; `data` is valid for reads; a bad user
        // address makes the copy fail, it does not crash.
        let left = unsafe {
            bindings::copy_to_user(
                addr as *mut crate::ffi::c_void,
                data.as_ptr().cast(),
                data.len() as crate::ffi::c_ulong,
            )
        };
        if left == 0 {
            Ok(())
        } else {
            Err(EFAULT)
        }
    }

    /// Reads `out.len()` bytes at user address `addr`, faulting the pages in as user space would.
    pub fn read(&self, addr: usize, out: &mut [u8]) -> Result {
        // SAFETY: As above; `out` is valid for writes.
        let left = unsafe {
            bindings::copy_from_user(
                out.as_mut_ptr().cast(),
                addr as *const crate::ffi::c_void,
                out.len() as crate::ffi::c_ulong,
            )
        };
        if left == 0 {
            Ok(())
        } else {
            Err(EFAULT)
        }
    }

    /// Applies `madvise(advice)` to `[addr, addr + len)`. May sleep.
    pub fn madvise(&self, addr: usize, len: usize, advice: u32) -> Result {
        // SAFETY: The mm is valid (type invariants); `do_madvise()` takes its lock.
        to_result(unsafe { bindings::do_madvise(self.mm.as_ptr(), addr, len, advice as i32) })
    }

    /// Unmaps `[addr, addr + len)`. May sleep.
    pub fn unmap(&self, addr: usize, len: usize) -> Result {
        // SAFETY: Unmaps from this thread's mm, the one the case maps into.
        to_result(unsafe { bindings::vm_munmap(addr, len) })
    }

    /// Adds `nr` pages to the anonymous RSS counter of the mm, for pages a case mapped itself
    /// with the `_nopf` functions, which leave the counting to their callers.
    pub fn count_anon(&self, nr: isize) {
        // SAFETY: The mm is valid; the counter is per-CPU.
        unsafe { bindings::add_mm_counter(self.mm.as_ptr(), bindings::MM_ANONPAGES as i32, nr) };
    }
}

/// A second mm, which the case can switch its thread to for a while, to map memory in it:
/// for checks that guards refuse a VMA of another mm. Dropping it releases it.
///
/// # Invariants
///
/// `mm` is an mm of which we own a user reference (`mm_users`).
pub struct OtherMm {
    mm: NonNull<bindings::mm_struct>,
}

impl OtherMm {
    /// A new, empty mm laid out as `home`'s. May sleep.
    pub fn new(home: &TestMm) -> Result<Self> {
        // SAFETY: Always safe to call.
        let mm = NonNull::new(unsafe { bindings::mm_alloc() }).ok_or(ENOMEM)?;
        // SAFETY: `mm` is new and ours alone; `home`'s mm is valid; `current->signal` is valid
        // while the thread runs. This is what `kunit_attach_mm()` does.
        unsafe {
            (*mm.as_ptr()).__bindgen_anon_1.task_size =
                (*home.mm.as_ptr()).__bindgen_anon_1.task_size;
            let signal = (*bindings::get_current()).signal;
            let rlim = &raw const (*signal).rlim[bindings::RLIMIT_STACK as usize];
            bindings::arch_pick_mmap_layout(mm.as_ptr(), rlim);
        }
        // INVARIANT: `mm_alloc()` returns it with one user, ours.
        Ok(Self { mm })
    }

    /// The mm.
    pub fn mm(&self) -> &Mm {
        // SAFETY: We own a user reference (type invariants), which keeps it valid.
        unsafe { Mm::from_raw(self.mm.as_ptr()) }
    }

    /// Runs `f` with this mm as the thread's, then switches back to `home`'s. May sleep.
    pub fn with<R>(&self, home: &TestMm, f: impl FnOnce() -> R) -> R {
        // SAFETY: This is a kernel thread using `home`'s mm, which it switches for this one and
        // back; both stay valid (`home` by its invariants, this one by ours).
        unsafe {
            bindings::kthread_unuse_mm(home.mm.as_ptr());
            bindings::kthread_use_mm(self.mm.as_ptr());
        }
        let r = f();
        // SAFETY: As above, back to `home`'s mm.
        unsafe {
            bindings::kthread_unuse_mm(self.mm.as_ptr());
            bindings::kthread_use_mm(home.mm.as_ptr());
        }
        r
    }
}

impl Drop for OtherMm {
    fn drop(&mut self) {
        // SAFETY: We own a user reference (type invariants), dropped once, here.
        unsafe { bindings::mmput(self.mm.as_ptr()) };
    }
}

/// A shmem file of our own, unlinked (C: `shmem_file_setup()`); dropping it drops our reference.
///
/// # Invariants
///
/// `file` is a file of which we own a reference.
pub struct ShmemFile {
    file: NonNull<bindings::file>,
}

impl ShmemFile {
    /// A new shmem file of `size` bytes. May sleep.
    pub fn new(size: usize) -> Result<Self> {
        let size = i64::try_from(size).map_err(|_| EINVAL)?;
        // SAFETY: The name is a valid C string; no flags (accounted memory).
        let file = from_err_ptr(unsafe {
            bindings::shmem_file_setup(
                c"rust_mm_kunit".as_char_ptr(),
                size,
                bindings::vma_flags_t::default(),
            )
        })?;
        // INVARIANT: `shmem_file_setup()` returns a new file with a reference, ours.
        NonNull::new(file).map_or(Err(ENOMEM), |file| Ok(Self { file }))
    }

    /// The file.
    pub fn file(&self) -> &File {
        // SAFETY: We own a reference (type invariants) for as long as the borrow; nobody calls
        // `fdget_pos()` on a file that no descriptor refers to.
        unsafe { File::from_raw_file(self.file.as_ptr()) }
    }
}

impl Drop for ShmemFile {
    fn drop(&mut self) {
        // SAFETY: We own a reference (type invariants), dropped once, here.
        unsafe { bindings::fput(self.file.as_ptr()) };
    }
}

/// Facts about a folio, read at one moment, for the cases to assert on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// On an LRU list. C: `folio_test_lru()`.
    pub lru: bool,
    /// Locked. C: `folio_test_locked()`.
    pub locked: bool,
    /// Its reference count. C: `folio_ref_count()`.
    pub refs: i32,
    /// How many page table entries map it. C: `folio_mapcount()`.
    pub mapcount: i32,
}

/// Reads the facts of `folio`.
///
/// # Safety
///
/// `folio` must stay valid during the call.
pub unsafe fn facts(folio: NonNull<bindings::folio>) -> Facts {
    let f = folio.as_ptr();
    // SAFETY: `folio` is valid (safety requirements); the predicates only read it.
    unsafe {
        Facts {
            lru: bindings::folio_test_lru(f),
            locked: bindings::folio_test_locked(f),
            refs: bindings::folio_ref_count(f),
            mapcount: bindings::folio_mapcount(f),
        }
    }
}

/// The folio of `page`. C: `page_folio()`.
///
/// # Safety
///
/// `page` must stay valid during the call.
pub unsafe fn page_folio(page: NonNull<bindings::page>) -> NonNull<bindings::folio> {
    // SAFETY: `page` is valid (safety requirements); every page belongs to a folio.
    unsafe { NonNull::new_unchecked(bindings::page_folio(page.as_ptr())) }
}

/// Copies the first `out.len()` bytes of `page` (at most a page) into `out`.
///
/// # Safety
///
/// `page` must stay valid during the call.
pub unsafe fn read_page(page: *mut bindings::page, out: &mut [u8]) {
    let n = out.len().min(PAGE);
    // SAFETY: `page` is valid (safety requirements); the mapping is local to this call, which
    // reads at most a page from it.
    unsafe {
        let addr = bindings::kmap_local_page(page);
        ptr::copy_nonoverlapping(addr.cast::<u8>(), out.as_mut_ptr(), n);
        bindings::kunmap_local(addr);
    }
}

/// Copies `data` (at most a page) to the start of `page`.
///
/// # Safety
///
/// `page` must stay valid during the call, and be ours to write.
pub unsafe fn write_page(page: *mut bindings::page, data: &[u8]) {
    let n = data.len().min(PAGE);
    // SAFETY: As above; the page is ours to write (safety requirements).
    unsafe {
        let addr = bindings::kmap_local_page(page);
        ptr::copy_nonoverlapping(data.as_ptr(), addr.cast::<u8>(), n);
        bindings::kunmap_local(addr);
    }
}

/// The page mapped at `addr` of the mm that `lock` holds the mmap lock of, with a reference
/// that dropping the value drops. C: `get_user_pages()`.
pub struct UserPage {
    page: NonNull<bindings::page>,
}

impl UserPage {
    /// Faults in (for write) and takes the page at `addr` of the current thread's mm, whose
    /// mmap lock the caller holds (`_lock`). May sleep.
    pub fn get(_lock: &crate::mm::mmap_lock::MmapReadLock<'_>, addr: usize) -> Result<Self> {
        let mut page = ptr::null_mut();
        // SAFETY: The mmap lock of the thread's mm is held for read (`_lock`, whose mm the cases
        // take from this thread); `page` is valid for one write.
        let n = unsafe { bindings::get_user_pages(addr, 1, bindings::FOLL_WRITE, &mut page) };
        if n != 1 {
            return Err(EFAULT);
        }
        NonNull::new(page).map_or(Err(EFAULT), |page| Ok(Self { page }))
    }

    /// The page.
    pub fn page(&self) -> NonNull<bindings::page> {
        self.page
    }

    /// Its folio.
    pub fn folio(&self) -> NonNull<bindings::folio> {
        // SAFETY: We hold a reference to the page.
        unsafe { page_folio(self.page) }
    }
}

impl Drop for UserPage {
    fn drop(&mut self) {
        // SAFETY: We hold a reference to the page's folio (from `get_user_pages()`), dropped
        // once, here.
        unsafe { bindings::folio_put(self.folio().as_ptr()) };
    }
}

/// Drains every CPU's LRU batches, so that folios just faulted in are on their LRU lists.
/// May sleep. C: `lru_add_drain_all()`.
pub fn drain_lru() {
    // SAFETY: Always safe to call from process context.
    unsafe { bindings::lru_add_drain_all() };
}

/// How many locks lockdep counts as held by this thread (C: `current->lockdep_depth`), or
/// `None` without lockdep.
pub fn held_locks() -> Option<i32> {
    #[cfg(CONFIG_LOCKDEP)]
    {
        // SAFETY: `current` is valid, and only this thread changes its held-lock count.
        Some(unsafe { (*bindings::get_current()).lockdep_depth })
    }
    #[cfg(not(CONFIG_LOCKDEP))]
    {
        None
    }
}

/// Whether a read-write semaphore is held by anyone (for read or write).
///
/// # Safety
///
/// `sem` must be valid during the call.
pub unsafe fn rwsem_held(sem: *mut bindings::rw_semaphore) -> bool {
    // SAFETY: `sem` is valid (safety requirements); this only reads its count.
    unsafe { bindings::rwsem_is_locked(sem) != 0 }
}

/// Whether the mmap lock of `mm` is held by anyone.
pub fn mmap_lock_held(mm: &Mm) -> bool {
    // SAFETY: `mm` is valid, and so is its lock.
    unsafe { rwsem_held(&raw mut (*mm.as_raw()).__bindgen_anon_1.mmap_lock) }
}
