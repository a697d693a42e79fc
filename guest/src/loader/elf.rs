//! ELF64 executable parsing: just what loading a static or static-pie
//! x86-64 program (or an ELF interpreter) needs.

use alloc::vec::Vec;

use crate::errno::{Errno, Result};

pub const PT_LOAD: u32 = 1;
pub const PT_INTERP: u32 = 3;
pub const PT_PHDR: u32 = 6;
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
pub const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// Refuse absurd program header counts before allocating for them.
const MAX_PHNUM: u16 = 128;
/// Loadable segments end below the top of the x86-64 user half, which also
/// keeps rounding their ends up to a page from overflowing.
const USER_END: u64 = 1 << 47;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elf {
    /// `ET_DYN`: position independent, loaded at a base we choose.
    pub relocatable: bool,
    pub entry: u64,
    pub phoff: u64,
    pub phnum: u16,
    pub headers: Vec<ProgramHeader>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Where the program headers are: (file offset, byte length), from the
/// first `EHDR_SIZE` bytes of the file.
pub fn parse_header(ehdr: &[u8]) -> Result<(u64, usize)> {
    if ehdr.len() < EHDR_SIZE || &ehdr[..4] != b"\x7fELF" {
        return Err(Errno::ENOEXEC);
    }
    if ehdr[4] != 2 || ehdr[5] != 1 || u16_at(ehdr, 18) != EM_X86_64 {
        return Err(Errno::ENOEXEC);
    }
    let kind = u16_at(ehdr, 16);
    if kind != ET_EXEC && kind != ET_DYN {
        return Err(Errno::ENOEXEC);
    }
    let phentsize = u16_at(ehdr, 54) as usize;
    let phnum = u16_at(ehdr, 56);
    if phentsize != PHDR_SIZE || phnum == 0 || phnum > MAX_PHNUM {
        return Err(Errno::ENOEXEC);
    }
    Ok((u64_at(ehdr, 32), PHDR_SIZE * phnum as usize))
}

/// Parses the ELF header and the program header table read from `(phoff, len)`.
pub fn parse(ehdr: &[u8], phdrs: &[u8]) -> Result<Elf> {
    let (phoff, len) = parse_header(ehdr)?;
    if phdrs.len() < len {
        return Err(Errno::ENOEXEC);
    }
    let headers = phdrs[..len]
        .chunks_exact(PHDR_SIZE)
        .map(|p| ProgramHeader {
            kind: u32_at(p, 0),
            flags: u32_at(p, 4),
            offset: u64_at(p, 8),
            vaddr: u64_at(p, 16),
            filesz: u64_at(p, 32),
            memsz: u64_at(p, 40),
            align: u64_at(p, 48),
        })
        .collect::<Vec<_>>();
    for h in headers.iter().filter(|h| h.kind == PT_LOAD) {
        if h.filesz > h.memsz
            || h.vaddr
                .checked_add(h.memsz)
                .is_none_or(|end| end > USER_END)
            || h.offset.checked_add(h.filesz).is_none()
            // Segments are mapped from the file a page at a time.
            || h.offset % 4096 != h.vaddr % 4096
        {
            return Err(Errno::ENOEXEC);
        }
    }
    if !headers.iter().any(|h| h.kind == PT_LOAD) {
        return Err(Errno::ENOEXEC);
    }
    Ok(Elf {
        relocatable: u16_at(ehdr, 16) == ET_DYN,
        entry: u64_at(ehdr, 24),
        phoff,
        phnum: u16_at(ehdr, 56),
        headers,
    })
}

impl Elf {
    pub fn loads(&self) -> impl Iterator<Item = &ProgramHeader> {
        self.headers.iter().filter(|h| h.kind == PT_LOAD)
    }

    /// The page-aligned address range the loadable segments span (before
    /// relocation) and the largest segment alignment.
    pub fn span(&self) -> (u64, u64, u64) {
        let mut lo = u64::MAX;
        let mut hi = 0;
        let mut align = 4096;
        for h in self.loads() {
            lo = lo.min(h.vaddr);
            hi = hi.max(h.vaddr + h.memsz);
            if h.align.is_power_of_two() {
                align = align.max(h.align);
            }
        }
        (lo & !4095, (hi + 4095) & !4095, align)
    }

    /// The interpreter's path location (file offset, length), if dynamic.
    pub fn interp(&self) -> Option<(u64, u64)> {
        self.headers
            .iter()
            .find(|h| h.kind == PT_INTERP)
            .map(|h| (h.offset, h.filesz))
    }

    /// Address of the program headers in memory (for `AT_PHDR`), before relocation.
    pub fn phdr_vaddr(&self) -> Option<u64> {
        if let Some(h) = self.headers.iter().find(|h| h.kind == PT_PHDR) {
            return Some(h.vaddr);
        }
        self.loads()
            .find(|h| h.offset <= self.phoff && self.phoff < h.offset + h.filesz)
            .map(|h| h.vaddr + (self.phoff - h.offset))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF image: header + program headers, for tests elsewhere too.
    pub fn image(kind: u16, entry: u64, loads: &[(u64, u64, u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_SIZE];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&kind.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(loads.len() as u16).to_le_bytes());
        for &(offset, vaddr, filesz, memsz) in loads {
            let mut p = vec![0u8; PHDR_SIZE];
            p[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
            p[4..8].copy_from_slice(&(PF_R | PF_X).to_le_bytes());
            p[8..16].copy_from_slice(&offset.to_le_bytes());
            p[16..24].copy_from_slice(&vaddr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            p[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
            b.extend_from_slice(&p);
        }
        b
    }

    #[test]
    fn parses_a_static_executable() {
        let img = image(
            2,
            0x401000,
            &[
                (0, 0x400000, 0x1234, 0x1234),
                (0x2000, 0x402000, 0x10, 0x3000),
            ],
        );
        let (phoff, len) = parse_header(&img).expect("valid header");
        let elf = parse(&img, &img[phoff as usize..phoff as usize + len]).expect("valid");
        assert!(!elf.relocatable);
        assert_eq!(elf.entry, 0x401000);
        assert_eq!(elf.span(), (0x400000, 0x405000, 0x1000));
        assert_eq!(elf.phdr_vaddr(), Some(0x400040));
        assert_eq!(elf.interp(), None);
    }

    #[test]
    fn rejects_garbage_and_bad_segments() {
        assert_eq!(parse_header(b"#!/bin/sh\n"), Err(Errno::ENOEXEC));
        let mut img = image(3, 0, &[(0, 0, 0x20, 0x10)]);
        let phdrs = img[64..].to_vec();
        assert_eq!(parse(&img, &phdrs), Err(Errno::ENOEXEC));
        // Ending at the top of the address space: span() would overflow.
        let top = image(2, 0, &[(0, u64::MAX - 0x10, 0, 0x10)]);
        assert_eq!(parse(&top, &top[64..]), Err(Errno::ENOEXEC));
        // Offset and address must agree within the page, to map it.
        let skew = image(2, 0, &[(0x10, 0x400000, 0x20, 0x20)]);
        assert_eq!(parse(&skew, &skew[64..]), Err(Errno::ENOEXEC));
        img[18] = 3; // EM_386
        assert_eq!(parse_header(&img), Err(Errno::ENOEXEC));
    }
}
