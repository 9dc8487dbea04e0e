//! Pacing of the collapse loop: a token bucket for `--budget` and the
//! back-off decisions after a failed range.
//!
//! Time comes from a [`Clock`], so that tests can use a fake one that records
//! the sleeps instead of sleeping.

use std::time::{Duration, Instant};

/// A monotonic clock that can also sleep.
pub trait Clock {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
    /// Sleeps for `d`.
    fn sleep(&mut self, d: Duration);
}

/// The real clock: [`Instant`] and [`std::thread::sleep`].
#[derive(Debug)]
pub struct SystemClock {
    /// Time zero.
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// A token bucket limiting bytes per second.
///
/// The bucket holds at most one second's worth of bytes and starts full. A
/// request larger than what the bucket holds is granted, and the debt is paid
/// back by waiting, so chunks larger than the per-second budget still pass at
/// the budget's average rate.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Bytes added per second.
    rate: f64,
    /// Most bytes held.
    capacity: f64,
    /// Bytes held at `last` (negative: a debt).
    tokens: f64,
    /// When `tokens` was last updated.
    last: Duration,
}

impl TokenBucket {
    /// A bucket refilled at `bytes_per_s` (must be positive and finite), full at `now`.
    pub fn new(bytes_per_s: f64, now: Duration) -> Self {
        debug_assert!(bytes_per_s > 0.0 && bytes_per_s.is_finite());
        Self {
            rate: bytes_per_s,
            capacity: bytes_per_s,
            tokens: bytes_per_s,
            last: now,
        }
    }

    /// The tokens in the bucket at time `now`, refilled since the last take.
    fn tokens_at(&self, now: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        (self.tokens + elapsed * self.rate).min(self.capacity)
    }

    /// The wait that leaves `tokens` (negative: a debt) paid back.
    fn debt_wait(&self, tokens: f64) -> Duration {
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }

    /// Takes `bytes` from the bucket at time `now` and returns how long the
    /// caller must wait before using them (zero if they were available).
    pub fn take(&mut self, bytes: u64, now: Duration) -> Duration {
        self.tokens = self.tokens_at(now) - bytes as f64;
        self.last = self.last.max(now);
        self.debt_wait(self.tokens)
    }

    /// How long [`TokenBucket::take`] of `bytes` at `now` would make the
    /// caller wait, without taking anything.
    pub fn peek(&self, bytes: u64, now: Duration) -> Duration {
        self.debt_wait(self.tokens_at(now) - bytes as f64)
    }
}

/// `base` doubled `n` times (`n` is capped at 16), saturating.
fn doubled(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1 << n.min(16))
}

/// Exponential back-off windows, for the `run` daemon: after the `n`-th
/// failure in a row, nothing is tried for `base * 2^(n-1)`, at most `max`; a
/// success ends the streak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooldown {
    /// The first window.
    base: Duration,
    /// The longest window.
    max: Duration,
    /// Failures in a row.
    failures: u32,
    /// End of the current window.
    until: Duration,
}

impl Cooldown {
    /// No failure yet.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
            until: Duration::ZERO,
        }
    }

    /// Records a failure at `now`; returns the end of the window it opens.
    pub fn fail(&mut self, now: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.until = now + doubled(self.base, self.failures - 1).min(self.max);
        self.until
    }

    /// Records a success: the next failure opens the shortest window again.
    pub fn succeed(&mut self) {
        self.failures = 0;
        self.until = Duration::ZERO;
    }

    /// Whether a window is open at `now`: the end of the window, if so.
    pub fn blocks(&self, now: Duration) -> Option<Duration> {
        (now < self.until).then_some(self.until)
    }

    /// The number of failures in a row so far.
    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Limits of the back-off after failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// How many times a range that failed with `EAGAIN` is tried again.
    pub eagain_retries: u32,
    /// Sleep before the first `EAGAIN` retry; it doubles for each further retry.
    pub eagain_delay: Duration,
    /// Sleep after the first `ENOMEM`; it doubles with each consecutive `ENOMEM`.
    pub enomem_delay: Duration,
    /// After this many consecutive `ENOMEM` failures (any ranges, retries
    /// included) the run stops: memory is too short for huge pages.
    pub enomem_max_consecutive: u32,
}

