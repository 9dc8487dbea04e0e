//! The daemon's loop with fake DAMON, processes, pressure and clock.

use super::*;
use crate::collapse::Target;
use crate::pagemap::{HugeMap, ScanError};
use crate::policy::FakeClock;
use crate::psi::{Pressure, PsiError, Stall};
use crate::smaps::Vma;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

const MIB: u64 = 1 << 20;
const PMD: u64 = 2 * MIB;
const BASE: u64 = 0x7f0000000000;

/// What a fake process is and does, shared by the test and the daemon.
#[derive(Default)]
struct ProcState {
    comm: String,
    vmas: Vec<Vma>,
    /// PMD-mapped ranges.
    huge: Vec<(u64, u64)>,
    /// `(start, len, flags)` of each collapse call.
    calls: Vec<(u64, u64, u32)>,
    /// Errors returned by the next collapse calls of a range, by start.
    errors: HashMap<u64, VecDeque<i32>>,
    /// `vmas` calls so far.
    scans: u32,
    /// The process exits at this `vmas` call.
    exit_at_scan: Option<u32>,
    exited: bool,
    /// The process shows up at this `resolve` call (0: from the start).
    born_at_resolve: u32,
    /// `open` refuses it: the agent is not privileged.
    refuse: bool,
    /// `open` refuses it: it has no memory (a zombie).
    zombie: bool,
    /// After its exit, another process gets its PID at this `resolve` call.
    pid_reused_at_resolve: Option<u32>,
}

type Shared = Rc<RefCell<ProcState>>;

struct FakeProc(Shared);

impl Target for FakeProc {
    fn collapse(&mut self, start: u64, len: u64, flags: u32) -> Result<(), i32> {
        let mut p = self.0.borrow_mut();
        if p.exited {
            return Err(libc::ESRCH);
        }
        p.calls.push((start, len, flags));
        if let Some(e) = p.errors.get_mut(&start).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        p.huge.push((start, start + len));
        Ok(())
    }

    fn scan_huge(&mut self, start: u64, end: u64) -> Result<HugeMap, ScanError> {
        let p = self.0.borrow();
        if p.exited {
            return Err(ScanError::ProcessExited);
        }
        Ok(HugeMap::from_ranges(
            p.huge.iter().map(|&(s, e)| (s.max(start), e.min(end))),
        ))
    }

    fn has_exited(&mut self) -> bool {
        self.0.borrow().exited
    }

    fn is_mapped(&mut self, _start: u64, _end: u64) -> bool {
        true
    }
}

impl Proc for FakeProc {
    fn vmas(&mut self) -> Result<Vec<Vma>, AgentError> {
        let mut p = self.0.borrow_mut();
        p.scans += 1;
        if p.exit_at_scan == Some(p.scans) {
            p.exited = true;
        }
        if p.exited {
            return Err(AgentError::ProcessExited(0));
        }
        Ok(p.vmas.clone())
    }

    fn comm(&mut self) -> String {
        self.0.borrow().comm.clone()
    }
}

#[derive(Default)]
struct FakeProcs {
    procs: BTreeMap<i32, Shared>,
    resolves: u32,
    /// PIDs `open` was called for.
    opened: Vec<i32>,
}

impl FakeProcs {
    fn add(&mut self, pid: i32, comm: &str) -> Shared {
        let p = Rc::new(RefCell::new(ProcState {
            comm: comm.into(),
            vmas: vec![vma(BASE, BASE + 16 * MIB)],
            ..ProcState::default()
        }));
        self.procs.insert(pid, p.clone());
        p
    }

    fn alive(&self, pid: i32) -> bool {
        self.procs.get(&pid).is_some_and(|p| {
            let p = p.borrow();
            let reused = p.pid_reused_at_resolve.is_some_and(|r| r <= self.resolves);
            (!p.exited || reused) && p.born_at_resolve <= self.resolves
        })
    }
}

impl Processes for FakeProcs {
    fn resolve(&mut self, spec: &TargetSpec) -> Result<Vec<i32>, AgentError> {
        self.resolves += 1;
        Ok(match spec {
            TargetSpec::Pid(pid) => [*pid].into_iter().filter(|p| self.alive(*p)).collect(),
            TargetSpec::Name(name) => self
                .procs
                .iter()
                .filter(|(pid, p)| p.borrow().comm == *name && self.alive(**pid))
                .map(|(pid, _)| *pid)
                .collect(),
            TargetSpec::Cgroup(path) => {
                return Err(AgentError::Read {
                    path: path.display().to_string(),
                    why: "no cgroups here".into(),
                });
            }
        })
    }

