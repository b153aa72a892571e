#!/usr/bin/env bash
# Fetches the Debian kernel flavours the tests check beside the shared images, unpacked where the tests look for
# them (../debs/x/PACKAGE beside the repository): linux-image-6.1.0-50-amd64-unsigned (the "image not tuned on" of
# the 6.1 whole-text and verify ground truth, and the kernel and modules of the module ground truth) and
# linux-image-6.12.118+deb12-amd64-unsigned (6.12's untuned flavour) and linux-image-6.12.118+deb12-rt-amd64-unsigned
# (PREEMPT_RT, with the real-time tree's lazy preemption) and linux-image-6.12.107+deb12-cloud-amd64-unsigned (an earlier
# 6.12 point release, other stable backports) and linux-image-6.1.0-57-cloud-amd64-unsigned (6.1.192: a later 6.1 point
# release than the one the 6.1 rules were written from). The tests that need them skip, saying so, without them.
# Usage: tools/debs/fetch.sh   (needs apt-get and dpkg-deb; about 350 MB)
set -uo pipefail
cd "$(dirname "$0")/../.."
dest=../debs/x
rc=0
for pkg in linux-image-6.1.0-50-amd64-unsigned linux-image-6.12.118+deb12-amd64-unsigned linux-image-6.12.118+deb12-rt-amd64-unsigned linux-image-6.12.107+deb12-cloud-amd64-unsigned linux-image-6.1.0-57-cloud-amd64-unsigned; do
  if [ -d "$dest/$pkg/boot" ]; then echo "debs: $dest/$pkg (already there)"; continue; fi
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) && mkdir -p "$dest" && dpkg-deb -x "$tmp"/*.deb "$tmp/x"; then
    mv "$tmp/x" "$dest/$pkg" && echo "debs: $dest/$pkg"
  else
    echo "debs: apt-get download $pkg failed; the tests that need it will be skipped"; rc=1
  fi
  rm -rf "$tmp"
done
exit $rc
