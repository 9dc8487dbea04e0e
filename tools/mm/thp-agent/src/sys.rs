//! The system calls: `pidfd_open(2)` and `process_madvise(2)`.

use crate::error::{AgentError, errno_name};
use crate::uapi::{
    MADV_COLLAPSE, MADV_F_COLLAPSE_LIMITS, MADV_F_COLLAPSE_ORDER_MASK, MADV_F_COLLAPSE_ORDER_SHIFT,
    SYS_PIDFD_OPEN, SYS_PROCESS_MADVISE,
};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The order field of the collapse flags.
const ORDER_BITS: u32 = MADV_F_COLLAPSE_ORDER_MASK << MADV_F_COLLAPSE_ORDER_SHIFT;

/// A pidfd: a handle on one process that stays valid (and does not start
/// referring to another process) if the PID is reused.
#[derive(Debug)]
pub struct Pidfd {
    /// The file descriptor.
    fd: OwnedFd,
    /// The PID it was opened for.
    pid: i32,
}

/// The errno of the last failed call.
fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Pidfd {
    /// Opens a pidfd for process `pid`.
    pub fn open(pid: i32) -> Result<Self, AgentError> {
        // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
        let ret = unsafe { libc::syscall(SYS_PIDFD_OPEN, pid, 0u32) };
        if ret < 0 {
            return Err(match last_errno() {
                libc::ESRCH => AgentError::NoSuchProcess(pid),
                libc::EINVAL => AgentError::NotAProcess(pid),
                libc::ENOSYS => AgentError::NoSyscall("pidfd_open"),
                e @ (libc::EPERM | libc::EACCES) => AgentError::NotPrivileged {
                    what: "pidfd_open".into(),
                    errno: errno_name(e),
                },
                e => AgentError::Os {
                    what: "pidfd_open",
                    source: io::Error::from_raw_os_error(e),
                },
            });
        }
        let fd = i32::try_from(ret).map_err(|_| AgentError::Os {
            what: "pidfd_open",
            source: io::Error::other("returned an out-of-range fd"),
        })?;
        // SAFETY: `fd` is a new file descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, pid })
    }

    /// The PID the pidfd was opened for.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process has exited (the pidfd polls readable then).
    pub fn has_exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        let ret = unsafe { libc::poll(&mut pfd, 1, 0) };
        ret > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// `process_madvise(pidfd, iov, n, MADV_COLLAPSE, flags)` on the ranges
    /// `(start, len)`. Returns the bytes advised or the errno.
    pub fn madvise_collapse(&self, ranges: &[(u64, u64)], flags: u32) -> Result<u64, i32> {
        let iov: Vec<libc::iovec> = ranges
            .iter()
            .map(|&(start, len)| libc::iovec {
                iov_base: start as *mut libc::c_void,
                iov_len: len as usize,
            })
            .collect();
        let iov_ptr = if iov.is_empty() {
            std::ptr::null()
        } else {
            iov.as_ptr()
        };
        // SAFETY: `iov` holds `iov.len()` iovecs that describe addresses in the
        // target process; the kernel only reads the array itself.
        let ret = unsafe {
            libc::syscall(
                SYS_PROCESS_MADVISE,
                self.fd.as_raw_fd(),
                iov_ptr,
                iov.len(),
                MADV_COLLAPSE,
                flags,
            )
        };
        if ret < 0 {
            Err(last_errno())
        } else {
            Ok(ret as u64)
        }
    }

    /// Checks, without touching any memory, that this process may collapse
    /// the target's memory with `flags`: a `process_madvise` call with no
    /// range goes through the kernel's flags, permission and advice checks
    /// only.
    pub fn probe(&self, flags: u32) -> Result<(), AgentError> {
        let check = |f: u32| match self.madvise_collapse(&[], f) {
            Ok(_) => Ok(()),
            Err(libc::ESRCH) if self.has_exited() => Err(AgentError::ProcessExited(self.pid)),
            Err(libc::ESRCH) => Err(AgentError::NoAddressSpace(self.pid)),
            Err(libc::ENOSYS) => Err(AgentError::NoSyscall("process_madvise")),
            Err(e @ (libc::EPERM | libc::EACCES)) => Err(AgentError::NotPrivileged {
                what: "process_madvise".into(),
                errno: errno_name(e),
            }),
            Err(libc::EINVAL) if f != 0 => Err(AgentError::FlagsUnsupported),
            Err(libc::EINVAL) => Err(AgentError::NoMadvCollapse),
            Err(e) => Err(AgentError::Os {
                what: "process_madvise",
                source: io::Error::from_raw_os_error(e),
            }),
        };
        // Flags 0 first, so that a kernel without the new flags is told apart
        // from one that refuses the caller or MADV_COLLAPSE itself.
        check(0)?;
        if flags == 0 {
            return Ok(());
        }
        match check(flags) {
            Err(AgentError::FlagsUnsupported) if flags & ORDER_BITS != 0 => {
                // Tell "no flags at all" from "flags, but not the order field",
                // with the other flags asked for, or a harmless one.
                let others = match flags & !ORDER_BITS {
                    0 => MADV_F_COLLAPSE_LIMITS,
                    f => f,
                };
                match check(others) {
                    Ok(()) => Err(AgentError::OrderUnsupported),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_self_and_probe() {
        let me = Pidfd::open(std::process::id() as i32).unwrap();
        assert!(!me.has_exited());
        // Upstream kernels take no flags; ours may. Either answer is clear.
        match me.probe(0x1) {
            Ok(()) | Err(AgentError::FlagsUnsupported) => {}
            Err(AgentError::NoMadvCollapse | AgentError::NoSyscall(_)) => {
                eprintln!("skipped: no process_madvise(MADV_COLLAPSE) here");
            }
            Err(e) => panic!("{e}"),
        }
        // With the order field, a kernel that knows the other flags but not
        // the order says so.
        let plain = me.probe(0x1);
        match me.probe(0x400) {
            Ok(()) => assert!(plain.is_ok()),
            Err(AgentError::FlagsUnsupported) => {
                assert!(matches!(plain, Err(AgentError::FlagsUnsupported)));
            }
            Err(AgentError::OrderUnsupported) => assert!(plain.is_ok()),
            Err(AgentError::NoMadvCollapse | AgentError::NoSyscall(_)) => {
                eprintln!("skipped: no process_madvise(MADV_COLLAPSE) here");
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn exited_child_is_seen() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = Pidfd::open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(fd.has_exited());
        // The reaped child is gone: a new pidfd is refused with ESRCH.
        assert!(matches!(
            Pidfd::open(child.id() as i32),
            Err(AgentError::NoSuchProcess(_))
        ));
    }

    #[test]
    fn nonexistent_pid() {
        // PIDs are at most 2^22 on Linux.
        let err = Pidfd::open(i32::MAX).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("process {} does not exist (ESRCH)", i32::MAX)
        );
    }
}
