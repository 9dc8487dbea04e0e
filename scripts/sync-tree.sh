#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Produce the build tree: pristine 7.3.4 + patches/ series + overlay files.
#
# The build tree is a hard-linked copy of the pristine tree. Every sync
# recomputes, in a staging folder, the final content of each file that the
# series or the overlay touches (and of each file an earlier sync touched),
# starting from the pristine copy; then only files whose content differs are
# replaced in the build tree. Re-running after any change therefore re-applies
# cleanly, never leaves a half-patched tree, and keeps timestamps of unchanged
# files so that incremental kernel builds stay incremental.

. "$(dirname "$0")/lib.sh"

"$TOP/scripts/fetch-kernel.sh"

if [ ! -f "$SRC/.tree-ready" ]; then
	log "creating build tree (hard links to the pristine tree)"
	rm -rf "$SRC"
	cp -al "$SRC_PRISTINE" "$SRC"
	rm -f "$SRC/.extracted-"* "$SRC/.touched"
	touch "$SRC/.tree-ready"
fi

stage=$BUILD/.stage
rm -rf "$stage"
mkdir -p "$stage"
trap 'rm -rf "$stage"' EXIT

series=()
if [ -f "$TOP/patches/series" ]; then
	while read -r p; do
		case "$p" in ''|'#'*) continue ;; esac
		series+=("$TOP/patches/$p")
	done <"$TOP/patches/series"
fi

# Files that the series, the overlay or an earlier sync touch.
touched=$(
	for p in "${series[@]}"; do
		sed -n 's#^+++ b/\([^\t ]*\).*#\1#p; s#^--- a/\([^\t ]*\).*#\1#p' "$p"
	done
	# Not Cargo's build output (tools/mm/thp-agent/target/).
	for d in $OVERLAY_DIRS; do
		[ -d "$TOP/$d" ] && (cd "$TOP" && find "$d" -name target -prune -o -type f -print)
	done
	[ -f "$SRC/.touched" ] && cat "$SRC/.touched"
	true
)
touched=$(printf '%s\n' "$touched" | sed '/^$/d' | sort -u)

for f in $touched; do
	if [ -f "$SRC_PRISTINE/$f" ]; then
		mkdir -p "$stage/$(dirname "$f")"
		cp -p "$SRC_PRISTINE/$f" "$stage/$f"
	fi
done
for p in "${series[@]}"; do
	patch -s -p1 -d "$stage" --forward --batch --no-backup-if-mismatch <"$p" ||
		die "patch $(basename "$p") does not apply to pristine $KVER"
done
for d in $OVERLAY_DIRS; do
	[ -d "$TOP/$d" ] && cp -r "$TOP/$d" "$stage/"
done

changed=0
for f in $touched; do
	if [ -f "$stage/$f" ]; then
		if ! cmp -s "$stage/$f" "$SRC/$f"; then
			mkdir -p "$SRC/$(dirname "$f")"
			rm -f "$SRC/$f"	# break the hard link to the pristine copy
			cp "$stage/$f" "$SRC/$f"
			changed=$((changed + 1))
		fi
	elif [ -e "$SRC/$f" ]; then
		rm -f "$SRC/$f"
		changed=$((changed + 1))
	fi
done
printf '%s\n' $touched >"$SRC/.touched"
[ "$changed" = 0 ] || log "build tree: $changed file(s) updated"
