use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use capsa_abi::process::{Encoder, Record};

use super::*;

const CALL_AT: u64 = 0x1000;
const BUF_AT: u64 = 0x2_0000;

fn seqpacket() -> OwnedFd {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a descriptor socket(2) just returned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn address(path: &std::path::Path) -> libc::sockaddr_un {
    // SAFETY: sockaddr_un is plain data; zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *dst = *src as libc::c_char;
    }
    addr
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

struct Fixture {
    _dir: vmm_sys_util::tempdir::TempDir,
    path: std::path::PathBuf,
    mem: GuestMemory,
    exec: Exec,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/capsa-exec-test").unwrap();
        let path = dir.as_path().join("exec.sock");
        let listener = seqpacket();
        let addr = address(&path);
        // SAFETY: bind/listen on our socket with a valid sockaddr_un.
        unsafe {
            assert_eq!(
                libc::bind(
                    listener.as_raw_fd(),
                    (&addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as u32,
                ),
                0
            );
            assert_eq!(libc::listen(listener.as_raw_fd(), 128), 0);
        }
        let mem = crate::memory::create(8 << 20, false).unwrap();
        let exec = Exec::new(mem.clone(), listener).unwrap();
        Fixture {
            _dir: dir,
            path,
            mem,
            exec,
        }
    }

    fn connect(&self) -> Client {
        let fd = seqpacket();
        let addr = address(&self.path);
        // SAFETY: connect on our socket with a valid sockaddr_un.
        let ret = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as u32,
            )
        };
        assert_eq!(ret, 0);
        Client(fd)
    }

    fn word(&self) -> u64 {
        let word: u64 = self
            .mem
            .read_obj(GuestAddress(abi::HOST_EVENTS_ADDR))
            .unwrap();
        self.mem
            .write_obj(0u64, GuestAddress(abi::HOST_EVENTS_ADDR))
            .unwrap();
        word
    }

    /// Carries out a call the way the guest makes one: the call in guest
    /// RAM, its address written to the register.
    fn call(&mut self, op: u32, session: u32, stream: u32, len: u64) -> i64 {
        let mut raw = [0u8; abi::CALL_SIZE];
        raw[0..4].copy_from_slice(&op.to_le_bytes());
        raw[4..8].copy_from_slice(&session.to_le_bytes());
        raw[8..12].copy_from_slice(&stream.to_le_bytes());
        raw[16..24].copy_from_slice(&BUF_AT.to_le_bytes());
        raw[24..32].copy_from_slice(&len.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(CALL_AT)).unwrap();
        assert_eq!(
            self.exec.write(abi::CALL, &CALL_AT.to_le_bytes()),
            Action::Continue
        );
        self.mem
            .read_obj(GuestAddress(CALL_AT + abi::CALL_RESULT_OFFSET))
            .unwrap()
    }

    fn guest_bytes(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(BUF_AT)).unwrap();
        buf
    }
}

fn spec() -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let mut e = Encoder::new(&mut buf);
    e.push(&Record::Arg(b"cat")).unwrap();
    let n = e.len();
    buf.truncate(n);
    buf
}

