//! `capsa-iobench randread|randwrite|cachedread FILE BLOCK COUNT`: COUNT
//! positioned reads or writes of BLOCK bytes at pseudo-random block-aligned
//! offsets of FILE, timed with the monotonic clock from inside the mode
//! under test, so start-up costs are not counted. `cachedread` first reads
//! the whole file (untimed), so the reads find it in the page cache.
//! Prints `OPS SECONDS`.
//!
//! `capsa-iobench fork MIB COUNT`: writes MIB MiB of fresh memory, then
//! forks COUNT times (each child exits at once and is reaped before the
//! next fork). Prints `COUNT SECONDS` for the forks alone.
//!
//! capsa embeds it linked statically (runtime/build.rs) and copies it into
//! the rootfs, because busybox cannot do random I/O in one process and the
//! microVM guest runs static binaries without a loader.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::Instant;

fn fork(mib: &str, count: &str) -> Result<(u64, f64), String> {
    let mib: usize = mib.parse().map_err(|_| format!("bad MIB {mib:?}"))?;
    let count: u64 = count.parse().map_err(|_| format!("bad COUNT {count:?}"))?;
    let mut memory = vec![0u8; mib << 20];
    for page in memory.chunks_mut(4096) {
        page[0] = 1;
    }
    let started = Instant::now();
    for _ in 0..count {
        // SAFETY: this program is single-threaded; the child only calls
        // the async-signal-safe _exit.
        match unsafe { libc::fork() } {
            -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
            // SAFETY: _exit ends the child without running the parent's
            // destructors or flushing its buffers.
            0 => unsafe { libc::_exit(0) },
            child => {
                let mut status = 0;
                // SAFETY: `status` is a valid int for waitpid to fill.
                if unsafe { libc::waitpid(child, &mut status, 0) } != child {
                    return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Keep the memory written until the forks are over.
    std::hint::black_box(&memory);
    Ok((count, seconds))
}

fn run(args: &[String]) -> Result<(u64, f64), String> {
    if let [mode, mib, count] = args {
        if mode == "fork" {
            return fork(mib, count);
        }
    }
    let [mode, path, block, count] = args else {
        return Err(
            "usage: capsa-iobench randread|randwrite|cachedread FILE BLOCK COUNT | fork MIB COUNT"
                .into(),
        );
    };
    let block: usize = block.parse().map_err(|_| format!("bad BLOCK {block:?}"))?;
    let count: u64 = count.parse().map_err(|_| format!("bad COUNT {count:?}"))?;
    let (write, warm) = match mode.as_str() {
        "randread" => (false, false),
        "cachedread" => (false, true),
        "randwrite" => (true, false),
        other => return Err(format!("unknown mode {other:?}")),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    let blocks = (len / block.max(1) as u64).max(1);
    if warm {
        let mut whole = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < len {
            match file.read_at(&mut whole, at) {
                Ok(0) => break,
                Ok(n) => at += n as u64,
                Err(e) => return Err(format!("{path}: {e}")),
            }
        }
    }
    let mut buf = vec![0x5au8; block];
    // xorshift64: deterministic, cheap, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let started = Instant::now();
    for _ in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state % blocks) * block as u64;
        let result = if write {
            file.write_at(&buf, offset)
        } else {
            file.read_at(&mut buf, offset)
        };
        result.map_err(|e| format!("{path}: {e}"))?;
    }
    Ok((count, started.elapsed().as_secs_f64()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok((ops, seconds)) => {
            println!("{ops} {seconds:.9}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("capsa-iobench: {message}");
            ExitCode::FAILURE
        }
    }
}
