// SPDX-License-Identifier: GPL-2.0

//! The collapse core's shared vocabulary: the PMD geometry, who asks for a collapse and the
//! rules each kind of request follows, what one candidate is, and where the mmap lock stands.
//!
//! Every other module of the crate may use this one; it uses none of them (it is the leaf of
//! the crate's module graph). Pure logic: no `unsafe`, no `bindings`.

use kernel::mm::{mmap_lock::MmapReadLock, virt::VmaRef};
use kernel::prelude::*;

/// The PMD order: a PMD maps `2^PMD_ORDER` base pages. The kernel's own value, the one source
/// of the PMD geometry in this crate.
pub(crate) const PMD_ORDER: u32 = kernel::mm::thp::PMD_ORDER;

/// Number of PTEs under one PMD.
pub(crate) const PTES_PER_PMD: u32 = 1 << PMD_ORDER;

/// Size of the range one PMD maps.
pub(crate) const PMD_SIZE: usize = kernel::mm::pgtable::PMD_SIZE;

/// The smallest order an anonymous folio of a collapse may have (`KHUGEPAGED_MIN_MTHP_ORDER`).
pub(crate) const MIN_MTHP_ORDER: u32 = 2;

/// Every order an anonymous folio of a collapse may have, bit `n` for order `n`
/// (`THP_ORDERS_ALL_ANON`).
pub(crate) const ALL_ANON_ORDERS: u64 = ((1 << (PMD_ORDER + 1)) - 1) & !((1 << MIN_MTHP_ORDER) - 1);

// The occupancy bitmap of a page table (`plan::Occupied`) is made of 64-bit words, and the
// tunables' defaults and the mTHP orders assume a 4 KiB base page under a 2 MiB PMD (x86-64,
// which the Kconfig entry depends on).
const _: () = {
    assert!(PTES_PER_PMD % 64 == 0);
    assert!(PMD_SIZE == (PTES_PER_PMD as usize) << kernel::page::PAGE_SHIFT);
    assert!(PMD_ORDER == 9);
};

/// The largest value of the khugepaged `max_ptes_*` tunables (`KHUGEPAGED_MAX_PTES_LIMIT`).
pub(crate) const MAX_PTES_LIMIT: u32 = PTES_PER_PMD - 1;

/// The mmap lock held for read (`kernel::mm::mmap_lock`).
pub(crate) type MmapRead<'a> = MmapReadLock<'a>;

/// Where the mmap lock stands after a step that may have dropped it.
pub(crate) enum Locked<'a> {
    /// Still held, never released in between.
    Held(MmapRead<'a>),
    /// Released; VMAs seen before are stale.
    Dropped,
}

/// Whether the mmap lock was released (and taken again) during a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockHistory {
    /// Held throughout.
    Kept,
    /// Released at least once; the caller must look its VMAs up again.
    Retaken,
}

/// One candidate of a collapse: `1 << order` PTEs from entry `first` of the page table of the
/// PMD range at `haddr`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    /// The start of the PMD range.
    pub(crate) haddr: usize,
    /// The first entry.
    pub(crate) first: usize,
    /// The folio order.
    pub(crate) order: u32,
}

impl Candidate {
    /// The number of PTEs it covers.
    pub(crate) fn nr(self) -> usize {
        1 << self.order
    }
}

/// The entries `[first, end)` of the page table of one PMD range that a collapse step works
/// on: all of them, except for a MADV_COLLAPSE to an mTHP order of a range that covers part
/// of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PteSpan {
    /// The first entry.
    pub(crate) first: usize,
    /// The entry after the last.
    pub(crate) end: usize,
}

impl PteSpan {
    /// The whole table.
    pub(crate) const WHOLE: Self = Self {
        first: 0,
        end: PTES_PER_PMD as usize,
    };

    /// The entries of the PMD range at `haddr` that `[start, end)` covers.
    pub(crate) fn of(haddr: usize, start: usize, end: usize) -> Self {
        let page =
            |addr: usize| (addr.clamp(haddr, haddr + PMD_SIZE) - haddr) >> kernel::page::PAGE_SHIFT;
        Self {
            first: page(start),
            end: page(end),
        }
    }

    /// The number of entries.
    pub(crate) fn len(self) -> usize {
        self.end.saturating_sub(self.first)
    }
}

/// Who asked for a collapse. The values are those of the C `enum collapse_caller`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Caller {
    /// `madvise(MADV_COLLAPSE)`, also through io_uring.
    Madvise = 0,
    /// `process_madvise(MADV_COLLAPSE)`.
    ProcessMadvise = 1,
    /// The khugepaged kernel thread.
    Khugepaged = 2,
}

