#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The rules of tap-summary.py, each on a made-up boot that breaks one of them.

Every case writes a console, a tests log and a run list for one boot, runs
tap-summary.py on them and checks its verdict (exit status) and its last line.
A case that breaks no rule must pass, so that a rule that fails everything
cannot look right. Run by "make check"; prints one line per case and
"N passed, N failed".
"""

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SUMMARY = os.path.join(HERE, "tap-summary.py")
CONSOLE_OK = ["Linux version 7.3.4", "Run /init as init process"]


def prog(name, lines, rc=0, succeed=3, total=5):
    """The tests log of one program of the list."""
    return ([f"# RUN {name} core=[rust] c cmd=./{name}"] + lines +
            [f"# RUST_SUCCEED {name} {succeed}", f"# RUST_TOTAL {name} {total}",
             f"# EXIT {name} rc={rc} start=1.00 end=2.00"])


def boot(progs, console=None, leaks=None, done=True):
    tests = sum(progs, [])
    tests += ["# KMEMLEAK BEGIN"] + (leaks or []) + ["# KMEMLEAK END"]
    if done:
        tests.append("# HARNESS DONE")
    return (console or CONSOLE_OK), tests


TAP_OK = ["TAP version 13", "1..2", "ok 1 one", "ok 2 two"]
KCSAN = ["BUG: KCSAN: data-race in {a} / {b}", "", "write to 0x1 of 8 bytes by task 1:",
         " {a}+0x10/0x20", "read to 0x1 of 8 bytes by task 2:", " {b}+0x10/0x20",
         "=" * 66]
LEAK = ["unreferenced object 0xffff888001 (size 64):", "  backtrace (crc 0):",
        "    __kmalloc_noprof+0x1/0x2", "    {f}+0x10/0x20", "    do_syscall_64+0x1/0x2"]

CARGO_OK = ["running 2 tests", "test plan::a ... ok", "test plan::b ... ok", "",
            "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"]

# name, list lines, (console, tests), expected exit status, expected last line
# (and, as a sixth element, a cargo test log)
CASES = [
    ("every rule kept",
     ["up rust 60 ./up", "ours rust 60 ./ours"],
     boot([prog("up", TAP_OK), prog("ours", TAP_OK)]), 0, "4 passed, 0 failed"),
    ("an upstream program skips as a whole without may-skip",
     ["up rust 60 ./up"],
     boot([prog("up", ["TAP version 13", "1..0 # SKIP no device"], rc=4)]), 1,
     "0 passed, 1 failed"),
    ("an upstream program skips as a whole with may-skip",
     ["up rust 60 ./up # may-skip: no such device here", "ours rust 60 ./ours"],
     boot([prog("up", ["TAP version 13", "1..0 # SKIP no device"], rc=4),
           prog("ours", TAP_OK)]), 0, "2 passed, 0 failed, 1 skipped"),
    ("exit status 4 with no result counts as a whole skip",
     ["up rust 60 ./up"],
     boot([prog("up", ["TAP version 13"], rc=4)]), 1, "0 passed, 1 failed"),
    ("our program skips a case",
     ["ours rust 60 ./ours"],
     boot([prog("ours", ["1..2", "ok 1 one", "ok 2 two # SKIP convenient"])]), 1,
     "1 passed, 1 failed"),
    ("a child of our program bails out",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK + ["Bail out! child gave up"])]), 1,
     "2 passed, 1 failed"),
    ("an upstream child bails out: a note, upstream's verdict stands",
     ["up rust 60 ./up"],
     boot([prog("up", TAP_OK + ["Bail out! child gave up"])]), 0, "2 passed, 0 failed"),
    ("the Rust core's succeed counters did not move",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK, succeed=0)]), 1, "2 passed, 1 failed"),
    ("rust: any is met by any counter",
     ["up rust 60 ./up # rust: any"],
     boot([prog("up", TAP_OK, succeed=0, total=4)]), 0, "2 passed, 0 failed"),
    ("rust: any with no counter moved",
     ["up rust 60 ./up # rust: any"],
     boot([prog("up", TAP_OK, succeed=0, total=0)]), 1, "2 passed, 1 failed"),
    ("a planned case never reported",
     ["ours rust 60 ./ours"],
     boot([prog("ours", ["1..3", "ok 1 one", "ok 2 two"])]), 1, "2 passed, 1 failed"),
    ("a program timed out",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK, rc=124)]), 1, "2 passed, 1 failed"),
    ("a program on the list did not run",
     ["ours rust 60 ./ours", "up rust 60 ./up"],
     boot([prog("ours", TAP_OK)]), 1, "2 passed, 1 failed"),
    ("the guest did not reach the end of the list",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK)], done=False), 1, "2 passed, 1 failed"),
    ("a BUG in the console",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK)], console=CONSOLE_OK + ["BUG: Bad page map in process x"]),
     1, "2 passed, 1 failed"),
    ("a KCSAN report with a collapse frame",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK)], console=CONSOLE_OK + [
         l.format(a="thp_collapse_read_ptes", b="thp_collapse_read_ptes") for l in KCSAN]),
     1, "2 passed, 1 failed"),
    ("a KCSAN report elsewhere: listed, not failed",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK)], console=CONSOLE_OK + [
         l.format(a="tick_sched_do_timer", b="tick_nohz_next_event") for l in KCSAN]),
     0, "2 passed, 0 failed"),
    ("a KCSAN report elsewhere, in a task of ours: listed, not failed",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK)], console=CONSOLE_OK + [
         l.format(a="vmstat_start", b="vmstat_start") for l in KCSAN[:-1]] + [
         "CPU: 0 UID: 0 PID: 105 Comm: thp_collapse_mu Not tainted 7.3.4 #1", KCSAN[-1]]),
     0, "2 passed, 0 failed"),
    ("a kmemleak leak with a collapse frame",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK)], leaks=[l.format(f="thp_collapse_read_ptes") for l in LEAK]),
     1, "2 passed, 1 failed"),
    ("a kmemleak leak elsewhere: listed, not failed",
     ["ours rust 60 ./ours"],
     boot([prog("ours", TAP_OK)], leaks=[l.format(f="acpi_ps_parse_aml") for l in LEAK]),
     0, "2 passed, 0 failed"),
    ("the thp-agent's cargo tests pass",
     ["ours rust 60 ./ours"], boot([prog("ours", TAP_OK)]), 0, "4 passed, 0 failed",
     CARGO_OK),
    ("a thp-agent cargo test fails",
     ["ours rust 60 ./ours"], boot([prog("ours", TAP_OK)]), 1, "3 passed, 1 failed",
     ["test plan::a ... ok", "test plan::b ... FAILED",
      "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out"]),
    ("an ignored thp-agent cargo test is a skip",
     ["ours rust 60 ./ours"], boot([prog("ours", TAP_OK)]), 0,
     "3 passed, 0 failed, 1 skipped",
     ["test plan::a ... ok", "test plan::b ... ignored, needs root",
      "test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out"]),
    ("the thp-agent did not build: no test result",
     ["ours rust 60 ./ours"], boot([prog("ours", TAP_OK)]), 1, "2 passed, 1 failed",
     ["error[E0425]: cannot find value `x` in this scope",
      "error: could not compile `thp-agent`"]),
    ("a cargo test result line that disagrees with its tests",
     ["ours rust 60 ./ours"], boot([prog("ours", TAP_OK)]), 1, "3 passed, 1 failed",
     ["test plan::a ... ok",
      "test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"]),
]


def run(case, ours_dir, work):
    name, listing, (console, tests), want_rc, want_last = case[:5]
    cargo = case[5] if len(case) > 5 else None
    paths = {}
    files = [("console", console), ("tests", tests), ("list", listing)]
    if cargo is not None:
        files.append(("cargo", cargo))
    for what, lines in files:
        paths[what] = os.path.join(work, what)
        with open(paths[what], "w") as f:
            f.write("\n".join(lines) + "\n")
    args = [sys.executable, SUMMARY, "--ours", ours_dir, "--boot", "",
            paths["console"], paths["tests"], paths["list"]]
    if cargo is not None:
        args += ["--cargo", paths["cargo"]]
    p = subprocess.run(args, capture_output=True, text=True, check=False)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    ok = p.returncode == want_rc and last == want_last
    print(f"{'ok' if ok else 'FAIL'}  {name}: exit {p.returncode}, {last!r}"
          + ("" if ok else f" (want exit {want_rc}, {want_last!r})\n{p.stdout}{p.stderr}"))
    return ok


def main():
    with tempfile.TemporaryDirectory() as work:
        ours_dir = os.path.join(work, "ours-src")
        os.mkdir(ours_dir)
        # "ours" is one of our programs: its source is in the --ours folder.
        open(os.path.join(ours_dir, "ours.c"), "w").close()
        results = [run(c, ours_dir, work) for c in CASES]
    print(f"{results.count(True)} passed, {results.count(False)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
