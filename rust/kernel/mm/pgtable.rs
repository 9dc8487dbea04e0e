// SPDX-License-Identifier: GPL-2.0

//! PMD entries and page tables of PTEs, under the locks that keep them alive.
//!
//! A [`PmdEntry`] is found under the mmap lock ([`MmapLocked`]) and cannot outlive it; a
//! [`PteTableLocked`] is a page table of PTEs mapped and locked (its PTE spinlock held), and a
//! [`PteTableMapped`] one mapped without its lock; neither can outlive the [`PmdEntry`] it was
//! found through. A [`DetachedPteTable`] is a page table taken out of its PMD entry under the
//! mmap write lock, to be put back or replaced by a huge mapping.
//!
//! C headers: [`include/linux/pgtable.h`](srctree/include/linux/pgtable.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h)

use crate::{
    alloc::KBox,
    bindings,
    error::{
        code::{EINVAL, ENOMEM},
        to_result, Result,
    },
    mm::{
        anon_vma::AnonVmaWriteGuard,
        folio::NewFolio,
        mmap_lock::{MmapLocked, MmapWriteLock},
        virt::VmaRef,
        Mm,
    },
    page::PAGE_SIZE,
    sync::barrier::{smp_mb, Full},
    types::Opaque,
};
use core::{
    ffi::c_void,
    marker::PhantomData,
    mem::MaybeUninit,
    ptr::{self, NonNull},
};

/// Entries in a page table of PTEs.
pub const PTRS_PER_PTE: usize = bindings::PTRS_PER_PTE as usize;

/// Size of the range one PMD entry maps.
pub const PMD_SIZE: usize = 1 << bindings::PMD_SHIFT;

/// What a PMD entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmdState {
    /// No page table: a none, bad or non-present entry.
    None,
    /// A PMD mapping of a huge folio, or a migration entry for one (whose migration ends with
    /// a PMD mapping again).
    Huge,
    /// A page table of PTEs.
    Table,
}

/// A PMD entry of an mm's page tables, valid while the mmap lock it was found under is held.
///
/// # Invariants
///
/// `pmdp` points to a PMD entry of `mm`, whose mmap lock is held for `'a`.
///
/// # Examples
///
/// ```
/// use kernel::mm::{mmap_lock::MmapReadLock, pgtable::{PmdEntry, PmdState}, Mm};
///
/// /// Whether the PMD range at `addr` is mapped by a huge PMD.
/// fn pmd_mapped(mm: &Mm, addr: usize) -> bool {
///     let lock = MmapReadLock::lock(mm);
///     PmdEntry::find(&lock, addr).is_some_and(|pmd| pmd.state() == PmdState::Huge)
/// }
/// ```
#[derive(Clone, Copy)]
pub struct PmdEntry<'a> {
    mm: NonNull<bindings::mm_struct>,
    pmdp: NonNull<bindings::pmd_t>,
    _lock: PhantomData<&'a ()>,
}

impl<'a> PmdEntry<'a> {
    /// The PMD entry that covers `addr` in the mm whose lock `lock` is, if the upper levels of
    /// the page tables reach down to it. C: `mm_find_pmd()`.
    pub fn find<L: MmapLocked + ?Sized>(lock: &'a L, addr: usize) -> Option<Self> {
        let mm = lock.locked_mm().as_raw();
        // SAFETY: By the trait's guarantee the mmap lock is held, which keeps the upper
        // page-table levels alive.
        let pmdp = unsafe { bindings::mm_find_pmd(mm, addr) };
        // INVARIANT: A PMD entry of the locked mm; the borrow of `lock` keeps it held.
        Some(Self {
            mm: NonNull::new(mm)?,
            pmdp: NonNull::new(pmdp)?,
            _lock: PhantomData,
        })
    }

    /// What the entry holds, read without the page-table lock: it may change at any time,
    /// except to free the page table, which needs the mmap write lock or RCU.
    pub fn state(self) -> PmdState {
        // SAFETY: By the type invariants `pmdp` points into a page table kept alive by the mmap
        // lock.
        classify(unsafe { bindings::pmdp_get_lockless(self.pmdp.as_ptr()) })
    }

    /// The raw entry pointer, for C functions that need it while the mmap lock is held.
    #[inline]
    pub fn as_ptr(self) -> *mut bindings::pmd_t {
        self.pmdp.as_ptr()
    }
}

/// What a PMD entry value holds, as `find_pmd_or_thp_or_none()` in `mm/khugepaged.c` reads it:
/// a migration entry for a huge mapping counts as huge, a bad entry as none.
fn classify(pmd: bindings::pmd_t) -> PmdState {
    // SAFETY: Pure predicates on a value.
    unsafe {
        if bindings::pmd_none(pmd) != 0 {
            PmdState::None
        } else if bindings::pmd_is_migration_entry(pmd) {
            PmdState::Huge
        } else if bindings::pmd_present(pmd) == 0 {
            PmdState::None
        } else if bindings::pmd_trans_huge(pmd) != 0 {
            PmdState::Huge
        } else if bindings::pmd_bad(pmd) != 0 {
            PmdState::None
        } else {
            PmdState::Table
        }
    }
}

/// One of the `pte_offset_map*()` functions: maps (and may lock) the page table a PMD entry
/// points to, if it still points to one.
type MapFn = unsafe extern "C" fn(
    *mut bindings::mm_struct,
    *mut bindings::pmd_t,
    crate::ffi::c_ulong,
    *mut *mut bindings::spinlock_t,
) -> *mut bindings::pte_t;

/// Maps with `map` the page table that `pmd`, the entry covering `addr`, points to, from the
/// first entry of the PMD range: returns the range's start, the entries and the table's lock.
fn map_table(
    pmd: PmdEntry<'_>,
    addr: usize,
    map: MapFn,
) -> Option<(usize, *mut bindings::pte_t, *mut bindings::spinlock_t)> {
    let start = addr & !(PMD_SIZE - 1);
    let mut ptl = ptr::null_mut();
    // SAFETY: By the type invariants of `PmdEntry` the entry is alive; `map` rechecks it and
    // fails if it does not point to a page table.
    let pte = unsafe { map(pmd.mm.as_ptr(), pmd.as_ptr(), start, &mut ptl) };
    (!pte.is_null()).then_some((start, pte, ptl))
}

/// A page table of PTEs, mapped and locked.
///
/// Holding it means holding the PTE lock (a spinlock) and the RCU read lock: nothing may sleep
/// until it is dropped.
///
/// # Invariants
///
/// `pte` points to the [`PTRS_PER_PTE`] entries of a page table mapped by
/// `pte_offset_map_lock()`, and `ptl`, its lock, is held by this thread.
///
/// # Examples
///
/// ```
/// use kernel::mm::{
///     mmap_lock::MmapReadLock,
///     pgtable::{PmdEntry, PteTableLocked, PTRS_PER_PTE},
///     Mm,
/// };
///
/// /// How many entries of the page table under `addr` are in use.
/// fn used_ptes(mm: &Mm, addr: usize) -> usize {
///     let lock = MmapReadLock::lock(mm);
///     let pmd = PmdEntry::find(&lock, addr);
///     let Some(table) = pmd.and_then(|pmd| PteTableLocked::lock(pmd, addr)) else {
///         return 0;
///     };
///     (0..PTRS_PER_PTE).filter(|&i| !table.is_none(i)).count()
/// }
/// ```
pub struct PteTableLocked<'a> {
    pte: *mut bindings::pte_t,
    ptl: *mut bindings::spinlock_t,
    _pmd: PhantomData<PmdEntry<'a>>,
}

impl<'a> PteTableLocked<'a> {
    /// Maps and locks the page table that `pmd`, the entry covering `addr`, points to, if it
    /// still points to one. C: `pte_offset_map_lock()`.
    pub fn lock(pmd: PmdEntry<'a>, addr: usize) -> Option<Self> {
        let (_, pte, ptl) = map_table(pmd, addr, bindings::pte_offset_map_lock)?;
        // INVARIANT: The table is mapped (under RCU) from its first entry, and `ptl` is held.
        Some(Self {
            pte,
            ptl,
            _pmd: PhantomData,
        })
    }

    /// Pointer to entry `i`, clamped to the last entry; stable while the lock is held.
    #[inline]
    fn entry(&self, i: usize) -> *mut bindings::pte_t {
        // SAFETY: By the type invariants `pte` maps `PTRS_PER_PTE` entries; `i` is clamped.
        unsafe { self.pte.add(i.min(PTRS_PER_PTE - 1)) }
    }

    /// Whether entry `i` is none (maps nothing, not even a swap entry).
    pub fn is_none(&self, i: usize) -> bool {
        // SAFETY: The entry is mapped and locked (above); the predicate only inspects the value.
        unsafe { bindings::pte_none(bindings::ptep_get(self.entry(i))) }
    }
}

impl Drop for PteTableLocked<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariants `ptl` is held and `pte` mapped: `pte_unmap_unlock()`.
        unsafe {
            bindings::spin_unlock(self.ptl);
            bindings::pte_unmap(self.pte);
        }
    }
}

/// A page table whose entries only its holder can change while it is borrowed (its lock is
/// held): a run of them can be read at once, by C code for instance, and what they map stays
/// valid meanwhile.
///
/// # Safety
///
/// [`LockedPtes::entries`] returns `Some(p)` only if `first + n` (without overflow) is at most
/// [`PTRS_PER_PTE`]; `p` then points to the entries `first .. first + n` of one mapped page
/// table whose lock is held, which only the holder can change, and which stays mapped and
/// locked for as long as `self` is borrowed; or to the saved values of such entries, taken out
/// of their table under its lock ([`DetachedPteTable::take`]), which only the holder can reach
/// (to be read, not written).
pub unsafe trait LockedPtes {
    /// A pointer to the entries `first .. first + n`, or `None` if they are not all in the
    /// table.
    fn entries(&self, first: usize, n: usize) -> Option<*mut bindings::pte_t>;
}

// SAFETY: By the type invariants the table is mapped from its first entry and its lock is held
// until the value drops; the range is checked.
unsafe impl LockedPtes for PteTableLocked<'_> {
    #[inline]
    fn entries(&self, first: usize, n: usize) -> Option<*mut bindings::pte_t> {
        (first.checked_add(n)? <= PTRS_PER_PTE).then(|| self.entry(first))
    }
}

// SAFETY: The table is mapped and its lock held until the value drops; only its holder can
// change its entries (it is detached, or they were taken out, under that lock). A run of
// entries taken out is read from their saved values, which nothing else can reach; a run
// partly taken out and partly not is refused. The range is checked.
unsafe impl LockedPtes for DetachedPteLock<'_, '_> {
    #[inline]
    fn entries(&self, first: usize, n: usize) -> Option<*mut bindings::pte_t> {
        let end = first.checked_add(n)?;
        if end > PTRS_PER_PTE {
            return None;
        }
        if let Some(h) = &self.table.held {
            let inside = h.taken.0 <= first && end <= h.taken.1;
            let outside = end <= h.taken.0 || h.taken.1 <= first;
            if !inside && !outside {
                return None;
            }
        }
        Some(self.entry(first))
    }
}

/// A non-present entry of a [`PteTableMapped`] that is not none (a swap entry, a migration
/// entry or a marker), and the value [`PteTableMapped::non_present`] read from it.
#[derive(Clone, Copy)]
pub struct NonPresentPte {
    entry: *mut bindings::pte_t,
    pte: bindings::pte_t,
}

/// How a fault that read a swapped-out page back in ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapInFault {
    /// The page is back and mapped; the mmap lock is still held.
    Done,
    /// The fault released the mmap lock (`VM_FAULT_RETRY`), most likely because the folio
    /// lock could not be taken at once.
    LockReleased,
    /// The page could not be brought in (out of memory, I/O error, poison); the mmap lock is
    /// still held.
    Failed,
}

/// Faults that mean a page could not be brought in: C's `VM_FAULT_ERROR`.
const VM_FAULT_ERROR: bindings::vm_fault_t = bindings::vm_fault_reason_VM_FAULT_OOM
    | bindings::vm_fault_reason_VM_FAULT_SIGBUS
    | bindings::vm_fault_reason_VM_FAULT_SIGSEGV
    | bindings::vm_fault_reason_VM_FAULT_HWPOISON
    | bindings::vm_fault_reason_VM_FAULT_HWPOISON_LARGE
    | bindings::vm_fault_reason_VM_FAULT_FALLBACK;

/// A page table of PTEs mapped without its lock, to read entries locklessly: they may change at
/// any time, which the fault handlers detect by rechecking under the lock.
///
/// # Invariants
///
/// `pte` points to the [`PTRS_PER_PTE`] entries of the page table that `pmd`, the entry covering
/// `[start, start + PMD_SIZE)`, pointed to when it was mapped by `pte_offset_map_ro_nolock()`
/// (the RCU read lock is held); `ptl` is its lock, not held.
///
/// # Examples
///
/// ```
/// use kernel::mm::{
///     mmap_lock::MmapReadLock,
///     pgtable::{PmdEntry, PteTableMapped, PTRS_PER_PTE},
///     Mm,
/// };
///
/// /// How many pages of the PMD range at `addr` are swapped out, roughly.
/// fn swapped(mm: &Mm, addr: usize) -> usize {
///     let lock = MmapReadLock::lock(mm);
///     let pmd = PmdEntry::find(&lock, addr);
///     let Some(table) = pmd.and_then(|pmd| PteTableMapped::map(pmd, addr)) else {
///         return 0;
///     };
///     (0..PTRS_PER_PTE).filter(|&i| table.is_swap(i)).count()
/// }
/// ```
pub struct PteTableMapped<'a> {
    pmd: PmdEntry<'a>,
    start: usize,
    pte: *mut bindings::pte_t,
    ptl: *mut bindings::spinlock_t,
}