impl Caller {
    /// Number of callers.
    pub(crate) const COUNT: usize = 3;

    /// All callers, in numeric order.
    pub(crate) const ALL: [Caller; Self::COUNT] =
        [Caller::Madvise, Caller::ProcessMadvise, Caller::Khugepaged];

    /// Returns the caller with number `raw`, if there is one.
    pub(crate) fn from_u32(raw: u32) -> Option<Self> {
        Self::ALL.get(usize::try_from(raw).ok()?).copied()
    }

    /// The rules a request of this caller with `flags` follows (khugepaged has none).
    pub(crate) const fn mode(self, flags: RequestFlags) -> CollapseMode {
        match self {
            Caller::Madvise | Caller::ProcessMadvise => CollapseMode::Madvise(flags),
            Caller::Khugepaged => CollapseMode::Khugepaged,
        }
    }
}

/// Which PTE limits a MADV_COLLAPSE request honours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PteLimits {
    /// None: every PTE may be empty, swapped or shared (upstream MADV_COLLAPSE).
    Ignore,
    /// khugepaged's `max_ptes_{none,swap,shared}` (`MADV_F_COLLAPSE_LIMITS`).
    Khugepaged,
}

/// How hard a MADV_COLLAPSE request may try: what it may wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effort {
    /// Upstream MADV_COLLAPSE (flags = 0): direct reclaim and compaction, page locks,
    /// writeback and swap-in may all be waited for.
    Standard,
    /// `MADV_F_COLLAPSE_DEFRAG`: as [`Effort::Standard`], and the huge folio's allocation retries
    /// direct reclaim and compaction for as long as they make progress
    /// ([`AllocPolicy::Retry`]), where [`Effort::Standard`] gives up after one round at a costly
    /// order (above `PAGE_ALLOC_COSTLY_ORDER`); at orders 2 and 3 it fails where
    /// [`Effort::Standard`] may call the OOM killer. The request stops between ranges once the
    /// caller has a fatal signal pending.
    Defrag,
    /// `MADV_F_COLLAPSE_LIGHT`: nothing that would block. No direct reclaim or compaction
    /// (nor kswapd woken), no swap-in, no page cache read, no writeback and no wait for a page
    /// or invalidate lock: a range that would need any of them fails with
    /// [`Fail::WouldBlock`](crate::outcome::Fail::WouldBlock) (`EAGAIN`).
    Light,
}

/// The `MADV_F_COLLAPSE_*` flags of a process_madvise() request, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RequestFlags {
    /// The PTE limits.
    pub(crate) limits: PteLimits,
    /// The effort.
    pub(crate) effort: Effort,
    /// The order of the folios to collapse into: the PMD order, or (for anonymous memory,
    /// `MADV_F_COLLAPSE_ORDER(n)`) an mTHP order from [`MIN_MTHP_ORDER`] up.
    pub(crate) order: u32,
}

impl RequestFlags {
    /// No flags: exactly upstream's MADV_COLLAPSE, as madvise(2) asks.
    pub(crate) const NONE: Self = Self {
        limits: PteLimits::Ignore,
        effort: Effort::Standard,
        order: PMD_ORDER,
    };

    /// `MADV_F_COLLAPSE_LIMITS` (the UAPI values are asserted in `ffi`).
    pub(crate) const LIMITS: u32 = 0x1;
    /// `MADV_F_COLLAPSE_DEFRAG`.
    pub(crate) const DEFRAG: u32 = 0x2;
    /// `MADV_F_COLLAPSE_LIGHT`.
    pub(crate) const LIGHT: u32 = 0x4;
    /// `MADV_F_COLLAPSE_ORDER_SHIFT`: where `MADV_F_COLLAPSE_ORDER(n)` puts `n`.
    pub(crate) const ORDER_SHIFT: u32 = 8;
    /// `MADV_F_COLLAPSE_ORDER_MASK`: the bits of the order field.
    pub(crate) const ORDER_MASK: u32 = 0x3f << Self::ORDER_SHIFT;

