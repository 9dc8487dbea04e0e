//! The DAMON sysfs interface (`Documentation/admin-guide/mm/damon/usage.rst`):
//! the reader of scheme "tried regions", and [`DamonSysfs`], which sets up a
//! kdamond the way DAMON's `damo` tool does and turns it off and removes it
//! at the end.
//!
//! ```text
//! <admin>/kdamonds/nr_kdamonds
//! <admin>/kdamonds/<K>/state
//! <admin>/kdamonds/<K>/contexts/<C>/{avail_operations,operations}
//! <admin>/kdamonds/<K>/contexts/<C>/monitoring_attrs/intervals/{sample_us,aggr_us,update_us}
//! <admin>/kdamonds/<K>/contexts/<C>/monitoring_attrs/nr_regions/{min,max}
//! <admin>/kdamonds/<K>/contexts/<C>/targets/<T>/pid_target
//! <admin>/kdamonds/<K>/contexts/<C>/schemes/<S>/action
//! <admin>/kdamonds/<K>/contexts/<C>/schemes/<S>/access_pattern/{sz,nr_accesses,age}/{min,max}
//! <admin>/kdamonds/<K>/contexts/<C>/schemes/<S>/{core_,}filters/<F>/{type,damon_target_idx,matching}
//! <admin>/kdamonds/<K>/contexts/<C>/schemes/<S>/tried_regions/<R>/{start,end,nr_accesses,age}
//! ```
//!
//! The regions appear after `update_schemes_tried_regions` is written to
//! `kdamonds/<K>/state`. The root (`/sys/kernel/mm/damon/admin` on a real
//! system) is a parameter so that tests can build a fake tree.

use crate::config::DamonAttrs;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// One memory region DAMON reports for a scheme.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// How many of the last aggregation interval's samples saw an access.
    pub nr_accesses: u32,
    /// For how many aggregation intervals the access pattern has held.
    pub age: u32,
}

/// The tried regions of one scheme, with where they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemeRegions {
    /// Index of the kdamond directory.
    pub kdamond: u32,
    /// Index of the context directory.
    pub context: u32,
    /// Index of the scheme directory.
    pub scheme: u32,
    /// The `pid_target` of each of the context's targets.
    pub target_pids: Vec<i32>,
    /// The regions, in directory order.
    pub regions: Vec<Region>,
}

/// Errors of the DAMON sysfs interface.
#[derive(Debug, thiserror::Error)]
pub enum DamonError {
    /// The root has no `kdamonds` directory.
    #[error(
        "this kernel has no DAMON sysfs interface: {0} does not exist (the kernel needs CONFIG_DAMON and CONFIG_DAMON_SYSFS, and sysfs must be mounted)"
    )]
    NotFound(PathBuf),
    /// The kernel's DAMON cannot monitor virtual address spaces.
    #[error(
        "this kernel's DAMON cannot monitor processes' virtual address spaces: {path} lists {avail:?}, not vaddr (the kernel needs CONFIG_DAMON_VADDR)"
    )]
    NoVaddr {
        /// The `avail_operations` file.
        path: PathBuf,
        /// What it lists.
        avail: String,
    },
    /// The kernel's DAMON has no target filters, needed for several targets.
    #[error(
        "this kernel's DAMON has no monitoring target filters (Linux 6.6 or later; {path} is missing or refuses \"target\"), which following several processes at once needs: configure one process"
    )]
    NoTargetFilter {
        /// The file that is missing or refused the value.
        path: PathBuf,
    },
    /// The kernel's DAMON cannot report the regions a scheme was applied to.
    #[error(
        "this kernel's DAMON cannot report scheme tried regions (update_schemes_tried_regions needs Linux 6.2 or later)"
    )]
    NoTriedRegions,
    /// Another user's kdamond is running: the kdamond directories cannot be
    /// changed while one runs.
    #[error(
        "DAMON is in use: kdamond {kdamond} is running ({state} reads \"on\"); stop its user (damo, another thp-agent), or, if a killed thp-agent left it on, write off to that file"
    )]
    Busy {
        /// Its index.
        kdamond: u32,
        /// Its `state` file.
        state: PathBuf,
    },
    /// DAMON refused to start because a module uses it exclusively.
    #[error(
        "DAMON refused to start ({path}: EBUSY): a DAMON kernel module such as DAMON_RECLAIM or DAMON_LRU_SORT is running and uses DAMON exclusively; disable it"
    )]
    Exclusive {
        /// The `state` file.
        path: PathBuf,
    },
    /// Reading or writing a file needs privileges this process lacks.
    #[error(
        "permission denied on {path} ({errno}): the DAMON sysfs interface is for root; run thp-agent as root"
    )]
    NotPrivileged {
        /// The file.
        path: PathBuf,
        /// The errno name.
        errno: String,
    },
    /// The kdamond stopped by itself: every process it monitored has exited.
    #[error("the kdamond stopped by itself ({0} reads \"off\"): its target processes have exited")]
    Stopped(PathBuf),
    /// A file could not be written.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The error.
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file does not hold a number.
    #[error("{path}: expected a number, found {text:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Its contents.
        text: String,
    },
}

