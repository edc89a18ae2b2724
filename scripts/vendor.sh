#!/usr/bin/env bash
# The dashboard page's browser libraries, fetched from npm at pinned versions into
# iothub/http/static/vendor/ with their licences: `make vendor`. To update one, change its
# version here, run `make vendor`, try the page (`make test` drives it in Chromium), commit.
set -euo pipefail
SOCKET_IO_CLIENT=4.8.4
LEAFLET=1.9.4
UPLOT=1.6.32

cd "$(dirname "$0")/.."
VENDOR=iothub/http/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

unpack() {  # package version → folder of its files
    (cd "$work" && npm pack --silent "$1@$2" >/dev/null && mkdir "$1" && tar -xzf "$1-$2.tgz" -C "$1" --strip-components=1)
    echo "$work/$1"
}

rm -rf "$VENDOR" && mkdir -p "$VENDOR"
sio=$(unpack socket.io-client "$SOCKET_IO_CLIENT")
cp "$sio/dist/socket.io.min.js" "$VENDOR/socket.io.min.js"
cp "$sio/LICENSE" "$VENDOR/socket.io-client.LICENSE"
leaflet=$(unpack leaflet "$LEAFLET")
cp "$leaflet/dist/leaflet.js" "$leaflet/dist/leaflet.css" "$VENDOR/"
cp "$leaflet/LICENSE" "$VENDOR/leaflet.LICENSE"
uplot=$(unpack uplot "$UPLOT")
cp "$uplot/dist/uPlot.iife.min.js" "$uplot/dist/uPlot.min.css" "$VENDOR/"
cp "$uplot/LICENSE" "$VENDOR/uplot.LICENSE"
printf 'socket.io-client %s\nleaflet %s\nuplot %s\n' "$SOCKET_IO_CLIENT" "$LEAFLET" "$UPLOT" > "$VENDOR/VERSIONS"
ls -l "$VENDOR"
