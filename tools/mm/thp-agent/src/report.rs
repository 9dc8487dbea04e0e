//! What the commands print: the report types (serialized as JSON with
//! `--json`) and their tables for people.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A size for people: `0`, `12 KiB`, `2.0 MiB`, `1.50 GiB`.
pub fn human_size(bytes: u64) -> String {
    if bytes == 0 {
        "0".into()
    } else if bytes < MIB {
        format!("{} KiB", bytes.div_ceil(KIB))
    } else if bytes < GIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    }
}

/// Where the PMD-mapped sizes of a status report come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PmdSource {
    /// The `PAGEMAP_SCAN` ioctl with `PAGE_IS_HUGE`.
    PagemapScan,
    /// smaps totals, because the kernel has no `PAGEMAP_SCAN`.
    Smaps,
}

/// One VMA in `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmaStatus {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Permissions, e.g. `rw-p`.
    pub perms: String,
    /// Name: a path, `[heap]`, `[stack]`, `[anon]`, `[anon:NAME]`, ...
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes mapped by PMDs now (see [`StatusReport::pmd_source`]).
    pub pmd_mapped: u64,
    /// Bytes smaps reports as PMD-mapped (AnonHugePages + ShmemPmdMapped +
    /// FilePmdMapped + hugetlb), for the cross-check.
    pub smaps_pmd_mapped: u64,
    /// Bytes that PMD-mapped huge pages could cover: the aligned 2 MiB
    /// chunks inside the VMA if it is THP-eligible, else 0.
    pub pmd_possible: u64,
    /// smaps `THPeligible`, or `None` if the kernel does not print it.
    pub eligible: Option<bool>,
    /// Whether `pmd_mapped` (from `PAGEMAP_SCAN`) and `smaps_pmd_mapped`
    /// disagree. Both are snapshots taken at slightly different times.
    pub mismatch: bool,
}

/// Sums over all VMAs of a `status` report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusTotals {
    /// Number of VMAs.
    pub vmas: usize,
    /// Number of THP-eligible VMAs.
    pub eligible_vmas: usize,
    /// Total size in bytes.
    pub size: u64,
    /// Total PMD-mapped bytes.
    pub pmd_mapped: u64,
    /// Total PMD-mapped bytes according to smaps.
    pub smaps_pmd_mapped: u64,
    /// Total bytes PMD mappings could cover.
    pub pmd_possible: u64,
}

/// The result of `thp-agent status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The process.
    pub pid: i32,
    /// The THP mode from `/sys/kernel/mm/transparent_hugepage/enabled`
    /// (`always`, `madvise`, `never`), `None` without THP support.
    pub thp_enabled: Option<String>,
    /// Where [`VmaStatus::pmd_mapped`] comes from.
    pub pmd_source: PmdSource,
    /// Remarks for the reader (fallbacks, disabled THP, mismatches).
    pub notes: Vec<String>,
    /// The VMAs in address order.
    pub vmas: Vec<VmaStatus>,
    /// Sums.
    pub totals: StatusTotals,
}

/// How a planned range ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `process_madvise` succeeded.
    Collapsed {
        /// Whether `PAGEMAP_SCAN` confirmed the range is PMD-mapped afterwards.
        /// False for mTHP orders and on kernels without `PAGEMAP_SCAN`: the
        /// return value is all there is.
        verified: bool,
    },
    /// The range was PMD-mapped already; it was not collapsed again.
    AlreadyHuge,
    /// The range could not be collapsed.
    Failed {
        /// Errno name (`EAGAIN`, ...), or `None` if the call succeeded but the
        /// range was not PMD-mapped afterwards.
        errno: Option<String>,
        /// What it means.
        reason: String,
        /// How many calls were made for the range.
        attempts: u32,
    },
    /// The range was not tried, and why (e.g. "process exited").
    NotAttempted {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Short text for the table.
    fn short(&self) -> String {
        match self {
            Outcome::Collapsed { verified: true } => "collapsed".into(),
            Outcome::Collapsed { verified: false } => "collapsed (not verified)".into(),
            Outcome::AlreadyHuge => "already huge".into(),
            Outcome::Failed {
                errno, attempts, ..
            } => {
                let what = errno.as_deref().unwrap_or("not PMD-mapped after success");
                if *attempts > 1 {
                    format!("failed: {what} after {attempts} attempts")
                } else {
                    format!("failed: {what}")
                }
            }
            Outcome::NotAttempted { reason } => format!("not attempted: {reason}"),
        }
    }
}

