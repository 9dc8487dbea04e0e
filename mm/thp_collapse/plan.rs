// SPDX-License-Identifier: GPL-2.0

//! Which folio sizes khugepaged collapses a scanned page table into.
//!
//! After a successful scan, khugepaged tries the PMD order first; where the range has too
//! many empty PTEs for it (or the collapse fails in a way a smaller size might not), it tries
//! the two halves at the next enabled order, and so on down to order 2 (16 KiB), always on
//! naturally aligned ranges. MADV_COLLAPSE enables one order: the PMD order, for which the
//! plan is a single candidate, or the mTHP order of its request, whose blocks
//! `anon::collapse_span()` collapses one by one instead.
//!
//! This file is pure logic: no `unsafe`, no `bindings`.
//!
//! Upstream reference: `mthp_collapse()` in [`mm/khugepaged.c`](srctree/mm/khugepaged.c).

use crate::{
    outcome::{Attempt, Collapsed, Fail},
    vocab::{MIN_MTHP_ORDER, PMD_ORDER, PTES_PER_PMD},
};
#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
use kernel::prelude::*;

const WORDS: usize = PTES_PER_PMD as usize / 64;

/// The occupied (present, not the zero page) PTEs of one page table, one bit per entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Occupied([u64; WORDS]);

impl Occupied {
    /// No entry occupied.
    pub(crate) const EMPTY: Self = Self([0; WORDS]);

    /// Marks entry `i` occupied; out-of-range indices are ignored.
    pub(crate) fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    /// Marks the entries in `[from, to)` occupied; those out of range are ignored.
    pub(crate) fn set_range(&mut self, from: usize, to: usize) {
        set_bits(&mut self.0, from, to);
    }

    /// Unmarks entry `i`; out-of-range indices are ignored.
    pub(crate) fn remove(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    /// Whether entry `i` is marked.
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Whether an entry is marked in both sets.
    pub(crate) fn intersects(&self, other: &Self) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }

    /// Whether every entry marked in this set is marked in `other`.
    pub(crate) fn is_subset(&self, other: &Self) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }

    /// The set's words, entry `i` at bit `i % 64` of word `i / 64`: the layout of a C bitmap
    /// of the entries where `unsigned long` is 64 bits wide (see `ffi::writable_entries()`).
    pub(crate) fn words_mut(&mut self) -> &mut [u64; WORDS] {
        &mut self.0
    }

    /// How many of the entries in `[from, to)` are occupied.
    pub(crate) fn weight(&self, from: usize, to: usize) -> u32 {
        let to = to.min(PTES_PER_PMD as usize);
        let mut n = 0;
        let mut i = from;
        while i < to {
            // The bits `i .. end` of word `i / 64`.
            let end = (i - i % 64 + 64).min(to);
            let bits = self.0[i / 64] >> (i % 64);
            let len = end - i;
            let mask = if len == 64 { u64::MAX } else { (1 << len) - 1 };
            n += (bits & mask).count_ones();
            i = end;
        }
        n
    }
}

/// Sets bits `[from, to)` of the bitmap `words` (bit `i` at bit `i % 64` of word `i / 64`);
/// those past its end are ignored.
pub(crate) fn set_bits(words: &mut [u64], from: usize, to: usize) {
    let to = to.min(words.len() * 64);
    let mut i = from;
    while i < to {
        // The bits `i .. end` of word `i / 64`.
        let end = (i - i % 64 + 64).min(to);
        let len = end - i;
        let mask = if len == 64 { u64::MAX } else { (1 << len) - 1 };
        words[i / 64] |= mask << (i % 64);
        i = end;
    }
}

/// The highest order a naturally aligned folio starting at entry `offset` can have.
fn max_order_at(offset: usize) -> u32 {
    if offset == 0 {
        PMD_ORDER
    } else {
        offset.trailing_zeros().min(PMD_ORDER)
    }
}

/// What the plan does after a candidate ended with `attempt`.
enum Next {
    /// Go past this candidate.
    Offset,
    /// Try the same start with the next smaller order.
    SmallerOrder,
    /// Stop planning.
    Stop,
}

fn next_after(attempt: Attempt) -> Next {
    let fail = match attempt {
        Ok(_) => return Next::Offset,
        Err(fail) => fail,
    };
    match fail {
        Fail::PteMappedHugepage => Next::Offset,
        Fail::AllocHugePage
        | Fail::LackReferencedPage
        | Fail::ExceedNonePte
        | Fail::ExceedSwapPte
        | Fail::ExceedSharedPte
        | Fail::PageLock
        | Fail::PageCount
        | Fail::PageNull
        | Fail::DelPageLru
        | Fail::PteNonPresent
        | Fail::PteUffd
        | Fail::PageLazyfree => Next::SmallerOrder,
        _ => Next::Stop,
    }
}

