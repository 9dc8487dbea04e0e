#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build a kernel flavour out of tree: scripts/build-kernel.sh debug|release
# Config = x86_64 tinyconfig + configs/base.config + configs/<flavour>.config,
# merged with the kernel's scripts/kconfig/merge_config.sh. A fragment whose
# second line is "# base: <other>" is merged on top of configs/<other>.config.

. "$(dirname "$0")/lib.sh"

flavour=${1:-debug}
[ -f "$TOP/configs/$flavour.config" ] || die "unknown kernel flavour '$flavour'"
# THP_TREE_SYNCED=1: the caller ran setup.sh and sync-tree.sh already (two
# builds at once must not sync the shared source tree under each other).
if [ "${THP_TREE_SYNCED:-0}" != 1 ]; then
	"$TOP/scripts/setup.sh"
	"$TOP/scripts/sync-tree.sh"
fi

O=$BUILD/out-$flavour
mkdir -p "$O"

# Generate the config in a scratch folder, install it only when it changed.
cfg=$BUILD/.config-$flavour
rm -rf "$cfg" && mkdir -p "$cfg"
make -s -C "$SRC" O="$cfg" LLVM=$LLVM_SUFFIX tinyconfig >/dev/null
frags=("$TOP/configs/base.config")
base=$(sed -n '2s/^# base: *//p' "$TOP/configs/$flavour.config")
[ -z "$base" ] || frags+=("$TOP/configs/$base.config")
frags+=("$TOP/configs/$flavour.config")
(cd "$cfg" && "$SRC/scripts/kconfig/merge_config.sh" -m -O "$cfg" "$cfg/.config" "${frags[@]}" >/dev/null)
make -s -C "$SRC" O="$cfg" LLVM=$LLVM_SUFFIX olddefconfig >/dev/null

# Every value a fragment asks for must survive olddefconfig.
bad=""
for f in "${frags[@]}"; do
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			grep -qxF "$line" "$cfg/.config" || bad="$bad ${line}" ;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }; opt=${opt%% *}
			grep -q "^$opt=" "$cfg/.config" && bad="$bad $opt=n" ;;
		esac
	done <"$f"
done
[ -z "$bad" ] || die "config values lost by olddefconfig ($flavour):$bad"

if ! cmp -s "$cfg/.config" "$O/.config"; then
	log "config ($flavour) changed"
	cp "$cfg/.config" "$O/.config"
fi
rm -rf "$cfg"

blog=$BUILD/build-$flavour.log
log "building $flavour kernel in $O (full output: $blog)"
# Not -s: kbuild's one line per step feeds the progress lines.
set +o pipefail
make -C "$SRC" O="$O" LLVM=$LLVM_SUFFIX -j"$(jobs)" ${CLIPPY:+CLIPPY=1} bzImage 2>&1 |
	build_progress "$flavour kernel" "$blog" "$O/.thp-build-steps"
rc=${PIPESTATUS[0]}
set -o pipefail
if [ "$rc" != 0 ]; then
	tail -n 40 "$blog" >&2
	die "the $flavour kernel build failed (exit $rc): see $blog"
fi
log "built $O/arch/x86/boot/bzImage"
