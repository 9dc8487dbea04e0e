//! `thp-agent run`: the daemon. It follows the processes the configuration
//! names, asks DAMON which of their memory is hot, and collapses the hot
//! 2 MiB chunks with `process_madvise(MADV_COLLAPSE)`, hottest first, within
//! a budget. It collapses nothing while memory pressure is above a limit,
//! backs off after failures, logs every decision, and returns a report.
//!
//! A run is a series of passes, one every `scan_interval`. A pass:
//!
//! 1. follows the processes that appeared and lets go of those that exited
//!    (DAMON is reconfigured when the set changes);
//! 2. reads memory pressure and DAMON's hot regions of each process;
//! 3. measures each process (PMD-mapped bytes) and plans its hot chunks
//!    ([`plan_hot`]): chunks that DAMON saw accessed but less than
//!    `min_hotness` are left alone ("cold");
//! 4. unless memory pressure is above `max_psi_some_avg10` or an `ENOMEM`
//!    back-off is running, collapses the hot chunks of all processes,
//!    hottest first, as long as the budget lets it finish before the next
//!    pass; the rest waits for the next pass. A chunk that fails is not
//!    tried again for 1.5 pass intervals (so the next pass leaves it
//!    alone), doubling with each failure in a row up to 16 intervals;
//!    `ENOMEM` ends the pass and pauses all collapses the same way.
//!
//! Everything outside is behind a trait, so that tests run the loop with
//! fakes: DAMON ([`HotSource`]), the processes ([`Processes`], [`Proc`]),
//! memory pressure ([`PressureSource`]) and time ([`Clock`]).

use crate::collapse::{Collapser, LoopOptions, Stop, Verification};
use crate::config::{Config, TargetSpec};
use crate::damon::{DamonError, HotSource, Region, TargetRegions};
use crate::decisions::{DecisionLog, Line};
use crate::error::AgentError;
use crate::plan::{HotOptions, HotRange, plan_hot};
use crate::policy::{BackoffPolicy, Clock, Cooldown};
use crate::psi::PressureSource;
use crate::report::{
    CollapseEvent, CollapseSummary, Outcome, PsiSample, RangeResult, RunReport, RunSettings,
    Sample, SkipCounts, StoppedBy, TargetReport,
};
use crate::signals::signal_name;
use crate::targets::{Proc, Processes, pmd_mapped};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::Duration;

/// Format version of [`RunReport`].
pub const REPORT_VERSION: u32 = 1;
/// Longest back-off, in pass intervals.
const MAX_BACKOFF_INTERVALS: u32 = 16;
/// Failed DAMON reconfigurations in a row after which the run ends.
const MAX_DAMON_FAILURES: u32 = 3;
/// Bytes in a MiB.
const MIB: f64 = (1u64 << 20) as f64;

/// What the daemon works with: the real system in `main`, fakes in tests.
pub struct Env<'a> {
    /// DAMON.
    pub damon: &'a mut dyn HotSource,
    /// The processes.
    pub procs: &'a mut dyn Processes,
    /// Memory pressure.
    pub psi: &'a mut dyn PressureSource,
    /// Time; its sleeps should end early when a stop is requested.
    pub clock: &'a mut dyn Clock,
    /// The signal that asked the daemon to stop, if one did.
    pub stop: &'a dyn Fn() -> Option<i32>,
    /// Where decisions are logged.
    pub log: &'a mut dyn Write,
}

/// A process being followed.
struct Followed {
    /// The process.
    proc: Box<dyn Proc>,
    /// Its report, filled in as the run goes.
    report: TargetReport,
    /// Bytes collapsed so far.
    collapsed_bytes: u64,
}

/// A hot chunk of a process, to be collapsed in this pass.
struct Candidate {
    /// The process.
    pid: i32,
    /// The chunk.
    chunk: HotRange,
}

/// Why the run stops following a process.
enum Retire {
    /// It exited.
    Exited,
    /// It is alive, but cannot or need not be followed any more.
    Dropped(String),
}

