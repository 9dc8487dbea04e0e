#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The whole test suite: set up, build the debug kernel and the selftests,
# boot once under QEMU, count KUnit and selftest TAP, judge the console.
# Ends with "N passed, N failed[, N skipped]".
#   scripts/run-tests.sh [list]      (default: scripts/lists/tests.list)

. "$(dirname "$0")/lib.sh"

list=${1:-$TOP/scripts/lists/tests.list}
run=$(basename "$list" .list)
start=$(date +%s)

"$TOP/scripts/build-kernel.sh" debug
"$TOP/scripts/build-tests.sh" debug "$list"

# Our KUnit suites (every #[kunit_tests(name)] in the overlay) must all run,
# and so must the kernel crate's doctests (rust/kernel/mm/ has ours). The
# debug config builds no other KUnit test, so nothing is filtered out.
suites=$( (grep -rhoE 'kunit_tests\([a-z0-9_]+\)' "$TOP/mm" "$TOP/rust" 2>/dev/null || true) |
	sed 's/kunit_tests(\(.*\))/\1/' | sort -u)
kargs=(--kunit rust_doctests_kernel)
for s in $suites; do kargs+=(--kunit "$s"); done

"$TOP/scripts/qemu.sh" debug "$list" "$run" hugepages=64

echo
echo "== results ($(cat "$BUILD/logs/$run.accel"), $(( $(date +%s) - start ))s in all;" \
	"console log: build/logs/$run.console.log, program output: build/logs/$run.tests.log)"
exec "$TOP/scripts/tap-summary.py" --console "$BUILD/logs/$run.console.log" \
	--tests "$BUILD/logs/$run.tests.log" --list "$list" "${kargs[@]}"
