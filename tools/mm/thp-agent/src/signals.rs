//! SIGTERM and SIGINT for the `run` daemon, with `signal-hook`: the first
//! one asks the daemon to stop (it finishes the range at hand, turns DAMON
//! off and writes its report); a second one ends the process at once.

use crate::policy::{Clock, SystemClock};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Exit status after a second SIGTERM or SIGINT (as the shell reports a
/// process killed by SIGTERM).
const FORCED_EXIT: i32 = 128 + SIGTERM;

/// Longest sleep between two looks at the stop request.
const SLICE: Duration = Duration::from_millis(50);

/// The stop request: the number of the signal that asked for it, or 0.
#[derive(Clone, Debug, Default)]
pub struct StopRequest {
    /// Set by the signal handler.
    signal: Arc<AtomicUsize>,
}

impl StopRequest {
    /// Installs the handlers of SIGTERM and SIGINT.
    pub fn install() -> std::io::Result<Self> {
        let stop = Self::default();
        let armed = Arc::new(AtomicBool::new(false));
        for sig in [SIGTERM, SIGINT] {
            // The order matters: the exit is armed by the first signal and
            // fires on the second.
            signal_hook::flag::register_conditional_shutdown(sig, FORCED_EXIT, armed.clone())?;
            signal_hook::flag::register(sig, armed.clone())?;
            signal_hook::flag::register_usize(sig, stop.signal.clone(), sig as usize)?;
        }
        Ok(stop)
    }

    /// The signal that asked to stop, if one did.
    pub fn requested(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            sig => i32::try_from(sig).ok(),
        }
    }
}

/// The name of a stop signal.
pub fn signal_name(sig: i32) -> String {
    match sig {
        SIGTERM => "SIGTERM".into(),
        SIGINT => "SIGINT".into(),
        _ => format!("signal {sig}"),
    }
}

/// The real clock, whose sleeps end early when a stop is requested.
#[derive(Debug)]
pub struct InterruptibleClock {
    /// The time.
    clock: SystemClock,
    /// What ends sleeps early.
    stop: StopRequest,
}

impl InterruptibleClock {
    /// A clock whose origin is now.
    pub fn new(stop: StopRequest) -> Self {
        Self {
            clock: SystemClock::new(),
            stop,
        }
    }
}

impl Clock for InterruptibleClock {
    fn now(&self) -> Duration {
        self.clock.now()
    }

    fn sleep(&mut self, d: Duration) {
        let end = self.now() + d;
        while self.stop.requested().is_none() {
            let left = end.saturating_sub(self.now());
            if left.is_zero() {
                break;
            }
            self.clock.sleep(left.min(SLICE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_request_cuts_sleeps_short() {
        let stop = StopRequest::default();
        let mut clock = InterruptibleClock::new(stop.clone());
        let t0 = clock.now();
        clock.sleep(Duration::from_millis(20));
        assert!(clock.now() - t0 >= Duration::from_millis(20));
        assert_eq!(stop.requested(), None);
        stop.signal.store(SIGTERM as usize, Ordering::SeqCst);
        let t1 = clock.now();
        clock.sleep(Duration::from_secs(60));
        assert!(clock.now() - t1 < Duration::from_secs(1));
        assert_eq!(stop.requested(), Some(SIGTERM));
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
        assert_eq!(signal_name(SIGINT), "SIGINT");
    }
}