/// The daemon. [`Daemon::start`] checks everything it can before the first
/// pass (errors there end the command with exit code 2); [`Daemon::run`]
/// then runs until the duration passes, a signal comes, or every PID target
/// has exited, and returns the report.
pub struct Daemon<'a> {
    /// The configuration.
    cfg: &'a Config,
    /// The `process_madvise` flags.
    flags: u32,
    /// What makes a chunk hot.
    hot: HotOptions,
    /// DAMON.
    damon: &'a mut dyn HotSource,
    /// The processes.
    procs: &'a mut dyn Processes,
    /// Memory pressure.
    psi_source: &'a mut dyn PressureSource,
    /// Time.
    clock: &'a mut dyn Clock,
    /// The stop request.
    stop: &'a dyn Fn() -> Option<i32>,
    /// The decision log.
    log: DecisionLog<'a>,
    /// The collapses, with the budget and the back-off within a range.
    collapser: Collapser,
    /// When the run started, on `clock`.
    start: Duration,
    /// The processes followed now, in the order they were first followed.
    followed: Vec<Followed>,
    /// Reports of the processes no longer followed.
    done: Vec<TargetReport>,
    /// PIDs that could not be opened: not tried again.
    refused: BTreeSet<i32>,
    /// PIDs whose process exited: a PID target does not follow another
    /// process that gets the PID later.
    exited: BTreeSet<i32>,
    /// Back-off of chunks that failed, by (pid, start).
    cooldowns: HashMap<(i32, u64), Cooldown>,
    /// Back-off of all collapses after `ENOMEM`.
    enomem: Cooldown,
    /// The PIDs DAMON monitors, in its target order.
    monitored: Vec<i32>,
    /// Whether DAMON must be (re)configured at the next pass.
    damon_stale: bool,
    /// Failed DAMON reconfigurations in a row.
    damon_failures: u32,
    /// Memory pressure at each pass.
    psi: Vec<PsiSample>,
    /// Why hot ranges were left alone.
    skipped: SkipCounts,
    /// Why the report does not cover everything.
    incomplete: Vec<String>,
    /// Remarks for the report.
    notes: Vec<String>,
    /// Passes made.
    passes: u32,
}

impl<'a> Daemon<'a> {
    /// Checks memory pressure can be read, follows the configured processes
    /// (every PID target must exist, and each process must be one this
    /// process may collapse) and starts DAMON on them.
    pub fn start(cfg: &'a Config, env: Env<'a>) -> Result<Self, AgentError> {
        let flags = cfg.flags.encode()?;
        env.psi.read()?;
        let start = env.clock.now();
        let opts = LoopOptions {
            flags,
            pmd_order: cfg.flags.is_pmd_order(),
            budget_bytes_per_s: cfg.budget_mib_per_s.map(|mib| mib * MIB),
            // ENOMEM ends the pass at once: the daemon backs off by passes.
            backoff: BackoffPolicy {
                enomem_max_consecutive: 1,
                ..BackoffPolicy::default()
            },
        };
        let backoff = new_cooldown(cfg.scan_interval);
        let mut d = Daemon {
            cfg,
            flags,
            hot: HotOptions {
                min_hotness: cfg.min_hotness,
                chunk_size: cfg.flags.chunk_size(),
                include_ineligible: cfg.include_ineligible,
            },
            damon: env.damon,
            procs: env.procs,
            psi_source: env.psi,
            stop: env.stop,
            log: DecisionLog::new(env.log),
            collapser: Collapser::new(opts, start),
            start,
            clock: env.clock,
            followed: Vec::new(),
            done: Vec::new(),
            refused: BTreeSet::new(),
            exited: BTreeSet::new(),
            cooldowns: HashMap::new(),
            enomem: backoff,
            monitored: Vec::new(),
            damon_stale: true,
            damon_failures: 0,
            psi: Vec::new(),
            skipped: SkipCounts::default(),
            incomplete: Vec::new(),
            notes: Vec::new(),
            passes: 0,
        };
        let targets: Vec<String> = cfg.targets.iter().map(ToString::to_string).collect();
        let line = d
            .line("start")
            .kv("targets", targets.join(","))
            .kv("flags", format_args!("{flags:#x}"))
            .kv(
                "budget_mib_per_s",
                cfg.budget_mib_per_s
                    .map_or("none".into(), |b| b.to_string()),
            )
            .kv("max_psi_some_avg10", cfg.max_psi_some_avg10)
            .kv("min_hotness", cfg.min_hotness)
            .kv("scan_interval_s", cfg.scan_interval.as_secs_f64());
        d.log.emit(line);
        d.refresh(true)?;
        d.configure_damon()?;
        Ok(d)
    }