fn reply(client: &Client) -> Reply {
    let mut buf = vec![0u8; 4096];
    // SAFETY: recv into our own buffer.
    let n = unsafe { libc::recv(client.socket_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(n > 0, "no reply");
    protocol::parse_reply(&buf[..n as usize]).unwrap()
}

#[test]
fn a_session_starts_moves_its_streams_and_reports_its_end() {
    let mut f = Fixture::new();
    let client = f.connect();
    let (stdin_r, mut stdin_w) = pipe();
    let (mut stdout_r, stdout_w) = pipe();
    let (_stderr_r, stderr_w) = pipe();
    let fds = [
        stdin_r.as_raw_fd(),
        stdout_w.as_raw_fd(),
        stderr_w.as_raw_fd(),
    ];
    let spec = spec();
    client
        .send_with_fds(&[&Request::Start(&spec).encode()[..]], &fds)
        .unwrap();
    drop((stdin_r, stdout_w, stderr_w));
    f.exec.poll_input();
    assert_eq!(f.word(), abi::EVENTS_PENDING);

    // The start event: header and spec.
    let n = f.call(op::NEXT_EVENT, 0, 0, 4096);
    assert_eq!(n as usize, abi::EVENT_HEADER_LEN + spec.len());
    let event = f.guest_bytes(n as usize);
    assert_eq!(&event[..4], &abi::event::START.to_le_bytes());
    let session = u32::from_le_bytes(event[4..8].try_into().unwrap());
    assert_eq!(&event[8..], &spec[..]);
    assert_eq!(f.call(op::NEXT_EVENT, 0, 0, 4096), 0, "one event only");
    assert_eq!(f.call(op::STARTED, session, 0, 7), 0);
    assert_eq!(reply(&client), Reply::Started(7));

    // stdout: the guest's bytes reach the client's descriptor.
    f.mem.write_slice(b"hello", GuestAddress(BUF_AT)).unwrap();
    assert_eq!(f.call(op::WRITE, session, 1, 5), 5);
    let mut got = [0u8; 5];
    stdout_r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    // stdin: nothing yet, then readiness is told, then the bytes.
    assert_eq!(f.call(op::READ, session, 0, 64), abi::EAGAIN);
    assert_eq!(f.call(op::POLL, session, 0, 0), 0);
    stdin_w.write_all(b"input").unwrap();
    f.exec.poll_input();
    assert_eq!(f.word(), abi::STREAM_READY);
    assert_eq!(f.call(op::POLL, session, 0, 0), 1);
    assert_eq!(f.call(op::READ, session, 0, 64), 5);
    assert_eq!(f.guest_bytes(5), b"input");
    drop(stdin_w);
    assert_eq!(f.call(op::READ, session, 0, 64), 0, "end of file");

    // A signal from the client becomes an event for the session.
    client
        .send_with_fds(&[&Request::Signal(15).encode()[..]], &[])
        .unwrap();
    f.exec.poll_input();
    assert_eq!(f.word(), abi::EVENTS_PENDING);
    assert_eq!(f.call(op::NEXT_EVENT, 0, 0, 4096), 12);
    let event = f.guest_bytes(12);
    assert_eq!(&event[..4], &abi::event::SIGNAL.to_le_bytes());
    assert_eq!(&event[8..], &15u32.to_le_bytes());

    assert_eq!(f.call(op::EXITED, session, 0, 3 << 8), 0);
    assert_eq!(reply(&client), Reply::Exited(3 << 8));
    for stream in 0..3 {
        assert_eq!(f.call(op::CLOSE, session, stream, 0), 0);
    }
    assert!(f.exec.sessions.is_empty(), "the session is forgotten");
    let mut rest = Vec::new();
    stdout_r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "stdout closed once the guest let it go");
}

#[test]
fn a_client_that_hangs_up_kills_its_process() {
    let mut f = Fixture::new();
    let client = f.connect();
    let (a, _b) = pipe();
    let fds = [a.as_raw_fd(); 3];
    client
        .send_with_fds(&[&Request::Start(&spec()).encode()[..]], &fds)
        .unwrap();
    f.exec.poll_input();
    let n = f.call(op::NEXT_EVENT, 0, 0, 4096);
    let session = u32::from_le_bytes(f.guest_bytes(n as usize)[4..8].try_into().unwrap());
    drop(client);
    f.exec.poll_input();
    assert_eq!(f.call(op::NEXT_EVENT, 0, 0, 4096), 8);
    let event = f.guest_bytes(8);
    assert_eq!(&event[..4], &abi::event::HANGUP.to_le_bytes());
    assert_eq!(&event[4..8], &session.to_le_bytes());
}

#[test]
fn hostile_calls_and_messages_are_refused() {
    let mut f = Fixture::new();
    // Calls naming no session, a stream out of range, an unknown op.
    assert_eq!(f.call(op::READ, 99, 0, 16), abi::EBADF);
    assert_eq!(f.call(op::WRITE, 99, 7, 16), abi::EBADF);
    assert_eq!(f.call(op::CLOSE, 99, 7, 0), abi::EBADF);
    assert_eq!(f.call(1234, 0, 0, 0), abi::EINVAL);
    // A call outside guest RAM, and one whose result would be: ignored.
    assert_eq!(
        f.exec.write(abi::CALL, &u64::MAX.to_le_bytes()),
        Action::Continue
    );
    assert_eq!(
        f.exec.write(abi::CALL, &(8u64 << 20).to_le_bytes()),
        Action::Continue
    );
    // A start without stdio, then garbage: each client hears why and is let go.
    let client = f.connect();
    client
        .send_with_fds(&[&Request::Start(&spec()).encode()[..]], &[])
        .unwrap();
    f.exec.poll_input();
    assert!(matches!(reply(&client), Reply::Failed(why) if why.contains("stdin")));
    let client = f.connect();
    client.send_with_fds(&[&b"capsaXYZ"[..]], &[]).unwrap();
    f.exec.poll_input();
    assert!(matches!(reply(&client), Reply::Failed(_)));
    assert_eq!(f.word(), 0, "nothing reached the guest");
    assert!(f.exec.sessions.is_empty());
    // An event too long for the guest's buffer is dropped, not split.
    let client = f.connect();
    let (a, _b) = pipe();
    client
        .send_with_fds(
            &[&Request::Start(&spec()).encode()[..]],
            &[a.as_raw_fd(); 3],
        )
        .unwrap();
    f.exec.poll_input();
    assert_eq!(f.call(op::NEXT_EVENT, 0, 0, 4), abi::EMSGSIZE);
    assert_eq!(f.call(op::NEXT_EVENT, 0, 0, 4096), 0);
}

#[test]
fn queued_signals_are_bounded() {
    let mut f = Fixture::new();
    let client = f.connect();
    let (a, _b) = pipe();
    client
        .send_with_fds(
            &[&Request::Start(&spec()).encode()[..]],
            &[a.as_raw_fd(); 3],
        )
        .unwrap();
    f.exec.poll_input();
    for _ in 0..MAX_QUEUED_EVENTS + 50 {
        client
            .send_with_fds(&[&Request::Signal(10).encode()[..]], &[])
            .unwrap();
        f.exec.poll_input();
    }
    assert_eq!(f.exec.events.len(), MAX_QUEUED_EVENTS);
}

#[test]
fn sessions_are_bounded() {
    let mut f = Fixture::new();
    let clients: Vec<Client> = (0..MAX_SESSIONS).map(|_| f.connect()).collect();
    f.exec.poll_input();
    assert_eq!(f.exec.sessions.len(), MAX_SESSIONS);
    let extra = f.connect();
    f.exec.poll_input();
    assert!(matches!(reply(&extra), Reply::Failed(why) if why.contains("exec sessions")));
    drop(clients);
    f.exec.poll_input();
    assert!(
        f.exec.sessions.is_empty(),
        "hung-up, never started sessions go"
    );
}
