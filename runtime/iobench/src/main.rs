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
//! `capsa-iobench tcpstream MIB`: one thread sends MIB MiB over a
//! 127.0.0.1 TCP connection to another that reads it all. Prints
//! `BYTES SECONDS`, from the first write to the reader's end of file.
//!
//! `capsa-iobench tcprr|unixrr COUNT`: COUNT round trips of a 1-byte
//! request and a 1-byte reply between two threads, over one loopback TCP
//! connection (TCP_NODELAY on both ends) or a unix stream socket pair.
//! Prints `COUNT SECONDS`.
//!
//! `capsa-iobench serve PORT COUNT`: listens on PORT of every address,
//! answers each byte of COUNT connections in turn with one byte until the
//! peer closes, then exits. Prints `COUNT 0`. The server for requests from
//! outside the instance (`capsa bench net`'s host requests).
//!
//! capsa embeds it linked statically (runtime/build.rs) and copies it into
//! the rootfs, because busybox cannot do random I/O in one process and the
//! microVM guest runs static binaries without a loader.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::thread;
use std::time::Instant;

/// What each write of the stream phase hands the kernel: large enough that
/// the per-call cost does not dominate, as a bulk sender's writes are.
const STREAM_CHUNK: usize = 128 << 10;

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A listener on 127.0.0.1 at a port the kernel picks, so runs never
/// collide with each other or with anything on the host.
fn loopback_listener() -> Result<(TcpListener, std::net::SocketAddr), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("bind"))?;
    let addr = listener.local_addr().map_err(io_err("getsockname"))?;
    Ok((listener, addr))
}

fn tcp_stream(mib: &str) -> Result<(u64, f64), String> {
    let mib: u64 = mib.parse().map_err(|_| format!("bad MIB {mib:?}"))?;
    let total = mib
        .checked_mul(1 << 20)
        .ok_or_else(|| format!("MIB {mib} is too large"))?;
    let (listener, addr) = loopback_listener()?;
    let reader = thread::spawn(move || -> Result<u64, String> {
        let (mut conn, _) = listener.accept().map_err(io_err("accept"))?;
        let mut buf = vec![0u8; STREAM_CHUNK];
        let mut got = 0u64;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
    });
    let mut conn = TcpStream::connect(addr).map_err(io_err("connect"))?;
    let chunk = vec![0x5au8; STREAM_CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(STREAM_CHUNK as u64) as usize;
        conn.write_all(&chunk[..n]).map_err(io_err("send"))?;
        sent += n as u64;
    }
    conn.shutdown(Shutdown::Write).map_err(io_err("shutdown"))?;
    let got = reader
        .join()
        .map_err(|_| "the reader thread panicked".to_string())??;
    let seconds = started.elapsed().as_secs_f64();
    if got != total {
        return Err(format!("sent {total} bytes, the reader got {got}"));
    }
    Ok((total, seconds))
}

/// Answers each byte read with one byte until the peer closes.
fn echo(mut conn: impl Read + Write) -> Result<(), String> {
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte) {
            Ok(0) => return Ok(()),
            Ok(_) => conn.write_all(&byte).map_err(io_err("reply"))?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn round_trip(conn: &mut dyn ReadWrite, byte: &mut [u8; 1]) -> Result<(), String> {
    conn.write_all(byte).map_err(io_err("request"))?;
    conn.read_exact(byte).map_err(io_err("reply"))
}

/// COUNT timed round trips, after one untimed so the connection (and the
/// echo thread) are up before the clock starts.
fn ping_pong(conn: &mut dyn ReadWrite, count: u64) -> Result<f64, String> {
    let mut byte = [1u8; 1];
    round_trip(conn, &mut byte)?;
    let started = Instant::now();
    for _ in 0..count {
        round_trip(conn, &mut byte)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn round_trips(kind: &str, count: &str) -> Result<(u64, f64), String> {
    let count: u64 = count.parse().map_err(|_| format!("bad COUNT {count:?}"))?;
    let (mut client, server) = match kind {
        "tcprr" => {
            let (listener, addr) = loopback_listener()?;
            let server = thread::spawn(move || -> Result<(), String> {
                let (conn, _) = listener.accept().map_err(io_err("accept"))?;
                conn.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
                echo(conn)
            });
            let client = TcpStream::connect(addr).map_err(io_err("connect"))?;
            client.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
            (Box::new(client) as Box<dyn ReadWrite>, server)
        }
        "unixrr" => {
            let (client, conn) = UnixStream::pair().map_err(io_err("socketpair"))?;
            let server = thread::spawn(move || echo(conn));
            (Box::new(client) as Box<dyn ReadWrite>, server)
        }
        other => return Err(format!("unknown mode {other:?}")),
    };
    let seconds = ping_pong(client.as_mut(), count)?;
    // Closing our end is what ends the echo loop.
    drop(client);
    server
        .join()
        .map_err(|_| "the echo thread panicked".to_string())??;
    Ok((count, seconds))
}

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

/// Serves `count` connections on `port`, one after another.
fn serve(port: &str, count: &str) -> Result<(u64, f64), String> {
    let port: u16 = port.parse().map_err(|_| format!("bad PORT {port:?}"))?;
    let count: u64 = count.parse().map_err(|_| format!("bad COUNT {count:?}"))?;
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(io_err("bind"))?;
    for _ in 0..count {
        let (conn, _) = listener.accept().map_err(io_err("accept"))?;
        conn.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
        echo(conn)?;
    }
    Ok((count, 0.0))
}

fn run(args: &[String]) -> Result<(u64, f64), String> {
    if let [mode, mib, count] = args {
        if mode == "fork" {
            return fork(mib, count);
        }
        if mode == "serve" {
            return serve(mib, count);
        }
    }
    if let [mode, amount] = args {
        match mode.as_str() {
            "tcpstream" => return tcp_stream(amount),
            "tcprr" | "unixrr" => return round_trips(mode, amount),
            _ => {}
        }
    }
    let [mode, path, block, count] = args else {
        return Err(
            "usage: capsa-iobench randread|randwrite|cachedread FILE BLOCK COUNT | fork MIB COUNT \
             | tcpstream MIB | tcprr|unixrr COUNT | serve PORT COUNT"
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
