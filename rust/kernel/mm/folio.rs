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

/// The NUMA nodes of the kernel's configuration (`MAX_NUMNODES`).
const MAX_NODES: usize = bindings::MAX_NUMNODES as usize;

/// How many pages of a range each NUMA node holds, so that the folio that replaces them can
/// be allocated where most of them were. C: `collapse_control.node_load`.
#[derive(Clone, Debug)]
pub struct NodeLoad {
    load: [u16; MAX_NODES],
}

impl Default for NodeLoad {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeLoad {
    /// No page counted on any node.
    pub const fn new() -> Self {
        Self {
            load: [0; MAX_NODES],
        }
    }

    /// Counts `nr` pages on node `nid`; a `nid` that is not a node (`NUMA_NO_NODE`) is not
    /// counted.
    pub fn add(&mut self, nid: i32, nr: usize) {
        let nr = u16::try_from(nr).unwrap_or(u16::MAX);
        if let Some(load) = usize::try_from(nid).ok().and_then(|n| self.load.get_mut(n)) {
            *load = load.saturating_add(nr);
        }
    }

    /// Where a folio for the range should come from: the first node that holds the most
    /// pages (node 0 if none was counted), and every online node that holds as many. C:
    /// `collapse_find_target_node()`.
    pub fn target(&self) -> Nodes {
        let mut node = 0;
        let mut max = 0;
        for (nid, &load) in self.load.iter().enumerate() {
            if load > max {
                max = load;
                node = nid;
            }
        }
        let mut mask = bindings::nodemask_t::default();
        let bits = 8 * core::mem::size_of::<crate::ffi::c_ulong>();
        for (nid, &load) in self.load.iter().enumerate() {
            // SAFETY: Always safe to call with a node number below `MAX_NUMNODES`.
            let online = unsafe { bindings::node_online(nid as i32) };
            if load == max && online {
                if let Some(word) = mask.bits.get_mut(nid / bits) {
                    *word |= 1 << (nid % bits);
                }
            }
        }
        Nodes {
            node: node as i32,
            mask,
        }
    }
}

/// The NUMA nodes a folio may come from, and the one it should come from first; see
/// [`NodeLoad::target`] and [`NewFolio::alloc_on`].
#[derive(Clone, Copy)]
pub struct Nodes {
    node: i32,
    mask: bindings::nodemask_t,
}

impl Nodes {
    /// The node the folio should come from.
    #[inline]
    pub fn node(&self) -> i32 {
        self.node
    }
}

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