/// One range of a `collapse` run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Name of the VMA the range is in.
    pub vma: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Counts of a `collapse` run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CollapseSummary {
    /// Ranges planned.
    pub planned: usize,
    /// Ranges collapsed.
    pub collapsed: usize,
    /// Ranges that were huge already.
    pub already_huge: usize,
    /// Ranges that failed.
    pub failed: usize,
    /// Failed ranges by errno name (or `unverified` for a success that left
    /// the range not PMD-mapped).
    pub failed_by_reason: BTreeMap<String, usize>,
    /// Ranges not tried.
    pub not_attempted: usize,
    /// Bytes in collapsed ranges.
    pub bytes_collapsed: u64,
    /// Wall time of the run in seconds.
    pub elapsed_s: f64,
}

impl CollapseSummary {
    /// Counts `ranges`; `elapsed_s` is set by the caller.
    pub fn count(ranges: &[RangeResult]) -> Self {
        let mut s = Self {
            planned: ranges.len(),
            ..Self::default()
        };
        for r in ranges {
            match &r.outcome {
                Outcome::Collapsed { .. } => {
                    s.collapsed += 1;
                    s.bytes_collapsed += r.end - r.start;
                }
                Outcome::AlreadyHuge => s.already_huge += 1,
                Outcome::Failed { errno, .. } => {
                    s.failed += 1;
                    let key = errno.clone().unwrap_or_else(|| "unverified".into());
                    *s.failed_by_reason.entry(key).or_default() += 1;
                }
                Outcome::NotAttempted { .. } => s.not_attempted += 1,
            }
        }
        s
    }
}

/// The result of `thp-agent collapse`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollapseReport {
    /// The process.
    pub pid: i32,
    /// The `flags` argument passed to `process_madvise`.
    pub flags: u32,
    /// Size of each range in bytes.
    pub chunk_size: u64,
    /// How outcomes were judged: `pagemap_scan`, or `return_value` (mTHP
    /// orders, or no `PAGEMAP_SCAN`).
    pub verification: String,
    /// False when the run stopped early; the `not_attempted` ranges say why.
    pub complete: bool,
    /// Why the run stopped early.
    pub stopped: Option<String>,
    /// Remarks for the reader.
    pub notes: Vec<String>,
    /// One entry per planned range, in address order.
    pub ranges: Vec<RangeResult>,
    /// Counts.
    pub summary: CollapseSummary,
    /// For each errno in `failed_by_reason`, what it means.
    pub reasons: BTreeMap<String, String>,
}

