#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The benchmark: build a kernel, boot it under QEMU and measure the C and the
# Rust collapse cores on the same workloads, interleaved, in one boot.
#   scripts/run-bench.sh [time|icount|profile]
# time     (make bench) release-like kernel, wall-clock times and the mmap
#          lock stall, of the cores and of the flags; then the thp-agent
#          against a random reader (thp_agent_bench); writes
#          build/bench/bench.csv, table.txt, bench.png, agent.txt and
#          agent.csv.
# icount   (make bench-icount) the same kernel under QEMU -icount, where the
#          guest's clock counts executed instructions: a deterministic count
#          of the work per 2 MiB, without the mincore() thread or khugepaged
#          (whose sleeps do not count); writes build/bench/icount-table.txt.
# profile  (make profile) the profile kernel (release + high-resolution
#          timers) under -icount, with kernel instruction-pointer samples per
#          core: which functions the instructions of each core are spent in;
#          writes build/bench/profile.txt.

. "$(dirname "$0")/lib.sh"

mode=${1:-time}
case "$mode" in
time) flavour=release list=$TOP/scripts/lists/bench.list ;;
icount) flavour=release list=$TOP/scripts/lists/bench-icount.list ;;
profile) flavour=profile list=$TOP/scripts/lists/profile.list ;;
*) die "unknown benchmark mode '$mode'" ;;
esac
run=$(basename "$list" .list)
icount="-icount shift=0,sleep=off"

EXTRA_DEB_PKGS="python3-matplotlib" "$TOP/scripts/setup.sh"
"$TOP/scripts/build-kernel.sh" "$flavour"
"$TOP/scripts/build-tests.sh" "$flavour" "$list"
if [ "$mode" = time ]; then
	"$TOP/scripts/qemu.sh" "$flavour" "$list" "$run" ""
else
	# -icount needs TCG.
	THP_ACCEL=tcg THP_QEMU_ARGS="$icount" "$TOP/scripts/qemu.sh" "$flavour" "$list" "$run" ""
fi
out=$BUILD/bench
mkdir -p "$out"
log=$BUILD/logs/$run.tests.log
grep -q '^# HARNESS DONE' "$log" ||
	die "the benchmark did not finish; console log: $BUILD/logs/$run.console.log"
accel=$(cat "$BUILD/logs/$run.accel")
table() { tr -d '\r' <"$log" | sed -n '/^workload  *c med us/,/^ and schedstat)$/p'; }
case "$mode" in
time)
	grep '^CSV,' "$log" | cut -d, -f2- >"$out/bench.csv"
	{
		echo "accelerator: $accel; kernel: release-like config; $(nproc) host cores"
		table
	} >"$out/table.txt"
	/usr/bin/python3 "$TOP/scripts/bench-plot.py" "$out/bench.csv" "$out/bench.png" "$accel"
	{
		echo "accelerator: $accel; kernel: release-like config; $(nproc) host cores"
		sed -n '/^.thp-agent status. of the reader/,/^throughput after/p' "$log" |
			{ grep -v '^AGENTBENCH,' || true; }
	} >"$out/agent.txt"
	{ grep '^AGENTBENCH,' "$log" || true; } | cut -d, -f2- |
		awk '!(/^core,/ && seen++)' >"$out/agent.csv"
	[ -s "$out/agent.csv" ] || log "warning: the agent benchmark printed no results"
	cat "$out/table.txt" "$out/agent.txt"
	echo "(CSV: build/bench/bench.csv, plot: build/bench/bench.png, agent: build/bench/agent.txt and agent.csv)"
	;;
icount)
	{
		echo "accelerator: $accel with $icount (1 ns of guest time = 1 instruction:"
		echo "the 'us' columns are thousands of instructions per 2 MiB); release-like kernel"
		table | grep -v '^khugepaged '
	} >"$out/icount-table.txt"
	cat "$out/icount-table.txt"
	;;
profile)
	{
		echo "accelerator: $accel with $icount; profile kernel; samples every 40 us of"
		echo "task clock (40000 instructions) during MADV_COLLAPSE; functions with >= 5 samples"
		grep '^kernel samples' "$log"
		grep '^PROF,' "$log" | awk -F, '{ printf "%-79.79s %10s %12s\n", $2, $3, $4 }'
	} >"$out/profile.txt"
	head -n 60 "$out/profile.txt"
	echo "(whole profile: build/bench/profile.txt; per instruction: PROFIP lines of $log)"
	;;
esac
