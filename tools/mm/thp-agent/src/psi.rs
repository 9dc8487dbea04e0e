//! Parser for `/proc/pressure/memory` (`Documentation/accounting/psi.rst`):
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One line of a pressure file: the share of time (in percent) some or all
/// tasks stalled, averaged over 10, 60 and 300 seconds, and the total stall
/// time in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stall {
    /// Percent over the last 10 s.
    pub avg10: f64,
    /// Percent over the last 60 s.
    pub avg60: f64,
    /// Percent over the last 300 s.
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total_us: u64,
}

/// The contents of `/proc/pressure/memory`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    /// Time in which at least one task stalled on memory.
    pub some: Stall,
    /// Time in which all non-idle tasks stalled on memory (absent from some
    /// files, e.g. system-wide CPU pressure before Linux 5.13).
    pub full: Option<Stall>,
}

/// Errors in a pressure file.
#[derive(Debug, thiserror::Error)]
pub enum PsiError {
    /// The file does not exist: the kernel keeps no pressure information.
    #[error(
        "this kernel has no pressure stall information: {0} does not exist (the kernel needs CONFIG_PSI=y, and psi=1 on its command line if it was built with CONFIG_PSI_DEFAULT_DISABLED=y)"
    )]
    Missing(String),
    /// The file could not be read.
    #[error(
        "cannot read {path}: {source} (PSI needs CONFIG_PSI, and psi=1 on the command line if CONFIG_PSI_DEFAULT_DISABLED)"
    )]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The text is not in the expected format.
    #[error("pressure line {line}: {what}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
}

/// Parses the `key=value` fields of line `line` (1-based).
fn parse_stall(fields: &str, line: usize) -> Result<Stall, PsiError> {
    let err = |what: String| PsiError::Parse { line, what };
    let mut stall = Stall::default();
    let mut seen = [false; 4];
    for field in fields.split_whitespace() {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| err(format!("expected key=value, got {field:?}")))?;
        let bad = || err(format!("bad value for {key}: {value:?}"));
        let percent = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| (0.0..=100.0).contains(v))
                .ok_or_else(bad)
        };
        match key {
            "avg10" => (stall.avg10, seen[0]) = (percent()?, true),
            "avg60" => (stall.avg60, seen[1]) = (percent()?, true),
            "avg300" => (stall.avg300, seen[2]) = (percent()?, true),
            "total" => (stall.total_us, seen[3]) = (value.parse().map_err(|_| bad())?, true),
            _ => {}
        }
    }
    if seen.contains(&false) {
        return Err(err("missing one of avg10, avg60, avg300, total".into()));
    }
    Ok(stall)
}

/// Parses the text of a pressure file.
pub fn parse(text: &str) -> Result<Pressure, PsiError> {
    let mut some = None;
    let mut full = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let Some((kind, rest)) = line.trim().split_once(' ') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(PsiError::Parse {
                line: line_no,
                what: format!("unexpected line {line:?}"),
            });
        };
        match kind {
            "some" => some = Some(parse_stall(rest, line_no)?),
            "full" => full = Some(parse_stall(rest, line_no)?),
            _ => {
                return Err(PsiError::Parse {
                    line: line_no,
                    what: format!("unknown kind {kind:?}, expected some or full"),
                });
            }
        }
    }
    let some = some.ok_or_else(|| PsiError::Parse {
        line: 0,
        what: "no \"some\" line".into(),
    })?;
    Ok(Pressure { some, full })
}

/// Reads and parses a pressure file, e.g. [`crate::uapi::PSI_MEMORY_PATH`].
pub fn read(path: &Path) -> Result<Pressure, PsiError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        let path = path.display().to_string();
        match source.kind() {
            std::io::ErrorKind::NotFound => PsiError::Missing(path),
            _ => PsiError::Io { path, source },
        }
    })?;
    parse(&text)
}

/// A source of memory pressure readings, for the `run` daemon. [`PsiFile`]
/// is the real one; tests use a fake.
pub trait PressureSource {
    /// The current memory pressure.
    fn read(&mut self) -> Result<Pressure, PsiError>;
}

/// A pressure file: `/proc/pressure/memory` on a real system.
#[derive(Clone, Debug)]
pub struct PsiFile(pub PathBuf);

impl PressureSource for PsiFile {
    fn read(&mut self) -> Result<Pressure, PsiError> {
        read(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_lines() {
        let p = parse(
            "some avg10=1.53 avg60=0.87 avg300=0.12 total=123456\n\
             full avg10=0.50 avg60=0.25 avg300=0.05 total=6543\n",
        )
        .unwrap();
        assert_eq!(p.some.avg10, 1.53);
        assert_eq!(p.some.avg60, 0.87);
        assert_eq!(p.some.avg300, 0.12);
        assert_eq!(p.some.total_us, 123_456);
        let full = p.full.unwrap();
        assert_eq!(full.avg10, 0.5);
        assert_eq!(full.total_us, 6543);
    }

    #[test]
    fn full_is_optional() {
        let p = parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        assert_eq!(p.full, None);
        assert_eq!(p.some.total_us, 0);
    }

    #[test]
    fn rejects_malformed() {
        let e = parse("some avg10=x avg60=0.00 avg300=0.00 total=0\n").unwrap_err();
        assert!(e.to_string().contains("avg10"), "{e}");
        let e = parse("some avg10=0.00 avg60=0.00 total=0\n").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = parse("full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap_err();
        assert!(e.to_string().contains("no \"some\""), "{e}");
        let e =
            parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nhalf avg10=1\n").unwrap_err();
        assert!(matches!(e, PsiError::Parse { line: 2, .. }), "{e}");
        let e = parse("some avg10=101.0 avg60=0.00 avg300=0.00 total=0\n").unwrap_err();
        assert!(e.to_string().contains("avg10"), "{e}");
    }

    #[test]
    fn a_missing_file_names_what_the_kernel_lacks() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = PsiFile(tmp.path().join("memory"));
        let e = f.read().unwrap_err();
        assert!(matches!(e, PsiError::Missing(_)), "{e}");
        assert!(e.to_string().contains("CONFIG_PSI=y"), "{e}");
        std::fs::write(&f.0, "some avg10=12.50 avg60=1.00 avg300=0.10 total=99\n").unwrap();
        assert_eq!(f.read().unwrap().some.avg10, 12.5);
    }

    #[test]
    fn reads_the_real_file_if_present() {
        match read(Path::new(crate::uapi::PSI_MEMORY_PATH)) {
            Ok(p) => assert!(p.some.avg10 >= 0.0 && p.full.is_some()),
            Err(PsiError::Io { .. } | PsiError::Missing(_)) => {
                eprintln!("skipped: no /proc/pressure/memory here")
            }
            Err(e) => panic!("{e}"),
        }
    }
}
