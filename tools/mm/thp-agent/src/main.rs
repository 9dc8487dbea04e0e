//! `thp-agent`: asks the kernel to collapse another process's memory into
//! transparent huge pages with `process_madvise(pidfd, iov, 1, MADV_COLLAPSE, flags)`,
//! shows how much of it is PMD-mapped, and, as a daemon (`run`), collapses
//! the memory DAMON finds hot.
//!
//! Exit codes: 0 when every planned range is collapsed or already huge (for
//! `run`: the report is complete), 1 when some range failed or was not
//! attempted (for `run`: the report is incomplete), 2 for usage and
//! environment errors.

mod collapse;
mod config;
mod daemon;
mod damon;
mod decisions;
mod error;
mod flags;
mod pagemap;
mod plan;
mod plot;
mod policy;
mod psi;
mod report;
mod run;
mod signals;
mod smaps;
mod status;
mod sys;
mod targets;
mod uapi;

/// The test memory of the unit tests, shared with `tests/cli.rs`.
#[cfg(test)]
#[path = "../tests/support/anon_memory.rs"]
mod anon_memory;

use clap::{Args, Parser, Subcommand};
use collapse::{LoopOptions, ProcessTarget, Verification};
use error::AgentError;
use flags::CollapseFlags;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pagemap::{HugeMap, Pagemap};
use plan::{PlanOptions, Selection, SkipReason};
use policy::{BackoffPolicy, SystemClock};
use report::{CollapseReport, CollapseSummary, Outcome, human_size};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use sys::Pidfd;
use uapi::THP_ENABLED_PATH;

/// Exit code: every planned range is collapsed or already huge.
const EXIT_OK: u8 = 0;
/// Exit code: some range failed or was not attempted.
const EXIT_FAILED: u8 = 1;
/// Exit code: usage or environment error.
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "thp-agent",
    version,
    about = "Collapse a process's memory into transparent huge pages with process_madvise(MADV_COLLAPSE)",
    after_help = "Exit codes: 0 every planned range is collapsed or already huge (run: the report is complete), 1 some range failed or was not attempted (run: the report is incomplete), 2 usage or environment error."
)]
/// The command line.
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Show, per VMA, how much is PMD-mapped now and how much could be.
    Status {
        /// The process.
        #[arg(value_parser = clap::value_parser!(i32).range(1..))]
        pid: i32,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Collapse the process's memory, one aligned range at a time.
    Collapse(CollapseArgs),
    /// Follow processes, find their hot memory with DAMON and collapse it
    /// within a budget, until the duration passes or SIGTERM/SIGINT; then
    /// write a report.
    Run(run::RunArgs),
}

/// Arguments of `thp-agent collapse`.
#[derive(Debug, Args)]
struct CollapseArgs {
    /// The process.
    #[arg(value_parser = clap::value_parser!(i32).range(1..))]
    pid: i32,
    /// Only the chunks inside this address range (hexadecimal, as in /proc/PID/maps).
    #[arg(long, value_name = "A-B", value_parser = parse_range, conflicts_with = "vma")]
    range: Option<(u64, u64)>,
    #[arg(
        long,
        value_name = "NAME",
        help = "Only the VMAs whose name contains NAME ([heap], libfoo.so, [anon:arena], ...)"
    )]
    vma: Option<String>,
    /// Never block: no reclaim, compaction, swap-in or I/O; EAGAIN instead (MADV_F_COLLAPSE_LIGHT).
    #[arg(long, conflicts_with = "defrag")]
    light: bool,
    /// Retry reclaim and compaction for the huge pages (MADV_F_COLLAPSE_DEFRAG).
    #[arg(long)]
    defrag: bool,
    /// Apply khugepaged's max_ptes_* limits (MADV_F_COLLAPSE_LIMITS).
    #[arg(long)]
    limits: bool,
    /// Folio order: 0 or 9 for 2 MiB PMD pages, 2..=8 for mTHP (MADV_F_COLLAPSE_ORDER).
    #[arg(long, value_name = "N", default_value_t = 0)]
    order: u32,
    /// Collapse at most this many MiB per second.
    #[arg(long, value_name = "MIB_PER_S", value_parser = parse_budget)]
    budget: Option<f64>,
    /// Also try VMAs that smaps does not mark THP-eligible (MADV_COLLAPSE
    /// ignores the sysfs THP mode; the kernel decides).
    #[arg(long)]
    include_ineligible: bool,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// Parses `A-B` with hexadecimal addresses (an optional `0x` on each).
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let hex = |t: &str| {
        let t = t.trim();
        let digits = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        u64::from_str_radix(digits, 16).map_err(|_| format!("{t:?} is not a hexadecimal address"))
    };
    let (a, b) = s.split_once('-').ok_or_else(|| {
        "expected START-END in hexadecimal, e.g. 7f0000000000-7f0000400000".to_string()
    })?;
    let (a, b) = (hex(a)?, hex(b)?);
    if a >= b {
        return Err(format!("the range is empty: {a:#x} is not below {b:#x}"));
    }
    Ok((a, b))
}

