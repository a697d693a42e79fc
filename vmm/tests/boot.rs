#![allow(clippy::unwrap_used)]
//! Boots tiny hand-assembled guests through the public API (needs /dev/kvm).

use std::borrow::Cow;
use std::path::PathBuf;

use capsa_vmm::{run, GuestExit, ProcessSpec, VmConfig};

const EXIT_CODE: u64 = capsa_abi::CONTROL_MMIO_BASE + capsa_abi::control::EXIT_CODE;
const DEBUG_ADDR: u64 = capsa_abi::CONTROL_MMIO_BASE + capsa_abi::control::DEBUG_ADDR;
const DEBUG_LEN: u64 = capsa_abi::CONTROL_MMIO_BASE + capsa_abi::control::DEBUG_LEN;

/// A static ELF with one PT_LOAD segment at KERNEL_BASE holding `code`
/// (and a page of .bss), entered at its first byte.
fn elf(code: &[u8]) -> Vec<u8> {
    let base = capsa_abi::KERNEL_BASE;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes()); // entry
    out.extend_from_slice(&64u64.to_le_bytes()); // phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // shoff
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let offset = 64 + 56;
    out.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    out.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [
        offset as u64,
        base,
        base,
        code.len() as u64,
        code.len() as u64 + 0x1000,
        0x1000,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(code);
    out
}

fn mov_rax(imm: u64) -> Vec<u8> {
    let mut v = vec![0x48, 0xb8];
    v.extend_from_slice(&imm.to_le_bytes());
    v
}

fn config(code: Vec<u8>) -> VmConfig {
    let rootfs: PathBuf = std::env::temp_dir();
    VmConfig {
        kernel: Cow::Owned(elf(&code)),
        ram_size: 32 << 20,
        vcpus: 1,
        process: ProcessSpec {
            args: vec!["/bin/true".into()],
            ..Default::default()
        },
        rootfs,
        rootfs_readonly: true,
        mounts: Vec::new(),
        debug_syscalls: false,
        seccomp: false,
    }
}

#[test]
fn guest_checks_boot_info_and_exits_with_a_code() {
    // rbx = [rdi]; rcx = magic; push/pop through the boot stack;
    // exit 42 if the boot info magic is there, else 1.
    let mut code = vec![0x48, 0x8b, 0x1f]; // mov rbx, [rdi]
    code.extend([0x48, 0xb9]); // mov rcx, imm64
    code.extend(capsa_abi::BOOT_INFO_MAGIC.to_le_bytes());
    code.extend([0x53, 0x5b]); // push rbx; pop rbx
    code.extend(mov_rax(EXIT_CODE));
    code.extend([0x48, 0x39, 0xcb]); // cmp rbx, rcx
    code.extend([0x75, 0x07]); // jne fail
    code.extend([0x48, 0xc7, 0x00, 42, 0, 0, 0]); // mov qword [rax], 42
    code.extend([0x48, 0xc7, 0x00, 1, 0, 0, 0]); // fail: mov qword [rax], 1
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
