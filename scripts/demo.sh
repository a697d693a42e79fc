#!/usr/bin/env bash
# Builds capsa and runs the built-in demo: a busybox bundle run as a
# container (and as a microVM), then the startup benchmark against runc.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (containers and KVM need it)" >&2; exit 1; }
scripts/install-deps.sh
cargo build --release -p capsa
capsa=target/release/capsa
bundle=target/demo-bundle
rm -rf "$bundle"
"$capsa" demo-bundle "$bundle" -- sh -c 'echo "hello from $(hostname), pid $$, as $(id -u):$(id -g)"; uname -sr'
for isolation in container microvm; do
    echo "== capsa run --isolation=$isolation"
    "$capsa" run --isolation="$isolation" --bundle "$bundle" "demo-$isolation-$$" || echo "(exit status $?)"
done
echo "== capsa bench startup (busybox /bin/true)"
"$capsa" bench startup --runs 30 --bundle "$bundle" -- /bin/true
if [ -x /usr/bin/python3 ]; then
    echo "== capsa bench startup (the host's python3 -c 'print(1)')"
    "$capsa" bench startup --runs 20 --host-usr -- /usr/bin/python3 -c 'print(1)'
fi
