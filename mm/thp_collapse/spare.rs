// SPDX-License-Identifier: GPL-2.0

//! Working memory kept between requests.
//!
//! A collapse needs a few KiB of lists to hold what it isolates. Allocating and freeing them for
//! every MADV_COLLAPSE call (or khugepaged step) churns the slab and the page allocator, whose
//! per-CPU lists then flush to the zone more often, with interrupts off: measurably slower, for
//! this core and for the C one in the same boot. So one of each kind is kept between requests:
//! a request takes it if nobody else holds it (or allocates its own), and gives it back, cleared,
//! when it ends (or frees it, if another request gave one back first). The next request may run
//! on another thread: what is kept must be [`Send`].

use crate::outcome::Fail;
use kernel::{
    alloc::{flags::GFP_KERNEL, KBox},
    sync::atomic::{Acquire, Atomic, Release},
};

/// The slot where a [`Spare`] of `T` is kept: null, or a value that a [`Spare`] leaked from a
/// `KBox` after clearing it, owned by whoever takes it out.
pub(crate) type Slot<T> = Atomic<*mut T>;

/// A request's `T`: the one kept in `slot` if it was free, or a new one; given back to `slot`,
/// emptied by `clear`, when the value is dropped.
pub(crate) struct Spare<T: Send + 'static> {
    slot: &'static Slot<T>,
    value: Option<KBox<T>>,
    clear: fn(&mut T),
}

impl<T: Send + 'static> Spare<T> {
    /// Nothing taken yet; [`Spare::get`] takes it. `clear` releases whatever a value still
    /// holds before it is kept (puts back the folios of a list, say), so that the next request
    /// finds nothing of this one.
    pub(crate) const fn new(slot: &'static Slot<T>, clear: fn(&mut T)) -> Self {
        Self {
            slot,
            value: None,
            clear,
        }
    }

    /// The request's value: the kept one if it is free, else one `make` creates. May sleep.
    pub(crate) fn get(&mut self, make: impl FnOnce() -> Result<T, Fail>) -> Result<&mut T, Fail> {
        if self.value.is_none() {
            let kept = self.slot.xchg(core::ptr::null_mut(), Acquire);
            self.value = Some(if kept.is_null() {
                KBox::new(make()?, GFP_KERNEL).map_err(|_| Fail::AllocHugePage)?
            } else {
                // SAFETY: A non-null slot holds a value that `Spare::drop` leaked from a
                // `KBox`; the exchange above made it ours alone.
                unsafe { KBox::from_raw(kept) }
            });
        }
        self.value.as_deref_mut().ok_or(Fail::AllocHugePage)
    }
}

impl<T: Send + 'static> Drop for Spare<T> {
    fn drop(&mut self) {
        let Some(mut value) = self.value.take() else {
            return;
        };
        (self.clear)(&mut value);
        let raw = KBox::into_raw(value);
        if self
            .slot
            .cmpxchg(core::ptr::null_mut(), raw, Release)
            .is_err()
        {
            // Another request gave its value back first: this one goes.
            // SAFETY: `raw` came from `KBox::into_raw` above and was not shared.
            drop(unsafe { KBox::from_raw(raw) });
        }
    }
}
