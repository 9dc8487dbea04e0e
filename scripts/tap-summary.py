#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Count the results of one harness boot and judge the kernel console.

Usage: tap-summary.py --console LOG --tests LOG --list LIST [--kunit SUITE]...

Reads the KUnit KTAP from the console log, the kselftest TAP of every program in
the run list from the tests log, and fails the run on any kernel warning,
lockdep report, KASAN report, BUG, Oops, panic, hung task or timeout, whatever
the TAP says. Prints one line per failure or skip, then
"N passed, N failed, N skipped". Exit status 1 when anything failed.
"""

import argparse
import re
import sys

TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
RESULT = re.compile(r"^(not )?ok \d+\b ?-? ?(.*?)(?:\s*#\s*(SKIP|XFAIL|TODO)\b(.*))?$", re.I)
PLAN = re.compile(r"^1\.\.(\d+)")
SPLATS = [
    r"WARNING:", r"BUG:", r"Oops", r"Kernel panic", r"KASAN", r"UBSAN",
    r"possible circular locking", r"possible recursive locking",
    r"inconsistent lock state", r"suspicious RCU usage", r"bad unlock balance",
    r"lock held when returning to user space", r"non-static key",
    r"DEBUG_LOCKS_WARN_ON", r"blocked for more than", r"soft lockup",
    r"hard LOCKUP", r"rcu_.* detected stalls", r"general protection fault",
    r"Call Trace:", r"list_add corruption", r"list_del corruption",
    r"page dumped because", r"panicked at", r"rust_panic", r"Unable to handle",
    r"segfault at", r"refcount_t:", r"page_table_check",
]
SPLAT = re.compile("|".join(SPLATS))


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.lines = []
        self.skips = []

    def add(self, status, what):
        if status == "pass":
            self.passed += 1
        elif status == "skip":
            self.skipped += 1
            self.skips.append(what)
        else:
            self.failed += 1
            self.lines.append(f"FAIL  {what}")


def read(path):
    try:
        with open(path, errors="replace") as f:
            return [l.rstrip("\r\n") for l in f]
    except FileNotFoundError:
        return []


def status_of(m):
    if m.group(1):
        return "fail"
    directive = (m.group(3) or "").upper()
    if directive == "SKIP":
        return "skip"
    return "pass"


def kunit(console, suites, t):
    seen = set()
    suite = None
    for raw in console:
        line = TIMESTAMP.sub("", raw)
        m = re.match(r"^\s{4}# Subtest: (\S+)", line)
        if m:
            suite = m.group(1)
            continue
        m = re.match(r"^\s{4}((?:not )?ok \d+.*)$", line)
        if m and suite and not line.startswith(" " * 8):
            r = RESULT.match(m.group(1))
            if r:
                seen.add(suite)
                t.add(status_of(r), f"kunit {suite}.{r.group(2)}")
            continue
        m = re.match(r"^((?:not )?ok \d+ (\S+).*)$", line)
        if m and m.group(2) == suite:
            suite = None
    for s in suites:
        if s not in seen:
            t.add("fail", f"kunit suite {s} did not run")


def programs(tests, listing, t, passes):
    expected = []
    on_rust = set()
    for l in listing:
        l = l.strip()
        if l and not l.startswith("#"):
            expected.append(l.split()[0])
            if len(l.split()) > 1 and l.split()[1] == "rust":
                on_rust.add(l.split()[0])
    runs = {}
    cur = None
    for line in tests:
        m = re.match(r"^# RUN (\S+)", line)
        if m:
            cur = m.group(1)
            runs[cur] = {"results": [], "plan": None, "rc": None, "time": None,
                         "rust": None}
            continue
        m = re.match(r"^# RUST_SUCCEED (\S+) (-?\d+)", line)
        if m and m.group(1) in runs:
            runs[m.group(1)]["rust"] = int(m.group(2))
            continue
        m = re.match(r"^# EXIT (\S+) rc=(\d+) start=([\d.]+) end=([\d.]+)", line)
        if m and m.group(1) in runs:
            r = runs[m.group(1)]
            r["rc"] = int(m.group(2))
            r["time"] = float(m.group(4)) - float(m.group(3))
            cur = None
            continue
        if cur is None:
            continue
        m = PLAN.match(line)
        if m and runs[cur]["plan"] is None:
            runs[cur]["plan"] = int(m.group(1))
            continue
        m = RESULT.match(line)
        if m:
            desc = m.group(2) or (m.group(4) or "").strip()
            runs[cur]["results"].append((status_of(m), desc))
    for name in expected:
        r = runs.get(name)
        if r is None:
            t.add("fail", f"{name}: did not run")
            continue
        for status, desc in r["results"]:
            t.add(status, f"{name}: {desc}")
        nskip = sum(1 for s, _ in r["results"] if s == "skip")
        if nskip:
            t.lines.append(f"SKIP  {name}: {nskip} skipped, e.g. "
                           f"{next(d for s, d in r['results'] if s == 'skip')}")
        done = len(r["results"])
        if r["plan"] is not None and done < r["plan"]:
            for _ in range(r["plan"] - done):
                t.add("fail", f"{name}: planned test did not report (crash or timeout)")
        if r["rc"] is None:
            t.add("fail", f"{name}: never finished")
        elif r["rc"] in (124, 143):
            t.add("fail", f"{name}: timed out")
        elif r["rc"] not in (0, 4) and not any(s == "fail" for s, _ in r["results"]):
            t.add("fail", f"{name}: exited with status {r['rc']}")
        elif done == 0 and r["rc"] == 0:
            t.add("fail", f"{name}: printed no TAP result")
        # A run on the Rust core must show that the Rust core collapsed.
        if name in on_rust:
            if r["rust"] is None or r["rust"] <= 0:
                t.add("fail", f"{name}: ran on the rust core but its succeed "
                              f"counters did not move ({r['rust']})")
            else:
                t.add("pass", f"{name}: the Rust core collapsed {r['rust']} PMD ranges")
        if r["time"] is not None:
            rust = f", rust succeed +{r['rust']}" if r["rust"] is not None else ""
            passes.append(f"      {name}: {len(r['results'])} results, rc={r['rc']}, "
                          f"{r['time']:.1f}s{rust}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--console", required=True)
    ap.add_argument("--tests", required=True)
    ap.add_argument("--list", required=True)
    ap.add_argument("--kunit", action="append", default=[])
    a = ap.parse_args()

    console = read(a.console)
    tests = read(a.tests)
    t = Tally()
    timing = []
    if a.kunit:
        kunit(console, a.kunit, t)
    programs(tests, read(a.list), t, timing)

    splats = [TIMESTAMP.sub("", l) for l in console if SPLAT.search(l)]
    for s in splats[:20]:
        t.add("fail", f"console: {s.strip()}")
    if len(splats) > 20:
        t.add("fail", f"console: ... and {len(splats) - 20} more lines")
    if not any(l.startswith("# HARNESS DONE") for l in tests):
        why = "timed out" if any("HARNESS TIMEOUT" in l for l in tests) else \
            "did not reach the end of the run list"
        t.add("fail", f"harness: the guest {why} (console log: {a.console})")

    for l in timing:
        print(l)
    for l in t.lines:
        print(l)
    summary = f"{t.passed} passed, {t.failed} failed"
    if t.skipped:
        summary += f", {t.skipped} skipped"
    print(summary)
    return 1 if t.failed or not t.passed else 0


if __name__ == "__main__":
    sys.exit(main())