    /// Checks the `flags` argument of process_madvise(MADV_COLLAPSE): `EINVAL` for an
    /// unknown flag, for DEFRAG and LIGHT together, or for an order no anonymous folio can
    /// have (1, or above the PMD order; 0 stands for the PMD order). Whether the VMA allows
    /// the order is the request's own check.
    pub(crate) fn from_uapi(flags: u32) -> Result<Self> {
        if flags & !(Self::LIMITS | Self::DEFRAG | Self::LIGHT | Self::ORDER_MASK) != 0 {
            return Err(EINVAL);
        }
        let order = match (flags & Self::ORDER_MASK) >> Self::ORDER_SHIFT {
            0 => PMD_ORDER,
            n if n <= PMD_ORDER && ALL_ANON_ORDERS & (1 << n) != 0 => n,
            _ => return Err(EINVAL),
        };
        let effort = match (flags & Self::DEFRAG != 0, flags & Self::LIGHT != 0) {
            (true, true) => return Err(EINVAL),
            (false, true) => Effort::Light,
            (true, false) => Effort::Defrag,
            (false, false) => Effort::Standard,
        };
        let limits = if flags & Self::LIMITS != 0 {
            PteLimits::Khugepaged
        } else {
            PteLimits::Ignore
        };
        Ok(Self {
            limits,
            effort,
            order,
        })
    }

    /// The `flags` argument these flags come from, as the tracepoints record it (the PMD order
    /// read as not asked for).
    pub(crate) fn to_uapi(self) -> u32 {
        let mut flags = 0;
        if self.limits == PteLimits::Khugepaged {
            flags |= Self::LIMITS;
        }
        flags |= match self.effort {
            Effort::Standard => 0,
            Effort::Defrag => Self::DEFRAG,
            Effort::Light => Self::LIGHT,
        };
        if self.order != PMD_ORDER {
            flags |= self.order << Self::ORDER_SHIFT;
        }
        flags
    }
}

/// The two kinds of collapse, which differ in how hard they try and what they tolerate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CollapseMode {
    /// Background collapse by khugepaged: honours the `max_ptes_*` tunables, the
    /// referenced/young heuristics and the `defrag` knob; may collapse to mTHP orders.
    Khugepaged,
    /// MADV_COLLAPSE, also through process_madvise, on the caller's behalf: ignores the
    /// heuristics, and collapses to the one order of its request (the PMD order without
    /// flags). Without flags it ignores the tunables and may enter direct reclaim and
    /// compaction; the flags of its request may ask for the tunables' limits, for reclaim and
    /// compaction retried while they make progress, for nothing that blocks, or for an mTHP
    /// order.
    Madvise(RequestFlags),
}

/// The khugepaged tunables in `/sys/kernel/mm/transparent_hugepage/khugepaged/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tunables {
    /// `max_ptes_none`.
    pub(crate) max_ptes_none: u32,
    /// `max_ptes_swap`.
    pub(crate) max_ptes_swap: u32,
    /// `max_ptes_shared`.
    pub(crate) max_ptes_shared: u32,
    /// How khugepaged allocates, from `defrag`: [`AllocPolicy::Reclaim`] (direct reclaim and
    /// compaction) if it is set, [`AllocPolicy::Light`] if not.
    pub(crate) alloc: AllocPolicy,
}

impl Tunables {
    /// The values khugepaged boots with (`khugepaged_init()`); what MADV_COLLAPSE, which
    /// ignores the tunables, passes around instead of reading them.
    pub(crate) const DEFAULTS: Tunables = Tunables {
        max_ptes_none: MAX_PTES_LIMIT,
        max_ptes_swap: PTES_PER_PMD / 8,
        max_ptes_shared: PTES_PER_PMD / 2,
        alloc: AllocPolicy::Reclaim,
    };
}

/// How much of a range may be missing or shared for a collapse to go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most PTEs that may be none or map the zero page.
    pub(crate) max_none: u32,
    /// Most PTEs (or page cache entries) that may be swapped out.
    pub(crate) max_swap: u32,
    /// Most PTEs that may map anonymous pages shared with another process.
    pub(crate) max_shared: u32,
}

/// Whether userfaultfd watches a VMA for missing pages (`userfaultfd_armed()`): a collapse
/// must then not fill its holes, which would hide them from the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Userfault {
    /// Registered for missing-page (or minor) faults.
    Armed,
    /// Not registered.
    Unarmed,
}

impl Userfault {
    /// What `vma` is.
    pub(crate) fn of(vma: &VmaRef) -> Self {
        if vma.userfaultfd_armed() {
            Userfault::Armed
        } else {
            Userfault::Unarmed
        }
    }
}

