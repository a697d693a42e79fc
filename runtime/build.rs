//! Builds the guest kernel (and the static I/O benchmark worker) and puts
//! them in OUT_DIR, so `capsa` embeds them
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

    build_embedded(
        &workspace,
        &out_dir,
        "capsa-guest",
        "guest",
        None,
        "the guest kernel",
    );

    // The I/O worker `capsa bench io` copies into rootfses: linked
    // statically so it runs in any rootfs and in the guest, which has no
    // dynamic loader of its own to lend it.
    for input in ["runtime/iobench/src", "runtime/iobench/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    build_embedded(
        &workspace,
        &out_dir,
        "capsa-iobench",
        "iobench",
        Some("-C target-feature=+crt-static"),
        "the I/O benchmark worker",
    );
}

/// Builds `package`'s binary of the same name in release with a nested
/// cargo and copies it into OUT_DIR for `include_bytes!`.
fn build_embedded(
    workspace: &Path,
    out_dir: &Path,
    package: &str,
    target_subdir: &str,
    rustflags: Option<&str>,
    what: &str,
) {
    // A target directory of its own: the outer cargo holds the lock on the
    // workspace's, so sharing it would deadlock.
    let target_dir = workspace.join("target").join(target_subdir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", package, "--bin", package, "--release"])
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
    if let Some(flags) = rustflags {
        cmd.env("RUSTFLAGS", flags);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|err| panic!("cannot run cargo to build {what}: {err}"));
    // A capsa without them could not run microVMs or its benchmark: fail
    // the build loudly rather than embed something stale or empty.
    assert!(
        status.success(),
        "building {what} (cargo build -p {package} --release) failed: {status}"
    );
    let built = target_dir.join("release").join(package);
    copy(&built, &out_dir.join(package));
}

fn copy(from: &Path, to: &Path) {
    if let Err(err) = std::fs::copy(from, to) {
        panic!("cannot copy {} to {}: {err}", from.display(), to.display());
    }
}
