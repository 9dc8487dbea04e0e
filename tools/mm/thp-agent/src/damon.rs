//! Reader for the DAMON sysfs interface's scheme "tried regions"
//! (`Documentation/admin-guide/mm/damon/usage.rst`):
//!
//! ```text
//! <admin>/kdamonds/<K>/contexts/<C>/targets/<T>/pid_target
//! <admin>/kdamonds/<K>/contexts/<C>/schemes/<S>/tried_regions/<R>/{start,end,nr_accesses,age}
//! ```
//!
//! The regions appear after `update_schemes_tried_regions` is written to
//! `kdamonds/<K>/state`. The root (`/sys/kernel/mm/damon/admin` on a real
//! system) is a parameter so that tests can build a fake tree.

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

/// Errors reading the DAMON tree.
#[derive(Debug, thiserror::Error)]
pub enum DamonError {
    /// The root has no `kdamonds` directory.
    #[error(
        "no DAMON sysfs interface at {0} (the kernel needs CONFIG_DAMON_SYSFS, and sysfs must be mounted)"
    )]
    NotFound(PathBuf),
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

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DamonError + '_ {
    move |source| DamonError::Io {
        path: path.to_path_buf(),
        source,
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

fn read_number<T: std::str::FromStr>(path: &Path) -> Result<T, DamonError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    text.trim().parse().map_err(|_| DamonError::Parse {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

fn read_region(dir: &Path) -> Result<Region, DamonError> {
    Ok(Region {
        start: read_number(&dir.join("start"))?,
        end: read_number(&dir.join("end"))?,
        nr_accesses: read_number(&dir.join("nr_accesses"))?,
        age: read_number(&dir.join("age"))?,
    })
}

/// Reads every scheme's tried regions under `admin_root` (the directory that
/// holds `kdamonds/`).
pub fn read_tried_regions(admin_root: &Path) -> Result<Vec<SchemeRegions>, DamonError> {
    let kdamonds = admin_root.join("kdamonds");
    if !kdamonds.is_dir() {
        return Err(DamonError::NotFound(admin_root.to_path_buf()));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn region(root: &Path, prefix: &str, n: u32, r: (u64, u64, u32, u32)) {
        let d = format!("{prefix}/tried_regions/{n}");
        write(root, &format!("{d}/start"), &format!("{}\n", r.0));
        write(root, &format!("{d}/end"), &format!("{}\n", r.1));
        write(root, &format!("{d}/nr_accesses"), &format!("{}\n", r.2));
        write(root, &format!("{d}/age"), &format!("{}\n", r.3));
        write(root, &format!("{d}/sz_filter_passed"), "0\n");
    }

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
}