/// How the collapse's huge folio is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllocPolicy {
    /// `GFP_TRANSHUGE`: direct reclaim and compaction allowed.
    Reclaim,
    /// `GFP_TRANSHUGE | __GFP_RETRY_MAYFAIL`: direct reclaim and compaction, retried for as
    /// long as they make progress (without the OOM killer), as hugetlb's pool allocation does.
    Retry,
    /// `GFP_TRANSHUGE_LIGHT`: no direct reclaim, give up quickly.
    Light,
    /// `GFP_TRANSHUGE_LIGHT` for a request that must not block (`MADV_F_COLLAPSE_LIGHT`): a
    /// failure is [`Fail::WouldBlock`](crate::outcome::Fail::WouldBlock), not a lack of memory.
    NoWait,
}

impl CollapseMode {
    /// MADV_COLLAPSE without flags.
    pub(crate) const MADVISE: Self = CollapseMode::Madvise(RequestFlags::NONE);

    /// Whether this is MADV_COLLAPSE (with any flags).
    pub(crate) fn is_madvise(self) -> bool {
        matches!(self, CollapseMode::Madvise(_))
    }

    /// The orders (bit `n` for order `n`) a collapse in this mode may try, before the VMA has
    /// its say: khugepaged every anonymous order (largest first, `plan.rs`), MADV_COLLAPSE the
    /// one its request asks for.
    pub(crate) fn anon_orders(self) -> u64 {
        match self {
            CollapseMode::Khugepaged => ALL_ANON_ORDERS,
            CollapseMode::Madvise(flags) => 1 << flags.order,
        }
    }

    /// What the collapse may wait for. khugepaged may wait for anything: its `defrag`
    /// tunable only decides the allocation ([`CollapseMode::alloc_policy`]).
    pub(crate) fn effort(self) -> Effort {
        match self {
            CollapseMode::Madvise(flags) => flags.effort,
            CollapseMode::Khugepaged => Effort::Standard,
        }
    }

    /// The limits for a collapse to `order` in a VMA that userfaultfd watches (or not).
    ///
    /// Upstream reference: `collapse_max_ptes_{none,swap,shared}()` in `mm/khugepaged.c`.
    pub(crate) fn limits(self, t: &Tunables, order: u32, uffd: Userfault) -> Limits {
        let pmd = order == PMD_ORDER;
        match self {
            CollapseMode::Madvise(RequestFlags {
                limits: PteLimits::Khugepaged,
                ..
            }) => CollapseMode::Khugepaged.limits(t, order, uffd),
            CollapseMode::Madvise(_) => Limits {
                max_none: match uffd {
                    Userfault::Armed => 0,
                    Userfault::Unarmed => PTES_PER_PMD,
                },
                max_swap: PTES_PER_PMD,
                max_shared: PTES_PER_PMD,
            },
            CollapseMode::Khugepaged => Limits {
                max_none: if uffd == Userfault::Armed {
                    0
                } else if pmd {
                    t.max_ptes_none
                } else if t.max_ptes_none == MAX_PTES_LIMIT {
                    (1 << order) - 1
                } else {
                    0
                },
                max_swap: if pmd { t.max_ptes_swap } else { 0 },
                max_shared: if pmd { t.max_ptes_shared } else { 0 },
            },
        }
    }

    /// How the huge folio is allocated.
    pub(crate) fn alloc_policy(self, t: &Tunables) -> AllocPolicy {
        match self {
            CollapseMode::Madvise(flags) => match flags.effort {
                Effort::Standard => AllocPolicy::Reclaim,
                Effort::Defrag => AllocPolicy::Retry,
                Effort::Light => AllocPolicy::NoWait,
            },
            CollapseMode::Khugepaged => t.alloc,
        }
    }

    /// The fewest referenced (young) pages a range needs to be worth collapsing, given how many
    /// of its PTEs are swapped out. khugepaged wants proof that the range is in use, and more of
    /// it when the collapse costs swap-in I/O; MADV_COLLAPSE asks for nothing.
    pub(crate) fn min_referenced(self, swapped: u32) -> u32 {
        match self {
            CollapseMode::Madvise(_) => 0,
            CollapseMode::Khugepaged if swapped > 0 => PTES_PER_PMD / 2,
            CollapseMode::Khugepaged => 1,
        }
    }

    /// Whether lazily-freed (MADV_FREE) pages stop the collapse.
    pub(crate) fn skips_lazyfree(self) -> bool {
        self == CollapseMode::Khugepaged
    }
}

#[cfg(CONFIG_THP_COLLAPSE_RUST_KUNIT_TEST)]
#[kunit_tests(thp_collapse_vocab)]
mod tests {
    use super::*;

