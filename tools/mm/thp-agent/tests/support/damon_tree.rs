//! A fake DAMON sysfs tree in a directory, for the tests of the DAMON
//! driver (`src/damon.rs`) and of `thp-agent run` (`tests/cli.rs`).

use std::fs;
use std::path::Path;

/// Writes `text` to `root/rel`, creating the directories.
pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("a file in a directory")).expect("mkdir");
    fs::write(p, text).expect("write");
}

/// The trimmed contents of `root/rel`.
pub fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel))
        .expect("read")
        .trim()
        .to_string()
}

/// Adds tried region `n` (start, end, nr_accesses, age) to the scheme
/// directory `scheme` (relative to `root`), as the kernel does after
/// `update_schemes_tried_regions`.
pub fn region(root: &Path, scheme: &str, n: u32, r: (u64, u64, u32, u32)) {
    let d = format!("{scheme}/tried_regions/{n}");
    for (file, value) in [
        ("start", r.0),
        ("end", r.1),
        ("nr_accesses", r.2.into()),
        ("age", r.3.into()),
        ("sz_filter_passed", 0),
    ] {
        write(root, &format!("{d}/{file}"), &format!("{value}\n"));
    }
}

/// The files the kernel has after `thp-agent run`'s `nr_*` writes for
/// `targets` targets, under the admin directory `root`. The driver never
/// creates a file (sysfs files cannot be), so every file it writes must be
/// here. `filters` names the filters directory: `core_filters` since Linux
/// 6.15, `filters` before, `None` before 6.3.
pub fn fake_kernel_tree(root: &Path, targets: usize, filters: Option<&str>) {
    write(root, "kdamonds/nr_kdamonds", "0\n");
    let k = "kdamonds/0";
    write(root, &format!("{k}/state"), "off\n");
    write(root, &format!("{k}/contexts/nr_contexts"), "0\n");
    let c = format!("{k}/contexts/0");
    write(
        root,
        &format!("{c}/avail_operations"),
        "vaddr\nfvaddr\npaddr\n",
    );
    write(root, &format!("{c}/operations"), "vaddr\n");
    for f in [
        "intervals/sample_us",
        "intervals/aggr_us",
        "intervals/update_us",
        "nr_regions/min",
        "nr_regions/max",
    ] {
        write(root, &format!("{c}/monitoring_attrs/{f}"), "0\n");
    }
    write(root, &format!("{c}/targets/nr_targets"), "0\n");
    write(root, &format!("{c}/schemes/nr_schemes"), "0\n");
    for t in 0..targets {
        write(root, &format!("{c}/targets/{t}/pid_target"), "0\n");
        let s = format!("{c}/schemes/{t}");
        write(root, &format!("{s}/action"), "pageout\n");
        for a in ["sz", "nr_accesses", "age"] {
            for m in ["min", "max"] {
                write(root, &format!("{s}/access_pattern/{a}/{m}"), "0\n");
            }
        }
        if let Some(f) = filters {
            write(root, &format!("{s}/{f}/nr_filters"), "0\n");
            for file in ["type", "matching", "allow", "damon_target_idx"] {
                write(root, &format!("{s}/{f}/0/{file}"), "\n");
            }
        }
        write(root, &format!("{s}/tried_regions/total_bytes"), "0\n");
    }
}
