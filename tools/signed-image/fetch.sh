#!/usr/bin/env bash
# Fetches the Secure Boot-signed twin of ../shared/linux/vmlinuz-6.1.0-50-cloud-amd64 (Debian's signed
# linux-image-6.1.0-50-cloud-amd64 package) into artifacts/signed/, for the integrity tests
# (tests/Altpatch.Tests/Images/IntegrityTests.cs skip, saying so, when it is absent).
# Usage: tools/signed-image/fetch.sh   (needs apt-get and dpkg-deb; about 26 MB)
set -euo pipefail
cd "$(dirname "$0")/../.."
pkg=linux-image-6.1.0-50-cloud-amd64
dest=artifacts/signed
image="$dest/boot/vmlinuz-6.1.0-50-cloud-amd64"
[ -f "$image" ] && { echo "signed image: $image (already there)"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "signed image: apt-get download $pkg failed"; exit 1; }
mkdir -p "$dest"
dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/x"
mkdir -p "$dest/boot"
cp "$tmp/x/boot/vmlinuz-6.1.0-50-cloud-amd64" "$image"
echo "signed image: $image"