    #[test]
    fn callers_map_to_modes() {
        let none = RequestFlags::NONE;
        assert_eq!(Caller::Madvise.mode(none), CollapseMode::MADVISE);
        assert_eq!(Caller::ProcessMadvise.mode(none), CollapseMode::MADVISE);
        assert_eq!(Caller::Khugepaged.mode(none), CollapseMode::Khugepaged);
        for (i, c) in Caller::ALL.iter().enumerate() {
            assert_eq!(Caller::from_u32(i as u32), Some(*c));
        }
        assert_eq!(Caller::from_u32(3), None);
    }

    #[test]
    fn pte_spans_clamp_to_the_table() {
        let h = 4 * PMD_SIZE;
        assert_eq!(PteSpan::of(h, 0, usize::MAX), PteSpan::WHOLE);
        assert_eq!(
            PteSpan::of(h, h + 0x10000, h + 0x20000),
            PteSpan { first: 16, end: 32 }
        );
        assert_eq!(
            PteSpan::of(h, h + 0x10000, h + 3 * PMD_SIZE).len(),
            512 - 16
        );
        assert_eq!(PteSpan::of(h, 0, h).len(), 0);
        assert_eq!(PteSpan::WHOLE.len(), 512);
    }

    #[test]
    fn request_flags_from_uapi() {
        let f = |raw| RequestFlags::from_uapi(raw);
        assert!(f(0) == Ok(RequestFlags::NONE));
        let defrag = f(RequestFlags::DEFRAG);
        assert!(defrag.map(|r| r.effort) == Ok(Effort::Defrag));
        assert!(
            defrag.map(|r| CollapseMode::Madvise(r).alloc_policy(&Tunables::DEFAULTS))
                == Ok(AllocPolicy::Retry)
        );
        let light = f(RequestFlags::LIGHT | RequestFlags::LIMITS);
        assert!(
            light
                == Ok(RequestFlags {
                    limits: PteLimits::Khugepaged,
                    effort: Effort::Light,
                    order: PMD_ORDER,
                })
        );
        assert!(f(RequestFlags::DEFRAG | RequestFlags::LIGHT) == Err(EINVAL));
        for bit in (3..32).filter(|b| !(8..14).contains(b)) {
            assert!(f(1 << bit) == Err(EINVAL));
        }
        // MADV_F_COLLAPSE_ORDER(n): 0 is the PMD order, 2 to 9 are anonymous folio orders.
        let order = |n: u32| f(n << RequestFlags::ORDER_SHIFT).map(|r| r.order);
        assert!(order(0) == Ok(PMD_ORDER));
        for n in 2..=PMD_ORDER {
            assert!(order(n) == Ok(n));
        }
        for n in [1, PMD_ORDER + 1, 63] {
            assert!(order(n) == Err(EINVAL));
        }
        for raw in [
            0,
            RequestFlags::LIMITS | RequestFlags::LIGHT | 4 << RequestFlags::ORDER_SHIFT,
            RequestFlags::DEFRAG,
        ] {
            assert!(f(raw).map(RequestFlags::to_uapi) == Ok(raw));
        }
        let light4 = f(RequestFlags::LIGHT | 4 << RequestFlags::ORDER_SHIFT);
        assert!(light4.map(|r| (r.effort, r.order)) == Ok((Effort::Light, 4)));
        assert_eq!(
            CollapseMode::Madvise(RequestFlags {
                order: 4,
                ..RequestFlags::NONE
            })
            .anon_orders(),
            1 << 4
        );
        assert_eq!(CollapseMode::MADVISE.anon_orders(), 1 << PMD_ORDER);
        assert_eq!(CollapseMode::Khugepaged.anon_orders(), ALL_ANON_ORDERS);
    }

    #[test]
    fn flags_decide_limits_allocation_and_effort() {
        let strict = Tunables {
            max_ptes_none: 7,
            max_ptes_swap: 3,
            max_ptes_shared: 5,
            alloc: AllocPolicy::Light,
        };
        let limited = CollapseMode::Madvise(RequestFlags {
            limits: PteLimits::Khugepaged,
            ..RequestFlags::NONE
        });
        let l = limited.limits(&strict, PMD_ORDER, Userfault::Unarmed);
        assert_eq!((l.max_none, l.max_swap, l.max_shared), (7, 3, 5));
        // The limits do not bring khugepaged's defrag or heuristics along.
        assert_eq!(limited.alloc_policy(&strict), AllocPolicy::Reclaim);
        assert_eq!(limited.min_referenced(100), 0);
        assert_eq!(limited.effort(), Effort::Standard);
        let light = CollapseMode::Madvise(RequestFlags {
            effort: Effort::Light,
            ..RequestFlags::NONE
        });
        assert_eq!(light.alloc_policy(&strict), AllocPolicy::NoWait);
        assert_eq!(light.effort(), Effort::Light);
        assert_eq!(
            light
                .limits(&strict, PMD_ORDER, Userfault::Unarmed)
                .max_none,
            512
        );
        assert_eq!(CollapseMode::Khugepaged.effort(), Effort::Standard);
        assert!(light.is_madvise() && !CollapseMode::Khugepaged.is_madvise());
    }

