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
