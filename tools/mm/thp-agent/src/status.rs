//! `thp-agent status`: how much of a process is PMD-mapped, and how much
//! could be.

use crate::error::AgentError;
use crate::pagemap::{HugeMap, HugeScan, Pagemap, ScanError};
use crate::plan::pmd_capacity;
use crate::report::{PmdSource, StatusReport, StatusTotals, VmaStatus};
use crate::smaps::{self, Vma};
use crate::uapi::{HPAGE_PMD_SIZE, THP_ENABLED_PATH};

/// The mode in brackets in a THP sysfs file, e.g. `madvise` in
/// `always [madvise] never`.
pub fn parse_thp_mode(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
}

/// The system's THP mode, or `None` if the kernel has no THP support.
pub fn thp_mode() -> Option<String> {
    let text = std::fs::read_to_string(THP_ENABLED_PATH).ok()?;
    parse_thp_mode(&text).map(String::from)
}

/// Whether a VMA lies in the user half of the address space. The x86_64
/// `[vsyscall]` page is above it, and `PAGEMAP_SCAN` refuses such addresses.
pub fn is_user_vma(v: &Vma) -> bool {
    v.end <= 1 << 63
}

/// The span `[first start, last end)` of the user VMAs, if any.
pub fn user_span(vmas: &[Vma]) -> Option<(u64, u64)> {
    let user = vmas.iter().filter(|v| is_user_vma(v));
    let start = user.clone().map(|v| v.start).min()?;
    let end = user.map(|v| v.end).max()?;
    Some((start, end))
}

/// Builds the report from parsed smaps and, if the kernel has
/// `PAGEMAP_SCAN`, the PMD-mapped ranges it found.
pub fn build(
    pid: i32,
    vmas: &[Vma],
    huge: Option<&HugeMap>,
    thp_enabled: Option<String>,
) -> StatusReport {
    let mut notes = Vec::new();
    let mut totals = StatusTotals::default();
    let mut mismatches = 0;
    let out: Vec<VmaStatus> = vmas
        .iter()
        .map(|v| {
            let smaps_pmd = v.smaps_pmd_mapped();
            let pmd_mapped = huge.map_or(smaps_pmd, |h| h.bytes_in(v.start, v.end));
            let mismatch = huge.is_some() && pmd_mapped != smaps_pmd;
            mismatches += usize::from(mismatch);
            let s = VmaStatus {
                start: v.start,
                end: v.end,
                perms: v.perms.clone(),
                name: v.display_name().to_string(),
                size: v.size(),
                pmd_mapped,
                smaps_pmd_mapped: smaps_pmd,
                pmd_possible: pmd_capacity(v, HPAGE_PMD_SIZE),
                eligible: v.thp_eligible,
                mismatch,
            };
            totals.vmas += 1;
            totals.eligible_vmas += usize::from(v.is_thp_eligible());
            totals.size += s.size;
            totals.pmd_mapped += s.pmd_mapped;
            totals.smaps_pmd_mapped += s.smaps_pmd_mapped;
            totals.pmd_possible += s.pmd_possible;
            s
        })
        .collect();
    match thp_enabled.as_deref() {
        None => notes.push(format!(
            "this kernel has no transparent huge page support ({THP_ENABLED_PATH} does not exist)"
        )),
        Some("never") => notes.push(format!(
            "transparent huge pages are disabled ({THP_ENABLED_PATH} reads [never]): smaps marks no anonymous VMA THP-eligible, though MADV_COLLAPSE still works"
        )),
        Some("madvise") => notes.push(
            "THP mode is madvise: anonymous VMAs are THP-eligible only after MADV_HUGEPAGE, though MADV_COLLAPSE works on the others too (collapse --include-ineligible)".into(),
        ),
        Some(_) => {}
    }
    if huge.is_none() {
        notes.push(
            "this kernel has no PAGEMAP_SCAN ioctl (ENOTTY): PMD-mapped sizes are smaps totals (AnonHugePages + ShmemPmdMapped + FilePmdMapped + hugetlb)".into(),
        );
    }
    if mismatches > 0 {
        notes.push(format!(
            "{mismatches} VMA(s) marked ! differ between PAGEMAP_SCAN and smaps; the two were read at slightly different times"
        ));
    }
    StatusReport {
        pid,
        thp_enabled,
        pmd_source: if huge.is_some() {
            PmdSource::PagemapScan
        } else {
            PmdSource::Smaps
        },
        notes,
        vmas: out,
        totals,
    }
}

