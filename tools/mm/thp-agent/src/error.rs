//! Errors users meet, each with a sentence that says what to do, and the
//! names and meanings of the errno values MADV_COLLAPSE returns.

use crate::flags::FlagsError;
use crate::uapi::{MADV_F_COLLAPSE_LIGHT, MADV_F_COLLAPSE_LIMITS, THP_COLLAPSE_CORE_PATH};
use std::io;

/// The symbolic name of an errno value, e.g. `"EAGAIN"`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EHWPOISON => "EHWPOISON",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// What a failure of `process_madvise(MADV_COLLAPSE)` with `flags` on one
/// range means, as documented in `Documentation/admin-guide/mm/transhuge.rst`
/// and mapped by `madvise_collapse_errno()` in `mm/khugepaged.c`, and for the
/// flags in this project's `Documentation/admin-guide/mm/thp_collapse_rust.rst`.
pub fn collapse_failure_reason(errno: i32, flags: u32) -> String {
    match errno {
        libc::EAGAIN if flags & MADV_F_COLLAPSE_LIGHT != 0 => "the range was left alone because collapsing it would have blocked (--light: no reclaim, compaction, swap-in, page cache read, writeback or page lock wait), or a page was busy".into(),
        libc::EAGAIN => "a page in the range was busy (locked, pinned, under writeback or off the LRU) at that moment; a later try may succeed".into(),
        libc::ENOMEM => "no huge page could be allocated: memory is short or too fragmented".into(),
        libc::EBUSY if flags & MADV_F_COLLAPSE_LIMITS != 0 => "the range has more empty pages than khugepaged's max_ptes_none allows (--limits), or the memory cgroup's limit would be exceeded".into(),
        libc::EBUSY => "the memory cgroup's limit would be exceeded".into(),
        libc::EINVAL if flags != 0 => "the range cannot be collapsed: its VMA is not eligible (MADV_NOHUGEPAGE, PR_SET_THP_DISABLE, a special or locked mapping, a file the kernel cannot map huge), a page in it cannot be part of a huge page, it has more swapped or shared pages than --limits allow, or the C collapse core, which implements no collapse flags, is selected".into(),
        libc::EINVAL => "the range cannot be collapsed: its VMA is not eligible (MADV_NOHUGEPAGE, PR_SET_THP_DISABLE, a special or locked mapping, a file the kernel cannot map huge), or a page in it cannot be part of a huge page".into(),
        libc::EPERM => "not permitted: collapsing another process's memory needs CAP_SYS_NICE".into(),
        libc::EACCES => "no ptrace read access to the process".into(),
        libc::ESRCH => "the process has exited".into(),
        libc::EINTR => "interrupted by a signal".into(),
        libc::EFAULT => "the range is not valid in the process's address space".into(),
        libc::EHWPOISON => "a page in the range has a memory error (hardware poison)".into(),
        _ => io::Error::from_raw_os_error(errno).to_string(),
    }
}

/// What a refused operation needs, by errno name: `EPERM` is the missing
/// `CAP_SYS_NICE` check of `process_madvise`, `EACCES` the ptrace access check
/// of `mm_access()` (for `process_madvise` and `/proc/PID/{smaps,pagemap}`).
fn privilege_hint(errno: &str) -> &'static str {
    match errno {
        "EACCES" => {
            "this needs ptrace read access to the process: the same user and a Yama ptrace_scope that allows it, or CAP_SYS_PTRACE; collapsing also needs CAP_SYS_NICE; run as root or grant those capabilities"
        }
        _ => {
            "collapsing another process's memory needs CAP_SYS_NICE and ptrace read access to it; run as root or grant CAP_SYS_NICE (and CAP_SYS_PTRACE for processes of other users)"
        }
    }
}

