//! The collapse loop: one `process_madvise(MADV_COLLAPSE)` call per planned
//! range, with a `PAGEMAP_SCAN` check before (skip ranges already huge) and
//! after (confirm the range is PMD-mapped), pacing and back-off.

use crate::error::{collapse_failure_reason, errno_name};
use crate::pagemap::{HugeMap, HugeScan, Pagemap, ScanError};
use crate::plan::{Initial, PlannedRange};
use crate::policy::{Backoff, BackoffPolicy, Clock, Decision, TokenBucket};
use crate::report::{Outcome, RangeResult};
use crate::smaps;
use crate::sys::Pidfd;
use std::fmt;
use std::time::Duration;

/// The target process, as the loop sees it. [`ProcessTarget`] is the real
/// one; tests use a fake.
pub trait Target {
    /// `process_madvise(MADV_COLLAPSE)` on `[start, start + len)`.
    /// `Err` holds the errno.
    fn collapse(&mut self, start: u64, len: u64, flags: u32) -> Result<(), i32>;
    /// The PMD-mapped parts of `[start, end)`.
    fn scan_huge(&mut self, start: u64, end: u64) -> Result<HugeMap, ScanError>;
    /// Whether the process has exited.
    fn has_exited(&mut self) -> bool;
    /// Whether `[start, end)` is still entirely mapped.
    fn is_mapped(&mut self, start: u64, end: u64) -> bool;
}

/// A live process, through its pidfd and `/proc/PID/pagemap`.
#[derive(Debug)]
pub struct ProcessTarget {
    /// The process.
    pidfd: Pidfd,
    /// Its pagemap, `None` if the kernel has no `PAGEMAP_SCAN`.
    pagemap: Option<Pagemap>,
}

impl ProcessTarget {
    /// Wraps a pidfd and, if the kernel has `PAGEMAP_SCAN`, the process's pagemap.
    pub fn new(pidfd: Pidfd, pagemap: Option<Pagemap>) -> Self {
        Self { pidfd, pagemap }
    }
}

impl Target for ProcessTarget {
    fn collapse(&mut self, start: u64, len: u64, flags: u32) -> Result<(), i32> {
        match self.pidfd.madvise_collapse(&[(start, len)], flags) {
            Ok(n) if n == len => Ok(()),
            // One iovec is either advised whole or not at all; anything else
            // would be a kernel bug, reported as such rather than as success.
            Ok(_) => Err(libc::EIO),
            Err(e) => Err(e),
        }
    }

    fn scan_huge(&mut self, start: u64, end: u64) -> Result<HugeMap, ScanError> {
        match &mut self.pagemap {
            Some(p) => p.scan_huge(start, end),
            None => Err(ScanError::Unsupported),
        }
    }

    fn has_exited(&mut self) -> bool {
        self.pidfd.has_exited()
    }

    fn is_mapped(&mut self, start: u64, end: u64) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/maps", self.pidfd.pid())) else {
            return false;
        };
        let Ok(vmas) = smaps::parse(&text) else {
            // Cannot tell: assume mapped, so the error is reported as it came.
            return true;
        };
        let mut pos = start;
        for v in vmas.iter().filter(|v| v.end > start && v.start < end) {
            if v.start > pos {
                return false;
            }
            pos = pos.max(v.end);
        }
        pos >= end
    }
}

/// Why a run stopped before the end of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The process exited.
    ProcessExited,
    /// Too many `ENOMEM` failures in a row.
    Enomem {
        /// How many.
        consecutive: u32,
    },
    /// An error that no further range can avoid (`EPERM`, `EACCES`, ...).
    Fatal {
        /// The errno.
        errno: i32,
    },
}

impl Stop {
    /// The reason given to the ranges that were not tried.
    pub fn not_attempted_reason(&self) -> String {
        match self {
            Stop::ProcessExited => "process exited".into(),
            Stop::Enomem { .. } => "stopped after repeated ENOMEM".into(),
            Stop::Fatal { errno } => format!("stopped after {}", errno_name(*errno)),
        }
    }

