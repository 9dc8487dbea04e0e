// SPDX-License-Identifier: GPL-2.0

//! What the transparent hugepage code asks of a VMA and of an mm: the kind of memory it maps,
//! and whether flags, `prctl()` and sysfs allow huge folios in it.
//!
//! C headers: [`include/linux/huge_mm.h`](srctree/include/linux/huge_mm.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h),
//! [`include/linux/userfaultfd_k.h`](srctree/include/linux/userfaultfd_k.h)

use crate::{
    bindings,
    mm::{virt::VmaRef, Mm},
};

/// Who asks whether huge folios are allowed in a VMA; the answer differs. C: `enum tva_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TvaType {
    /// khugepaged, collapsing in the background.
    Khugepaged,
    /// `MADV_COLLAPSE`, asked for by user space: sysfs `never` does not stop it.
    ForcedCollapse,
}

impl TvaType {
    fn to_raw(self) -> bindings::tva_type {
        match self {
            Self::Khugepaged => bindings::tva_type_TVA_KHUGEPAGED,
            Self::ForcedCollapse => bindings::tva_type_TVA_FORCED_COLLAPSE,
        }
    }
}

/// VMA properties the THP code asks about.
///
/// # Examples
///
/// ```
/// use kernel::mm::{thp::TvaType, virt::VmaRef};
///
/// /// Whether khugepaged may collapse the PMD range at `addr` of `vma` into one huge folio.
/// fn khugepaged_may_collapse(vma: &VmaRef, addr: usize) -> bool {
///     let pmd_order = kernel::mm::thp::PMD_ORDER;
///     vma.is_anonymous()
///         && !vma.userfaultfd_armed()
///         && vma.thp_suitable_order(addr, pmd_order)
///         && vma.thp_allowable_orders(TvaType::Khugepaged, 1 << pmd_order) != 0
/// }
/// ```
impl VmaRef {
    /// Whether the VMA maps private anonymous memory. C: `vma_is_anonymous()`.
    #[inline]
    pub fn is_anonymous(&self) -> bool {
        // SAFETY: By the type invariants of `VmaRef` the VMA is valid and its lock is held.
        unsafe { bindings::vma_is_anonymous(self.as_ptr()) }
    }

    /// Whether the VMA is registered with userfaultfd (missing, minor or write-protect
    /// faults). C: `userfaultfd_armed()`.
    #[inline]
    pub fn userfaultfd_armed(&self) -> bool {
        // SAFETY: As above.
        unsafe { bindings::userfaultfd_armed(self.as_ptr()) }
    }

    /// Whether the VMA's memory may be dropped under memory pressure (`MAP_DROPPABLE`).
    /// C: `vma_is_droppable()`.
    #[inline]
    pub fn is_droppable(&self) -> bool {
        // SAFETY: As above.
        unsafe { bindings::vma_is_droppable(self.as_ptr()) }
    }

    /// Which of `orders` (bit `n` for order `n`) flags, `prctl()` and sysfs allow huge folios
    /// of in this VMA, when `who` asks. C: `thp_vma_allowable_orders()`.
    #[inline]
    pub fn thp_allowable_orders(&self, who: TvaType, orders: u64) -> u64 {
        // SAFETY: As above.
        let allowed = unsafe {
            bindings::thp_vma_allowable_orders(
                self.as_ptr(),
                self.flags(),
                who.to_raw(),
                orders as usize,
            )
        };
        allowed as u64
    }

    /// Whether the naturally aligned range of a folio of `order` around `addr` lies inside the
    /// VMA, with file offsets that suit it too. C: `thp_vma_suitable_order()`.
    #[inline]
    pub fn thp_suitable_order(&self, addr: usize, order: u32) -> bool {
        let Ok(order) = i32::try_from(order) else {
            return false;
        };
        // SAFETY: As above.
        unsafe { bindings::thp_vma_suitable_order(self.as_ptr(), addr, order) }
    }
}