    fn open(&mut self, pid: i32, _flags: u32) -> Result<Box<dyn Proc>, AgentError> {
        self.opened.push(pid);
        let p = self.procs.get(&pid).ok_or(AgentError::NoSuchProcess(pid))?;
        if p.borrow().refuse {
            return Err(AgentError::NotPrivileged {
                what: "process_madvise".into(),
                errno: "EPERM".into(),
            });
        }
        if p.borrow().zombie {
            return Err(AgentError::NoAddressSpace(pid));
        }
        Ok(Box::new(FakeProc(p.clone())))
    }
}

#[derive(Default)]
struct FakeDamon {
    /// The hot regions of each process.
    regions: HashMap<i32, Vec<Region>>,
    targets: Vec<i32>,
    /// Every `set_targets` call.
    sets: Vec<Vec<i32>>,
    /// `hot_regions` calls so far.
    reads: Rc<Cell<u32>>,
    /// `hot_regions` says the kdamond stopped at this call.
    stopped_at: Option<u32>,
    /// `hot_regions` fails from this call on.
    broken_from: Option<u32>,
    /// `set_targets` fails.
    refuse: bool,
    closed: bool,
}

impl HotSource for FakeDamon {
    fn set_targets(&mut self, pids: &[i32]) -> Result<(), DamonError> {
        if self.refuse {
            return Err(DamonError::NoVaddr {
                path: "avail_operations".into(),
                avail: "paddr".into(),
            });
        }
        self.sets.push(pids.to_vec());
        self.targets = pids.to_vec();
        Ok(())
    }

    fn hot_regions(&mut self) -> Result<Vec<TargetRegions>, DamonError> {
        let n = self.reads.get() + 1;
        self.reads.set(n);
        if self.stopped_at == Some(n) {
            return Err(DamonError::Stopped("state".into()));
        }
        if self.broken_from.is_some_and(|b| n >= b) {
            return Err(DamonError::NoTriedRegions);
        }
        Ok(self
            .targets
            .iter()
            .map(|&pid| TargetRegions {
                pid,
                regions: self.regions.get(&pid).cloned().unwrap_or_default(),
            })
            .collect())
    }

    fn close(&mut self) -> Result<(), DamonError> {
        self.closed = true;
        self.targets.clear();
        Ok(())
    }
}

/// Memory pressure readings, one per read; the last one repeats. A
/// negative value is a read error.
struct FakePsi {
    values: VecDeque<f64>,
    missing: bool,
}

impl PressureSource for FakePsi {
    fn read(&mut self) -> Result<Pressure, PsiError> {
        if self.missing {
            return Err(PsiError::Missing("/proc/pressure/memory".into()));
        }
        let avg10 = if self.values.len() > 1 {
            self.values.pop_front().unwrap_or(0.0)
        } else {
            self.values.front().copied().unwrap_or(0.0)
        };
        if avg10 < 0.0 {
            return Err(PsiError::Parse {
                line: 1,
                what: "garbled".into(),
            });
        }
        Ok(Pressure {
            some: Stall {
                avg10,
                ..Stall::default()
            },
            full: None,
        })
    }
}

struct World {
    damon: FakeDamon,
    procs: FakeProcs,
    psi: FakePsi,
    clock: FakeClock,
    log: Vec<u8>,
    /// SIGTERM comes once DAMON has been read this many times.
    sigterm_after_reads: Option<u32>,
}

impl World {
    fn new() -> Self {
        World {
            damon: FakeDamon::default(),
            procs: FakeProcs::default(),
            psi: FakePsi {
                values: VecDeque::from([0.0]),
                missing: false,
            },
            clock: FakeClock::default(),
            log: Vec::new(),
            sigterm_after_reads: None,
        }
    }

    fn start_and_run(&mut self, cfg: &Config) -> Result<RunReport, AgentError> {
        let reads = self.damon.reads.clone();
        let after = self.sigterm_after_reads;
        let stop = move || match after {
            Some(n) if reads.get() >= n => Some(libc::SIGTERM),
            _ => None,
        };
        let env = Env {
            damon: &mut self.damon,
            procs: &mut self.procs,
            psi: &mut self.psi,
            clock: &mut self.clock,
            stop: &stop,
            log: &mut self.log,
        };
        Ok(Daemon::start(cfg, env)?.run())
    }

