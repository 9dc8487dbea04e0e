# SPDX-License-Identifier: GPL-2.0
#
# Front door. Every target sets up what it needs (packages, toolchain, kernel
# source) on first use; see README.md.

.PHONY: run test test-kcsan soak bench bench-icount profile setup kernel kernel-release tests check clean distclean

run:			## build the kernel, boot it, run the collapse demo
	scripts/run-demo.sh

test:			## the whole test suite; ends with "N passed, N failed"
	scripts/run-tests.sh

test-kcsan:		## make test, then the race and stress programs on a KCSAN kernel
	THP_KCSAN=1 scripts/run-tests.sh

soak:			## the random-operation stress for SOAK_S s per core (SOAK_SEED= reruns), then thp_collapse_multi at 200 rounds
	scripts/run-soak.sh

bench:			## release kernel: C vs Rust core timings, CSV and PNG
	scripts/run-bench.sh time

bench-icount:		## the same under QEMU -icount: instructions per 2 MiB
	scripts/run-bench.sh icount

profile:		## profile kernel under -icount: where each core's instructions go
	scripts/run-bench.sh profile

setup:			## install packages and toolchain, fetch the kernel source
	scripts/setup.sh
	scripts/sync-tree.sh

kernel:			## build the debug kernel only
	scripts/build-kernel.sh debug

kernel-release:		## build the release-like kernel only
	scripts/build-kernel.sh release

check:			## rustfmt, clippy and checkpatch on our code
	scripts/check.sh

clean:			## remove build outputs, keep the kernel source
	rm -rf build/out-* build/tests build/logs build/initramfs-* build/*.img

distclean:		## remove the whole build folder
	rm -rf build