impl<'a> PteTableMapped<'a> {
    /// Maps the page table that `pmd`, the entry covering `addr`, points to, if it still points
    /// to one. C: `pte_offset_map_ro_nolock()`.
    pub fn map(pmd: PmdEntry<'a>, addr: usize) -> Option<Self> {
        let (start, pte, ptl) = map_table(pmd, addr, bindings::pte_offset_map_ro_nolock)?;
        // INVARIANT: The table is mapped (under RCU) from its first entry.
        Some(Self {
            pmd,
            start,
            pte,
            ptl,
        })
    }

    /// Pointer to entry `i`, clamped to the last entry.
    #[inline]
    fn entry(&self, i: usize) -> *mut bindings::pte_t {
        // SAFETY: By the type invariants `pte` maps `PTRS_PER_PTE` entries; `i` is clamped.
        unsafe { self.pte.add(i.min(PTRS_PER_PTE - 1)) }
    }

    /// Entry `i`, read locklessly, if it is neither none nor present: a swap entry, a
    /// migration entry or a marker. The value read is the one a fault on it must start from
    /// ([`Self::swap_in`]): a second read could see the entry present again.
    #[inline]
    pub fn non_present(&self, i: usize) -> Option<NonPresentPte> {
        let entry = self.entry(i);
        // SAFETY: The entry is mapped (type invariants); a lockless read may see a stale value,
        // which only the fault acts on, after rechecking it under the lock.
        let pte = unsafe { bindings::ptep_get_lockless(entry) };
        // SAFETY: Pure predicates on a value.
        let non_present = unsafe { !bindings::pte_none(pte) && !bindings::pte_present(pte) };
        non_present.then_some(NonPresentPte { entry, pte })
    }

    /// Whether entry `i` holds a swap entry or another non-present one, read locklessly.
    #[inline]
    pub fn is_swap(&self, i: usize) -> bool {
        self.non_present(i).is_some()
    }

    /// Faults the page of `entry`, a non-present entry of this table (see
    /// [`Self::non_present`]), back in, for `vma`, which covers it. The fault starts from the
    /// value `entry` read and rechecks it under the lock. It may sleep for I/O and may release
    /// the mmap lock, which the result says. C: `do_swap_page()`.
    ///
    /// Fails, without faulting, with [`SwapInFault::Failed`] if `entry` was not read from this
    /// table, or if `vma` is not a VMA of this page table's mm that covers the entry.
    pub fn swap_in(self, vma: &VmaRef, entry: NonPresentPte) -> SwapInFault {
        // Only the addresses are compared: below the table, the difference wraps around.
        let offset = (entry.entry as usize).wrapping_sub(self.pte as usize);
        let i = offset / core::mem::size_of::<bindings::pte_t>();
        if i >= PTRS_PER_PTE {
            return SwapInFault::Failed;
        }
        let addr = self.start + i * PAGE_SIZE;
        if !ptr::eq(vma.mm().as_raw(), self.pmd.mm.as_ptr())
            || addr < vma.start()
            || addr >= vma.end()
        {
            return SwapInFault::Failed;
        }
        let this = core::mem::ManuallyDrop::new(self);
        let (ptep, orig) = (entry.entry, entry.pte);
        // SAFETY: An all-zero `struct vm_fault` is valid: null pointers, zero values.
        let mut vmf: bindings::vm_fault = unsafe { core::mem::zeroed() };
        vmf.__bindgen_anon_1.vma = vma.as_ptr();
        vmf.__bindgen_anon_1.address = addr;
        vmf.__bindgen_anon_1.pgoff = vma.linear_page_index(addr);
        vmf.flags = bindings::fault_flag_FAULT_FLAG_ALLOW_RETRY;
        vmf.pmd = this.pmd.as_ptr();
        vmf.__bindgen_anon_2.orig_pte = orig;
        vmf.pte = ptep;
        vmf.ptl = this.ptl;
        // SAFETY: `vma` is a VMA of the mm whose mmap lock `pmd` was found under, and covers
        // `addr` (checked above); `ptep` is an entry of the mapped table (checked above) and
        // the fault unmaps the table, so `this` is not dropped; `ptl` is the table's lock, not
        // held; `orig` is a non-present value read from `ptep`, which the fault rechecks under
        // the lock. The fields are those `__collapse_huge_page_swapin()` sets.
        let ret = unsafe { bindings::do_swap_page(&mut vmf) };
        if ret & bindings::vm_fault_reason_VM_FAULT_RETRY != 0 {
            SwapInFault::LockReleased
        } else if ret & VM_FAULT_ERROR != 0 {
            SwapInFault::Failed
        } else {
            SwapInFault::Done
        }
    }
}

impl Drop for PteTableMapped<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariants `pte` is mapped.
        unsafe { bindings::pte_unmap(self.pte) };
    }
}

/// A page table of PTEs allocated for an mm and not in use, which
/// [`DetachedPteTable::install_pmd`] deposits in place of the table it detached. Dropping it
/// frees it.
///
/// Why a new table: a table that a huge PMD has deposited is freed at once when the PMD is
/// zapped (`zap_deposited_table()`: `pte_free()`), but a GUP-fast walker that read the PMD before
/// the detach may still be reading the old table's entries. Upstream waits for such walkers
/// with `tlb_remove_table_sync_one()`, an IPI to every other CPU, under the mmap write lock.
/// Depositing a new table and freeing the old one after an RCU grace period
/// (`pte_free_defer()`, whose grace period waits for GUP-fast's interrupts-off walk, as the
/// table retraction of shmem and file collapse relies on) needs no IPI.
///
/// # Invariants
///
/// `table` is a page table of PTEs allocated for `mm` as `pte_alloc_one()` allocates one (the
/// same constructor, other gfp flags), with every entry none; nothing else can reach it.
pub struct NewPteTable<'a> {
    mm: &'a Mm,
    table: NonNull<bindings::page>,
}

impl<'a> NewPteTable<'a> {
    /// Allocates a page table for `mm`, charged to the memory cgroup of `mm` (not to that of
    /// the caller, which may be khugepaged or another process). For optional work: fails with
    /// `ENOMEM` rather than invoke the OOM killer (`__GFP_NORETRY`), and without direct reclaim
    /// unless `may_reclaim`. May sleep. C: `pte_alloc_one()`.
    pub fn alloc(mm: &'a Mm, may_reclaim: bool) -> Result<Self> {
        // SAFETY: `mm` is valid for the call.
        let table = unsafe { bindings::pte_alloc_one_charged(mm.as_raw(), may_reclaim) };
        let table = NonNull::new(table).ok_or(ENOMEM)?;
        // INVARIANT: A new table, empty, which only this value holds.
        Ok(Self { mm, table })
    }

    /// Gives up the table to the caller, who must deposit or install it for `mm`.
    fn into_raw(self) -> bindings::pgtable_t {
        core::mem::ManuallyDrop::new(self).table.as_ptr()
    }
}

impl Drop for NewPteTable<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the table is `mm`'s, unused and only ours.
        unsafe { bindings::pte_table_free(self.mm.as_raw(), self.table.as_ptr()) };
    }
}

/// A page table of PTEs taken out of its PMD entry, under the mmap lock for write and the
/// anon_vma lock: no page fault or rmap walk can reach its entries until it is put back, and
/// a GUP-fast walk that found the table before the detach cannot keep a reference it takes
/// (it checks the PMD entry again after taking it, and backs off).
///
/// Or, made by [`DetachedPteTable::take`], a page table left in its PMD entry whose entries of
/// a range were taken out instead, with the PMD lock and the table's lock held throughout:
/// the VMA's page faults and the other walkers under its per-VMA lock need not be kept out
/// for the whole collapse, nor, if the caller holds the mmap lock for read only, the
/// walkers under that (GUP, `/proc` readers, `madvise()`, a second collapser). They find the
/// entries none and wait for the table's lock, and once they have it they find the PMD entry
/// changed if the table was replaced meanwhile (`pte_offset_map_lock()`), or the entries as
/// they were (put back) or mapping the new folio. The PMD entry never goes none: a zap that
/// saw it none would skip the range. The table is replaced only under the PMD lock, and
/// freed after an RCU grace period, as the shmem table retraction does under no mmap lock.
///
/// [`DetachedPteTable::install_pmd`] maps a huge folio with the PMD instead, depositing a
/// [`NewPteTable`] and freeing this one after an RCU grace period;
/// [`DetachedPteTable::install_ptes`] puts it back with some entries mapping a new folio;
/// dropping it puts it back as it is. It is never freed while a lockless walker may read it.
///
/// # Invariants
///
/// - The mmap lock of `mm` is held for `'a`, for write if `held` is `None`; `vma` is a VMA of
///   `mm` that covers `[haddr, haddr + PMD_SIZE)`.
/// - If `held` is `None`: `*pmdp` is none; `table` is the value it held, which points to a
///   page table of PTEs; `ptl` is that table's lock, not held by this value.
/// - If `held` is `Some(h)`: `*pmdp` is `table`, which points to a page table of PTEs; this
///   thread holds the PMD lock `h.pmd_ptl` and the table's lock `ptl` (once if they are the
///   same lock); entries `h.taken.0 .. h.taken.1` of the table are none, their values before
///   in `h.saved`, and the mmu notifier range `h.notifier` over them is started.
/// - `pte` maps the entries of that table (`pte_offset_map()`: the RCU read lock is held).
/// - Entries `cleared.0 .. cleared.1` were cleared by [`DetachedPteLock::clear`] (an empty
///   range if none were); in the held mode they are within `h.taken`.
///
/// # Examples
///
/// ```
/// use kernel::mm::{
///     anon_vma::AnonVmaWriteGuard,
///     mmap_lock::{MmapLocked, MmapWriteLock},
///     pgtable::{DetachedPteTable, PmdEntry, PmdState},
///     Mm,
/// };
///
/// /// Counts the entries in use in the page table at `addr`, which nothing can change or even
/// /// look at meanwhile, and puts the table back.
/// fn count_quietly(mm: &Mm, addr: usize) -> Option<usize> {
///     let lock = MmapWriteLock::lock(mm);
///     let vma = lock.find_vma(addr)?;
///     let anon = AnonVmaWriteGuard::lock(&lock, vma)?;
///     let pmd = PmdEntry::find(&lock, addr).filter(|p| p.state() == PmdState::Table)?;
///     let mut table = DetachedPteTable::detach(&lock, &anon, vma, pmd, addr, addr + 4096)?;
///     let locked = table.lock();
///     Some((0..kernel::mm::pgtable::PTRS_PER_PTE).filter(|&i| !locked.is_none(i)).count())
/// }
/// ```
pub struct DetachedPteTable<'a> {
    mm: NonNull<bindings::mm_struct>,
    vma: &'a VmaRef,
    pmdp: NonNull<bindings::pmd_t>,
    table: bindings::pmd_t,
    haddr: usize,
    pte: *mut bindings::pte_t,
    ptl: *mut bindings::spinlock_t,
    cleared: (usize, usize),
    /// The locks and saved entries of a table taken out entry by entry ([`DetachedPteTable::take`]).
    held: Option<Held>,
}

/// What a [`DetachedPteTable`] made by [`DetachedPteTable::take`] holds.
struct Held {
    /// The PMD lock, held.
    pmd_ptl: *mut bindings::spinlock_t,
    /// The entries taken out, `taken.0 .. taken.1`.
    taken: (usize, usize),
    /// Their values before.
    saved: PteSnapshot,
    /// The mmu notifier range over them, ended once the locks are released.
    notifier: MmuNotifierClear,
}

/// Room for the entries of one page table, allocated before any lock, where
/// [`DetachedPteTable::take`] saves the entries it takes out.
pub struct PteSnapshot(KBox<[bindings::pte_t; PTRS_PER_PTE]>);

impl PteSnapshot {
    /// Allocates room for the entries of one page table. May sleep.
    pub fn new() -> Result<Self> {
        let room = KBox::<[bindings::pte_t; PTRS_PER_PTE]>::new_uninit(
            crate::alloc::flags::GFP_KERNEL | crate::alloc::flags::__GFP_ZERO,
        )?;
        // SAFETY: The memory is zeroed, and an array of zeroed `pte_t`s (none entries) is valid.
        Ok(Self(unsafe { room.assume_init() }))
    }
}

/// An mmu notifier range of the clear kind, started; dropping it ends it.
struct MmuNotifierClear(MaybeUninit<bindings::mmu_notifier_range>);

impl MmuNotifierClear {
    /// Starts the invalidation of `[start, end)` of `mm` for secondary MMUs. May sleep.
    ///
    /// # Safety
    ///
    /// `mm` must be valid while the value lives.
    unsafe fn start(mm: *mut bindings::mm_struct, start: usize, end: usize) -> Self {
        // SAFETY: As required of the caller.
        unsafe {
            Self::start_owned(
                mm,
                start,
                end,
                bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR,
                ptr::null_mut(),
            )
        }
    }

