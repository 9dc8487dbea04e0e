#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Succeed iff KVM can boot the given kernel to userspace within a short time.
# On some machines here KVM is present but hangs after the BIOS.

. "$(dirname "$0")/lib.sh"

kernel=$1
[ -w /dev/kvm ] || exit 1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/root/bin"
cp /bin/busybox "$tmp/root/bin/"
printf '#!/bin/busybox sh\n/bin/busybox echo KVM-PROBE-OK\n/bin/busybox reboot -f\n' >"$tmp/root/init"
chmod +x "$tmp/root/init"
(cd "$tmp/root" && find . | cpio -o -H newc --quiet | gzip -1) >"$tmp/probe.cpio.gz"
(timeout -k 5 60 qemu-system-x86_64 -accel kvm -cpu host -m 512M -smp 1 \
	-kernel "$kernel" -initrd "$tmp/probe.cpio.gz" -append "console=ttyS0 panic=-1" \
	-display none -monitor none -no-reboot -serial "file:$tmp/out" </dev/null >/dev/null 2>&1) \
	2>/dev/null || true
grep -q KVM-PROBE-OK "$tmp/out" 2>/dev/null
