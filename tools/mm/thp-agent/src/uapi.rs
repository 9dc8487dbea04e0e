//! Kernel UAPI constants and structures used by the tool, in one place.
//!
//! Every item names the header or document it comes from. The paths are those
//! of a Linux 7.3 source tree; the `MADV_F_COLLAPSE_*` flags are new UAPI that
//! this project adds to `process_madvise(2)` and are not in upstream Linux
//! (upstream rejects any non-zero `flags` argument with `EINVAL`).

use std::mem::size_of;

/// Base page size in bytes on x86_64 (`PAGE_SIZE`, `arch/x86/include/asm/page_types.h`).
pub const PAGE_SIZE: u64 = 4096;

/// Order of a PMD-mapped huge page on x86_64 with 4 KiB pages
/// (`HPAGE_PMD_ORDER` = `PMD_SHIFT - PAGE_SHIFT` = 21 - 12, `include/linux/huge_mm.h`).
pub const HPAGE_PMD_ORDER: u32 = 9;

/// Size in bytes of a PMD-mapped huge page: 2 MiB (`HPAGE_PMD_SIZE`, `include/linux/huge_mm.h`).
pub const HPAGE_PMD_SIZE: u64 = PAGE_SIZE << HPAGE_PMD_ORDER;

/// Syscall number of `pidfd_open(2)` on x86_64
/// (`arch/x86/entry/syscalls/syscall_64.tbl`: `434 common pidfd_open`).
pub const SYS_PIDFD_OPEN: libc::c_long = 434;

/// Syscall number of `process_madvise(2)` on x86_64
/// (`arch/x86/entry/syscalls/syscall_64.tbl`: `440 common process_madvise`).
pub const SYS_PROCESS_MADVISE: libc::c_long = 440;

/// `madvise(2)` advice asking for a synchronous collapse into huge pages
/// (`include/uapi/asm-generic/mman-common.h`: `#define MADV_COLLAPSE 25`).
pub const MADV_COLLAPSE: libc::c_int = 25;

/// `process_madvise(2)` flag: khugepaged's limits (`max_ptes_none`,
/// `max_ptes_swap`, `max_ptes_shared`) apply to the collapse (`EBUSY` for too
/// many empty PTEs, `EINVAL` for too many swapped or shared pages).
/// New UAPI of this project (`include/uapi/asm-generic/mman-common.h` and
/// `Documentation/admin-guide/mm/thp_collapse_rust.rst` in its kernel part);
/// upstream Linux rejects every non-zero flag with `EINVAL`.
pub const MADV_F_COLLAPSE_LIMITS: u32 = 0x1;

/// `process_madvise(2)` flag: the huge page may be allocated with direct
/// reclaim and compaction (`GFP_TRANSHUGE`), which is what MADV_COLLAPSE does
/// anyway; the explicit opposite of [`MADV_F_COLLAPSE_LIGHT`], and `EINVAL`
/// together with it. New UAPI of this project (see [`MADV_F_COLLAPSE_LIMITS`]).
pub const MADV_F_COLLAPSE_DEFRAG: u32 = 0x2;

/// `process_madvise(2)` flag: never block. No direct reclaim or compaction
/// (`GFP_TRANSHUGE_LIGHT`), no swap-in, page cache read, writeback or page
/// lock wait; a range that would need one fails with `EAGAIN`.
/// New UAPI of this project (see [`MADV_F_COLLAPSE_LIMITS`]).
pub const MADV_F_COLLAPSE_LIGHT: u32 = 0x4;

/// Shift of the folio order field in the `process_madvise(2)` flags
/// (`MADV_F_COLLAPSE_ORDER(n) = (n & 0x3f) << 8`). Specified for this tool by
/// the project; a kernel that does not know it fails with `EINVAL`.
pub const MADV_F_COLLAPSE_ORDER_SHIFT: u32 = 8;

/// Mask of the folio order field, before shifting (see [`MADV_F_COLLAPSE_ORDER_SHIFT`]).
pub const MADV_F_COLLAPSE_ORDER_MASK: u32 = 0x3f;

/// `MADV_F_COLLAPSE_ORDER(n)`: ask for folios of order `n` (0 means the PMD
/// order). See [`MADV_F_COLLAPSE_ORDER_SHIFT`].
pub const fn madv_f_collapse_order(order: u32) -> u32 {
    (order & MADV_F_COLLAPSE_ORDER_MASK) << MADV_F_COLLAPSE_ORDER_SHIFT
}

/// `ioctl` type ("magic") of the procfs ioctls
/// (`include/uapi/linux/fs.h`: `#define PROCFS_IOCTL_MAGIC 'f'`).
pub const PROCFS_IOCTL_MAGIC: u8 = b'f';

