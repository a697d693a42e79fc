//! Builds the guest kernel and puts it in OUT_DIR, so `capsa` embeds it
//! with `include_bytes!` and the binary is self-contained: no kernel file to
//! find at run time, and the kernel always matches the VMM it was built with.
//!
//! The guest is built by a nested cargo rather than an artifact dependency
//! (unstable) and always in release: at CPL3 under PVM a debug guest is many
//! times slower and the VMM loads the image regardless of the outer profile.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("runtime/ lives inside the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    for input in [
        "guest/src",
        "guest/abi/src",
        "guest/abi/Cargo.toml",
        "guest/build.rs",
        "guest/guest.ld",
        "guest/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }

    // A target directory of its own: the outer cargo holds the lock on the
    // workspace's, so sharing it would deadlock.
    let target_dir = workspace.join("target").join("guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "-p",
            "capsa-guest",
            "--bin",
            "capsa-guest",
            "--release",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // What the outer cargo (or clippy, or a cross setting) passes to its own
    // rustc must not leak into the guest's build: clippy's wrapper would lint
    // the guest through a driver the nested build does not expect, and the
    // outer flags/target would change the freestanding image.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
        "__CARGO_FIX_PLZ",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|err| panic!("cannot run cargo to build the guest kernel: {err}"));
    // A capsa without its guest could not run microVMs: fail the build
    // loudly rather than embed something stale or empty.
    assert!(
        status.success(),
        "building the guest kernel (cargo build -p capsa-guest --release) failed: {status}"
    );
    let built = target_dir.join("release").join("capsa-guest");
    copy(&built, &out_dir.join("capsa-guest"));
}

fn copy(from: &Path, to: &Path) {
    if let Err(err) = std::fs::copy(from, to) {
        panic!(
            "cannot copy the guest kernel {} to {}: {err}",
            from.display(),
            to.display()
        );
    }
}