/// Tries the candidates of a scanned page table, largest first.
///
/// `enabled` has bit `n` set for each order `n` allowed; `swapped` counts the swap PTEs the
/// scan accepted (they count as occupied for the PMD order only); `max_none(order)` is the
/// number of empty PTEs a folio of that order may cover; `collapse(offset, order)` collapses
/// `1 << order` entries starting at entry `offset`.
///
/// Returns [`Collapsed::Mapped`] if anything was collapsed, else the allocation failure if
/// there was one, else the last failure.
pub(crate) fn collapse_planned(
    occupied: &Occupied,
    enabled: u64,
    swapped: u32,
    max_none: impl Fn(u32) -> u32,
    mut collapse: impl FnMut(usize, u32) -> Attempt,
) -> Attempt {
    let mut last = Fail::Other;
    let mut collapsed = false;
    let mut alloc_failed = false;
    let mut offset = 0usize;
    let mut order = PMD_ORDER;
    while offset < PTES_PER_PMD as usize {
        let nr = 1usize << order;
        let mut next = Next::SmallerOrder;
        if enabled & (1 << order) != 0 {
            let mut occupied_ptes = occupied.weight(offset, offset + nr);
            if order == PMD_ORDER {
                occupied_ptes += swapped;
            }
            if occupied_ptes as usize + max_none(order) as usize >= nr {
                let attempt = collapse(offset, order);
                next = next_after(attempt);
                match attempt {
                    Ok(_) => collapsed = true,
                    Err(Fail::PteMappedHugepage) => {}
                    Err(Fail::AllocHugePage) => alloc_failed = true,
                    Err(other) => last = other,
                }
            }
        }
        match next {
            Next::Stop => break,
            Next::SmallerOrder
                if order > MIN_MTHP_ORDER && enabled & ((1u64 << order) - 1) != 0 =>
            {
                order -= 1;
            }
            Next::SmallerOrder | Next::Offset => {
                offset += nr;
                order = max_order_at(offset);
            }
        }
    }
    if collapsed {
        Ok(Collapsed::Mapped)
    } else if alloc_failed {
        Err(Fail::AllocHugePage)
    } else {
        Err(last)
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kunit_tests(thp_collapse_plan)]
mod tests {
    use super::*;

    const PMD_ONLY: u64 = 1 << PMD_ORDER;

    fn filled(ranges: &[(usize, usize)]) -> Occupied {
        let mut o = Occupied::default();
        for &(from, to) in ranges {
            for i in from..to {
                o.set(i);
            }
        }
        o
    }

    /// Runs a plan whose collapses always succeed; returns the (offset, order) tried.
    fn tried(o: &Occupied, enabled: u64, max_none: impl Fn(u32) -> u32) -> KVec<(usize, u32)> {
        let mut v = KVec::new();
        let _ = collapse_planned(o, enabled, 0, max_none, |off, order| {
            let _ = v.push((off, order), GFP_KERNEL);
            Ok(Collapsed::Mapped)
        });
        v
    }

    #[test]
    fn pmd_only_is_one_candidate() {
        let o = filled(&[(0, 512)]);
        assert_eq!(&tried(&o, PMD_ONLY, |_| 0)[..], &[(0, PMD_ORDER)]);
        // Not enough PTEs for the PMD order, and no smaller order: nothing.
        let half = filled(&[(0, 256)]);
        assert_eq!(tried(&half, PMD_ONLY, |_| 0).len(), 0);
        assert_eq!(&tried(&half, PMD_ONLY, |_| 256)[..], &[(0, PMD_ORDER)]);
    }

    #[test]
    fn half_filled_table_collapses_its_full_half() {
        // 64 KiB (order 4) enabled, the first 256 entries present, max_ptes_none 0.
        let o = filled(&[(0, 256)]);
        let enabled = PMD_ONLY | 1 << 4;
        let v = tried(&o, enabled, |_| 0);
        assert_eq!(v.len(), 16);
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, &(off, order))| off == i * 16 && order == 4));
    }

    #[test]
    fn swap_counts_for_the_pmd_order_only() {
        let o = filled(&[(0, 500)]);
        let mut seen = KVec::new();
        let r = collapse_planned(
            &o,
            PMD_ONLY | 1 << 2,
            12,
            |_| 0,
            |off, order| {
                let _ = seen.push((off, order), GFP_KERNEL);
                Ok(Collapsed::Mapped)
            },
        );
        assert_eq!(r, Ok(Collapsed::Mapped));
        assert_eq!(&seen[..], &[(0, PMD_ORDER)]);
    }

    #[test]
    fn failures_fall_back_or_stop() {
        let o = filled(&[(0, 512)]);
        let enabled = PMD_ONLY | 1 << 8;
        // The PMD order lacks references: both halves are tried at order 8.
        let mut seen = KVec::new();
        let r = collapse_planned(
            &o,
            enabled,
            0,
            |_| 0,
            |off, order| {
                let _ = seen.push((off, order), GFP_KERNEL);
                if order == PMD_ORDER {
                    Err(Fail::LackReferencedPage)
                } else {
                    Ok(Collapsed::Mapped)
                }
            },
        );
        assert_eq!(r, Ok(Collapsed::Mapped));
        assert_eq!(&seen[..], &[(0, PMD_ORDER), (0, 8), (256, 8)]);
        // A PMD mapping appeared: stop at once.
        let mut calls = 0;
        let r = collapse_planned(
            &o,
            enabled,
            0,
            |_| 0,
            |_, _| {
                calls += 1;
                Err(Fail::PmdMapped)
            },
        );
        assert_eq!((r, calls), (Err(Fail::PmdMapped), 1));
        // Allocation failures are reported over other failures.
        let r = collapse_planned(
            &o,
            enabled,
            0,
            |_| 0,
            |_, order| {
                if order == PMD_ORDER {
                    Err(Fail::AllocHugePage)
                } else {
                    Err(Fail::PageLock)
                }
            },
        );
        assert_eq!(r, Err(Fail::AllocHugePage));
    }

    #[test]
    fn weight_counts_the_range_only() {
        let o = filled(&[(3, 70), (100, 101), (500, 512)]);
        assert_eq!(o.weight(0, 512), 67 + 1 + 12);
        assert_eq!(o.weight(64, 128), 6 + 1);
        assert_eq!(o.weight(0, 3), 0);
        assert_eq!(o.weight(69, 70), 1);
        assert_eq!(o.weight(70, 100), 0);
        assert_eq!(o.weight(448, 1000), 12);
        assert_eq!(o.weight(10, 10), 0);
        assert_eq!(Occupied::EMPTY.weight(0, 512), 0);
        assert_eq!(filled(&[(0, 512)]).weight(0, 512), 512);
    }

    #[test]
    fn intersects_any_common_entry() {
        let o = filled(&[(3, 70), (500, 512)]);
        assert!(o.intersects(&filled(&[(69, 71)])));
        assert!(o.intersects(&filled(&[(511, 512)])));
        assert!(!o.intersects(&filled(&[(0, 3), (70, 500)])));
        assert!(!o.intersects(&Occupied::EMPTY));
        // Bit `i % 64` of word `i / 64`: the layout C's bitmap functions use.
        let mut w = Occupied::EMPTY;
        w.words_mut()[1] = 1 << 5;
        assert!(w.contains(69) && w.intersects(&o));
    }

    #[test]
    fn is_subset_of_a_set_that_holds_every_entry() {
        let o = filled(&[(3, 70), (500, 512)]);
        assert!(filled(&[(3, 4), (69, 70), (511, 512)]).is_subset(&o));
        assert!(o.is_subset(&o));
        assert!(Occupied::EMPTY.is_subset(&o));
        assert!(!filled(&[(69, 71)]).is_subset(&o));
        assert!(!filled(&[(2, 3)]).is_subset(&o));
        assert!(!o.is_subset(&Occupied::EMPTY));
    }

    #[test]
    fn set_range_is_set_of_each_entry() {
        for &(from, to) in &[
            (0, 512),
            (3, 70),
            (64, 128),
            (63, 65),
            (500, 600),
            (7, 7),
            (511, 512),
        ] {
            let mut o = filled(&[(1, 2)]);
            o.set_range(from, to);
            // `filled()` sets one entry at a time.
            assert_eq!(o, filled(&[(1, 2), (from, to.min(512))]));
        }
        let mut words = [0u64; 2];
        set_bits(&mut words, 60, 200);
        assert_eq!(words, [0xf << 60, u64::MAX]);
    }

    #[test]
    fn contains_is_one_bit() {
        let o = filled(&[(3, 70), (511, 512)]);
        assert!(!o.contains(2));
        assert!(o.contains(3));
        assert!(o.contains(63) && o.contains(64) && o.contains(69));
        assert!(!o.contains(70));
        assert!(o.contains(511));
        assert!(!o.contains(512));
        assert!(!Occupied::EMPTY.contains(0));
    }

    #[test]
    fn alignment_limits_the_next_order() {
        assert_eq!(max_order_at(0), PMD_ORDER);
        assert_eq!(max_order_at(4), 2);
        assert_eq!(max_order_at(256), 8);
        assert_eq!(max_order_at(384), 7);
        assert_eq!(crate::vocab::ALL_ANON_ORDERS, 0b11_1111_1100);
    }
}
