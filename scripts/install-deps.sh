#!/usr/bin/env bash
# Installs the Debian packages capsa's build, demo and tests need; quick when
# they are already present.
set -euo pipefail
# gcc, python3 and its regression suite run in the tests' bundles; g++
# builds libFuzzer for the fuzz targets (scripts/fuzz.sh).
packages=(busybox-static runc podman containerd libseccomp-dev pkg-config iproute2 util-linux gcc g++ libc6-dev gawk python3 libpython3.11-testsuite)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