/// Reads and parses `/proc/PID/smaps`.
pub fn read_smaps(pid: i32) -> Result<Vec<Vma>, AgentError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| AgentError::proc_read(pid, "smaps", &e))?;
    smaps::parse(&text).map_err(|e| AgentError::Read {
        path: format!("/proc/{pid}/smaps"),
        why: e.to_string(),
    })
}

/// Scans the PMD-mapped ranges of all user VMAs; `Ok(None)` if the kernel
/// has no `PAGEMAP_SCAN`.
pub fn scan_all(
    pid: i32,
    scanner: &mut dyn HugeScan,
    vmas: &[Vma],
) -> Result<Option<HugeMap>, AgentError> {
    let Some((start, end)) = user_span(vmas) else {
        return Ok(Some(HugeMap::new()));
    };
    match scanner.scan_huge(start, end) {
        Ok(m) => Ok(Some(m)),
        Err(ScanError::Unsupported) => Ok(None),
        Err(ScanError::ProcessExited) => Err(AgentError::ProcessExited(pid)),
        Err(ScanError::Os(e)) => Err(AgentError::Read {
            path: format!("/proc/{pid}/pagemap"),
            why: e.to_string(),
        }),
    }
}

/// Collects the status of process `pid`.
pub fn collect(pid: i32) -> Result<StatusReport, AgentError> {
    let mut pagemap = Pagemap::open(pid).map_err(|e| AgentError::proc_read(pid, "pagemap", &e))?;
    let vmas = read_smaps(pid)?;
    let huge = scan_all(pid, &mut pagemap, &vmas)?;
    Ok(build(pid, &vmas, huge.as_ref(), thp_mode()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn thp_mode_parsing() {
        assert_eq!(parse_thp_mode("always [madvise] never\n"), Some("madvise"));
        assert_eq!(parse_thp_mode("[always] madvise never\n"), Some("always"));
        assert_eq!(parse_thp_mode("always madvise [never]\n"), Some("never"));
        assert_eq!(parse_thp_mode("always madvise never\n"), None);
    }

    #[test]
    fn build_from_fixture_with_pagemap() {
        let vmas = smaps::parse(smaps::tests::FIXTURE).unwrap();
        // PAGEMAP_SCAN agrees on the heap but sees nothing in the memfd.
        let huge = HugeMap::from_ranges([(0x7f0000800000, 0x7f0000a00000)]);
        let r = build(9, &vmas, Some(&huge), Some("always".into()));
        assert_eq!(r.pmd_source, PmdSource::PagemapScan);
        assert_eq!(r.vmas.len(), 6);
        let heap = &r.vmas[2];
        assert_eq!(
            (heap.pmd_mapped, heap.smaps_pmd_mapped, heap.pmd_possible),
            (2 * MIB, 2 * MIB, 8 * MIB)
        );
        assert!(!heap.mismatch);
        let memfd = &r.vmas[4];
        assert_eq!((memfd.pmd_mapped, memfd.smaps_pmd_mapped), (0, 2 * MIB));
        assert!(memfd.mismatch);
        assert_eq!(r.totals.vmas, 6);
        assert_eq!(r.totals.eligible_vmas, 3);
        assert_eq!(r.totals.pmd_mapped, 2 * MIB);
        assert_eq!(r.totals.smaps_pmd_mapped, 4 * MIB);
        assert_eq!(r.totals.pmd_possible, 16 * MIB);
        assert_eq!(r.totals.size, vmas.iter().map(Vma::size).sum::<u64>());
        assert_eq!(r.notes.len(), 1);
        assert!(r.notes[0].contains("1 VMA(s) marked !"), "{:?}", r.notes);
    }

    #[test]
    fn build_falls_back_to_smaps() {
        let vmas = smaps::parse(smaps::tests::FIXTURE).unwrap();
        let r = build(9, &vmas, None, Some("never".into()));
        assert_eq!(r.pmd_source, PmdSource::Smaps);
        assert_eq!(r.totals.pmd_mapped, 4 * MIB);
        assert!(r.vmas.iter().all(|v| !v.mismatch));
        assert!(r.notes.iter().any(|n| n.contains("ENOTTY")));
        assert!(r.notes.iter().any(|n| n.contains("[never]")));
    }

    /// `status` of the test process itself: the totals must be consistent
    /// with what this process reads from its own smaps.
    #[test]
    fn status_of_self_is_consistent_with_smaps() {
        if std::fs::read_to_string("/proc/self/smaps").is_err() {
            eprintln!("skipped: /proc/self/smaps is unreadable");
            return;
        }
        // A 8 MiB mapping whose VMA this test can find again. Read-only, so
        // that it does not merge with the read-write mappings other tests
        // make meanwhile.
        let len = 8 * MIB as usize;
        // SAFETY: an anonymous private mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let addr = p as u64;
        // A name keeps the VMA from merging with its neighbours (if the
        // kernel has CONFIG_ANON_VMA_NAME; otherwise the name is not needed
        // for the checks below).
        let name = c"thp-agent-test";
        // SAFETY: naming a range this test mapped; the name outlives the call.
        let named = unsafe {
            libc::prctl(
                libc::PR_SET_VMA,
                libc::PR_SET_VMA_ANON_NAME,
                p,
                len,
                name.as_ptr(),
            )
        } == 0;

        let pid = std::process::id() as i32;
        let r = collect(pid).unwrap();
        let own = smaps::parse(&std::fs::read_to_string("/proc/self/smaps").unwrap()).unwrap();

        // Internal consistency of the totals.
        assert_eq!(r.totals.vmas, r.vmas.len());
        assert_eq!(r.totals.size, r.vmas.iter().map(|v| v.size).sum::<u64>());
        assert_eq!(
            r.totals.pmd_mapped,
            r.vmas.iter().map(|v| v.pmd_mapped).sum::<u64>()
        );
        assert_eq!(
            r.totals.pmd_possible,
            r.vmas.iter().map(|v| v.pmd_possible).sum::<u64>()
        );
        assert_eq!(
            r.totals.eligible_vmas,
            r.vmas.iter().filter(|v| v.eligible == Some(true)).count()
        );
        for v in &r.vmas {
            assert_eq!(v.size, v.end - v.start);
            assert!(v.pmd_mapped <= v.size && v.pmd_possible <= v.size);
            assert!(v.pmd_possible % HPAGE_PMD_SIZE == 0);
        }
        // The mapping made above is in both views, with the same geometry and
        // eligibility, and its possible size follows from its alignment.
        let find = |start: u64, end: u64| {
            (
                r.vmas.iter().find(|v| v.start <= addr && addr < v.end),
                own.iter().find(|v| v.start <= start && end <= v.end),
            )
        };
        let (mine, theirs) = find(addr, addr + len as u64);
        let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
        assert_eq!((mine.start, mine.end), (theirs.start, theirs.end));
        assert_eq!(mine.eligible, theirs.thp_eligible);
        assert_eq!(mine.pmd_possible, pmd_capacity(theirs, HPAGE_PMD_SIZE));
        if mine.eligible == Some(true) {
            assert!(mine.pmd_possible >= 6 * MIB, "{mine:?}");
        }
        if named {
            assert_eq!(mine.name, "[anon:thp-agent-test]");
            assert_eq!((mine.start, mine.end), (addr, addr + len as u64));
            // Untouched memory has nothing PMD-mapped.
            assert_eq!(mine.pmd_mapped, 0);
            assert_eq!(mine.smaps_pmd_mapped, 0);
        }
        // Sizes of the VMAs that are in both snapshots agree.
        let same = r
            .vmas
            .iter()
            .filter(|v| own.iter().any(|o| o.start == v.start && o.end == v.end))
            .count();
        assert!(
            same * 10 >= r.vmas.len() * 9,
            "{same} of {} VMAs agree",
            r.vmas.len()
        );

        // SAFETY: unmapping exactly what was mapped above.
        unsafe { libc::munmap(p, len) };
    }
}
