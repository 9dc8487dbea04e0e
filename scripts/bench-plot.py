#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Plot the benchmark CSV: time per 2 MiB, C core vs Rust core, per workload."""

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
            key = (row["workload"], row["core"])
            samples.setdefault(key, []).append(float(row["ns_per_2MiB"]) / 1e3)
    order = ["full", "half", "huge", "remote", "shmem", "file", "khugepaged",
             "khugepaged-cpu"]
    # Workloads this script does not know yet go last, in name order.
    workloads = sorted({w for w, _ in samples},
                       key=lambda w: (order.index(w) if w in order else len(order), w))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.38
    for i, core in enumerate(("c", "rust")):
        meds = [statistics.median(samples.get((w, core), [0])) for w in workloads]
        lo = [m - min(samples.get((w, core), [0])) for w, m in zip(workloads, meds)]
        hi = [max(samples.get((w, core), [0])) - m for w, m in zip(workloads, meds)]
        xs = [x + (i - 0.5) * width for x in range(len(workloads))]
        ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=f"{core} core")
    ax.set_xticks(range(len(workloads)), workloads, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("time per 2 MiB (us, median, min-max)")
    ax.set_title(f"THP collapse: C vs Rust core, same boot ({accel})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