    /// Allocates a folio of `order` with `gfp` on the nodes `nodes` chose (see
    /// [`NodeLoad::target`]): their first node if it can, else another of them.
    ///
    /// May sleep if `gfp` allows it. Fails with `ENOMEM`.
    pub fn alloc_on(gfp: bindings::gfp_t, order: u32, nodes: &Nodes) -> Result<Self> {
        if order > bindings::MAX_PAGE_ORDER {
            return Err(ENOMEM);
        }
        let mut mask = nodes.mask;
        // SAFETY: `order` is valid (checked above); `mask` is a nodemask that lives across the
        // call, and `node` a node of it.
        let folio = unsafe { bindings::__folio_alloc(gfp, order, nodes.node, &mut mask) };
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

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[macros::kunit_tests(rust_mm_folio)]
mod tests {
    use super::*;
    use crate::{
        error::code::EINVAL,
        mm::{
            mmap_lock::{MmapLocked, MmapReadLock, MmapWriteLock},
            pgtable::{PmdEntry, PmdTableLocked},
            test_mm::{
                drain_lru, facts, page_folio, read_page, write_page, Facts, TestMm, UserPage, PAGE,
            },
        },
    };

    /// The index, in its page table, of the entry that maps `addr`.
    fn idx(addr: usize) -> usize {
        (addr & (crate::mm::pgtable::PMD_SIZE - 1)) / PAGE
    }

    /// The facts of the folio mapped at `addr` of `t`'s mm, read under the page-table locks.
    fn facts_at(t: &TestMm, addr: usize) -> Option<Facts> {
        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(addr)?;
        let table = PmdTableLocked::lock(PmdEntry::find(&lock, addr)?, addr)?;
        // SAFETY: The page is mapped by the locked table, which keeps its folio.
        table
            .normal_page(vma, idx(addr))
            .map(|page| unsafe { facts(page_folio(page)) })
    }

    /// The target is the first node with the most pages, and the mask every online node with
    /// as many; with nothing counted, node 0 and every online node. `NUMA_NO_NODE` and nodes
    /// past `MAX_NUMNODES` are not counted. A folio allocated on the target comes from it.
    #[test]
    fn node_load_target() -> Result {
        let online = |nid: i32| {
            // SAFETY: Always safe to call.
            unsafe { bindings::node_online(nid) }
        };
        let mut l = NodeLoad::new();
        l.add(0, 3);
        l.add(1, 5);
        l.add(bindings::NUMA_NO_NODE, 100);
        l.add(MAX_NODES as i32, 100);
        let most_on_1 = l.target();
        l.add(0, 2);
        let tie = l.target();
        let none = NodeLoad::new().target();
        let all_online: crate::ffi::c_ulong = (0..2).filter(|&n| online(n)).map(|n| 1 << n).sum();
        let folio = NewFolio::alloc_on(bindings::GFP_KERNEL, 0, &most_on_1)?;
        // SAFETY: `folio` holds its page.
        let nid = unsafe { bindings::page_to_nid(folio.first_page()) };
        assert_eq!(most_on_1.node(), 1);
        assert_eq!(most_on_1.mask.bits[0], 1 << 1);
        assert_eq!(tie.node(), 0);
        assert_eq!(tie.mask.bits[0], 0b11);
        assert_eq!(none.node(), 0);
        assert_eq!(none.mask.bits[0], all_online);
        assert_eq!(nid, 1);
        Ok(())
    }

    /// A new folio has the order asked for, one reference, and no LRU or memcg; impossible
    /// orders fail; a node asked for is the node it comes from.
    #[test]
    fn alloc_order_refs_and_node() -> Result {
        let folio = NewFolio::alloc(bindings::GFP_KERNEL, 2, None)?;
        // SAFETY: `folio` holds its only reference.
        let f = unsafe { facts(NonNull::new_unchecked(folio.as_ptr())) };
        // SAFETY: As above.
        let nr = unsafe { bindings::folio_nr_pages(folio.as_ptr()) };
        // SAFETY: As above.
        let charged = unsafe { bindings::folio_memcg_charged(folio.as_ptr()) };
        let first_is_folio = folio.first_page().cast::<bindings::folio>() == folio.as_ptr();
        let too_big = NewFolio::alloc(bindings::GFP_KERNEL, bindings::MAX_PAGE_ORDER + 1, None);
        let on_node0 = NewFolio::alloc(bindings::GFP_KERNEL, 0, Some(0))?;
        // SAFETY: `on_node0` holds its page.
        let nid = unsafe { bindings::page_to_nid(on_node0.first_page()) };
        assert_eq!(folio.order(), 2);
        assert_eq!(nr, 4);
        assert_eq!(f.refs, 1);
        assert!(!f.lru);
        assert!(!charged);
        assert!(first_is_folio);
        assert_eq!(too_big.err(), Some(ENOMEM));
        assert_eq!(nid, 0);
        Ok(())
    }

    /// Charging puts the folio in the memory cgroup of the test's mm.
    #[test]
    fn charge_to_test_mm() -> Result {
        let t = TestMm::attach()?;
        let folio = NewFolio::alloc(bindings::GFP_KERNEL, 0, None)?;
        // SAFETY: `folio` holds its only reference.
        let before = unsafe { bindings::folio_memcg_charged(folio.as_ptr()) };
        let charged = folio.charge(t.mm(), bindings::GFP_KERNEL);
        // SAFETY: As above.
        let after = unsafe { bindings::folio_memcg_charged(folio.as_ptr()) };
        assert!(!before);
        assert_eq!(charged, Ok(()));
        assert!(after);
        Ok(())
    }

    /// Pages are copied into the folio and cleared, by index; indexes past the last page are
    /// refused or ignored.
    #[test]
    fn copy_and_clear_pages() -> Result {
        let mut folio = NewFolio::alloc(bindings::GFP_KERNEL, 1, None)?;
        let second = folio.first_page().wrapping_add(1);
        // SAFETY: Page 1 of the folio, which only `folio` can reach.
        unsafe { write_page(second, b"second page") };
        let src = NonNull::new(second).ok_or(EINVAL)?;
        // SAFETY: `src` is page 1 of the folio, valid and not written during the copy to page 0.
        let copied = unsafe { folio.copy_mc_page(0, src) };
        // SAFETY: As above, to a page past the last.
        let past_end = unsafe { folio.copy_mc_page(2, src) };
        let mut first = [0u8; 11];
        // SAFETY: Page 0 of the folio.
        unsafe { read_page(folio.first_page(), &mut first) };
        folio.clear_page(1);
        folio.clear_page(9);
        let mut cleared = [0xffu8; 11];
        // SAFETY: Page 1 of the folio.
        unsafe { read_page(second, &mut cleared) };
        assert_eq!(copied, Ok(()));
        assert_eq!(past_end, Err(EINVAL));
        assert_eq!(&first, b"second page");
        assert_eq!(cleared, [0u8; 11]);
        Ok(())
    }

    /// A user page is copied into the folio and a page cleared for a user address.
    #[test]
    fn copy_and_clear_user_pages() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(PAGE)?;
        t.write(a, b"user data")?;
        let mut folio = NewFolio::alloc(bindings::GFP_KERNEL, 1, None)?;
        let lock = MmapReadLock::lock(t.mm());
        let page = UserPage::get(&lock, a)?;
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        // SAFETY: We hold a reference to the page, which nothing writes meanwhile.
        let copied = unsafe { folio.copy_mc_user_page(1, page.page(), a, vma) };
        // SAFETY: As above, to a page past the last.
        let past_end = unsafe { folio.copy_mc_user_page(2, page.page(), a, vma) };
        drop(page);
        drop(lock);
        let mut back = [0u8; 9];
        // SAFETY: Page 1 of the folio.
        unsafe { read_page(folio.first_page().wrapping_add(1), &mut back) };
        folio.clear_user_page(1, a);
        let mut cleared = [0xffu8; 9];
        // SAFETY: As above.
        unsafe { read_page(folio.first_page().wrapping_add(1), &mut cleared) };
        assert_eq!(copied, Ok(()));
        assert_eq!(past_end, Err(EINVAL));
        assert_eq!(&back, b"user data");
        assert_eq!(cleared, [0u8; 9]);
        Ok(())
    }

    /// `into_raw()` hands over the reference without freeing the folio.
    #[test]
    fn into_raw_keeps_the_reference() -> Result {
        let folio = NewFolio::alloc(bindings::GFP_KERNEL, 0, None)?;
        let raw = NonNull::new(folio.into_raw()).ok_or(EINVAL)?;
        // SAFETY: We own the reference `into_raw()` handed over.
        let refs = unsafe { facts(raw) }.refs;
        // SAFETY: As above; dropped once, here.
        unsafe { bindings::folio_put(raw.as_ptr()) };
        assert_eq!(refs, 1);
        Ok(())
    }

    /// Isolating a mapped LRU folio of the test's mm locks it, takes it off the LRU with a
    /// reference of its own, and refuses a second isolation; dropping it puts it back.
    #[test]
    fn isolate_and_put_back() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(PAGE)?;
        t.write(a, b"on the LRU")?;
        drain_lru();
        let before = facts_at(&t, a);

        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let table = PmdTableLocked::lock(pmd, a).ok_or(EINVAL)?;
        let page = table.normal_page(vma, idx(a)).ok_or(EINVAL)?;
        // SAFETY: The locked table maps the page, which keeps its folio.
        let folio = unsafe { page_folio(page) };
        // SAFETY: As above: the folio stays valid during the call.
        let isolated = unsafe { IsolatedFolio::isolate(folio, 1) };
        // SAFETY: As above.
        let during = unsafe { facts(folio) };
        // SAFETY: As above.
        let again = unsafe { IsolatedFolio::isolate(folio, 1) }.err();
        let same = isolated
            .as_ref()
            .map(|i| (i.as_ptr() == folio, i.nr_pages()))
            .map_err(|e| *e);
        drop(isolated);
        // SAFETY: As above.
        let put_back = unsafe { facts(folio) };
        drop(table);
        drop(lock);
        drain_lru();
        let after = facts_at(&t, a);

        let lru_folio = |lru, locked, refs| {
            Some(Facts {
                lru,
                locked,
                refs,
                mapcount: 1,
            })
        };
        assert_eq!(before, lru_folio(true, false, 1));
        assert_eq!(same, Ok((true, 1)));
        assert_eq!(Some(during), lru_folio(false, true, 2));
        assert_eq!(again, Some(IsolateError::Locked));
        assert!(!put_back.locked);
        assert_eq!(after, before);
        Ok(())
    }