/// An error that ends the command: the environment or the arguments do not
/// allow the work (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No process with this PID.
    #[error("process {0} does not exist (ESRCH)")]
    NoSuchProcess(i32),
    /// The process exists but has no user address space.
    #[error("process {0} has no user memory: it is a kernel thread, or a zombie that has exited")]
    NoAddressSpace(i32),
    /// The process exited before any work started.
    #[error("process {0} exited before anything was done")]
    ProcessExited(i32),
    /// The PID is a thread, not a thread-group leader.
    #[error("{0} is the ID of a thread, not of a process; pass the process (thread group) ID")]
    NotAProcess(i32),
    /// Missing privileges.
    #[error("permission denied ({what}: {errno}): {}", privilege_hint(errno))]
    NotPrivileged {
        /// The operation that was refused.
        what: String,
        /// Its errno name.
        errno: String,
    },
    /// The kernel rejects the new flags.
    #[error(
        "this kernel does not support process_madvise collapse flags (--light/--defrag/--limits/--order); run without them"
    )]
    FlagsUnsupported,
    /// The kernel takes the collapse flags, but not the order field.
    #[error(
        "this kernel supports process_madvise collapse flags but not --order (MADV_F_COLLAPSE_ORDER); run without --order"
    )]
    OrderUnsupported,
    /// The C collapse core is selected, and it implements no flags.
    #[error(
        "the C collapse core is selected ({path} reads [c]) and it implements none of the process_madvise collapse flags: select the Rust core (echo rust > {path}) or run without --light/--defrag/--limits/--order",
        path = THP_COLLAPSE_CORE_PATH
    )]
    CoreWithoutFlags,
    /// The kernel has no `process_madvise(2)` or no `pidfd_open(2)`.
    #[error(
        "this kernel has no {0}(2) system call (ENOSYS); Linux 5.10 or later is needed, 6.1 or later for MADV_COLLAPSE"
    )]
    NoSyscall(&'static str),
    /// The kernel rejects MADV_COLLAPSE.
    #[error(
        "this kernel rejects process_madvise(MADV_COLLAPSE) (EINVAL): Linux 6.1 or later built with CONFIG_TRANSPARENT_HUGEPAGE is needed"
    )]
    NoMadvCollapse,
    /// No THP support in the kernel.
    #[error("this kernel has no transparent huge page support ({0} does not exist)")]
    NoThp(&'static str),
    /// THP is disabled system-wide.
    #[error(
        "transparent huge pages are disabled: {0} reads [never], so smaps marks no VMA THP-eligible; enable them (echo madvise > {0}), or pass --include-ineligible (run: include_ineligible = true) to ask the kernel anyway (MADV_COLLAPSE ignores this setting)"
    )]
    ThpDisabled(&'static str),
    /// The selection yields nothing to collapse.
    #[error("{0}")]
    NothingSelected(String),
    /// Bad option combination.
    #[error(transparent)]
    Flags(#[from] FlagsError),
    /// A file of the process could not be read or parsed.
    #[error("cannot read {path}: {why}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// Another system call failed.
    #[error("{what} failed: {source}")]
    Os {
        /// The call.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The configuration file cannot be read or is not valid.
    #[error("{path}: {why}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// DAMON is missing, busy or failed.
    #[error(transparent)]
    Damon(#[from] crate::damon::DamonError),
    /// Memory pressure cannot be read.
    #[error(transparent)]
    Psi(#[from] crate::psi::PsiError),
    /// The report cannot be written.
    #[error("cannot write the report {path}: {why}")]
    Report {
        /// The file or directory.
        path: String,
        /// Why.
        why: String,
    },
}

impl AgentError {
    /// The error for a process whose memory the kernel says is gone (`ESRCH`):
    /// [`AgentError::NoAddressSpace`] if it is still listed in `/proc`,
    /// [`AgentError::NoSuchProcess`] otherwise.
    pub fn gone(pid: i32) -> Self {
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            AgentError::NoAddressSpace(pid)
        } else {
            AgentError::NoSuchProcess(pid)
        }
    }

    /// The error for a failed read of `/proc/PID/<file>`.
    pub fn proc_read(pid: i32, file: &str, err: &io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => AgentError::gone(pid),
            Some(e @ (libc::EACCES | libc::EPERM)) => AgentError::NotPrivileged {
                what: format!("reading /proc/{pid}/{file}"),
                errno: errno_name(e),
            },
            _ => AgentError::Read {
                path: format!("/proc/{pid}/{file}"),
                why: err.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(errno_name(libc::EAGAIN), "EAGAIN");
        assert_eq!(errno_name(libc::ENOMEM), "ENOMEM");
        assert_eq!(errno_name(libc::EBUSY), "EBUSY");
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(libc::ENOTTY), "ENOTTY");
        assert_eq!(errno_name(4095), "errno 4095");
    }

    #[test]
    fn collapse_reasons() {
        assert!(collapse_failure_reason(libc::EAGAIN, 0).contains("later try may succeed"));
        assert!(
            collapse_failure_reason(libc::ENOMEM, 0).contains("no huge page could be allocated")
        );
        assert_eq!(
            collapse_failure_reason(libc::EBUSY, 0),
            "the memory cgroup's limit would be exceeded"
        );
        assert!(collapse_failure_reason(libc::EBUSY, 0x1).contains("max_ptes_none"));
        assert!(collapse_failure_reason(libc::EAGAIN, 0x4).contains("--light"));
        assert!(!collapse_failure_reason(libc::EAGAIN, 0x1).contains("--light"));
        assert!(collapse_failure_reason(libc::EINVAL, 0x2).contains("C collapse core"));
        assert!(!collapse_failure_reason(libc::EINVAL, 0).contains("C collapse core"));
        assert!(collapse_failure_reason(libc::EINVAL, 0).contains("not eligible"));
        assert!(collapse_failure_reason(libc::EPERM, 0).contains("CAP_SYS_NICE"));
        // Unknown values fall back to strerror.
        assert_eq!(
            collapse_failure_reason(libc::ENOSPC, 0),
            "No space left on device (os error 28)"
        );
    }

    #[test]
    fn user_facing_sentences() {
        assert_eq!(
            AgentError::FlagsUnsupported.to_string(),
            "this kernel does not support process_madvise collapse flags (--light/--defrag/--limits/--order); run without them"
        );
        let e = AgentError::proc_read(7, "smaps", &io::Error::from_raw_os_error(libc::EACCES));
        let s = e.to_string();
        assert!(
            s.starts_with(
                "permission denied (reading /proc/7/smaps: EACCES): this needs ptrace read access"
            ),
            "{s}"
        );
        let e = AgentError::NotPrivileged {
            what: "process_madvise".into(),
            errno: "EPERM".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains(
                "(process_madvise: EPERM): collapsing another process's memory needs CAP_SYS_NICE"
            ),
            "{s}"
        );
        // No PID reaches i32::MAX (pid_max is at most 2^22).
        let e = AgentError::proc_read(
            i32::MAX,
            "smaps",
            &io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(
            e.to_string(),
            format!("process {} does not exist (ESRCH)", i32::MAX)
        );
        // Process 2 is kthreadd, a kernel thread, on Linux.
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            let e = AgentError::proc_read(2, "pagemap", &io::Error::from_raw_os_error(libc::ESRCH));
            assert!(matches!(e, AgentError::NoAddressSpace(2)), "{e}");
        }
        let e = AgentError::ThpDisabled("/sys/kernel/mm/transparent_hugepage/enabled");
        assert!(e.to_string().contains("reads [never]"));
    }
}
