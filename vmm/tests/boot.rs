#![allow(clippy::unwrap_used)]
//! Boots tiny hand-assembled guests through the public API (needs /dev/kvm).

mod common;

use capsa_vmm::{run, GuestExit};
use common::*;

#[test]
fn guest_checks_boot_info_and_exits_with_a_code() {
    let code = exit_guest(42);
    let started = std::time::Instant::now();
    assert_eq!(run(config(code)).unwrap(), GuestExit::Code(42));
    eprintln!("create-to-exit: {:?}", started.elapsed());
}

#[test]
fn guest_panic_reports_the_last_debug_message() {
    let message = b"boom";
    // The message sits right after the code; its address is KERNEL_BASE + code length.
    let mut code = Vec::new();
    code.extend(mov_rax(DEBUG_ADDR));
    let addr_fixup = code.len() + 3; // imm32 of the next instruction
    code.extend([0x48, 0xc7, 0x00, 0, 0, 0, 0]); // mov qword [rax], addr
    code.extend(mov_rax(DEBUG_LEN));
    code.extend([0x48, 0xc7, 0x00, message.len() as u8, 0, 0, 0]);
    code.extend(mov_rax(
        capsa_abi::CONTROL_MMIO_BASE + capsa_abi::control::PANIC,
    ));
    code.extend([0x48, 0xc7, 0x00, 1, 0, 0, 0]);
    let addr = (capsa_abi::KERNEL_BASE + code.len() as u64) as u32;
    code[addr_fixup..addr_fixup + 4].copy_from_slice(&addr.to_le_bytes());
    code.extend_from_slice(message);
    let err = run(config(code)).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("boom"), "{chain}");
}

#[test]
fn triple_fault_names_the_exit_and_rip() {
    let code = vec![0x90, 0x0f, 0x0b]; // nop; ud2 with no IDT
    let err = run(config(code)).unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("SHUTDOWN"), "{source}");
    assert!(source.contains("0x20000"), "{source}");
}
