#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Count the results of the harness boots and judge their kernel consoles.

Usage:
  tap-summary.py --boot LABEL CONSOLE TESTS LIST [--boot ...]
                 [--kunit SUITE]... [--src KERNEL_TREE] [--ours DIR]

Each --boot is one QEMU boot: its kernel console, its programs' output and its
run list. The first boot also carries the KUnit KTAP (our suites and the
kernel crate's doctests). --cargo LOG adds the thp-agent's `cargo test` run on
the host. The verdict, and what it cannot be talked out of:

- A program that skips as a whole (a "1..0 # SKIP" plan, or exit status 4
  with no result) fails unless its list line says "may-skip: <why>".
- Our own programs (their source is in --ours) may not skip anything, and a
  "Bail out!" line in their output (a forked child giving up) fails them.
- A program on the Rust core must show that the Rust core did the work: its
  succeed counters moved ("rust: any": any Rust counter moved, for programs
  whose collapses are meant to be refused; "rust: none <why>" exempts). This
  is a condition of the program's list entry, not a result of its own.
- Every `cargo test` result of the thp-agent counts on its own line; an
  ignored test is a skip, and a log without a "test result:" line (the build
  failed) or one that disagrees with the tests above it fails.
- Kernel doctests that only define items (a function, a type) are
  documentation: they compile, but they are not counted as tests.
- Any kernel warning, lockdep, KASAN, UBSAN, BUG, Oops, panic, hung task or
  timeout in a console fails the run; a KCSAN report or a kmemleak leak fails
  it when a frame of its stack is in the collapse (thp_collapse, khugepaged,
  the kernel crate's mm guards), and is listed otherwise.

Prints the runs, every failure and every skip with its reason, one line per
source (upstream selftests, ours, KUnit, doctests, thp-agent (host), kernel
consoles), then
"N passed, N failed[, N skipped]". Exit status 1 when anything failed.
"""

import argparse
import os
import re
import sys

TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
RESULT = re.compile(r"^(not )?ok \d+\b ?-? ?(.*?)(?:\s*#\s*(SKIP|XFAIL|TODO)\b(.*))?$", re.I)
PLAN = re.compile(r"^1\.\.(\d+)(?:\s*#\s*SKIP\b\s*(.*))?", re.I)
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
# A stack frame in the collapse: the Rust core and its glue, upstream's
# collapse (khugepaged.c, madvise_collapse), the kernel crate's mm guards.
COLLAPSE_FRAME = re.compile(r"thp_collapse|khugepaged|collapse_|_collapse\b|"
                            r"6kernel2mm")
# A line of a stack trace: "[<address>]" or "function+0xoff/0xsize" (not the
# "CPU: ... Comm: thp_collapse_..." line, which names the task, not the code).
FRAME = re.compile(r"^\s+\[<[0-9a-f]+>\]|^\s+\S+\+0x[0-9a-f]+/0x[0-9a-f]+")
KCSAN_START = re.compile(r"BUG: KCSAN: (.*)")
KCSAN_END = re.compile(r"^={20,}")
SOURCES = ["upstream selftests", "ours", "KUnit", "doctests", "thp-agent (host)",
           "kernel consoles"]
CARGO_TEST = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)\b(.*)")
CARGO_RESULT = re.compile(r"^test result: (ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored")


class Tally:
    """Results per source, the failure lines and the skip lines."""

    def __init__(self):
        self.count = {s: {"pass": 0, "fail": 0, "skip": 0} for s in SOURCES}
        self.fails = []
        self.skips = []
        self.notes = []

    def add(self, source, status, what, why=""):
        self.count[source][status] += 1
        if status == "fail":
            self.fails.append(f"FAIL  {what}" + (f" ({why})" if why else ""))
        elif status == "skip":
            self.skips.append(f"SKIP  {what}: {why or 'no reason given'}")

    def total(self, status):
        return sum(c[status] for c in self.count.values())


def read(path):
    try:
        with open(path, errors="replace") as f:
            return [l.rstrip("\r\n") for l in f]
    except FileNotFoundError:
        return []


def status_of(m):
    if m.group(1):
        return "fail"
    return "skip" if (m.group(3) or "").upper() == "SKIP" else "pass"


def doc_only(src, path, line):
    """Whether the doctest at @path:@line defines items only (no statement)."""
    lines = read(os.path.join(src, path)) if src else []
    if not lines or line < 1 or line > len(lines):
        return False
    body = []
    i = line - 1
    # The doctest's first line may be the fence or the first line of code.
    if lines[i].strip().lstrip("/!").strip().startswith("```"):
        i += 1
    while i < len(lines):
        text = re.sub(r"^\s*//[/!]\s?", "", lines[i])
        if text.strip().startswith("```"):
            break
        # Hidden lines ("# ...") are compiled and run like the others.
        body.append("" if text.strip() == "#" else re.sub(r"^# ", "", text))
        i += 1
    depth = 0
    item = re.compile(r"^\s*(pub(\(\w+\))?\s+)?(unsafe\s+)?(const\s+)?(async\s+)?"
                      r"(fn|struct|enum|impl|trait|type|mod|use|static|const|"
                      r"extern|macro_rules!)\b|^\s*#\[|^\s*//|^\s*$|^\s*\}")
    for text in body:
        if depth == 0 and not item.match(text):
            return False
        depth += text.count("{") - text.count("}")
    return True


def kunit(console, suites, src, t):
    """KTAP of our KUnit suites and of the kernel crate's doctests."""
    seen = set()
    suite = None
    where = {}
    docs = []
    for raw in console:
        line = TIMESTAMP.sub("", raw)
        m = re.match(r"^\s{4}# Subtest: (\S+)", line)
        if m:
            suite = m.group(1)
            continue
        m = re.match(r"^\s+# (\S+)\.location: (\S+):(\d+)", line)
        if m:
            where[m.group(1)] = (m.group(2), int(m.group(3)))
            continue
        m = re.match(r"^\s{4}((?:not )?ok \d+.*)$", line)
        if m and suite and not line.startswith(" " * 8):
            r = RESULT.match(m.group(1))
            if r:
                seen.add(suite)
                name = r.group(2)
                status = status_of(r)
                if suite == "rust_doctests_kernel":
                    path, ln = where.get(name, ("", 0))
                    if status == "pass" and doc_only(src, path, ln):
                        docs.append(name)
                        continue
                    t.add("doctests", status, f"doctest {name} ({path}:{ln})",
                          (r.group(4) or "").strip())
                else:
                    t.add("KUnit", status, f"kunit {suite}.{name}",
                          (r.group(4) or "").strip())
            continue
        m = re.match(r"^((?:not )?ok \d+ (\S+).*)$", line)
        if m and m.group(2) == suite:
            suite = None
    for s in suites:
        if s not in seen:
            t.add("doctests" if s == "rust_doctests_kernel" else "KUnit", "fail",
                  f"kunit suite {s} did not run")
    if docs:
        t.notes.append(f"NOTE  {len(docs)} kernel doctests only define items (a function, "
                       f"a type): documentation, compiled and run but not counted")


def entries(listing):
    """The run list: name -> (core, program, annotations)."""
    out = {}
    for l in listing:
        l = l.strip()
        if not l or l.startswith("#"):
            continue
        cmd, _, notes = l.partition(" # ")
        f = cmd.split()
        ann = {}
        for part in notes.split(" ; ") if notes else []:
            k, _, v = part.partition(":")
            ann[k.strip()] = v.strip()
        prog = next((w[2:] for w in f[3:] if w.startswith("./")), "")
        out[f[0]] = (f[1] if len(f) > 1 else "-", prog, ann)
    return out


def programs(label, tests, listing, ours_dir, t, runs_out):
    expected = entries(listing)
    runs = {}
    cur = None
    for line in tests:
        m = re.match(r"^# RUN (\S+)", line)
        if m:
            cur = m.group(1)
            runs[cur] = {"results": [], "plan": None, "plan_skip": None, "rc": None,
                         "time": None, "rust": None, "rust_all": None, "bail": []}
            continue
        m = re.match(r"^# RUST_(SUCCEED|TOTAL) (\S+) (-?\d+)", line)
        if m and m.group(2) in runs:
            runs[m.group(2)]["rust" if m.group(1) == "SUCCEED" else "rust_all"] = \
                int(m.group(3))
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
        if "Bail out!" in line:
            runs[cur]["bail"].append(line.strip())
        m = PLAN.match(line)
        if m and runs[cur]["plan"] is None:
            runs[cur]["plan"] = int(m.group(1))
            if m.group(2) is not None:
                runs[cur]["plan_skip"] = m.group(2).strip() or "no reason given"
            continue
        m = RESULT.match(line)
        if m:
            desc = m.group(2) or (m.group(4) or "").strip()
            why = (m.group(4) or "").strip()
            runs[cur]["results"].append((status_of(m), desc, why))
    for name, (core, prog, ann) in expected.items():
        ours = bool(prog) and os.path.exists(os.path.join(ours_dir, prog + ".c"))
        src = "ours" if ours else "upstream selftests"
        tag = f"{label}/{name}" if label else name
        r = runs.get(name)
        if r is None:
            t.add(src, "fail", f"{tag}: did not run")
            continue
        for status, desc, why in r["results"]:
            if status == "skip" and ours:
                t.add(src, "fail", f"{tag}: {desc}",
                      f"skipped ({why or 'no reason'}); our programs may not skip")
            else:
                t.add(src, status, f"{tag}: {desc}", why)
        done = len(r["results"])
        whole_skip = done == 0 and (r["plan_skip"] is not None or r["rc"] == 4)
        if whole_skip:
            why = r["plan_skip"] or "exit status 4 (KSFT_SKIP) with no result"
            if "may-skip" in ann and not ours:
                t.add(src, "skip", f"{tag}: the whole program",
                      f"{why}; allowed: {ann['may-skip']}")
            else:
                t.add(src, "fail", f"{tag}: skipped as a whole ({why})",
                      "our programs may not skip" if ours else
                      "its list line does not say it may skip")
        if r["plan"] is not None and done < r["plan"]:
            for _ in range(r["plan"] - done):
                t.add(src, "fail", f"{tag}: a planned test did not report (crash or timeout)")
        if r["rc"] is None:
            t.add(src, "fail", f"{tag}: never finished")
        elif r["rc"] in (124, 143):
            t.add(src, "fail", f"{tag}: timed out")
        elif r["rc"] not in (0, 4) and not any(s == "fail" for s, _, _ in r["results"]):
            t.add(src, "fail", f"{tag}: exited with status {r['rc']}")
        elif done == 0 and r["rc"] == 0 and r["plan_skip"] is None:
            t.add(src, "fail", f"{tag}: printed no TAP result")
        if r["bail"]:
            if ours:
                t.add(src, "fail", f"{tag}: {r['bail'][0]}",
                      f"{len(r['bail'])} 'Bail out!' line(s): a child gave up")
            else:
                t.notes.append(f"NOTE  {tag}: upstream printed {len(r['bail'])} "
                               f"'Bail out!' line(s), e.g. {r['bail'][0]!r}; "
                               f"upstream's own verdict stands")
        # The Rust core must have done the work; a condition, not a result.
        want = ann.get("rust", "succeed").split()[0] if core != "c" else "none"
        if want == "succeed" and not whole_skip and (r["rust"] or 0) <= 0:
            t.add(src, "fail", f"{tag}: the Rust core's succeed counters did not move "
                               f"({r['rust']})")
        elif want == "any" and not whole_skip and (r["rust_all"] or 0) <= 0:
            t.add(src, "fail", f"{tag}: no Rust core counter moved ({r['rust_all']})")
        if r["time"] is not None:
            runs_out.append(f"      {tag}: {done} results, rc={r['rc']}, {r['time']:.1f}s, "
                            f"rust succeed +{r['rust']}, all outcomes +{r['rust_all']}")


def kcsan_reports(console):
    """Each KCSAN report: (title, whether a frame is in the collapse)."""
    out = []
    cur = None
    for raw in console:
        line = TIMESTAMP.sub("", raw)
        m = KCSAN_START.search(line)
        if m:
            cur = [m.group(1).strip(), False]
            continue
        if cur is not None:
            if KCSAN_END.match(line.strip()):
                out.append(tuple(cur))
                cur = None
            elif FRAME.match(line) and COLLAPSE_FRAME.search(line):
                cur[1] = True
    if cur is not None:
        out.append(tuple(cur))
    return out


def kmemleak(tests):
    """Each kmemleak report: (first line, frames, whether one is in the collapse)."""
    out = []
    inside = False
    cur = None
    for line in tests:
        if line.startswith("# KMEMLEAK BEGIN"):
            inside = True
            continue
        if line.startswith("# KMEMLEAK END"):
            inside = False
            continue
        if not inside:
            continue
        if line.startswith("unreferenced object"):
            cur = [line.strip(), [], False]
            out.append(cur)
        elif cur is not None and FRAME.match(line):
            cur[1].append(line.strip())
            if COLLAPSE_FRAME.search(line):
                cur[2] = True
    return out


def consoles(label, console, tests, t):
    if not console:
        t.add("kernel consoles", "fail", f"{label}: no console log")
        return
    for title, ours in kcsan_reports(console):
        if ours:
            t.add("kernel consoles", "fail", f"{label} console: KCSAN: {title}",
                  "a frame is in the collapse")
        else:
            t.notes.append(f"NOTE  {label} console: KCSAN: {title} (no collapse frame)")
    in_kcsan = False
    splats = []
    for raw in console:
        line = TIMESTAMP.sub("", raw)
        if KCSAN_START.search(line):
            in_kcsan = True
        if in_kcsan:
            if KCSAN_END.match(line.strip()):
                in_kcsan = False
            continue
        if SPLAT.search(line):
            splats.append(line.strip())
    for s in splats[:20]:
        t.add("kernel consoles", "fail", f"{label} console: {s}")
    if len(splats) > 20:
        t.add("kernel consoles", "fail", f"{label} console: ... and {len(splats) - 20} more lines")
    for first, frames, ours in kmemleak(tests):
        inner = [f for f in frames
                 if not re.search(r"kmemleak|kmalloc|kmem_cache|slab_|__alloc|alloc_pages", f)]
        top = next((f for f in frames if COLLAPSE_FRAME.search(f)),
                   (inner or frames or [""])[0])
        if ours:
            t.add("kernel consoles", "fail", f"{label} kmemleak: {first}", f"at {top}")
        else:
            t.notes.append(f"NOTE  {label} kmemleak: {first} (no collapse frame; {top})")
    if not any(l.startswith("# HARNESS DONE") for l in tests):
        why = "timed out" if any("HARNESS TIMEOUT" in l for l in tests) else \
            "did not reach the end of the run list"
        t.add("kernel consoles", "fail", f"{label} harness: the guest {why}")


def cargo(log, t):
    """The thp-agent's `cargo test` run on the host: one result per test.

    An ignored test is a skip with its reason; a test binary whose "test
    result:" line disagrees with its own test lines, or a log without any
    (the build failed), fails.
    """
    lines = read(log)
    seen = {"ok": 0, "FAILED": 0, "ignored": 0}
    results = 0
    for l in lines:
        m = CARGO_TEST.match(l)
        if m:
            name, status, rest = m.groups()
            seen[status] += 1
            if status == "ok":
                t.add("thp-agent (host)", "pass", name)
            elif status == "FAILED":
                t.add("thp-agent (host)", "fail", f"thp-agent {name}")
            else:
                t.add("thp-agent (host)", "skip", f"thp-agent {name}",
                      rest.strip(" ,") or "")
            continue
        m = CARGO_RESULT.match(l)
        if m:
            results += 1
            want = [int(m.group(2)), int(m.group(3)), int(m.group(4))]
            if [seen["ok"], seen["FAILED"], seen["ignored"]] != want:
                t.add("thp-agent (host)", "fail", "thp-agent test result line",
                      f"says {want[0]} passed, {want[1]} failed, {want[2]} ignored; "
                      f"the tests above it say {seen['ok']}, {seen['FAILED']}, "
                      f"{seen['ignored']}")
            seen = {"ok": 0, "FAILED": 0, "ignored": 0}
    if not results:
        t.add("thp-agent (host)", "fail", "thp-agent cargo test",
              f"no test result in {log} (did it build?)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot", nargs=4, action="append", default=[],
                    metavar=("LABEL", "CONSOLE", "TESTS", "LIST"))
    ap.add_argument("--console")
    ap.add_argument("--tests")
    ap.add_argument("--list")
    ap.add_argument("--kunit", action="append", default=[])
    ap.add_argument("--src", default="")
    ap.add_argument("--cargo", help="the thp-agent's cargo test output")
    ap.add_argument("--ours", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "tools", "testing", "selftests", "mm"))
    a = ap.parse_args()
    boots = list(a.boot)
    if a.console:
        boots.insert(0, ["", a.console, a.tests, a.list])
    if not boots:
        ap.error("no boot given")

    t = Tally()
    runs = []
    for i, (label, console_path, tests_path, list_path) in enumerate(boots):
        console = read(console_path)
        tests = read(tests_path)
        if i == 0 and a.kunit:
            kunit(console, a.kunit, a.src, t)
        programs(label, tests, read(list_path), a.ours, t, runs)
        consoles(label or "debug", console, tests, t)
    if a.cargo:
        cargo(a.cargo, t)

    for l in runs + t.notes + t.skips + t.fails:
        print(l)
    for s in SOURCES:
        c = t.count[s]
        line = f"  {s}: {c['pass']} passed, {c['fail']} failed"
        if c["skip"]:
            line += f", {c['skip']} skipped"
        print(line)
    summary = f"{t.total('pass')} passed, {t.total('fail')} failed"
    if t.total("skip"):
        summary += f", {t.total('skip')} skipped"
    print(summary)
    return 1 if t.total("fail") or not t.total("pass") else 0


if __name__ == "__main__":
    sys.exit(main())