    /// As [`MmuNotifierClear::start`], for an `event` and with an `owner`, which the range
    /// carries to the notifiers (`mmu_notifier_range_init_owner()`).
    ///
    /// # Safety
    ///
    /// `mm` must be valid while the value lives.
    unsafe fn start_owned(
        mm: *mut bindings::mm_struct,
        start: usize,
        end: usize,
        event: bindings::mmu_notifier_event,
        owner: *mut c_void,
    ) -> Self {
        let mut range = MaybeUninit::<bindings::mmu_notifier_range>::zeroed();
        #[cfg(not(CONFIG_MMU_NOTIFIER))]
        let _ = owner;
        // SAFETY: `range` is valid for writes and zeroed (a valid value of the C struct); `mm`
        // is valid by the function's safety requirements. The owner is only compared.
        unsafe {
            bindings::mmu_notifier_range_init(range.as_mut_ptr(), event, 0, mm, start, end);
            #[cfg(CONFIG_MMU_NOTIFIER)]
            {
                (*range.as_mut_ptr()).owner = owner;
            }
            bindings::mmu_notifier_invalidate_range_start(range.as_mut_ptr());
        }
        Self(range)
    }
}

impl Drop for MmuNotifierClear {
    fn drop(&mut self) {
        // SAFETY: The range was initialized and started in `start`.
        unsafe { bindings::mmu_notifier_invalidate_range_end(self.0.as_mut_ptr()) };
    }
}

/// The start of the PMD range of `[start, end)`, if `pmd` is an entry of the mm that `lock`
/// holds the mmap lock of, pointing to a page table, and `vma` a VMA of that mm
/// covering the whole PMD range, of which `[start, end)` is a part, not empty: the arguments
/// [`DetachedPteTable::detach`] and [`DetachedPteTable::take`] accept.
fn range_of<L: MmapLocked + ?Sized>(
    lock: &L,
    vma: &VmaRef,
    pmd: PmdEntry<'_>,
    start: usize,
    end: usize,
) -> Option<usize> {
    let mm = pmd.mm.as_ptr();
    let haddr = start & !(PMD_SIZE - 1);
    let fits = ptr::eq(lock.locked_mm().as_raw(), mm)
        && ptr::eq(vma.mm().as_raw(), mm)
        && start < end
        && end - haddr <= PMD_SIZE
        && haddr >= vma.start()
        && haddr + PMD_SIZE <= vma.end()
        && pmd.state() == PmdState::Table;
    fits.then_some(haddr)
}

impl<'a> DetachedPteTable<'a> {
    /// Clears `pmd`, an entry of the mm that `lock` holds the mmap lock of, pointing to a page
    /// table of PTEs, and flushes the TLB; and maps the detached table. Lockless walkers that found
    /// the table before are not waited for (upstream's `tlb_remove_table_sync_one()`): a GUP-fast
    /// walk takes its reference and then reads the PMD entry again, fully ordered, and the clear
    /// here is ordered before every reference count the caller reads next, so either the caller
    /// sees the reference or the walker sees the entry changed and drops it; and the table is not
    /// freed before an RCU grace period (see [`NewPteTable`]). `vma` must cover the whole PMD
    /// range, `[start, end)` is the part of it whose entries are about to change, for secondary
    /// MMUs. `anon` shows that anonymous rmap walkers are kept out.
    ///
    /// Returns `None`, changing nothing, if the arguments do not match (another mm, a range
    /// outside the VMA or the PMD range) or the entry no longer points to a page table.
    /// May sleep. C: `pmdp_collapse_flush()` in `collapse_huge_page()`.
    pub fn detach(
        lock: &'a MmapWriteLock<'_>,
        _anon: &AnonVmaWriteGuard<'_>,
        vma: &'a VmaRef,
        pmd: PmdEntry<'a>,
        start: usize,
        end: usize,
    ) -> Option<Self> {
        let mm = pmd.mm;
        let haddr = range_of(lock, vma, pmd, start, end)?;
        let pmdp = pmd.pmdp;
        // SAFETY: The mmap write lock of `mm` is held for `'a`.
        let notifier = unsafe { MmuNotifierClear::start(mm.as_ptr(), start, end) };
        // SAFETY: The mmap write lock and the anon_vma lock are held, as
        // `pmdp_collapse_flush()` requires; `pmdp` points to an entry of `mm` that points to a
        // page table (checked above; only the mmap write lock holder may change that).
        let table = unsafe {
            let pmd_ptl = bindings::pmd_lock(mm.as_ptr(), pmdp.as_ptr());
            // Removes the PMD and flushes the TLB for the range; GUP-fast sees the change and
            // backs off.
            let table = bindings::pmdp_collapse_flush(vma.as_ptr(), haddr, pmdp.as_ptr());
            bindings::spin_unlock(pmd_ptl);
            table
        };
        drop(notifier);
        // The clear before the reads of the reference counts (the isolation's): against
        // GUP-fast, as `__folio_try_share_anon_rmap()` orders its clear and check.
        smp_mb(Full);
        let mut ptl = ptr::null_mut();
        let mut copy = table;
        // SAFETY: `copy` holds the detached PMD value; `pte_offset_map_lock()` reads it only
        // during the call. The page table it points to stays allocated: only we can free it.
        let pte = unsafe { bindings::pte_offset_map_lock(mm.as_ptr(), &mut copy, haddr, &mut ptl) };
        if pte.is_null() {
            // SAFETY: `pmdp` is none and `table` is what it held: put it back.
            unsafe { populate(mm.as_ptr(), pmdp.as_ptr(), table) };
            return None;
        }
        // SAFETY: `pte_offset_map_lock()` succeeded and took `ptl`; the table stays mapped.
        unsafe { bindings::spin_unlock(ptl) };
        // INVARIANT: The PMD is none, `table` is its old value, `pte` is mapped with `ptl` not
        // held, and no entry was cleared.
        Some(Self {
            mm,
            vma,
            pmdp,
            table,
            haddr,
            pte,
            ptl,
            cleared: (0, 0),
            held: None,
        })
    }

    /// Takes the entries of `pmd`'s page table that map `[start, end)` out of it, saving them
    /// in `saved`, and flushes the TLB: as [`DetachedPteTable::detach`], but the PMD entry
    /// keeps pointing to the table, and the value holds the PMD lock and the table's lock
    /// until it is installed or dropped (which puts the entries back). The VMA's page faults
    /// and the other walkers under its per-VMA lock need not be kept out: see the type's
    /// documentation. GUP-fast is kept out as by [`DetachedPteTable::detach`]: the clear of
    /// each entry comes before the reference counts the caller reads next, and the table it
    /// may still read is freed after an RCU grace period. The mmu notifier range over the
    /// entries carries `owner` (a [`RangeWatch`] of the caller does not report it), and ends
    /// once the locks are released. Until the value drops nothing may sleep.
    ///
    /// Returns `None`, changing nothing, as [`DetachedPteTable::detach`] does.
    /// C: no counterpart; `pmdp_collapse_flush()` in `collapse_huge_page()` takes the whole
    /// table out instead, with the VMA write-locked.
    pub fn take<L: MmapLocked + ?Sized>(
        lock: &'a L,
        _anon: &AnonVmaWriteGuard<'_>,
        vma: &'a VmaRef,
        pmd: PmdEntry<'a>,
        (start, end): (usize, usize),
        mut saved: PteSnapshot,
        owner: Option<&RangeWatch>,
    ) -> Option<Self> {
        let mm = pmd.mm;
        let haddr = range_of(lock, vma, pmd, start, end)?;
        let pmdp = pmd.pmdp;
        let owner = owner.map_or(ptr::null_mut(), RangeWatch::owner);
        // SAFETY: The mmap lock of `mm` is held for `'a`.
        let notifier = unsafe {
            MmuNotifierClear::start_owned(
                mm.as_ptr(),
                start,
                end,
                bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR,
                owner,
            )
        };
        let mut ptl = ptr::null_mut();
        let mut table = MaybeUninit::<bindings::pmd_t>::zeroed();
        // SAFETY: `pmdp` is an entry of `mm`, alive under the mmap lock; under its lock it can
        // change no more, and `pte_offset_map_rw_nolock()` maps the table it points to, if
        // it still points to one, with the value it read (which the entry keeps: its lock is
        // held), for the entries to be changed under the table's lock.
        let (pmd_ptl, pte) = unsafe {
            let pmd_ptl = bindings::pmd_lock(mm.as_ptr(), pmdp.as_ptr());
            let pte = bindings::pte_offset_map_rw_nolock(
                mm.as_ptr(),
                pmdp.as_ptr(),
                haddr,
                table.as_mut_ptr(),
                &mut ptl,
            );
            (pmd_ptl, pte)
        };
        if pte.is_null() {
            // SAFETY: Taken above; nothing changed.
            unsafe { bindings::spin_unlock(pmd_ptl) };
            return None;
        }
        // SAFETY: Written by the successful map (and zeroed before: a valid value either way).
        let table = unsafe { table.assume_init() };
        let (first, last) = (
            (start - haddr) / PAGE_SIZE,
            (end - haddr).div_ceil(PAGE_SIZE),
        );
        // SAFETY: The table's lock nests in the PMD lock, as everywhere (the shmem table
        // retraction, the huge PMD split); the entries `first .. last` are in the mapped
        // table, and `saved` has room for each at the same index; `vma` is valid under the
        // mmap lock, and `[start, end)` in it (checked above).
        unsafe {
            if ptl != pmd_ptl {
                bindings::spin_lock_nested(ptl, bindings::SINGLE_DEPTH_NESTING as i32);
            }
            bindings::take_ptes(
                mm.as_ptr(),
                haddr + first * PAGE_SIZE,
                pte.add(first),
                (last - first) as u32,
                saved.0.as_mut_ptr().add(first),
            );
            // No CPU maps the pages any more once this returns.
            bindings::flush_tlb_range(vma.as_ptr(), start, end);
        }
        // The clears before the reads of the reference counts (the isolation's): against
        // GUP-fast, as in `detach()`.
        smp_mb(Full);
        // INVARIANT: The PMD entry still points to `table`, both locks are held, the entries
        // `first .. last` are none and saved, and the notifier range is started.
        Some(Self {
            mm,
            vma,
            pmdp,
            table,
            haddr,
            pte,
            ptl,
            cleared: (0, 0),
            held: Some(Held {
                pmd_ptl,
                taken: (first, last),
                saved,
                notifier,
            }),
        })
    }

    /// Whether the table was taken out entry by entry ([`DetachedPteTable::take`]), its PMD
    /// entry left in place.
    #[inline]
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Pointer to entry `i` as it was before the table was taken out, clamped to the last
    /// entry: the table's own entry, or the value saved of one taken out
    /// ([`DetachedPteTable::take`]). Only this value can change it. To read only.
    #[inline]
    pub fn entry(&self, i: usize) -> *mut bindings::pte_t {
        let i = i.min(PTRS_PER_PTE - 1);
        match &self.held {
            Some(h) if (h.taken.0..h.taken.1).contains(&i) => {
                // SAFETY: `saved` has an entry per index; `i` is clamped. Nothing writes
                // through the pointer (the function's documentation).
                unsafe {
                    h.saved
                        .0
                        .as_ptr()
                        .cast::<bindings::pte_t>()
                        .add(i)
                        .cast_mut()
                }
            }
            _ => self.table_entry(i),
        }
    }

    /// Pointer to the table's entry `i`, clamped to the last entry.
    #[inline]
    fn table_entry(&self, i: usize) -> *mut bindings::pte_t {
        // SAFETY: By the type invariants `pte` maps `PTRS_PER_PTE` entries; `i` is clamped.
        unsafe { self.pte.add(i.min(PTRS_PER_PTE - 1)) }
    }

    /// Takes the table's lock, which what the entries map may need (rmap updates of their
    /// folios, for instance); a table taken out entry by entry holds it already.
    #[inline]
    pub fn lock(&mut self) -> DetachedPteLock<'_, 'a> {
        let taken = self.held.is_none();
        if taken {
            // SAFETY: By the type invariants `ptl` is the table's lock, not held.
            unsafe { bindings::spin_lock(self.ptl) };
        }
        // INVARIANT: Held, and taken here if `taken`.
        DetachedPteLock { table: self, taken }
    }

    /// Maps `folio`, a huge folio of the PMD order, with the PMD entry, in place of the table,
    /// every entry of which [`DetachedPteLock::clear`] cleared; deposits `fresh` for a later
    /// split, and frees the table after an RCU grace period. The folio must hold the data the
    /// entries mapped; the mapping takes over its reference.
    ///
    /// Gives the folio back, and puts the table back as it is, if it is not of the PMD order or
    /// some entries were not cleared. C: `pgtable_trans_huge_deposit()` and
    /// `map_anon_folio_pmd_nopf()` (upstream deposits the old table).
    pub fn install_pmd(self, folio: NewFolio, fresh: NewPteTable<'_>) -> Result<(), NewFolio> {
        if PTRS_PER_PTE != 1 << folio.order() || self.cleared != (0, PTRS_PER_PTE) {
            return Err(folio);
        }
        let (mm, old) = (self.mm.as_ptr(), self.table);
        // SAFETY: The PMD is none (under the mmap write lock), or points to the table whose
        // entries were all cleared and whose lock is held (type invariants), under the PMD
        // lock: the new, empty table
        // is deposited, and the PMD maps `folio`.
        unsafe {
            self.install_new(folio, |this, folio, mm, pmdp, _| {
                bindings::pgtable_trans_huge_deposit(mm, pmdp, fresh.into_raw());
                bindings::map_anon_folio_pmd_nopf(folio, pmdp, this.vma.as_ptr(), this.haddr);
            })
        };
        // SAFETY: `old` is the table the PMD held, all of whose entries were cleared (checked
        // above), and which nothing can reach now that the PMD maps the folio.
        unsafe { free_replaced(mm, old) };
        Ok(())
    }

