// SPDX-License-Identifier: GPL-2.0

//! A file's page cache, as a collapse in it needs it: the entries of a range, read without
//! locks; a walk of the range ([`PageCacheState`]) and its cursor, unlocked or locked (the
//! xarray lock, with interrupts disabled); the
//! folios of the range, locked, then isolated and unmapped; the new folio that replaces them.
//!
//! The lock order is: folio lock, then i_mmap lock (read), then the xarray lock. Nothing here
//! sleeps while the xarray lock is held: [`PageCacheLocked`] is given up (back to a
//! [`PageCacheCursor`]) around every call that may sleep.
//!
//! C headers: [`include/linux/pagemap.h`](srctree/include/linux/pagemap.h),
//! [`include/linux/xarray.h`](srctree/include/linux/xarray.h),
//! [`mm/khugepaged_internal.h`](srctree/mm/khugepaged_internal.h)

use core::{marker::PhantomData, mem::ManuallyDrop, ptr::NonNull};
use kernel::{
    alloc::KVec,
    bindings,
    error::{
        code::{EAGAIN, ENOMEM},
        to_result, Result,
    },
    fs::File,
    mm::{folio::NewFolio, pgtable::RmapVma, Mm},
};

/// The page cache of a file (`struct address_space`), borrowed for `'a`.
///
/// # Invariants
///
/// `ptr` points to a mapping that stays valid for `'a`.
#[derive(Clone, Copy)]
pub(crate) struct Mapping<'a> {
    ptr: NonNull<bindings::address_space>,
    _file: PhantomData<&'a File>,
}

impl<'a> Mapping<'a> {
    /// The page cache of `file` (every open file has one).
    #[inline]
    pub(crate) fn of(file: &'a File) -> Option<Self> {
        // SAFETY: `file` is a valid file; `f_mapping` is set at open and never changes.
        let ptr = unsafe { (*file.as_ptr()).f_mapping };
        // INVARIANT: The file's reference keeps its mapping alive for `'a`.
        NonNull::new(ptr).map(|ptr| Self {
            ptr,
            _file: PhantomData,
        })
    }

    /// The raw mapping.
    #[inline]
    pub(crate) fn as_ptr(self) -> *mut bindings::address_space {
        self.ptr.as_ptr()
    }

    /// Whether its dirty folios are written back (not shmem). C: `mapping_can_writeback()`.
    #[inline]
    pub(crate) fn can_writeback(self) -> bool {
        // SAFETY: The mapping is valid (type invariants).
        unsafe { bindings::mapping_can_writeback(self.as_ptr()) }
    }

    /// Writes back `nr` pages from `index` on and waits for the writeback. May sleep.
    /// C: `filemap_write_and_wait_range()`.
    pub(crate) fn write_and_wait(self, index: usize, nr: u32) -> Result {
        let start = (index as i64) << kernel::page::PAGE_SHIFT;
        let end = start + (i64::from(nr) << kernel::page::PAGE_SHIFT) - 1;
        // SAFETY: The mapping is valid (type invariants).
        to_result(unsafe { bindings::filemap_write_and_wait_range(self.as_ptr(), start, end) })
    }

    /// Starts the writeback of the whole file unless someone has it open for writing.
    /// C: `filemap_flush()`, if not `inode_is_open_for_write()`.
    pub(crate) fn flush_unless_writers(self) {
        // SAFETY: The mapping is valid (type invariants), and so is its inode.
        unsafe {
            if !bindings::inode_is_open_for_write((*self.as_ptr()).host) {
                // A failure shows as dirty folios later: nothing to do with it here.
                bindings::filemap_flush(self.as_ptr());
            }
        }
    }

    /// Reads the entries from `*index` to `last`, at most `out.len()` of them, without locks;
    /// advances `*index` past the last one read, or past `last` if the range ended. Returns
    /// the number read (fewer than `out.len()` only when the range ended).
    pub(crate) fn read_entries(
        self,
        index: &mut usize,
        last: usize,
        out: &mut [PageCacheEntry],
    ) -> usize {
        let nr = u32::try_from(out.len()).unwrap_or(u32::MAX);
        // SAFETY: The mapping is valid (type invariants); `out` has room for `nr` entries, and
        // `PageCacheEntry` is a transparent wrapper of the C struct.
        let n = unsafe {
            bindings::thp_collapse_read_page_cache(
                self.as_ptr(),
                index,
                last,
                out.as_mut_ptr().cast(),
                nr,
            )
        };
        n as usize
    }
}

/// One entry of the page cache as [`Mapping::read_entries`] read it, a moment ago.
#[repr(transparent)]
#[derive(Clone, Copy, Default)]
pub(crate) struct PageCacheEntry(bindings::thp_collapse_pc_entry);

impl PageCacheEntry {
    /// The pages it covers.
    #[inline]
    pub(crate) fn nr_pages(&self) -> usize {
        self.0.nr
    }

    /// Whether it is a swap (or shadow) entry, not a folio.
    #[inline]
    pub(crate) fn is_value(&self) -> bool {
        self.0.flags & bindings::thp_collapse_pc_flags_THP_PC_VALUE != 0
    }

    /// The facts of its folio that the scan decides on: [`FolioFacts::lru`],
    /// [`FolioFacts::pmd_order`] and [`FolioFacts::refs_beyond_expected`]; the others read as
    /// "no" (meaningless for a value entry).
    #[inline]
    pub(crate) fn facts(&self) -> FolioFacts {
        FolioFacts {
            flags: self.0.flags,
            refs: clamp_refs(self.0.refs),
        }
    }

    /// The folio's first pfn, or `usize::MAX` for a value entry.
    #[inline]
    pub(crate) fn pfn(&self) -> usize {
        self.0.pfn
    }

    /// The NUMA node of its folio (`NUMA_NO_NODE` for a value).
    #[inline]
    pub(crate) fn nid(&self) -> i32 {
        self.0.nid
    }
}

/// Which facts [`FolioFacts`] reads beyond the page flags (the others read as "no").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Read {
    /// Whether it still belongs to the mapping ([`FolioFacts::other_mapping`]).
    pub(crate) mapping: bool,
    /// Its reference count ([`FolioFacts::refs_beyond_expected`]).
    pub(crate) refs: bool,
    /// Whether page tables map it ([`FolioFacts::mapped`]).
    pub(crate) mapped: bool,
}

impl Read {
    fn bits(self) -> u32 {
        let mut what = 0;
        if self.mapping {
            what |= bindings::thp_collapse_pc_read_THP_PC_READ_MAPPING;
        }
        if self.refs {
            what |= bindings::thp_collapse_pc_read_THP_PC_READ_REFS;
        }
        if self.mapped {
            what |= bindings::thp_collapse_pc_read_THP_PC_READ_MAPPED;
        }
        what
    }
}

