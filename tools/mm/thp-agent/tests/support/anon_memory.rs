//! Anonymous memory of the test process, from a 2 MiB boundary, for the tests
//! that look at real mappings: the collapse and pagemap unit tests
//! (`src/collapse.rs`, `src/pagemap.rs`) and `thp-agent run` (`tests/cli.rs`).

/// 2 MiB, the size of a PMD mapping on x86_64.
const PMD: u64 = 2 << 20;

/// `size` bytes of private anonymous memory of this process starting at
/// `start`, a 2 MiB boundary; unmapped on drop.
pub struct AnonMemory {
    base: *mut libc::c_void,
    len: usize,
    /// The first byte, on a 2 MiB boundary.
    pub start: u64,
    /// The length asked for.
    pub size: usize,
}

impl AnonMemory {
    /// Maps `pmds` 2 MiB chunks and leaves them untouched.
    pub fn untouched(pmds: usize) -> Self {
        // Room to round the start up to a 2 MiB boundary.
        let len = (pmds + 1) * PMD as usize;
        // SAFETY: an anonymous private mapping with no address hint.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap of {len} bytes");
        AnonMemory {
            base,
            len,
            start: (base as u64).next_multiple_of(PMD),
            size: pmds * PMD as usize,
        }
    }

    /// Maps `pmds` 2 MiB chunks and writes every byte (0x5a) in small pages:
    /// under MADV_NOHUGEPAGE, so that a page fault does not map a huge page.
    /// With `hugepage`, MADV_HUGEPAGE then undoes it (MADV_COLLAPSE refuses a
    /// VMA with MADV_NOHUGEPAGE) and makes the VMA THP-eligible in `madvise`
    /// mode; without it MADV_NOHUGEPAGE is only used, and undone, where the
    /// THP mode is `always`.
    pub fn small_pages(pmds: usize, hugepage: bool) -> Self {
        let m = Self::untouched(pmds);
        let p = m.start as *mut libc::c_void;
        let always = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|t| t.contains("[always]"));
        let advise = |advice| {
            // SAFETY: [start, start + size) lies inside the mapping made above.
            let rc = unsafe { libc::madvise(p, m.size, advice) };
            assert_eq!(
                rc,
                0,
                "madvise({advice}): {}",
                std::io::Error::last_os_error()
            );
        };
        if hugepage || always {
            advise(libc::MADV_NOHUGEPAGE);
        }
        // SAFETY: [start, start + size) lies inside the mapping made above, writable.
        unsafe { std::ptr::write_bytes(m.start as *mut u8, 0x5a, m.size) };
        if hugepage || always {
            advise(libc::MADV_HUGEPAGE);
        }
        m
    }

    /// The bytes, as this process sees them now.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: [start, start + size) is mapped readable until `self` drops.
        unsafe { std::slice::from_raw_parts(self.start as *const u8, self.size) }
    }
}

impl Drop for AnonMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `untouched` mapped.
        unsafe { libc::munmap(self.base, self.len) };
    }
}
