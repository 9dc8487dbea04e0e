// SPDX-License-Identifier: GPL-2.0

//! The anonymous PMD ranges a collapse is copying, so that a MADV_COLLAPSE of such a range
//! waits for that collapse instead of failing.
//!
//! The early copy ([`EarlyCopy`](super::early::EarlyCopy)) holds a reference to each page it
//! copies, under the mmap lock for read. A second collapse of the range whose scan runs
//! meanwhile reads those references as pins and stops at `SCAN_PAGE_COUNT`: MADV_COLLAPSE
//! would return `-EAGAIN`, where upstream, which copies under the mmap lock for write, has the
//! second scan wait for that lock, find the range PMD-mapped, and return 0. So a collapse
//! claims its PMD range ([`Claim`]) from its scan's end until its last candidate (khugepaged
//! and mTHP-order requests may collapse several in one range) returns; a MADV_COLLAPSE
//! whose scan stopped at a reference count while another collapse claims the range drops the
//! mmap lock, waits for the claim to go ([`wait_for_claim`], at most [`WAIT_MS`]), and scans
//! again, once. khugepaged and MADV_F_COLLAPSE_LIGHT requests do not wait: the first comes
//! back later, the second asked for nothing that blocks.
//!
//! A claim is one word: the address of the mm xor the address of the range, which is
//! PMD-aligned, with bit 0 set. Two ranges of two mms could share a word; that costs a wait
//! that was not needed, never a wrong result. With every one of the [`SLOTS`] taken (more
//! collapses at once than CPUs, or nearly), a collapse goes without a claim, and a second
//! collapse of its range may fail as it did before this file.
//!
//! No upstream counterpart: upstream serialises the collapses of an mm with its mmap lock.

use kernel::{
    bindings,
    ffi::c_long,
    mm::Mm,
    sync::{
        atomic::{Atomic, Full, Relaxed},
        barrier::{smp_mb, Read},
    },
    time::msecs_to_jiffies,
};

/// How many collapses can hold a claim at once.
pub(crate) const SLOTS: usize = 64;

/// How long a MADV_COLLAPSE waits at most for another collapse of its range: much longer than
/// a collapse takes, short enough that a stuck one (a folio lock held over I/O) costs little.
pub(crate) const WAIT_MS: u32 = 1000;

/// The claims; 0 marks a free slot (no mm is at address 0).
static CLAIMS: [Atomic<usize>; SLOTS] = [const { Atomic::new(0) }; SLOTS];

/// The word that claims the PMD range at `haddr` of `mm`.
fn claim_word(mm: &Mm, haddr: usize) -> usize {
    // Both addresses are aligned: bit 0 is free to keep the word from 0 on any architecture.
    (core::ptr::from_ref(mm) as usize ^ haddr) | 1
}

/// A collapse's claim on its range; dropping it gives it up and wakes the collapses waiting for
/// it.
pub(crate) struct Claim {
    /// The slot holding the claim.
    slot: &'static Atomic<usize>,
}

impl Claim {
    /// Claims the PMD range at `haddr` of `mm`, in the first free slot; `None` if every slot is
    /// taken. A range already claimed (an mTHP collapse of the range, say) is claimed again.
    pub(crate) fn take(mm: &Mm, haddr: usize) -> Option<Self> {
        take_in(&CLAIMS, claim_word(mm, haddr))
    }
}

/// [`Claim::take`], of the word `word`, among `slots`.
fn take_in(slots: &'static [Atomic<usize>], word: usize) -> Option<Claim> {
    slots
        .iter()
        // Fully ordered: stored before the early copy takes its references (`folio_get()`,
        // unordered), which a scan that sees them reads first (`claimed()`). A plain read
        // first: the collapses of the machine do not all write to the first slot's line.
        .find(|slot| slot.load(Relaxed) == 0 && slot.cmpxchg(0, word, Full).is_ok())
        .map(|slot| Claim { slot })
}

