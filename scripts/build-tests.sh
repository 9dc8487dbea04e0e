#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the selftests the harness runs, statically linked, from the build
# tree (upstream sources unchanged, plus ours from the overlay):
#   scripts/build-tests.sh <flavour> <list>...
# Binaries land in build/tests/.
#
# They are static PIEs, placed high like the dynamic PIEs distributions build.
# A static non-PIE binary sits at 4 MiB and the kernel randomizes its brk heap
# over the next 1 GiB (arch_randomize_brk()), so in about 0.7 % of runs the
# heap lands at upstream khugepaged's fixed BASE_ADDR (1 GiB): the test's
# mmap() there fails ("Failed to allocate VMA at 0x40000000"), or its
# MREMAP_FIXED moves replace the heap (free(): invalid pointer), on either
# collapse core.

. "$(dirname "$0")/lib.sh"

flavour=$1; shift
O=$BUILD/out-$flavour
T=$BUILD/tests
mkdir -p "$T"

# UAPI headers of the kernel under test.
make -s -C "$SRC" O="$O" LLVM=$LLVM_SUFFIX headers_install >/dev/null

# Every program named by the lists (first word of the command, "./x").
progs=$(for l in "$@"; do list_programs "$l"; done | sort -u)
targets=""
for p in $progs; do
	if [ -f "$SRC/tools/testing/selftests/mm/$p.c" ]; then
		targets="$targets $T/$p"
	elif [ -f "$SRC/tools/mm/$p.c" ]; then
		gcc -static-pie -O2 -Wall -Werror -pthread -isystem "$O/usr/include" \
			-o "$T/$p" "$SRC/tools/mm/$p.c"
	elif [ "$p" = thp-agent ]; then
		# The Rust agent, a static PIE of its own Cargo workspace.
		(cd "$TOP/tools/mm/thp-agent" &&
			CARGO_TARGET_DIR="$BUILD/thp-agent" cargo build --release --quiet) ||
			die "the thp-agent did not build"
		cp "$BUILD/thp-agent/x86_64-unknown-linux-gnu/release/thp-agent" "$T/$p"
	else
		die "no source for test program '$p'"
	fi
done
if [ -n "$targets" ]; then
	# Let the selftests probe for optional libraries (liburing) afresh.
	rm -f "$SRC/tools/testing/selftests/mm/local_config.h_gen" \
		"$SRC/tools/testing/selftests/mm/local_config.mk"
	# shellcheck disable=SC2086
	make -s -C "$SRC/tools/testing/selftests/mm" OUTPUT="$T" \
		KHDR_INCLUDES="-isystem $O/usr/include" LDFLAGS=-static-pie \
		CC=gcc $targets
fi
# A position-dependent binary would bring the BASE_ADDR collision back.
for p in $progs; do
	readelf -h "$T/$p" | grep -q 'Type: *DYN' ||
		die "$T/$p is not a static PIE"
done
