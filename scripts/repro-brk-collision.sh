#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Reproduces, on purpose, the collision that made upstream's khugepaged
# selftest abort now and then when it was built as a static non-PIE: its brk
# heap, randomized over the 1 GiB above the binary, landing on the test's
# fixed BASE_ADDR (1 GiB). Runs the non-PIE build with its heap placed at,
# just below and far from 1 GiB, on each core (scripts/lists/brk-collision.list)
# and prints how each run ended. Not part of the suite.

. "$(dirname "$0")/lib.sh"

list=$TOP/scripts/lists/brk-collision.list
"$TOP/scripts/build-kernel.sh" debug
# The launcher, as the harness builds every program.
mkdir -p "$BUILD/nopie"
awk '$4 != "./khugepaged_nopie"' "$list" >"$BUILD/nopie/launcher.list"
"$TOP/scripts/build-tests.sh" debug "$BUILD/nopie/launcher.list"
# The selftest, position-dependent, which the harness would refuse.
O=$BUILD/out-debug
nopie=$BUILD/nopie
make -s -C "$SRC/tools/testing/selftests/mm" OUTPUT="$nopie" \
	KHDR_INCLUDES="-isystem $O/usr/include" LDFLAGS=-static CC=gcc "$nopie/khugepaged"
cp "$nopie/khugepaged" "$BUILD/tests/khugepaged_nopie"
"$TOP/scripts/qemu.sh" debug "$list" brk-collision "kunit.filter_glob=none"
grep -E '^# RUN|^# thp_brk_pick|^Bail out|invalid pointer|^# Totals' \
	"$BUILD/logs/brk-collision.tests.log" | grep -v nopie-usage
