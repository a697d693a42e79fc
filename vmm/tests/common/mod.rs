//! Tiny hand-assembled guests shared by the boot tests.
#![allow(dead_code)]

use std::borrow::Cow;
use std::path::PathBuf;

use capsa_vmm::{ProcessSpec, VmConfig};

pub const EXIT_CODE: u64 = capsa_abi::CONTROL_MMIO_BASE + capsa_abi::control::EXIT_CODE;
pub const DEBUG_ADDR: u64 = capsa_abi::CONTROL_MMIO_BASE + capsa_abi::control::DEBUG_ADDR;
pub const DEBUG_LEN: u64 = capsa_abi::CONTROL_MMIO_BASE + capsa_abi::control::DEBUG_LEN;

/// A static ELF with one PT_LOAD segment at KERNEL_BASE holding `code`
/// (and a page of .bss), entered at its first byte.
pub fn elf(code: &[u8]) -> Vec<u8> {
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

pub fn mov_rax(imm: u64) -> Vec<u8> {
    let mut v = vec![0x48, 0xb8];
    v.extend_from_slice(&imm.to_le_bytes());
    v
}

pub fn config(code: Vec<u8>) -> VmConfig {
    let rootfs: PathBuf = std::env::temp_dir();
    VmConfig {
        kernel: Cow::Owned(elf(&code)),
        ram_size: 32 << 20,
        hugepages: false,
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
        net: None,
        exec_socket: None,
    }
}

/// A guest that exits with `code` once it has found the boot info magic (else 1).
pub fn exit_guest(code: u8) -> Vec<u8> {
    let mut v = vec![0x48, 0x8b, 0x1f]; // mov rbx, [rdi]
    v.extend([0x48, 0xb9]); // mov rcx, imm64
    v.extend(capsa_abi::BOOT_INFO_MAGIC.to_le_bytes());
    v.extend([0x53, 0x5b]); // push rbx; pop rbx
    v.extend(mov_rax(EXIT_CODE));
    v.extend([0x48, 0x39, 0xcb]); // cmp rbx, rcx
    v.extend([0x75, 0x07]); // jne fail
    v.extend([0x48, 0xc7, 0x00, code, 0, 0, 0]); // mov qword [rax], code
    v.extend([0x48, 0xc7, 0x00, 1, 0, 0, 0]); // fail: mov qword [rax], 1
    v
}
