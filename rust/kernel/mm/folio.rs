// SPDX-License-Identifier: GPL-2.0

//! Folios this code allocated and owns alone, before they are mapped anywhere.
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)

use crate::{
    alloc::Flags,
    bindings,
    error::{
        code::{EHWPOISON, EINVAL, ENOMEM},
        to_result, Result,
    },
    mm::{virt::VmaRef, Mm},
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
/// use kernel::{alloc::flags::GFP_KERNEL, mm::folio::NewFolio};
///
/// // A 16 KiB folio on this CPU's node, freed at the end of the block.
/// let folio = NewFolio::alloc(GFP_KERNEL, 2, None)?;
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
    pub fn alloc(gfp: Flags, order: u32, nid: Option<i32>) -> Result<Self> {
        if order > bindings::MAX_PAGE_ORDER {
            return Err(ENOMEM);
        }
        // SAFETY: Always safe to call; a NULL nodemask allows every node.
        let nid = nid.unwrap_or_else(|| unsafe { bindings::numa_mem_id() });
        // SAFETY: `order` is valid (checked above); a NULL nodemask allows every node.
        let folio = unsafe { bindings::__folio_alloc(gfp.as_raw(), order, nid, ptr::null_mut()) };
        // INVARIANT: A new folio of `order`, and its only reference.
        NonNull::new(folio)
            .map(|folio| Self { folio, order })
            .ok_or(ENOMEM)
    }

    /// Allocates a folio of `order` with `gfp` on the nodes `nodes` chose (see
    /// [`NodeLoad::target`]): their first node if it can, else another of them.
    ///
    /// May sleep if `gfp` allows it. Fails with `ENOMEM`.
    pub fn alloc_on(gfp: Flags, order: u32, nodes: &Nodes) -> Result<Self> {
        if order > bindings::MAX_PAGE_ORDER {
            return Err(ENOMEM);
        }
        let mut mask = nodes.mask;
        // SAFETY: `order` is valid (checked above); `mask` is a nodemask that lives across the
        // call, and `node` a node of it.
        let folio = unsafe { bindings::__folio_alloc(gfp.as_raw(), order, nodes.node, &mut mask) };
        // INVARIANT: A new folio of `order`, and its only reference.
        NonNull::new(folio)
            .map(|folio| Self { folio, order })
            .ok_or(ENOMEM)
    }

    /// Charges the folio to the memory cgroup of `mm`. May sleep if `gfp` allows it (to reclaim
    /// within the cgroup).
    pub fn charge(&self, mm: &Mm, gfp: Flags) -> Result {
        // SAFETY: By the type invariants the folio is not shared, so nobody else charges it; `mm`
        // is valid.
        to_result(unsafe {
            bindings::mem_cgroup_charge(self.folio.as_ptr(), mm.as_raw(), gfp.as_raw())
        })
    }

    /// The folio, for C functions that fill it in (it stays owned by this value).
    #[inline]
    pub fn as_ptr(&self) -> *mut bindings::folio {
        self.folio.as_ptr()
    }

    /// The `struct page`s of the folio, consecutive: page `n` is `first_page().add(n)` for
    /// `n < 1 << order`. C: `folio_page()`, which is `&folio->page + n`.
    #[inline]
    pub(crate) fn first_page(&self) -> *mut bindings::page {
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
    #[inline]
    fn page(&self, n: usize) -> Option<*mut bindings::page> {
        // The `struct page`s of a folio are consecutive (`folio_page()`).
        (n < 1 << self.order).then(|| self.first_page().wrapping_add(n))
    }

    /// Fills page `n` with zeroes, for user address `addr` (which matters on machines with
    /// virtually indexed caches). Does nothing past the last page. C: `clear_user_highpage()`.
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
    /// `src` must be a page that stays valid during the call (of a locked folio that nothing
    /// maps, or one the caller holds a reference to). If it is written meanwhile, page `n`
    /// may hold a mix of the old and the new data.
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

#[cfg(CONFIG_RUST_MM_KUNIT_TEST)]
#[macros::kunit_tests(rust_mm_folio)]
mod tests {
    use super::*;
    use crate::{
        alloc::flags::GFP_KERNEL,
        error::code::EINVAL,
        mm::{
            mmap_lock::{MmapLocked, MmapReadLock},
            test_mm::{facts, read_page, write_page, TestMm, UserPage, PAGE},
        },
    };

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
        let folio = NewFolio::alloc_on(GFP_KERNEL, 0, &most_on_1)?;
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
        let folio = NewFolio::alloc(GFP_KERNEL, 2, None)?;
        // SAFETY: `folio` holds its only reference.
        let f = unsafe { facts(NonNull::new_unchecked(folio.as_ptr())) };
        // SAFETY: As above.
        let nr = unsafe { bindings::folio_nr_pages(folio.as_ptr()) };
        // SAFETY: As above.
        let charged = unsafe { bindings::folio_memcg_charged(folio.as_ptr()) };
        let first_is_folio = folio.first_page().cast::<bindings::folio>() == folio.as_ptr();
        let too_big = NewFolio::alloc(GFP_KERNEL, bindings::MAX_PAGE_ORDER + 1, None);
        let on_node0 = NewFolio::alloc(GFP_KERNEL, 0, Some(0))?;
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
        let folio = NewFolio::alloc(GFP_KERNEL, 0, None)?;
        // SAFETY: `folio` holds its only reference.
        let before = unsafe { bindings::folio_memcg_charged(folio.as_ptr()) };
        let charged = folio.charge(t.mm(), GFP_KERNEL);
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
        let mut folio = NewFolio::alloc(GFP_KERNEL, 1, None)?;
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
        let mut folio = NewFolio::alloc(GFP_KERNEL, 1, None)?;
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
        let folio = NewFolio::alloc(GFP_KERNEL, 0, None)?;
        let raw = NonNull::new(folio.into_raw()).ok_or(EINVAL)?;
        // SAFETY: We own the reference `into_raw()` handed over.
        let refs = unsafe { facts(raw) }.refs;
        // SAFETY: As above; dropped once, here.
        unsafe { bindings::folio_put(raw.as_ptr()) };
        assert_eq!(refs, 1);
        Ok(())
    }
}