    /// Puts the table back with the entries that [`DetachedPteLock::clear`] cleared mapping
    /// `folio`, whose size they must match. The folio must hold the data they mapped; the
    /// mapping takes over its reference.
    ///
    /// Gives the folio back, and puts the table back as it is, if the sizes do not match.
    /// C: `pmd_populate()` and `map_anon_folio_pte_nopf()`.
    pub fn install_ptes(self, folio: NewFolio) -> Result<(), NewFolio> {
        let (first, end) = self.cleared;
        if end - first != 1 << folio.order() || end == first {
            return Err(folio);
        }
        // SAFETY: The PMD is none and `table` the detached table, or it points to the table
        // and its lock is held (type invariants), under the mmap lock and the PMD lock:
        // the table goes back (if detached), and the cleared entries, none now, map `folio`
        // under the PTE lock nested in the PMD lock (unless it is the same lock).
        unsafe {
            self.install_new(folio, |this, folio, mm, pmdp, pmd_ptl| {
                // Taken out entry by entry: the table is in place, and its lock held.
                let nested = this.ptl != pmd_ptl && this.held.is_none();
                if nested {
                    bindings::spin_lock_nested(this.ptl, bindings::SINGLE_DEPTH_NESTING as i32);
                }
                if this.held.is_none() {
                    bindings::pmd_populate_table(mm, pmdp, this.table);
                }
                bindings::map_anon_folio_pte_nopf(
                    folio,
                    this.table_entry(first),
                    this.vma.as_ptr(),
                    this.haddr + first * PAGE_SIZE,
                    false,
                );
                if nested {
                    bindings::spin_unlock(this.ptl);
                }
            })
        };
        Ok(())
    }

    /// Whether the entries map, in order, every page of `folio`, an anonymous folio of the PMD
    /// order that nothing else maps, each page exclusively (`PageAnonExclusive()`), that is
    /// neither in the swap cache nor marked partially mapped: such a folio can be mapped with
    /// the PMD in place of the entries, without a copy
    /// ([`DetachedPteTable::install_pmd_in_place`]). `false` once an entry was cleared, or
    /// while some entries are taken out and others not ([`DetachedPteTable::entry`]).
    ///
    /// # Safety
    ///
    /// `folio` must stay valid during the call (locked, or isolated, by the caller).
    pub unsafe fn maps_in_place(&self, folio: NonNull<bindings::folio>) -> bool {
        let f = folio.as_ptr();
        let first = self.entry(0);
        if self.cleared.0 != self.cleared.1
            || self.entry(PTRS_PER_PTE - 1) != first.wrapping_add(PTRS_PER_PTE - 1)
        {
            return false;
        }
        // SAFETY: `f` is valid (safety requirements); the entries are in the table, which only
        // this value can change (type invariants).
        unsafe {
            if !bindings::folio_test_anon(f)
                || bindings::folio_nr_pages(f) != PTRS_PER_PTE as isize
                || bindings::folio_mapcount(f) != PTRS_PER_PTE as i32
                || bindings::folio_test_swapcache(f)
                || bindings::folio_test_partially_mapped(f)
            {
                return false;
            }
            // One walk in C of the `PTRS_PER_PTE` entries (the folio's size, checked above)
            // from `first` on, consecutive in memory (checked above too): in the table, or all
            // saved when taken out. Should only some in the middle be taken out, those read as
            // none in the table (`DetachedPteTable::take`), and the walk says no.
            bindings::ptes_map_folio_exclusive(first, f)
        }
    }

    /// Maps `folio` with the PMD entry in place of the entries, which mapped its pages in order and
    /// which [`DetachedPteLock::clear`] all cleared, deposits `fresh` for a later split and frees
    /// the table after an RCU grace period (as [`DetachedPteTable::install_pmd`]): the collapse of
    /// a PTE-mapped folio of the PMD order without a copy (where upstream copies it into a new
    /// folio). The PMD maps it exclusively; as on every PMD-mapped folio, `PG_anon_exclusive` then
    /// counts on its first page only (a split of the PMD hands it on to every page), so it is
    /// cleared on the others.
    ///
    /// Puts the table back as it is, and fails with `EINVAL`, if some entries were not
    /// cleared. C: as `map_anon_folio_pmd_nopf()` maps a new folio, with
    /// `folio_add_anon_rmap_pmd()`.
    ///
    /// # Safety
    ///
    /// [`DetachedPteTable::maps_in_place`] must have found that the entries mapped `folio` in
    /// place before they were cleared. The caller must hold the folio's lock, have removed
    /// the rmap of the entries' mappings, and own one of their references, which the PMD
    /// mapping takes over.
    pub unsafe fn install_pmd_in_place(
        self,
        folio: NonNull<bindings::folio>,
        fresh: NewPteTable<'_>,
    ) -> Result {
        if self.cleared != (0, PTRS_PER_PTE) {
            return Err(EINVAL);
        }
        let (mm, old) = (self.mm.as_ptr(), self.table);
        let f = folio.as_ptr();
        // SAFETY: By the function's safety requirements the folio is locked and ours to map:
        // its pages are unmapped and its rmap is gone; the PMD is none, or points to the table
        // whose entries were all cleared (type invariants), under the mmap lock (for write if
        // the PMD is none) and the PMD lock: the new, empty table is deposited, and the PMD
        // maps the folio.
        unsafe {
            let first = &raw mut (*f).__bindgen_anon_1.page;
            bindings::folio_clear_tail_anon_exclusive(f);
            self.install(f, |this, f, mm, pmdp, _| {
                let (vma, haddr) = (this.vma.as_ptr(), this.haddr);
                let entry = bindings::folio_mk_pmd(f, (*vma).vm_page_prot);
                let entry = bindings::maybe_pmd_mkwrite(bindings::pmd_mkdirty(entry), vma);
                bindings::pgtable_trans_huge_deposit(mm, pmdp, fresh.into_raw());
                bindings::folio_add_anon_rmap_pmd(f, first, vma, haddr, bindings::RMAP_EXCLUSIVE);
                bindings::set_pmd_at(mm, haddr, pmdp, entry);
                bindings::update_mmu_cache_pmd(vma, haddr, pmdp);
                bindings::deferred_split_folio(f, false);
            });
            // `old` is the table the PMD held, all of whose entries were cleared (checked
            // above), and which nothing can reach now that the PMD maps the folio.
            free_replaced(mm, old);
        }
        Ok(())
    }

    /// [`DetachedPteTable::install`] for a new folio, marked uptodate first, which orders the
    /// writes to it before the page-table stores; `map` takes over its reference.
    ///
    /// # Safety
    ///
    /// As for [`DetachedPteTable::install`].
    unsafe fn install_new(
        self,
        folio: NewFolio,
        map: impl FnOnce(
            &Self,
            *mut bindings::folio,
            *mut bindings::mm_struct,
            *mut bindings::pmd_t,
            *mut bindings::spinlock_t,
        ),
    ) {
        let folio = folio.into_raw();
        // SAFETY: `folio` is ours and fully written; by the function's safety requirements
        // for the rest.
        unsafe {
            bindings::__folio_mark_uptodate(folio);
            self.install(folio, map);
        }
    }

    /// Gives up the table to `map`, which maps `folio` under the PMD lock, and unmaps the
    /// table. `map` gets the table, the folio, the mm, the PMD entry and the PMD lock.
    ///
    /// # Safety
    ///
    /// `folio` must be valid and ready to be mapped; `map` must put the PMD entry in order (a
    /// huge mapping or the table back) and map the folio: the table is not put back on drop
    /// any more.
    unsafe fn install(
        self,
        folio: *mut bindings::folio,
        map: impl FnOnce(
            &Self,
            *mut bindings::folio,
            *mut bindings::mm_struct,
            *mut bindings::pmd_t,
            *mut bindings::spinlock_t,
        ),
    ) {
        let mut this = core::mem::ManuallyDrop::new(self);
        let (mm, pmdp) = (this.mm.as_ptr(), this.pmdp.as_ptr());
        let Some(pmd_ptl) = this.held.as_ref().map(|h| h.pmd_ptl) else {
            // SAFETY: The PMD lock of `mm`'s entry `pmdp` is taken around `map`, under the
            // mmap write lock (type invariants); `pte` is mapped and not used after `map`,
            // since `this` is never dropped.
            unsafe {
                let pmd_ptl = bindings::pmd_lock(mm, pmdp);
                map(&this, folio, mm, pmdp, pmd_ptl);
                bindings::spin_unlock(pmd_ptl);
                bindings::pte_unmap(this.pte);
            }
            return;
        };
        // SAFETY: The PMD lock and the table's lock are held (type invariants) around `map`;
        // `pte` is mapped and not used after `map`, since `this` is never dropped.
        let replaced = unsafe {
            map(&this, folio, mm, pmdp, pmd_ptl);
            let replaced = classify(bindings::pmdp_get_lockless(pmdp)) != PmdState::Table;
            if this.ptl != pmd_ptl {
                bindings::spin_unlock(this.ptl);
            }
            bindings::spin_unlock(pmd_ptl);
            bindings::pte_unmap(this.pte);
            replaced
        };
        // After the locks: the end of the notifier range may sleep.
        drop(this.held.take());
        if replaced {
            // A CPU may still hold the PMD entry's old value, pointing to the table, in its
            // paging-structure caches (it walked the empty entries since the flush of
            // `take()`): flushed before the caller frees the table, on every CPU, those in
            // lazy TLB mode too (`freed_tables`), which a flush of entries skips.
            // SAFETY: `vma` is valid under the mmap lock (type invariants).
            unsafe {
                bindings::flush_tlb_table_range(
                    this.vma.as_ptr(),
                    this.haddr,
                    this.haddr + PMD_SIZE,
                )
            };
        }
    }
}

impl Drop for DetachedPteTable<'_> {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            // SAFETY: By the type invariants the PMD is none and `table` is its old value,
            // under the mmap write lock; `pte` is mapped.
            unsafe {
                populate(self.mm.as_ptr(), self.pmdp.as_ptr(), self.table);
                bindings::pte_unmap(self.pte);
            }
            return;
        };
        let (first, last) = held.taken;
        let (c0, c1) = self.cleared;
        // The entries taken out but not cleared go back as they were, the cleared ones (the
        // caller dropped what they mapped) stay none.
        for (a, b) in [(first, c0.max(first)), (c1.max(first), last)] {
            if a >= b {
                continue;
            }
            // SAFETY: Entries `a .. b` of the mapped table are none since `take()`, under its
            // lock (type invariants), and `saved` holds their values before at the same
            // indices.
            unsafe {
                bindings::restore_ptes(
                    self.mm.as_ptr(),
                    self.haddr + a * PAGE_SIZE,
                    self.table_entry(a),
                    (b - a) as u32,
                    held.saved.0.as_ptr().cast::<bindings::pte_t>().add(a),
                )
            };
        }
        // SAFETY: Both locks are held and `pte` is mapped (type invariants).
        unsafe {
            if self.ptl != held.pmd_ptl {
                bindings::spin_unlock(self.ptl);
            }
            bindings::spin_unlock(held.pmd_ptl);
            bindings::pte_unmap(self.pte);
        }
        // After the locks: it may sleep.
        drop(held.notifier);
    }
}

/// Points the none PMD entry `pmdp` back at the page table that `table` describes.
///
/// # Safety
///
/// The mmap lock of `mm` must be held for write; `*pmdp` must be none and `table` the value it
/// held before, pointing to a page table.
unsafe fn populate(
    mm: *mut bindings::mm_struct,
    pmdp: *mut bindings::pmd_t,
    table: bindings::pmd_t,
) {
    // SAFETY: By the function's safety requirements. A page table is installed with
    // `pmd_populate()`, never `set_pmd_at()`.
    unsafe {
        let pmd_ptl = bindings::pmd_lock(mm, pmdp);
        bindings::pmd_populate_table(mm, pmdp, table);
        bindings::spin_unlock(pmd_ptl);
    }
}

/// The lock of a [`DetachedPteTable`], held.
///
/// # Invariants
///
/// The table's `ptl` is held by this thread.
pub struct DetachedPteLock<'t, 'a> {
    table: &'t mut DetachedPteTable<'a>,
    /// Whether this value took the lock (else the table held it already), and releases it.
    taken: bool,
}

impl DetachedPteLock<'_, '_> {
    /// Pointer to entry `i`, clamped to the last entry.
    #[inline]
    fn entry(&self, i: usize) -> *mut bindings::pte_t {
        self.table.entry(i)
    }

    /// Whether entry `i` is none (maps nothing, not even a swap entry).
    #[inline]
    pub fn is_none(&self, i: usize) -> bool {
        // SAFETY: The entry is mapped and only we can change it; the predicate only inspects
        // the value.
        unsafe { bindings::pte_none(bindings::ptep_get(self.entry(i))) }
    }

    /// Lets KSM uncount entry `i` if it maps a zero page KSM placed, before it is cleared.
    /// C: `ksm_might_unmap_zero_page()`.
    #[inline]
    pub fn ksm_unmap_zero_page(&self, i: usize) {
        // SAFETY: The entry is mapped and locked; `mm` is valid (type invariants).
        unsafe {
            bindings::ksm_might_unmap_zero_page(
                self.table.mm.as_ptr(),
                bindings::ptep_get(self.entry(i)),
            )
        };
    }