/// Reads the facts `read` asks for of `folio`.
///
/// # Safety
///
/// `folio` must stay valid during the call (referenced, or under the xarray lock).
unsafe fn read_facts(
    folio: NonNull<bindings::folio>,
    mapping: Mapping<'_>,
    read: Read,
) -> FolioFacts {
    let mut refs = 0;
    // SAFETY: By the function's safety requirements; the mapping is valid.
    let flags = unsafe {
        bindings::thp_collapse_pc_folio_facts(
            folio.as_ptr(),
            mapping.as_ptr(),
            read.bits(),
            &mut refs,
        )
    };
    FolioFacts {
        flags,
        refs: clamp_refs(refs),
    }
}

/// A reference count difference as the facts keep it (reference counts are C `int`s).
fn clamp_refs(refs: isize) -> i32 {
    i32::try_from(refs).unwrap_or(i32::MAX)
}

/// What a collapse needs to know about a folio of the page cache, read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FolioFacts {
    flags: u32,
    refs: i32,
}

impl FolioFacts {
    fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// Its contents are valid. C: `folio_test_uptodate()`.
    pub(crate) fn uptodate(&self) -> bool {
        self.has(bindings::thp_collapse_pc_flags_THP_PC_UPTODATE)
    }

    /// It is dirty or under writeback.
    pub(crate) fn dirty_or_writeback(&self) -> bool {
        self.has(bindings::thp_collapse_pc_flags_THP_PC_DIRTY)
            || self.has(bindings::thp_collapse_pc_flags_THP_PC_WRITEBACK)
    }

    /// It is dirty. C: `folio_test_dirty()`.
    pub(crate) fn dirty(&self) -> bool {
        self.has(bindings::thp_collapse_pc_flags_THP_PC_DIRTY)
    }

    /// It is under writeback. C: `folio_test_writeback()`.
    pub(crate) fn writeback(&self) -> bool {
        self.has(bindings::thp_collapse_pc_flags_THP_PC_WRITEBACK)
    }

    /// It is a folio of the PMD order.
    pub(crate) fn pmd_order(&self) -> bool {
        self.has(bindings::thp_collapse_pc_flags_THP_PC_PMD_ORDER)
    }

    /// It belongs to another mapping now (it was truncated). C: `folio_mapping()`.
    pub(crate) fn other_mapping(&self) -> bool {
        self.has(bindings::thp_collapse_pc_flags_THP_PC_OTHER_MAPPING)
    }

    /// It is on an LRU list. C: `folio_test_lru()`.
    pub(crate) fn lru(&self) -> bool {
        self.has(bindings::thp_collapse_pc_flags_THP_PC_LRU)
    }

    /// Page tables map it; read with [`Read::mapped`], else "no". C: `folio_mapped()`.
    pub(crate) fn mapped(&self) -> bool {
        self.has(bindings::thp_collapse_pc_flags_THP_PC_MAPPED)
    }

    /// References beyond the page cache's, its mappings' and the reader's:
    /// `folio_ref_count() - folio_expected_ref_count()`, the reader's reference included.
    pub(crate) fn refs_beyond_expected(&self) -> isize {
        self.refs as isize
    }
}

/// What a page cache index holds, read under the xarray lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Nothing: a hole.
    Empty,
    /// A swap or shadow entry.
    Value,
    /// A hole a collapse is filling (`XA_RETRY_ENTRY`).
    Retry,
    /// A folio, valid while the xarray lock is held, and its page-flag facts (no [`Read`]
    /// extras), read with it.
    Folio(NonNull<bindings::folio>, FolioFacts),
}

/// Converts what the glue classified.
fn slot(kind: bindings::thp_collapse_slot, folio: *mut bindings::folio, flags: u32) -> Slot {
    match kind {
        bindings::thp_collapse_slot_THP_SLOT_VALUE => Slot::Value,
        bindings::thp_collapse_slot_THP_SLOT_RETRY => Slot::Retry,
        bindings::thp_collapse_slot_THP_SLOT_FOLIO => NonNull::new(folio)
            .map_or(Slot::Empty, |f| {
                Slot::Folio(f, FolioFacts { flags, refs: 0 })
            }),
        _ => Slot::Empty,
    }
}

/// The state of a walk of the page cache of a mapping (C's `struct xa_state`): where it is,
/// and the nodes it found. It stays in place while [`PageCacheCursor`] and [`PageCacheLocked`]
/// (one pointer each) hand it from the unlocked to the locked state and back.
///
/// # Invariants
///
/// `xas` is an xarray state on the page cache of a mapping that stays valid for `'m`.
pub(crate) struct PageCacheState<'m> {
    xas: bindings::xa_state,
    _mapping: PhantomData<Mapping<'m>>,
}

impl<'m> PageCacheState<'m> {
    /// A state at `index` of `mapping`.
    pub(crate) fn new(mapping: Mapping<'m>, index: usize) -> Self {
        let mut xas = bindings::xa_state::default();
        // SAFETY: `xas` is valid for writes; the mapping is valid for `'m`.
        unsafe { bindings::thp_collapse_xas_init(&mut xas, mapping.as_ptr(), index) };
        // INVARIANT: Initialized on the mapping's page cache above.
        Self {
            xas,
            _mapping: PhantomData,
        }
    }

    /// The cursor of the walk, with the xarray unlocked.
    pub(crate) fn cursor(&mut self) -> PageCacheCursor<'_> {
        PageCacheCursor { xas: &mut self.xas }
    }
}

/// A position in the page cache of a mapping, with the xarray unlocked.
///
/// # Invariants
///
/// `xas` is the state of a [`PageCacheState`], on a valid xarray.
pub(crate) struct PageCacheCursor<'a> {
    xas: &'a mut bindings::xa_state,
}

impl<'a> PageCacheCursor<'a> {
    /// Takes the xarray lock. C: `xas_lock_irq()`.
    pub(crate) fn lock(self) -> PageCacheLocked<'a> {
        // SAFETY: By the type invariants `xas` is on a valid xarray.
        unsafe { bindings::xas_lock_irq(self.xas) };
        // INVARIANT: Locked above.
        PageCacheLocked {
            cursor: ManuallyDrop::new(self),
        }
    }

    /// Makes room in the xarray for every index of the naturally aligned range of `order` that
    /// starts at the cursor (allocating, with the lock dropped, as needed), and returns with
    /// the xarray locked. May sleep. Fails with `ENOMEM`, unlocked.
    /// C: `xas_create_range()` and `xas_nomem()`.
    pub(crate) fn create_range(self, order: u32) -> Result<PageCacheLocked<'a>, Self> {
        let index = self.xas.xa_index;
        loop {
            // SAFETY: As above; the lock is taken here and released below on failure, and
            // `xas_nomem()` allocates with the lock released.
            unsafe {
                bindings::xas_set_order(self.xas, index, order);
                bindings::xas_lock_irq(self.xas);
                bindings::xas_create_range(self.xas);
                if bindings::xas_error(self.xas) == 0 {
                    break;
                }
                bindings::xas_unlock_irq(self.xas);
                if !bindings::xas_nomem(self.xas, bindings::GFP_KERNEL) {
                    return Err(self);
                }
            }
        }
        // INVARIANT: Locked above, with room for every index of the range.
        Ok(PageCacheLocked {
            cursor: ManuallyDrop::new(self),
        })
    }
}

