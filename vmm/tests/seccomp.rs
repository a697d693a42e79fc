#![allow(clippy::unwrap_used)]
//! The VMM's seccomp allowlist, checked in child processes (a filter cannot
//! be removed, so each case re-executes this test binary).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use capsa_vmm::{run, GuestExit};
use common::*;

const CHILD: &str = "CAPSA_VMM_SECCOMP_CHILD";

fn child(case: &str, test: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, case)
        .status()
        .unwrap()
}

#[test]
fn guest_runs_under_the_filter() {
    if std::env::var(CHILD).as_deref() == Ok("boot") {
        let mut config = config(exit_guest(42));
        config.seccomp = true;
        let code = match run(config) {
            Ok(GuestExit::Code(code)) => i32::from(code),
            other => {
                eprintln!("{other:?}");
                99
            }
        };
        std::process::exit(code);
    }
    let status = child("boot", "guest_runs_under_the_filter");
    assert_eq!(status.code(), Some(42), "{status:?}");
}

#[test]
fn forbidden_syscalls_kill_the_process() {
    if std::env::var(CHILD).as_deref() == Ok("forbidden") {
        capsa_vmm::seccomp::install().unwrap();
        // SAFETY: socket(2) with constant arguments; it must not return.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        std::process::exit(0);
    }
    let status = child("forbidden", "forbidden_syscalls_kill_the_process");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
}

#[test]
fn executable_mappings_kill_the_process() {
    if std::env::var(CHILD).as_deref() == Ok("exec") {
        capsa_vmm::seccomp::install().unwrap();
        // SAFETY: an anonymous mapping nobody else uses; it must not return.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        std::process::exit(0);
    }
    let status = child("exec", "executable_mappings_kill_the_process");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
}