/// Turns a read error of `path` into a [`DamonError`].
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DamonError + '_ {
    move |source| {
        permission_error(path, &source).unwrap_or_else(|| DamonError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// [`DamonError::NotPrivileged`] if `e` is a permission error.
fn permission_error(path: &Path, e: &io::Error) -> Option<DamonError> {
    match e.raw_os_error() {
        Some(errno @ (libc::EACCES | libc::EPERM)) => Some(DamonError::NotPrivileged {
            path: path.to_path_buf(),
            errno: crate::error::errno_name(errno),
        }),
        _ => None,
    }
}

/// The numbered subdirectories of `dir` (`0`, `1`, ...), sorted by number.
/// Other entries (`nr_kdamonds`, `total_bytes`, ...) are ignored.
fn numbered_dirs(dir: &Path) -> Result<Vec<(u32, PathBuf)>, DamonError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if entry.path().is_dir() {
            out.push((n, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// Like [`numbered_dirs`] of `dir`, but a missing `dir` has none.
fn numbered_dirs_if_any(dir: &Path) -> Result<Vec<(u32, PathBuf)>, DamonError> {
    if dir.is_dir() {
        numbered_dirs(dir)
    } else {
        Ok(Vec::new())
    }
}

/// Reads a file.
fn read_text(path: &Path) -> Result<String, DamonError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Reads a file that holds one number.
fn read_number<T: std::str::FromStr>(path: &Path) -> Result<T, DamonError> {
    let text = read_text(path)?;
    text.trim().parse().map_err(|_| DamonError::Parse {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

/// Reads a `tried_regions/<R>` directory.
fn read_region(dir: &Path) -> Result<Region, DamonError> {
    Ok(Region {
        start: read_number(&dir.join("start"))?,
        end: read_number(&dir.join("end"))?,
        nr_accesses: read_number(&dir.join("nr_accesses"))?,
        age: read_number(&dir.join("age"))?,
    })
}

/// The `kdamonds` directory under `admin_root`, if the interface is there.
fn kdamonds_dir(admin_root: &Path) -> Result<PathBuf, DamonError> {
    let kdamonds = admin_root.join("kdamonds");
    if kdamonds.is_dir() {
        Ok(kdamonds)
    } else {
        Err(DamonError::NotFound(admin_root.to_path_buf()))
    }
}

/// Reads every scheme's tried regions under `admin_root` (the directory that
/// holds `kdamonds/`).
pub fn read_tried_regions(admin_root: &Path) -> Result<Vec<SchemeRegions>, DamonError> {
    let kdamonds = kdamonds_dir(admin_root)?;
    let mut out = Vec::new();
    for (k, kdir) in numbered_dirs(&kdamonds)? {
        for (c, cdir) in numbered_dirs_if_any(&kdir.join("contexts"))? {
            let mut target_pids = Vec::new();
            for (_, tdir) in numbered_dirs_if_any(&cdir.join("targets"))? {
                let pid_file = tdir.join("pid_target");
                if pid_file.exists() {
                    target_pids.push(read_number(&pid_file)?);
                }
            }
            for (s, sdir) in numbered_dirs_if_any(&cdir.join("schemes"))? {
                let regions = numbered_dirs_if_any(&sdir.join("tried_regions"))?
                    .iter()
                    .map(|(_, rdir)| read_region(rdir))
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(SchemeRegions {
                    kdamond: k,
                    context: c,
                    scheme: s,
                    target_pids: target_pids.clone(),
                    regions,
                });
            }
        }
    }
    Ok(out)
}

/// Where DAMON's regions of one target process come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRegions {
    /// The process.
    pub pid: i32,
    /// The regions of its "hot" scheme.
    pub regions: Vec<Region>,
}

/// A source of hot regions of processes, the `run` daemon's view of DAMON.
/// [`DamonSysfs`] is the real one; tests use a fake.
pub trait HotSource {
    /// Monitors exactly `pids` from now on (none: monitoring stops).
    fn set_targets(&mut self, pids: &[i32]) -> Result<(), DamonError>;
    /// The regions DAMON found hot since the last call, by process.
    fn hot_regions(&mut self) -> Result<Vec<TargetRegions>, DamonError>;
    /// Stops monitoring and removes what was set up.
    fn close(&mut self) -> Result<(), DamonError>;
}

/// What a [`DamonSysfs`] monitors for: the monitoring attributes and the
/// "hot" access pattern of its schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DamonSetup {
    /// Monitoring attributes.
    pub attrs: DamonAttrs,
    /// Smallest `nr_accesses` of a hot region.
    pub min_nr_accesses: u32,
}

/// Largest value of an `unsigned long` sysfs file on a 64-bit kernel.
const ULONG_MAX: &str = "18446744073709551615";
/// Largest value of an `unsigned int` sysfs file.
const UINT_MAX: &str = "4294967295";
/// The kdamond this tool uses: it owns the kdamond directories while it runs.
const KDAMOND: u32 = 0;

/// A kdamond set up through the DAMON sysfs interface: one context with the
/// `vaddr` operations, one target per process, and one scheme per target
/// with the `stat` action (it does nothing but count) and the "hot" access
/// pattern, whose tried regions are therefore the target's hot regions. With
/// several targets each scheme has a monitoring target filter, so that its
/// tried regions are those of its own target only.
///
/// DAMON recreates every kdamond directory when `nr_kdamonds` is written,
/// which it refuses while any kdamond runs; so this refuses to start while
/// another kdamond runs, and takes the directories over.
#[derive(Debug)]
pub struct DamonSysfs {
    /// The `admin` directory.
    root: PathBuf,
    /// What to monitor for.
    setup: DamonSetup,
    /// The PIDs of the targets, in target (and scheme) order.
    pids: Vec<i32>,
    /// Whether the kdamond directory was created by this value.
    created: bool,
    /// Whether the kdamond was turned on by this value and not off since.
    running: bool,
}

/// Turns a failed write into the error that says what to do.
fn write_error(path: &Path, value: &str, source: io::Error) -> DamonError {
    permission_error(path, &source).unwrap_or_else(|| DamonError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Whether a write failed with `errno`.
fn failed_with(e: &DamonError, errno: i32) -> bool {
    matches!(e, DamonError::Write { source, .. } if source.raw_os_error() == Some(errno))
}

impl DamonSysfs {
    /// Checks that the interface is at `root` (`/sys/kernel/mm/damon/admin`
    /// on a real system) and that no kdamond runs. Nothing is written yet.
    pub fn open(root: &Path, setup: DamonSetup) -> Result<Self, DamonError> {
        let kdamonds = kdamonds_dir(root)?;
        for (k, dir) in numbered_dirs(&kdamonds)? {
            let state = dir.join("state");
            if read_text(&state)?.trim() == "on" {
                return Err(DamonError::Busy { kdamond: k, state });
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            setup,
            pids: Vec::new(),
            created: false,
            running: false,
        })
    }

    /// The path of `rel` in the kdamond's directory.
    fn kdamond_path(&self, rel: &str) -> PathBuf {
        self.root.join(format!("kdamonds/{KDAMOND}/{rel}"))
    }

    /// The path of `rel` in the context's directory.
    fn ctx_path(&self, rel: &str) -> PathBuf {
        self.kdamond_path(&format!("contexts/0/{rel}"))
    }

    /// Writes `value` to an existing file (sysfs files cannot be created).
    fn write(&self, path: &Path, value: &str) -> Result<(), DamonError> {
        use std::io::Write as _;
        // O_TRUNC changes nothing on sysfs, but keeps a fake tree's files
        // holding the last value only.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| write_error(path, value, e))
    }

    /// Writes the kdamond's `state` file.
    fn write_state(&self, command: &str) -> Result<(), DamonError> {
        self.write(&self.kdamond_path("state"), command)
    }

    /// Whether the kdamond reads as running.
    fn is_on(&self) -> Result<bool, DamonError> {
        Ok(read_text(&self.kdamond_path("state"))?.trim() == "on")
    }

    /// Creates the kdamond and its context, and checks for `vaddr`.
    fn create(&mut self) -> Result<(), DamonError> {
        let nr = self.root.join("kdamonds/nr_kdamonds");
        self.write(&nr, "1")?;
        self.created = true;
        self.write(&self.kdamond_path("contexts/nr_contexts"), "1")?;
        let avail_path = self.ctx_path("avail_operations");
        // avail_operations appeared in Linux 5.19; without it, writing the
        // operations says whether vaddr is there.
        if avail_path.exists() {
            let avail = read_text(&avail_path)?;
            if !avail.split_whitespace().any(|op| op == "vaddr") {
                return Err(DamonError::NoVaddr {
                    path: avail_path,
                    avail: avail.split_whitespace().collect::<Vec<_>>().join(" "),
                });
            }
        }
        self.write(&self.ctx_path("operations"), "vaddr")
            .map_err(|e| {
                if failed_with(&e, libc::EINVAL) {
                    DamonError::NoVaddr {
                        path: avail_path.clone(),
                        avail: "(no vaddr)".into(),
                    }
                } else {
                    e
                }
            })?;
        let a = &self.setup.attrs;
        for (rel, value) in [
            (
                "monitoring_attrs/intervals/sample_us",
                a.sample_us.to_string(),
            ),
            ("monitoring_attrs/intervals/aggr_us", a.aggr_us.to_string()),
            (
                "monitoring_attrs/intervals/update_us",
                a.update_us.to_string(),
            ),
            (
                "monitoring_attrs/nr_regions/min",
                a.min_nr_regions.to_string(),
            ),
            (
                "monitoring_attrs/nr_regions/max",
                a.max_nr_regions.to_string(),
            ),
        ] {
            self.write(&self.ctx_path(rel), &value)?;
        }
        Ok(())
    }

    /// Writes scheme `index`: `stat`, the hot access pattern, and with
    /// `filter` a target filter that keeps the regions of target `index` only.
    fn write_scheme(&self, index: usize, filter: bool) -> Result<(), DamonError> {
        let dir = format!("schemes/{index}");
        let min_age = self.setup.attrs.min_age_aggrs().to_string();
        let min_nr = self.setup.min_nr_accesses.to_string();
        for (rel, value) in [
            ("action", "stat"),
            ("access_pattern/sz/min", "0"),
            ("access_pattern/sz/max", ULONG_MAX),
            ("access_pattern/nr_accesses/min", min_nr.as_str()),
            ("access_pattern/nr_accesses/max", UINT_MAX),
            ("access_pattern/age/min", min_age.as_str()),
            ("access_pattern/age/max", UINT_MAX),
        ] {
            self.write(&self.ctx_path(&format!("{dir}/{rel}")), value)?;
        }
        if !filter {
            return Ok(());
        }
        // Linux 6.15 split filters/ into core_filters/ and ops_filters/;
        // the target filter is a core one.
        let filters = ["core_filters", "filters"]
            .iter()
            .map(|f| self.ctx_path(&format!("{dir}/{f}")))
            .find(|p| p.is_dir())
            .ok_or_else(|| DamonError::NoTargetFilter {
                path: self.ctx_path(&format!("{dir}/filters")),
            })?;
        let no_filter = |e: DamonError| match e {
            DamonError::Write { path, .. } => DamonError::NoTargetFilter { path },
            other => other,
        };
        self.write(&filters.join("nr_filters"), "1")?;
        let f = filters.join("0");
        self.write(&f.join("type"), "target").map_err(no_filter)?;
        let idx = f.join("damon_target_idx");
        if !idx.exists() {
            return Err(DamonError::NoTargetFilter { path: idx });
        }
        self.write(&idx, &index.to_string())?;
        // Filter out the regions that do not belong to the target.
        self.write(&f.join("matching"), "N")
    }

    /// Turns the kdamond off if this value turned it on.
    fn turn_off(&mut self) -> Result<(), DamonError> {
        if self.running {
            self.running = false;
            // It may have stopped by itself (its targets exited): then
            // writing "off" fails, and it is off all the same.
            if let Err(e) = self.write_state("off")
                && self.is_on()?
            {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl HotSource for DamonSysfs {
    fn set_targets(&mut self, pids: &[i32]) -> Result<(), DamonError> {
        self.turn_off()?;
        self.pids.clear();
        if pids.is_empty() {
            return Ok(());
        }
        if !self.created {
            self.create()?;
        }
        self.write(
            &self.ctx_path("targets/nr_targets"),
            &pids.len().to_string(),
        )?;
        for (i, pid) in pids.iter().enumerate() {
            self.write(
                &self.ctx_path(&format!("targets/{i}/pid_target")),
                &pid.to_string(),
            )?;
        }
        self.write(
            &self.ctx_path("schemes/nr_schemes"),
            &pids.len().to_string(),
        )?;
        for i in 0..pids.len() {
            self.write_scheme(i, pids.len() > 1)?;
        }
        self.write_state("on").map_err(|e| {
            if failed_with(&e, libc::EBUSY) {
                DamonError::Exclusive {
                    path: self.kdamond_path("state"),
                }
            } else {
                e
            }
        })?;
        self.running = true;
        self.pids = pids.to_vec();
        Ok(())
    }

    fn hot_regions(&mut self) -> Result<Vec<TargetRegions>, DamonError> {
        if !self.running {
            return Ok(Vec::new());
        }
        if let Err(e) = self.write_state("update_schemes_tried_regions") {
            if !self.is_on()? {
                self.running = false;
                return Err(DamonError::Stopped(self.kdamond_path("state")));
            }
            if failed_with(&e, libc::EINVAL) {
                return Err(DamonError::NoTriedRegions);
            }
            return Err(e);
        }
        let mut out: Vec<TargetRegions> = self
            .pids
            .iter()
            .map(|&pid| TargetRegions {
                pid,
                regions: Vec::new(),
            })
            .collect();
        for s in read_tried_regions(&self.root)? {
            if s.kdamond != KDAMOND || s.context != 0 {
                continue;
            }
            // Scheme i filters for target i; a single scheme has no filter.
            if let Some(t) = out.get_mut(s.scheme as usize) {
                t.regions = s.regions;
            }
        }
        Ok(out)
    }

    fn close(&mut self) -> Result<(), DamonError> {
        let off = self.turn_off();
        let removed = if self.created {
            self.created = false;
            self.write(&self.root.join("kdamonds/nr_kdamonds"), "0")
        } else {
            Ok(())
        };
        self.pids.clear();
        off.and(removed)
    }
}

impl Drop for DamonSysfs {
    /// Turns the kdamond off and removes it if [`HotSource::close`] was not
    /// called (an early return on an error).
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The fake DAMON sysfs tree of the tests, shared with `tests/cli.rs`.
#[cfg(test)]
#[path = "../tests/support/damon_tree.rs"]
mod damon_tree;

#[cfg(test)]
mod tests {
    use super::damon_tree::{fake_kernel_tree, read, region, write};
    use super::*;
    use std::fs;

    #[test]
    fn reads_a_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "kdamonds/nr_kdamonds", "2\n");
        write(root, "kdamonds/0/state", "on\n");
        write(root, "kdamonds/0/contexts/nr_contexts", "1\n");
        write(root, "kdamonds/0/contexts/0/targets/nr_targets", "1\n");
        write(root, "kdamonds/0/contexts/0/targets/0/pid_target", "4242\n");
        let s0 = "kdamonds/0/contexts/0/schemes/0";
        write(root, &format!("{s0}/action"), "stat\n");
        write(root, &format!("{s0}/tried_regions/total_bytes"), "12288\n");
        // Directory 10 sorts after 2 numerically, not as text.
        region(root, s0, 10, (0x7f0000600000, 0x7f0000800000, 1, 2));
        region(root, s0, 0, (0x7f0000000000, 0x7f0000200000, 20, 5));
        region(root, s0, 2, (0x7f0000400000, 0x7f0000600000, 0, 9));
        let s1 = "kdamonds/0/contexts/0/schemes/1";
        write(root, &format!("{s1}/tried_regions/total_bytes"), "0\n");
        write(root, "kdamonds/1/contexts/nr_contexts", "0\n");

        let got = read_tried_regions(root).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].kdamond, got[0].context, got[0].scheme), (0, 0, 0));
        assert_eq!(got[0].target_pids, [4242]);
        let starts: Vec<u64> = got[0].regions.iter().map(|r| r.start).collect();
        assert_eq!(starts, [0x7f0000000000, 0x7f0000400000, 0x7f0000600000]);
        assert_eq!(
            got[0].regions[0],
            Region {
                start: 0x7f0000000000,
                end: 0x7f0000200000,
                nr_accesses: 20,
                age: 5
            }
        );
        assert_eq!(got[1].scheme, 1);
        assert!(got[1].regions.is_empty());
    }

    #[test]
    fn missing_root_and_bad_numbers() {
        let tmp = tempfile::tempdir().unwrap();
        let err = read_tried_regions(tmp.path()).unwrap_err();
        assert!(matches!(err, DamonError::NotFound(_)));
        assert!(err.to_string().contains("CONFIG_DAMON_SYSFS"), "{err}");

        let root = tmp.path();
        let s = "kdamonds/0/contexts/0/schemes/0";
        region(root, s, 0, (1, 2, 3, 4));
        write(root, &format!("{s}/tried_regions/0/age"), "old\n");
        let err = read_tried_regions(root).unwrap_err();
        match &err {
            DamonError::Parse { path, text } => {
                assert!(path.ends_with("tried_regions/0/age"));
                assert_eq!(text, "old");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn region_missing_a_file_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let s = "kdamonds/0/contexts/0/schemes/0";
        region(root, s, 0, (1, 2, 3, 4));
        fs::remove_file(root.join(format!("{s}/tried_regions/0/end"))).unwrap();
        let err = read_tried_regions(root).unwrap_err();
        assert!(
            matches!(&err, DamonError::Io { path, .. } if path.ends_with("0/end")),
            "{err}"
        );
    }

    fn setup() -> DamonSetup {
        DamonSetup {
            attrs: DamonAttrs {
                sample_us: 5000,
                aggr_us: 100_000,
                update_us: 1_000_000,
                min_nr_regions: 10,
                max_nr_regions: 500,
                min_age_ms: 300,
            },
            min_nr_accesses: 5,
        }
    }

    const CTX: &str = "kdamonds/0/contexts/0";

    #[test]
    fn sets_up_one_target_reads_its_regions_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_kernel_tree(root, 1, Some("core_filters"));
        let mut d = DamonSysfs::open(root, setup()).unwrap();
        // Nothing is written before there is a target.
        assert_eq!(read(root, "kdamonds/nr_kdamonds"), "0");
        d.set_targets(&[4242]).unwrap();
        assert_eq!(read(root, "kdamonds/nr_kdamonds"), "1");
        assert_eq!(read(root, "kdamonds/0/contexts/nr_contexts"), "1");
        assert_eq!(read(root, "kdamonds/0/state"), "on");
        let c = |rel: &str| read(root, &format!("{CTX}/{rel}"));
        assert_eq!(c("operations"), "vaddr");
        assert_eq!(c("monitoring_attrs/intervals/sample_us"), "5000");
        assert_eq!(c("monitoring_attrs/intervals/aggr_us"), "100000");
        assert_eq!(c("monitoring_attrs/intervals/update_us"), "1000000");
        assert_eq!(c("monitoring_attrs/nr_regions/min"), "10");
        assert_eq!(c("monitoring_attrs/nr_regions/max"), "500");
        assert_eq!(c("targets/nr_targets"), "1");
        assert_eq!(c("targets/0/pid_target"), "4242");
        assert_eq!(c("schemes/nr_schemes"), "1");
        assert_eq!(c("schemes/0/action"), "stat");
        assert_eq!(c("schemes/0/access_pattern/nr_accesses/min"), "5");
        assert_eq!(c("schemes/0/access_pattern/nr_accesses/max"), UINT_MAX);
        assert_eq!(c("schemes/0/access_pattern/sz/min"), "0");
        assert_eq!(c("schemes/0/access_pattern/sz/max"), ULONG_MAX);
        // 300 ms at 100 ms per aggregation.
        assert_eq!(c("schemes/0/access_pattern/age/min"), "3");
        // One target needs no filter.
        assert_eq!(c("schemes/0/core_filters/nr_filters"), "0");

        // What the kernel leaves after update_schemes_tried_regions.
        let s0 = format!("{CTX}/schemes/0");
        region(root, &s0, 1, (0x7f0000400000, 0x7f0000600000, 9, 4));
        region(root, &s0, 0, (0x7f0000000000, 0x7f0000200000, 20, 5));
        let got = d.hot_regions().unwrap();
        assert_eq!(
            read(root, "kdamonds/0/state"),
            "update_schemes_tried_regions"
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].pid, 4242);
        let starts: Vec<u64> = got[0].regions.iter().map(|r| r.start).collect();
        assert_eq!(starts, [0x7f0000000000, 0x7f0000400000]);
        assert_eq!(got[0].regions[0].nr_accesses, 20);

        d.close().unwrap();
        assert_eq!(read(root, "kdamonds/0/state"), "off");
        assert_eq!(read(root, "kdamonds/nr_kdamonds"), "0");
        // Closing twice (and dropping) writes nothing more.
        fs::write(root.join("kdamonds/nr_kdamonds"), "7").unwrap();
        d.close().unwrap();
        drop(d);
        assert_eq!(read(root, "kdamonds/nr_kdamonds"), "7");
    }

    #[test]
    fn several_targets_get_a_scheme_and_a_target_filter_each() {
        for dir in ["core_filters", "filters"] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            fake_kernel_tree(root, 2, Some(dir));
            let mut d = DamonSysfs::open(root, setup()).unwrap();
            d.set_targets(&[100, 200]).unwrap();
            let c = |rel: &str| read(root, &format!("{CTX}/{rel}"));
            assert_eq!(c("targets/nr_targets"), "2");
            assert_eq!(c("targets/1/pid_target"), "200");
            assert_eq!(c("schemes/nr_schemes"), "2");
            for i in 0..2 {
                let f = format!("schemes/{i}/{dir}");
                assert_eq!(c(&format!("{f}/nr_filters")), "1");
                assert_eq!(c(&format!("{f}/0/type")), "target");
                assert_eq!(c(&format!("{f}/0/damon_target_idx")), i.to_string());
                assert_eq!(c(&format!("{f}/0/matching")), "N");
            }
            // Scheme 1's regions are target 1's.
            region(root, &format!("{CTX}/schemes/1"), 0, (0x1000, 0x3000, 7, 1));
            let got = d.hot_regions().unwrap();
            assert_eq!(got[0].pid, 100);
            assert!(got[0].regions.is_empty());
            assert_eq!(got[1].pid, 200);
            assert_eq!(got[1].regions[0].start, 0x1000);
        }
    }

    #[test]
    fn changing_targets_restarts_the_kdamond_and_none_turns_it_off() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_kernel_tree(root, 2, Some("core_filters"));
        let mut d = DamonSysfs::open(root, setup()).unwrap();
        d.set_targets(&[100, 200]).unwrap();
        d.set_targets(&[200]).unwrap();
        assert_eq!(read(root, "kdamonds/0/state"), "on");
        assert_eq!(read(root, &format!("{CTX}/targets/nr_targets")), "1");
        assert_eq!(read(root, &format!("{CTX}/targets/0/pid_target")), "200");
        d.set_targets(&[]).unwrap();
        assert_eq!(read(root, "kdamonds/0/state"), "off");
        // Not running: no regions, and nothing written to state.
        assert!(d.hot_regions().unwrap().is_empty());
        assert_eq!(read(root, "kdamonds/0/state"), "off");
    }

    #[test]
    fn missing_kernel_features_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let e = DamonSysfs::open(&root.join("admin"), setup()).unwrap_err();
        assert!(matches!(e, DamonError::NotFound(_)));
        assert!(e.to_string().contains("CONFIG_DAMON_SYSFS"), "{e}");

        // No vaddr operations.
        fake_kernel_tree(root, 1, None);
        write(root, &format!("{CTX}/avail_operations"), "paddr\n");
        let mut d = DamonSysfs::open(root, setup()).unwrap();
        let e = d.set_targets(&[1]).unwrap_err();
        assert!(matches!(e, DamonError::NoVaddr { .. }), "{e}");
        assert!(e.to_string().contains("CONFIG_DAMON_VADDR"), "{e}");
        assert!(e.to_string().contains("lists \"paddr\""), "{e}");
        // What was created is removed again.
        drop(d);
        assert_eq!(read(root, "kdamonds/nr_kdamonds"), "0");

        // Two targets without filters (before Linux 6.3).
        write(root, &format!("{CTX}/avail_operations"), "vaddr\n");
        fake_kernel_tree(root, 2, None);
        let mut d = DamonSysfs::open(root, setup()).unwrap();
        let e = d.set_targets(&[1, 2]).unwrap_err();
        assert!(matches!(e, DamonError::NoTargetFilter { .. }), "{e}");
        assert!(e.to_string().contains("Linux 6.6"), "{e}");
        // ... and with filters but no target filter (6.3 to 6.5).
        fake_kernel_tree(root, 2, Some("filters"));
        fs::remove_file(root.join(format!("{CTX}/schemes/0/filters/0/damon_target_idx"))).unwrap();
        let e = d.set_targets(&[1, 2]).unwrap_err();
        assert!(matches!(e, DamonError::NoTargetFilter { .. }), "{e}");
        // One target still works there.
        d.set_targets(&[1]).unwrap();
        assert_eq!(read(root, "kdamonds/0/state"), "on");
    }

    #[test]
    fn a_running_kdamond_is_not_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_kernel_tree(root, 1, None);
        write(root, "kdamonds/nr_kdamonds", "1\n");
        write(root, "kdamonds/0/state", "on\n");
        let e = DamonSysfs::open(root, setup()).unwrap_err();
        assert!(matches!(e, DamonError::Busy { kdamond: 0, .. }), "{e}");
        assert!(e.to_string().contains("write off to that file"), "{e}");
        // Nothing was changed.
        assert_eq!(read(root, "kdamonds/0/state"), "on");
    }

    #[test]
    fn write_errors_say_what_to_do() {
        let p = Path::new("/sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds");
        let e = write_error(p, "1", io::Error::from_raw_os_error(libc::EACCES));
        assert!(
            e.to_string().starts_with(
                "permission denied on /sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds (EACCES)"
            ),
            "{e}"
        );
        assert!(e.to_string().contains("run thp-agent as root"), "{e}");
        let e = write_error(p, "1", io::Error::from_raw_os_error(libc::EBUSY));
        assert!(failed_with(&e, libc::EBUSY));
        assert!(!failed_with(&e, libc::EINVAL));
        assert!(e.to_string().starts_with("cannot write \"1\" to "), "{e}");
        let e = io_err(p)(io::Error::from_raw_os_error(libc::EPERM));
        assert!(matches!(e, DamonError::NotPrivileged { .. }), "{e}");
        let e = io_err(p)(io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(e, DamonError::Io { .. }), "{e}");
    }
}