/// A [`PageCacheCursor`] with the xarray lock held (interrupts disabled). Nothing may sleep
/// while it exists; dropping it, or [`PageCacheLocked::unlock`], releases the lock.
///
/// # Invariants
///
/// The xarray lock of `cursor`'s xarray is held by this thread.
pub(crate) struct PageCacheLocked<'a> {
    cursor: ManuallyDrop<PageCacheCursor<'a>>,
}

impl<'a> PageCacheLocked<'a> {
    fn xas(&mut self) -> *mut bindings::xa_state {
        &raw mut *self.cursor.xas
    }

    /// Releases the lock, keeping the position. C: `xas_unlock_irq()`.
    pub(crate) fn unlock(self) -> PageCacheCursor<'a> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: The lock is held (type invariants); `this` is never dropped, so it is
        // released once; the cursor is moved out once.
        unsafe {
            bindings::xas_unlock_irq(this.xas());
            ManuallyDrop::take(&mut this.cursor)
        }
    }

    /// What index `index` holds (with a folio's page flags, read in the same call); moves the
    /// cursor there. C: `xas_set()`, `xas_load()`.
    pub(crate) fn load(&mut self, index: usize) -> Slot {
        let mut folio = core::ptr::null_mut();
        let mut flags = 0;
        // SAFETY: The lock is held (type invariants); `folio` and `flags` are valid for writes.
        let kind =
            unsafe { bindings::thp_collapse_xas_load(self.xas(), index, &mut folio, &mut flags) };
        slot(kind, folio, flags)
    }

    /// The common case of one index of a collapse, in one call into C: if `index` holds a
    /// folio of `mapping` that needs nothing but locking, checking and isolating (uptodate,
    /// smaller than the PMD order, neither dirty nor under writeback for a file other than
    /// shmem, its lock free), locks it, takes it off the LRU, releases its private data and
    /// unmaps it (as [`LockedFolio::isolate`]), and returns it with the facts that the caller
    /// checks next (references, dirty bit), read once the xarray lock was taken again.
    /// `None`, with nothing changed, for anything else: the caller takes the steps one by one.
    /// The xarray is locked on return either way, but may have been released in between.
    /// May sleep. C: `thp_collapse_pc_take()`.
    pub(crate) fn take_plain(
        &mut self,
        index: usize,
        mapping: Mapping<'_>,
        backing: Backing,
    ) -> Option<Taken> {
        let mut t = bindings::thp_collapse_pc_taken::default();
        // SAFETY: The lock is held (type invariants); the mapping is valid; `t` is valid for
        // writes.
        let took = unsafe {
            bindings::thp_collapse_pc_take(
                self.xas(),
                mapping.as_ptr(),
                index,
                backing.is_shmem(),
                &mut t,
            )
        };
        if !took {
            return None;
        }
        // INVARIANT: On success the glue hands over a folio it locked, referenced, isolated
        // and unmapped.
        let folio = IsolatedFolio {
            folio: NonNull::new(t.folio)?,
        };
        Some(Taken {
            folio,
            facts: FolioFacts {
                flags: t.flags,
                refs: clamp_refs(t.refs),
            },
            next: t.index.saturating_add(t.nr),
        })
    }

    /// Whether any index after the cursor, up to `last`, holds an entry.
    /// C: `xas_next_entry()`.
    pub(crate) fn any_entry_until(&mut self, last: usize) -> bool {
        // SAFETY: As above.
        !unsafe { bindings::xas_next_entry(self.xas(), last) }.is_null()
    }

    /// Marks the (empty) index at the cursor as being filled by a collapse
    /// (`XA_RETRY_ENTRY`): lockless readers retry, and nobody else fills it. Fails with
    /// `ENOMEM` if the xarray could not store it.
    pub(crate) fn store_retry(&mut self) -> Result {
        // SAFETY: As above. `XA_RETRY_ENTRY` is the internal entry 256.
        let err = unsafe {
            bindings::xas_store(self.xas(), bindings::xa_mk_internal(256));
            bindings::xas_error(self.xas())
        };
        match err {
            0 => Ok(()),
            _ => Err(ENOMEM),
        }
    }

    /// Empties the index at the cursor again (after [`PageCacheLocked::store_retry`]).
    pub(crate) fn store_empty(&mut self) {
        // SAFETY: As above.
        unsafe { bindings::xas_store(self.xas(), core::ptr::null_mut()) };
    }
}

impl Drop for PageCacheLocked<'_> {
    fn drop(&mut self) {
        // SAFETY: The lock is held (type invariants) and released once, here.
        unsafe { bindings::xas_unlock_irq(self.xas()) };
    }
}

/// A folio of the page cache, locked by this thread, with a reference of ours: truncation and
/// new mappings of it wait until it is unlocked. Dropping it unlocks it and drops the
/// reference.
///
/// # Invariants
///
/// `folio` is locked by this thread and we own one reference to it.
pub(crate) struct LockedFolio {
    folio: NonNull<bindings::folio>,
}

impl LockedFolio {
    /// Wraps a folio the caller locked and referenced.
    ///
    /// # Safety
    ///
    /// `folio` must be locked by this thread, with a reference the caller hands over.
    unsafe fn adopt(folio: *mut bindings::folio) -> Option<Self> {
        // INVARIANT: By the function's safety requirements.
        NonNull::new(folio).map(|folio| Self { folio })
    }

    /// Locks `folio`, which `locked` found, without waiting, and takes a reference; `None` if
    /// someone else holds its lock. C: `folio_trylock()`, `folio_get()`.
    pub(crate) fn trylock(
        folio: NonNull<bindings::folio>,
        _locked: &PageCacheLocked<'_>,
    ) -> Option<Self> {
        // SAFETY: The folio is in the page cache, whose lock is held: it stays valid, and the
        // reference keeps it so once the lock is released.
        if unsafe { bindings::folio_trylock(folio.as_ptr()) } {
            // SAFETY: As above.
            unsafe { bindings::folio_get(folio.as_ptr()) };
            // INVARIANT: Locked and referenced above.
            Some(Self { folio })
        } else {
            None
        }
    }

    /// The shmem folio at `index` of `mapping`, swapped in (or instantiated, if fallocated)
    /// if need be, locked; `None` if there is none. May sleep. C: `shmem_get_folio()`.
    pub(crate) fn shmem_get(mapping: Mapping<'_>, index: usize) -> Option<Self> {
        let mut folio = core::ptr::null_mut();
        // SAFETY: The mapping and its inode are valid. `SGP_NOALLOC` instantiates nothing that
        // is not there; on success the folio is locked and referenced.
        let ret = unsafe {
            bindings::shmem_get_folio(
                (*mapping.as_ptr()).host,
                index,
                0,
                &mut folio,
                bindings::sgp_type_SGP_NOALLOC,
            )
        };
        if ret != 0 {
            return None;
        }
        // Drains this CPU's LRU batches, which may hold the folio just swapped in: it could
        // not be isolated otherwise.
        // SAFETY: Always safe to call; may sleep, as this function may.
        unsafe { bindings::lru_add_drain() };
        // SAFETY: Locked and referenced by `shmem_get_folio()`.
        unsafe { Self::adopt(folio) }
    }

