//! The `run` daemon's log: one line per decision or event, made of
//! `key=value` fields separated by spaces, first `t=SECONDS` (since the start
//! of the run) and `event=NAME`:
//!
//! ```text
//! t=3.021 event=collapse pid=1234 range=7f5207600000-7f5207800000 hotness=18 age=5 result=collapsed verified=true
//! t=3.200 event=skip pid=1234 range=7f5207800000-7f5207a00000 reason=cold hotness=2 min_hotness=5
//! ```
//!
//! A value with a space, a quote or nothing in it is written as a quoted
//! string with `\` escapes, e.g. `reason="a page was busy"`.

use std::fmt::{Display, Write as _};
use std::io::Write;
use std::time::Duration;

/// One line being built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line(String);

impl Line {
    /// A line for `event` at `t` since the start of the run.
    pub fn new(t: Duration, event: &str) -> Self {
        Line(format!("t={:.3} event={event}", t.as_secs_f64()))
    }

    /// Adds `key=value`, quoting the value if needed.
    pub fn kv(mut self, key: &str, value: impl Display) -> Self {
        let value = value.to_string();
        let plain = !value.is_empty()
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c.is_control());
        if plain {
            let _ = write!(self.0, " {key}={value}");
        } else {
            let _ = write!(self.0, " {key}={value:?}");
        }
        self
    }

    /// Adds `range=START-END` in hexadecimal, as in `/proc/PID/maps`.
    pub fn range(self, start: u64, end: u64) -> Self {
        self.kv("range", format_args!("{start:x}-{end:x}"))
    }

    /// The text of the line, without the newline.
    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.0
    }
}

/// Where the lines go: stderr or a log file.
pub struct DecisionLog<'a> {
    /// Where the lines go.
    out: &'a mut dyn Write,
    /// The first write error, after which nothing more is written.
    error: Option<String>,
}

impl<'a> DecisionLog<'a> {
    /// A log writing to `out`.
    pub fn new(out: &'a mut dyn Write) -> Self {
        Self { out, error: None }
    }

    /// Writes `line` and flushes it, so that a reader sees it at once.
    pub fn emit(&mut self, line: Line) {
        if self.error.is_some() {
            return;
        }
        let mut text = line.0;
        text.push('\n');
        let r = self
            .out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush());
        if let Err(e) = r {
            self.error = Some(e.to_string());
        }
    }

    /// The error that stopped the log, if one did.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_key_value_pairs_with_quoting() {
        let l = Line::new(Duration::from_millis(3021), "collapse")
            .kv("pid", 1234)
            .range(0x7f5207600000, 0x7f5207800000)
            .kv("result", "collapsed")
            .kv("reason", "a page was \"busy\"")
            .kv("comm", "");
        assert_eq!(
            l.text(),
            r#"t=3.021 event=collapse pid=1234 range=7f5207600000-7f5207800000 result=collapsed reason="a page was \"busy\"" comm="""#
        );
    }

    /// A writer that fails after `ok` writes.
    struct Failing {
        ok: usize,
        lines: Vec<u8>,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.ok == 0 {
                return Err(std::io::Error::other("disk full"));
            }
            self.ok -= 1;
            self.lines.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_log_stops_and_keeps_the_error() {
        let mut out = Failing {
            ok: 1,
            lines: Vec::new(),
        };
        let mut log = DecisionLog::new(&mut out);
        log.emit(Line::new(Duration::ZERO, "start"));
        assert_eq!(log.error(), None);
        log.emit(Line::new(Duration::ZERO, "a"));
        log.emit(Line::new(Duration::ZERO, "b"));
        assert_eq!(log.error(), Some("disk full"));
        assert_eq!(String::from_utf8_lossy(&out.lines), "t=0.000 event=start\n");
    }
}
