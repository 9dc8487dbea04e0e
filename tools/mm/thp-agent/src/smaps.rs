//! Parser for `/proc/PID/smaps` (`Documentation/filesystems/proc.rst`, "smaps").
//!
//! Each VMA is a header line in the format of `/proc/PID/maps`
//! (`start-end perms offset dev inode [name]`) followed by `Key: value [kB]`
//! lines. Only the fields this tool needs are kept; unknown keys are ignored
//! so that newer kernels with more fields parse as well.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One virtual memory area as described by `/proc/PID/smaps`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    /// First address of the VMA.
    pub start: u64,
    /// End of the VMA (exclusive).
    pub end: u64,
    /// Permissions as printed by the kernel, e.g. `rw-p`.
    pub perms: String,
    /// Offset into the mapped file, in bytes.
    pub offset: u64,
    /// Inode of the mapped file, 0 for anonymous memory.
    pub inode: u64,
    /// The name field as printed by the kernel (a path, `[heap]`, `[stack]`,
    /// `[anon:NAME]`, ...), empty for unnamed anonymous memory.
    pub raw_name: String,
    /// `Rss:` in bytes.
    pub rss: u64,
    /// `AnonHugePages:` in bytes: anonymous memory mapped by PMDs.
    pub anon_huge: u64,
    /// `ShmemPmdMapped:` in bytes: shmem mapped by PMDs.
    pub shmem_pmd_mapped: u64,
    /// `FilePmdMapped:` in bytes: file pages mapped by PMDs.
    pub file_pmd_mapped: u64,
    /// `Shared_Hugetlb:` plus `Private_Hugetlb:` in bytes.
    pub hugetlb: u64,
    /// `THPeligible:`, or `None` on kernels that do not print it.
    pub thp_eligible: Option<bool>,
    /// `VmFlags:` two-letter codes (`hg` is MADV_HUGEPAGE, `nh` MADV_NOHUGEPAGE).
    pub vm_flags: Vec<String>,
}

impl Vma {
    /// Size of the VMA in bytes.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// Bytes smaps reports as mapped by PMDs (or hugetlb), the quantity that
    /// `PAGEMAP_SCAN`'s `PAGE_IS_HUGE` also reports.
    pub fn smaps_pmd_mapped(&self) -> u64 {
        self.anon_huge + self.shmem_pmd_mapped + self.file_pmd_mapped + self.hugetlb
    }

    /// Whether smaps says THPs may back this VMA (`THPeligible: 1`).
    pub fn is_thp_eligible(&self) -> bool {
        self.thp_eligible == Some(true)
    }

    /// The name shown to people: the kernel's name, or `[anon]` for unnamed
    /// anonymous memory.
    pub fn display_name(&self) -> &str {
        if self.raw_name.is_empty() {
            "[anon]"
        } else {
            &self.raw_name
        }
    }
}

/// An error in the text of a smaps file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("smaps line {line}: {what}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub what: String,
}

impl ParseError {
    /// An error at line `line` (1-based).
    fn new(line: usize, what: impl fmt::Display) -> Self {
        Self {
            line,
            what: what.to_string(),
        }
    }
}

/// Parses a VMA header line (`start-end perms offset dev inode [name]`).
/// Returns `None` if the line is not a header line.
fn parse_header(line: &str) -> Option<Vma> {
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        let (f, r) = rest.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let offset = field();
    let dev = field();
    let inode = field();
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end < start || perms.len() != 4 || !dev.contains(':') {
        return None;
    }
    Some(Vma {
        start,
        end,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        // The name is the rest of the line after the padding; it may contain spaces.
        raw_name: rest.trim_start_matches(' ').to_string(),
        ..Vma::default()
    })
}

/// Parses a `Key:   N kB` value into bytes.
fn parse_kb(value: &str, line: usize) -> Result<u64, ParseError> {
    let number = value
        .strip_suffix("kB")
        .ok_or_else(|| ParseError::new(line, format!("expected a size in kB, got {value:?}")))?
        .trim();
    let kib: u64 = number
        .parse()
        .map_err(|_| ParseError::new(line, format!("bad number {number:?}")))?;
    Ok(kib * 1024)
}