/// Builds an `_IOWR(type, nr, size)` ioctl number as
/// `include/uapi/asm-generic/ioctl.h` does (direction bits 30-31, size bits
/// 16-29, type bits 8-15, number bits 0-7).
const fn iowr(ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    const IOC_WRITE: libc::c_ulong = 1;
    const IOC_READ: libc::c_ulong = 2;
    ((IOC_READ | IOC_WRITE) << 30)
        | ((size as libc::c_ulong) << 16)
        | ((ty as libc::c_ulong) << 8)
        | nr as libc::c_ulong
}

/// The `PAGEMAP_SCAN` ioctl on `/proc/PID/pagemap`
/// (`include/uapi/linux/fs.h`: `_IOWR(PROCFS_IOCTL_MAGIC, 16, struct pm_scan_arg)`;
/// `Documentation/admin-guide/mm/pagemap.rst`). Added in Linux 6.7; older
/// kernels fail it with `ENOTTY`.
pub const PAGEMAP_SCAN: libc::c_ulong = iowr(PROCFS_IOCTL_MAGIC, 16, size_of::<PmScanArg>());

/// `PAGE_IS_HUGE`: the page is part of a PMD-mapped THP or is hugetlb-backed
/// (`include/uapi/linux/fs.h`). It does not report PTE-mapped (mTHP) folios.
pub const PAGE_IS_HUGE: u64 = 1 << 6;

/// `struct page_region` (`include/uapi/linux/fs.h`): one run of pages with the
/// same categories, as filled in by `PAGEMAP_SCAN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    /// Start address of the run.
    pub start: u64,
    /// End address of the run (exclusive).
    pub end: u64,
    /// `PAGE_IS_*` categories of the run (masked by `return_mask`).
    pub categories: u64,
}

/// `struct pm_scan_arg` (`include/uapi/linux/fs.h`): the argument of `PAGEMAP_SCAN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmScanArg {
    /// Size of this structure; the kernel rejects any other value with `EINVAL`.
    pub size: u64,
    /// `PM_SCAN_*` flags (write-protect operations); always 0 here.
    pub flags: u64,
    /// Start of the range to scan (page aligned).
    pub start: u64,
    /// End of the range to scan (exclusive).
    pub end: u64,
    /// Written by the kernel: where the walk stopped (equal to `end` when done).
    pub walk_end: u64,
    /// User address of the `struct page_region` output array.
    pub vec: u64,
    /// Number of entries in the output array.
    pub vec_len: u64,
    /// Optional limit on the number of pages reported (0 = none).
    pub max_pages: u64,
    /// Categories that match when their bit is 0 instead of 1.
    pub category_inverted: u64,
    /// Skip pages for which any of these categories does not match.
    pub category_mask: u64,
    /// Skip pages for which none of these categories matches.
    pub category_anyof_mask: u64,
    /// Categories reported in [`PageRegion::categories`].
    pub return_mask: u64,
}

const _: () = assert!(size_of::<PageRegion>() == 24);
const _: () = assert!(size_of::<PmScanArg>() == 96);

/// Global THP mode for anonymous memory
/// (`Documentation/admin-guide/mm/transhuge.rst`, "Global THP controls").
pub const THP_ENABLED_PATH: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The collapse core selected in this project's kernel, `[rust] c` or
/// `rust [c]` (`Documentation/admin-guide/mm/thp_collapse_rust.rst`); only the
/// Rust core serves the `MADV_F_COLLAPSE_*` flags. Absent on other kernels.
pub const THP_COLLAPSE_CORE_PATH: &str = "/sys/kernel/mm/transparent_hugepage/collapse/core";

/// Root of the DAMON sysfs interface
/// (`Documentation/admin-guide/mm/damon/usage.rst`, "Root").
pub const DAMON_SYSFS_ADMIN: &str = "/sys/kernel/mm/damon/admin";

/// Memory pressure stall information (`Documentation/accounting/psi.rst`).
pub const PSI_MEMORY_PATH: &str = "/proc/pressure/memory";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_scan_ioctl_number() {
        // _IOWR('f', 16, 96 bytes) as computed by the C macros.
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
    }

    #[test]
    fn syscall_numbers_match_libc() {
        assert_eq!(SYS_PIDFD_OPEN, libc::SYS_pidfd_open);
        assert_eq!(SYS_PROCESS_MADVISE, libc::SYS_process_madvise);
    }

    #[test]
    fn pmd_size_is_2mib() {
        assert_eq!(HPAGE_PMD_SIZE, 2 << 20);
    }

    #[test]
    fn order_field_encoding() {
        assert_eq!(madv_f_collapse_order(0), 0);
        assert_eq!(madv_f_collapse_order(4), 0x400);
        assert_eq!(madv_f_collapse_order(9), 0x900);
        // Only six bits are kept.
        assert_eq!(madv_f_collapse_order(0x40 | 3), 0x300);
    }
}