    /// Time since the start of the run.
    fn elapsed(&self) -> Duration {
        self.clock.now().saturating_sub(self.start)
    }

    /// Milliseconds since the start of the run.
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A log line for `event`, now.
    fn line(&self, event: &str) -> Line {
        Line::new(self.elapsed(), event)
    }

    /// Follows the processes the targets name now and lets go of those that
    /// exited. With `strict` (at the start) a PID target that does not exist
    /// or a process that cannot be opened is an error.
    fn refresh(&mut self, strict: bool) -> Result<(), AgentError> {
        let mut wanted: Vec<(i32, &TargetSpec)> = Vec::new();
        for spec in &self.cfg.targets {
            let pids = match self.procs.resolve(spec) {
                Ok(pids) => pids,
                Err(e) if strict => return Err(e),
                Err(e) => {
                    let line = self.line("target").kv("spec", spec).kv("error", &e);
                    self.log.emit(line);
                    continue;
                }
            };
            if strict && pids.is_empty() {
                if let TargetSpec::Pid(pid) = spec {
                    return Err(AgentError::NoSuchProcess(*pid));
                }
                let line = self
                    .line("target")
                    .kv("spec", spec)
                    .kv("action", "none")
                    .kv("reason", "no process matches yet");
                self.log.emit(line);
            }
            for pid in pids {
                let reused = matches!(spec, TargetSpec::Pid(_)) && self.exited.contains(&pid);
                if !reused && !wanted.iter().any(|(p, _)| *p == pid) {
                    wanted.push((pid, spec));
                }
            }
        }
        // Let go of processes that exited or no longer match.
        let mut i = 0;
        while i < self.followed.len() {
            let pid = self.followed[i].report.pid;
            if self.followed[i].proc.has_exited() {
                self.retire(pid, Retire::Exited);
            } else if !wanted.iter().any(|(p, _)| *p == pid) {
                let why = format!(
                    "it no longer matches {} (its name or cgroup changed)",
                    self.followed[i].report.spec
                );
                self.retire(pid, Retire::Dropped(why));
            } else {
                i += 1;
            }
        }
        for (pid, spec) in wanted {
            if self.refused.contains(&pid) || self.followed.iter().any(|f| f.report.pid == pid) {
                continue;
            }
            match self.procs.open(pid, self.flags) {
                Ok(mut proc) => {
                    let comm = proc.comm();
                    let line = self
                        .line("target")
                        .kv("pid", pid)
                        .kv("action", "follow")
                        .kv("spec", spec)
                        .kv("comm", &comm);
                    self.log.emit(line);
                    let report = TargetReport {
                        pid,
                        spec: spec.to_string(),
                        comm,
                        first_seen_ms: self.elapsed_ms(),
                        exited_at_ms: None,
                        dropped: None,
                        samples: Vec::new(),
                        collapses: Vec::new(),
                        summary: CollapseSummary::default(),
                    };
                    self.followed.push(Followed {
                        proc,
                        report,
                        collapsed_bytes: 0,
                    });
                }
                // At the start, a PID target must be followed, and a
                // missing privilege would refuse every process.
                Err(e)
                    if strict
                        && (matches!(spec, TargetSpec::Pid(_))
                            || matches!(e, AgentError::NotPrivileged { .. })) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    let line = self
                        .line("target")
                        .kv("pid", pid)
                        .kv("action", "refuse")
                        .kv("spec", spec)
                        .kv("reason", &e);
                    self.log.emit(line);
                    // A process that exited meanwhile leaves its PID free
                    // for another one, which may be followed.
                    if !matches!(
                        e,
                        AgentError::NoSuchProcess(_) | AgentError::ProcessExited(_)
                    ) {
                        self.refused.insert(pid);
                    }
                }
            }
        }
        let pids: Vec<i32> = self.followed.iter().map(|f| f.report.pid).collect();
        if pids != self.monitored {
            self.damon_stale = true;
        }
        Ok(())
    }

    /// Points DAMON at the followed processes, if they changed.
    fn configure_damon(&mut self) -> Result<(), DamonError> {
        if !self.damon_stale {
            return Ok(());
        }
        let pids: Vec<i32> = self.followed.iter().map(|f| f.report.pid).collect();
        self.damon.set_targets(&pids)?;
        let list: Vec<String> = pids.iter().map(ToString::to_string).collect();
        let line = self
            .line("damon")
            .kv("action", if pids.is_empty() { "off" } else { "on" })
            .kv(
                "pids",
                if list.is_empty() {
                    "none".into()
                } else {
                    list.join(",")
                },
            );
        self.log.emit(line);
        self.monitored = pids;
        self.damon_stale = false;
        Ok(())
    }

    /// Stops following `pid`; the report says why.
    fn retire(&mut self, pid: i32, why: Retire) {
        let Some(i) = self.followed.iter().position(|f| f.report.pid == pid) else {
            return;
        };
        let mut f = self.followed.remove(i);
        let t = self.elapsed();
        let mut line = self.line("target").kv("pid", pid);
        let sentence = match &why {
            Retire::Exited => {
                self.exited.insert(pid);
                f.report.exited_at_ms = Some(self.elapsed_ms());
                line = line.kv("action", "exit");
                "exited"
            }
            Retire::Dropped(reason) => {
                f.report.dropped = Some(reason.clone());
                line = line.kv("action", "drop").kv("reason", reason);
                "was dropped"
            }
        };
        self.incomplete.push(format!(
            "process {pid} ({}) {sentence} {:.1} s into the run{}; its data ends there",
            f.report.spec,
            t.as_secs_f64(),
            match &why {
                Retire::Dropped(reason) => format!(" ({reason})"),
                Retire::Exited => String::new(),
            }
        ));
        self.log.emit(line);
        self.cooldowns.retain(|(p, _), _| *p != pid);
        self.damon_stale = true;
        self.done.push(self.close_report(f));
    }

    /// The final report of a followed process.
    fn close_report(&self, f: Followed) -> TargetReport {
        let mut report = f.report;
        let ranges: Vec<RangeResult> = report.collapses.iter().map(|c| c.range.clone()).collect();
        report.summary = CollapseSummary::count(&ranges);
        let end = report.exited_at_ms.unwrap_or_else(|| self.elapsed_ms());
        report.summary.elapsed_s = end.saturating_sub(report.first_seen_ms) as f64 / 1000.0;
        report
    }

    /// Measures process `pid` and plans its hot chunks from `regions`.
    /// Returns `None` (and lets go of it) if it has exited.
    fn observe(&mut self, pid: i32, regions: &[Region]) -> Option<Vec<HotRange>> {
        let t_ms = self.elapsed_ms();
        let f = self.followed.iter_mut().find(|f| f.report.pid == pid)?;
        let measured = f.proc.vmas().ok().and_then(|vmas| {
            let (bytes, huge) = pmd_mapped(&mut *f.proc, &vmas).ok()?;
            Some((vmas, bytes, huge))
        });
        let Some((vmas, pmd_bytes, huge)) = measured else {
            let exited = f.proc.has_exited();
            if exited {
                self.retire(pid, Retire::Exited);
            } else {
                let line = self
                    .line("scan")
                    .kv("pid", pid)
                    .kv("error", "cannot read its smaps or pagemap");
                self.log.emit(line);
            }
            return None;
        };
        let plan = plan_hot(regions, &vmas, &huge, &self.hot);
        let hot_bytes: u64 =
            plan.hot.iter().map(|h| h.end - h.start).sum::<u64>() + plan.hot_huge_bytes;
        f.report.samples.push(Sample {
            t_ms,
            pmd_mapped: pmd_bytes,
            hot_bytes: Some(hot_bytes),
            collapsed_bytes: f.collapsed_bytes,
        });
        let line = self
            .line("scan")
            .kv("pid", pid)
            .kv("regions", regions.len())
            .kv("hot", plan.hot.len())
            .kv("hot_huge_bytes", plan.hot_huge_bytes)
            .kv("cold", plan.cold.len())
            .kv("pmd_mapped", pmd_bytes);
        self.log.emit(line);
        for c in &plan.cold {
            let line = self
                .line("skip")
                .kv("pid", pid)
                .range(c.start, c.end)
                .kv("reason", "cold")
                .kv("hotness", c.hotness)
                .kv("min_hotness", self.hot.min_hotness);
            self.log.emit(line);
        }
        self.skipped.cold_ranges += plan.cold.len() as u64;
        Some(plan.hot)
    }

    /// Records the PMD-mapped size of every followed process, without
    /// DAMON (at the start and the end of the run).
    fn measure_all(&mut self) {
        let pids: Vec<i32> = self.followed.iter().map(|f| f.report.pid).collect();
        let t_ms = self.elapsed_ms();
        for pid in pids {
            let Some(f) = self.followed.iter_mut().find(|f| f.report.pid == pid) else {
                continue;
            };
            let bytes = f
                .proc
                .vmas()
                .ok()
                .and_then(|vmas| pmd_mapped(&mut *f.proc, &vmas).ok())
                .map(|(bytes, _)| bytes);
            match bytes {
                Some(pmd_mapped) => f.report.samples.push(Sample {
                    t_ms,
                    pmd_mapped,
                    hot_bytes: None,
                    collapsed_bytes: f.collapsed_bytes,
                }),
                None if f.proc.has_exited() => self.retire(pid, Retire::Exited),
                None => {}
            }
        }
    }

    /// Reads memory pressure: `some avg10`, or `None` (logged) if it
    /// cannot be read.
    fn pressure(&mut self) -> Option<f64> {
        match self.psi_source.read() {
            Ok(p) => {
                let t_ms = self.elapsed_ms();
                self.psi.push(PsiSample {
                    t_ms,
                    some_avg10: p.some.avg10,
                });
                Some(p.some.avg10)
            }
            Err(e) => {
                let line = self.line("psi").kv("error", e);
                self.log.emit(line);
                None
            }
        }
    }

    /// One pass; collapses end by `deadline` (on the clock).
    fn pass(&mut self, deadline: Duration) -> Result<(), AgentError> {
        self.passes += 1;
        self.refresh(false)?;
        if self.damon_stale {
            match self.configure_damon() {
                Ok(()) => self.damon_failures = 0,
                Err(e) => {
                    self.damon_failures += 1;
                    if self.damon_failures >= MAX_DAMON_FAILURES {
                        return Err(e.into());
                    }
                    let line = self
                        .line("damon")
                        .kv("action", "error")
                        .kv("error", &e)
                        .kv("retry", "next pass");
                    self.log.emit(line);
                    return Ok(());
                }
            }
        }
        let pressure = self.pressure();
        let regions = match self.damon.hot_regions() {
            Ok(r) => r,
            Err(e @ DamonError::Stopped(_)) => {
                let line = self.line("damon").kv("action", "stopped").kv("reason", &e);
                self.log.emit(line);
                // The exits are seen at the next pass, and DAMON restarted
                // on the processes left.
                self.damon_stale = true;
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let mut candidates = Vec::new();
        for TargetRegions { pid, regions } in regions {
            if let Some(hot) = self.observe(pid, &regions) {
                candidates.extend(hot.into_iter().map(|chunk| Candidate { pid, chunk }));
            }
        }
        candidates.sort_by(|a, b| {
            (b.chunk.hotness, b.chunk.age)
                .cmp(&(a.chunk.hotness, a.chunk.age))
                .then((a.pid, a.chunk.start).cmp(&(b.pid, b.chunk.start)))
        });
        if candidates.is_empty() {
            return Ok(());
        }
        // Unknown pressure allows nothing.
        if !pressure.is_some_and(|p| p <= self.cfg.max_psi_some_avg10) {
            self.skipped.psi_passes += 1;
            let some = pressure.map_or("unknown".into(), |p| p.to_string());
            let line = self
                .line("skip")
                .kv("ranges", candidates.len())
                .kv("reason", "psi")
                .kv("some_avg10", some)
                .kv("max_psi_some_avg10", self.cfg.max_psi_some_avg10);
            self.log.emit(line);
            return Ok(());
        }
        let now = self.clock.now();
        if let Some(until) = self.enomem.blocks(now) {
            self.skipped.enomem_passes += 1;
            let line = self
                .line("skip")
                .kv("ranges", candidates.len())
                .kv("reason", "enomem_backoff")
                .kv("until_s", format_args!("{:.3}", self.secs(until)));
            self.log.emit(line);
            return Ok(());
        }
        self.collapse(&candidates, deadline);
        Ok(())
    }

    /// Seconds since the start of the run at clock time `t`.
    fn secs(&self, t: Duration) -> f64 {
        t.saturating_sub(self.start).as_secs_f64()
    }

    /// Collapses `candidates` in order, until `deadline` or a stop.
    fn collapse(&mut self, candidates: &[Candidate], deadline: Duration) {
        for (k, c) in candidates.iter().enumerate() {
            if (self.stop)().is_some() {
                return;
            }
            let (pid, r) = (c.pid, c.chunk.planned());
            let len = r.end - r.start;
            let now = self.clock.now();
            if let Some(until) = self
                .cooldowns
                .get(&(pid, r.start))
                .and_then(|b| b.blocks(now))
            {
                self.skipped.backoff_ranges += 1;
                let line = self
                    .line("skip")
                    .kv("pid", pid)
                    .range(r.start, r.end)
                    .kv("reason", "backoff")
                    .kv("until_s", format_args!("{:.3}", self.secs(until)));
                self.log.emit(line);
                continue;
            }
            let wait = self.collapser.pacing_delay(len, now);
            if now + wait > deadline {
                let rest = candidates.get(k..).unwrap_or_default();
                self.skipped.deferred_ranges += rest.len() as u64;
                let bytes: u64 = rest.iter().map(|c| c.chunk.end - c.chunk.start).sum();
                let mut line = self
                    .line("skip")
                    .kv("ranges", rest.len())
                    .kv("bytes", bytes);
                line = match self.cfg.budget_mib_per_s {
                    Some(b) if !wait.is_zero() => {
                        line.kv("reason", "budget").kv("budget_mib_per_s", b)
                    }
                    // Without a budget, the pass ran out of time.
                    _ => line.kv("reason", "pass_time"),
                };
                self.log.emit(line);
                return;
            }
            if !wait.is_zero() {
                self.clock.sleep(wait);
                if (self.stop)().is_some() {
                    return;
                }
            }
            if !self.collapse_one(c) {
                return;
            }
        }
    }

    /// Collapses one candidate; false if the pass must stop collapsing.
    fn collapse_one(&mut self, c: &Candidate) -> bool {
        let pid = c.pid;
        let r = c.chunk.planned();
        let Some(f) = self.followed.iter_mut().find(|f| f.report.pid == pid) else {
            return true;
        };
        let outcome = self.collapser.range(&mut *f.proc, &mut *self.clock, &r);
        let len = r.end - r.start;
        let t_ms = u64::try_from(self.clock.now().saturating_sub(self.start).as_millis())
            .unwrap_or(u64::MAX);
        match &outcome {
            Outcome::Collapsed { .. } => {
                f.collapsed_bytes += len;
                self.cooldowns.remove(&(pid, r.start));
                self.enomem.succeed();
            }
            Outcome::AlreadyHuge => {
                self.cooldowns.remove(&(pid, r.start));
            }
            Outcome::Failed { .. } | Outcome::NotAttempted { .. } => {}
        }
        f.report.collapses.push(CollapseEvent {
            t_ms,
            hotness: c.chunk.hotness,
            age: c.chunk.age,
            range: RangeResult {
                start: r.start,
                end: r.end,
                vma: r.vma.clone(),
                outcome: outcome.clone(),
            },
        });
        let line = outcome_line(
            self.line("collapse")
                .kv("pid", pid)
                .range(r.start, r.end)
                .kv("hotness", c.chunk.hotness)
                .kv("age", c.chunk.age),
            &outcome,
        );
        self.log.emit(line);

        let now = self.clock.now();
        match self.collapser.stop() {
            None => {
                if matches!(outcome, Outcome::Failed { .. }) {
                    let interval = self.cfg.scan_interval;
                    let until = self
                        .cooldowns
                        .entry((pid, r.start))
                        .or_insert_with(|| new_cooldown(interval))
                        .fail(now);
                    let line = self
                        .line("backoff")
                        .kv("pid", pid)
                        .range(r.start, r.end)
                        .kv("errno", failed_errno(&outcome))
                        .kv("until_s", format_args!("{:.3}", self.secs(until)));
                    self.log.emit(line);
                }
                true
            }
            Some(Stop::ProcessExited) => {
                self.collapser.resume();
                self.retire(pid, Retire::Exited);
                true
            }
            Some(Stop::Enomem { .. }) => {
                self.collapser.resume();
                self.skipped.enomem_passes += 1;
                let until = self.enomem.fail(now);
                let line = self
                    .line("backoff")
                    .kv("pid", pid)
                    .range(r.start, r.end)
                    .kv("errno", "ENOMEM")
                    .kv("scope", "all")
                    .kv("until_s", format_args!("{:.3}", self.secs(until)));
                self.log.emit(line);
                false
            }
            Some(stop @ Stop::Fatal { .. }) => {
                self.collapser.resume();
                self.retire(pid, Retire::Dropped(stop.to_string()));
                true
            }
        }
    }

    /// Whether nothing is left to follow: every target is a PID, and none
    /// is followed any more.
    fn all_exited(&self) -> bool {
        self.followed.is_empty()
            && self
                .cfg
                .targets
                .iter()
                .all(|t| matches!(t, TargetSpec::Pid(_)))
    }

    /// Runs until the duration passes, a signal comes, every PID target has
    /// exited or an error happens, then turns DAMON off and returns the report.
    pub fn run(mut self) -> RunReport {
        let interval = self.cfg.scan_interval;
        let end = self.cfg.duration.map(|d| self.start + d);
        self.measure_all();
        let mut next = self.start + interval;
        let mut signal = None;
        let mut error = None;
        let stopped_by = loop {
            if let Some(sig) = (self.stop)() {
                signal = Some(sig);
                break StoppedBy::Signal;
            }
            let now = self.clock.now();
            if end.is_some_and(|e| now >= e) {
                break StoppedBy::Duration;
            }
            if self.all_exited() {
                break StoppedBy::AllTargetsExited;
            }
            if now < next {
                let until = end.map_or(next, |e| e.min(next));
                self.clock.sleep(until.saturating_sub(now));
                continue;
            }
            // A pass that overran its interval delays the next one rather
            // than making passes pile up.
            next = (next + interval).max(now + interval / 2);
            let deadline = end.map_or(next, |e| e.min(next));
            if let Err(e) = self.pass(deadline) {
                error = Some(e);
                break StoppedBy::Error;
            }
        };
        self.measure_all();
        self.finish(stopped_by, signal, error)
    }

    /// Turns DAMON off and builds the report.
    fn finish(
        mut self,
        stopped_by: StoppedBy,
        signal: Option<i32>,
        error: Option<AgentError>,
    ) -> RunReport {
        if let Err(e) = self.damon.close() {
            self.notes
                .push(format!("DAMON could not be turned off: {e}"));
        }
        let mut line = self.line("stop").kv(
            "reason",
            match stopped_by {
                StoppedBy::Duration => "duration",
                StoppedBy::Signal => "signal",
                StoppedBy::AllTargetsExited => "all_targets_exited",
                StoppedBy::Error => "error",
            },
        );
        if let Some(sig) = signal {
            line = line.kv("signal", signal_name(sig));
        }
        if let Some(e) = &error {
            line = line.kv("error", e);
            self.incomplete
                .push(format!("the run ended early on an error: {e}"));
        }
        self.log.emit(line);
        if let Some(e) = self.log.error() {
            self.notes
                .push(format!("the decision log could not be written: {e}"));
        }
        if self.collapser.verification() == Verification::ReturnValueNoPagemap {
            self.notes.push("this kernel has no PAGEMAP_SCAN ioctl (ENOTTY): collapses are judged by process_madvise's return value, and PMD-mapped sizes come from smaps".into());
        }
        let followed = std::mem::take(&mut self.followed);
        let mut targets = std::mem::take(&mut self.done);
        for f in followed {
            targets.push(self.close_report(f));
        }
        targets.sort_by_key(|t| (t.first_seen_ms, t.pid));
        let ranges: Vec<RangeResult> = targets
            .iter()
            .flat_map(|t| t.collapses.iter().map(|c| c.range.clone()))
            .collect();
        let mut summary = CollapseSummary::count(&ranges);
        let elapsed_s = self.elapsed().as_secs_f64();
        summary.elapsed_s = elapsed_s;
        let cfg = self.cfg;
        RunReport {
            version: REPORT_VERSION,
            complete: self.incomplete.is_empty(),
            incomplete: self.incomplete,
            stopped_by,
            signal: signal.map(signal_name),
            error: error.map(|e| e.to_string()),
            notes: self.notes,
            elapsed_s,
            passes: self.passes,
            settings: RunSettings {
                flags: self.flags,
                chunk_size: self.hot.chunk_size,
                budget_mib_per_s: cfg.budget_mib_per_s,
                max_psi_some_avg10: cfg.max_psi_some_avg10,
                min_hotness: cfg.min_hotness,
                scan_interval_s: cfg.scan_interval.as_secs_f64(),
                include_ineligible: cfg.include_ineligible,
                damon: cfg.damon,
            },
            psi: self.psi,
            skipped: self.skipped,
            summary,
            targets,
        }
    }
}

/// The back-off after a failure, for passes every `interval`: 1.5 intervals
/// (so that at least the next pass leaves it alone), doubling with each
/// failure in a row, at most [`MAX_BACKOFF_INTERVALS`] intervals.
fn new_cooldown(interval: Duration) -> Cooldown {
    Cooldown::new(interval * 3 / 2, interval * MAX_BACKOFF_INTERVALS)
}

/// The errno name of a failed outcome (`unverified` for a success that left
/// the range not PMD-mapped).
fn failed_errno(o: &Outcome) -> String {
    match o {
        Outcome::Failed { errno, .. } => errno.clone().unwrap_or_else(|| "unverified".into()),
        _ => String::new(),
    }
}

/// Adds the result of a collapse to its log line.
fn outcome_line(line: Line, o: &Outcome) -> Line {
    match o {
        Outcome::Collapsed { verified } => line.kv("result", "collapsed").kv("verified", verified),
        Outcome::AlreadyHuge => line.kv("result", "already_huge"),
        Outcome::Failed {
            reason, attempts, ..
        } => line
            .kv("result", "failed")
            .kv("errno", failed_errno(o))
            .kv("attempts", attempts)
            .kv("reason", reason),
        Outcome::NotAttempted { reason } => line.kv("result", "not_attempted").kv("reason", reason),
    }
}

#[cfg(test)]
mod tests;
