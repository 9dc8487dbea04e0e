#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The benchmark: build the release-like kernel, boot it under QEMU and time
# the C and Rust collapse cores on the same workloads, interleaved, in one
# boot. Writes build/bench/bench.csv, table.txt and bench.png.

. "$(dirname "$0")/lib.sh"

EXTRA_DEB_PKGS="python3-matplotlib" "$TOP/scripts/setup.sh"
list=$TOP/scripts/lists/bench.list
"$TOP/scripts/build-kernel.sh" release
"$TOP/scripts/build-tests.sh" release "$list"
"$TOP/scripts/qemu.sh" release "$list" bench ""
out=$BUILD/bench
mkdir -p "$out"
log=$BUILD/logs/bench.tests.log
grep -q '^# HARNESS DONE' "$log" ||
	die "the benchmark did not finish; console log: $BUILD/logs/bench.console.log"
grep '^CSV,' "$log" | cut -d, -f2- >"$out/bench.csv"
accel=$(cat "$BUILD/logs/bench.accel")
{
	echo "accelerator: $accel; kernel: release-like config; $(nproc) host cores"
	sed -n '/^workload /,/ mincore() wait/p' "$log"
} >"$out/table.txt"
/usr/bin/python3 "$TOP/scripts/bench-plot.py" "$out/bench.csv" "$out/bench.png" "$accel"
cat "$out/table.txt"
echo "(CSV: build/bench/bench.csv, plot: build/bench/bench.png)"
