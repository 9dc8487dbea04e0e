//! The configuration file of `thp-agent run --config FILE`, in TOML:
//!
//! ```toml
//! budget_mib_per_s = 64        # collapse at most this much per second
//! scan_interval_s = 30         # seconds between two passes
//! min_hotness = 5              # DAMON nr_accesses a 2 MiB range needs
//! max_psi_some_avg10 = 10.0    # pause while memory "some avg10" exceeds this percent
//! include_ineligible = false   # also collapse VMAs smaps marks THPeligible: 0
//! duration_s = 600             # stop after this long (default: run until SIGTERM/SIGINT)
//! report_dir = "/var/lib/thp-agent"   # report.json and report.png go here
//! log_file = "/var/log/thp-agent.log" # decisions go here instead of stderr
//!
//! [flags]                      # process_madvise collapse flags
//! light = true
//!
//! [damon]                      # DAMON monitoring attributes
//! sample_us = 5000
//! aggr_us = 100000
//! update_us = 1000000
//! min_nr_regions = 10
//! max_nr_regions = 1000
//! min_age_ms = 0               # how long a region must have stayed hot
//!
//! [[target]]
//! pid = 1234
//! [[target]]
//! cgroup = "/sys/fs/cgroup/system.slice/db.service"
//! [[target]]
//! name = "redis-server"
//! ```

use crate::flags::{CollapseFlags, FlagsError};
use serde::{Deserialize, Serialize};
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

impl std::fmt::Display for TargetSpec {
    /// As in the configuration file: `pid=1234`, `cgroup=/sys/fs/cgroup/x`, `name=redis`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSpec::Pid(pid) => write!(f, "pid={pid}"),
            TargetSpec::Cgroup(path) => write!(f, "cgroup={}", path.display()),
            TargetSpec::Name(name) => write!(f, "name={name}"),
        }
    }
}

/// DAMON's monitoring attributes (`Documentation/admin-guide/mm/damon/usage.rst`,
/// `monitoring_attrs/`) and the age part of the "hot" access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DamonAttrs {
    /// Sampling interval in microseconds: how often DAMON checks one page of
    /// each region for an access.
    pub sample_us: u64,
    /// Aggregation interval in microseconds: `nr_accesses` counts the samples
    /// of one such interval that saw an access, so it is at most
    /// `aggr_us / sample_us`.
    pub aggr_us: u64,
    /// Interval in microseconds at which DAMON updates the monitored ranges
    /// from the process's mappings.
    pub update_us: u64,
    /// Lower bound of the number of regions DAMON keeps (at least 3).
    pub min_nr_regions: u32,
    /// Upper bound of the number of regions, which bounds DAMON's overhead.
    pub max_nr_regions: u32,
    /// How long, in milliseconds, a region must have kept its access pattern
    /// to be reported (DAMON's `age`, in aggregation intervals).
    pub min_age_ms: u64,
}

impl Default for DamonAttrs {
    /// DAMON's own defaults (5 ms, 100 ms, 1 s, 10 to 1000 regions), no minimum age.
    fn default() -> Self {
        Self {
            sample_us: 5_000,
            aggr_us: 100_000,
            update_us: 1_000_000,
            min_nr_regions: 10,
            max_nr_regions: 1000,
            min_age_ms: 0,
        }
    }
}

impl DamonAttrs {
    /// The largest `nr_accesses` a region can have: the samples per aggregation.
    pub fn max_nr_accesses(&self) -> u64 {
        self.aggr_us / self.sample_us.max(1)
    }

    /// `min_age_ms` in aggregation intervals, rounded up.
    pub fn min_age_aggrs(&self) -> u64 {
        (self.min_age_ms.saturating_mul(1000)).div_ceil(self.aggr_us.max(1))
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The targets, in file order.
    pub targets: Vec<TargetSpec>,
    /// Collapse budget in MiB per second; `None` means no limit.
    pub budget_mib_per_s: Option<f64>,
    /// Pause while memory pressure "some avg10" is above this percent.
    pub max_psi_some_avg10: f64,
    /// DAMON hotness (`nr_accesses`) a range needs to be collapsed.
    pub min_hotness: u32,
    /// Time between two passes.
    pub scan_interval: Duration,
    /// Collapse flags.
    pub flags: CollapseFlags,
    /// Also collapse in VMAs that smaps does not mark THP-eligible.
    pub include_ineligible: bool,
    /// Stop after this long; `None` runs until SIGTERM or SIGINT.
    pub duration: Option<Duration>,
    /// Directory for `report.json` and `report.png`; `None` prints the JSON
    /// report on stdout at the end.
    pub report_dir: Option<PathBuf>,
    /// File the decisions are appended to; `None` logs on stderr.
    pub log_file: Option<PathBuf>,
    /// DAMON's monitoring attributes.
    pub damon: DamonAttrs,
}

/// Defaults of the optional settings.
pub const DEFAULT_MIN_HOTNESS: u32 = 1;
/// Default time between two passes, in seconds.
pub const DEFAULT_SCAN_INTERVAL_S: f64 = 60.0;
/// Default memory pressure ("some avg10", percent) above which nothing is collapsed.
pub const DEFAULT_MAX_PSI_SOME_AVG10: f64 = 10.0;
/// Longest `duration_s`: a year.
const MAX_DURATION_S: f64 = 365.0 * 86400.0;

/// A `[[target]]` as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    /// `pid`.
    pid: Option<i64>,
    /// `cgroup`.
    cgroup: Option<PathBuf>,
    /// `name`.
    name: Option<String>,
}

