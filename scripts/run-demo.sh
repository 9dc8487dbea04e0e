#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The main job: build the kernel, boot it under QEMU and run the demo, which
# collapses anonymous memory and shows which core did it and its counters.

. "$(dirname "$0")/lib.sh"

list=$TOP/scripts/lists/demo.list
"$TOP/scripts/build-kernel.sh" debug
"$TOP/scripts/build-tests.sh" debug "$list"
"$TOP/scripts/qemu.sh" debug "$list" demo "kunit.filter_glob=none"
grep -q '^# HARNESS DONE' "$BUILD/logs/demo.tests.log" ||
	die "the demo did not finish; console log: $BUILD/logs/demo.console.log"
echo "(accelerator: $(cat "$BUILD/logs/demo.accel"); console log: build/logs/demo.console.log)"