    /// The folio at `index` of `file`, read (ahead up to `end`) if need be, locked. May sleep.
    /// C: `page_cache_sync_readahead()` (or, with [`ReadWait::Try`],
    /// `filemap_invalidate_trylock_shared()` and `page_cache_ra_unbounded()`),
    /// `filemap_lock_folio()`.
    pub(crate) fn read(
        file: &File,
        index: usize,
        end: usize,
        wait: ReadWait,
    ) -> Result<Self, ReadError> {
        // SAFETY: The file is valid; the glue returns a locked, referenced folio or an
        // `ERR_PTR`.
        let folio = unsafe {
            bindings::thp_collapse_file_read_locked(
                file.as_ptr(),
                index,
                end,
                matches!(wait, ReadWait::Try),
            )
        };
        match kernel::error::from_err_ptr(folio) {
            // SAFETY: Not an error: locked and referenced, and the reference is ours.
            Ok(folio) => unsafe { Self::adopt(folio) }.ok_or(ReadError::Failed),
            Err(e) if e == EAGAIN => Err(ReadError::Contended),
            Err(_) => Err(ReadError::Failed),
        }
    }

    /// The folio at `index` of `mapping`, locked, without waiting: `Ok(None)` if there is none,
    /// `Err(EAGAIN)` if another task holds its lock. C: `filemap_lock_folio()` with
    /// `FGP_NOWAIT`.
    pub(crate) fn try_lock(mapping: Mapping<'_>, index: usize) -> Result<Option<Self>> {
        let fgp = bindings::FGP_LOCK | bindings::FGP_NOWAIT;
        // SAFETY: The mapping is valid; no allocation (no `FGP_CREAT`), so no gfp and no
        // memory policy. `__filemap_get_folio()` is this call, inline.
        let folio = unsafe {
            bindings::__filemap_get_folio_mpol(
                mapping.as_ptr(),
                index,
                fgp,
                0,
                core::ptr::null_mut(),
            )
        };
        match kernel::error::from_err_ptr(folio) {
            // SAFETY: Locked and referenced by `__filemap_get_folio()`.
            Ok(folio) => Ok(unsafe { Self::adopt(folio) }),
            Err(e) if e == EAGAIN => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// The folio at `index` of `mapping`, locked; `None` if there is none. May sleep.
    /// C: `filemap_lock_folio()`.
    pub(crate) fn lock(mapping: Mapping<'_>, index: usize) -> Option<Self> {
        // SAFETY: The mapping is valid.
        let folio = unsafe { bindings::filemap_lock_folio(mapping.as_ptr(), index) };
        // An error pointer means there is none.
        let folio = kernel::error::from_err_ptr(folio).ok()?;
        // SAFETY: Locked and referenced by `filemap_lock_folio()`.
        unsafe { Self::adopt(folio) }
    }

    /// The folio.
    #[inline]
    pub(crate) fn as_ptr(&self) -> NonNull<bindings::folio> {
        self.folio
    }

    /// Its facts now (stable ones, under its lock: it cannot leave the mapping or change size).
    pub(crate) fn facts(&self, mapping: Mapping<'_>, read: Read) -> FolioFacts {
        // SAFETY: The folio is referenced (type invariants).
        unsafe { read_facts(self.folio, mapping, read) }
    }

    /// Its number of pages.
    #[inline]
    pub(crate) fn nr_pages(&self) -> usize {
        // SAFETY: The folio is referenced and locked: it cannot be split.
        unsafe { bindings::folio_nr_pages(self.folio.as_ptr()) as usize }
    }

    /// Its page `n` (`n` below [`LockedFolio::nr_pages`]). C: `folio_page()`.
    #[inline]
    pub(crate) fn page(&self, n: usize) -> NonNull<bindings::page> {
        folio_page(self.folio, n)
    }

    /// Drops the references and the RSS count (in `mm`) of `nr` mappings of the folio's pages
    /// that the caller removed (PTEs cleared, rmap removed). The folio stays alive: the page
    /// cache and this value hold it. C: `folio_ref_sub()`, `add_mm_counter()`.
    ///
    /// # Safety
    ///
    /// The caller must own the references of the `nr` removed mappings, which were in `mm`,
    /// and not use them afterwards.
    pub(crate) unsafe fn drop_mappings(&self, mm: &Mm, nr: usize) {
        if nr == 0 {
            return;
        }
        // SAFETY: The folio is referenced by us beyond the `nr` references handed over, so
        // dropping those cannot free it; `mm` is valid and the counter per-CPU.
        unsafe {
            bindings::folio_ref_sub(self.folio.as_ptr(), nr as i32);
            bindings::add_mm_counter(
                mm.as_raw(),
                bindings::mm_counter_file(self.folio.as_ptr()),
                -(nr as isize),
            );
        }
    }

    /// Takes it off its LRU list, releases its private (buffer) data, and unmaps it from every
    /// page table, batching the TLB flush ([`flush_batched_unmaps`]). Gives it back, with
    /// nothing changed, if that fails. May sleep.
    pub(crate) fn isolate(self) -> Result<IsolatedFolio, (Self, IsolateError)> {
        // SAFETY: Locked and referenced (type invariants), as the glue requires.
        match unsafe { bindings::thp_collapse_pc_folio_isolate(self.folio.as_ptr()) } {
            bindings::thp_collapse_pc_isolate_THP_PC_ISOLATE_OK => {
                let this = ManuallyDrop::new(self);
                // INVARIANT: Still locked and referenced, now isolated.
                Ok(IsolatedFolio { folio: this.folio })
            }
            bindings::thp_collapse_pc_isolate_THP_PC_ISOLATE_PRIVATE => {
                Err((self, IsolateError::Private))
            }
            _ => Err((self, IsolateError::NotOnLru)),
        }
    }
}

impl Drop for LockedFolio {
    fn drop(&mut self) {
        // SAFETY: Locked and referenced by us (type invariants); released once, here.
        unsafe {
            bindings::folio_unlock(self.folio.as_ptr());
            bindings::folio_put(self.folio.as_ptr());
        }
    }
}

/// Page `n` of `folio`: the `struct page`s of a folio are consecutive. C: `folio_page()`.
fn folio_page(folio: NonNull<bindings::folio>, n: usize) -> NonNull<bindings::page> {
    // SAFETY: This only computes the address of the `struct page` the folio starts with,
    // without reading it.
    let first = unsafe { &raw mut (*folio.as_ptr()).__bindgen_anon_1.page };
    // SAFETY: `first` is the non-null address of a `struct page` of the memory map, and so is
    // every later page of the folio (for `n` within it, which callers keep to).
    unsafe { NonNull::new_unchecked(first.wrapping_add(n)) }
}

/// Whether [`LockedFolio::read`] may wait for the mapping's invalidate lock, which readahead
/// takes shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadWait {
    /// It may wait: the caller holds no lock of a folio of the file.
    Block,
    /// It gives up if the lock is contended: the caller holds locks of folios of the file, and
    /// truncation and hole punching wait for folio locks with the lock held exclusively.
    Try,
}

/// Why [`LockedFolio::read`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// [`ReadWait::Try`] and the mapping's invalidate lock is contended (a truncation or a
    /// hole punch is under way).
    Contended,
    /// The folio could not be read, or was truncated at once.
    Failed,
}

