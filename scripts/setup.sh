#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Install everything the build and the QEMU harness need. Idempotent and quiet
# when there is nothing to do. EXTRA_DEB_PKGS adds packages (the benchmark's
# plot needs python3-matplotlib).

. "$(dirname "$0")/lib.sh"

DEB_PKGS="clang-19 lld-19 llvm-19 libclang-19-dev qemu-system-x86 busybox-static
	  bc flex bison libelf-dev libssl-dev cpio xz-utils xfsprogs make gcc
	  libc6-dev python3 zstd rsync liburing-dev ${EXTRA_DEB_PKGS:-}"
BINDGEN_VERSION=0.72.1

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

command -v rustup >/dev/null || die "rustup not found: this machine's Rust toolchain is expected"
sysroot=$(rustc --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library" ]; then
	log "adding rust-src"
	rustup component add rust-src >/dev/null 2>&1
fi
for c in rustfmt clippy; do
	rustup component list --installed 2>/dev/null | grep -q "^$c" ||
		rustup component add "$c" >/dev/null 2>&1 || true
done

# bindgen-cli compiles for about 1.5 min of two cores while apt-get mostly
# waits on the network: when a linker is there already, both run at once.
bindgen_ok() { bindgen --version 2>/dev/null | grep -q " $BINDGEN_VERSION\$"; }
install_bindgen() {
	cargo install --quiet --locked bindgen-cli --version "$BINDGEN_VERSION"
}
bindgen_job=""
if ! bindgen_ok && command -v cc >/dev/null; then
	log "installing bindgen-cli $BINDGEN_VERSION in the background (a few minutes)"
	install_bindgen &
	bindgen_job=$!
fi

missing=""
for p in $DEB_PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	log "installing Debian packages:$missing"
	export DEBIAN_FRONTEND=noninteractive
	sudo_ apt-get update -qq >/dev/null
	# shellcheck disable=SC2086
	sudo_ apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ -n "$bindgen_job" ]; then
	wait "$bindgen_job" || die "installing bindgen-cli $BINDGEN_VERSION failed"
elif ! bindgen_ok; then
	log "installing bindgen-cli $BINDGEN_VERSION (a few minutes)"
	install_bindgen
fi
exit 0
