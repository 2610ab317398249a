#!/usr/bin/env bash
# privapt.sh: a private apt configuration for one Debian suite, never touching /etc/apt.
# Usage: source scripts/privapt.sh; privapt_init DIR SUITE "deb|deb-src|deb deb-src"
# then: privapt_get DIR <apt-get args...>
# The system's apt sources are never edited; state, lists and caches live under DIR.
set -euo pipefail

PRIVAPT_MIRROR=${PRIVAPT_MIRROR:-http://deb.debian.org/debian}

privapt_init() {
    local dir=$1 suite=$2 types=$3
    mkdir -p "$dir"/{etc/sources.list.d,etc/preferences.d,etc/apt.conf.d,lists/partial,cache/archives/partial,state}
    : >"$dir/state/status"
    printf 'Types: %s\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$types" "$PRIVAPT_MIRROR" "$suite" >"$dir/etc/sources.list.d/private.sources"
    cat >"$dir/apt.conf" <<CONF
Dir::Etc "$dir/etc";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$dir/etc/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$dir/etc/preferences.d";
Dir::Etc::Parts "$dir/etc/apt.conf.d";
Dir::State "$dir/state";
Dir::State::Lists "$dir/lists";
Dir::State::status "$dir/state/status";
Dir::Cache "$dir/cache";
Dir::Cache::archives "$dir/cache/archives";
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
APT::Architecture "amd64";
APT::Install-Recommends "false";
APT::Sandbox::User "root";
Debug::NoLocking "true";
CONF
}

privapt_get() {
    local dir=$1; shift
    APT_CONFIG="$dir/apt.conf" apt-get -q -o Dpkg::Options::=--force-not-root "$@"
}

privapt_cache() {
    local dir=$1; shift
    APT_CONFIG="$dir/apt.conf" apt-cache "$@"
}
