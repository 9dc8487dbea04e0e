#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The whole test suite: set up, build the debug kernel and the selftests,
# boot it once under QEMU, count KUnit and selftest TAP, judge the console.
# Ends with "N passed, N failed[, N skipped]".
#   scripts/run-tests.sh          the suite: scripts/lists/tests.list on the
#                                 debug kernel (what make test and CI run)
#   scripts/run-tests.sh LIST     one list, on the debug kernel only
#
# THP_KCSAN=1 (make test-kcsan) also builds the KCSAN kernel and boots it
# with scripts/lists/kcsan.list, the race and stress programs. CI leaves it
# out: on a slow host of CI's kind each kernel takes 33 minutes to build on
# 2 cores (11 on a fast one), and with the second kernel make test took 84
# minutes in CI on 2026-12-05, against CI's 90 and the 45 it should keep to.
# Run it before merging a change to the collapse's locking.

. "$(dirname "$0")/lib.sh"

start=$(date +%s)
# Packages first (python3 runs the summary); a fresh clone has no build/ yet.
"$TOP/scripts/setup.sh"
mkdir -p "$BUILD"
# The summary's rules first, on made-up boots: a summary that could be talked
# into a pass must not judge this run.
"$TOP/scripts/test-tap-summary.py" >"$BUILD/test-tap-summary.log" ||
	die "tap-summary.py breaks its own rules: see $BUILD/test-tap-summary.log"
lists=("${1:-$TOP/scripts/lists/tests.list}")
flavours=(debug)
if [ $# = 0 ] && [ "${THP_KCSAN:-0}" = 1 ]; then
	lists+=("$TOP/scripts/lists/kcsan.list")
	flavours+=(kcsan)
fi

# The thp-agent's host tests (tools/mm/thp-agent, its own Cargo workspace, its
# crates from crates.io) run beside the kernel builds, niced; the summary
# counts them on a line of their own.
# (The whole suite only, not a run of one list.)
agent_log=$BUILD/logs/thp-agent-cargo-test.log
agent_test=""
if [ $# = 0 ]; then
	mkdir -p "$BUILD/logs"
	# Then its release build, which build-tests.sh puts in the guest (it
	# waits on Cargo's lock if this is not done yet).
	(cd "$TOP/tools/mm/thp-agent" &&
		CARGO_TARGET_DIR="$BUILD/thp-agent" nice -n 10 cargo test --no-fail-fast \
			>"$agent_log" 2>&1
		rc=$?
		CARGO_TARGET_DIR="$BUILD/thp-agent" nice -n 10 cargo build --release --quiet \
			>/dev/null 2>&1
		exit $rc) &
	agent_test=$!
fi

# The KCSAN kernel builds beside the debug kernel and the debug boot, at the
# lowest priority: the debug build leaves a core idle in its serial steps
# (each Rust crate is one rustc, the links, kallsyms) and the boot leaves
# about 40% of two cores idle (tests that wait for khugepaged or sleep between
# rounds); the background build soaks those up. The KCSAN boot comes last and
# waits for it. Both builds share one source tree, synced once here, first.
# The background build's output goes to a file, not among the tests'.
"$TOP/scripts/sync-tree.sh"
export THP_TREE_SYNCED=1
kcsan_build=""
if [ "${#flavours[@]}" -gt 1 ]; then
	log "building the kcsan kernel in the background (output: $BUILD/build-kcsan.out)"
	# Its own session, so that a failure here stops the whole build. A new
	# session is a new scheduler autogroup, which would get as much CPU as
	# ours whatever its tasks' nice: the group itself gets nice 19.
	setsid sh -c 'echo 19 >/proc/self/autogroup 2>/dev/null; exec nice -n 19 "$@"' sh \
		"$TOP/scripts/build-kernel.sh" kcsan >"$BUILD/build-kcsan.out" 2>&1 &
	kcsan_build=$!
	trap 'kill -- -"$kcsan_build" 2>/dev/null || true' EXIT
fi
"$TOP/scripts/build-kernel.sh" debug
"$TOP/scripts/build-tests.sh" debug "${lists[@]}"

# Our KUnit suites (every #[kunit_tests(name)] in the overlay) must all run
# in the debug boot, and so must the kernel crate's doctests (rust/kernel/mm/
# has ours). The debug config builds no other KUnit test, so nothing is
# filtered out.
suites=$( (grep -rhoE 'kunit_tests\([a-z0-9_]+\)' "$TOP/mm" "$TOP/rust" 2>/dev/null || true) |
	sed 's/kunit_tests(\(.*\))/\1/' | sort -u)
args=(--src "$SRC" --kunit rust_doctests_kernel)
for s in $suites; do args+=(--kunit "$s"); done

# Its exit status is the summary's to judge, from the log.
if [ -n "$agent_test" ]; then
	wait "$agent_test" || true
	args+=(--cargo "$agent_log")
fi

accels=""
for i in "${!flavours[@]}"; do
	f=${flavours[$i]} list=${lists[$i]}
	run=$(basename "$list" .list)
	if [ "$f" = kcsan ]; then
		wait "$kcsan_build" || {
			tail -n 40 "$BUILD/build-kcsan.out" >&2
			die "the kcsan kernel build failed: see $BUILD/build-kcsan.out"
		}
		log "kcsan kernel built"
	fi
	"$TOP/scripts/qemu.sh" "$f" "$list" "$run" hugepages=64
	label=$([ "$f" = debug ] && echo "" || echo "$f")
	args+=(--boot "$label" "$BUILD/logs/$run.console.log" "$BUILD/logs/$run.tests.log" "$list")
	accels="$accels $f:$(cat "$BUILD/logs/$run.accel")"
done

echo
echo "== results (${accels# }, $(( $(date +%s) - start ))s in all; consoles and program" \
	"output in build/logs/<list>.console.log and <list>.tests.log)"
exec "$TOP/scripts/tap-summary.py" "${args[@]}"
