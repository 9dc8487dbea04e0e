#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Plot the benchmark CSV: time per 2 MiB, C core vs Rust core, per workload, and
the Rust core with a process_madvise() flag against flags = 0 (order4, light)."""

import csv
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, dst, accel = sys.argv[1], sys.argv[2], sys.argv[3]
    samples = {}
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            # Failed calls are not collapses; the flag side's refusals (LIGHT's EAGAIN)
            # are what that side is timed for.
            if row.get("errno", "0") != "0" and "+" not in row["core"]:
                continue
            key = (row["workload"], row["core"])
            samples.setdefault(key, []).append(float(row["ns_per_2MiB"]) / 1e3)
    order = ["full", "half", "huge", "inplace", "written", "remote", "shmem", "file", "khugepaged",
             "khugepaged-cpu", "floor"]
    # A flag workload's flag side is the core "rust+<workload>".
    flagged = sorted({w for w, c in samples if c == f"rust+{w}"})
    # Workloads this script does not know yet go last, in name order.
    workloads = sorted({w for w, _ in samples if w not in flagged},
                       key=lambda w: (order.index(w) if w in order else len(order), w))
    panels = [(workloads, ("c", "rust"), "C vs Rust core, same boot")]
    if flagged:
        panels.append((flagged, None, "Rust core: flag vs flags = 0"))
    fig, axes = plt.subplots(1, len(panels), figsize=(9 + 3 * (len(panels) - 1), 4.5),
                             gridspec_kw={"width_ratios": [len(p[0]) + 1 for p in panels]},
                             squeeze=False)
    width = 0.38
    for ax, (names, sides, title) in zip(axes[0], panels):
        for i in range(2):
            keys = [(w, sides[i] if sides else ("rust", f"rust+{w}")[i]) for w in names]
            meds = [statistics.median(samples.get(k, [0])) for k in keys]
            lo = [m - min(samples.get(k, [0])) for k, m in zip(keys, meds)]
            hi = [max(samples.get(k, [0])) - m for k, m in zip(keys, meds)]
            xs = [x + (i - 0.5) * width for x in range(len(names))]
            label = f"{sides[i]} core" if sides else ("flags = 0", "the flag (light: EAGAIN)")[i]
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=label)
        ax.set_xticks(range(len(names)), names, rotation=15)
        ax.set_yscale("log")
        ax.set_title(f"{title} ({accel})", fontsize=10)
        ax.legend()
    axes[0][0].set_ylabel("time per 2 MiB (us, median, min-max)")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