    /// A folio with a reference beyond its mapping (GUP's) is refused and left unlocked; one
    /// that someone else took off the LRU is refused as not on the LRU.
    #[test]
    fn isolate_refuses_referenced_and_off_lru() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(PAGE)?;
        t.write(a, b"referenced")?;
        drain_lru();

        let lock = MmapReadLock::lock(t.mm());
        let gup = UserPage::get(&lock, a)?;
        let folio = gup.folio();
        // SAFETY: GUP's reference keeps the folio.
        let referenced = unsafe { IsolatedFolio::isolate(folio, 1) }.err();
        // SAFETY: As above.
        let after_referenced = unsafe { facts(folio) };

        // Someone else isolates it (with a reference of its own, which we drop for them so
        // that only the LRU state differs), then puts it back.
        // SAFETY: GUP's reference keeps the folio; the isolation's is dropped at once, and
        // taken again before `folio_putback_lru()` drops it.
        let off_lru = unsafe {
            let taken = bindings::folio_isolate_lru(folio.as_ptr());
            bindings::folio_put(folio.as_ptr());
            drop(gup);
            let refused = IsolatedFolio::isolate(folio, 1).err();
            let gup = UserPage::get(&lock, a);
            if taken {
                bindings::folio_get(folio.as_ptr());
                bindings::folio_putback_lru(folio.as_ptr());
            }
            drop(gup);
            (taken, refused)
        };
        drop(lock);
        drain_lru();
        let after = facts_at(&t, a);

