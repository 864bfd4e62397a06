#!/usr/bin/env bash
# Fetches the default country database into config/geo/country.mmdb from the npm registry.
#
#   config/geo/fetch.sh [VERSION]     # default: the latest published version
#
# Needs npm and tar. The new file replaces the old one by rename, so a running proxy never sees a
# half-written file; it notices the new file within a few seconds (or at once on SIGHUP).
set -euo pipefail
cd "$(dirname "$0")"

pkg="@ip-location-db/geo-whois-asn-country-mmdb"
spec="$pkg${1:+@$1}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$spec" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
version="$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$work/package/package.json")"
src="$work/package/geo-whois-asn-country.mmdb"
[ -s "$src" ] || { echo "fetch.sh: $spec has no geo-whois-asn-country.mmdb" >&2; exit 1; }

cp "$src" country.mmdb.new
mv -f country.mmdb.new country.mmdb
echo "config/geo/country.mmdb: $pkg $version, $(wc -c <country.mmdb) bytes"
echo "Update the version in config/geo/README.md and config/geo/LICENSE."