/// Why [`LockedFolio::isolate`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IsolateError {
    /// It is not on an LRU list (someone else isolated it).
    NotOnLru,
    /// Its private data could not be released.
    Private,
}

/// Flushes the TLB entries left by the unmaps of [`LockedFolio::isolate`].
/// C: `try_to_unmap_flush()`.
pub(crate) fn flush_batched_unmaps() {
    // SAFETY: Always safe to call.
    unsafe { bindings::try_to_unmap_flush() };
}

/// A folio [`PageCacheLocked::take_plain`] took.
pub(crate) struct Taken {
    /// The folio.
    pub(crate) folio: IsolatedFolio,
    /// Its references and dirty bit, read under the xarray lock taken again. Its references
    /// beyond the expected ones are those beyond the page cache's (all that an unmapped folio
    /// with no private data has, as the isolation left it): a mapping made again since, or
    /// private data, shows as more of them, not as the mapped flag, which is never set.
    pub(crate) facts: FolioFacts,
    /// The index after its last.
    pub(crate) next: usize,
}

/// A folio of the page cache, locked by us, isolated from the LRU and unmapped: nothing can
/// reach its data but the page cache, whose new users wait for its lock. Dropping it puts it
/// back (on the LRU, unlocked, our reference dropped).
///
/// # Invariants
///
/// `folio` is locked by us, isolated from its LRU list (with the reference that holds), and we
/// own one more reference.
#[repr(transparent)]
pub(crate) struct IsolatedFolio {
    folio: NonNull<bindings::folio>,
}

// SAFETY: A folio lock belongs to no thread (whoever holds the value unlocks it), and the
// isolation and the reference are counts, not tied to the thread that took them.
unsafe impl Send for IsolatedFolio {}

impl IsolatedFolio {
    /// Its facts now.
    pub(crate) fn facts(&self, mapping: Mapping<'_>, read: Read) -> FolioFacts {
        // SAFETY: The folio is referenced (type invariants).
        unsafe { read_facts(self.folio, mapping, read) }
    }

    /// Its number of pages.
    #[inline]
    pub(crate) fn nr_pages(&self) -> usize {
        // SAFETY: Locked and referenced: it cannot be split.
        unsafe { bindings::folio_nr_pages(self.folio.as_ptr()) as usize }
    }

    /// Its first index.
    #[inline]
    pub(crate) fn index(&self) -> usize {
        // SAFETY: Locked (type invariants): the index does not change.
        unsafe { bindings::folio_pgoff(self.folio.as_ptr()) }
    }

    /// Its page `n`. C: `folio_page()`.
    #[inline]
    pub(crate) fn page(&self, n: usize) -> NonNull<bindings::page> {
        folio_page(self.folio, n)
    }

    /// Releases the folios of `old` after a new folio replaced them in the page cache: uncounts
    /// them from the page cache (and from shmem, for [`Backing::Shmem`]), unlocks them and
    /// drops the page cache's, the isolation's and our references, which frees them; `old` is
    /// left empty, its memory kept for the next collapse. The folios go to C straight from the
    /// vector's buffer, which updates the counters once per run of folios of one memcg and
    /// node and frees them in batches.
    ///
    /// # Safety
    ///
    /// The page cache must no longer hold the folios (the caller stored the new folio over
    /// their indices), but its references.
    pub(crate) unsafe fn release_replaced(old: &mut KVec<IsolatedFolio>, backing: Backing) {
        /// The most folios handed over in one call (a count C takes as `unsigned int`).
        const CHUNK: usize = 512;
        let (folios, len) = (old.as_mut_ptr(), old.len());
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            // SAFETY: `IsolatedFolio` is a transparent `NonNull<folio>`, so the buffer's entries
            // `done..done + n` are `n` folio pointers, each handed over here once: by the type
            // invariants locked, isolated and referenced by us, and, by the function's safety
            // requirements, out of the page cache.
            unsafe {
                bindings::thp_collapse_folios_free_uncached(
                    folios.add(done).cast(),
                    n as u32,
                    backing.is_shmem(),
                )
            };
            done += n;
        }
        // Handed over above: emptied without dropping them (which would put them back).
        for folio in old.drain_all() {
            core::mem::forget(folio);
        }
    }
}

impl Drop for IsolatedFolio {
    fn drop(&mut self) {
        // SAFETY: By the type invariants: unlocked, put back (dropping the isolation's
        // reference) and our reference dropped, once.
        unsafe {
            bindings::folio_unlock(self.folio.as_ptr());
            bindings::folio_putback_lru(self.folio.as_ptr());
            bindings::folio_put(self.folio.as_ptr());
        }
    }
}

/// A new folio on its way into the page cache at `index`: locked (nobody can see it yet),
/// with its mapping and index set. Dropping it before [`PageCacheFolio::insert`] frees it.
pub(crate) struct PageCacheFolio {
    folio: ManuallyDrop<NewFolio>,
    backing: Backing,
}

impl PageCacheFolio {
    /// Prepares `folio` to enter `mapping` at `index` (swap-backed for [`Backing::Shmem`]).
    pub(crate) fn prepare(
        folio: NewFolio,
        mapping: Mapping<'_>,
        index: usize,
        backing: Backing,
    ) -> Self {
        // SAFETY: The folio is ours alone (type invariants of `NewFolio`), the mapping valid.
        unsafe {
            bindings::thp_collapse_pc_prepare_new(
                folio.as_ptr(),
                mapping.as_ptr(),
                index,
                backing.is_shmem(),
            )
        };
        Self {
            folio: ManuallyDrop::new(folio),
            backing,
        }
    }

    /// The folio, to copy the data into.
    #[inline]
    pub(crate) fn folio(&mut self) -> &mut NewFolio {
        &mut self.folio
    }

    /// Its first pfn.
    #[inline]
    pub(crate) fn pfn(&self) -> usize {
        // SAFETY: The folio is valid (ours).
        unsafe { bindings::folio_pfn(self.folio.as_ptr()) }
    }

    /// Counts it into the page cache (vmstat), marks it uptodate, gives the page cache its
    /// references, puts it on the LRU, and stores it over the indices of its range, which
    /// [`PageCacheCursor::create_range`] made room for; returns it, still locked.
    ///
    /// # Safety
    ///
    /// The caller must hold the locks of the folios the range held (or have marked the range's
    /// holes with [`PageCacheLocked::store_retry`]), and the folio must hold their data.
    pub(crate) unsafe fn insert(self, locked: &mut PageCacheLocked<'_>) -> InsertedFolio {
        let mut this = ManuallyDrop::new(self);
        let shmem = this.backing.is_shmem();
        // SAFETY: Taken once; `this` is never dropped.
        let folio = unsafe { ManuallyDrop::take(&mut this.folio) }.into_raw();
        // SAFETY: The folio is locked and ours, the xarray locked; by the function's safety
        // requirements the range is ours to replace.
        let ret = unsafe {
            bindings::thp_collapse_pc_account_new(folio, shmem);
            let index = bindings::folio_pgoff(folio);
            bindings::xas_set_order(locked.xas(), index, bindings::folio_order(folio));
            bindings::xas_store(locked.xas(), folio.cast());
            bindings::xas_error(locked.xas())
        };
        // `create_range()` made room: the store cannot fail.
        kernel::warn_on!(ret != 0);
        // INVARIANT: In the page cache, with its references, and locked by us.
        InsertedFolio {
            // SAFETY: It came from a `NewFolio`, which is never NULL.
            folio: unsafe { NonNull::new_unchecked(folio) },
        }
    }
}