    /// Whether the environment, not the memory, stopped the run (exit code 2).
    pub fn is_environment_error(&self) -> bool {
        matches!(self, Stop::Fatal { .. })
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::ProcessExited => write!(f, "the process exited during the run"),
            Stop::Enomem { consecutive } => write!(
                f,
                "stopped after {consecutive} consecutive ENOMEM failures: memory is too short or too fragmented for huge pages; try again later"
            ),
            Stop::Fatal { errno } => write!(
                f,
                "stopped at {}: {}",
                errno_name(*errno),
                collapse_failure_reason(*errno, 0)
            ),
        }
    }
}

/// How outcomes were judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// `PAGEMAP_SCAN` before and after each range.
    PagemapScan,
    /// The return value only: `PAGE_IS_HUGE` reports PMD mappings, not the
    /// mTHP folios of smaller orders.
    ReturnValueMthp,
    /// The return value only: the kernel has no `PAGEMAP_SCAN`.
    ReturnValueNoPagemap,
}

/// Options of a run.
#[derive(Clone, Debug)]
pub struct LoopOptions {
    /// `flags` for `process_madvise`.
    pub flags: u32,
    /// Whether the ranges are PMD-sized (results can be checked with `PAGE_IS_HUGE`).
    pub pmd_order: bool,
    /// `--budget` in bytes per second.
    pub budget_bytes_per_s: Option<f64>,
    /// Back-off limits.
    pub backoff: BackoffPolicy,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct LoopResult {
    /// One result per planned range, in plan order.
    pub ranges: Vec<RangeResult>,
    /// Why the run stopped early, if it did.
    pub stop: Option<Stop>,
    /// How outcomes were judged.
    pub verification: Verification,
    /// Wall time of the run in seconds.
    pub elapsed_s: f64,
}

/// Runs the plan. `progress` is called after each range.
pub fn run(
    target: &mut dyn Target,
    plan: &[PlannedRange],
    opts: &LoopOptions,
    clock: &mut dyn Clock,
    progress: &mut dyn FnMut(&RangeResult),
) -> LoopResult {
    let started = clock.now();
    let mut collapser = Collapser::new(opts.clone(), clock.now());
    let mut results = Vec::with_capacity(plan.len());
    for r in plan {
        let result = RangeResult {
            start: r.start,
            end: r.end,
            vma: r.vma.clone(),
            outcome: collapser.range(target, clock, r),
        };
        progress(&result);
        results.push(result);
    }
    LoopResult {
        ranges: results,
        stop: collapser.stop,
        verification: collapser.verification,
        elapsed_s: clock.now().saturating_sub(started).as_secs_f64(),
    }
}

/// The collapse of ranges one at a time, with the state that carries from
/// one range to the next: the budget, the back-off, whether `PAGEMAP_SCAN`
/// works, and whether (and why) the work has stopped. [`run`] drives it over
/// a plan; the `run` daemon drives it range by range across processes.
#[derive(Debug)]
pub struct Collapser {
    /// Flags, order, budget and back-off limits.
    opts: LoopOptions,
    /// The budget, if there is one.
    bucket: Option<TokenBucket>,
    /// The back-off after failures.
    backoff: Backoff,
    /// False once `PAGEMAP_SCAN` turned out to be missing.
    use_pagemap: bool,
    /// How outcomes are judged.
    verification: Verification,
    /// Set when the work stops; further ranges are not attempted.
    stop: Option<Stop>,
}

impl Collapser {
    /// A collapser whose budget bucket is full at `now`.
    pub fn new(opts: LoopOptions, now: Duration) -> Self {
        Self {
            bucket: opts
                .budget_bytes_per_s
                .map(|rate| TokenBucket::new(rate, now)),
            backoff: Backoff::new(opts.backoff),
            use_pagemap: true,
            verification: if opts.pmd_order {
                Verification::PagemapScan
            } else {
                Verification::ReturnValueMthp
            },
            stop: None,
            opts,
        }
    }

    /// Why the work stopped, if it did.
    pub fn stop(&self) -> Option<Stop> {
        self.stop
    }

    /// Resumes after a stop (the daemon goes on with other processes, or
    /// after its own back-off).
    pub fn resume(&mut self) {
        self.stop = None;
    }

    /// How outcomes are judged so far.
    pub fn verification(&self) -> Verification {
        self.verification
    }

    /// How long the budget makes a range of `len` bytes wait at `now`.
    pub fn pacing_delay(&self, len: u64, now: Duration) -> Duration {
        self.bucket
            .as_ref()
            .map_or(Duration::ZERO, |b| b.peek(len, now))
    }