/// The file as written, before validation; the fields are the keys of
/// [`Config`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// `[[target]]`.
    #[serde(default, rename = "target")]
    targets: Vec<RawTarget>,
    /// `budget_mib_per_s`.
    budget_mib_per_s: Option<f64>,
    /// `max_psi_some_avg10`.
    max_psi_some_avg10: Option<f64>,
    /// `min_hotness`.
    min_hotness: Option<u32>,
    /// `scan_interval_s`.
    scan_interval_s: Option<f64>,
    /// `[flags]`.
    #[serde(default)]
    flags: CollapseFlags,
    /// `include_ineligible`.
    #[serde(default)]
    include_ineligible: bool,
    /// `duration_s`.
    duration_s: Option<f64>,
    /// `report_dir`.
    report_dir: Option<PathBuf>,
    /// `log_file`.
    log_file: Option<PathBuf>,
    /// `[damon]`.
    #[serde(default)]
    damon: DamonAttrs,
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
    /// A duration that is not positive or too long.
    #[error("duration_s must be a positive number of seconds, at most a year, got {0}")]
    Duration(f64),
    /// DAMON attributes the kernel would reject.
    #[error("[damon]: {0}")]
    Damon(String),
    /// A hotness no region can reach.
    #[error(
        "min_hotness {min_hotness} can never be reached: with sample_us {sample_us} and aggr_us {aggr_us}, DAMON samples a region at most {max} times per aggregation (nr_accesses is at most {max})"
    )]
    Hotness {
        /// The value.
        min_hotness: u32,
        /// The sampling interval.
        sample_us: u64,
        /// The aggregation interval.
        aggr_us: u64,
        /// The largest possible `nr_accesses`.
        max: u64,
    },
}

/// Checks DAMON attributes as `damon_set_attrs()` (`mm/damon/core.c`) does,
/// so that mistakes are reported as configuration errors, not as `EINVAL`
/// when DAMON is turned on.
fn validate_damon(d: &DamonAttrs) -> Result<(), ConfigError> {
    let bad = |what: String| Err(ConfigError::Damon(what));
    if d.sample_us == 0 || d.aggr_us == 0 || d.update_us == 0 {
        return bad("sample_us, aggr_us and update_us must be positive".into());
    }
    if d.sample_us > d.aggr_us {
        return bad(format!(
            "sample_us ({}) must not exceed aggr_us ({})",
            d.sample_us, d.aggr_us
        ));
    }
    if d.min_nr_regions < 3 {
        return bad(format!(
            "min_nr_regions must be at least 3, got {}",
            d.min_nr_regions
        ));
    }
    if d.min_nr_regions > d.max_nr_regions {
        return bad(format!(
            "min_nr_regions ({}) must not exceed max_nr_regions ({})",
            d.min_nr_regions, d.max_nr_regions
        ));
    }
    Ok(())
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
        let psi = raw.max_psi_some_avg10.unwrap_or(DEFAULT_MAX_PSI_SOME_AVG10);
        if !(psi > 0.0 && psi <= 100.0) {
            return Err(ConfigError::Psi(psi));
        }
        let interval = raw.scan_interval_s.unwrap_or(DEFAULT_SCAN_INTERVAL_S);
        if !(1.0..=86400.0).contains(&interval) {
            return Err(ConfigError::ScanInterval(interval));
        }
        let duration = raw.duration_s.map(parse_duration).transpose()?;
        raw.flags.validate()?;
        validate_damon(&raw.damon)?;
        let min_hotness = raw.min_hotness.unwrap_or(DEFAULT_MIN_HOTNESS);
        let max = raw.damon.max_nr_accesses();
        if u64::from(min_hotness) > max {
            return Err(ConfigError::Hotness {
                min_hotness,
                sample_us: raw.damon.sample_us,
                aggr_us: raw.damon.aggr_us,
                max,
            });
        }
        Ok(Config {
            targets,
            budget_mib_per_s: raw.budget_mib_per_s,
            max_psi_some_avg10: psi,
            min_hotness,
            scan_interval: Duration::from_secs_f64(interval),
            flags: raw.flags,
            include_ineligible: raw.include_ineligible,
            duration,
            report_dir: raw.report_dir,
            log_file: raw.log_file,
            damon: raw.damon,
        })
    }
}

