// SPDX-License-Identifier: GPL-2.0

//! The transparent hugepage collapse core, in Rust.
//!
//! It turns the base pages mapped by one page table into one PMD-mapped huge page, for
//! `madvise(MADV_COLLAPSE)`, `process_madvise(MADV_COLLAPSE)` and khugepaged. The C glue in
//! `mm/thp_collapse_glue.c` and the hooks in `mm/khugepaged.c` hand requests here when
//! `/sys/kernel/mm/transparent_hugepage/collapse/core` selects `rust`.
//!
//! # Lock order
//!
//! To avoid deadlocks, locks are taken in the order:
//!  1. mmap lock (read to scan, write to isolate and install),
//!  2. anon_vma lock (write) or i_mmap lock (read, for a file: every VMA that maps it),
//!  3. PMD page-table lock,
//!  4. PTE page-table lock (nested).
//!
//! A collapse in the page cache (shmem and files) holds no mmap lock: there the order is the
//! folio locks, then the i_mmap lock (read), then the anon_vma lock, the xarray lock (with
//! interrupts off) and the page-table locks. It only ever *tries* the mmap lock of another VMA
//! (to retract the page table of a CoWed private mapping), since that lock comes first.
//!
//! The huge folio is allocated and charged to the memory cgroup before the mmap write lock is
//! taken. mmu notifier range start/end brackets the PMD clear. Every function that can drop the
//! mmap lock says so in its return type.
//!
//! # Status
//!
//! Implemented for private anonymous memory, shmem and files, for all three callers: the range
//! loop and its errno, eligibility and revalidation, the scan, the mTHP order plan
//! (khugepaged), allocation and memcg charge, swap-in, isolation, the machine-check-safe copy,
//! the install, and rollback; for shmem and files (`file.rs`), the page cache scan, the
//! collapse in the page cache, the retraction of page tables in every VMA that maps the range,
//! and the PMD mapping of the new folio.
//!
//! The locks, page tables and folios are guards of `kernel::mm`; the raw calls into C that only
//! the collapse needs are in `ffi/` (with the folio isolation protocol and the page cache of a
//! file collapse), the crate's only user of `bindings` apart from the signatures of the entry
//! points below.
//!
//! C header: [`mm/khugepaged_internal.h`](srctree/mm/khugepaged_internal.h)

use kernel::{
    bindings,
    mm::{virt::VmaRef, Mm},
    pr_warn_once,
    prelude::*,
    str::Formatter,
};

#[path = "thp_collapse/anon/mod.rs"]
mod anon;
#[path = "thp_collapse/ffi/mod.rs"]
mod ffi;
#[path = "thp_collapse/file.rs"]
mod file;
#[path = "thp_collapse/new_folio.rs"]
mod new_folio;
#[path = "thp_collapse/outcome.rs"]
mod outcome;
#[path = "thp_collapse/plan.rs"]
mod plan;
#[path = "thp_collapse/request.rs"]
mod request;
#[path = "thp_collapse/scan.rs"]
mod scan;
#[path = "thp_collapse/spare.rs"]
mod spare;
#[path = "thp_collapse/stats.rs"]
mod stats;
#[path = "thp_collapse/vma.rs"]
mod vma;
#[path = "thp_collapse/vocab.rs"]
mod vocab;

/// Prefix of this crate's kernel log messages (used by the `pr_*!` macros).
const __LOG_PREFIX: &[u8] = b"thp_collapse\0";

use anon::RequestState;
use ffi::to_scan_result;
use stats::STATS;
use vocab::{Caller, LockHistory, Locked, MmapRead, PteSpan, RequestFlags};