    /// Clears `nr` entries from entry `first` (within the table), which the caller has accounted
    /// for: the rmap and references of the pages they map are the caller's to drop. Only one
    /// range can be cleared; later calls do nothing and return `false`. C: `clear_ptes()`.
    pub fn clear(&mut self, first: usize, nr: usize) -> bool {
        let t = &mut *self.table;
        if t.cleared.0 != t.cleared.1 || nr == 0 || first + nr > PTRS_PER_PTE {
            return false;
        }
        if let Some(h) = &t.held {
            if first < h.taken.0 || first + nr > h.taken.1 {
                return false;
            }
            // INVARIANT: Entries `first .. first + nr` are none in the table since `take()`,
            // which cleared them; they stay so.
            t.cleared = (first, first + nr);
            return true;
        }
        // SAFETY: The entries are in the table, locked (type invariants), and only we can reach
        // them; nothing maps through them once the TLB was flushed by the detach.
        unsafe {
            bindings::clear_ptes(
                t.mm.as_ptr(),
                t.haddr + first * PAGE_SIZE,
                t.entry(first),
                nr as u32,
            )
        };
        // INVARIANT: Entries `first .. first + nr` are cleared.
        t.cleared = (first, first + nr);
        true
    }
}

impl Drop for DetachedPteLock<'_, '_> {
    fn drop(&mut self) {
        if self.taken {
            // SAFETY: By the type invariants the lock is held, taken by this value.
            unsafe { bindings::spin_unlock(self.table.ptl) };
        }
    }
}

/// Frees a page table taken out of its PMD entry (RCU-deferred: lockless walkers that still
/// see it stay safe).
///
/// # Safety
///
/// `table` must be the old value of a PMD entry of `mm` for the range at `addr`, cleared and
/// flushed by the caller, pointing to a page table with no entries in use that nothing else
/// can reach any more.
unsafe fn free_detached(mm: *mut bindings::mm_struct, addr: usize, table: bindings::pmd_t) {
    // SAFETY: By the function's safety requirements: the table is `mm`'s, empty and
    // unreachable.
    unsafe {
        bindings::mm_dec_nr_ptes(mm);
        bindings::page_table_check_pte_clear_range(mm, addr, table);
        free_replaced(mm, table);
    }
}

/// Frees, after an RCU grace period, a page table taken out of its PMD entry for which a
/// [`NewPteTable`] was deposited: `mm`'s count of page tables stays as it is.
///
/// # Safety
///
/// As for [`free_detached`]; every entry of the table was cleared with the page-table check's
/// accounting (`clear_ptes()`).
unsafe fn free_replaced(mm: *mut bindings::mm_struct, table: bindings::pmd_t) {
    // SAFETY: By the function's safety requirements: the table is `mm`'s, empty and
    // unreachable; `pte_free_defer()` frees it after an RCU grace period, which lockless
    // walkers (GUP-fast with interrupts off, `pte_offset_map()` under `rcu_read_lock()`) hold
    // off.
    unsafe { bindings::pte_free_defer(mm, bindings::pmd_pgtable(table)) };
}

/// A VMA whose page tables stay allocated, but whose other fields may change: reached through
/// its file's reverse map (`mapping->i_mmap`) under the file's i_mmap lock, without its mm's
/// mmap lock, or a [`VmaRef`] (under the mmap lock).
///
/// # Invariants
///
/// The VMA is valid, and its page tables are not freed, for as long as the reference is.
#[repr(transparent)]
pub struct RmapVma {
    vma: Opaque<bindings::vm_area_struct>,
}

impl RmapVma {
    /// The VMA at `vma`.
    ///
    /// # Safety
    ///
    /// `vma` must be valid for `'a`, and its page tables must stay allocated for `'a`: the
    /// caller holds the i_mmap lock of its file (or its mm's mmap lock) for `'a`.
    pub unsafe fn from_raw<'a>(vma: *const bindings::vm_area_struct) -> &'a Self {
        // SAFETY: `RmapVma` is a transparent wrapper of the VMA, valid for `'a` (safety
        // requirements).
        unsafe { &*vma.cast() }
    }

    /// The VMA of `vma`, whose mmap lock keeps it and its page tables.
    pub fn of(vma: &VmaRef) -> &Self {
        // SAFETY: The mmap lock is held while `vma` is borrowed (type invariants of `VmaRef`).
        unsafe { Self::from_raw(vma.as_ptr()) }
    }

    /// The raw VMA, for C functions.
    #[inline]
    pub fn as_ptr(&self) -> *mut bindings::vm_area_struct {
        self.vma.get()
    }

    /// Its mm (which may be exiting).
    fn mm_ptr(&self) -> *mut bindings::mm_struct {
        // SAFETY: The VMA is valid (type invariants), and `vm_mm` never changes.
        unsafe { (*self.as_ptr()).vm_mm }
    }
}

/// Removes the empty page table of the PMD range at `addr` of `vma`, a file VMA, after a
/// collapse in the page cache, if `retractable` still holds under the page-table locks.
/// Returns whether it did. Page faults will map the range with a PMD. May sleep (mmu
/// notifiers). C: the body of `retract_page_tables()`.
///
/// # Safety
///
/// - The mm of `vma` must be alive.
/// - `addr` must be PMD-aligned, with the PMD range inside the VMA.
/// - The page table must stay empty: the caller holds the lock of the folio of the page cache
///   that every fault in the range maps, and `retractable` rules out what inserts entries
///   without it (an anon_vma for CoW copies, uffd-wp markers, guard regions).
pub unsafe fn retract_empty_table(
    vma: &RmapVma,
    addr: usize,
    retractable: impl Fn() -> bool,
) -> bool {
    let mm = vma.mm_ptr();
    // SAFETY: The page tables stay allocated (type invariants of `RmapVma`).
    let pmdp = unsafe { bindings::mm_find_pmd(mm, addr) };
    // SAFETY: `pmdp`, when not NULL, is an entry of those page tables.
    if pmdp.is_null() || classify(unsafe { bindings::pmdp_get_lockless(pmdp) }) != PmdState::Table {
        return false;
    }
    // SAFETY: `mm` is alive (safety requirements).
    let notifier = unsafe { MmuNotifierClear::start(mm, addr, addr + PMD_SIZE) };
    let mut table = None;
    // SAFETY: `pmdp` is an entry of `mm`'s page tables, kept allocated. Under its lock the
    // entry is checked again to point to a table (the old empty table may have been freed and
    // replaced by another, empty as well: either can go); the PTE lock, nested, serializes
    // against what installs entries or guard markers, and `retractable` is checked again
    // under it. `pmdp_collapse_flush()` clears the entry and flushes the TLB.
    unsafe {
        let pml = bindings::pmd_lock(mm, pmdp);
        if classify(bindings::pmdp_get_lockless(pmdp)) == PmdState::Table {
            let ptl = bindings::pte_lockptr(mm, pmdp);
            if ptl != pml {
                bindings::spin_lock_nested(ptl, bindings::SINGLE_DEPTH_NESTING as i32);
            }
            if retractable() {
                table = Some(bindings::pmdp_collapse_flush(vma.as_ptr(), addr, pmdp));
                bindings::pmdp_get_lockless_sync();
            }
            if ptl != pml {
                bindings::spin_unlock(ptl);
            }
        }
        bindings::spin_unlock(pml);
    }
    drop(notifier);
    match table {
        Some(t) => {
            // SAFETY: The entry held `t`, an empty table (safety requirements), cleared and
            // flushed above.
            unsafe { free_detached(mm, addr, t) };
            true
        }
        None => false,
    }
}

/// The PMD entry of a PMD range and the page table of PTEs it points to, both locked (the PTE
/// lock nested in the PMD lock, unless they are one lock), under the mmap lock: the entries can
/// be cleared and then the table removed. Dropping it unlocks both.
///
/// # Invariants
///
/// - The mmap lock of `mm` is held for `'a`; `*pmdp` points to the table, mapped at `pte`
///   (`pte_offset_map_rw_nolock()`, with the RCU read lock), of the range at `haddr`.
/// - `pml` (the PMD lock) and `ptl` (the table's lock) are held, once if they are the same.
pub struct PmdTableLocked<'a> {
    mm: NonNull<bindings::mm_struct>,
    pmdp: NonNull<bindings::pmd_t>,
    haddr: usize,
    pte: *mut bindings::pte_t,
    pml: *mut bindings::spinlock_t,
    ptl: *mut bindings::spinlock_t,
    _pmd: PhantomData<PmdEntry<'a>>,
}

impl<'a> PmdTableLocked<'a> {
    /// Locks `pmd`, the entry of the PMD range at `haddr`, and the page table it points to;
    /// `None` if it no longer points to one. C: `pmd_lock()`, `pte_offset_map_rw_nolock()`.
    pub fn lock(pmd: PmdEntry<'a>, haddr: usize) -> Option<Self> {
        let haddr = haddr & !(PMD_SIZE - 1);
        let (mm, pmdp) = (pmd.mm.as_ptr(), pmd.pmdp.as_ptr());
        let mut pgt_pmd = bindings::pmd_t::default();
        let mut ptl = ptr::null_mut();
        // SAFETY: By the type invariants of `PmdEntry` the entry is alive under the mmap lock.
        // Under the PMD lock the table it points to cannot be removed; it is mapped, its lock
        // nested, and the entry checked to be unchanged since it was read.
        unsafe {
            let pml = bindings::pmd_lock(mm, pmdp);
            let pte = bindings::pte_offset_map_rw_nolock(mm, pmdp, haddr, &mut pgt_pmd, &mut ptl);
            if pte.is_null() {
                bindings::spin_unlock(pml);
                return None;
            }
            if ptl != pml {
                bindings::spin_lock_nested(ptl, bindings::SINGLE_DEPTH_NESTING as i32);
            }
            if bindings::pmdp_get_lockless(pmdp).pmd != pgt_pmd.pmd {
                if ptl != pml {
                    bindings::spin_unlock(ptl);
                }
                bindings::spin_unlock(pml);
                bindings::pte_unmap(pte);
                return None;
            }
            // INVARIANT: Both locks held, the table mapped, under the mmap lock of `pmd`.
            Some(Self {
                mm: pmd.mm,
                pmdp: pmd.pmdp,
                haddr,
                pte,
                pml,
                ptl,
                _pmd: PhantomData,
            })
        }
    }

    /// The value of entry `i` (clamped to the last entry); stable while the locks are held.
    #[inline]
    fn get(&self, i: usize) -> bindings::pte_t {
        // SAFETY: By the type invariants the table is mapped and locked.
        unsafe { bindings::ptep_get(self.pte.add(i.min(PTRS_PER_PTE - 1))) }
    }

    /// Whether entry `i` (clamped to the last entry) is none: maps nothing, not even a swap
    /// entry. C: `pte_none()`.
    #[inline]
    pub fn is_none(&self, i: usize) -> bool {
        // SAFETY: The predicate only inspects the value.
        unsafe { bindings::pte_none(self.get(i)) }
    }

    /// The normal page that entry `i` (clamped to the last entry) of the table maps in `vma`,
    /// or `None` for a none, non-present or special entry. The page is stable while the locks
    /// are held. C: `pte_present()`, `vm_normal_page()`.
    pub fn normal_page(&self, vma: &VmaRef, i: usize) -> Option<NonNull<bindings::page>> {
        let i = i.min(PTRS_PER_PTE - 1);
        let pte = self.get(i);
        // SAFETY: The predicate only inspects the value.
        if !unsafe { bindings::pte_present(pte) } {
            return None;
        }
        // SAFETY: The table is locked and maps the range at `haddr`, which `vma` covers (the
        // caller found the table through it); the page is only returned.
        NonNull::new(unsafe {
            bindings::vm_normal_page(vma.as_ptr(), self.haddr + i * PAGE_SIZE, pte)
        })
    }

    /// Clears `nr` entries from entry `first` (within the table); the rmap and references of
    /// what they mapped are the caller's to drop, and the TLB flush is left to
    /// [`PmdTableLocked::remove`] (or the caller). C: `clear_ptes()`.
    pub fn clear(&mut self, first: usize, nr: usize) {
        if nr == 0 || first + nr > PTRS_PER_PTE {
            return;
        }
        // SAFETY: The entries are in the table, which is locked (type invariants).
        unsafe {
            bindings::clear_ptes(
                self.mm.as_ptr(),
                self.haddr + first * PAGE_SIZE,
                self.pte.add(first),
                nr as u32,
            )
        };
    }

    /// Removes the table from the PMD entry (flushing the TLB for the range), unlocks, and
    /// frees it, if every entry is none (cleared by the caller, say). Otherwise changes
    /// nothing but the locks, released, and returns `false`. C: `pmdp_collapse_flush()`,
    /// `pte_free_defer()`.
    pub fn remove(self, vma: &VmaRef) -> bool {
        if (0..PTRS_PER_PTE).any(|i| !self.is_none(i)) {
            return false;
        }
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: Both locks are held over the entry and its table (type invariants), whose
        // entries are all none (checked above); `vma` covers the range. The table
        // goes from the entry, the locks are released once (`this` is never dropped), and the
        // table is freed after lockless walkers could see the change.
        unsafe {
            let table = bindings::pmdp_collapse_flush(vma.as_ptr(), this.haddr, this.pmdp.as_ptr());
            bindings::pmdp_get_lockless_sync();
            this.unlock();
            free_detached(this.mm.as_ptr(), this.haddr, table);
        }
        true
    }

    /// Releases both locks and unmaps the table.
    ///
    /// # Safety
    ///
    /// Called once, after which the value must be forgotten.
    unsafe fn unlock(&self) {
        // SAFETY: By the type invariants both locks are held and the table mapped.
        unsafe {
            if self.ptl != self.pml {
                bindings::spin_unlock(self.ptl);
            }
            bindings::spin_unlock(self.pml);
            bindings::pte_unmap(self.pte);
        }
    }
}

impl Drop for PmdTableLocked<'_> {
    fn drop(&mut self) {
        // SAFETY: Drop runs once.
        unsafe { self.unlock() };
    }
}

