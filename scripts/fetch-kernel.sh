#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Download Debian's linux-source package with a private apt configuration
# (own sources list, lists and cache folders; the machine's apt sources are
# never touched), verify it, cache it outside the repository and extract the
# pristine tree into the build folder.

. "$(dirname "$0")/lib.sh"

deb=$CACHE/${KPKG}_${KPKG_VERSION//\~/%7e}_all.deb
deb_plain=$CACHE/${KPKG}_${KPKG_VERSION}_all.deb

verify() { echo "$KPKG_SHA256  $1" | sha256sum -c --status; }

fetch_deb() {
	local apt=$CACHE/apt
	mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $KPKG_SUITE main" \
		>"$apt/etc/sources.list"
	local opts=(-o "Dir::Etc::SourceList=$apt/etc/sources.list"
		    -o "Dir::Etc::SourceParts=/dev/null"
		    -o "Dir::State::Lists=$apt/lists"
		    -o "Dir::Cache=$apt/cache"
		    -o "Dir::State::status=/dev/null"
		    -o "APT::Sandbox::User=root")
	log "apt update (private config, $KPKG_SUITE)"
	apt-get "${opts[@]}" -qq update >/dev/null ||
		die "apt-get update of $KPKG_SUITE failed"
	local offered
	offered=$(apt-cache "${opts[@]}" madison "$KPKG" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | tr '\n' ' ')
	case " $offered " in
	*" $KPKG_VERSION "*) ;;
	*) die "$KPKG version $KPKG_VERSION is not offered by $KPKG_SUITE any more; the archive offers: ${offered:-nothing}" ;;
	esac
	log "downloading $KPKG=$KPKG_VERSION"
	(cd "$CACHE" && apt-get "${opts[@]}" -qq download "$KPKG=$KPKG_VERSION" >/dev/null) ||
		die "download of $KPKG=$KPKG_VERSION failed"
	[ -f "$deb" ] || { [ -f "$deb_plain" ] && deb=$deb_plain; }
	[ -f "$deb" ] || die "apt reported success but $deb is missing"
}

mkdir -p "$CACHE" "$BUILD"
if [ -f "$SRC_PRISTINE/.extracted-$KPKG_VERSION" ]; then
	exit 0
fi
for f in "$deb" "$deb_plain"; do
	[ -f "$f" ] && verify "$f" && deb=$f && break
done
if ! [ -f "$deb" ] || ! verify "$deb"; then
	rm -f "$deb" "$deb_plain"
	fetch_deb
	verify "$deb" || die "sha256 mismatch for $deb (expected $KPKG_SHA256)"
fi

log "extracting $KPKG tarball"
tmp=$BUILD/.extract.$$
rm -rf "$tmp" "$SRC_PRISTINE"
mkdir -p "$tmp"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards "./usr/src/${KPKG}.tar.xz"
tar -xJf "$tmp/usr/src/${KPKG}.tar.xz" -C "$tmp"
mv "$tmp/${KPKG}" "$SRC_PRISTINE"
rm -rf "$tmp"
grep -q "^SUBLEVEL = ${KVER##*.}\$" "$SRC_PRISTINE/Makefile" ||
	die "extracted tree is not $KVER"
touch "$SRC_PRISTINE/.extracted-$KPKG_VERSION"
log "pristine tree ready: $SRC_PRISTINE"
