#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Boot a built kernel under QEMU with an initramfs holding busybox-static, the
# test binaries and a run list; the guest runs the list and powers off.
#   scripts/qemu.sh <flavour> <list> <run-name> [extra kernel args]
# Logs: build/logs/<run-name>.console.log (kernel console, ttyS0) and
#       build/logs/<run-name>.tests.log   (program output, ttyS1).
# THP_QEMU_ARGS adds QEMU options (e.g. "-icount shift=0,sleep=off" to make
# the guest's clock count instructions, for the benchmark).

. "$(dirname "$0")/lib.sh"

flavour=$1 list=$2 run=$3
shift 3
extra_args="$*"
O=$BUILD/out-$flavour
kernel=$O/arch/x86/boot/bzImage
logs=$BUILD/logs
mkdir -p "$logs"
console=$logs/$run.console.log
tests=$logs/$run.tests.log
rm -f "$console" "$tests"

# The initramfs.
root=$BUILD/initramfs-$run
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,mnt,tests}
cp /bin/busybox "$root/bin/busybox"
cp "$TOP/scripts/guest/init" "$root/init"
cp "$TOP/scripts/guest/khugepaged-busy" "$root/bin/"
chmod +x "$root/init" "$root/bin/khugepaged-busy"
grep -v '^#' "$list" >"$root/tests/list"
for p in $(list_programs "$root/tests/list"); do
	cp "$BUILD/tests/$p" "$root/tests/"
done
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$BUILD/initramfs-$run.cpio.gz"
rm -rf "$root"

accel=tcg
cpu=max
if [ "${THP_ACCEL:-auto}" = kvm ] || { [ "${THP_ACCEL:-auto}" = auto ] && "$TOP/scripts/kvm-probe.sh" "$kernel" 2>/dev/null; }; then
	accel=kvm
	cpu=host
fi
# TCG runs one vCPU at a time on one host thread unless asked for a thread
# per vCPU (MTTCG): then the guest's CPUs really run at once, which races
# need (KCSAN only sees an access race with another that is under way), and
# the boot gets both host cores. -icount needs the single thread.
# THP_TCG_THREAD=single|multi overrides the choice.
accel_opt=$accel
if [ "$accel" = tcg ]; then
	tcg_thread=${THP_TCG_THREAD:-multi}
	case "${THP_QEMU_ARGS:-}" in *icount*) tcg_thread=single ;; esac
	accel_opt="tcg,thread=$tcg_thread"
	echo "tcg ($tcg_thread-threaded)" >"$logs/$run.accel"
else
	echo "$accel" >"$logs/$run.accel"
fi
log "booting $flavour kernel under QEMU ($accel_opt), run '$run'"

timeout_s=${THP_QEMU_TIMEOUT:-3600}

# KASAN kernels boot with 4-level page tables. identify_cpu() clears the
# boot CPU's feature bits before it detects them again, and in that window
# pgtable_l5_enabled() (cpu_feature_enabled(X86_FEATURE_LA57)) is false, so
# an interrupt taken there has KASAN check a 5-level direct-map address
# against 4-level bounds: "BUG: KASAN: wild-memory-access in
# do_raw_spin_lock" from handle_edge_irq(), RIP in identify_cpu(). Seen in 6
# of 19 boots of the debug kernel under QEMU's -cpu max (LA57) on
# 2026-12-02, before any test ran; an upstream 7.3.4 bug, not the collapse's.
if grep -q '^CONFIG_KASAN=y' "$O/.config" 2>/dev/null; then
	extra_args="no5lvl $extra_args"
fi

# A NUMA kernel gets two nodes of 2 GiB, one CPU each (ACPI SRAT), so that
# the collapse's node choice meets more than one node. Each CPU is a socket
# of its own: CPUs of one socket share a cache, which the scheduler refuses
# (with a warning) across nodes.
mem=(-smp 2 -m 4G)
if grep -q '^CONFIG_NUMA=y' "$O/.config" 2>/dev/null; then
	mem=(-smp 2,sockets=2,cores=1,threads=1 -m 4G -object memory-backend-ram,size=2G,id=m0
		-object memory-backend-ram,size=2G,id=m1
		-numa node,nodeid=0,cpus=0,memdev=m0
		-numa node,nodeid=1,cpus=1,memdev=m1)
fi

boot() {
	rm -f "$console" "$tests"
	# A fresh XFS image for the "file" memory type (needs >= 300 MB).
	disk=$BUILD/xfs-$run.img
	rm -f "$disk"
	truncate -s 320M "$disk"
	mkfs.xfs -q -f "$disk"
	set +e
	timeout --foreground -k 10 "$timeout_s" qemu-system-x86_64 \
		-accel "$accel_opt" -cpu "$cpu" "${mem[@]}" \
		-kernel "$kernel" -initrd "$BUILD/initramfs-$run.cpio.gz" \
		-append "console=ttyS0 panic=-1 oops=panic softlockup_panic=0 nokaslr $extra_args" \
		-drive "file=$disk,if=virtio,format=raw" \
		-display none -monitor none -no-reboot \
		-serial "file:$console" -serial "file:$tests" ${THP_QEMU_ARGS:-} </dev/null &
	qpid=$!
	tail -n +1 -F "$tests" 2>/dev/null --pid=$qpid | sed -u 's/\r$//' &
	tpid=$!
	wait $qpid
	rc=$?
	wait $tpid
	set -e
	rm -f "$disk"
	if [ $rc = 124 ]; then
		echo "# HARNESS TIMEOUT after ${timeout_s}s" >>"$tests"
	fi
}

boot
# Under TCG with 2 vCPUs the kernel has been seen to die while booting, before
# any test ran, with "Oops: int3" in code that a static key flip was patching
# (sched_clock, timekeeping): a race of QEMU's translated code with the
# kernel's live text patching. Only that crash, and only before the harness
# started, gets one more boot; the crashed console is kept next to the logs.
if [ "$accel" = tcg ] && ! grep -q '^# HARNESS START' "$tests" 2>/dev/null &&
	grep -q '^Oops: int3' "$console" 2>/dev/null; then
	cp "$console" "$logs/$run.console.early-crash.log"
	log "the kernel died while booting (Oops: int3, before any test; console kept in build/logs/$run.console.early-crash.log): booting once more"
	boot
fi
exit 0