impl Default for BackoffPolicy {
    /// 3 retries after 50, 100 and 200 ms for `EAGAIN`; for `ENOMEM` 1, 2, 4 s
    /// and a stop at the 4th consecutive one.
    fn default() -> Self {
        Self {
            eagain_retries: 3,
            eagain_delay: Duration::from_millis(50),
            enomem_delay: Duration::from_secs(1),
            enomem_max_consecutive: 4,
        }
    }
}

/// What to do after a range failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Sleep this long, then try the same range again.
    Retry(Duration),
    /// Record the failure and go on with the next range.
    GiveUp,
    /// Record the failure and stop the run (too many consecutive `ENOMEM`s).
    Stop,
}

/// Back-off state across the ranges of one run.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The limits.
    policy: BackoffPolicy,
    /// `ENOMEM` failures in a row.
    consecutive_enomem: u32,
}

impl Backoff {
    /// Fresh state.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            consecutive_enomem: 0,
        }
    }

    /// The number of `ENOMEM` failures in a row so far.
    pub fn consecutive_enomem(&self) -> u32 {
        self.consecutive_enomem
    }

    /// A range succeeded or ended without an error: the `ENOMEM` streak ends.
    pub fn on_success(&mut self) {
        self.consecutive_enomem = 0;
    }

    /// Attempt `attempt` (0 for the first) of a range failed with `errno`.
    pub fn on_error(&mut self, errno: i32, attempt: u32) -> Decision {
        if errno != libc::ENOMEM {
            self.consecutive_enomem = 0;
        }
        match errno {
            libc::EAGAIN if attempt < self.policy.eagain_retries => {
                Decision::Retry(doubled(self.policy.eagain_delay, attempt))
            }
            libc::ENOMEM => {
                self.consecutive_enomem += 1;
                if self.consecutive_enomem >= self.policy.enomem_max_consecutive {
                    Decision::Stop
                } else {
                    Decision::Retry(doubled(
                        self.policy.enomem_delay,
                        self.consecutive_enomem - 1,
                    ))
                }
            }
            _ => Decision::GiveUp,
        }
    }
}

