//! The initial process stack (System V x86-64 ABI, as Linux lays it out):
//! from the top, a guard word, the argument and environment strings, the
//! `AT_RANDOM` bytes and platform string; below them, 16-byte aligned, argc,
//! argv[], NULL, envp[], NULL, the auxiliary vector, AT_NULL.

use alloc::vec::Vec;

use crate::errno::{Errno, Result};

pub const AT_NULL: u64 = 0;
pub const AT_PHDR: u64 = 3;
pub const AT_PHENT: u64 = 4;
pub const AT_PHNUM: u64 = 5;
pub const AT_PAGESZ: u64 = 6;
pub const AT_BASE: u64 = 7;
pub const AT_FLAGS: u64 = 8;
pub const AT_ENTRY: u64 = 9;
pub const AT_UID: u64 = 11;
pub const AT_EUID: u64 = 12;
pub const AT_GID: u64 = 13;
pub const AT_EGID: u64 = 14;
pub const AT_PLATFORM: u64 = 15;
pub const AT_HWCAP: u64 = 16;
pub const AT_CLKTCK: u64 = 17;
pub const AT_SECURE: u64 = 23;
pub const AT_RANDOM: u64 = 25;
pub const AT_HWCAP2: u64 = 26;
pub const AT_EXECFN: u64 = 31;

/// Writes the initial stack into `stack`, which is the memory just below
/// address `top`. Appends AT_RANDOM, AT_PLATFORM, AT_EXECFN and AT_NULL to
/// `auxv`. Returns the initial stack pointer (16-byte aligned, pointing at
/// argc) and where the argument strings lie (`/proc/self/cmdline`).
pub fn build(
    stack: &mut [u8],
    top: u64,
    args: &[Vec<u8>],
    env: &[Vec<u8>],
    execfn: &[u8],
    auxv: &[(u64, u64)],
    random: [u8; 16],
) -> Result<(u64, (u64, u64))> {
    let base = top - stack.len() as u64;
    let mut pos = top - 8;
    let mut put = |pos: &mut u64, bytes: &[u8], nul: bool| -> Result<u64> {
        let len = bytes.len() as u64 + u64::from(nul);
        *pos = pos
            .checked_sub(len)
            .filter(|&p| p >= base)
            .ok_or(Errno::E2BIG)?;
        let at = (*pos - base) as usize;
        stack[at..at + bytes.len()].copy_from_slice(bytes);
        if nul {
            stack[at + bytes.len()] = 0;
        }
        Ok(*pos)
    };
    let execfn_at = put(&mut pos, execfn, true)?;
    let mut env_at = Vec::with_capacity(env.len());
    for s in env.iter().rev() {
        env_at.push(put(&mut pos, s, true)?);
    }
    env_at.reverse();
    let mut arg_at = Vec::with_capacity(args.len());
    for s in args.iter().rev() {
        arg_at.push(put(&mut pos, s, true)?);
    }
    arg_at.reverse();
    let args_span = (
        arg_at.first().copied().unwrap_or(pos),
        pos_after(&arg_at, args),
    );
    let platform_at = put(&mut pos, b"x86_64", true)?;
    pos &= !15;
    let random_at = put(&mut pos, &random, false)?;

    let mut words: Vec<u64> = Vec::new();
    words.push(args.len() as u64);
    words.extend(&arg_at);
    words.push(0);
    words.extend(&env_at);
    words.push(0);
    for &(key, value) in auxv {
        words.extend([key, value]);
    }
    words.extend([
        AT_RANDOM,
        random_at,
        AT_PLATFORM,
        platform_at,
        AT_EXECFN,
        execfn_at,
    ]);
    words.extend([AT_NULL, 0]);
    let bytes = words.len() as u64 * 8;
    let sp = pos
        .checked_sub(bytes)
        .map(|sp| sp & !15)
        .filter(|&sp| sp >= base)
        .ok_or(Errno::E2BIG)?;
    for (i, w) in words.iter().enumerate() {
        let at = (sp - base) as usize + i * 8;
        stack[at..at + 8].copy_from_slice(&w.to_le_bytes());
    }
    Ok((sp, args_span))
}

/// End of the last of the NUL-terminated `strings` placed at `at`.
fn pos_after(at: &[u64], strings: &[Vec<u8>]) -> u64 {
    match (at.last(), strings.last()) {
        (Some(&start), Some(s)) => start + s.len() as u64 + 1,
        _ => at.first().copied().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(stack: &[u8], base: u64, addr: u64) -> u64 {
        let at = (addr - base) as usize;
        u64::from_le_bytes(stack[at..at + 8].try_into().expect("8 bytes"))
    }

    fn cstr(stack: &[u8], base: u64, addr: u64) -> Vec<u8> {
        let at = (addr - base) as usize;
        let end = stack[at..]
            .iter()
            .position(|&b| b == 0)
            .expect("terminated");
        stack[at..at + end].to_vec()
    }

    #[test]
    fn lays_out_argv_envp_auxv() {
        let top = 0x80_0000;
        let mut stack = vec![0u8; 8192];
        let base = top - stack.len() as u64;
        let args = [b"/bin/echo".to_vec(), b"hi".to_vec()];
        let env = [b"PATH=/bin".to_vec()];
        let (sp, (args_start, args_end)) = build(
            &mut stack,
            top,
            &args,
            &env,
            b"/bin/echo",
            &[(AT_PAGESZ, 4096)],
            [7; 16],
        )
        .expect("fits");
        assert_eq!(sp % 16, 0);
        let at = (args_start - base) as usize;
        assert_eq!(&stack[at..(args_end - base) as usize], b"/bin/echo\0hi\0");
        assert_eq!(word(&stack, base, sp), 2);
        assert_eq!(cstr(&stack, base, word(&stack, base, sp + 8)), b"/bin/echo");
        assert_eq!(cstr(&stack, base, word(&stack, base, sp + 16)), b"hi");
        assert_eq!(word(&stack, base, sp + 24), 0);
        assert_eq!(
            cstr(&stack, base, word(&stack, base, sp + 32)),
            b"PATH=/bin"
        );
        assert_eq!(word(&stack, base, sp + 40), 0);
        let mut aux = sp + 48;
        let mut seen = Vec::new();
        loop {
            let (k, v) = (word(&stack, base, aux), word(&stack, base, aux + 8));
            if k == AT_NULL {
                break;
            }
            seen.push((k, v));
            aux += 16;
        }
        assert_eq!(seen[0], (AT_PAGESZ, 4096));
        let random = seen
            .iter()
            .find(|(k, _)| *k == AT_RANDOM)
            .expect("AT_RANDOM")
            .1;
        let at = (random - base) as usize;
        assert_eq!(&stack[at..at + 16], &[7; 16]);
        let platform = seen
            .iter()
            .find(|(k, _)| *k == AT_PLATFORM)
            .expect("AT_PLATFORM")
            .1;
        assert_eq!(cstr(&stack, base, platform), b"x86_64");
    }

    #[test]
    fn too_small_a_stack_is_e2big() {
        let mut stack = vec![0u8; 64];
        let args = [vec![b'a'; 100]];
        assert_eq!(
            build(&mut stack, 0x1000, &args, &[], b"a", &[], [0; 16]).map(|(sp, _)| sp),
            Err(Errno::E2BIG)
        );
    }
}