    fn run(&mut self, cfg: &Config) -> RunReport {
        match self.start_and_run(cfg) {
            Ok(r) => r,
            Err(e) => panic!("the daemon did not start: {e}"),
        }
    }

    fn log_lines(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.log)
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }
}

fn vma(start: u64, end: u64) -> Vma {
    Vma {
        start,
        end,
        perms: "rw-p".into(),
        thp_eligible: Some(true),
        ..Vma::default()
    }
}

/// A DAMON region over chunk `i` (2 MiB at `BASE + i * 2 MiB`).
fn chunk(i: u64, nr_accesses: u32) -> Region {
    Region {
        start: BASE + i * PMD,
        end: BASE + (i + 1) * PMD,
        nr_accesses,
        age: 3,
    }
}

/// A configuration: `top` holds top-level keys, then the targets.
fn config(top: &str, targets: &str) -> Config {
    let text = format!("scan_interval_s = 1\nmin_hotness = 5\n{top}\n{targets}");
    match Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => panic!("{e}\n{text}"),
    }
}

const PID100: &str = "[[target]]\npid = 100\n";

/// The chunk index and outcome of each collapse of `t`.
fn collapses(t: &TargetReport) -> Vec<(u64, String, u64)> {
    t.collapses
        .iter()
        .map(|c| {
            let what = crate::report::tests::outcome_kind(&c.range.outcome);
            ((c.range.start - BASE) / PMD, what, c.t_ms)
        })
        .collect()
}

#[test]
fn hot_ranges_are_collapsed_hottest_first_within_the_budget_and_cold_ones_left_alone() {
    let mut w = World::new();
    let p = w.procs.add(100, "victim");
    // Chunk 4 is cold (nr_accesses 2 < min_hotness 5).
    w.damon.regions.insert(
        100,
        vec![
            chunk(0, 18),
            chunk(1, 12),
            chunk(2, 15),
            chunk(4, 2),
            chunk(6, 7),
        ],
    );
    let cfg = config("budget_mib_per_s = 2\nduration_s = 6", PID100);
    let r = w.run(&cfg);

    // Hottest first, paced at 2 MiB/s after the first second's worth:
    // 0 and 2 in the first pass, the rest deferred to later passes.
    let t = &r.targets[0];
    let done: Vec<(u64, &str)> = collapses(t)
        .iter()
        .map(|(c, what, _)| (*c, if what == "collapsed" { "ok" } else { "?" }))
        .collect();
    assert_eq!(done, [(0, "ok"), (2, "ok"), (1, "ok"), (6, "ok")]);
    let times: Vec<u64> = t.collapses.iter().map(|c| c.t_ms).collect();
    assert_eq!(times, [1000, 2000, 3000, 4000]);
    // Never more than the bucket (one second's worth) plus the rate.
    let mut bytes = 0;
    for c in &t.collapses {
        bytes += c.range.end - c.range.start;
        assert!(
            bytes <= 2 * MIB + 2 * MIB * c.t_ms / 1000,
            "{bytes} at {}",
            c.t_ms
        );
    }
    // The cold chunk was never touched, and the log says why.
    let calls: Vec<u64> = p
        .borrow()
        .calls
        .iter()
        .map(|c| (c.0 - BASE) / PMD)
        .collect();
    assert_eq!(calls, [0, 2, 1, 6]);
    let cold = w.log_lines("reason=cold");
    assert!(!cold.is_empty());
    assert!(
        cold[0].contains(
            "pid=100 range=7f0000800000-7f0000a00000 reason=cold hotness=2 min_hotness=5"
        ),
        "{}",
        cold[0]
    );
    // Pass 1 defers chunks 1 and 6, pass 2 chunk 6.
    assert_eq!(w.log_lines("reason=budget").len(), 2);
    assert_eq!(r.skipped.deferred_ranges, 2 + 1);
    let first = &w.log_lines("event=collapse")[0];
    assert_eq!(
        first,
        "t=1.000 event=collapse pid=100 range=7f0000000000-7f0000200000 hotness=18 age=3 result=collapsed verified=true"
    );

    assert!(r.complete, "{:?}", r.incomplete);
    assert_eq!(r.stopped_by, StoppedBy::Duration);
    assert_eq!(r.elapsed_s, 6.0);
    assert_eq!(r.summary.collapsed, 4);
    assert_eq!(r.summary.bytes_collapsed, 8 * MIB);
    // Measured at the start, at each pass and at the end.
    let pmd: Vec<u64> = t.samples.iter().map(|s| s.pmd_mapped / MIB).collect();
    assert_eq!(pmd, [0, 0, 4, 6, 8, 8, 8]);
    assert_eq!(t.samples.last().map(|s| s.collapsed_bytes), Some(8 * MIB));
    assert_eq!(w.damon.sets, [vec![100]]);
    assert!(w.damon.closed);
    assert!(w.log_lines("event=stop reason=duration").len() == 1);
}