/// An mmu notifier range (clear) over a PMD range, started under the mmap lock it cannot
/// outlive: secondary MMUs drop their mappings of the range. Dropping it ends the range.
pub struct PmdClearNotifier<'a> {
    _range: MmuNotifierClear,
    _lock: PhantomData<&'a ()>,
}

impl<'a> PmdClearNotifier<'a> {
    /// Starts the range over the PMD range at `haddr` of the mm that `lock` holds. May sleep.
    pub fn start<L: MmapLocked + ?Sized>(lock: &'a L, haddr: usize) -> Self {
        let haddr = haddr & !(PMD_SIZE - 1);
        // SAFETY: The mmap lock is held (trait guarantee), so the mm stays valid for `'a`,
        // which bounds the value.
        let range =
            unsafe { MmuNotifierClear::start(lock.locked_mm().as_raw(), haddr, haddr + PMD_SIZE) };
        Self {
            _range: range,
            _lock: PhantomData,
        }
    }
}

/// A watch on the page tables of a range of an mm: tells whether anything invalidated the
/// range for secondary MMUs since the watch began (an unmap, a write-protection, a migration,
/// a swap-out: every change that takes a permission or a page away), other than the
/// changes made through a [`WriteProtect`] it owns. Dropping it ends the watch; that may
/// sleep.
///
/// A range whose present entries were write-protected, and was not invalidated since, maps
/// the same pages with the same data: a write must first fault the entry writable again,
/// and taking that back is an invalidation. C: `mmu_interval_notifier_insert()` and
/// `mmu_interval_read_begin()`.
///
/// # Invariants
///
/// `watch.sub` is inserted in the interval tree of the mm it was created for (or in its
/// deferred list) until the value drops; `watch.seq` is what `mmu_interval_read_begin()`
/// returned for it.
#[cfg(CONFIG_MMU_NOTIFIER)]
pub struct RangeWatch {
    watch: KBox<Watch>,
}

/// The subscription of a [`RangeWatch`], at a stable address.
#[cfg(CONFIG_MMU_NOTIFIER)]
struct Watch {
    sub: Opaque<bindings::mmu_interval_notifier>,
    seq: usize,
}

/// The notifier operations of every [`RangeWatch`].
#[cfg(CONFIG_MMU_NOTIFIER)]
static RANGE_WATCH_OPS: bindings::mmu_interval_notifier_ops = bindings::mmu_interval_notifier_ops {
    invalidate: Some(range_watch_invalidate),
    invalidate_start: None,
    invalidate_finish: None,
};

/// Notes an invalidation of a watched range, unless the watch itself owns it.
///
/// # Safety
///
/// Called by the mmu notifier core, with a subscription of a [`RangeWatch`] and a valid range.
#[cfg(CONFIG_MMU_NOTIFIER)]
unsafe extern "C" fn range_watch_invalidate(
    sub: *mut bindings::mmu_interval_notifier,
    range: *const bindings::mmu_notifier_range,
    cur_seq: usize,
) -> bool {
    // SAFETY: `range` is valid for the call (the function's safety requirements).
    let owner = unsafe { (*range).owner };
    if !ptr::eq(owner.cast_const(), sub.cast_const().cast()) {
        // SAFETY: `sub` is the subscription being notified; the core holds what the call
        // needs. Nothing sleeps, so the answer is yes even for a non-blocking range.
        unsafe { bindings::mmu_interval_set_seq(sub, cur_seq) };
    }
    true
}

#[cfg(CONFIG_MMU_NOTIFIER)]
impl RangeWatch {
    /// Starts watching `[start, end)` of `mm`, which must have users (`mmget()`). The first
    /// watch of an mm registers it for mmu notifiers. May sleep; the caller must not hold
    /// `mm`'s mmap lock.
    pub fn new(mm: &crate::mm::Mm, start: usize, end: usize) -> Result<Self> {
        if start >= end {
            return Err(EINVAL);
        }
        let watch = KBox::new(
            Watch {
                sub: Opaque::zeroed(),
                seq: 0,
            },
            crate::alloc::flags::GFP_KERNEL,
        )?;
        // The registration asserts that the mm has users; keep one for the call.
        let user = mm.mmget_not_zero().ok_or(EINVAL)?;
        // SAFETY: `sub` is zeroed, at a stable address (boxed) until it is removed in `drop`;
        // the mm has users (held above) and its mmap lock is not held (the function's
        // requirements); the operations are static.
        to_result(unsafe {
            bindings::mmu_interval_notifier_insert(
                watch.sub.get(),
                user.as_raw(),
                start,
                end - start,
                &RANGE_WATCH_OPS,
            )
        })?;
        drop(user);
        let mut watch = watch;
        // SAFETY: Inserted above; waits for an invalidation in progress, if any.
        watch.seq = unsafe { bindings::mmu_interval_read_begin(watch.sub.get()) };
        // INVARIANT: Inserted, and `seq` read after the insertion.
        Ok(Self { watch })
    }

    /// Whether anything but this watch's own [`WriteProtect`] invalidated the range since
    /// the watch began.
    #[inline]
    pub fn invalidated(&self) -> bool {
        // SAFETY: By the type invariants the subscription is inserted and `seq` is its.
        unsafe { bindings::mmu_interval_check_retry(self.watch.sub.get(), self.watch.seq) }
    }

    /// The owner of the changes the watch does not report.
    fn owner(&self) -> *mut c_void {
        self.watch.sub.get().cast()
    }
}

#[cfg(CONFIG_MMU_NOTIFIER)]
impl Drop for RangeWatch {
    fn drop(&mut self) {
        // SAFETY: By the type invariants the subscription is inserted; after the call no
        // callback runs for it any more, and the box can go.
        unsafe { bindings::mmu_interval_notifier_remove(self.watch.sub.get()) };
    }
}

// SAFETY: The subscription is only touched through the mmu notifier core, which locks it,
// from any thread.
#[cfg(CONFIG_MMU_NOTIFIER)]
unsafe impl Send for RangeWatch {}

/// The write-protection of the present entries of a range of a VMA's PTEs, for the CPUs and
/// for secondary MMUs, so that the pages they map can be read (copied) while the process
/// runs: a write to one of them faults and makes the entry writable again. Dropping it ends
/// the mmu notifier range. C: what `copy_present_pte()` does for a COW mapping, and
/// `write_protect_page()` in KSM.
#[cfg(CONFIG_MMU_NOTIFIER)]
pub struct WriteProtect<'a> {
    _range: MmuNotifierClear,
    vma: &'a VmaRef,
    start: usize,
    end: usize,
}

#[cfg(CONFIG_MMU_NOTIFIER)]
impl<'a> WriteProtect<'a> {
    /// Starts the write-protection of `[start, end)` of `vma`, within one PMD range, under
    /// `lock`, on behalf of `watch`, which does not count it as an invalidation. Returns
    /// `None` if the range is not in `vma` and one PMD range, or `vma` not of `lock`'s mm.
    /// May sleep.
    pub fn start<L: MmapLocked + ?Sized>(
        lock: &'a L,
        vma: &'a VmaRef,
        start: usize,
        end: usize,
        watch: &RangeWatch,
    ) -> Option<Self> {
        let mm = lock.locked_mm().as_raw();
        if !ptr::eq(vma.mm().as_raw(), mm)
            || start >= end
            || start < vma.start()
            || end > vma.end()
            || (end - 1) & !(PMD_SIZE - 1) != start & !(PMD_SIZE - 1)
        {
            return None;
        }
        // SAFETY: The mmap lock of `mm` is held for `'a`, which bounds the value.
        let range = unsafe {
            MmuNotifierClear::start_owned(
                mm,
                start,
                end,
                bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_PAGE,
                watch.owner(),
            )
        };
        Some(Self {
            _range: range,
            vma,
            start,
            end,
        })
    }

    /// Write-protects the present, writable entries of `table`, the page table of the range,
    /// that fall in it, and flushes the TLB if any changed. Returns how many changed, and
    /// passes the index in `table` of each to `protected`. The dirty, soft-dirty and uffd-wp
    /// bits stay as they are.
    pub fn protect(
        &self,
        table: &mut PteTableLocked<'_>,
        mut protected: impl FnMut(usize),
    ) -> usize {
        const WORD: usize = crate::ffi::c_ulong::BITS as usize;
        let haddr = self.start & !(PMD_SIZE - 1);
        let first = (self.start - haddr) / PAGE_SIZE;
        let end = (self.end - haddr).div_ceil(PAGE_SIZE).min(PTRS_PER_PTE);
        if first >= end {
            return 0;
        }
        let mm = self.vma.mm().as_raw();
        // One bit per entry of the table, set by C for each entry it changed.
        let mut bits: [crate::ffi::c_ulong; PTRS_PER_PTE / WORD] = [0; PTRS_PER_PTE / WORD];
        // SAFETY: Entries `first .. end` are in the table (`end` is clamped to it), mapped and
        // locked (`table`), and map `haddr + first * PAGE_SIZE` on in `mm`; only present
        // entries are changed, atomically, as `copy_present_pte()` does; `bits` has a bit for
        // each entry of the table.
        let changed = unsafe {
            bindings::wrprotect_present_ptes(
                mm,
                haddr + first * PAGE_SIZE,
                table.entry(first),
                first as u32,
                (end - first) as u32,
                bits.as_mut_ptr(),
            )
        } as usize;
        for (w, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                protected(w * WORD + word.trailing_zeros() as usize);
                word &= word - 1;
            }
        }
        if changed > 0 {
            // SAFETY: The VMA is alive under the mmap lock (`'a`); the range is in it.
            unsafe { bindings::flush_tlb_range(self.vma.as_ptr(), self.start, self.end) };
        }
        changed
    }
}

#[cfg(CONFIG_RUST_MM_KUNIT_TEST)]
#[macros::kunit_tests(rust_mm_pgtable)]
mod tests {
    use super::*;
    use crate::{
        mm::{
            mmap_lock::MmapReadLock,
            test_mm::{facts, mmap_lock_held, page_folio, OtherMm, ShmemFile, TestMm, PAGE},
        },
        prelude::*,
    };

    /// The index, in its page table, of the entry that maps `addr`.
    fn idx(addr: usize) -> usize {
        (addr & (PMD_SIZE - 1)) / PAGE
    }

    /// What the PMD entry covering `addr` holds, if the upper levels reach down to it.
    fn state<L: MmapLocked>(lock: &L, addr: usize) -> Option<PmdState> {
        PmdEntry::find(lock, addr).map(|p| p.state())
    }

    /// Maps a PMD range in `t` with pages 0 and 5 written ([`marks_kept`] reads them back), and
    /// returns its address.
    fn marked_range(t: &TestMm) -> Result<usize> {
        let p = t.map_pmd_range()?;
        t.write(p, b"page zero")?;
        t.write(p + 5 * PAGE, b"page five")?;
        Ok(p)
    }

    /// Whether pages 0 and 5 of the range at `p` in `t` hold what [`marked_range`] wrote.
    fn marks_kept(t: &TestMm, p: usize) -> Result<bool> {
        let mut zero = [0u8; 9];
        let mut five = [0u8; 9];
        t.read(p, &mut zero)?;
        t.read(p + 5 * PAGE, &mut five)?;
        Ok(&zero == b"page zero" && &five == b"page five")
    }

    /// What [`DetachedPteTable::install_pmd`] of `huge` and `fresh` into `table`, the table of
    /// the PMD range at `p` of `t`, came to.
    struct HugeInstall {
        /// Whether it went through.
        installed: bool,
        /// The PMD entry's state after.
        state: Option<PmdState>,
        /// The table the PMD entry deposited after.
        deposited: Option<*mut bindings::page>,
        /// The mm's page-table bytes before and after.
        bytes: (usize, usize),
    }

    /// Installs `huge` into `table` (see [`HugeInstall`]), `lock` held, counting the folio in
    /// the RSS as the collapse does.
    fn install_huge(
        t: &TestMm,
        lock: &MmapWriteLock<'_>,
        p: usize,
        (table, huge, fresh): (DetachedPteTable<'_>, NewFolio, NewPteTable<'_>),
    ) -> HugeInstall {
        // SAFETY: The mm is alive while `t` is.
        let before = unsafe { bindings::mm_pgtables_bytes(t.mm().as_raw()) };
        let installed = table.install_pmd(huge, fresh).is_ok();
        if installed {
            // `map_anon_folio_pmd_nopf()` leaves the RSS counter to its caller.
            t.count_anon(PTRS_PER_PTE as isize);
        }
        let deposited = PmdEntry::find(lock, p).map(|pmd| {
            // SAFETY: The entry maps a huge folio (or not: then the pointer is only compared),
            // under the mmap write lock, which keeps its deposited table.
            unsafe { bindings::pmd_deposited_table(t.mm().as_raw(), pmd.pmdp.as_ptr()) }
        });
        HugeInstall {
            installed,
            state: state(lock, p),
            deposited,
            // SAFETY: As above.
            bytes: (before, unsafe {
                bindings::mm_pgtables_bytes(t.mm().as_raw())
            }),
        }
    }

