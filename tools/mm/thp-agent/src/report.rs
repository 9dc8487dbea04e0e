//! What the commands print: the report types (serialized as JSON with
//! `--json`) and their tables for people.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Bytes in a KiB.
const KIB: u64 = 1 << 10;
/// Bytes in a MiB.
const MIB: u64 = 1 << 20;
/// Bytes in a GiB.
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

/// How a `run` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoppedBy {
    /// The configured duration passed.
    Duration,
    /// SIGTERM or SIGINT.
    Signal,
    /// Every target was a PID, and every one has exited.
    AllTargetsExited,
    /// An error ended the run early; see [`RunReport::error`].
    Error,
}

/// The settings a `run` worked with, as recorded in its report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The `flags` argument passed to `process_madvise`.
    pub flags: u32,
    /// Size of each collapsed range in bytes.
    pub chunk_size: u64,
    /// Collapse budget, MiB per second (`None`: no limit).
    pub budget_mib_per_s: Option<f64>,
    /// Memory pressure ("some avg10", percent) above which nothing is collapsed.
    pub max_psi_some_avg10: f64,
    /// DAMON `nr_accesses` a range needs to be collapsed.
    pub min_hotness: u32,
    /// Seconds between two passes.
    pub scan_interval_s: f64,
    /// Whether VMAs that smaps does not mark THP-eligible were included.
    pub include_ineligible: bool,
    /// DAMON's monitoring attributes.
    pub damon: crate::config::DamonAttrs,
}

/// One measurement of a followed process, taken at each pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since the start of the run.
    pub t_ms: u64,
    /// Bytes of the process mapped by PMDs (`PAGEMAP_SCAN`, or smaps).
    pub pmd_mapped: u64,
    /// Bytes of chunks DAMON found hot (PMD-mapped or not); `None` where
    /// DAMON was not read (the measurements at the start and the end).
    pub hot_bytes: Option<u64>,
    /// Bytes collapsed by this run so far.
    pub collapsed_bytes: u64,
}

/// One collapse the daemon did (or tried).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollapseEvent {
    /// Milliseconds since the start of the run, when the collapse ended.
    pub t_ms: u64,
    /// DAMON hotness of the range (average `nr_accesses`).
    pub hotness: u32,
    /// DAMON age of the range, in aggregation intervals.
    pub age: u32,
    /// The range and how it ended.
    #[serde(flatten)]
    pub range: RangeResult,
}

/// Everything about one followed process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// The process.
    pub pid: i32,
    /// The `[[target]]` that named it, e.g. `pid=1234` or `name=redis-server`.
    pub spec: String,
    /// Its name (`comm`).
    pub comm: String,
    /// When the run started following it, in milliseconds since the start.
    pub first_seen_ms: u64,
    /// When it exited, if it did during the run: its data ends there.
    pub exited_at_ms: Option<u64>,
    /// Why the run stopped following it although it was alive, if it did
    /// (e.g. it became unprivileged to collapse).
    pub dropped: Option<String>,
    /// Measurements, one per pass, in time order.
    pub samples: Vec<Sample>,
    /// Collapses, in time order.
    pub collapses: Vec<CollapseEvent>,
    /// Counts over `collapses`; `elapsed_s` is the time it was followed.
    pub summary: CollapseSummary,
}

/// A memory pressure reading.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PsiSample {
    /// Milliseconds since the start of the run.
    pub t_ms: u64,
    /// `some avg10` of `/proc/pressure/memory`, percent.
    pub some_avg10: f64,
}

/// How often the daemon left hot ranges alone, and why. A range left alone
/// in several passes counts once per pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipCounts {
    /// Passes with hot ranges in which memory pressure was above the limit
    /// (or could not be read): nothing was collapsed.
    pub psi_passes: u32,
    /// Passes with hot ranges cut short or skipped by the back-off after `ENOMEM`.
    pub enomem_passes: u32,
    /// Ranges deferred to a later pass: the budget (or, without one, the
    /// time of the pass) did not allow them before the next pass.
    pub deferred_ranges: u64,
    /// Ranges skipped because they failed recently (their back-off).
    pub backoff_ranges: u64,
    /// Accessed ranges left alone as not hot enough.
    pub cold_ranges: u64,
}

/// The report of `thp-agent run` (`report.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Format version of this report.
    pub version: u32,
    /// False when the report does not cover the whole run for every
    /// process: one exited or was dropped midway, or an error ended the run.
    /// `incomplete` says why.
    pub complete: bool,
    /// Why the report is not complete, one sentence per reason.
    pub incomplete: Vec<String>,
    /// How the run ended.
    pub stopped_by: StoppedBy,
    /// The signal that stopped it (`SIGTERM`, `SIGINT`).
    pub signal: Option<String>,
    /// The error that ended it.
    pub error: Option<String>,
    /// Remarks for the reader.
    pub notes: Vec<String>,
    /// Wall time of the run in seconds.
    pub elapsed_s: f64,
    /// Passes made.
    pub passes: u32,
    /// The settings.
    pub settings: RunSettings,
    /// Memory pressure at each pass.
    pub psi: Vec<PsiSample>,
    /// Why hot ranges were left alone.
    pub skipped: SkipCounts,
    /// Counts over the collapses of all processes.
    pub summary: CollapseSummary,
    /// The processes, in the order they were first followed.
    pub targets: Vec<TargetReport>,
}

