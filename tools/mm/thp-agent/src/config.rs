//! The configuration file of the (future) `thp-agent run --config FILE`
//! daemon, in TOML:
//!
//! ```toml
//! budget_mib_per_s = 64        # collapse at most this much per second
//! scan_interval_s = 30         # seconds between two passes
//! min_hotness = 5              # DAMON nr_accesses a 2 MiB range needs
//! max_psi_some_avg10 = 10.0    # pause while memory "some avg10" exceeds this percent
//!
//! [flags]                      # process_madvise collapse flags
//! light = true
//!
//! [[target]]
//! pid = 1234
//! [[target]]
//! cgroup = "/sys/fs/cgroup/system.slice/db.service"
//! [[target]]
//! name = "redis-server"
//! ```

use crate::flags::{CollapseFlags, FlagsError};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Longest process name the kernel keeps (`TASK_COMM_LEN` - 1, `include/linux/sched.h`).
pub const COMM_MAX: usize = 15;

/// Which processes to work on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// One process.
    Pid(i32),
    /// Every process in a cgroup (v2) directory.
    Cgroup(PathBuf),
    /// Every process whose `/proc/PID/comm` is this name.
    Name(String),
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The targets, in file order.
    pub targets: Vec<TargetSpec>,
    /// Collapse budget in MiB per second; `None` means no limit.
    pub budget_mib_per_s: Option<f64>,
    /// Pause while memory pressure "some avg10" is above this percent.
    pub max_psi_some_avg10: Option<f64>,
    /// DAMON hotness (`nr_accesses`) a range needs to be collapsed.
    pub min_hotness: u32,
    /// Time between two passes.
    pub scan_interval: Duration,
    /// Collapse flags.
    pub flags: CollapseFlags,
}

/// Defaults of the optional settings.
pub const DEFAULT_MIN_HOTNESS: u32 = 1;
/// Default time between two passes, in seconds.
pub const DEFAULT_SCAN_INTERVAL_S: f64 = 60.0;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    pid: Option<i64>,
    cgroup: Option<PathBuf>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, rename = "target")]
    targets: Vec<RawTarget>,
    budget_mib_per_s: Option<f64>,
    max_psi_some_avg10: Option<f64>,
    min_hotness: Option<u32>,
    scan_interval_s: Option<f64>,
    #[serde(default)]
    flags: CollapseFlags,
}

/// What is wrong with a configuration.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML, or wrong keys or types.
    #[error("{0}")]
    Syntax(String),
    /// No `[[target]]`.
    #[error("the configuration has no [[target]]; add at least one with pid, cgroup or name")]
    NoTargets,
    /// A target with zero or several of pid/cgroup/name.
    #[error("target #{index} must have exactly one of pid, cgroup and name (it has {count})")]
    TargetKinds {
        /// 1-based position in the file.
        index: usize,
        /// How many it has.
        count: usize,
    },
    /// A PID that cannot exist.
    #[error("target #{index}: pid must be a positive process ID, got {pid}")]
    BadPid {
        /// 1-based position.
        index: usize,
        /// The value.
        pid: i64,
    },
    /// A relative cgroup path.
    #[error(
        "target #{index}: cgroup must be an absolute path such as /sys/fs/cgroup/app.slice, got {path:?}"
    )]
    RelativeCgroup {
        /// 1-based position.
        index: usize,
        /// The value.
        path: PathBuf,
    },
    /// A process name that no process can have.
    #[error(
        "target #{index}: name must be 1 to {COMM_MAX} bytes without '/' (it is matched against /proc/PID/comm), got {name:?}"
    )]
    BadName {
        /// 1-based position.
        index: usize,
        /// The value.
        name: String,
    },
    /// The same target twice.
    #[error("target #{index} repeats target #{first}")]
    Duplicate {
        /// 1-based position of the repeat.
        index: usize,
        /// 1-based position of the first one.
        first: usize,
    },
    /// A non-positive or non-finite budget.
    #[error("budget_mib_per_s must be a positive number of MiB per second, got {0}")]
    Budget(f64),
    /// A PSI threshold outside (0, 100].
    #[error(
        "max_psi_some_avg10 is a percentage of time and must be above 0 and at most 100, got {0}"
    )]
    Psi(f64),
    /// A scan interval that is too short or too long.
    #[error("scan_interval_s must be between 1 and 86400 seconds, got {0}")]
    ScanInterval(f64),
    /// Bad collapse flags.
    #[error("[flags]: {0}")]
    Flags(#[from] FlagsError),
}