    /// A new mm has no page tables below the top level; the first fault makes a PMD entry that
    /// points to a page table of PTEs.
    #[test]
    fn pmd_entry_before_and_after_first_fault() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(4 * PAGE)?;
        let lock = MmapReadLock::lock(t.mm());
        let before = state(&lock, a);
        drop(lock);
        t.write(a + 2 * PAGE, b"fault")?;
        let lock = MmapReadLock::lock(t.mm());
        let after = state(&lock, a);
        drop(lock);
        assert!(before.is_none() || before == Some(PmdState::None));
        assert_eq!(after, Some(PmdState::Table));
        Ok(())
    }

    /// A locked page table shows which pages are mapped, entry by entry, and clamps indexes.
    #[test]
    fn pte_table_locked_present_and_absent() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_pmd_range()?;
        t.write(a, b"page 0")?;
        t.write(a + 2 * PAGE, b"page 2")?;
        let i = idx(a);
        let lock = MmapReadLock::lock(t.mm());
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let table = PteTableLocked::lock(pmd, a).ok_or(EINVAL)?;
        let none = [
            table.is_none(i),
            table.is_none(i + 1),
            table.is_none(i + 2),
            table.is_none(i + 3),
        ];
        let clamped = table.entry(PTRS_PER_PTE + 7) == table.entry(PTRS_PER_PTE - 1);
        let stride = table.entry(i + 1) as usize - table.entry(i) as usize;
        // A run of entries only inside the table.
        let runs = [
            table.entries(i, 4) == Some(table.entry(i)),
            table.entries(0, PTRS_PER_PTE).is_some(),
            table.entries(PTRS_PER_PTE - 1, 2).is_none(),
            table.entries(usize::MAX, 2).is_none(),
        ];
        drop(table);
        drop(lock);
        assert_eq!(none, [false, true, false, true]);
        assert!(clamped);
        assert_eq!(runs, [true; 4]);
        assert_eq!(stride, core::mem::size_of::<bindings::pte_t>());
        Ok(())
    }

    /// A page table mapped without its lock tells non-present entries (a guard marker here)
    /// from present and none ones; a swap-in of a marker fails with the mmap lock still held,
    /// and one through a VMA that does not cover the entry fails without faulting.
    #[test]
    fn pte_table_mapped_non_present_entries() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_pmd_range()?;
        // Droppable: a VMA of its own, which cannot merge with the other.
        let elsewhere = t.map_droppable(PAGE)?;
        t.write(a, b"page 0")?;
        t.madvise(a + PAGE, PAGE, bindings::MADV_GUARD_INSTALL)?;
        let i = idx(a);
        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let other_vma = lock.find_vma(elsewhere).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let table = PteTableMapped::map(pmd, a).ok_or(EINVAL)?;
        let swap = [table.is_swap(i), table.is_swap(i + 1), table.is_swap(i + 2)];
        let entry = table.non_present(i + 1).ok_or(EINVAL)?;
        let marker = table.swap_in(vma, entry);
        let held_after_marker = mmap_lock_held(t.mm());
        let table = PteTableMapped::map(pmd, a).ok_or(EINVAL)?;
        let entry = table.non_present(i + 1).ok_or(EINVAL)?;
        let outside = table.swap_in(other_vma, entry);
        let table = PteTableMapped::map(pmd, a).ok_or(EINVAL)?;
        let still_marker = table.is_swap(i + 1);
        drop(table);
        drop(lock);
        assert_eq!(swap, [false, true, false]);
        assert_eq!(marker, SwapInFault::Failed);
        assert!(held_after_marker);
        assert_eq!(outside, SwapInFault::Failed);
        assert!(still_marker);
        Ok(())
    }

    /// A fault starts from an entry read from the table it is given: an entry read from
    /// another page table is refused without faulting.
    #[test]
    fn pte_table_mapped_swap_in_refuses_another_tables_entry() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_pmd_range()?;
        let b = t.map_pmd_range()?;
        for addr in [a, b] {
            t.write(addr, b"page 0")?;
            t.madvise(addr + PAGE, PAGE, bindings::MADV_GUARD_INSTALL)?;
        }
        let lock = MmapReadLock::lock(t.mm());
        let vma_b = lock.find_vma(b).ok_or(EINVAL)?;
        let pmd_a = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let pmd_b = PmdEntry::find(&lock, b).ok_or(EINVAL)?;
        let from_a = PteTableMapped::map(pmd_a, a)
            .and_then(|table| table.non_present(idx(a) + 1))
            .ok_or(EINVAL)?;
        let table_b = PteTableMapped::map(pmd_b, b).ok_or(EINVAL)?;
        let fault = table_b.swap_in(vma_b, from_a);
        let held = mmap_lock_held(t.mm());
        drop(lock);
        assert_eq!(fault, SwapInFault::Failed);
        assert!(held);
        Ok(())
    }

    /// Under the PMD and PTE locks, an entry's normal page is the page GUP finds at its
    /// address, and an absent entry has none.
    #[test]
    fn pmd_table_locked_normal_page() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_pmd_range()?;
        t.write(a, b"page 0")?;
        let i = idx(a);
        let lock = MmapReadLock::lock(t.mm());
        let gup = crate::mm::test_mm::UserPage::get(&lock, a)?;
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let table = PmdTableLocked::lock(pmd, a).ok_or(EINVAL)?;
        let present = table.normal_page(vma, i);
        let absent = table.normal_page(vma, i + 1);
        let none = [table.is_none(i), table.is_none(i + 1)];
        drop(table);
        let expected = gup.page();
        drop(gup);
        drop(lock);
        assert_eq!(present, Some(expected));
        assert!(absent.is_none());
        assert_eq!(none, [false, true]);
        Ok(())
    }

    /// Whether entries `i .. i + 4` of `table` are writable.
    fn writable(table: &PteTableLocked<'_>, i: usize) -> [bool; 4] {
        // SAFETY: The entries are mapped and their lock held (`table`).
        core::array::from_fn(|k| unsafe {
            bindings::pte_write(bindings::ptep_get(table.entry(i + k))) != 0
        })
    }

    /// A write-protection on behalf of a watch changes the present writable entries of its
    /// range and names each, and is no invalidation for that watch; a write faults the entry
    /// writable again without one (`wp_page_reuse()`); an `MADV_DONTNEED` is one. Ranges
    /// outside the VMA or empty are refused.
    #[test]
    fn write_protect_under_own_range_watch() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_pmd_range()?;
        t.write(a, b"page 0")?;
        t.write(a + 2 * PAGE, b"page 2")?;
        let i = idx(a);
        let watch = RangeWatch::new(t.mm(), a, a + 4 * PAGE)?;
        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let refused = [
            WriteProtect::start(&lock, vma, a, a, &watch).is_none(),
            WriteProtect::start(&lock, vma, a - PAGE, a + PAGE, &watch).is_none(),
        ];
        let wp = WriteProtect::start(&lock, vma, a, a + 4 * PAGE, &watch).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let mut table = PteTableLocked::lock(pmd, a).ok_or(EINVAL)?;
        let before = writable(&table, i);
        let mut named = [usize::MAX; 4];
        let mut n = 0;
        let changed = wp.protect(&mut table, |j| {
            if let Some(slot) = named.get_mut(n) {
                *slot = j;
            }
            n += 1;
        });
        let after = writable(&table, i);
        let again = wp.protect(&mut table, |_| {});
        drop(table);
        drop(wp);
        drop(lock);
        let quiet = !watch.invalidated();
        t.write(a, b"page 0 again")?;
        let lock = MmapReadLock::lock(t.mm());
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let table = PteTableLocked::lock(pmd, a).ok_or(EINVAL)?;
        let rewritten = writable(&table, i);
        drop(table);
        drop(lock);
        let quiet_after_write = !watch.invalidated();
        t.madvise(a + 2 * PAGE, PAGE, bindings::MADV_DONTNEED)?;
        let seen = watch.invalidated();
        drop(watch);
        assert_eq!(refused, [true, true]);
        assert_eq!(before, [true, false, true, false]);
        assert_eq!((changed, n), (2, 2));
        assert_eq!(named, [i, i + 2, usize::MAX, usize::MAX]);
        assert_eq!(after, [false; 4]);
        assert_eq!(again, 0);
        assert!(quiet);
        assert_eq!(rewritten, [true, false, false, false]);
        assert!(quiet_after_write);
        assert!(seen);
        Ok(())
    }

    /// `remove()` leaves a table that maps pages alone, and takes an empty one out of its PMD
    /// entry, after which a fault builds a new one.
    #[test]
    fn pmd_table_remove_only_when_empty() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_pmd_range()?;
        t.write(a, b"busy")?;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let removed_busy = PmdTableLocked::lock(pmd, a).map(|tbl| tbl.remove(vma));
        let state_busy = state(&lock, a);
        drop(lock);

        t.madvise(a, 4 * PAGE, bindings::MADV_DONTNEED)?;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let state_empty = pmd.state();
        let removed_empty = PmdTableLocked::lock(pmd, a).map(|tbl| tbl.remove(vma));
        let state_removed = state(&lock, a);
        drop(lock);

        t.write(a, b"again")?;
        let mut back = [0u8; 5];
        t.read(a, &mut back)?;
        let lock = MmapReadLock::lock(t.mm());
        let state_refaulted = state(&lock, a);
        drop(lock);

        assert_eq!(removed_busy, Some(false));
        assert_eq!(state_busy, Some(PmdState::Table));
        assert_eq!(state_empty, PmdState::Table);
        assert_eq!(removed_empty, Some(true));
        assert_eq!(state_removed, Some(PmdState::None));
        assert_eq!(&back, b"again");
        assert_eq!(state_refaulted, Some(PmdState::Table));
        Ok(())
    }

    /// A detached table leaves the PMD entry none, still holds its entries, and goes back
    /// as it was when dropped: the data is there again.
    #[test]
    fn detach_and_put_back() -> Result {
        let t = TestMm::attach()?;
        let p = marked_range(&t)?;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let anon = AnonVmaWriteGuard::lock(&lock, vma).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;
        let mut table = DetachedPteTable::detach(&lock, &anon, vma, pmd, p, p + PMD_SIZE);
        let detached = table.is_some();
        let state_detached = state(&lock, p);
        let none = table.as_mut().map(|tbl| {
            let locked = tbl.lock();
            [locked.is_none(0), locked.is_none(1), locked.is_none(5)]
        });
        drop(table);
        let state_back = state(&lock, p);
        drop(anon);
        drop(lock);

        let kept = marks_kept(&t, p)?;
        assert!(detached);
        assert_eq!(state_detached, Some(PmdState::None));
        assert_eq!(none, Some([false, true, false]));
        assert_eq!(state_back, Some(PmdState::Table));
        assert!(kept);
        Ok(())
    }

    /// Entries taken out of a table leave the PMD entry pointing to it and the table's
    /// entries none, are read back from the snapshot, and go back exactly as they were (the
    /// hardware's dirty bit too) when the value drops: the data is there again.
    #[test]
    fn take_and_put_back() -> Result {
        let t = TestMm::attach()?;
        let p = marked_range(&t)?;
        let saved = PteSnapshot::new()?;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let anon = AnonVmaWriteGuard::lock(&lock, vma).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;
        let before = PteTableLocked::lock(pmd, p)
            .map(|tbl| {
                // SAFETY: The entries are mapped and locked.
                [0, 1, 5].map(|i| unsafe { bindings::ptep_get(tbl.entry(i)) }.pte)
            })
            .ok_or(EINVAL)?;
        let mut table =
            DetachedPteTable::take(&lock, &anon, vma, pmd, (p, p + PMD_SIZE), saved, None)
                .ok_or(EINVAL)?;
        let held = table.is_held();
        let state_taken = state(&lock, p);
        // SAFETY: The table's entries are mapped and locked by `table`.
        let in_table = [0, 1, 5]
            .map(|i| unsafe { bindings::pte_none(bindings::ptep_get(table.table_entry(i))) });
        let none = {
            let locked = table.lock();
            [locked.is_none(0), locked.is_none(1), locked.is_none(5)]
        };
        // SAFETY: The snapshot's entries, read only.
        let seen = [0, 1, 5].map(|i| unsafe { bindings::ptep_get(table.entry(i)) }.pte);
        drop(table);
        let after = PteTableLocked::lock(pmd, p)
            .map(|tbl| {
                // SAFETY: The entries are mapped and locked.
                [0, 1, 5].map(|i| unsafe { bindings::ptep_get(tbl.entry(i)) }.pte)
            })
            .ok_or(EINVAL)?;
        drop(anon);
        drop(lock);

        let kept = marks_kept(&t, p)?;
        assert!(held);
        assert_eq!(state_taken, Some(PmdState::Table));
        assert_eq!(in_table, [true, true, true]);
        assert_eq!(none, [false, true, false]);
        assert_eq!(seen, before);
        assert_eq!(after, before);
        assert!(kept);
        Ok(())
    }

    /// A table whose entries were all taken out and cleared goes from its PMD entry straight to
    /// a huge mapping: the new folio's data is mapped, the new table deposited, and the mm's
    /// page-table bytes unchanged (the old table freed). Part of a table taken out maps a
    /// smaller folio with PTEs in the same table, its other entries untouched.
    #[test]
    fn take_and_install() -> Result {
        let t = TestMm::attach()?;
        let p = t.map_pmd_range()?;
        let q = t.map_pmd_range()?;
        // Page tables with no page in the ranges taken: the caller of `clear()` would account
        // for the pages.
        t.write(p, b"x")?;
        t.madvise(p, PAGE, bindings::MADV_DONTNEED)?;
        t.write(q + 40 * PAGE, b"q forty")?;
        let order = crate::mm::thp::PMD_ORDER;
        let mut huge = NewFolio::alloc(GFP_TRANSHUGE, order, None)?;
        huge.charge(t.mm(), GFP_KERNEL)?;
        for n in 0..PTRS_PER_PTE {
            huge.clear_user_page(n, p + n * PAGE);
        }
        // SAFETY: Page 9 of the folio, which only `huge` can reach.
        unsafe { crate::mm::test_mm::write_page(huge.first_page().add(9), b"huge page 9") };
        let mut small = NewFolio::alloc(GFP_KERNEL, 4, None)?;
        small.charge(t.mm(), GFP_KERNEL)?;
        for n in 0..16 {
            small.clear_user_page(n, q + (16 + n) * PAGE);
        }
        // SAFETY: Page 1 of the folio, which only `small` can reach.
        unsafe { crate::mm::test_mm::write_page(small.first_page().add(1), b"small one") };
        let fresh = NewPteTable::alloc(t.mm(), true)?;
        let fresh_table = fresh.table;
        let snapshots = [PteSnapshot::new()?, PteSnapshot::new()?];
        let [saved_p, saved_q] = snapshots;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let anon = AnonVmaWriteGuard::lock(&lock, vma).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;
        let mut table =
            DetachedPteTable::take(&lock, &anon, vma, pmd, (p, p + PMD_SIZE), saved_p, None)
                .ok_or(EINVAL)?;
        let cleared = table.lock().clear(0, PTRS_PER_PTE);
        let done = install_huge(&t, &lock, p, (table, huge, fresh));
        // The two ranges may share a VMA, and so its anon_vma lock.
        drop(anon);

        let qvma = lock.find_vma(q).ok_or(EINVAL)?;
        let qanon = AnonVmaWriteGuard::lock(&lock, qvma);
        let qpmd = PmdEntry::find(&lock, q).ok_or(EINVAL)?;
        let part = qanon.as_ref().and_then(|qanon| {
            let range = (q + 16 * PAGE, q + 32 * PAGE);
            DetachedPteTable::take(&lock, qanon, qvma, qpmd, range, saved_q, None)
        });
        let part = part.map(|mut tbl| {
            let cleared = tbl.lock().clear(16, 16);
            (cleared, tbl.install_ptes(small).is_ok())
        });
        if part.is_some_and(|(_, installed)| installed) {
            t.count_anon(16);
        }
        let state_q = state(&lock, q);
        drop(qanon);
        drop(lock);

        let mut nine = [0u8; 11];
        let mut one = [0u8; 9];
        let mut forty = [0u8; 7];
        t.read(p + 9 * PAGE, &mut nine)?;
        t.read(q + 17 * PAGE, &mut one)?;
        t.read(q + 40 * PAGE, &mut forty)?;
        assert!(cleared);
        assert!(done.installed);
        assert_eq!(done.state, Some(PmdState::Huge));
        assert_eq!(done.deposited, Some(fresh_table.as_ptr()));
        assert_eq!(done.bytes.1, done.bytes.0);
        assert_eq!(&nine, b"huge page 9");
        assert_eq!(part, Some((true, true)));
        assert_eq!(state_q, Some(PmdState::Table));
        assert_eq!(&one, b"small one");
        assert_eq!(&forty, b"q forty");
        Ok(())
    }

    /// `detach()` refuses ranges that leave the PMD range or are empty, and VMAs that do not
    /// cover the whole PMD range, changing nothing.
    #[test]
    fn detach_refuses_bad_ranges() -> Result {
        let t = TestMm::attach()?;
        let p = t.map_pmd_range()?;
        // Droppable: a VMA of its own, which cannot merge with the other.
        let small = t.map_droppable(4 * PAGE)?;
        t.write(p, b"pmd range")?;
        t.write(small, b"small")?;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let small_vma = lock.find_vma(small).ok_or(EINVAL)?;
        let anon = AnonVmaWriteGuard::lock(&lock, vma).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;
        let small_pmd = PmdEntry::find(&lock, small).ok_or(EINVAL)?;
        let past_end =
            DetachedPteTable::detach(&lock, &anon, vma, pmd, p, p + PMD_SIZE + PAGE).is_some();
        let empty = DetachedPteTable::detach(&lock, &anon, vma, pmd, p + PAGE, p + PAGE).is_some();
        let small_range =
            DetachedPteTable::detach(&lock, &anon, small_vma, small_pmd, small, small + PAGE)
                .is_some();
        let states = [state(&lock, p), state(&lock, small)];
        drop(anon);
        drop(lock);
        let mut back = [0u8; 9];
        t.read(p, &mut back)?;
        assert!(!past_end);
        assert!(!empty);
        assert!(!small_range);
        assert_eq!(states, [Some(PmdState::Table), Some(PmdState::Table)]);
        assert_eq!(&back, b"pmd range");
        Ok(())
    }

    /// `install_ptes()` maps a new folio, filled from a page of the detached table, at the
    /// entry cleared for it; it refuses a folio whose size does not match the cleared entries.
    #[test]
    fn install_ptes_maps_new_folio() -> Result {
        let t = TestMm::attach()?;
        let p = t.map_pmd_range()?;
        t.write(p, b"copied page")?;
        let mut folio = NewFolio::alloc(GFP_KERNEL, 0, None)?;
        folio.charge(t.mm(), GFP_KERNEL)?;
        let wrong = NewFolio::alloc(GFP_KERNEL, 1, None)?;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let anon = AnonVmaWriteGuard::lock(&lock, vma).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;

        let mut table =
            DetachedPteTable::detach(&lock, &anon, vma, pmd, p, p + PMD_SIZE).ok_or(EINVAL)?;
        let cleared = table.lock().clear(1, 1);
        let refused = table.install_ptes(wrong).is_err();

        let mut table =
            DetachedPteTable::detach(&lock, &anon, vma, pmd, p, p + PMD_SIZE).ok_or(EINVAL)?;
        // SAFETY: Entry 0 is mapped (the table's entries are), and only the detached table can
        // change it; `vm_normal_page()` only reads it.
        let src = NonNull::new(unsafe {
            bindings::vm_normal_page(vma.as_ptr(), p, bindings::ptep_get(table.entry(0)))
        });
        // SAFETY: `src` is mapped by the detached table, which nothing else can reach: it stays
        // valid and unwritten during the copy.
        let copied = src.map(|src| unsafe { folio.copy_mc_user_page(0, src, p, vma) });
        let (first, second) = {
            let mut locked = table.lock();
            (locked.clear(1, 1), locked.clear(2, 1))
        };
        let installed = table.install_ptes(folio).is_ok();
        if installed {
            // `map_anon_folio_pte_nopf()` leaves the RSS counter to its caller.
            t.count_anon(1);
        }
        let state_after = state(&lock, p);
        drop(anon);
        drop(lock);

        let mut back = [0u8; 11];
        t.read(p + PAGE, &mut back)?;
        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;
        let tbl = PmdTableLocked::lock(pmd, p).ok_or(EINVAL)?;
        let pages = (tbl.normal_page(vma, 0), tbl.normal_page(vma, 1));
        // SAFETY: The page is mapped by the locked table.
        let new_facts = pages.1.map(|pg| unsafe { facts(page_folio(pg)) });
        drop(tbl);
        drop(lock);

        assert!(cleared);
        assert!(refused);
        assert_eq!(copied, Some(Ok(())));
        assert!(first);
        assert!(!second);
        assert!(installed);
        assert_eq!(state_after, Some(PmdState::Table));
        assert_eq!(&back, b"copied page");
        assert!(pages.0.is_some() && pages.1.is_some() && pages.0 != pages.1);
        assert_eq!(new_facts.map(|f| f.mapcount), Some(1));
        Ok(())
    }

    /// `install_pmd()` refuses a folio that is not of the PMD order and a table whose entries
    /// were not all cleared, and maps a PMD-order folio with the PMD entry once they were,
    /// depositing the new table it is given (the mm's page-table bytes unchanged: the old one
    /// is freed, not leaked).
    #[test]
    fn install_pmd_maps_huge_folio() -> Result {
        let t = TestMm::attach()?;
        let p = t.map_pmd_range()?;
        t.write(p, b"x")?;
        t.madvise(p, PAGE, bindings::MADV_DONTNEED)?;
        let order = crate::mm::thp::PMD_ORDER;
        let mut huge = NewFolio::alloc(GFP_TRANSHUGE, order, None)?;
        huge.charge(t.mm(), GFP_KERNEL)?;
        for n in 0..PTRS_PER_PTE {
            huge.clear_user_page(n, p + n * PAGE);
        }
        // SAFETY: Page 7 of the folio, which only `huge` can reach.
        unsafe { crate::mm::test_mm::write_page(huge.first_page().add(7), b"huge page 7") };
        let small = NewFolio::alloc(GFP_KERNEL, 0, None)?;
        // Allocated before the detaches: a detached table holds the RCU read lock.
        let fresh = [(); 3].map(|()| NewPteTable::alloc(t.mm(), true));
        let [Ok(fresh_small), Ok(fresh_uncleared), Ok(fresh)] = fresh else {
            return Err(ENOMEM);
        };
        let fresh_table = fresh.table;

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let anon = AnonVmaWriteGuard::lock(&lock, vma).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;
        let detach = || DetachedPteTable::detach(&lock, &anon, vma, pmd, p, p + PMD_SIZE);

        let mut table = detach().ok_or(EINVAL)?;
        let cleared_all = table.lock().clear(0, PTRS_PER_PTE);
        let small_refused = table.install_pmd(small, fresh_small).is_err();
        let state_small = state(&lock, p);

        let table = detach().ok_or(EINVAL)?;
        let huge = match table.install_pmd(huge, fresh_uncleared) {
            Err(huge) => huge,
            Ok(()) => return Err(EINVAL),
        };
        let state_uncleared = state(&lock, p);

        let mut table = detach().ok_or(EINVAL)?;
        let cleared = table.lock().clear(0, PTRS_PER_PTE);
        let done = install_huge(&t, &lock, p, (table, huge, fresh));
        drop(anon);
        drop(lock);

        let mut seven = [0u8; 11];
        let mut zero = [0xffu8; 8];
        t.read(p + 7 * PAGE, &mut seven)?;
        t.read(p + 100 * PAGE, &mut zero)?;
        assert!(cleared_all);
        assert!(small_refused);
        assert_eq!(state_small, Some(PmdState::Table));
        assert_eq!(state_uncleared, Some(PmdState::Table));
        assert!(cleared);
        assert!(done.installed);
        assert_eq!(done.state, Some(PmdState::Huge));
        assert_eq!(done.deposited, Some(fresh_table.as_ptr()));
        assert_eq!(done.bytes.1, done.bytes.0);
        assert_eq!(&seven, b"huge page 7");
        assert_eq!(zero, [0u8; 8]);
        Ok(())
    }

    /// The empty page table of a shmem mapping is retracted only if `retractable` says so; the
    /// data stays in the page cache, and the next fault maps it again.
    #[test]
    fn retract_empty_table_of_shmem_mapping() -> Result {
        let t = TestMm::attach()?;
        let file = ShmemFile::new(2 * PMD_SIZE)?;
        let a = t.map_shared(&file, 2 * PMD_SIZE, 0)?;
        let p = (a + PMD_SIZE - 1) & !(PMD_SIZE - 1);
        t.write(p, b"shmem data")?;
        t.madvise(p, PAGE, bindings::MADV_DONTNEED)?;

        let lock = MmapReadLock::lock(t.mm());
        let vma = RmapVma::of(lock.find_vma(p).ok_or(EINVAL)?);
        let state_empty = state(&lock, p);
        // SAFETY: The mmap lock keeps the page tables; `p` is PMD-aligned with its PMD range in
        // the VMA; nothing else maps into this mm's empty table meanwhile.
        let kept = unsafe { retract_empty_table(vma, p, || false) };
        let state_kept = state(&lock, p);
        // SAFETY: As above.
        let retracted = unsafe { retract_empty_table(vma, p, || true) };
        let state_retracted = state(&lock, p);
        drop(lock);

        let mut back = [0u8; 10];
        t.read(p, &mut back)?;
        assert_eq!(state_empty, Some(PmdState::Table));
        assert!(!kept);
        assert_eq!(state_kept, Some(PmdState::Table));
        assert!(retracted);
        assert_eq!(state_retracted, Some(PmdState::None));
        assert_eq!(&back, b"shmem data");
        Ok(())
    }

    /// `detach()` and `swap_in()` refuse a VMA of another mm.
    #[test]
    fn refuse_vma_of_other_mm() -> Result {
        let t = TestMm::attach()?;
        let other = OtherMm::new(&t)?;
        let p = t.map_pmd_range()?;
        t.write(p, b"home")?;
        t.madvise(p + PAGE, PAGE, bindings::MADV_GUARD_INSTALL)?;
        let b = other.with(&t, || -> Result<usize> {
            let b = t.map_pmd_range()?;
            t.write(b, b"other")?;
            Ok(b)
        })?;
        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let anon = AnonVmaWriteGuard::lock(&lock, vma).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;
        // A trylock: the two mmap locks are of one lock class, which lockdep would not nest.
        let other_lock = MmapReadLock::try_lock(other.mm());
        let other_vma = other_lock.as_ref().and_then(|o| o.find_vma(b));
        let detached = other_vma
            .map(|ov| DetachedPteTable::detach(&lock, &anon, ov, pmd, b, b + PMD_SIZE).is_some());
        let swap_in = other_vma
            .zip(PteTableMapped::map(pmd, p))
            .and_then(|(ov, tbl)| {
                let entry = tbl.non_present(idx(p) + 1)?;
                Some(tbl.swap_in(ov, entry))
            });
        let state_home = state(&lock, p);
        drop(other_lock);
        drop(anon);
        drop(lock);
        assert_eq!(detached, Some(false));
        assert_eq!(swap_in, Some(SwapInFault::Failed));
        assert_eq!(state_home, Some(PmdState::Table));
        // The home mm's page is still there.
        let mut back = [0u8; 4];
        t.read(p, &mut back)?;
        assert_eq!(&back, b"home");
        Ok(())
    }
}