/// A clock for tests: time only moves when someone sleeps or advances it.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct FakeClock {
    pub(crate) now: Duration,
    pub(crate) sleeps: Vec<Duration>,
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Duration {
        self.now
    }

    fn sleep(&mut self, d: Duration) {
        self.sleeps.push(d);
        self.now += d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_allows_a_burst_then_paces() {
        // 4 MiB/s, 2 MiB chunks: two chunks at once, then one every 500 ms.
        let mut clock = FakeClock::default();
        let mut b = TokenBucket::new(4.0 * MIB as f64, clock.now());
        let mut waits = Vec::new();
        for _ in 0..5 {
            let w = b.take(2 * MIB, clock.now());
            waits.push(w);
            clock.sleep(w);
        }
        assert_eq!(waits, [ms(0), ms(0), ms(500), ms(500), ms(500)]);
        assert_eq!(clock.now, ms(1500));
    }

    #[test]
    fn bucket_refills_while_idle_but_not_beyond_capacity() {
        let mut b = TokenBucket::new(2.0 * MIB as f64, Duration::ZERO);
        assert_eq!(b.take(2 * MIB, Duration::ZERO), ms(0));
        // 10 s idle refills only one second's worth (2 MiB).
        assert_eq!(b.take(2 * MIB, Duration::from_secs(10)), ms(0));
        assert_eq!(b.take(2 * MIB, Duration::from_secs(10)), ms(1000));
    }

    #[test]
    fn bucket_lets_chunks_larger_than_the_budget_through_at_the_average_rate() {
        // 1 MiB/s with 2 MiB chunks: the first waits 1 s of debt, then 2 s each.
        let mut clock = FakeClock::default();
        let mut b = TokenBucket::new(MIB as f64, clock.now());
        let mut waits = Vec::new();
        for _ in 0..3 {
            let w = b.take(2 * MIB, clock.now());
            waits.push(w);
            clock.sleep(w);
        }
        assert_eq!(waits, [ms(1000), ms(2000), ms(2000)]);
    }

    #[test]
    fn peek_tells_the_wait_without_taking() {
        let mut b = TokenBucket::new(2.0 * MIB as f64, Duration::ZERO);
        assert_eq!(b.peek(2 * MIB, Duration::ZERO), ms(0));
        assert_eq!(b.peek(3 * MIB, Duration::ZERO), ms(500));
        // Peeking took nothing.
        assert_eq!(b.take(2 * MIB, Duration::ZERO), ms(0));
        assert_eq!(b.peek(MIB, Duration::ZERO), ms(500));
        assert_eq!(b.peek(MIB, ms(250)), ms(250));
        assert_eq!(b.peek(MIB, ms(500)), ms(0));
        // Waiting what peek said leaves take nothing to wait.
        assert_eq!(b.take(MIB, ms(500)), ms(0));
    }

    #[test]
    fn cooldown_windows_double_up_to_the_cap_and_reset_on_success() {
        let s = Duration::from_secs;
        let mut c = Cooldown::new(s(1), s(5));
        assert_eq!(c.blocks(s(0)), None);
        assert_eq!(c.fail(s(10)), s(11));
        assert_eq!(c.blocks(s(10)), Some(s(11)));
        assert_eq!(c.blocks(s(11)), None);
        assert_eq!(c.fail(s(11)), s(13));
        assert_eq!(c.fail(s(13)), s(17));
        // 8 s is capped at 5 s.
        assert_eq!(c.fail(s(17)), s(22));
        assert_eq!(c.failures(), 4);
        c.succeed();
        assert_eq!(c.blocks(s(18)), None);
        assert_eq!(c.fail(s(30)), s(31));
    }

    #[test]
    fn eagain_retries_with_growing_sleeps_then_gives_up() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let decisions: Vec<Decision> = (0..4).map(|a| b.on_error(libc::EAGAIN, a)).collect();
        assert_eq!(
            decisions,
            [
                Decision::Retry(ms(50)),
                Decision::Retry(ms(100)),
                Decision::Retry(ms(200)),
                Decision::GiveUp
            ]
        );
    }

    #[test]
    fn enomem_backs_off_longer_and_stops_after_the_limit() {
        let mut b = Backoff::new(BackoffPolicy::default());
        assert_eq!(b.on_error(libc::ENOMEM, 0), Decision::Retry(ms(1000)));
        assert_eq!(b.on_error(libc::ENOMEM, 1), Decision::Retry(ms(2000)));
        assert_eq!(b.on_error(libc::ENOMEM, 0), Decision::Retry(ms(4000)));
        assert_eq!(b.consecutive_enomem(), 3);
        assert_eq!(b.on_error(libc::ENOMEM, 1), Decision::Stop);
    }

    #[test]
    fn enomem_streak_is_broken_by_success_or_other_errors() {
        let mut b = Backoff::new(BackoffPolicy::default());
        b.on_error(libc::ENOMEM, 0);
        b.on_error(libc::ENOMEM, 1);
        b.on_success();
        assert_eq!(b.consecutive_enomem(), 0);
        assert_eq!(b.on_error(libc::ENOMEM, 0), Decision::Retry(ms(1000)));
        assert_eq!(b.on_error(libc::EINVAL, 0), Decision::GiveUp);
        assert_eq!(b.consecutive_enomem(), 0);
    }

    #[test]
    fn other_errors_give_up_at_once() {
        let mut b = Backoff::new(BackoffPolicy::default());
        for e in [libc::EINVAL, libc::EBUSY, libc::EFAULT] {
            assert_eq!(b.on_error(e, 0), Decision::GiveUp);
        }
    }
}
