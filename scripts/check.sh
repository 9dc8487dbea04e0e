#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# House checks on our code: rustfmt, a CLIPPY=1 build of the Rust objects,
# cargo fmt and clippy on the thp-agent, checkpatch.pl on the C glue, the
# selftests and the patch series.
# Fails on any finding.

. "$(dirname "$0")/lib.sh"

"$TOP/scripts/build-kernel.sh" debug >/dev/null
O=$BUILD/out-debug
fail=0

# The kernel's Rust (the thp-agent is a Cargo workspace of its own, below).
rs=$(cd "$TOP" && git ls-files '*.rs' | grep -v '^tools/mm/thp-agent/')
log "rustfmt"
for f in $rs; do
	rustfmt --check --edition 2021 --config-path "$SRC/.rustfmt.toml" "$SRC/$f" ||
		fail=1
done

log "clippy"
# The collapse crate, and the kernel crate when we add to it (rust/kernel/mm/).
objs=$(for f in $rs; do
	case "$f" in
	mm/thp_collapse.rs) echo mm/thp_collapse.o ;;
	rust/kernel/*) echo rust/kernel.o ;;
	esac
done | sort -u)
touch "$SRC/mm/thp_collapse.rs" "$SRC/rust/kernel/lib.rs"
out=$(make -s -C "$SRC" O="$O" LLVM=$LLVM_SUFFIX CLIPPY=1 $objs 2>&1) || fail=1
if [ -n "$out" ]; then
	echo "$out"
	fail=1
fi

log "thp-agent: cargo fmt, clippy"
(cd "$TOP/tools/mm/thp-agent" && cargo fmt --check &&
	CARGO_TARGET_DIR="$BUILD/thp-agent" cargo clippy --quiet --all-targets -- -D warnings) ||
	fail=1

log "tap-summary.py rules"
"$TOP/scripts/test-tap-summary.py" || fail=1

log "checkpatch"
cfiles=$(cd "$TOP" && git ls-files '*.c' '*.h')
for f in $cfiles; do
	# From the build tree. (-f cannot see that patch 0006 documents the
	# boot parameter in kernel-parameters.txt, hence the ignore; a Rust
	# helper is named after the C function it forwards to, page flag
	# tests such as PageAnonExclusive() included.)
	ignore=UNDOCUMENTED_SETUP
	case "$f" in rust/helpers/*) ignore=$ignore,CAMELCASE ;; esac
	(cd "$SRC" && ./scripts/checkpatch.pl --quiet --strict --ignore "$ignore" -f "$f") || fail=1
done
for p in "$TOP"/patches/*.patch; do
	# From the build tree too: inside our git checkout checkpatch takes
	# the patch for a file of the checkout.
	(cd "$SRC" && ./scripts/checkpatch.pl --quiet "$p") || fail=1
done

[ $fail = 0 ] && log "all checks clean"
exit $fail