/// What the collapse of file and shmem memory asks of a VMA.
impl VmaRef {
    /// The file it maps, if any.
    #[inline]
    pub fn file(&self) -> Option<&crate::fs::File> {
        // SAFETY: The VMA is valid (type invariants of `VmaRef`); `vm_file` does not change
        // while it lives, and holds a reference to the file.
        let file = unsafe { (*self.as_ptr()).vm_file };
        // SAFETY: A VMA's file is a valid `struct file` for as long as the VMA.
        (!file.is_null()).then(|| unsafe { crate::fs::File::from_raw_file(file) })
    }

    /// The index in its file of the page it maps at `addr`. C: `linear_page_index()`.
    #[inline]
    pub fn linear_page_index(&self, addr: usize) -> usize {
        // SAFETY: As above; `vm_pgoff` is stable under the VMA's lock.
        let pgoff = unsafe { (*self.as_ptr()).vm_pgoff };
        (addr.wrapping_sub(self.start()) >> crate::page::PAGE_SHIFT).wrapping_add(pgoff)
    }

    /// Whether it is registered for uffd-wp (or RWP), which keeps per-PTE state in its page
    /// tables. C: `userfaultfd_protected()`.
    #[inline]
    pub fn userfaultfd_protected(&self) -> bool {
        // SAFETY: As above.
        unsafe { bindings::userfaultfd_protected(self.as_ptr()) }
    }
}

/// The order of a PMD-mapped folio.
pub const PMD_ORDER: u32 = bindings::PMD_SHIFT - crate::page::PAGE_SHIFT as u32;

impl Mm {
    /// Whether THP was disabled for the whole process (`prctl(PR_SET_THP_DISABLE)` without
    /// flags). C: `mm_flags_test(MMF_DISABLE_THP_COMPLETELY, mm)`.
    #[inline]
    pub fn thp_disabled_completely(&self) -> bool {
        // SAFETY: The mm is valid (type invariants of `Mm`); testing a flag is an atomic test.
        unsafe {
            bindings::mm_flags_test(bindings::MMF_DISABLE_THP_COMPLETELY as i32, self.as_raw())
        }
    }
}

#[cfg(CONFIG_RUST_MM_KUNIT_TEST)]
#[macros::kunit_tests(rust_mm_thp)]
mod tests {
    use super::*;
    use crate::{
        error::code::EINVAL,
        mm::{
            mmap_lock::{MmapLocked, MmapReadLock},
            test_mm::{ShmemFile, TestMm, PAGE, PMD_SIZE},
        },
        prelude::*,
    };

    /// The PMD order as a bit of an order mask.
    const PMD: u64 = 1 << PMD_ORDER;

    /// A private anonymous VMA is anonymous, maps no file, and is neither registered with
    /// userfaultfd nor droppable; a `MAP_DROPPABLE` one is droppable.
    #[test]
    fn anonymous_and_droppable_vmas() -> Result {
        let t = TestMm::attach()?;
        let a = t.map_anon(4 * PAGE)?;
        let d = t.map_droppable(4 * PAGE)?;
        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let anon = (
            vma.is_anonymous(),
            vma.file().is_none(),
            vma.userfaultfd_armed(),
            vma.userfaultfd_protected(),
            vma.is_droppable(),
        );
        let droppable = lock.find_vma(d).ok_or(EINVAL)?.is_droppable();
        drop(lock);
        assert_eq!(anon, (true, true, false, false, false));
        assert!(droppable);
        Ok(())
    }

