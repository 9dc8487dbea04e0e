//! Which pages of a process are PMD-mapped, from the `PAGEMAP_SCAN` ioctl on
//! `/proc/PID/pagemap` (`Documentation/admin-guide/mm/pagemap.rst`).
//!
//! `PAGE_IS_HUGE` is set for pages of a PMD-mapped THP and for hugetlb pages;
//! a PTE-mapped large folio (mTHP) is not reported as huge.

use crate::uapi::{PAGE_IS_HUGE, PAGEMAP_SCAN, PageRegion, PmScanArg};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A set of address ranges, kept sorted and merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HugeMap {
    /// Sorted, merged, non-empty `[start, end)` ranges.
    ranges: Vec<(u64, u64)>,
}

impl HugeMap {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the set from `[start, end)` ranges in any order; overlapping and
    /// adjacent ranges are merged, empty ones dropped.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut v: Vec<(u64, u64)> = ranges.into_iter().filter(|(s, e)| s < e).collect();
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Self { ranges: merged }
    }

    /// The merged ranges, sorted by address.
    #[cfg(test)]
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Bytes of `[start, end)` inside the set.
    pub fn bytes_in(&self, start: u64, end: u64) -> u64 {
        let first = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges[first..]
            .iter()
            .take_while(|&&(s, _)| s < end)
            .map(|&(s, e)| e.min(end) - s.max(start))
            .sum()
    }

    /// Whether all of `[start, end)` is inside the set.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.bytes_in(start, end) == end - start
    }

    /// Total bytes in the set.
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The kernel has no `PAGEMAP_SCAN` (before Linux 6.7): the ioctl failed with `ENOTTY`.
    #[error("this kernel has no PAGEMAP_SCAN ioctl (ENOTTY; Linux 6.7 or later has it)")]
    Unsupported,
    /// The process has exited (`ESRCH`).
    #[error("the process has exited")]
    ProcessExited,
    /// Any other failure.
    #[error("PAGEMAP_SCAN failed: {0}")]
    Os(#[from] io::Error),
}

/// Something that can tell which pages of a range are PMD-mapped. The real
/// implementation is [`Pagemap`]; tests use a fake.
pub trait HugeScan {
    /// The PMD-mapped (or hugetlb) parts of `[start, end)`.
    fn scan_huge(&mut self, start: u64, end: u64) -> Result<HugeMap, ScanError>;
}

/// An open `/proc/PID/pagemap` file.
#[derive(Debug)]
pub struct Pagemap {
    /// `/proc/PID/pagemap`.
    file: File,
}

/// Number of `struct page_region` entries fetched per ioctl.
const REGIONS_PER_CALL: usize = 256;

impl Pagemap {
    /// Opens `/proc/PID/pagemap`. This needs ptrace read access to the process.
    pub fn open(pid: i32) -> io::Result<Self> {
        Ok(Self {
            file: File::open(format!("/proc/{pid}/pagemap"))?,
        })
    }
}

impl HugeScan for Pagemap {
    fn scan_huge(&mut self, start: u64, end: u64) -> Result<HugeMap, ScanError> {
        let mut buf = vec![PageRegion::default(); REGIONS_PER_CALL];
        let mut found = Vec::new();
        let mut pos = start;
        while pos < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: pos,
                end,
                vec: buf.as_mut_ptr() as u64,
                vec_len: buf.len() as u64,
                category_mask: PAGE_IS_HUGE,
                return_mask: PAGE_IS_HUGE,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` is a valid `struct pm_scan_arg` whose `vec` points to
            // `vec_len` writable `struct page_region`s that outlive the call; the
            // kernel writes only `walk_end` and those entries.
            let ret = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    PAGEMAP_SCAN,
                    &mut arg as *mut PmScanArg,
                )
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                return Err(match err.raw_os_error() {
                    Some(libc::ENOTTY) => ScanError::Unsupported,
                    Some(libc::ESRCH) => ScanError::ProcessExited,
                    _ => ScanError::Os(err),
                });
            }
            let n = usize::try_from(ret).unwrap_or(0).min(buf.len());
            found.extend(buf[..n].iter().map(|r| (r.start, r.end)));
            if arg.walk_end <= pos {
                return Err(ScanError::Os(io::Error::other(format!(
                    "the walk made no progress at {pos:#x}"
                ))));
            }
            pos = arg.walk_end;
        }
        Ok(HugeMap::from_ranges(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anon_memory::AnonMemory;

    #[test]
    fn hugemap_merges_and_counts() {
        let m = HugeMap::from_ranges([
            (0x600000, 0x800000),
            (0x200000, 0x400000),
            (0x400000, 0x500000),
            (9, 9),
        ]);
        assert_eq!(m.ranges(), [(0x200000, 0x500000), (0x600000, 0x800000)]);
        assert_eq!(m.total(), 0x500000);
        assert_eq!(m.bytes_in(0, 0x1000000), 0x500000);
        assert_eq!(m.bytes_in(0x300000, 0x700000), 0x300000);
        assert!(m.covers(0x200000, 0x400000));
        assert!(!m.covers(0x400000, 0x600000));
        assert!(m.covers(0x600000, 0x800000));
        assert_eq!(HugeMap::new().bytes_in(0, u64::MAX), 0);
    }

    /// Scans this process's own memory: a fresh mapping that was never touched
    /// has nothing huge in it. Skipped on kernels without `PAGEMAP_SCAN`.
    #[test]
    fn scan_of_untouched_memory_is_empty() {
        let mem = AnonMemory::untouched(4);
        let (start, len) = (mem.start, mem.size);
        let mut pm = Pagemap::open(std::process::id() as i32).unwrap();
        match pm.scan_huge(start, start + len as u64) {
            Ok(map) => assert_eq!(map.total(), 0),
            Err(ScanError::Unsupported) => eprintln!("skipped: no PAGEMAP_SCAN on this kernel"),
            Err(e) => panic!("{e}"),
        }
    }
}
