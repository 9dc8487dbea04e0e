// SPDX-License-Identifier: GPL-2.0

//! PMD entries and page tables of PTEs, under the locks that keep them alive.
//!
//! A [`PmdEntry`] is found under the mmap lock ([`MmapLocked`]) and cannot outlive it; a
//! [`PteTableLocked`] is a page table of PTEs mapped and locked (its PTE spinlock held), which
//! cannot outlive the [`PmdEntry`] it was found through.
//!
//! C headers: [`include/linux/pgtable.h`](srctree/include/linux/pgtable.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h)

use crate::{bindings, mm::mmap_lock::MmapLocked};
use core::{
    marker::PhantomData,
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
        let pmd = unsafe { bindings::pmdp_get_lockless(self.pmdp.as_ptr()) };
        // SAFETY: The PMD predicates only inspect the value.
        unsafe {
            if bindings::pmd_none(pmd) {
                PmdState::None
            } else if bindings::pmd_is_migration_entry(pmd) {
                PmdState::Huge
            } else if !bindings::pmd_present(pmd) {
                PmdState::None
            } else if bindings::pmd_trans_huge(pmd) {
                PmdState::Huge
            } else if bindings::pmd_bad(pmd) {
                PmdState::None
            } else {
                PmdState::Table
            }
        }
    }

    /// The raw entry pointer, for C functions that need it while the mmap lock is held.
    pub fn as_ptr(self) -> *mut bindings::pmd_t {
        self.pmdp.as_ptr()
    }
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
        let start = addr & !(PMD_SIZE - 1);
        let mut ptl = ptr::null_mut();
        // SAFETY: By the type invariants of `PmdEntry` the entry is alive; the function rechecks
        // it and fails if it does not point to a page table.
        let pte = unsafe {
            bindings::pte_offset_map_lock(pmd.mm.as_ptr(), pmd.as_ptr(), start, &mut ptl)
        };
        if pte.is_null() {
            return None;
        }
        // INVARIANT: The table is mapped (under RCU) from its first entry, and `ptl` is held.
        Some(Self {
            pte,
            ptl,
            _pmd: PhantomData,
        })
    }

    /// Pointer to entry `i`, clamped to the last entry; stable while the lock is held.
    pub fn entry(&self, i: usize) -> *mut bindings::pte_t {
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