#[test]
fn no_collapse_while_memory_pressure_is_above_the_limit() {
    let mut w = World::new();
    let p = w.procs.add(100, "victim");
    w.damon.regions.insert(100, vec![chunk(0, 18)]);
    // The start reads 0; pass 1 reads 50 %, pass 2 cannot read it, then 3 %
    // from pass 3.
    w.psi.values = VecDeque::from([0.0, 50.0, -1.0, 3.0]);
    let cfg = config("max_psi_some_avg10 = 10\nduration_s = 4", PID100);
    let r = w.run(&cfg);
    let done = collapses(&r.targets[0]);
    assert_eq!(done, [(0, "collapsed".to_string(), 3000)]);
    assert_eq!(r.skipped.psi_passes, 2);
    let skips = w.log_lines("reason=psi");
    assert_eq!(skips.len(), 2);
    assert!(
        skips[0].contains("ranges=1 reason=psi some_avg10=50 max_psi_some_avg10=10"),
        "{}",
        skips[0]
    );
    assert!(
        skips[1].contains("reason=psi some_avg10=unknown"),
        "{}",
        skips[1]
    );
    assert_eq!(w.log_lines("event=psi error=").len(), 1);
    assert_eq!(p.borrow().calls.len(), 1);
    let psi: Vec<f64> = r.psi.iter().map(|s| s.some_avg10).collect();
    assert_eq!(psi, [50.0, 3.0]);
}

#[test]
fn always_under_pressure_means_never_a_collapse() {
    let mut w = World::new();
    let p = w.procs.add(100, "victim");
    w.damon
        .regions
        .insert(100, vec![chunk(0, 18), chunk(1, 18)]);
    w.psi.values = VecDeque::from([0.0, 99.0]);
    let r = w.run(&config("duration_s = 5", PID100));
    assert!(p.borrow().calls.is_empty());
    assert!(r.targets[0].collapses.is_empty());
    assert_eq!(r.skipped.psi_passes, r.passes);
    assert_eq!(r.passes, 4);
}

/// Process 100 with two hot chunks, whose hotter one fails with `errors`
/// first, run for 4 s.
fn run_with_failures(errors: &[i32]) -> (World, Shared, RunReport) {
    let mut w = World::new();
    let p = w.procs.add(100, "victim");
    p.borrow_mut()
        .errors
        .insert(BASE, errors.iter().copied().collect());
    w.damon.regions.insert(100, vec![chunk(0, 18), chunk(1, 9)]);
    let r = w.run(&config("duration_s = 4", PID100));
    (w, p, r)
}

#[test]
fn eagain_backs_the_range_off_for_the_next_pass() {
    let (w, p, r) = run_with_failures(&[libc::EAGAIN; 4]);
    let done = collapses(&r.targets[0]);
    assert_eq!(
        done,
        [
            (0, "failed EAGAIN x4".to_string(), 1350),
            (1, "collapsed".to_string(), 1350),
            (0, "collapsed".to_string(), 3000),
        ]
    );
    // The retries inside the range: 50, 100 and 200 ms.
    let ms = Duration::from_millis;
    // (The first sleep waits for the first pass.)
    assert_eq!(w.clock.sleeps[..4], [ms(1000), ms(50), ms(100), ms(200)]);
    let backoff = w.log_lines("event=backoff");
    assert_eq!(backoff.len(), 1);
    assert!(
        backoff[0].contains("range=7f0000000000-7f0000200000 errno=EAGAIN until_s=2.850"),
        "{}",
        backoff[0]
    );
    let skipped = w.log_lines("reason=backoff");
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].starts_with("t=2.000 event=skip pid=100 range=7f0000000000-7f0000200000"),
        "{}",
        skipped[0]
    );
    assert_eq!(r.skipped.backoff_ranges, 1);
    assert_eq!(r.summary.failed, 1);
    assert_eq!(r.summary.failed_by_reason.get("EAGAIN"), Some(&1));
    assert_eq!(p.borrow().calls.len(), 4 + 1 + 1);
}