impl Drop for PageCacheFolio {
    fn drop(&mut self) {
        // SAFETY: The folio never entered the page cache: undo `prepare()`, then free it.
        unsafe {
            bindings::thp_collapse_pc_abandon_new(self.folio.as_ptr());
            ManuallyDrop::drop(&mut self.folio);
        }
    }
}

/// A new folio that entered the page cache, still locked by us: page faults on its range wait.
/// Dropping it unlocks it.
///
/// # Invariants
///
/// `folio` is in the page cache (which holds its references) and locked by this thread.
pub(crate) struct InsertedFolio {
    folio: NonNull<bindings::folio>,
}

impl Drop for InsertedFolio {
    fn drop(&mut self) {
        // SAFETY: Locked by us (type invariants), unlocked once.
        unsafe { bindings::folio_unlock(self.folio.as_ptr()) };
    }
}

/// The i_mmap lock of a mapping, held for read: the VMAs that map the file, in every mm, stay
/// in its tree, and their page tables stay allocated. Dropping it releases the lock.
///
/// # Invariants
///
/// The i_mmap lock of `mapping` is held for read by this thread.
pub(crate) struct IMmapRead<'a> {
    mapping: Mapping<'a>,
}

impl<'a> IMmapRead<'a> {
    /// Takes the lock. May sleep. C: `i_mmap_lock_read()`.
    pub(crate) fn lock(mapping: Mapping<'a>) -> Self {
        // SAFETY: The mapping is valid (type invariants of `Mapping`).
        unsafe { bindings::i_mmap_lock_read(mapping.as_ptr()) };
        // INVARIANT: Taken above.
        Self { mapping }
    }

    /// Whether a VMA that maps a page of `[first, last]` is registered for userfaultfd missing
    /// faults. C: `userfaultfd_missing()` over `mapping_rmap_tree_foreach()`.
    pub(crate) fn userfaultfd_missing_in(&self, first: usize, last: usize) -> bool {
        let mut missing = false;
        self.for_each_vma(first, last, |v| {
            // SAFETY: `for_each_vma()` hands out VMAs that stay valid during the call.
            missing |= unsafe { bindings::userfaultfd_missing(v.vma.as_ptr()) };
        });
        missing
    }

    /// Calls `f` with each VMA, of any mm, that maps a page of `[first, last]`. The VMAs are
    /// valid during the call (their mms may be exiting). C: `mapping_rmap_tree_foreach()`.
    pub(crate) fn for_each_vma(&self, first: usize, last: usize, mut f: impl FnMut(FileVma<'_>)) {
        // SAFETY: The lock is held (type invariants), which keeps the tree and its VMAs.
        let mut vma =
            unsafe { bindings::mapping_rmap_tree_iter_first(self.mapping.as_ptr(), first, last) };
        while let Some(v) = NonNull::new(vma) {
            // SAFETY: `v` is in the tree: valid, and its range and offset are only changed
            // under the i_mmap lock for write; held, it keeps the VMA's page tables too, for
            // the call of `f` (to which the `FileVma` is lent).
            let file_vma = unsafe {
                let r = &*v.as_ptr();
                FileVma {
                    vma: RmapVma::from_raw(v.as_ptr()),
                    start: r.__bindgen_anon_1.__bindgen_anon_1.vm_start,
                    end: r.__bindgen_anon_1.__bindgen_anon_1.vm_end,
                    pgoff: r.vm_pgoff,
                    mm: r.vm_mm,
                }
            };
            f(file_vma);
            // SAFETY: As above; `vma` is in the tree.
            vma = unsafe { bindings::mapping_rmap_tree_iter_next(vma, first, last) };
        }
    }
}

/// A VMA that maps a file, as the file's i_mmap lock shows it (its mm's mmap lock is not
/// held): valid while [`IMmapRead`] is.
#[derive(Clone, Copy)]
pub(crate) struct FileVma<'a> {
    /// The VMA.
    pub(crate) vma: &'a RmapVma,
    /// Its first address.
    pub(crate) start: usize,
    /// The address after its last.
    pub(crate) end: usize,
    /// The file index it maps at `start`.
    pub(crate) pgoff: usize,
    /// Its mm.
    pub(crate) mm: *mut bindings::mm_struct,
}

impl FileVma<'_> {
    /// The address at which it maps file index `pgoff` (if it maps it).
    pub(crate) fn address_of(&self, pgoff: usize) -> usize {
        self.start
            .wrapping_add(pgoff.wrapping_sub(self.pgoff) << kernel::page::PAGE_SHIFT)
    }
}

impl Drop for IMmapRead<'_> {
    fn drop(&mut self) {
        // SAFETY: Held (type invariants), released once.
        unsafe { bindings::i_mmap_unlock_read(self.mapping.as_ptr()) };
    }
}

/// Pages a shmem collapse added to the file's count for its holes: dropping the value takes
/// them back (the collapse failed); [`ShmemCharge::keep`] keeps them.
pub(crate) struct ShmemCharge<'a> {
    mapping: Mapping<'a>,
    nr: usize,
}

impl<'a> ShmemCharge<'a> {
    /// Charges `nr` pages to the shmem file of `mapping` (its blocks and the mapping's page
    /// count); `None` if the file has no room. C: `shmem_charge()`.
    pub(crate) fn charge(mapping: Mapping<'a>, nr: usize) -> Option<Self> {
        // SAFETY: The mapping is valid (type invariants of `Mapping`), and so is its inode.
        unsafe { bindings::shmem_charge((*mapping.as_ptr()).host, nr as isize) }
            .then_some(Self { mapping, nr })
    }

    /// Keeps the charge: the pages are part of the file now.
    pub(crate) fn keep(self) {
        core::mem::forget(self);
    }
}

impl Drop for ShmemCharge<'_> {
    fn drop(&mut self) {
        let m = self.mapping.as_ptr();
        // SAFETY: The mapping and its inode are valid; `nr` pages were charged by `charge()`,
        // which counted them in `nrpages` too: the collapse does not add them after all. The
        // count changes under the xarray lock, as everywhere.
        unsafe {
            let pages = &raw mut (*m).i_pages;
            bindings::xa_lock_irq(pages);
            (*m).nrpages -= self.nr as kernel::ffi::c_ulong;
            bindings::xa_unlock_irq(pages);
            bindings::shmem_uncharge((*m).host, self.nr as isize);
        }
    }
}

