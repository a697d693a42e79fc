//! The guest kernel's ELF parser (`guest/src/elf.rs`) on arbitrary files,
//! read the way `Kernel::load_elf_from` reads them: the 64-byte header, then
//! the program header table at the offset the header names. A parsed image
//! then answers every question the loader asks of it, and the answers must
//! hold what the loader relies on: an ordered, page-aligned span covering
//! every loadable segment, a power-of-two alignment.

#![no_main]

use capsa_guest::loader::elf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|file: &[u8]| {
    // The loader reads exactly EHDR_SIZE bytes; a shorter file is ENOEXEC.
    let Some(ehdr) = file.get(..elf::EHDR_SIZE) else {
        return;
    };
    let Ok((phoff, len)) = elf::parse_header(ehdr) else {
        return;
    };
    // A table past the end of the file is a short read: ENOEXEC too.
    let Some(phdrs) = usize::try_from(phoff)
        .ok()
        .and_then(|at| file.get(at..at.checked_add(len)?))
    else {
        return;
    };
    let Ok(image) = elf::parse(ehdr, phdrs) else {
        return;
    };
    let (lo, hi, align) = image.span();
    assert!(lo <= hi, "span {lo:#x}..{hi:#x} is inverted");
    assert!(lo % 4096 == 0 && hi % 4096 == 0, "span is not page aligned");
    assert!(align.is_power_of_two() && align >= 4096);
    for h in image.loads() {
        assert!(h.filesz <= h.memsz);
        assert!(
            lo <= h.vaddr && h.vaddr + h.memsz <= hi,
            "segment outside the span"
        );
    }
    assert_eq!(usize::from(image.phnum) * 56, len);
    let _ = image.interp();
    let _ = image.phdr_vaddr();
});