        assert_eq!(referenced, Some(IsolateError::Referenced));
        assert!(!after_referenced.locked);
        assert_eq!(after_referenced.refs, 2);
        assert_eq!(off_lru, (true, Some(IsolateError::NotOnLru)));
        assert_eq!(
            after.map(|f| (f.lru, f.locked, f.refs)),
            Some((true, false, 1))
        );
        Ok(())
    }

    /// A queue isolates its folios in order up to the first that fails, hands over those before
    /// it and leaves the others as they were; it holds at most `CAPACITY` folios.
    #[test]
    fn isolation_queue_stops_at_first_failure() -> Result {
        let t = TestMm::attach()?;
        const N: usize = IsolationQueue::CAPACITY + 1;
        let a = t.map_pmd_range()?;
        for n in 0..N {
            t.write(a + n * PAGE, b"queued")?;
        }
        drain_lru();

        let lock = MmapReadLock::lock(t.mm());
        let pinned = UserPage::get(&lock, a + PAGE)?;
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, a).ok_or(EINVAL)?;
        let table = PmdTableLocked::lock(pmd, a).ok_or(EINVAL)?;
        let mut folios = [None; N];
        for (n, f) in folios.iter_mut().enumerate() {
            // SAFETY: The locked table maps the page, which keeps its folio.
            *f = table
                .normal_page(vma, idx(a) + n)
                .map(|p| unsafe { page_folio(p) });
        }
        let mut queue = IsolationQueue::new();
        for f in folios.iter().take(3).flatten() {
            // SAFETY: The locked table keeps the folios until the queue is isolated; each is
            // queued once.
            unsafe { queue.push(*f, 1) };
        }
        let queued = queue.len();
        let mut handed = [None, None, None];
        let mut n = 0;
        let result = queue.isolate(|f| {
            if let Some(slot) = handed.get_mut(n) {
                *slot = Some(f);
            }
            n += 1;
        });
        let emptied = queue.is_empty();
        let first_handed = handed[0].as_ref().map(|f| Some(f.as_ptr()) == folios[0]);
        // SAFETY: The locked table keeps the folios.
        let left = [1, 2].map(|i| folios[i].map(|f| unsafe { facts(f) }.locked));
        drop(handed);

        let mut full = IsolationQueue::new();
        for f in folios.iter().flatten() {
            // SAFETY: As above; the queue is dropped without isolating.
            unsafe { full.push(*f, 1) };
        }
        // The queue is dropped without isolating (it has no destructor).
        let (full_len, is_full) = (full.len(), full.is_full());
        drop(table);
        drop(pinned);
        drop(lock);
        drain_lru();
        let first_after = facts_at(&t, a);

        assert_eq!(queued, 3);
        assert_eq!(result, Err((1, IsolateError::Referenced)));
        assert_eq!(n, 1);
        assert!(emptied);
        assert_eq!(first_handed, Some(true));
        assert_eq!(left, [Some(false), Some(false)]);
        assert_eq!((full_len, is_full), (IsolationQueue::CAPACITY, true));
        assert_eq!(
            first_after.map(|f| (f.lru, f.locked, f.refs)),
            Some((true, false, 1))
        );
        Ok(())
    }

    /// A folio isolated and unmapped (its PTE cleared and its rmap removed, through a detached
    /// table) is released by `UnmappedFolios`; the page reads as new afterwards.
    #[test]
    fn unmapped_folios_release() -> Result {
        use crate::mm::{anon_vma::AnonVmaWriteGuard, pgtable::DetachedPteTable};
        let t = TestMm::attach()?;
        let p = t.map_pmd_range()?;
        t.write(p, b"stays")?;
        t.write(p + PAGE, b"goes away")?;
        drain_lru();

        let lock = MmapWriteLock::lock(t.mm());
        let vma = lock.find_vma(p).ok_or(EINVAL)?;
        let anon = AnonVmaWriteGuard::lock(&lock, vma).ok_or(EINVAL)?;
        let pmd = PmdEntry::find(&lock, p).ok_or(EINVAL)?;
        let end = p + crate::mm::pgtable::PMD_SIZE;
        let mut table = DetachedPteTable::detach(&lock, &anon, vma, pmd, p, end).ok_or(EINVAL)?;
        // SAFETY: Entry 1 is mapped, and only the detached table can change it.
        let page = NonNull::new(unsafe {
            bindings::vm_normal_page(vma.as_ptr(), p + PAGE, bindings::ptep_get(table.entry(1)))
        })
        .ok_or(EINVAL)?;
        // SAFETY: The detached table maps the page, which keeps its folio.
        let folio = unsafe { page_folio(page) };
        // SAFETY: As above.
        let isolated = unsafe { IsolatedFolio::isolate(folio, 1) };
        let ok = isolated.is_ok();
        // SAFETY: As above.
        let before = unsafe { facts(folio) };
        let mut released = false;
        if let Ok(isolated) = isolated {
            let mut locked = table.lock();
            if locked.clear(1, 1) {
                // SAFETY: The PTE that mapped `page` of `folio` in `vma` was just cleared, under
                // the table's lock, which we hold; the isolation keeps the folio.
                unsafe { remove_rmap_ptes(folio, page, 1, vma) };
                drop(locked);
                // The mapping is gone: uncount it as the page table's owner would.
                t.count_anon(-1);
                let mut batch = UnmappedFolios::new();
                // SAFETY: The reference of the mapping just removed is ours.
                unsafe { batch.add(isolated, 1) };
                released = true;
            }
        }
        drop(table);
        drop(anon);
        drop(lock);

        let mut stays = [0u8; 5];
        let mut gone = [0xffu8; 9];
        t.read(p, &mut stays)?;
        t.read(p + PAGE, &mut gone)?;
        assert!(ok);
        assert_eq!((before.locked, before.lru, before.refs), (true, false, 2));
        assert!(released);
        assert_eq!(&stays, b"stays");
        assert_eq!(gone, [0u8; 9]);
        Ok(())
    }
}