    #[test]
    fn forced_ignores_tunables() {
        let strict = Tunables {
            max_ptes_none: 0,
            max_ptes_swap: 0,
            max_ptes_shared: 0,
            alloc: AllocPolicy::Light,
        };
        let l = CollapseMode::MADVISE.limits(&strict, PMD_ORDER, Userfault::Unarmed);
        assert_eq!(l.max_none, 512);
        assert_eq!(l.max_swap, 512);
        assert_eq!(l.max_shared, 512);
        assert_eq!(
            CollapseMode::MADVISE.alloc_policy(&strict),
            AllocPolicy::Reclaim
        );
        assert_eq!(CollapseMode::MADVISE.min_referenced(100), 0);
        assert!(!CollapseMode::MADVISE.skips_lazyfree());
    }

    #[test]
    fn uffd_armed_allows_no_holes() {
        assert_eq!(
            CollapseMode::MADVISE
                .limits(&Tunables::DEFAULTS, PMD_ORDER, Userfault::Armed)
                .max_none,
            0
        );
        assert_eq!(
            CollapseMode::Khugepaged
                .limits(&Tunables::DEFAULTS, PMD_ORDER, Userfault::Armed)
                .max_none,
            0
        );
        assert_eq!(
            CollapseMode::Khugepaged
                .limits(&Tunables::DEFAULTS, 4, Userfault::Armed)
                .max_none,
            0
        );
    }

    #[test]
    fn khugepaged_pmd_honours_tunables() {
        let l = CollapseMode::Khugepaged.limits(&Tunables::DEFAULTS, PMD_ORDER, Userfault::Unarmed);
        assert_eq!(
            l,
            Limits {
                max_none: 511,
                max_swap: 64,
                max_shared: 256
            }
        );
        let t = Tunables {
            max_ptes_none: 256,
            ..Tunables::DEFAULTS
        };
        assert_eq!(
            CollapseMode::Khugepaged
                .limits(&t, PMD_ORDER, Userfault::Unarmed)
                .max_none,
            256
        );
    }

    #[test]
    fn khugepaged_mthp_limits() {
        // 511 scales to the order; swap and shared are never allowed for mTHP.
        let l = CollapseMode::Khugepaged.limits(&Tunables::DEFAULTS, 4, Userfault::Unarmed);
        assert_eq!(
            l,
            Limits {
                max_none: 15,
                max_swap: 0,
                max_shared: 0
            }
        );
        assert_eq!(
            CollapseMode::Khugepaged
                .limits(&Tunables::DEFAULTS, 2, Userfault::Unarmed)
                .max_none,
            3
        );
        // Any other value is treated as 0, and so is 0 itself.
        for none in [0, 1, 256, 510] {
            let t = Tunables {
                max_ptes_none: none,
                ..Tunables::DEFAULTS
            };
            assert_eq!(
                CollapseMode::Khugepaged
                    .limits(&t, 4, Userfault::Unarmed)
                    .max_none,
                0
            );
        }
    }

    #[test]
    fn khugepaged_alloc_follows_defrag() {
        assert_eq!(
            CollapseMode::Khugepaged.alloc_policy(&Tunables::DEFAULTS),
            AllocPolicy::Reclaim
        );
        let t = Tunables {
            alloc: AllocPolicy::Light,
            ..Tunables::DEFAULTS
        };
        assert_eq!(
            CollapseMode::Khugepaged.alloc_policy(&t),
            AllocPolicy::Light
        );
    }

    #[test]
    fn khugepaged_referenced_requirement() {
        assert_eq!(CollapseMode::Khugepaged.min_referenced(0), 1);
        assert_eq!(CollapseMode::Khugepaged.min_referenced(1), 256);
        assert!(CollapseMode::Khugepaged.skips_lazyfree());
    }
}
