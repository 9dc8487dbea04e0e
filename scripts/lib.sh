# SPDX-License-Identifier: GPL-2.0
# Shared settings for the project's scripts. Sourced, never executed.

set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$TOP/build}
CACHE=${THP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/thp-collapse-rs}

KVER=7.3.4
KPKG=linux-source-7.3
KPKG_VERSION=7.3.4-1~bpo13+1
KPKG_SUITE=trixie-backports
KPKG_SHA256=703e369ddd4cce971452f5a593ee55df3a5c10c83caf0fa0df039633ed181ee3
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

SRC_PRISTINE=$BUILD/linux-pristine
SRC=$BUILD/linux
LLVM_SUFFIX=-19
export PATH="$HOME/.cargo/bin:$PATH"

# Directories of this repository that mirror kernel-tree paths.
OVERLAY_DIRS="mm include rust tools Documentation lib"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The programs a run list names: in each line's command (the fourth field on),
# every word that starts with "./" (a command may start with a wrapper from
# scripts/guest/, such as khugepaged-busy, and may name a second program, as
# "./thp_collapse_agent ./thp-agent" does).
list_programs() {
	awk '!/^#/ && NF >= 4 {
		for (i = 4; i <= NF && $i != "#"; i++)
			if ($i ~ /^\.\//) print substr($i, 3)
	}' "$1" | sort -u
}

jobs() { echo $(( $(nproc 2>/dev/null || echo 2) + 1 )); }

# Shows the progress of a kernel build whose kbuild output (one "  CC  file" line
# per step) comes on stdin: a line every 30 s with the steps done, the share of
# the last build's count when there was one, and the time so far. Everything
# goes to LOG; warnings and errors are also shown as they come.
#   build_progress LABEL LOG COUNTFILE
build_progress() {
	local label=$1 logf=$2 countf=$3 n=0 total=0 start=$SECONDS last=$SECONDS line
	[ -s "$countf" ] && total=$(cat "$countf")
	: >"$logf"
	while IFS= read -r line; do
		printf '%s\n' "$line" >>"$logf"
		case "$line" in
		"  "[A-Z]*) n=$((n + 1)) ;;
		*warning:* | *error:* | *error\[* | *Error* | *WARNING:*) printf '%s\n' "$line" >&2 ;;
		esac
		if [ $((SECONDS - last)) -ge 30 ]; then
			last=$SECONDS
			if [ "$total" -gt 0 ]; then
				log "$label: $n of about $total steps ($((n * 100 / total))%), $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s"
			else
				log "$label: $n steps, $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s"
			fi
		fi
	done
	# A no-op rebuild says nothing worth keeping.
	[ "$n" -lt 100 ] || echo "$n" >"$countf"
}