/// A `duration_s` value (from the file or `--duration`) as a [`Duration`].
pub fn parse_duration(seconds: f64) -> Result<Duration, ConfigError> {
    if seconds > 0.0 && seconds <= MAX_DURATION_S {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(ConfigError::Duration(seconds))
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
        assert_eq!(c.max_psi_some_avg10, 10.5);
        assert_eq!(c.flags.encode(), Ok(0x404));
        assert_eq!(
            c.targets[1].to_string(),
            "cgroup=/sys/fs/cgroup/system.slice/db.service"
        );
        assert_eq!(c.targets[2].to_string(), "name=redis-server");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let c = Config::from_toml(include_str!("../examples/agent.toml")).unwrap();
        assert_eq!(
            c.targets,
            [
                TargetSpec::Name("redis-server".into()),
                TargetSpec::Pid(1234)
            ]
        );
        assert_eq!(c.budget_mib_per_s, Some(64.0));
        assert_eq!(c.scan_interval, Duration::from_secs(10));
        assert_eq!(c.damon, DamonAttrs::default());
        assert_eq!(c.flags.encode(), Ok(0));
    }

    #[test]
    fn daemon_settings() {
        let c = Config::from_toml(
            r#"
duration_s = 20
report_dir = "/tmp/report"
log_file = "agent.log"
include_ineligible = true
min_hotness = 10

[damon]
sample_us = 5000
aggr_us = 100000
update_us = 500000
min_nr_regions = 5
max_nr_regions = 200
min_age_ms = 250

[[target]]
pid = 7
"#,
        )
        .unwrap();
        assert_eq!(c.duration, Some(Duration::from_secs(20)));
        assert_eq!(c.report_dir, Some(PathBuf::from("/tmp/report")));
        assert_eq!(c.log_file, Some(PathBuf::from("agent.log")));
        assert!(c.include_ineligible);
        assert_eq!(
            c.damon,
            DamonAttrs {
                sample_us: 5000,
                aggr_us: 100_000,
                update_us: 500_000,
                min_nr_regions: 5,
                max_nr_regions: 200,
                min_age_ms: 250,
            }
        );
        assert_eq!(c.damon.max_nr_accesses(), 20);
        // 250 ms is 2.5 aggregations: at least 3.
        assert_eq!(c.damon.min_age_aggrs(), 3);
        assert_eq!(c.targets[0].to_string(), "pid=7");
    }

    #[test]
    fn daemon_setting_errors() {
        assert_eq!(
            err(&format!("duration_s = 0\n{TARGET}")),
            ConfigError::Duration(0.0)
        );
        assert_eq!(
            err(&format!("duration_s = 1e12\n{TARGET}")),
            ConfigError::Duration(1e12)
        );
        assert!(matches!(
            err(&format!("duration_s = nan\n{TARGET}")),
            ConfigError::Duration(_)
        ));
        assert_eq!(parse_duration(1.5), Ok(Duration::from_millis(1500)));
        assert!(parse_duration(-1.0).is_err());
        let e = err(&format!("[damon]\nsample_us = 200000\n{TARGET}"));
        assert!(e.to_string().contains("must not exceed aggr_us"), "{e}");
        let e = err(&format!("[damon]\nmin_nr_regions = 2\n{TARGET}"));
        assert!(e.to_string().contains("at least 3"), "{e}");
        let e = err(&format!(
            "[damon]\nmin_nr_regions = 50\nmax_nr_regions = 40\n{TARGET}"
        ));
        assert!(
            e.to_string().contains("must not exceed max_nr_regions"),
            "{e}"
        );
        let e = err(&format!("[damon]\naggr_us = 0\n{TARGET}"));
        assert!(e.to_string().starts_with("[damon]: "), "{e}");
        // 100 ms / 5 ms: nr_accesses is at most 20.
        assert_eq!(
            err(&format!("min_hotness = 21\n{TARGET}")),
            ConfigError::Hotness {
                min_hotness: 21,
                sample_us: 5000,
                aggr_us: 100_000,
                max: 20
            }
        );
        let e = err(&format!("[damon]\nsample_ms = 5\n{TARGET}"));
        assert!(
            matches!(&e, ConfigError::Syntax(m) if m.contains("sample_ms")),
            "{e}"
        );
    }

    #[test]
    fn defaults() {
        let c = Config::from_toml(TARGET).unwrap();
        assert_eq!(c.budget_mib_per_s, None);
        assert_eq!(c.max_psi_some_avg10, DEFAULT_MAX_PSI_SOME_AVG10);
        assert_eq!(c.duration, None);
        assert_eq!(c.report_dir, None);
        assert_eq!(c.log_file, None);
        assert!(!c.include_ineligible);
        assert_eq!(c.damon, DamonAttrs::default());
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
