#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, the integration
# tests that run real bundles (as root, with /dev/kvm for the microVM ones)
# and a short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (containers and KVM need it)" >&2; exit 1; }
scripts/install-deps.sh
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
# The fuzz targets (fuzz/, outside the workspace): build, then 20 s each.
# A soak is `scripts/fuzz.sh 3600`; see docs/fuzzing.md.
scripts/fuzz.sh 20