/// The one-line summary of a `run` report.
pub fn run_summary_line(r: &RunReport) -> String {
    let s = &r.summary;
    let mut line = format!(
        "{} followed for {:.1} s in {} passes: {} ranges collapsed ({}), {} failed, {} already huge",
        match r.targets.len() {
            1 => "1 process".to_string(),
            n => format!("{n} processes"),
        },
        r.elapsed_s,
        r.passes,
        s.collapsed,
        human_size(s.bytes_collapsed),
        s.failed,
        s.already_huge
    );
    if !r.complete {
        let _ = write!(line, "; INCOMPLETE: {}", r.incomplete.join("; "));
    }
    line
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

/// `start-end` in hexadecimal, padded to 12 digits.
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
pub(crate) mod tests {
    use super::*;

    /// A short name of an outcome, for tests' expectations: `collapsed`
    /// (`collapsed?` not verified), `huge`, `failed ERRNO xATTEMPTS`,
    /// `not attempted: REASON`.
    pub(crate) fn outcome_kind(o: &Outcome) -> String {
        match o {
            Outcome::Collapsed { verified: true } => "collapsed".into(),
            Outcome::Collapsed { verified: false } => "collapsed?".into(),
            Outcome::AlreadyHuge => "huge".into(),
            Outcome::Failed {
                errno, attempts, ..
            } => format!("failed {} x{attempts}", errno.as_deref().unwrap_or("-")),
            Outcome::NotAttempted { reason } => format!("not attempted: {reason}"),
        }
    }

    /// A run report with one process that collapsed two ranges and failed one.
    pub(crate) fn sample_run() -> RunReport {
        let range = |start: u64, outcome: Outcome| RangeResult {
            start,
            end: start + 2 * MIB,
            vma: "[heap]".into(),
            outcome,
        };
        let collapses = vec![
            CollapseEvent {
                t_ms: 1000,
                hotness: 18,
                age: 5,
                range: range(0x7f0000200000, Outcome::Collapsed { verified: true }),
            },
            CollapseEvent {
                t_ms: 2000,
                hotness: 9,
                age: 2,
                range: range(
                    0x7f0000600000,
                    Outcome::Failed {
                        errno: Some("EAGAIN".into()),
                        reason: "busy".into(),
                        attempts: 4,
                    },
                ),
            },
            CollapseEvent {
                t_ms: 3000,
                hotness: 9,
                age: 3,
                range: range(0x7f0000600000, Outcome::Collapsed { verified: true }),
            },
        ];
        let sample = |t_ms: u64, pmd: u64, done: u64| Sample {
            t_ms,
            pmd_mapped: pmd * MIB,
            hot_bytes: (t_ms > 0).then_some(6 * MIB),
            collapsed_bytes: done * MIB,
        };
        let ranges: Vec<RangeResult> = collapses.iter().map(|c| c.range.clone()).collect();
        let mut summary = CollapseSummary::count(&ranges);
        summary.elapsed_s = 4.0;
        let target = TargetReport {
            pid: 4242,
            spec: "name=victim".into(),
            comm: "victim".into(),
            first_seen_ms: 0,
            exited_at_ms: Some(3500),
            dropped: None,
            samples: vec![
                sample(0, 0, 0),
                sample(1000, 2, 2),
                sample(2000, 2, 2),
                sample(3000, 4, 4),
            ],
            collapses,
            summary: summary.clone(),
        };
        RunReport {
            version: 1,
            complete: false,
            incomplete: vec!["process 4242 (name=victim) exited 3.5 s into the run".into()],
            stopped_by: StoppedBy::AllTargetsExited,
            signal: None,
            error: None,
            notes: vec![],
            elapsed_s: 4.0,
            passes: 3,
            settings: RunSettings {
                flags: 0,
                chunk_size: 2 * MIB,
                budget_mib_per_s: Some(8.0),
                max_psi_some_avg10: 10.0,
                min_hotness: 5,
                scan_interval_s: 1.0,
                include_ineligible: true,
                damon: crate::config::DamonAttrs::default(),
            },
            psi: vec![
                PsiSample {
                    t_ms: 1000,
                    some_avg10: 0.5,
                },
                PsiSample {
                    t_ms: 2000,
                    some_avg10: 12.0,
                },
            ],
            skipped: SkipCounts {
                psi_passes: 1,
                ..SkipCounts::default()
            },
            summary,
            targets: vec![target],
        }
    }

    #[test]
    fn run_json_shape_and_round_trip() {
        let r = sample_run();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["complete"], false);
        assert_eq!(v["stopped_by"], "all_targets_exited");
        assert_eq!(v["settings"]["damon"]["sample_us"], 5000);
        assert_eq!(v["settings"]["budget_mib_per_s"], 8.0);
        assert_eq!(v["psi"][1]["some_avg10"], 12.0);
        assert_eq!(v["skipped"]["psi_passes"], 1);
        let t = &v["targets"][0];
        assert_eq!(t["pid"], 4242);
        assert_eq!(t["exited_at_ms"], 3500);
        assert_eq!(t["samples"][3]["pmd_mapped"], 4 * MIB);
        let c = &t["collapses"][1];
        assert_eq!(c["t_ms"], 2000);
        assert_eq!(c["start"], 0x7f0000600000u64);
        assert_eq!(c["outcome"], "failed");
        assert_eq!(c["errno"], "EAGAIN");
        assert_eq!(t["collapses"][0]["verified"], true);
        assert_eq!(t["summary"]["collapsed"], 2);
        assert_eq!(v["summary"]["failed"], 1);
        let back: RunReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let line = run_summary_line(&r);
        assert!(
            line.starts_with(
                "1 process followed for 4.0 s in 3 passes: 2 ranges collapsed (4.0 MiB), 1 failed"
            ),
            "{line}"
        );
        assert!(line.contains("INCOMPLETE: process 4242"), "{line}");
    }

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