    /// Handles one range of `target`.
    pub fn range(
        &mut self,
        target: &mut dyn Target,
        clock: &mut dyn Clock,
        r: &PlannedRange,
    ) -> Outcome {
        if let Some(stop) = self.stop {
            return Outcome::NotAttempted {
                reason: stop.not_attempted_reason(),
            };
        }
        match self.is_huge(target, r) {
            Some(true) => {
                self.backoff.on_success();
                return Outcome::AlreadyHuge;
            }
            Some(false) => {}
            // The process is gone.
            None => {
                return Outcome::NotAttempted {
                    reason: Stop::ProcessExited.not_attempted_reason(),
                };
            }
        }
        let len = r.end - r.start;
        let mut attempt = 0;
        loop {
            if let Some(bucket) = self.bucket.as_mut() {
                let wait = bucket.take(len, clock.now());
                if !wait.is_zero() {
                    clock.sleep(wait);
                }
            }
            match target.collapse(r.start, len, self.opts.flags) {
                Ok(()) => {
                    self.backoff.on_success();
                    return self.verify_after(target, r, attempt + 1);
                }
                Err(errno) => match self.after_error(target, clock, r, errno, attempt) {
                    Some(outcome) => return outcome,
                    None => attempt += 1,
                },
            }
        }
    }

    /// Whether the range is PMD-mapped already, by `PAGEMAP_SCAN` or, without
    /// it, by the plan. `None` if the process has exited (the work stops).
    fn is_huge(&mut self, target: &mut dyn Target, r: &PlannedRange) -> Option<bool> {
        let planned = r.initial == Initial::AlreadyHuge;
        if !self.use_pagemap {
            return Some(planned);
        }
        match target.scan_huge(r.start, r.end) {
            Ok(m) => Some(m.covers(r.start, r.end)),
            Err(ScanError::Unsupported) => {
                self.use_pagemap = false;
                if self.opts.pmd_order {
                    self.verification = Verification::ReturnValueNoPagemap;
                }
                Some(planned)
            }
            Err(ScanError::ProcessExited) => {
                self.stop = Some(Stop::ProcessExited);
                None
            }
            // A transient failure: go by the plan for this range.
            Err(ScanError::Os(_)) => Some(planned),
        }
    }

    /// Decides what follows attempt `attempt` (0 for the first) of range `r`
    /// failing with `errno`: `None` to try again (after the back-off sleep),
    /// or the range's outcome.
    fn after_error(
        &mut self,
        target: &mut dyn Target,
        clock: &mut dyn Clock,
        r: &PlannedRange,
        errno: i32,
        attempt: u32,
    ) -> Option<Outcome> {
        let failed = |reason: String| Outcome::Failed {
            errno: Some(errno_name(errno)),
            reason,
            attempts: attempt + 1,
        };
        let reason = collapse_failure_reason(errno, self.opts.flags);
        if errno == libc::ESRCH {
            self.stop = Some(Stop::ProcessExited);
            return Some(Outcome::NotAttempted {
                reason: Stop::ProcessExited.not_attempted_reason(),
            });
        }
        if target.has_exited() {
            self.stop = Some(Stop::ProcessExited);
            return Some(failed(reason));
        }
        if matches!(errno, libc::EPERM | libc::EACCES | libc::ENOSYS) {
            self.stop = Some(Stop::Fatal { errno });
            return Some(failed(reason));
        }
        // madvise also says ENOMEM for a range that is not mapped.
        if errno == libc::ENOMEM && !target.is_mapped(r.start, r.end) {
            return Some(failed(
                "the range is no longer mapped (the process unmapped it meanwhile)".into(),
            ));
        }
        match self.backoff.on_error(errno, attempt) {
            Decision::Retry(wait) => {
                clock.sleep(wait);
                None
            }
            Decision::GiveUp => Some(failed(reason)),
            Decision::Stop => {
                self.stop = Some(Stop::Enomem {
                    consecutive: self.backoff.consecutive_enomem(),
                });
                Some(failed(reason))
            }
        }
    }

