// SPDX-License-Identifier: GPL-2.0

//! Folios this code allocated and owns alone, before they are mapped anywhere.
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)

use crate::{
    bindings,
    error::{code::ENOMEM, Error, Result},
    mm::Mm,
};
use core::ptr::{self, NonNull};

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
    pub fn as_ptr(&self) -> *mut bindings::folio {
        self.folio.as_ptr()
    }

    /// The `struct page`s of the folio, consecutive: page `n` is `first_page().add(n)` for
    /// `n < 1 << order`. C: `folio_page()`.
    pub fn first_page(&self) -> *mut bindings::page {
        // SAFETY: By the type invariants the folio is valid.
        unsafe { bindings::folio_page(self.folio.as_ptr(), 0) }
    }

    /// Its order.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Gives up ownership: the caller takes over the reference (to map the folio).
    pub fn into_raw(self) -> *mut bindings::folio {
        let folio = self.folio.as_ptr();
        core::mem::forget(self);
        folio
    }
}

impl Drop for NewFolio {
    fn drop(&mut self) {
        // SAFETY: By the type invariants we hold the only reference; dropping it frees the folio.
        unsafe { bindings::folio_put(self.folio.as_ptr()) };
    }
}