impl Config {
    /// Parses and validates the text of a configuration file.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        if raw.targets.is_empty() {
            return Err(ConfigError::NoTargets);
        }
        let mut targets = Vec::with_capacity(raw.targets.len());
        for (i, t) in raw.targets.into_iter().enumerate() {
            let index = i + 1;
            let count = usize::from(t.pid.is_some())
                + usize::from(t.cgroup.is_some())
                + usize::from(t.name.is_some());
            if count != 1 {
                return Err(ConfigError::TargetKinds { index, count });
            }
            let spec = match (t.pid, t.cgroup, t.name) {
                (Some(pid), _, _) => TargetSpec::Pid(
                    i32::try_from(pid)
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or(ConfigError::BadPid { index, pid })?,
                ),
                (_, Some(path), _) if path.is_absolute() => TargetSpec::Cgroup(path),
                (_, Some(path), _) => return Err(ConfigError::RelativeCgroup { index, path }),
                (_, _, Some(name)) => {
                    if name.is_empty() || name.len() > COMM_MAX || name.contains('/') {
                        return Err(ConfigError::BadName { index, name });
                    }
                    TargetSpec::Name(name)
                }
                (None, None, None) => return Err(ConfigError::TargetKinds { index, count: 0 }),
            };
            if let Some(first) = targets.iter().position(|t| *t == spec) {
                return Err(ConfigError::Duplicate {
                    index,
                    first: first + 1,
                });
            }
            targets.push(spec);
        }
        if let Some(b) = raw.budget_mib_per_s
            && !(b.is_finite() && b > 0.0)
        {
            return Err(ConfigError::Budget(b));
        }
        if let Some(p) = raw.max_psi_some_avg10
            && !(p > 0.0 && p <= 100.0)
        {
            return Err(ConfigError::Psi(p));
        }
        let interval = raw.scan_interval_s.unwrap_or(DEFAULT_SCAN_INTERVAL_S);
        if !(1.0..=86400.0).contains(&interval) {
            return Err(ConfigError::ScanInterval(interval));
        }
        raw.flags.validate()?;
        Ok(Config {
            targets,
            budget_mib_per_s: raw.budget_mib_per_s,
            max_psi_some_avg10: raw.max_psi_some_avg10,
            min_hotness: raw.min_hotness.unwrap_or(DEFAULT_MIN_HOTNESS),
            scan_interval: Duration::from_secs_f64(interval),
            flags: raw.flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "[[target]]\npid = 1\n";

    fn err(text: &str) -> ConfigError {
        Config::from_toml(text).unwrap_err()
    }

    #[test]
    fn full_config() {
        let c = Config::from_toml(
            r#"
budget_mib_per_s = 64
scan_interval_s = 30
min_hotness = 5
max_psi_some_avg10 = 10.5

[flags]
light = true
order = 4

[[target]]
pid = 1234
[[target]]
cgroup = "/sys/fs/cgroup/system.slice/db.service"
[[target]]
name = "redis-server"
"#,
        )
        .unwrap();
        assert_eq!(
            c.targets,
            [
                TargetSpec::Pid(1234),
                TargetSpec::Cgroup("/sys/fs/cgroup/system.slice/db.service".into()),
                TargetSpec::Name("redis-server".into())
            ]
        );
        assert_eq!(c.budget_mib_per_s, Some(64.0));
        assert_eq!(c.scan_interval, Duration::from_secs(30));
        assert_eq!(c.min_hotness, 5);
        assert_eq!(c.max_psi_some_avg10, Some(10.5));
        assert_eq!(c.flags.encode(), Ok(0x404));
    }

    #[test]
    fn defaults() {
        let c = Config::from_toml(TARGET).unwrap();
        assert_eq!(c.budget_mib_per_s, None);
        assert_eq!(c.max_psi_some_avg10, None);
        assert_eq!(c.min_hotness, DEFAULT_MIN_HOTNESS);
        assert_eq!(c.scan_interval, Duration::from_secs(60));
        assert_eq!(c.flags, CollapseFlags::default());
    }

    #[test]
    fn target_errors() {
        assert_eq!(err(""), ConfigError::NoTargets);
        assert_eq!(
            err("[[target]]\n"),
            ConfigError::TargetKinds { index: 1, count: 0 }
        );
        assert_eq!(
            err("[[target]]\npid = 1\n[[target]]\npid = 2\nname = \"x\"\n"),
            ConfigError::TargetKinds { index: 2, count: 2 }
        );
        assert_eq!(
            err("[[target]]\npid = 0\n"),
            ConfigError::BadPid { index: 1, pid: 0 }
        );
        assert_eq!(
            err("[[target]]\npid = 4294967296\n"),
            ConfigError::BadPid {
                index: 1,
                pid: 4294967296
            }
        );
        assert_eq!(
            err("[[target]]\ncgroup = \"app.slice\"\n"),
            ConfigError::RelativeCgroup {
                index: 1,
                path: "app.slice".into()
            }
        );
        assert_eq!(
            err("[[target]]\nname = \"a-very-long-process-name\"\n"),
            ConfigError::BadName {
                index: 1,
                name: "a-very-long-process-name".into()
            }
        );
        assert!(matches!(
            err("[[target]]\nname = \"\"\n"),
            ConfigError::BadName { .. }
        ));
        assert_eq!(
            err("[[target]]\npid = 5\n[[target]]\npid = 5\n"),
            ConfigError::Duplicate { index: 2, first: 1 }
        );
    }

    #[test]
    fn value_errors() {
        assert_eq!(
            err(&format!("budget_mib_per_s = 0\n{TARGET}")),
            ConfigError::Budget(0.0)
        );
        assert_eq!(
            err(&format!("budget_mib_per_s = -3\n{TARGET}")),
            ConfigError::Budget(-3.0)
        );
        assert!(matches!(
            err(&format!("budget_mib_per_s = nan\n{TARGET}")),
            ConfigError::Budget(_)
        ));
        assert_eq!(
            err(&format!("max_psi_some_avg10 = 0\n{TARGET}")),
            ConfigError::Psi(0.0)
        );
        assert_eq!(
            err(&format!("max_psi_some_avg10 = 150\n{TARGET}")),
            ConfigError::Psi(150.0)
        );
        assert_eq!(
            err(&format!("scan_interval_s = 0.5\n{TARGET}")),
            ConfigError::ScanInterval(0.5)
        );
        assert_eq!(
            err(&format!("[flags]\nlight = true\ndefrag = true\n{TARGET}")),
            ConfigError::Flags(FlagsError::LightAndDefrag)
        );
        assert_eq!(
            err(&format!("[flags]\norder = 1\n{TARGET}")),
            ConfigError::Flags(FlagsError::BadOrder(1))
        );
    }

    #[test]
    fn syntax_errors_name_the_problem() {
        let e = err(&format!("budgt_mib_per_s = 5\n{TARGET}"));
        assert!(
            matches!(&e, ConfigError::Syntax(m) if m.contains("budgt_mib_per_s")),
            "{e}"
        );
        let e = err(&format!("min_hotness = \"hot\"\n{TARGET}"));
        assert!(
            matches!(&e, ConfigError::Syntax(m) if m.contains("min_hotness")),
            "{e}"
        );
        let e = err("[[target]]\npid = 1\nfoo = 2\n");
        assert!(
            matches!(&e, ConfigError::Syntax(m) if m.contains("foo")),
            "{e}"
        );
        let e = err("[[target]\n");
        assert!(
            matches!(&e, ConfigError::Syntax(m) if m.contains("line 1")),
            "{e}"
        );
    }

    #[test]
    fn messages_are_sentences() {
        assert_eq!(
            ConfigError::TargetKinds { index: 2, count: 2 }.to_string(),
            "target #2 must have exactly one of pid, cgroup and name (it has 2)"
        );
        assert_eq!(
            ConfigError::Flags(FlagsError::LightAndDefrag).to_string(),
            format!("[flags]: {}", FlagsError::LightAndDefrag)
        );
    }
}
