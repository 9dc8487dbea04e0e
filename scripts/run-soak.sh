#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The seeded random-operation stress (thp_collapse_stress) for as long as
# asked, on both cores, in one boot of the debug kernel:
#   SOAK_S=3600 [SOAK_SEED=N] [SOAK_FLAVOUR=debug|kcsan] scripts/run-soak.sh
# SOAK_S is the time per core. The program prints its seed ("# seed N"); pass
# it back as SOAK_SEED to rerun the same sequence of operations.

. "$(dirname "$0")/lib.sh"

secs=${SOAK_S:-600}
flavour=${SOAK_FLAVOUR:-debug}
seed=${SOAK_SEED:+-s $SOAK_SEED}
list=$BUILD/soak.list
mkdir -p "$BUILD"
printf 'thp_collapse_stress - %d ./thp_collapse_stress -t %d %s -d /mnt/xfs\n' \
	$((2 * secs + 600)) "$secs" "$seed" >"$list"
"$TOP/scripts/build-kernel.sh" "$flavour"
"$TOP/scripts/build-tests.sh" debug "$list"
THP_QEMU_TIMEOUT=$((2 * secs + 1200)) "$TOP/scripts/qemu.sh" "$flavour" "$list" soak hugepages=64
grep -m1 '^# seed' "$BUILD/logs/soak.tests.log" || true
exec "$TOP/scripts/tap-summary.py" --src "$SRC" \
	--boot "$([ "$flavour" = debug ] || echo "$flavour")" \
	"$BUILD/logs/soak.console.log" "$BUILD/logs/soak.tests.log" "$list"
