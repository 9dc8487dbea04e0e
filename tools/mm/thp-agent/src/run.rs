//! `thp-agent run --config FILE`: reads the configuration, checks what the
//! kernel offers, runs the [`daemon`](crate::daemon) on the real system
//! (DAMON's sysfs interface, `/proc`, `/proc/pressure/memory`, a clock that
//! SIGTERM and SIGINT interrupt) and writes the report.

use crate::config::{Config, parse_duration};
use crate::daemon::{Daemon, Env};
use crate::damon::{DamonSetup, DamonSysfs};
use crate::error::AgentError;
use crate::plot;
use crate::psi::PsiFile;
use crate::report::{RunReport, StoppedBy, run_summary_line};
use crate::signals::{InterruptibleClock, StopRequest};
use crate::targets::ProcFs;
use crate::uapi::{DAMON_SYSFS_ADMIN, PSI_MEMORY_PATH};
use crate::{EXIT_FAILED, EXIT_OK};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Name of the JSON report in the report directory.
pub const REPORT_JSON: &str = "report.json";
/// Name of the plot in the report directory.
pub const REPORT_PNG: &str = "report.png";

/// Arguments of `thp-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (TOML; see README.md).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Stop after this many seconds, then write the report (overrides duration_s).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<f64>,
    /// Write report.json and report.png into this directory (overrides report_dir).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Append the decisions to this file instead of stderr (overrides log_file).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Root of the DAMON sysfs interface (for tests).
    #[arg(long, hide = true, value_name = "DIR", default_value = DAMON_SYSFS_ADMIN)]
    pub damon_admin: PathBuf,
    /// The memory pressure file (for tests).
    #[arg(long, hide = true, value_name = "FILE", default_value = PSI_MEMORY_PATH)]
    pub psi_file: PathBuf,
}

/// Parses `--duration`.
fn parse_seconds(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| parse_duration(*v).is_ok())
        .ok_or_else(|| format!("{s:?} is not a positive number of seconds (at most a year)"))
}

/// Reads the configuration and applies the command line over it.
fn load_config(args: &RunArgs) -> Result<Config, AgentError> {
    let path = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).map_err(|e| AgentError::Config {
        path: path.clone(),
        why: format!("cannot read it: {e}"),
    })?;
    let mut cfg = Config::from_toml(&text).map_err(|e| AgentError::Config {
        path,
        why: e.to_string(),
    })?;
    if let Some(secs) = args.duration {
        cfg.duration = parse_duration(secs).ok();
    }
    if let Some(dir) = &args.report {
        cfg.report_dir = Some(dir.clone());
    }
    if let Some(file) = &args.log {
        cfg.log_file = Some(file.clone());
    }
    Ok(cfg)
}

/// An error writing into the report directory.
fn report_error(path: &Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::Report {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// Writes `report.png` and then `report.json` into `dir`; the JSON is
/// written under another name and renamed, so that a reader never sees a
/// partial report. A plot that cannot be made is noted in the JSON.
pub fn write_report(report: &mut RunReport, dir: &Path) -> Result<(), AgentError> {
    let png = dir.join(REPORT_PNG);
    if let Err(e) = plot::write_png(report, &png) {
        report.notes.push(format!("no {REPORT_PNG}: {e}"));
    }
    let json = dir.join(REPORT_JSON);
    let tmp = dir.join(format!(".{REPORT_JSON}.tmp"));
    let text = serde_json::to_string_pretty(report).map_err(|e| report_error(&json, e))?;
    std::fs::write(&tmp, text + "\n").map_err(|e| report_error(&tmp, e))?;
    std::fs::rename(&tmp, &json).map_err(|e| report_error(&json, e))
}

/// `thp-agent run`.
pub fn cmd_run(args: &RunArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => crate::fail(&e, false),
    }
}

/// `thp-agent run`, with the errors that end it before the report returned.
fn run(args: &RunArgs) -> Result<ExitCode, AgentError> {
    let cfg = load_config(args)?;
    let flags = cfg.flags.encode()?;
    crate::check_thp_setup(flags, cfg.include_ineligible)?;
    if let Some(dir) = &cfg.report_dir {
        std::fs::create_dir_all(dir).map_err(|e| report_error(dir, e))?;
    }
    let mut stderr = std::io::stderr();
    let mut log_file;
    let log: &mut dyn Write = match &cfg.log_file {
        Some(path) => {
            log_file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| AgentError::Config {
                    path: path.display().to_string(),
                    why: format!("cannot open the log file: {e}"),
                })?;
            &mut log_file
        }
        None => &mut stderr,
    };
    let stop = StopRequest::install().map_err(|source| AgentError::Os {
        what: "sigaction",
        source,
    })?;
    let mut psi = PsiFile(args.psi_file.clone());
    let setup = DamonSetup {
        attrs: cfg.damon,
        min_nr_accesses: cfg.min_hotness,
    };
    // Dropping it on an error turns off and removes what it set up.
    let mut damon = DamonSysfs::open(&args.damon_admin, setup)?;
    let mut procs = ProcFs::new(Path::new("/proc"));
    let mut clock = InterruptibleClock::new(stop.clone());
    let requested = || stop.requested();
    let env = Env {
        damon: &mut damon,
        procs: &mut procs,
        psi: &mut psi,
        clock: &mut clock,
        stop: &requested,
        log,
    };
    let mut report = Daemon::start(&cfg, env)?.run();
    match &cfg.report_dir {
        Some(dir) => write_report(&mut report, dir)?,
        None => crate::print_json(&report),
    }
    // Not eprintln!, which panics if stderr is a closed pipe.
    let _ = writeln!(
        std::io::stderr(),
        "thp-agent: {}",
        run_summary_line(&report)
    );
    Ok(ExitCode::from(
        if report.complete && report.stopped_by != StoppedBy::Error {
            EXIT_OK
        } else {
            EXIT_FAILED
        },
    ))
}
