//! The processes the `run` daemon follows: which PIDs a target of the
//! configuration names now ([`Processes::resolve`]), and each process as the
//! daemon works on it ([`Proc`]). [`ProcFs`] is the real implementation, on
//! `/proc` and pidfds; tests use fakes.

use crate::collapse::{ProcessTarget, Target};
use crate::config::TargetSpec;
use crate::error::AgentError;
use crate::pagemap::{HugeMap, Pagemap, ScanError};
use crate::smaps::Vma;
use crate::status;
use crate::sys::Pidfd;
use std::path::{Path, PathBuf};

/// One followed process: the collapse loop's [`Target`], and what the daemon
/// reads about it.
pub trait Proc: Target {
    /// Its VMAs, from `/proc/PID/smaps`.
    fn vmas(&mut self) -> Result<Vec<Vma>, AgentError>;
    /// Its name (`/proc/PID/comm`), empty if unknown.
    fn comm(&mut self) -> String;
}

/// Where the daemon finds its processes.
pub trait Processes {
    /// The PIDs `spec` names now, in ascending order, without the agent's own.
    fn resolve(&mut self, spec: &TargetSpec) -> Result<Vec<i32>, AgentError>;
    /// Opens process `pid` for collapsing with `flags`: checks, without
    /// touching its memory, that the kernel lets this process do so.
    fn open(&mut self, pid: i32, flags: u32) -> Result<Box<dyn Proc>, AgentError>;
}

/// The PMD-mapped bytes of `vmas`: from `PAGEMAP_SCAN` over their span, or,
/// if the kernel has none, from smaps. Also returns the PMD-mapped ranges
/// (empty without `PAGEMAP_SCAN`). `Err` if the process has exited.
pub fn pmd_mapped(p: &mut dyn Proc, vmas: &[Vma]) -> Result<(u64, HugeMap), ScanError> {
    let Some((start, end)) = status::user_span(vmas) else {
        return Ok((0, HugeMap::new()));
    };
    match p.scan_huge(start, end) {
        Ok(huge) => {
            let bytes = vmas.iter().map(|v| huge.bytes_in(v.start, v.end)).sum();
            Ok((bytes, huge))
        }
        Err(ScanError::Unsupported | ScanError::Os(_)) => {
            Ok((vmas.iter().map(Vma::smaps_pmd_mapped).sum(), HugeMap::new()))
        }
        Err(ScanError::ProcessExited) => Err(ScanError::ProcessExited),
    }
}

/// Processes from `/proc` (the root is a parameter for tests).
#[derive(Debug)]
pub struct ProcFs {
    /// The procfs mount.
    root: PathBuf,
    /// This process, which is never followed.
    own_pid: i32,
}