impl Drop for Claim {
    fn drop(&mut self) {
        // SAFETY: `self.slot` is a valid `usize` for as long as the kernel runs (an `Atomic`
        // has the layout of its value); the C side stores to it with release ordering and
        // wakes its waiters, which only read it.
        unsafe { bindings::thp_collapse_drop_claim(self.slot.as_ptr()) };
    }
}

/// Whether a collapse claims the PMD range at `haddr` of `mm`. Called after reading a page's
/// reference count: if that read saw a reference an early copy took, this sees the claim,
/// which was stored before the reference was taken.
pub(crate) fn claimed(mm: &Mm, haddr: usize) -> bool {
    let word = claim_word(mm, haddr);
    // Orders the reads of the reference counts before those of the slots.
    smp_mb(Read);
    CLAIMS.iter().any(|slot| slot.load(Relaxed) == word)
}

/// If a collapse claims the PMD range at `haddr` of `mm`, waits for it to give the claim up,
/// at most [`WAIT_MS`], and returns `true`; else returns `false` at once.
///
/// The caller holds no lock: the collapse it waits for takes the mmap lock for write. Sleeps.
pub(crate) fn wait_for_claim(mm: &Mm, haddr: usize) -> bool {
    let timeout = c_long::try_from(msecs_to_jiffies(WAIT_MS)).unwrap_or(c_long::MAX);
    wait_in(&CLAIMS, claim_word(mm, haddr), timeout).is_some()
}

/// [`wait_for_claim`], of the word `word`, among `slots`, for `timeout` jiffies at most:
/// `None` if no slot holds `word`, else whether its claim went within `timeout`.
fn wait_in(slots: &'static [Atomic<usize>], word: usize, timeout: c_long) -> Option<bool> {
    let slot = slots.iter().find(|slot| slot.load(Relaxed) == word)?;
    // SAFETY: `slot` is a valid `usize` for as long as the kernel runs, which the C side only
    // reads.
    let left = unsafe { bindings::thp_collapse_wait_claim(slot.as_ptr(), word, timeout) };
    Some(left > 0)
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kernel::macros::kunit_tests(thp_collapse_claim)]
mod tests {
    use super::*;

    /// Claims go to free slots, none when all are taken, and their drop frees the slot.
    #[test]
    fn claims_take_free_slots_and_give_them_back() {
        static SLOTS2: [Atomic<usize>; 2] = [const { Atomic::new(0) }; 2];
        let a = take_in(&SLOTS2, 0x1000);
        let b = take_in(&SLOTS2, 0x2000);
        assert!(a.is_some() && b.is_some());
        assert_eq!(SLOTS2[0].load(Relaxed), 0x1000);
        assert_eq!(SLOTS2[1].load(Relaxed), 0x2000);
        // Full: the next collapse goes without a claim.
        assert!(take_in(&SLOTS2, 0x3000).is_none());
        drop(a);
        assert_eq!(SLOTS2[0].load(Relaxed), 0);
        let c = take_in(&SLOTS2, 0x3000);
        assert_eq!(SLOTS2[0].load(Relaxed), 0x3000);
        drop((b, c));
        assert!(SLOTS2.iter().all(|s| s.load(Relaxed) == 0));
    }

    /// A wait for an unclaimed range returns at once, one for a claim held throughout at its
    /// timeout.
    #[test]
    fn a_wait_ends_with_the_claim_or_its_time() {
        static SLOTS1: [Atomic<usize>; 1] = [const { Atomic::new(0) }; 1];
        // Nobody claims the range: no wait.
        assert_eq!(wait_in(&SLOTS1, 0x1000, 1), None);
        let claim = take_in(&SLOTS1, 0x1000);
        assert!(claim.is_some());
        // Claimed throughout: the wait times out (one jiffy).
        assert_eq!(wait_in(&SLOTS1, 0x1000, 1), Some(false));
        // Another range's claim does not hold this one up.
        assert_eq!(wait_in(&SLOTS1, 0x2000, 1), None);
        drop(claim);
        assert_eq!(wait_in(&SLOTS1, 0x1000, 1), None);
    }
}