/// What a page cache stores: shmem's swap-backed memory, or a file system's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backing {
    /// Shmem (tmpfs, memfd, shared anonymous memory): swap-backed, always dirty, and its holes
    /// or swapped-out folios are filled by shmem itself.
    Shmem,
    /// A file of a file system: its folios are read from and written back to storage.
    File,
}

impl Backing {
    /// What backs `file`'s page cache. C: `shmem_file()`.
    pub(crate) fn of(file: &File) -> Self {
        // SAFETY: The file is valid.
        if unsafe { bindings::shmem_file(file.as_ptr()) } {
            Backing::Shmem
        } else {
            Backing::File
        }
    }

    /// Whether it is shmem, for C interfaces that take a `bool shmem`.
    #[inline]
    pub(crate) fn is_shmem(self) -> bool {
        self == Backing::Shmem
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kernel::macros::kunit_tests(thp_collapse_page_cache)]
mod tests {
    use super::*;
    use kernel::{
        alloc::flags::GFP_KERNEL,
        error::code::EINVAL,
        mm::{
            mmap_lock::MmapReadLock,
            pgtable::{PmdEntry, PteTableLocked, PMD_SIZE},
            test_mm::{drain_lru, ShmemFile, TestMm, PAGE},
        },
    };

    /// A shmem file of four pages, mapped shared in `t`'s mm, with indexes 0 and 2 written
    /// (through the mapping) and 1 and 3 holes; returns the file and the address.
    fn shmem_with_holes(t: &TestMm) -> Result<(ShmemFile, usize)> {
        let file = ShmemFile::new(4 * PAGE)?;
        let a = t.map_shared(&file, 4 * PAGE, 0)?;
        t.write(a, b"index 0")?;
        t.write(a + 2 * PAGE, b"index 2")?;
        drain_lru();
        Ok((file, a))
    }

    /// Whether the PTE that maps `addr` of `t`'s mm is none. Only tries the mmap lock, which
    /// comes before the folio locks the caller may hold.
    fn pte_none(t: &TestMm, addr: usize) -> Option<bool> {
        let lock = MmapReadLock::try_lock(t.mm())?;
        let table = PteTableLocked::lock(PmdEntry::find(&lock, addr)?, addr)?;
        Some(table.is_none((addr & (PMD_SIZE - 1)) / PAGE))
    }

    /// Reads every fact.
    const ALL: Read = Read {
        mapping: true,
        refs: true,
        mapped: true,
    };

    /// A shmem file's mapping is its `f_mapping`, with no writeback.
    #[test]
    fn mapping_of_shmem_file() -> Result {
        let file = ShmemFile::new(4 * PAGE)?;
        let mapping = Mapping::of(file.file()).ok_or(EINVAL)?;
        // SAFETY: The file is valid; `f_mapping` does not change.
        let f_mapping = unsafe { (*file.file().as_ptr()).f_mapping };
        assert_eq!(mapping.as_ptr(), f_mapping);
        assert!(!mapping.can_writeback());
        assert!(Backing::of(file.file()).is_shmem());
        assert_eq!(mapping.write_and_wait(0, 4), Ok(()));
        Ok(())
    }

    /// `read_entries()` reads the folios of a range, skipping holes, with their index, size,
    /// pfn and facts, and advances the index past what it read.
    #[test]
    fn read_entries_present_and_absent() -> Result {
        let t = TestMm::attach()?;
        let (file, _) = shmem_with_holes(&t)?;
        let mapping = Mapping::of(file.file()).ok_or(EINVAL)?;
        let mut out = [PageCacheEntry::default(); 4];
        let mut index = 0;
        let n = mapping.read_entries(&mut index, 3, &mut out);
        let got = out.map(|e| (e.0.index, e.nr_pages(), e.is_value()));
        let facts = [out[0].facts(), out[1].facts()];
        let pfns = [out[0].pfn(), out[1].pfn()];
        let mut one = [PageCacheEntry::default(); 1];
        let mut from = 1;
        let n_one = mapping.read_entries(&mut from, 3, &mut one);
        let pfn0 = LockedFolio::lock(mapping, 0)
            // SAFETY: The folio is referenced and locked.
            .map(|f| unsafe { bindings::folio_pfn(f.as_ptr().as_ptr()) });
        assert_eq!(n, 2);
        assert_eq!(&got[..2], &[(0, 1, false), (2, 1, false)]);
        assert_eq!(index, 4);
        for f in facts {
            assert!(f.lru());
            assert!(!f.pmd_order());
            assert_eq!(f.refs_beyond_expected(), 1);
        }
        assert!(pfns[0] != pfns[1] && pfns[1] != usize::MAX);
        assert_eq!(pfn0, Some(pfns[0]));
        assert_eq!((n_one, one[0].0.index, from), (1, 2, 3));
        Ok(())
    }

    /// Under the xarray lock, `load()` tells folios from holes; `any_entry_until()` looks past
    /// the cursor; a retry entry can be stored in a hole and emptied again; the cursor keeps
    /// its place across unlock and lock.
    #[test]
    fn cursor_load_store_and_relock() -> Result {
        let t = TestMm::attach()?;
        let (file, _) = shmem_with_holes(&t)?;
        let mapping = Mapping::of(file.file()).ok_or(EINVAL)?;
        let mut state = PageCacheState::new(mapping, 0);
        let mut locked = state.cursor().lock();
        let folio0 = locked.load(0);
        let after0 = locked.any_entry_until(3);
        let hole = locked.load(1);
        let far = locked.load(1 << 20);
        let folio2 = locked.load(2);
        let after2 = locked.any_entry_until(3);
        let _ = locked.load(1);
        let stored = locked.store_retry();
        let retry = locked.load(1);
        let _ = locked.load(1);
        locked.store_empty();
        let emptied = locked.load(1);
        let cursor = locked.unlock();
        let mut locked = cursor.lock();
        let relocked = locked.load(0);
        drop(locked);
        let range = state.cursor().create_range(2).map(|mut l| l.load(2)).ok();

        let is_folio = |s: Slot| match s {
            Slot::Folio(_, f) => f.uptodate() && f.lru(),
            _ => false,
        };
        let folio_ptr = |s: Slot| match s {
            Slot::Folio(f, _) => Some(f),
            _ => None,
        };
        let locked0 = LockedFolio::lock(mapping, 0).map(|f| f.as_ptr());
        assert!(is_folio(folio0));
        assert!(after0);
        assert_eq!(hole, Slot::Empty);
        assert_eq!(far, Slot::Empty);
        assert!(is_folio(folio2));
        assert!(!after2);
        assert_eq!(stored, Ok(()));
        assert_eq!(retry, Slot::Retry);
        assert_eq!(emptied, Slot::Empty);
        assert_eq!(folio_ptr(relocked), locked0);
        assert!(range.is_some_and(is_folio));
        Ok(())
    }