    /// Judges a range whose `process_madvise` call succeeded at attempt `attempts`.
    fn verify_after(
        &mut self,
        target: &mut dyn Target,
        r: &PlannedRange,
        attempts: u32,
    ) -> Outcome {
        if !(self.opts.pmd_order && self.use_pagemap) {
            return Outcome::Collapsed { verified: false };
        }
        match target.scan_huge(r.start, r.end) {
            Ok(m) if m.covers(r.start, r.end) => Outcome::Collapsed { verified: true },
            Ok(_) => Outcome::Failed {
                errno: None,
                reason: "process_madvise succeeded but the range is not PMD-mapped afterwards (the process may have unmapped or split it meanwhile)".into(),
                attempts,
            },
            Err(ScanError::ProcessExited) => {
                self.stop = Some(Stop::ProcessExited);
                Outcome::Collapsed { verified: false }
            }
            Err(_) => Outcome::Collapsed { verified: false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anon_memory::AnonMemory;
    use crate::policy::FakeClock;
    use std::collections::VecDeque;
    use std::time::Duration;

    const PMD: u64 = 2 << 20;
    const BASE: u64 = 0x40000000;

    /// A fake process: PMD-mapped ranges, scripted errors per range start,
    /// and an exit after a given number of collapse calls.
    #[derive(Default)]
    struct Fake {
        huge: Vec<(u64, u64)>,
        errors: Vec<(u64, VecDeque<i32>)>,
        calls: Vec<(u64, u64, u32)>,
        exit_after_calls: Option<usize>,
        no_pagemap: bool,
        unmapped: Vec<u64>,
        /// Succeed without making the range huge.
        lie: bool,
    }

    impl Fake {
        fn exited(&self) -> bool {
            self.exit_after_calls.is_some_and(|n| self.calls.len() >= n)
        }
    }

    impl Target for Fake {
        fn collapse(&mut self, start: u64, len: u64, flags: u32) -> Result<(), i32> {
            if self.exited() {
                return Err(libc::ESRCH);
            }
            self.calls.push((start, len, flags));
            if let Some((_, q)) = self.errors.iter_mut().find(|(s, _)| *s == start)
                && let Some(e) = q.pop_front()
            {
                return Err(e);
            }
            if !self.lie {
                self.huge.push((start, start + len));
            }
            Ok(())
        }

        fn scan_huge(&mut self, start: u64, end: u64) -> Result<HugeMap, ScanError> {
            if self.no_pagemap {
                return Err(ScanError::Unsupported);
            }
            if self.exited() {
                return Err(ScanError::ProcessExited);
            }
            let m = HugeMap::from_ranges(self.huge.iter().copied());
            Ok(HugeMap::from_ranges(
                m.ranges().iter().map(|&(s, e)| (s.max(start), e.min(end))),
            ))
        }

        fn has_exited(&mut self) -> bool {
            self.exited()
        }

        fn is_mapped(&mut self, start: u64, _end: u64) -> bool {
            !self.unmapped.contains(&start)
        }
    }

    fn plan(n: u64) -> Vec<PlannedRange> {
        (0..n)
            .map(|i| PlannedRange {
                start: BASE + i * PMD,
                end: BASE + (i + 1) * PMD,
                vma: "[heap]".into(),
                initial: Initial::Collapse,
            })
            .collect()
    }

    fn opts() -> LoopOptions {
        LoopOptions {
            flags: 0,
            pmd_order: true,
            budget_bytes_per_s: None,
            backoff: BackoffPolicy::default(),
        }
    }

    fn go(fake: &mut Fake, plan: &[PlannedRange], o: &LoopOptions) -> (LoopResult, FakeClock) {
        let mut clock = FakeClock::default();
        let mut seen = 0;
        let r = run(fake, plan, o, &mut clock, &mut |_| seen += 1);
        assert_eq!(seen, plan.len());
        (r, clock)
    }

    fn kinds(r: &LoopResult) -> Vec<String> {
        r.ranges
            .iter()
            .map(|x| crate::report::tests::outcome_kind(&x.outcome))
            .collect()
    }

    #[test]
    fn collapses_and_skips_huge_ranges() {
        let mut fake = Fake {
            huge: vec![(BASE + PMD, BASE + 2 * PMD)],
            ..Fake::default()
        };
        let (r, clock) = go(&mut fake, &plan(3), &opts());
        assert_eq!(kinds(&r), ["collapsed", "huge", "collapsed"]);
        assert_eq!(r.stop, None);
        assert_eq!(r.verification, Verification::PagemapScan);
        // The huge range was not collapsed again; one call per range.
        assert_eq!(fake.calls, [(BASE, PMD, 0), (BASE + 2 * PMD, PMD, 0)]);
        assert!(clock.sleeps.is_empty());
    }

    #[test]
    fn eagain_is_retried_with_growing_sleeps() {
        let mut fake = Fake {
            errors: vec![
                (BASE, VecDeque::from([libc::EAGAIN, libc::EAGAIN])),
                (BASE + PMD, VecDeque::from([libc::EAGAIN; 4])),
            ],
            ..Fake::default()
        };
        let (r, clock) = go(&mut fake, &plan(2), &opts());
        assert_eq!(kinds(&r), ["collapsed", "failed EAGAIN x4"]);
        let ms = Duration::from_millis;
        assert_eq!(clock.sleeps, [ms(50), ms(100), ms(50), ms(100), ms(200)]);
        assert_eq!(fake.calls.len(), 3 + 4);
    }

    #[test]
    fn consecutive_enomem_stops_the_run() {
        let mut fake = Fake {
            errors: (0..4)
                .map(|i| (BASE + i * PMD, VecDeque::from([libc::ENOMEM; 9])))
                .collect(),
            ..Fake::default()
        };
        let (r, clock) = go(&mut fake, &plan(4), &opts());
        assert_eq!(
            kinds(&r),
            [
                "failed ENOMEM x4",
                "not attempted: stopped after repeated ENOMEM",
                "not attempted: stopped after repeated ENOMEM",
                "not attempted: stopped after repeated ENOMEM"
            ]
        );
        assert_eq!(r.stop, Some(Stop::Enomem { consecutive: 4 }));
        assert_eq!(
            clock.sleeps,
            [
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4)
            ]
        );
        assert!(r.stop.unwrap().to_string().contains("4 consecutive ENOMEM"));
    }

    #[test]
    fn enomem_on_an_unmapped_range_is_not_memory_pressure() {
        let mut fake = Fake {
            errors: vec![(BASE, VecDeque::from([libc::ENOMEM]))],
            unmapped: vec![BASE],
            ..Fake::default()
        };
        let (r, clock) = go(&mut fake, &plan(2), &opts());
        assert_eq!(kinds(&r), ["failed ENOMEM x1", "collapsed"]);
        match &r.ranges[0].outcome {
            Outcome::Failed { reason, .. } => assert!(reason.contains("no longer mapped")),
            o => panic!("{o:?}"),
        }
        assert!(clock.sleeps.is_empty());
    }

    #[test]
    fn process_exit_midway_marks_the_rest() {
        let mut fake = Fake {
            exit_after_calls: Some(2),
            ..Fake::default()
        };
        let (r, _) = go(&mut fake, &plan(4), &opts());
        assert_eq!(
            kinds(&r),
            [
                "collapsed",
                "collapsed?",
                "not attempted: process exited",
                "not attempted: process exited"
            ]
        );
        assert_eq!(r.stop, Some(Stop::ProcessExited));
    }

    #[test]
    fn process_exit_seen_by_the_call() {
        let mut fake = Fake {
            exit_after_calls: Some(1),
            no_pagemap: true,
            ..Fake::default()
        };
        let (r, _) = go(&mut fake, &plan(3), &opts());
        assert_eq!(
            kinds(&r),
            [
                "collapsed?",
                "not attempted: process exited",
                "not attempted: process exited"
            ]
        );
        assert_eq!(r.verification, Verification::ReturnValueNoPagemap);
    }

    #[test]
    fn eperm_is_fatal() {
        let mut fake = Fake {
            errors: vec![(BASE, VecDeque::from([libc::EPERM]))],
            ..Fake::default()
        };
        let (r, _) = go(&mut fake, &plan(2), &opts());
        assert_eq!(
            kinds(&r),
            ["failed EPERM x1", "not attempted: stopped after EPERM"]
        );
        assert!(r.stop.unwrap().is_environment_error());
    }

    #[test]
    fn einval_fails_one_range_only() {
        let mut fake = Fake {
            errors: vec![(BASE, VecDeque::from([libc::EINVAL]))],
            ..Fake::default()
        };
        let (r, _) = go(&mut fake, &plan(2), &opts());
        assert_eq!(kinds(&r), ["failed EINVAL x1", "collapsed"]);
        assert_eq!(r.stop, None);
    }

    #[test]
    fn success_without_a_pmd_mapping_is_reported() {
        let mut fake = Fake {
            lie: true,
            ..Fake::default()
        };
        let (r, _) = go(&mut fake, &plan(1), &opts());
        assert_eq!(kinds(&r), ["failed - x1"]);
    }

    #[test]
    fn mthp_orders_are_judged_by_the_return_value() {
        let mut fake = Fake {
            lie: true,
            ..Fake::default()
        };
        let mut o = opts();
        o.pmd_order = false;
        o.flags = 0x400;
        let plan: Vec<PlannedRange> = (0..3)
            .map(|i| PlannedRange {
                start: BASE + i * 0x10000,
                end: BASE + (i + 1) * 0x10000,
                vma: "[anon]".into(),
                initial: Initial::Collapse,
            })
            .collect();
        let (r, _) = go(&mut fake, &plan, &o);
        assert_eq!(kinds(&r), ["collapsed?", "collapsed?", "collapsed?"]);
        assert_eq!(r.verification, Verification::ReturnValueMthp);
        assert!(fake.calls.iter().all(|c| c.1 == 0x10000 && c.2 == 0x400));
    }

    /// The real thing on this test process's own memory (no privileges are
    /// needed for one's own memory): two 2 MiB ranges of small pages are
    /// collapsed and confirmed by `PAGEMAP_SCAN` (khugepaged may have been
    /// quicker: then they are already huge), a second run finds them already
    /// huge, and `status` agrees with smaps. Skipped, with the reason, where
    /// the kernel cannot do it.
    #[test]
    fn real_collapse_of_own_memory() {
        use crate::policy::SystemClock;
        // Small pages, so that there is something to collapse.
        let mem = AnonMemory::small_pages(2, true);
        let start = mem.start;
        let pid = std::process::id() as i32;
        let plan: Vec<PlannedRange> = (0..2)
            .map(|i| PlannedRange {
                start: start + i * PMD,
                end: start + (i + 1) * PMD,
                vma: "[anon]".into(),
                initial: Initial::Collapse,
            })
            .collect();
        let mut target =
            ProcessTarget::new(Pidfd::open(pid).unwrap(), Some(Pagemap::open(pid).unwrap()));
        let first = run(
            &mut target,
            &plan,
            &opts(),
            &mut SystemClock::new(),
            &mut |_| {},
        );
        // Only a kernel that cannot do it may excuse a failure: one without PAGEMAP_SCAN
        // (before 6.7), or with THP off. Anything else is a failure of the test.
        let thp_off = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map_or(true, |t| t.contains("[never]"));
        let skip = if first.verification == Verification::ReturnValueNoPagemap {
            Some("no PAGEMAP_SCAN")
        } else if thp_off {
            Some("THP is off")
        } else {
            None
        };
        if let Some(why) = skip {
            eprintln!("skipped: MADV_COLLAPSE of own memory cannot work here: {why}");
        } else {
            assert!(
                kinds(&first)
                    .iter()
                    .all(|k| k == "collapsed" || k == "huge"),
                "{:?}",
                kinds(&first)
            );
            let again = run(
                &mut target,
                &plan,
                &opts(),
                &mut SystemClock::new(),
                &mut |_| {},
            );
            assert_eq!(kinds(&again), ["huge", "huge"]);
            assert!(mem.bytes().iter().all(|&b| b == 0x5a));
            let r = crate::status::collect(pid).unwrap();
            let vma = r
                .vmas
                .iter()
                .find(|v| v.start <= start && start < v.end)
                .unwrap();
            assert!(vma.pmd_mapped >= 2 * PMD, "{vma:?}");
            assert!(vma.smaps_pmd_mapped >= 2 * PMD, "{vma:?}");
        }
    }

    #[test]
    fn budget_paces_the_calls() {
        let mut fake = Fake::default();
        let mut o = opts();
        // 2 MiB/s: the first range uses the initial second's worth, then one
        // range per second.
        o.budget_bytes_per_s = Some(PMD as f64);
        let (r, clock) = go(&mut fake, &plan(4), &o);
        assert_eq!(kinds(&r), ["collapsed"; 4]);
        assert_eq!(clock.sleeps, [Duration::from_secs(1); 3]);
        assert_eq!(r.elapsed_s, 3.0);
    }
}
