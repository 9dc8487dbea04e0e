//! Runs the `thp-agent` binary: exit codes, error sentences, and `status
//! --json` of a child process checked against that child's smaps.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thp-agent"))
        .args(args)
        .output()
        .expect("run thp-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn usage_errors_exit_2() {
    let o = agent(&["collapse", "1", "--light", "--defrag"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--defrag"), "{}", stderr(&o));

    let o = agent(&["collapse", "1", "--order", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--order 1 is not valid"),
        "{}",
        stderr(&o)
    );

    let o = agent(&["collapse", "1", "--range", "5000-1000"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("the range is empty"), "{}", stderr(&o));

    let o = agent(&["status"]);
    assert_eq!(o.status.code(), Some(2));

    let o = agent(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("collapse"));
}

#[test]
fn missing_process_is_a_clear_error() {
    // PIDs never reach i32::MAX (pid_max is at most 2^22).
    let pid = i32::MAX.to_string();
    let o = agent(&["status", &pid]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o).trim(),
        format!("thp-agent: process {pid} does not exist (ESRCH)")
    );
    let o = agent(&["status", &pid, "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON error document");
    assert_eq!(v["exit_code"], 2);
    assert!(v["error"].as_str().unwrap().contains("does not exist"));
}

/// The number of VMAs, and the sums of the `Size:` lines and of the
/// PMD-mapped lines of a smaps file.
fn smaps_sums(text: &str) -> (usize, u64, u64) {
    let kb = |l: &str| -> u64 {
        l.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .map_or(0, |n: u64| n * 1024)
    };
    let pmd_keys = [
        "AnonHugePages:",
        "ShmemPmdMapped:",
        "FilePmdMapped:",
        "Shared_Hugetlb:",
        "Private_Hugetlb:",
    ];
    let mut vmas = 0;
    let mut size = 0;
    let mut pmd = 0;
    for l in text.lines() {
        if l.starts_with("Size:") {
            vmas += 1;
            size += kb(l);
        } else if pmd_keys.iter().any(|k| l.starts_with(k)) {
            pmd += kb(l);
        }
    }
    (vmas, size, pmd)
}

/// Waits until process `pid` runs `sleep` and its address space has stopped
/// changing (exec and the dynamic loader are done).
fn wait_until_settled(pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if comm.trim() == "sleep" && !maps.is_empty() && maps == last {
            return;
        }
        last = maps;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_json_of_a_child_matches_its_smaps() {
    let mut child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id().to_string();
    wait_until_settled(&pid);
    let o = agent(&["status", &pid, "--json"]);
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"));
    child.kill().ok();
    child.wait().ok();

    if o.status.code() == Some(2) && stderr(&o).contains("permission denied") {
        // A sibling process may not read the child's pagemap under Yama
        // ptrace_scope=1 without CAP_SYS_PTRACE.
        eprintln!("skipped: {}", stderr(&o).trim());
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let Ok(smaps) = smaps else {
        eprintln!("skipped: the child's smaps is unreadable");
        return;
    };
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["pid"].as_u64(), pid.parse().ok());
    let (vmas, size, pmd) = smaps_sums(&smaps);
    let totals = &v["totals"];
    assert_eq!(totals["vmas"].as_u64(), Some(vmas as u64));
    assert_eq!(v["vmas"].as_array().map(Vec::len), Some(vmas));
    assert_eq!(totals["size"].as_u64(), Some(size));
    assert_eq!(totals["smaps_pmd_mapped"].as_u64(), Some(pmd));
    let names: Vec<&str> = v["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert!(names.contains(&"[stack]"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("sleep")), "{names:?}");
}

#[path = "support/damon_tree.rs"]
mod damon_tree;

use damon_tree::{fake_kernel_tree, read, region, write};

/// Anonymous test memory, shared with the unit tests (which also read it back).
#[expect(dead_code)]
#[path = "support/anon_memory.rs"]
mod anon_memory;
use anon_memory::AnonMemory;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;
const PMD: u64 = 2 * MIB;

/// The files of one `thp-agent run` with a fake DAMON tree and PSI file.
struct RunDir {
    tmp: tempfile::TempDir,
}

impl RunDir {
    /// A DAMON tree for one target, no memory pressure, and a configuration
    /// for `pid` with the `extra` top-level keys.
    fn new(pid: u32, extra: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        fake_kernel_tree(&dir.join("admin"), 1, Some("core_filters"));
        write(
            dir,
            "pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        write(
            dir,
            "agent.toml",
            &format!(
                "scan_interval_s = 1\nmin_hotness = 5\n{extra}\n[damon]\nsample_us = 5000\naggr_us = 100000\n\n[[target]]\npid = {pid}\n"
            ),
        );
        RunDir { tmp }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn admin(&self) -> PathBuf {
        self.path("admin")
    }

    /// `thp-agent run` on these files, and `more` arguments.
    fn command(&self, more: &[&str]) -> Command {
        self.command_on(&self.admin(), &self.path("pressure"), more)
    }

    /// `thp-agent run` on this DAMON tree and PSI file instead.
    fn command_on(&self, admin: &Path, psi: &Path, more: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_thp-agent"));
        c.arg("run")
            .arg("--config")
            .arg(self.path("agent.toml"))
            .arg("--report")
            .arg(self.path("report"))
            .arg("--log")
            .arg(self.path("agent.log"))
            .arg("--damon-admin")
            .arg(admin)
            .arg("--psi-file")
            .arg(psi)
            .args(more);
        c
    }

    fn report(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path("report/report.json")).expect("report.json");
        serde_json::from_str(&text).expect("JSON report")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// Checks that the kdamond was turned off and removed.
    fn assert_damon_cleaned_up(&self) {
        assert_eq!(read(&self.admin(), "kdamonds/0/state"), "off");
        assert_eq!(read(&self.admin(), "kdamonds/nr_kdamonds"), "0");
    }

    fn assert_png(&self) {
        let png = std::fs::read(self.path("report/report.png")).expect("report.png");
        assert!(png.len() > 1000);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}

/// Whether the agent could not start for want of privileges (then the
/// test is skipped).
fn unprivileged(o: &Output) -> bool {
    let skip = o.status.code() == Some(2) && stderr(o).contains("permission denied");
    if skip {
        eprintln!("skipped: {}", stderr(o).trim());
    }
    skip
}

/// The THP mode of anonymous memory.
fn thp_mode() -> String {
    let text =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("none")
        .to_string()
}

/// `AnonHugePages` of this process's VMA that contains `addr`, in bytes.
fn own_anon_huge(addr: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            inside = a <= addr && addr < b;
        } else if inside && let Some(kb) = line.strip_prefix("AnonHugePages:") {
            return kb
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
                .map(|k| k * 1024);
        }
    }
    None
}

#[test]
fn run_collapses_the_hot_chunk_of_a_process_and_leaves_the_cold_one() {
    let mem = AnonMemory::small_pages(4, false);
    let (hot, cold) = (mem.start, mem.start + 2 * PMD);
    let pid = std::process::id();
    let dir = RunDir::new(pid, "include_ineligible = true\nbudget_mib_per_s = 64");
    // What DAMON would report: the hot chunk accessed in 20 of 20 samples,
    // the cold one in 2.
    let scheme = "kdamonds/0/contexts/0/schemes/0";
    region(&dir.admin(), scheme, 0, (hot, hot + PMD, 20, 5));
    region(&dir.admin(), scheme, 1, (cold, cold + PMD, 2, 5));

    let o = dir.command(&["--duration", "2.5"]).output().expect("run");
    if unprivileged(&o) {
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stderr(&o), dir.log());
    assert!(stderr(&o).contains("1 process followed"), "{}", stderr(&o));
    let r = dir.report();
    assert_eq!(r["complete"], true);
    assert_eq!(r["stopped_by"], "duration");
    assert_eq!(r["targets"][0]["pid"], pid);
    let collapses = r["targets"][0]["collapses"].as_array().expect("collapses");
    assert!(!collapses.is_empty(), "{}", dir.log());
    // Only the hot chunk was touched.
    assert!(collapses.iter().all(|c| c["start"] == hot), "{collapses:?}");
    let log = dir.log();
    let cold_skip = format!(
        "range={cold:x}-{:x} reason=cold hotness=2 min_hotness=5",
        cold + PMD
    );
    assert!(log.contains(&cold_skip), "{log}");
    assert!(
        log.contains(&format!("event=collapse pid={pid} range={hot:x}-")),
        "{log}"
    );

    // What the kernel did.
    match collapses[0]["outcome"].as_str() {
        Some("collapsed") => {
            assert_eq!(collapses.len(), 1, "collapsed once, then already huge");
            let huge = own_anon_huge(hot).expect("the VMA in smaps");
            if thp_mode() == "always" {
                assert!(huge >= PMD, "{huge}");
            } else {
                // No khugepaged here: only the hot chunk is huge.
                assert_eq!(huge, PMD);
            }
        }
        // Only where THP is off may the kernel refuse.
        other => assert_eq!(
            thp_mode(),
            "never",
            "the kernel did not collapse: {other:?} {}",
            collapses[0]["reason"]
        ),
    }
    // DAMON was set up for this process, and cleaned up.
    let ctx = |rel: &str| read(&dir.admin(), &format!("kdamonds/0/contexts/0/{rel}"));
    assert_eq!(ctx("operations"), "vaddr");
    assert_eq!(ctx("targets/0/pid_target"), pid.to_string());
    assert_eq!(ctx("schemes/0/action"), "stat");
    assert_eq!(ctx("schemes/0/access_pattern/nr_accesses/min"), "5");
    assert_eq!(ctx("monitoring_attrs/intervals/aggr_us"), "100000");
    dir.assert_damon_cleaned_up();
    dir.assert_png();
    drop(mem);
}

#[test]
fn run_stops_on_sigterm_and_writes_the_report() {
    let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
    let dir = RunDir::new(child.id(), "");
    let mut agent = dir
        .command(&[])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    // Wait for the first pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.log().contains("event=scan") && Instant::now() < deadline {
        if agent.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sending a signal to a child process.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let o = agent.wait_with_output().expect("wait");
    child.kill().ok();
    child.wait().ok();
    if unprivileged(&o) {
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stderr(&o), dir.log());
    let r = dir.report();
    assert_eq!(r["stopped_by"], "signal");
    assert_eq!(r["signal"], "SIGTERM");
    assert_eq!(r["complete"], true);
    assert!(
        dir.log()
            .contains("event=stop reason=signal signal=SIGTERM")
    );
    dir.assert_damon_cleaned_up();
    dir.assert_png();
}

#[test]
fn run_reports_a_target_that_exits() {
    let mut child = Command::new("sleep").arg("1.5").spawn().expect("sleep");
    let dir = RunDir::new(child.id(), "");
    let o = dir.command(&["--duration", "20"]).output().expect("run");
    child.wait().ok();
    if unprivileged(&o) {
        return;
    }
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stderr(&o), dir.log());
    assert!(stderr(&o).contains("INCOMPLETE: process"), "{}", stderr(&o));
    let r = dir.report();
    assert_eq!(r["complete"], false);
    assert_eq!(r["stopped_by"], "all_targets_exited");
    assert!(r["targets"][0]["exited_at_ms"].as_u64().is_some());
    let why = r["incomplete"][0].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!(
            "process {} (pid={}) exited",
            child.id(),
            child.id()
        )),
        "{why}"
    );
    assert!(r["elapsed_s"].as_f64().is_some_and(|s| s < 10.0));
    dir.assert_damon_cleaned_up();
}

#[test]
fn run_names_what_the_kernel_lacks() {
    let pid = std::process::id();
    let dir = RunDir::new(pid, "");
    let nowhere = Path::new("/nonexistent/damon/admin");
    let o = dir
        .command_on(nowhere, &dir.path("pressure"), &["--duration", "1"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("this kernel has no DAMON sysfs interface: /nonexistent/damon/admin does not exist (the kernel needs CONFIG_DAMON and CONFIG_DAMON_SYSFS"),
        "{}",
        stderr(&o)
    );
    let o = dir
        .command_on(
            &dir.admin(),
            Path::new("/nonexistent/memory"),
            &["--duration", "1"],
        )
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("CONFIG_PSI=y"), "{}", stderr(&o));
    // Nothing of DAMON was changed.
    assert_eq!(read(&dir.admin(), "kdamonds/nr_kdamonds"), "0");
    write(
        &dir.admin(),
        "kdamonds/0/contexts/0/avail_operations",
        "paddr\n",
    );
    let o = dir.command(&["--duration", "1"]).output().expect("run");
    if unprivileged(&o) {
        return;
    }
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("CONFIG_DAMON_VADDR"), "{}", stderr(&o));
    dir.assert_damon_cleaned_up();
}

#[test]
fn run_usage_and_configuration_errors_exit_2() {
    let dir = RunDir::new(std::process::id(), "");
    let o = dir.command(&["--duration", "0"]).output().expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not a positive number of seconds"),
        "{}",
        stderr(&o)
    );
    write(
        dir.tmp.path(),
        "agent.toml",
        "budget_mib_per_s = -1\n[[target]]\npid = 1\n",
    );
    let o = dir.command(&[]).output().expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("agent.toml: budget_mib_per_s must be a positive number"),
        "{}",
        stderr(&o)
    );
    let o = agent(&["run", "--config", "/nonexistent.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent.toml: cannot read it"),
        "{}",
        stderr(&o)
    );
    let o = agent(&["run", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("--config") && help.contains("--duration"),
        "{help}"
    );
    assert!(!help.contains("--damon-admin"), "{help}");
}