    /// `LockedFolio::lock()` locks and references the folio at an index, with its facts, and
    /// finds nothing in a hole; `shmem_get()` does the same for shmem.
    #[test]
    fn locked_folio_lock_and_facts() -> Result {
        let t = TestMm::attach()?;
        let (file, _) = shmem_with_holes(&t)?;
        let mapping = Mapping::of(file.file()).ok_or(EINVAL)?;
        let folio = LockedFolio::lock(mapping, 0).ok_or(EINVAL)?;
        let ptr = folio.as_ptr();
        // SAFETY: We hold a reference.
        let locked = unsafe { bindings::folio_test_locked(ptr.as_ptr()) };
        let facts = folio.facts(mapping, ALL);
        let (nr, page0) = (folio.nr_pages(), folio.page(0));
        // SAFETY: As above; this only computes an address.
        let first = unsafe { &raw mut (*ptr.as_ptr()).__bindgen_anon_1.page };
        drop(folio);
        // SAFETY: The page cache holds the folio.
        let unlocked = unsafe { !bindings::folio_test_locked(ptr.as_ptr()) };
        let hole = LockedFolio::lock(mapping, 1).is_none();
        let shmem_hole = LockedFolio::shmem_get(mapping, 1).is_none();
        let shmem2 = LockedFolio::shmem_get(mapping, 2)
            .map(|f| (f.nr_pages(), f.facts(mapping, ALL).uptodate()));
        assert!(locked);
        assert!(facts.uptodate() && facts.lru() && facts.mapped());
        assert!(!facts.other_mapping() && !facts.writeback() && !facts.pmd_order());
        assert_eq!(facts.refs_beyond_expected(), 1);
        assert_eq!((nr, page0.as_ptr()), (1, first));
        assert!(unlocked);
        assert!(hole);
        assert!(shmem_hole);
        assert_eq!(shmem2, Some((1, true)));
        Ok(())
    }

    /// A folio found under the xarray lock can be trylocked once.
    #[test]
    fn trylock_under_xarray_lock() -> Result {
        let t = TestMm::attach()?;
        let (file, _) = shmem_with_holes(&t)?;
        let mapping = Mapping::of(file.file()).ok_or(EINVAL)?;
        let mut state = PageCacheState::new(mapping, 0);
        let mut locked = state.cursor().lock();
        let (first, second) = match locked.load(2) {
            Slot::Folio(f, _) => {
                let first = LockedFolio::trylock(f, &locked);
                let second = LockedFolio::trylock(f, &locked).is_some();
                (first.map(|l| l.as_ptr() == f), second)
            }
            _ => (None, true),
        };
        drop(locked);
        assert_eq!(first, Some(true));
        assert!(!second);
        Ok(())
    }

    /// Isolating a page cache folio takes it off the LRU and out of every page table; putting
    /// it back leaves the data to the next fault.
    #[test]
    fn isolate_unmaps_and_put_back() -> Result {
        let t = TestMm::attach()?;
        let (file, a) = shmem_with_holes(&t)?;
        let mapping = Mapping::of(file.file()).ok_or(EINVAL)?;
        let mapped_before = pte_none(&t, a).map(|none| !none);
        let folio = LockedFolio::lock(mapping, 0).ok_or(EINVAL)?;
        let isolated = folio.isolate();
        flush_batched_unmaps();
        let during = isolated
            .as_ref()
            .map(|i| (i.facts(mapping, ALL), i.index(), i.nr_pages()))
            .ok();
        let unmapped = pte_none(&t, a);
        drop(isolated);
        drain_lru();
        let after = LockedFolio::lock(mapping, 0).map(|f| f.facts(mapping, ALL).lru());
        let mut back = [0u8; 7];
        t.read(a, &mut back)?;
        assert_eq!(mapped_before, Some(true));
        assert!(during.is_some_and(|(f, _, _)| !f.lru() && !f.mapped() && f.uptodate()));
        assert_eq!(during.map(|(_, i, n)| (i, n)), Some((0, 1)));
        assert_eq!(unmapped, Some(true));
        assert_eq!(after, Some(true));
        assert_eq!(&back, b"index 0");
        Ok(())
    }

    /// Under the i_mmap lock, the VMAs that map a range of the file are found with their
    /// range, offset and mm, and none for a range nobody maps.
    #[test]
    fn i_mmap_finds_the_mapping_vma() -> Result {
        let t = TestMm::attach()?;
        let (file, a) = shmem_with_holes(&t)?;
        let mapping = Mapping::of(file.file()).ok_or(EINVAL)?;
        let lock = IMmapRead::lock(mapping);
        let mut found = [None; 2];
        let mut n = 0;
        lock.for_each_vma(0, 3, |v| {
            if let Some(slot) = found.get_mut(n) {
                *slot = Some((v.start, v.end, v.pgoff, v.mm, v.address_of(2)));
            }
            n += 1;
        });
        let mut beyond = 0;
        lock.for_each_vma(100, 200, |_| beyond += 1);
        let uffd = lock.userfaultfd_missing_in(0, 3);
        drop(lock);
        let mm = t.mm().as_raw();
        assert_eq!(n, 1);
        assert_eq!(found[0], Some((a, a + 4 * PAGE, 0, mm, a + 2 * PAGE)));
        assert_eq!(beyond, 0);
        assert!(!uffd);
        Ok(())
    }

    /// A shmem charge adds to the mapping's page count until it is dropped.
    #[test]
    fn shmem_charge_until_dropped() -> Result {
        let file = ShmemFile::new(4 * PAGE)?;
        let mapping = Mapping::of(file.file()).ok_or(EINVAL)?;
        // SAFETY: The mapping is valid; a plain read of the count, which nobody else changes.
        let nrpages = || unsafe { (*mapping.as_ptr()).nrpages };
        let before = nrpages();
        let charge = ShmemCharge::charge(mapping, 2);
        let charged = nrpages();
        let got = charge.is_some();
        drop(charge);
        let after = nrpages();
        assert!(got);
        assert_eq!(charged, before + 2);
        assert_eq!(after, before);
        Ok(())
    }

    /// A new folio prepared for the page cache is locked and knows its pfn; abandoning it
    /// leaves the page cache as it was.
    #[test]
    fn page_cache_folio_prepare_and_abandon() -> Result {
        let t = TestMm::attach()?;
        let (file, _) = shmem_with_holes(&t)?;
        let mapping = Mapping::of(file.file()).ok_or(EINVAL)?;
        let folio = NewFolio::alloc(GFP_KERNEL, 0, None)?;
        // SAFETY: `folio` holds its only reference.
        let pfn = unsafe { bindings::folio_pfn(folio.as_ptr()) };
        let mut prepared = PageCacheFolio::prepare(folio, mapping, 1, Backing::Shmem);
        let ptr = prepared.folio().as_ptr();
        // SAFETY: `prepared` owns the folio.
        let locked = unsafe { bindings::folio_test_locked(ptr) };
        // SAFETY: As above.
        let index = unsafe { bindings::folio_pgoff(ptr) };
        let same_pfn = prepared.pfn() == pfn;
        drop(prepared);
        let mut state = PageCacheState::new(mapping, 1);
        let hole = state.cursor().lock().load(1);
        assert!(locked);
        assert_eq!(index, 1);
        assert!(same_pfn);
        assert_eq!(hole, Slot::Empty);
        Ok(())
    }
}