#[test]
fn enomem_pauses_every_collapse() {
    let (w, p, r) = run_with_failures(&[libc::ENOMEM]);
    let done = collapses(&r.targets[0]);
    assert_eq!(
        done,
        [
            (0, "failed ENOMEM x1".to_string(), 1000),
            (0, "collapsed".to_string(), 3000),
            (1, "collapsed".to_string(), 3000),
        ]
    );
    // No sleep-and-retry inside the pass: the daemon backs off by passes.
    assert!(
        w.clock
            .sleeps
            .iter()
            .all(|s| *s >= Duration::from_millis(500))
    );
    let backoff = w.log_lines("event=backoff");
    assert_eq!(backoff.len(), 1);
    assert!(
        backoff[0].contains("errno=ENOMEM scope=all until_s=2.500"),
        "{}",
        backoff[0]
    );
    assert_eq!(w.log_lines("reason=enomem_backoff").len(), 1);
    // The pass cut short and the pass skipped.
    assert_eq!(r.skipped.enomem_passes, 2);
    assert_eq!(p.borrow().calls.len(), 3);
}

#[test]
fn a_target_that_exits_midway_is_reported() {
    let mut w = World::new();
    let p = w.procs.add(100, "victim");
    // Scans: the start, pass 1, then pass 2 finds it gone.
    p.borrow_mut().exit_at_scan = Some(3);
    w.damon.regions.insert(100, vec![chunk(0, 18)]);
    let r = w.run(&config("duration_s = 10", PID100));
    assert!(!r.complete);
    assert_eq!(r.stopped_by, StoppedBy::AllTargetsExited);
    assert_eq!(r.incomplete.len(), 1);
    assert!(
        r.incomplete[0].starts_with("process 100 (pid=100) exited 2.0 s into the run"),
        "{}",
        r.incomplete[0]
    );
    let t = &r.targets[0];
    assert_eq!(t.exited_at_ms, Some(2000));
    assert_eq!(collapses(t), [(0, "collapsed".to_string(), 1000)]);
    assert_eq!(t.summary.collapsed, 1);
    assert_eq!(t.summary.elapsed_s, 2.0);
    assert_eq!(w.log_lines("event=target pid=100 action=exit").len(), 1);
    assert!(w.damon.closed);
    assert_eq!(r.elapsed_s, 2.0);
}

#[test]
fn a_pid_target_does_not_follow_a_process_that_reuses_its_pid() {
    let mut w = World::new();
    let p = w.procs.add(100, "victim");
    p.borrow_mut().exit_at_scan = Some(3);
    // Resolve calls: the start 2, then 2 per pass; the PID is back at pass 3.
    p.borrow_mut().pid_reused_at_resolve = Some(6);
    w.procs.add(200, "other");
    let targets = "[[target]]\npid = 100\n[[target]]\nname = \"other\"\n";
    let r = w.run(&config("duration_s = 5", targets));
    assert_eq!(w.procs.opened, [100, 200]);
    assert_eq!(r.targets.len(), 2);
    assert_eq!(r.targets[0].exited_at_ms, Some(2000));
    assert_eq!(r.stopped_by, StoppedBy::Duration);
    assert!(!r.complete);
    // DAMON went on with the other process only.
    assert_eq!(w.damon.sets, [vec![100, 200], vec![200]]);
}

#[test]
fn sigterm_stops_the_run_cleanly() {
    let mut w = World::new();
    w.procs.add(100, "victim");
    w.damon.regions.insert(100, vec![chunk(0, 18)]);
    w.sigterm_after_reads = Some(2);
    // No duration: only the signal ends the run.
    let r = w.run(&config("", PID100));
    assert_eq!(r.stopped_by, StoppedBy::Signal);
    assert_eq!(r.signal.as_deref(), Some("SIGTERM"));
    assert!(r.complete);
    assert_eq!(r.passes, 2);
    assert!(w.damon.closed);
    assert_eq!(
        w.log_lines("event=stop reason=signal signal=SIGTERM").len(),
        1
    );
    // The final measurement is there.
    assert_eq!(r.targets[0].samples.last().map(|s| s.pmd_mapped), Some(PMD));
}