/// MADV_COLLAPSE of `[start, end)` inside `vma`, for `madvise_collapse()`.
///
/// Returns 0 when every PMD-aligned range inside `[start, end)` is PMD-mapped on return, else
/// the negative errno of the last failure (see `Documentation/admin-guide/mm/transhuge.rst`).
///
/// # Safety
///
/// `vma` must be a valid VMA of the calling context's target mm, whose mmap lock is held for
/// read and stays held on return (`*lock_dropped` is set if it was dropped and retaken in
/// between); `[start, end)` must lie inside `vma`; `lock_dropped` must be valid for writes.
#[export]
pub unsafe extern "C" fn thp_collapse_rust_madvise(
    vma: *mut bindings::vm_area_struct,
    start: kernel::ffi::c_ulong,
    end: kernel::ffi::c_ulong,
    lock_dropped: *mut bool,
    caller: bindings::collapse_caller,
    flags: kernel::ffi::c_uint,
) -> kernel::ffi::c_int {
    let caller = match Caller::from_u32(caller) {
        Some(c @ (Caller::Madvise | Caller::ProcessMadvise)) => c,
        _ => return EINVAL.to_errno(),
    };
    let flags = match RequestFlags::from_uapi(flags) {
        Ok(flags) => flags,
        Err(e) => return e.to_errno(),
    };
    // SAFETY: The caller holds the mmap read lock, so `vma` is a live VMA.
    let vma = unsafe { VmaRef::from_raw(vma) };
    if start < vma.start() || end > vma.end() || start > end {
        pr_warn_once!("madvise_collapse: range outside its VMA\n");
        return EINVAL.to_errno();
    }
    // SAFETY: The caller holds the mmap lock of the VMA's mm for read and expects it held on
    // return; `request::madvise` hands it back.
    let guard = unsafe { MmapRead::adopt(vma.mm()) };
    // SAFETY: `vma` is a VMA of that mm, which the caller found under the lock.
    unsafe { guard.remember_vma(vma.as_ptr()) };
    let done = request::madvise(guard, start, end, caller, flags);
    done.guard.keep();
    if done.history == LockHistory::Retaken {
        // SAFETY: The caller guarantees that `lock_dropped` is valid for writes.
        unsafe { *lock_dropped = true };
    }
    match done.result {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// Collapses the PMD range at `addr` for khugepaged's scan of `mm`.
///
/// Adds the number of page-table entries it looked at to `*progress`.
///
/// # Safety
///
/// `mm` must be valid and its mmap lock held for read; `vma` must be a VMA of `mm` that covers
/// the PMD range at `addr`; `lock_dropped` and `progress` must be valid for writes. If
/// `*lock_dropped` is set on return, the mmap lock was released and `vma` must not be used.
#[export]
pub unsafe extern "C" fn thp_collapse_rust_khugepaged_pmd(
    mm: *mut bindings::mm_struct,
    vma: *mut bindings::vm_area_struct,
    addr: kernel::ffi::c_ulong,
    lock_dropped: *mut bool,
    progress: *mut kernel::ffi::c_uint,
) -> bindings::scan_result {
    // SAFETY: The caller holds `mm`'s mmap lock for read (so the `mm_struct` is alive) and
    // hands it over for the duration of the call.
    let guard = unsafe { MmapRead::adopt(Mm::from_raw(mm)) };
    // SAFETY: The caller found `vma`, a VMA of `mm`, under the lock it hands over.
    unsafe { guard.remember_vma(vma) };
    let (attempt, scanned, state) = request::collapse_pmd(
        guard,
        addr,
        PteSpan::WHOLE,
        Caller::Khugepaged,
        RequestFlags::NONE,
        &mut RequestState::for_request(),
    );
    match state {
        Locked::Held(guard) => guard.keep(),
        // SAFETY: The caller guarantees that `lock_dropped` is valid for writes.
        Locked::Dropped => unsafe { *lock_dropped = true },
    }
    // SAFETY: The caller guarantees that `progress` is valid for writes.
    unsafe { *progress = (*progress).saturating_add(scanned) };
    to_scan_result(&attempt)
}

/// Writes the counters of `caller` into `buf`, the sysfs file
/// `transparent_hugepage/collapse/rust_stats/<caller>`: one `<result> <count>` line per
/// `enum scan_result` code. Returns the number of bytes written, or a negative errno.
///
/// # Safety
///
/// `buf` must be valid for writes of `PAGE_SIZE` bytes (a sysfs `show()` buffer).
#[export]
pub unsafe extern "C" fn thp_collapse_rust_stats_show(
    caller: bindings::collapse_caller,
    buf: *mut kernel::ffi::c_char,
) -> isize {
    let Some(caller) = Caller::from_u32(caller) else {
        return EINVAL.to_errno() as isize;
    };
    // SAFETY: The caller guarantees that `buf` is valid for writes of `PAGE_SIZE` bytes, and
    // nothing else accesses it during the call.
    let buf = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), kernel::page::PAGE_SIZE) };
    let mut out = Formatter::new(buf);
    match STATS.show(caller, &mut out) {
        // At most `PAGE_SIZE` bytes.
        Ok(()) => out.bytes_written() as isize,
        Err(_) => EOVERFLOW.to_errno() as isize,
    }
}