    /// A shared shmem VMA is not anonymous, maps its file, and maps the file's pages from its
    /// offset on.
    #[test]
    fn shmem_vma_file_and_index() -> Result {
        let t = TestMm::attach()?;
        let file = ShmemFile::new(8 * PAGE)?;
        let a = t.map_shared(&file, 4 * PAGE, 3)?;
        let lock = MmapReadLock::lock(t.mm());
        let vma = lock.find_vma(a).ok_or(EINVAL)?;
        let anonymous = vma.is_anonymous();
        let same_file = vma
            .file()
            .is_some_and(|f| core::ptr::eq(f.as_ptr(), file.file().as_ptr()));
        let index = [
            vma.linear_page_index(a),
            vma.linear_page_index(a + 2 * PAGE + 5),
        ];
        drop(lock);
        assert!(!anonymous);
        assert!(same_file);
        assert_eq!(index, [3, 5]);
        Ok(())
    }

    /// A whole PMD range inside a VMA suits the PMD order; a VMA smaller than that does not,
    /// nor does an order that does not fit in an `int`; any VMA suits order 0.
    #[test]
    fn suitable_orders() -> Result {
        let t = TestMm::attach()?;
        let p = t.map_pmd_range()?;
        // Droppable: a VMA of its own, which cannot merge with the other.
        let small = t.map_droppable(4 * PAGE)?;
        let lock = MmapReadLock::lock(t.mm());
        let big = lock.find_vma(p).ok_or(EINVAL)?;
        let little = lock.find_vma(small).ok_or(EINVAL)?;
        let got = [
            big.thp_suitable_order(p, PMD_ORDER),
            big.thp_suitable_order(p + PMD_SIZE - PAGE, PMD_ORDER),
            little.thp_suitable_order(small, PMD_ORDER),
            little.thp_suitable_order(small, 0),
            big.thp_suitable_order(p, u32::MAX),
        ];
        drop(lock);
        assert_eq!(got, [true, true, false, true, false]);
        Ok(())
    }

    /// The orders khugepaged and `MADV_COLLAPSE` may use: none before the VMA has an anon_vma,
    /// then following `MADV_HUGEPAGE`, `MADV_NOHUGEPAGE` and the mm's
    /// `MMF_DISABLE_THP_COMPLETELY` (sysfs `enabled` is `madvise` at boot).
    #[test]
    fn allowable_orders_follow_advice_and_mm() -> Result {
        let t = TestMm::attach()?;
        let p = t.map_pmd_range()?;
        let orders = |t: &TestMm| -> Result<(u64, u64)> {
            let lock = MmapReadLock::lock(t.mm());
            let vma = lock.find_vma(p).ok_or(EINVAL)?;
            Ok((
                vma.thp_allowable_orders(TvaType::Khugepaged, PMD),
                vma.thp_allowable_orders(TvaType::ForcedCollapse, PMD),
            ))
        };
        let unfaulted = orders(&t)?;
        t.write(p, b"anon_vma")?;
        let plain = orders(&t)?;
        t.madvise(p, PMD_SIZE, bindings::MADV_HUGEPAGE)?;
        let advised = orders(&t)?;
        let mm = t.mm();
        let completely_before = mm.thp_disabled_completely();
        let flag = bindings::MMF_DISABLE_THP_COMPLETELY as i32;
        // SAFETY: The mm is valid; setting one of its flags is an atomic bit operation.
        unsafe { bindings::mm_flags_set(flag, mm.as_raw()) };
        let completely = mm.thp_disabled_completely();
        let disabled = orders(&t)?;
        // SAFETY: As above.
        unsafe { bindings::mm_flags_clear(flag, mm.as_raw()) };
        let completely_after = mm.thp_disabled_completely();
        t.madvise(p, PMD_SIZE, bindings::MADV_NOHUGEPAGE)?;
        let refused = orders(&t)?;
        assert_eq!(unfaulted, (0, 0));
        assert_eq!(plain, (0, PMD));
        assert_eq!(advised, (PMD, PMD));
        assert!(!completely_before);
        assert!(completely);
        assert_eq!(disabled, (0, 0));
        assert!(!completely_after);
        assert_eq!(refused, (0, 0));
        Ok(())
    }
}
