// SPDX-License-Identifier: GPL-2.0

//! What both backends (anonymous memory and the page cache) ask of a VMA and of the mmap lock
//! held over it: whether a collapse is allowed there, and whether it still is after the lock
//! was dropped and taken again.
//!
//! C header: [`include/linux/huge_mm.h`](srctree/include/linux/huge_mm.h)

use crate::{
    outcome::Fail,
    vocab::{CollapseMode, PMD_ORDER},
};
use kernel::mm::{
    mmap_lock::MmapLocked,
    pgtable::{PmdEntry, PmdState},
    thp::TvaType,
    virt::VmaRef,
};

/// What the collapse core asks of a held mmap lock, for read or for write, on top of
/// [`MmapLocked`].
pub(crate) trait CollapseLocked: MmapLocked {
    /// Whether the mm's last user is gone, or THP was disabled for the whole process
    /// (`prctl(PR_SET_THP_DISABLE)`). Upstream: `collapse_test_exit_or_disable()`.
    fn exiting_or_thp_disabled(&self) -> bool {
        self.mm_exiting() || self.locked_mm().thp_disabled_completely()
    }

    /// What the PMD covering `addr` holds, read without the page-table lock.
    ///
    /// Upstream: `find_pmd_or_thp_or_none()`.
    fn pmd_state(&self, addr: usize) -> PmdState {
        PmdEntry::find(self, addr).map_or(PmdState::None, PmdEntry::state)
    }

    /// The PMD entry covering `addr`, if it points to a page table; otherwise the failure that
    /// says why not. Upstream: `find_pmd_or_thp_or_none()`.
    fn pmd_table(&self, addr: usize) -> Result<PmdEntry<'_>, Fail> {
        let pmd = PmdEntry::find(self, addr).ok_or(Fail::NoPteTable)?;
        match pmd.state() {
            PmdState::Table => Ok(pmd),
            PmdState::Huge => Err(Fail::PmdMapped),
            PmdState::None => Err(Fail::NoPteTable),
        }
    }
}

impl<L: MmapLocked> CollapseLocked for L {}

/// Whether a PMD-sized collapse is allowed in `vma` for `mode`, by flags, prctl and sysfs.
///
/// Upstream: `collapse_possible()` / `thp_vma_allowable_order()`.
pub(crate) fn pmd_collapse_allowed(vma: &VmaRef, mode: CollapseMode) -> bool {
    allowed_orders(vma, mode, 1 << PMD_ORDER) != 0
}

/// Which of `orders` (bit `n` for order `n`) a collapse in `vma` for `mode` may produce, by
/// flags, prctl and sysfs. Upstream: `thp_vma_allowable_orders()`.
pub(crate) fn allowed_orders(vma: &VmaRef, mode: CollapseMode, orders: u64) -> u64 {
    let who = match mode {
        CollapseMode::Khugepaged => TvaType::Khugepaged,
        CollapseMode::Madvise(_) => TvaType::ForcedCollapse,
    };
    vma.thp_allowable_orders(who, orders)
}

/// Checks, after the mmap lock was taken again, that the PMD range at `addr` can still be
/// collapsed into a folio of `order`, and returns its VMA.
///
/// Upstream: `hugepage_vma_revalidate()`.
pub(crate) fn revalidate<'g, G: CollapseLocked>(
    guard: &'g G,
    addr: usize,
    mode: CollapseMode,
    order: u32,
) -> Result<&'g VmaRef, Fail> {
    if guard.exiting_or_thp_disabled() {
        return Err(Fail::AnyProcess);
    }
    let vma = guard.find_vma(addr).ok_or(Fail::VmaNull)?;
    // The whole PMD range must be inside the VMA, whatever the order: another VMA sharing the
    // page table could race with us.
    if !vma.thp_suitable_order(addr, PMD_ORDER) {
        return Err(Fail::AddressRange);
    }
    if allowed_orders(vma, mode, 1 << order) == 0 {
        return Err(Fail::VmaCheck);
    }
    Ok(vma)
}