/// Parses a positive MiB/s budget.
fn parse_budget(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of MiB per second")),
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("thp-agent: cannot format JSON: {e}"),
    }
}

/// Reports a fatal error on stderr (and as JSON on stdout with `--json`).
fn fail(err: &AgentError, json: bool) -> ExitCode {
    eprintln!("thp-agent: {err}");
    if json {
        print_json(&serde_json::json!({ "error": err.to_string(), "exit_code": EXIT_USAGE }));
    }
    ExitCode::from(EXIT_USAGE)
}

/// `thp-agent status`.
fn cmd_status(pid: i32, json: bool) -> ExitCode {
    match status::collect(pid) {
        Ok(r) => {
            if json {
                print_json(&r);
            } else {
                print!("{}", report::status_table(&r));
            }
            ExitCode::from(EXIT_OK)
        }
        Err(e) => fail(&e, json),
    }
}

/// Explains why a selection yields nothing to collapse.
fn nothing_selected(pid: i32, args: &CollapseArgs, plan: &plan::Plan, chunk: u64) -> String {
    let ineligible =
        "not THP-eligible (smaps THPeligible: 0; --include-ineligible asks the kernel anyway)";
    let too_small = format!("without an aligned {} range inside", human_size(chunk));
    let what = match (&args.range, &args.vma) {
        (Some((a, b)), _) => format!("the range {a:x}-{b:x}"),
        (_, Some(name)) => format!("--vma {name:?}"),
        _ => {
            let count = |why| plan.skipped.iter().filter(|s| s.why == why).count();
            return format!(
                "nothing to collapse: process {pid} has {} VMAs {ineligible} and {} eligible VMAs {too_small}",
                count(SkipReason::NotEligible),
                count(SkipReason::TooSmall),
            );
        }
    };
    if plan.skipped.is_empty() {
        return format!("nothing to collapse: no VMA of process {pid} matches {what}");
    }
    let mut lines = vec![format!("nothing to collapse in {what} of process {pid}:")];
    for s in plan.skipped.iter().take(10) {
        let why = match s.why {
            SkipReason::NotEligible => ineligible,
            SkipReason::TooSmall => &too_small,
        };
        lines.push(format!("  {} at {:x}-{:x} is {why}", s.vma, s.start, s.end));
    }
    if plan.skipped.len() > 10 {
        lines.push(format!("  ... and {} more", plan.skipped.len() - 10));
    }
    lines.join("\n")
}

/// `thp-agent collapse`.
fn cmd_collapse(args: &CollapseArgs) -> ExitCode {
    match collapse_inner(args) {
        Ok(code) => code,
        Err(e) => fail(&e, args.json),
    }
}