/// Parses the whole text of a `/proc/PID/smaps` file.
pub fn parse(text: &str) -> Result<Vec<Vma>, ParseError> {
    let mut vmas: Vec<Vma> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let first = line.split(' ').next().unwrap_or("");
        if let Some((key, value)) = line.split_once(':').filter(|_| first.ends_with(':')) {
            let vma = vmas
                .last_mut()
                .ok_or_else(|| ParseError::new(lineno, "field before the first VMA header"))?;
            let value = value.trim();
            match key {
                "Rss" => vma.rss = parse_kb(value, lineno)?,
                "AnonHugePages" => vma.anon_huge = parse_kb(value, lineno)?,
                "ShmemPmdMapped" => vma.shmem_pmd_mapped = parse_kb(value, lineno)?,
                "FilePmdMapped" => vma.file_pmd_mapped = parse_kb(value, lineno)?,
                "Shared_Hugetlb" | "Private_Hugetlb" => vma.hugetlb += parse_kb(value, lineno)?,
                "THPeligible" => {
                    vma.thp_eligible = Some(match value {
                        "0" => false,
                        "1" => true,
                        _ => {
                            return Err(ParseError::new(
                                lineno,
                                format!("THPeligible is {value:?}, expected 0 or 1"),
                            ));
                        }
                    })
                }
                "VmFlags" => vma.vm_flags = value.split_whitespace().map(String::from).collect(),
                _ => {}
            }
        } else if let Some(vma) = parse_header(line) {
            vmas.push(vma);
        } else {
            return Err(ParseError::new(
                lineno,
                format!("neither a VMA header nor a field: {line:?}"),
            ));
        }
    }
    Ok(vmas)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A smaps excerpt in the kernel's format, with: a file VMA, an anonymous
    /// VMA that is not 2 MiB aligned and has THPeligible 0, the heap with a PMD
    /// mapping, a named anonymous VMA, a VMA with a name containing spaces,
    /// and the stack.
    pub(crate) const FIXTURE: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:00 247282                     /usr/bin/cat
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   8 kB
Pss:                   8 kB
Anonymous:             0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
THPeligible:           0
VmFlags: rd mr mw me
7f0000001000-7f0000402000 rw-p 00000000 00:00 0 
Size:               4100 kB
Rss:                  12 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
THPeligible:           0
VmFlags: rd wr mr mw me ac nh
7f0000600000-7f0000e00000 rw-p 00000000 00:00 0                          [heap]
Size:               8192 kB
Rss:                4096 kB
AnonHugePages:      2048 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
THPeligible:           1
VmFlags: rd wr mr mw me ac hg
7f0001000000-7f0001500000 rw-p 00000000 00:00 0                          [anon:jemalloc arena]
Size:               5120 kB
Rss:                5120 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
THPeligible:           1
VmFlags: rd wr mr mw me ac
7f0002000000-7f0002400000 r--s 00200000 00:01 1034                       /memfd:my buf (deleted)
Size:               4096 kB
Rss:                4096 kB
AnonHugePages:         0 kB
ShmemPmdMapped:     2048 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
THPeligible:           1
VmFlags: rd sh mr mw me ms
7ffc5a1e0000-7ffc5a201000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
THPeligible:           0
VmFlags: rd wr mr mw me gd ac
";

    #[test]
    fn parses_every_vma_of_the_fixture() {
        let vmas = parse(FIXTURE).unwrap();
        let names: Vec<&str> = vmas.iter().map(Vma::display_name).collect();
        assert_eq!(
            names,
            [
                "/usr/bin/cat",
                "[anon]",
                "[heap]",
                "[anon:jemalloc arena]",
                "/memfd:my buf (deleted)",
                "[stack]"
            ]
        );
    }

    #[test]
    fn file_vma_fields() {
        let vmas = parse(FIXTURE).unwrap();
        let cat = &vmas[0];
        assert_eq!(cat.start, 0x55d0_c0a0_0000);
        assert_eq!(cat.end, 0x55d0_c0a0_2000);
        assert_eq!(cat.size(), 8192);
        assert_eq!(cat.perms, "r--p");
        assert_eq!(cat.inode, 247_282);
        assert_eq!(cat.rss, 8192);
        assert_eq!(cat.thp_eligible, Some(false));
        assert_eq!(cat.vm_flags, ["rd", "mr", "mw", "me"]);
    }

    #[test]
    fn unaligned_ineligible_anon_vma() {
        let vmas = parse(FIXTURE).unwrap();
        let anon = &vmas[1];
        assert_eq!(anon.raw_name, "");
        assert_eq!(anon.start % (2 << 20), 0x1000);
        assert_eq!(anon.size(), 4100 * 1024);
        assert!(!anon.is_thp_eligible());
        assert!(anon.vm_flags.iter().any(|f| f == "nh"));
        assert!(!anon.vm_flags.iter().any(|f| f == "hg"));
    }

    #[test]
    fn heap_with_pmd_mapping() {
        let vmas = parse(FIXTURE).unwrap();
        let heap = &vmas[2];
        assert!(heap.is_thp_eligible());
        assert_eq!(heap.anon_huge, 2 << 20);
        assert_eq!(heap.smaps_pmd_mapped(), 2 << 20);
        assert_eq!(heap.rss, 4 << 20);
        assert!(heap.vm_flags.iter().any(|f| f == "hg"));
    }

    #[test]
    fn named_anon_and_shmem_with_spaces() {
        let vmas = parse(FIXTURE).unwrap();
        assert_eq!(vmas[3].raw_name, "[anon:jemalloc arena]");
        assert_eq!(vmas[3].size(), 5 << 20);
        let memfd = &vmas[4];
        assert_eq!(memfd.offset, 0x20_0000);
        assert_eq!(memfd.perms, "r--s");
        assert_eq!(memfd.shmem_pmd_mapped, 2 << 20);
        assert_eq!(memfd.smaps_pmd_mapped(), 2 << 20);
    }

    #[test]
    fn hugetlb_is_summed() {
        let text = "\
7f0000000000-7f0000400000 rw-s 00000000 00:10 77                         /anon_hugepage (deleted)
Shared_Hugetlb:     2048 kB
Private_Hugetlb:    2048 kB
";
        let vmas = parse(text).unwrap();
        assert_eq!(vmas[0].hugetlb, 4 << 20);
        assert_eq!(vmas[0].thp_eligible, None);
    }

    #[test]
    fn rejects_garbage() {
        let err = parse("Rss: 4 kB\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.what.contains("before the first VMA"), "{err}");

        let err =
            parse("00400000-00401000 r-xp 00000000 08:01 1 /bin/x\nRss: four kB\n").unwrap_err();
        assert_eq!(err.line, 2);

        let err =
            parse("00400000-00401000 r-xp 00000000 08:01 1 /bin/x\nTHPeligible: 2\n").unwrap_err();
        assert!(err.what.contains("THPeligible"), "{err}");

        let err = parse("hello world\n").unwrap_err();
        assert!(err.what.contains("neither"), "{err}");
    }

    #[test]
    fn parses_own_smaps() {
        let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
            eprintln!("skipped: /proc/self/smaps is unreadable");
            return;
        };
        let vmas = parse(&text).unwrap();
        assert!(vmas.len() > 3);
        assert!(vmas.windows(2).all(|w| w[0].end <= w[1].start));
    }
}