impl ProcFs {
    /// Processes under `root` (`/proc` on a real system).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            own_pid: std::process::id() as i32,
        }
    }

    /// The PIDs of the processes whose `comm` is `name`.
    fn by_name(&self, name: &str) -> Result<Vec<i32>, AgentError> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| AgentError::Read {
            path: self.root.display().to_string(),
            why: e.to_string(),
        })?;
        let mut pids = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A process that exits meanwhile has no comm: not a match.
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.strip_suffix('\n').unwrap_or(&comm) == name {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// The PIDs in a cgroup v2 directory.
    fn in_cgroup(&self, dir: &Path) -> Result<Vec<i32>, AgentError> {
        let path = dir.join("cgroup.procs");
        let text = std::fs::read_to_string(&path).map_err(|e| AgentError::Read {
            path: path.display().to_string(),
            why: format!("{e} (is {} a cgroup v2 directory?)", dir.display()),
        })?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

impl Processes for ProcFs {
    fn resolve(&mut self, spec: &TargetSpec) -> Result<Vec<i32>, AgentError> {
        let mut pids = match spec {
            TargetSpec::Pid(pid) => {
                if self.root.join(pid.to_string()).exists() {
                    vec![*pid]
                } else {
                    Vec::new()
                }
            }
            TargetSpec::Name(name) => self.by_name(name)?,
            TargetSpec::Cgroup(dir) => self.in_cgroup(dir)?,
        };
        pids.retain(|&p| p != self.own_pid);
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn open(&mut self, pid: i32, flags: u32) -> Result<Box<dyn Proc>, AgentError> {
        let pidfd = Pidfd::open(pid)?;
        pidfd.probe(flags)?;
        let pagemap = Pagemap::open(pid).map_err(|e| AgentError::proc_read(pid, "pagemap", &e))?;
        let comm = std::fs::read_to_string(self.root.join(format!("{pid}/comm")))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        // What was opened by PID belongs to the process of the pidfd only if
        // it was still alive afterwards.
        if pidfd.has_exited() {
            return Err(AgentError::ProcessExited(pid));
        }
        Ok(Box::new(LiveProcess {
            pid,
            comm,
            target: ProcessTarget::new(pidfd, Some(pagemap)),
        }))
    }
}

/// A live process, through its pidfd and `/proc/PID`.
#[derive(Debug)]
struct LiveProcess {
    /// Its PID.
    pid: i32,
    /// Its name when it was opened.
    comm: String,
    /// Its pidfd and pagemap.
    target: ProcessTarget,
}

impl Target for LiveProcess {
    fn collapse(&mut self, start: u64, len: u64, flags: u32) -> Result<(), i32> {
        self.target.collapse(start, len, flags)
    }

    fn scan_huge(&mut self, start: u64, end: u64) -> Result<HugeMap, ScanError> {
        self.target.scan_huge(start, end)
    }

    fn has_exited(&mut self) -> bool {
        self.target.has_exited()
    }

    fn is_mapped(&mut self, start: u64, end: u64) -> bool {
        self.target.is_mapped(start, end)
    }
}

impl Proc for LiveProcess {
    fn vmas(&mut self) -> Result<Vec<Vma>, AgentError> {
        let vmas = status::read_smaps(self.pid)?;
        // The PID may have been reused by another process meanwhile.
        if self.target.has_exited() {
            return Err(AgentError::ProcessExited(self.pid));
        }
        Ok(vmas)
    }

    fn comm(&mut self) -> String {
        self.comm.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_proc(root: &Path, pid: i32, comm: &str) {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
    }

    #[test]
    fn resolves_names_pids_and_cgroups() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_proc(root, 30, "redis-server");
        fake_proc(root, 4, "redis-server");
        fake_proc(root, 7, "redis");
        fake_proc(root, 8, "redis-server-x");
        fs::create_dir_all(root.join("self")).unwrap();
        fs::write(root.join("uptime"), "1 1\n").unwrap();
        let mut p = ProcFs::new(root);
        assert_eq!(
            p.resolve(&TargetSpec::Name("redis-server".into())).unwrap(),
            [4, 30]
        );
        assert_eq!(p.resolve(&TargetSpec::Name("redis".into())).unwrap(), [7]);
        assert!(
            p.resolve(&TargetSpec::Name("nginx".into()))
                .unwrap()
                .is_empty()
        );
        assert_eq!(p.resolve(&TargetSpec::Pid(7)).unwrap(), [7]);
        assert!(p.resolve(&TargetSpec::Pid(9)).unwrap().is_empty());

        let cg = root.join("cg");
        fs::create_dir_all(&cg).unwrap();
        fs::write(cg.join("cgroup.procs"), "12\n5\n12\n").unwrap();
        assert_eq!(p.resolve(&TargetSpec::Cgroup(cg.clone())).unwrap(), [5, 12]);
        let e = p
            .resolve(&TargetSpec::Cgroup(root.join("nocg")))
            .unwrap_err();
        assert!(e.to_string().contains("cgroup v2 directory"), "{e}");
    }

    #[test]
    fn the_agent_never_follows_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let own = std::process::id() as i32;
        fake_proc(tmp.path(), own, "me");
        fake_proc(tmp.path(), own + 1, "me");
        let mut p = ProcFs::new(tmp.path());
        assert_eq!(
            p.resolve(&TargetSpec::Name("me".into())).unwrap(),
            [own + 1]
        );
        assert!(p.resolve(&TargetSpec::Pid(own)).unwrap().is_empty());
    }

    /// The real thing on a child process: opened, its VMAs read, its
    /// PMD-mapped size measured, and its exit seen.
    #[test]
    fn opens_a_live_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut p = ProcFs::new(Path::new("/proc"));
        let opened = p.open(pid, 0);
        let mut proc = match opened {
            Ok(proc) => proc,
            Err(e @ (AgentError::NotPrivileged { .. } | AgentError::NoMadvCollapse)) => {
                eprintln!("skipped: {e}");
                child.kill().ok();
                child.wait().ok();
                return;
            }
            Err(e) => panic!("{e}"),
        };
        // The child may still be exec'ing `sleep`: its comm is one or the other.
        assert!(!proc.comm().is_empty());
        let vmas = proc.vmas().unwrap();
        assert!(!vmas.is_empty());
        let (bytes, _) = pmd_mapped(&mut *proc, &vmas).unwrap();
        assert!(bytes <= vmas.iter().map(Vma::size).sum());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(proc.has_exited());
        assert!(proc.vmas().is_err());
    }
}
