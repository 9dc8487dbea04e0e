#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The seeded random-operation stress (thp_collapse_stress) for as long as
# asked, on both cores, in one boot of the debug kernel:
#   SOAK_S=3600 [SOAK_SEED=N] [SOAK_FLAVOUR=debug|kcsan] scripts/run-soak.sh
# SOAK_S is the time per core. The program prints its seed ("# seed N"); pass
# it back as SOAK_SEED to rerun the same sequence of operations.
# Then the several-collapsers test (thp_collapse_multi) with 200 rounds per
# core and memory type, which make test's time share does not give the XFS
# file (about half a second a round); its time limit (30 min) still applies,
# and each case prints the rounds it ran.

. "$(dirname "$0")/lib.sh"

secs=${SOAK_S:-600}
flavour=${SOAK_FLAVOUR:-debug}
seed=${SOAK_SEED:+-s $SOAK_SEED}
list=$BUILD/soak.list
mkdir -p "$BUILD"
multi_s=1800
{
	printf 'thp_collapse_stress - %d ./thp_collapse_stress -t %d %s -d /mnt/xfs\n' \
		$((2 * secs + 600)) "$secs" "$seed"
	printf 'thp_collapse_multi - %d ./thp_collapse_multi -d /mnt/xfs -r 200 -T %d\n' \
		$((multi_s + 300)) "$multi_s"
} >"$list"
"$TOP/scripts/build-kernel.sh" "$flavour"
"$TOP/scripts/build-tests.sh" debug "$list"
THP_QEMU_TIMEOUT=$((2 * secs + multi_s + 1500)) "$TOP/scripts/qemu.sh" "$flavour" "$list" soak hugepages=64
grep -m1 '^# seed' "$BUILD/logs/soak.tests.log" || true
exec "$TOP/scripts/tap-summary.py" --src "$SRC" \
	--boot "$([ "$flavour" = debug ] || echo "$flavour")" \
	"$BUILD/logs/soak.console.log" "$BUILD/logs/soak.tests.log" "$list"
