#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The whole test suite: set up, build the debug and the KCSAN kernels and the
# selftests, boot each once under QEMU, count KUnit and selftest TAP, judge
# the consoles. Ends with "N passed, N failed[, N skipped]".
#   scripts/run-tests.sh          the suite: scripts/lists/tests.list on the
#                                 debug kernel, then scripts/lists/kcsan.list
#                                 on the KCSAN kernel
#   scripts/run-tests.sh LIST     one list, on the debug kernel only
#
# THP_KCSAN=0 leaves the KCSAN kernel out (a quicker local run; not the
# suite). Its build from scratch takes about 8 minutes on 2 cores and its
# boot about 7; CI's whole run stays within 45 minutes (README, "Testing").

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
if [ $# = 0 ] && [ "${THP_KCSAN:-1}" != 0 ]; then
	lists+=("$TOP/scripts/lists/kcsan.list")
	flavours+=(kcsan)
fi

for f in "${flavours[@]}"; do
	"$TOP/scripts/build-kernel.sh" "$f"
done
"$TOP/scripts/build-tests.sh" debug "${lists[@]}"

# Our KUnit suites (every #[kunit_tests(name)] in the overlay) must all run
# in the debug boot, and so must the kernel crate's doctests (rust/kernel/mm/
# has ours). The debug config builds no other KUnit test, so nothing is
# filtered out.
suites=$( (grep -rhoE 'kunit_tests\([a-z0-9_]+\)' "$TOP/mm" "$TOP/rust" 2>/dev/null || true) |
	sed 's/kunit_tests(\(.*\))/\1/' | sort -u)
args=(--src "$SRC" --kunit rust_doctests_kernel)
for s in $suites; do args+=(--kunit "$s"); done

accels=""
for i in "${!flavours[@]}"; do
	f=${flavours[$i]} list=${lists[$i]}
	run=$(basename "$list" .list)
	"$TOP/scripts/qemu.sh" "$f" "$list" "$run" hugepages=64
	label=$([ "$f" = debug ] && echo "" || echo "$f")
	args+=(--boot "$label" "$BUILD/logs/$run.console.log" "$BUILD/logs/$run.tests.log" "$list")
	accels="$accels $f:$(cat "$BUILD/logs/$run.accel")"
done

echo
echo "== results (${accels# }, $(( $(date +%s) - start ))s in all; consoles and program" \
	"output in build/logs/<list>.console.log and <list>.tests.log)"
exec "$TOP/scripts/tap-summary.py" "${args[@]}"