/// Formats rows into left-aligned columns separated by two spaces; the last
/// column is not padded.
fn columns(rows: &[Vec<String>]) -> String {
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; ncols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn range_text(start: u64, end: u64) -> String {
    format!("{start:012x}-{end:012x}")
}

/// The `status` table.
pub fn status_table(r: &StatusReport) -> String {
    let mut rows = vec![vec![
        "START-END".to_string(),
        "PERMS".into(),
        "SIZE".into(),
        "PMD-MAPPED".into(),
        "POSSIBLE".into(),
        "ELIGIBLE".into(),
        "NAME".into(),
    ]];
    for v in &r.vmas {
        let mark = if v.mismatch { " !" } else { "" };
        rows.push(vec![
            range_text(v.start, v.end),
            v.perms.clone(),
            human_size(v.size),
            format!("{}{mark}", human_size(v.pmd_mapped)),
            human_size(v.pmd_possible),
            match v.eligible {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            }
            .into(),
            v.name.clone(),
        ]);
    }
    let t = &r.totals;
    rows.push(vec![
        "total".into(),
        String::new(),
        human_size(t.size),
        human_size(t.pmd_mapped),
        human_size(t.pmd_possible),
        format!("{}/{}", t.eligible_vmas, t.vmas),
        String::new(),
    ]);
    let mut out = format!(
        "pid {}, THP mode: {}, PMD-mapped sizes from {}\n",
        r.pid,
        r.thp_enabled.as_deref().unwrap_or("unavailable"),
        match r.pmd_source {
            PmdSource::PagemapScan => "PAGEMAP_SCAN",
            PmdSource::Smaps => "smaps",
        }
    );
    out.push_str(&columns(&rows));
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// The `collapse` result list and summary.
pub fn collapse_table(r: &CollapseReport) -> String {
    let mut rows = vec![vec![
        "RANGE".to_string(),
        "SIZE".into(),
        "VMA".into(),
        "RESULT".into(),
    ]];
    for x in &r.ranges {
        rows.push(vec![
            range_text(x.start, x.end),
            human_size(x.end - x.start),
            x.vma.clone(),
            x.outcome.short(),
        ]);
    }
    let mut out = if r.ranges.is_empty() {
        "no range to collapse\n".to_string()
    } else {
        columns(&rows)
    };
    let s = &r.summary;
    let by_reason: Vec<String> = s
        .failed_by_reason
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let failed = if by_reason.is_empty() {
        format!("{} failed", s.failed)
    } else {
        format!("{} failed ({})", s.failed, by_reason.join(", "))
    };
    let _ = writeln!(
        out,
        "summary: {} ranges planned: {} collapsed, {} already huge, {failed}, {} not attempted; {} collapsed in {:.2} s",
        s.planned,
        s.collapsed,
        s.already_huge,
        s.not_attempted,
        human_size(s.bytes_collapsed),
        s.elapsed_s
    );
    for (errno, why) in &r.reasons {
        let _ = writeln!(out, "  {errno}: {why}");
    }
    if let Some(why) = &r.stopped {
        let _ = writeln!(
            out,
            "INCOMPLETE: {why}; the ranges marked \"not attempted\" were not tried"
        );
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_collapse() -> CollapseReport {
        let ranges = vec![
            RangeResult {
                start: 0x7f0000600000,
                end: 0x7f0000800000,
                vma: "[heap]".into(),
                outcome: Outcome::Collapsed { verified: true },
            },
            RangeResult {
                start: 0x7f0000800000,
                end: 0x7f0000a00000,
                vma: "[heap]".into(),
                outcome: Outcome::AlreadyHuge,
            },
            RangeResult {
                start: 0x7f0000a00000,
                end: 0x7f0000c00000,
                vma: "[heap]".into(),
                outcome: Outcome::Failed {
                    errno: Some("EAGAIN".into()),
                    reason: "busy".into(),
                    attempts: 4,
                },
            },
            RangeResult {
                start: 0x7f0000c00000,
                end: 0x7f0000e00000,
                vma: "[anon:x]".into(),
                outcome: Outcome::NotAttempted {
                    reason: "process exited".into(),
                },
            },
        ];
        let mut summary = CollapseSummary::count(&ranges);
        summary.elapsed_s = 0.25;
        CollapseReport {
            pid: 42,
            flags: 0,
            chunk_size: 2 * MIB,
            verification: "pagemap_scan".into(),
            complete: false,
            stopped: Some("the process exited".into()),
            notes: vec![],
            ranges,
            summary,
            reasons: BTreeMap::from([("EAGAIN".into(), "busy".into())]),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0");
        assert_eq!(human_size(4096), "4 KiB");
        assert_eq!(human_size(1000), "1 KiB");
        assert_eq!(human_size(132 * KIB), "132 KiB");
        assert_eq!(human_size(2 * MIB), "2.0 MiB");
        assert_eq!(human_size(5 * MIB + MIB / 2), "5.5 MiB");
        assert_eq!(human_size(3 * GIB / 2), "1.50 GiB");
    }

    #[test]
    fn summary_counts() {
        let s = sample_collapse().summary;
        assert_eq!(
            (
                s.planned,
                s.collapsed,
                s.already_huge,
                s.failed,
                s.not_attempted
            ),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(s.bytes_collapsed, 2 * MIB);
        assert_eq!(
            s.failed_by_reason,
            BTreeMap::from([("EAGAIN".to_string(), 1)])
        );
    }

    #[test]
    fn collapse_json_shape_and_round_trip() {
        let r = sample_collapse();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["pid"], 42);
        assert_eq!(v["complete"], false);
        assert_eq!(v["ranges"][0]["outcome"], "collapsed");
        assert_eq!(v["ranges"][0]["verified"], true);
        assert_eq!(v["ranges"][0]["start"], 0x7f0000600000u64);
        assert_eq!(v["ranges"][1]["outcome"], "already_huge");
        assert_eq!(v["ranges"][2]["outcome"], "failed");
        assert_eq!(v["ranges"][2]["errno"], "EAGAIN");
        assert_eq!(v["ranges"][2]["attempts"], 4);
        assert_eq!(v["ranges"][3]["outcome"], "not_attempted");
        assert_eq!(v["ranges"][3]["reason"], "process exited");
        assert_eq!(v["summary"]["failed_by_reason"]["EAGAIN"], 1);
        assert_eq!(v["summary"]["bytes_collapsed"], 2 * MIB);
        let text = serde_json::to_string(&r).unwrap();
        let back: CollapseReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn collapse_table_says_incomplete() {
        let t = collapse_table(&sample_collapse());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("RANGE"));
        assert_eq!(
            lines[1],
            "7f0000600000-7f0000800000  2.0 MiB  [heap]    collapsed"
        );
        assert!(
            lines[3].ends_with("failed: EAGAIN after 4 attempts"),
            "{}",
            lines[3]
        );
        assert!(lines[4].ends_with("not attempted: process exited"));
        assert!(t.contains("summary: 4 ranges planned: 1 collapsed, 1 already huge, 1 failed (EAGAIN 1), 1 not attempted; 2.0 MiB collapsed in 0.25 s"), "{t}");
        assert!(t.contains("INCOMPLETE: the process exited"));
    }

    fn sample_status() -> StatusReport {
        StatusReport {
            pid: 7,
            thp_enabled: Some("madvise".into()),
            pmd_source: PmdSource::PagemapScan,
            notes: vec![],
            vmas: vec![VmaStatus {
                start: 0x7f0000600000,
                end: 0x7f0000e00000,
                perms: "rw-p".into(),
                name: "[heap]".into(),
                size: 8 * MIB,
                pmd_mapped: 2 * MIB,
                smaps_pmd_mapped: 2 * MIB,
                pmd_possible: 8 * MIB,
                eligible: Some(true),
                mismatch: false,
            }],
            totals: StatusTotals {
                vmas: 1,
                eligible_vmas: 1,
                size: 8 * MIB,
                pmd_mapped: 2 * MIB,
                smaps_pmd_mapped: 2 * MIB,
                pmd_possible: 8 * MIB,
            },
        }
    }

    #[test]
    fn status_json_shape_and_round_trip() {
        let r = sample_status();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["pid"], 7);
        assert_eq!(v["pmd_source"], "pagemap_scan");
        assert_eq!(v["vmas"][0]["name"], "[heap]");
        assert_eq!(v["vmas"][0]["eligible"], true);
        assert_eq!(v["vmas"][0]["pmd_possible"], 8 * MIB);
        assert_eq!(v["totals"]["pmd_mapped"], 2 * MIB);
        let back: StatusReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn status_table_is_aligned() {
        let t = status_table(&sample_status());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "pid 7, THP mode: madvise, PMD-mapped sizes from PAGEMAP_SCAN"
        );
        // Every column starts at the same offset in the header and the rows.
        let col = |l: &str, w: &str| l.find(w).unwrap();
        assert_eq!(col(lines[1], "SIZE"), col(lines[2], "8.0 MiB"));
        assert_eq!(col(lines[1], "NAME"), col(lines[2], "[heap]"));
        assert!(lines[3].starts_with("total"));
        assert_eq!(col(lines[1], "ELIGIBLE"), col(lines[3], "1/1"));
    }
}