#[test]
fn start_errors_end_the_command_before_anything_is_done() {
    let err = |w: &mut World, cfg: &Config| match w.start_and_run(cfg) {
        Ok(_) => panic!("started"),
        Err(e) => e,
    };
    let cfg = config("duration_s = 3", PID100);
    // No such process.
    let mut w = World::new();
    let e = err(&mut w, &cfg);
    assert!(matches!(e, AgentError::NoSuchProcess(100)), "{e}");
    assert!(w.damon.sets.is_empty());
    // No PSI.
    let mut w = World::new();
    w.procs.add(100, "victim");
    w.psi.missing = true;
    let e = err(&mut w, &cfg);
    assert!(e.to_string().contains("CONFIG_PSI=y"), "{e}");
    assert!(w.procs.opened.is_empty());
    // Not privileged.
    let mut w = World::new();
    w.procs.add(100, "victim").borrow_mut().refuse = true;
    let e = err(&mut w, &cfg);
    assert!(e.to_string().contains("CAP_SYS_NICE"), "{e}");
    // ... also for a process a name target matches.
    let e = err(
        &mut w,
        &config("duration_s = 3", "[[target]]\nname = \"victim\"\n"),
    );
    assert!(e.to_string().contains("CAP_SYS_NICE"), "{e}");
    // No DAMON vaddr.
    let mut w = World::new();
    let p = w.procs.add(100, "victim");
    w.damon.refuse = true;
    let e = err(&mut w, &cfg);
    assert!(e.to_string().contains("CONFIG_DAMON_VADDR"), "{e}");
    assert!(p.borrow().calls.is_empty());
}

#[test]
fn name_targets_follow_processes_as_they_come() {
    let mut w = World::new();
    w.procs.add(100, "db");
    // Process 200 appears at the second pass (resolve calls: start 1, passes 2, 3...).
    w.procs.add(200, "db").borrow_mut().born_at_resolve = 3;
    // Process 300 cannot be collapsed: refused once, not tried again.
    w.procs.add(300, "db").borrow_mut().zombie = true;
    w.procs.add(400, "other");
    w.damon.regions.insert(200, vec![chunk(3, 10)]);
    let targets = "[[target]]\nname = \"db\"\n";
    let r = w.run(&config("duration_s = 4", targets));
    assert!(r.complete);
    assert_eq!(w.damon.sets, [vec![100], vec![100, 200]]);
    let pids: Vec<i32> = r.targets.iter().map(|t| t.pid).collect();
    assert_eq!(pids, [100, 200]);
    assert_eq!(r.targets[1].first_seen_ms, 2000);
    assert_eq!(r.targets[1].spec, "name=db");
    assert_eq!(
        collapses(&r.targets[1]),
        [(3, "collapsed".to_string(), 2000)]
    );
    assert_eq!(w.procs.opened, [100, 300, 200]);
    let refused = w.log_lines("action=refuse");
    assert_eq!(refused.len(), 1);
    assert!(refused[0].contains("pid=300"), "{}", refused[0]);
}

#[test]
fn a_kdamond_that_stopped_is_started_again() {
    let mut w = World::new();
    w.procs.add(100, "victim");
    w.damon.regions.insert(100, vec![chunk(0, 18)]);
    w.damon.stopped_at = Some(1);
    let r = w.run(&config("duration_s = 3", PID100));
    assert_eq!(w.damon.sets, [vec![100], vec![100]]);
    assert_eq!(w.log_lines("event=damon action=stopped").len(), 1);
    assert_eq!(
        collapses(&r.targets[0]),
        [(0, "collapsed".to_string(), 2000)]
    );
    assert!(r.complete);
}

#[test]
fn a_damon_failure_midway_ends_the_run_with_an_incomplete_report() {
    let mut w = World::new();
    w.procs.add(100, "victim");
    w.damon.regions.insert(100, vec![chunk(0, 18)]);
    w.damon.broken_from = Some(2);
    let r = w.run(&config("duration_s = 10", PID100));
    assert_eq!(r.stopped_by, StoppedBy::Error);
    assert!(!r.complete);
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("tried regions")),
        "{:?}",
        r.error
    );
    assert!(r.incomplete[0].starts_with("the run ended early on an error"));
    assert_eq!(r.passes, 2);
    assert!(w.damon.closed);
}