/// Refuses what the kernel's THP setup cannot do before touching the process.
fn check_thp_setup(flags: u32, include_ineligible: bool) -> Result<(), AgentError> {
    match status::thp_mode().as_deref() {
        None => return Err(AgentError::NoThp(THP_ENABLED_PATH)),
        Some("never") if !include_ineligible => {
            return Err(AgentError::ThpDisabled(THP_ENABLED_PATH));
        }
        _ => {}
    }
    // Only the Rust collapse core of this project's kernel serves the flags;
    // the C core fails every range with EINVAL.
    if flags != 0
        && std::fs::read_to_string(uapi::THP_COLLAPSE_CORE_PATH)
            .is_ok_and(|t| status::parse_thp_mode(&t) == Some("c"))
    {
        return Err(AgentError::CoreWithoutFlags);
    }
    Ok(())
}

/// A progress bar on stderr if it is a terminal.
fn progress_bar(ranges: usize) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() || ranges == 0 {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(ranges as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} ranges, {msg}, {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// Turns the loop's result into the report.
fn build_report(
    pid: i32,
    flags: u32,
    chunk_size: u64,
    notes: Vec<String>,
    result: collapse::LoopResult,
) -> CollapseReport {
    let mut summary = CollapseSummary::count(&result.ranges);
    summary.elapsed_s = result.elapsed_s;
    let mut reasons = BTreeMap::new();
    for r in &result.ranges {
        if let Outcome::Failed { errno, reason, .. } = &r.outcome {
            let key = errno.clone().unwrap_or_else(|| "unverified".into());
            reasons.entry(key).or_insert_with(|| reason.clone());
        }
    }
    CollapseReport {
        pid,
        flags,
        chunk_size,
        verification: match result.verification {
            Verification::PagemapScan => "pagemap_scan",
            Verification::ReturnValueMthp | Verification::ReturnValueNoPagemap => "return_value",
        }
        .into(),
        complete: result.stop.is_none(),
        stopped: result.stop.map(|s| s.to_string()),
        notes,
        ranges: result.ranges,
        summary,
        reasons,
    }
}

/// `thp-agent collapse`, with the errors that end it returned.
fn collapse_inner(args: &CollapseArgs) -> Result<ExitCode, AgentError> {
    let pid = args.pid;
    let cflags = CollapseFlags {
        light: args.light,
        defrag: args.defrag,
        limits: args.limits,
        order: args.order,
    };
    let flags = cflags.encode()?;
    let chunk = cflags.chunk_size();
    check_thp_setup(flags, args.include_ineligible)?;

    let pidfd = Pidfd::open(pid)?;
    pidfd.probe(flags)?;
    let mut pagemap = Pagemap::open(pid).map_err(|e| AgentError::proc_read(pid, "pagemap", &e))?;
    let vmas = status::read_smaps(pid)?;
    // The files opened by PID belong to the process of the pidfd only if it
    // was still alive after they were opened.
    if pidfd.has_exited() {
        return Err(AgentError::ProcessExited(pid));
    }
    let mut notes = Vec::new();
    let huge = status::scan_all(pid, &mut pagemap, &vmas)?;
    if huge.is_none() {
        notes.push("this kernel has no PAGEMAP_SCAN ioctl (ENOTTY): ranges are judged by process_madvise's return value only, and a range that was already huge counts as collapsed".to_string());
    }
    if !cflags.is_pmd_order() {
        notes.push(format!(
            "order {}: PAGE_IS_HUGE only reports PMD mappings, so mTHP ranges are judged by process_madvise's return value only",
            cflags.order
        ));
    }

    let selection = match (&args.range, &args.vma) {
        (Some((start, end)), _) => Selection::Range {
            start: *start,
            end: *end,
        },
        (_, Some(name)) => Selection::VmaName(name.clone()),
        _ => Selection::All,
    };
    let select_all = selection == Selection::All;
    let opts = PlanOptions {
        selection,
        chunk_size: chunk,
        include_ineligible: args.include_ineligible,
    };
    let no_huge = HugeMap::new();
    let plan = plan::plan(&vmas, &opts, huge.as_ref().unwrap_or(&no_huge));
    if plan.ranges.is_empty() {
        let why = nothing_selected(pid, args, &plan, chunk);
        if !select_all {
            return Err(AgentError::NothingSelected(why));
        }
        notes.push(why);
    }

    let bar = progress_bar(plan.ranges.len());
    let mut collapsed_bytes = 0u64;
    let mut progress = |r: &report::RangeResult| {
        if let Some(bar) = &bar {
            if matches!(r.outcome, Outcome::Collapsed { .. }) {
                collapsed_bytes += r.end - r.start;
            }
            bar.set_message(format!("{} collapsed", human_size(collapsed_bytes)));
            bar.inc(1);
        }
    };
    let loop_opts = LoopOptions {
        flags,
        pmd_order: cflags.is_pmd_order(),
        budget_bytes_per_s: args.budget.map(|mib| mib * (1u64 << 20) as f64),
        backoff: BackoffPolicy::default(),
    };
    let mut target = ProcessTarget::new(pidfd, huge.is_some().then_some(pagemap));
    let result = collapse::run(
        &mut target,
        &plan.ranges,
        &loop_opts,
        &mut SystemClock::new(),
        &mut progress,
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }

    if result.verification == Verification::ReturnValueNoPagemap {
        // The only after-the-fact evidence left: smaps totals.
        if let Ok(after) = status::read_smaps(pid) {
            let total = |v: &[smaps::Vma]| v.iter().map(smaps::Vma::smaps_pmd_mapped).sum();
            notes.push(format!(
                "smaps PMD-mapped total went from {} to {}",
                human_size(total(&vmas)),
                human_size(total(&after))
            ));
        }
    }
    let environment_error = result.stop.is_some_and(|s| s.is_environment_error());
    let report = build_report(pid, flags, chunk, notes, result);
    if args.json {
        print_json(&report);
    } else {
        print!("{}", report::collapse_table(&report));
    }
    let s = &report.summary;
    Ok(ExitCode::from(if environment_error {
        EXIT_USAGE
    } else if s.collapsed + s.already_huge == s.planned {
        EXIT_OK
    } else {
        EXIT_FAILED
    }))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit with 2, --help and --version with 0.
        Err(e) => e.exit(),
    };
    match &cli.command {
        Command::Status { pid, json } => cmd_status(*pid, *json),
        Command::Collapse(args) => cmd_collapse(args),
        Command::Run(args) => run::cmd_run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("7f0000000000-7f0000400000"),
            Ok((0x7f0000000000, 0x7f0000400000))
        );
        assert_eq!(parse_range("0x1000-0X2000"), Ok((0x1000, 0x2000)));
        assert!(parse_range("2000-1000").unwrap_err().contains("empty"));
        assert!(parse_range("1000").unwrap_err().contains("START-END"));
        assert!(parse_range("xyz-1000").unwrap_err().contains("hexadecimal"));
    }

    #[test]
    fn budgets() {
        assert_eq!(parse_budget("64"), Ok(64.0));
        assert_eq!(parse_budget("0.5"), Ok(0.5));
        assert!(parse_budget("0").is_err());
        assert!(parse_budget("-1").is_err());
        assert!(parse_budget("inf").is_err());
    }

    #[test]
    fn light_and_defrag_is_a_usage_error() {
        let e =
            Cli::try_parse_from(["thp-agent", "collapse", "1", "--light", "--defrag"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from([
            "thp-agent",
            "collapse",
            "1",
            "--range",
            "0-1000",
            "--vma",
            "x",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let e = Cli::try_parse_from(["thp-agent", "status", "0"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn collapse_arguments() {
        let cli = Cli::try_parse_from([
            "thp-agent",
            "collapse",
            "42",
            "--vma",
            "[heap]",
            "--light",
            "--limits",
            "--order",
            "4",
            "--budget",
            "16",
            "--json",
        ])
        .unwrap();
        let Command::Collapse(a) = cli.command else {
            panic!("not collapse");
        };
        assert_eq!(
            (a.pid, a.vma.as_deref(), a.order, a.budget),
            (42, Some("[heap]"), 4, Some(16.0))
        );
        assert!(a.light && a.limits && a.json && !a.defrag);
    }
}
