//! virtio-fs driven through virtio-queue's mock driver: FUSE requests built
//! by hand, checked for confinement and read-only enforcement.

use super::*;
use std::path::PathBuf;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

const LOOKUP: u32 = Opcode::Lookup as u32;
const OPEN: u32 = Opcode::Open as u32;
const READ: u32 = Opcode::Read as u32;
const MKDIR: u32 = Opcode::Mkdir as u32;
const INIT: u32 = Opcode::Init as u32;

struct Harness {
    fs: Fs,
    mem: GuestMemory,
    queue: Queue,
    next_desc: u16,
    next_buf: u64,
    unique: u64,
}

fn raw(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
}

impl Harness {
    fn new(dir: &Path, readonly: bool) -> Self {
        let mem = crate::memory::create(16 << 20, false).unwrap();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 256);
        let queue: Queue = mock.create_queue().unwrap();
        let mut h = Self {
            fs: Fs::new(dir, "test", readonly).unwrap(),
            mem,
            queue,
            next_desc: 0,
            next_buf: 0x40_0000,
            unique: 1,
        };
        let mut init = Vec::new();
        for v in [7u32, 31, 0, 0] {
            init.extend(v.to_le_bytes());
        }
        let (err, _) = h.request(INIT, 0, &init);
        assert_eq!(err, 0);
        h
    }

    /// Sends one request; returns the reply's error and payload.
    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        let mut msg = Vec::new();
        let len = (40 + body.len()) as u32;
        msg.extend(len.to_le_bytes());
        msg.extend(opcode.to_le_bytes());
        msg.extend(self.unique.to_le_bytes());
        msg.extend(nodeid.to_le_bytes());
        msg.extend([0u8; 16]); // uid, gid, pid, extlen, padding
        msg.extend_from_slice(body);
        self.unique += 1;

        let req = self.next_buf;
        let reply = req + 0x1000;
        self.next_buf += 0x4000;
        self.mem.write_slice(&msg, GuestAddress(req)).unwrap();
        // Driver side by hand: two descriptors and one avail ring entry.
        let table = self.queue.desc_table();
        let avail = self.queue.avail_ring();
        let d = self.next_desc;
        let descs = [
            raw(req, msg.len() as u32, VRING_DESC_F_NEXT),
            raw(reply, 0x3000, VRING_DESC_F_WRITE),
        ];
        for (i, desc) in descs.into_iter().enumerate() {
            let desc = Descriptor::from(desc);
            let next = if i == 0 { d + 1 } else { 0 };
            let desc = RawDescriptor::from(Descriptor::new(
                desc.addr().0,
                desc.len(),
                desc.flags(),
                next,
            ));
            self.mem
                .write_obj(desc, GuestAddress(table + u64::from(d + i as u16) * 16))
                .unwrap();
        }
        let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
        self.mem
            .write_obj(d, GuestAddress(avail + 4 + u64::from(idx % 256) * 2))
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
            .unwrap();
        self.next_desc += 2;
        let used_before = self.queue.next_used();
        self.fs
            .process_queue(REQUEST_QUEUE, &mut self.queue, &self.mem);
        assert_eq!(self.queue.next_used(), used_before.wrapping_add(1));
        let mut out = vec![0u8; 0x3000];
        self.mem.read_slice(&mut out, GuestAddress(reply)).unwrap();
        let out_len = u32::from_le_bytes(out[0..4].try_into().unwrap()) as usize;
        let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
        (error, out[16..out_len.max(16)].to_vec())
    }

    /// Publishes a hand-made chain: `(addr, len, flags, next)` at descriptor
    /// indices `d, d+1, ...` (with `next` relative to `d`), head `d`; serves
    /// the queue and returns how many chains went back to the driver.
    fn raw_chain(&mut self, descs: &[(u64, u32, u32, u16)]) -> u16 {
        let table = self.queue.desc_table();
        let avail = self.queue.avail_ring();
        let d = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let desc = RawDescriptor::from(Descriptor::new(
                addr,
                len,
                flags as u16,
                d.wrapping_add(next),
            ));
            self.mem
                .write_obj(desc, GuestAddress(table + u64::from(d + i as u16) * 16))
                .unwrap();
        }
        let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
        self.mem
            .write_obj(d, GuestAddress(avail + 4 + u64::from(idx % 256) * 2))
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
            .unwrap();
        self.next_desc += descs.len() as u16;
        let used_before = self.queue.next_used();
        self.fs
            .process_queue(REQUEST_QUEUE, &mut self.queue, &self.mem);
        self.queue.next_used().wrapping_sub(used_before)
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, u64), i32> {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        match self.request(LOOKUP, parent, &body) {
            (0, entry) => Ok((
                u64::from_le_bytes(entry[0..8].try_into().unwrap()),
                u64::from_le_bytes(entry[40..48].try_into().unwrap()),
            )),
            (err, _) => Err(-err),
        }
    }

    fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let mut body = (flags as u32).to_le_bytes().to_vec();
        body.extend([0u8; 4]);
        match self.request(OPEN, node, &body) {
            (0, out) => Ok(u64::from_le_bytes(out[0..8].try_into().unwrap())),
            (err, _) => Err(-err),
        }
    }

    fn read(&mut self, node: u64, fh: u64, size: u32) -> Result<Vec<u8>, i32> {
        let mut body = Vec::new();
        body.extend(fh.to_le_bytes());
        body.extend(0u64.to_le_bytes());
        body.extend(size.to_le_bytes());
        body.extend([0u8; 20]);
        match self.request(READ, node, &body) {
            (0, data) => Ok(data),
            (err, _) => Err(-err),
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capsa-vmm-fs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("file"), b"inside").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../etc/passwd", dir.join("sub/rel")).unwrap();
    dir
}

#[test]
fn serves_files_inside_the_directory() {
    let dir = fixture("serve");
    let mut h = Harness::new(&dir, false);
    let (node, _) = h.lookup(1, "file").unwrap();
    let fh = h.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(node, fh, 4096).unwrap(), b"inside");
    assert_eq!(h.lookup(1, "missing"), Err(libc::ENOENT));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cannot_escape_the_directory() {
    let dir = fixture("escape");
    let mut h = Harness::new(&dir, false);
    let root_ino = std::fs::metadata(&dir)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    // `..` of the root is the root.
    let (_, ino) = h.lookup(1, "..").unwrap();
    assert_eq!(ino, root_ino);
    let (sub, _) = h.lookup(1, "sub").unwrap();
    let (_, ino) = h.lookup(sub, "..").unwrap();
    assert_eq!(ino, root_ino);
    // Names are single components.
    assert_eq!(h.lookup(1, "sub/../../etc"), Err(libc::EINVAL));
    assert_eq!(h.lookup(1, "/etc"), Err(libc::EINVAL));
    // Symlinks are not followed on the host: opening one fails.
    for (parent, name) in [(1, "abs"), (sub, "rel")] {
        let (link, _) = h.lookup(parent, name).unwrap();
        assert!(h.open(link, libc::O_RDONLY).is_err(), "{name} was followed");
    }
    // Made-up inode numbers are refused.
    assert!(h.open(0xdead_beef, libc::O_RDONLY).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// A READ whose flags differ from its handle's no longer changes the host
/// descriptor's flags: when that F_SETFL failed (here on an O_PATH handle),
/// fuse-backend-rs closed the handle's descriptor by mistake, and the handle
/// went on to read, and finally close, whatever file next got its number.
#[test]
fn a_handle_keeps_its_own_descriptor() {
    let dir = fixture("flags");
    std::fs::write(dir.join("other"), b"other file").unwrap();
    let mut h = Harness::new(&dir, false);
    let (node, _) = h.lookup(1, "file").unwrap();
    let fh = h.open(node, libc::O_PATH).unwrap();
    assert!(h.read(node, fh, 64).is_err());
    let (other, _) = h.lookup(1, "other").unwrap();
    let other_fh = h.open(other, libc::O_RDONLY).unwrap();
    assert_ne!(h.read(node, fh, 64), Ok(b"other file".to_vec()));
    assert_eq!(h.read(other, other_fh, 64).unwrap(), b"other file");
    // O_APPEND stays with the guest kernel: a write lands where it says.
    let fh = h.open(node, libc::O_WRONLY | libc::O_APPEND).unwrap();
    let mut write = fh.to_le_bytes().to_vec();
    write.extend(0u64.to_le_bytes());
    write.extend(1u32.to_le_bytes());
    write.extend([0u8; 20]);
    write.push(b'I');
    assert_eq!(h.request(Opcode::Write as u32, node, &write).0, 0);
    assert_eq!(std::fs::read(dir.join("file")).unwrap(), b"Inside");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn read_only_directories_refuse_writes() {
    let dir = fixture("ro");
    let mut h = Harness::new(&dir, true);
    let (node, _) = h.lookup(1, "file").unwrap();
    assert_eq!(h.open(node, libc::O_WRONLY), Err(libc::EROFS));
    assert_eq!(
        h.open(node, libc::O_RDONLY | libc::O_TRUNC),
        Err(libc::EROFS)
    );
    assert!(h.open(node, libc::O_RDONLY).is_ok());
    let mut body = 0o755u32.to_le_bytes().to_vec();
    body.extend([0u8; 4]);
    body.extend(b"newdir\0");
    assert_eq!(h.request(MKDIR, 1, &body).0, -libc::EROFS);
    assert!(!dir.join("newdir").exists());
    // Unknown opcodes are refused before the server sees them.
    assert_eq!(h.request(7, 1, &[]).0, -libc::ENOSYS);
    assert_eq!(h.request(u32::MAX, 1, &[]).0, -libc::ENOSYS);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn screen_classifies_requests() {
    assert_eq!(screen(LOOKUP, None, true), Verdict::Serve);
    assert_eq!(screen(Opcode::Write as u32, None, false), Verdict::Serve);
    assert_eq!(
        screen(Opcode::Write as u32, None, true),
        Verdict::Refuse(libc::EROFS)
    );
    assert_eq!(
        screen(OPEN, Some(libc::O_RDWR as u32), true),
        Verdict::Refuse(libc::EROFS)
    );
    assert_eq!(
        screen(Opcode::SetupMapping as u32, None, false),
        Verdict::Refuse(libc::ENOSYS)
    );
    assert_eq!(screen(19, None, false), Verdict::Refuse(libc::ENOSYS));
}

#[test]
fn truncated_and_hostile_requests_do_not_panic() {
    let dir = fixture("hostile");
    let mut h = Harness::new(&dir, false);
    // A header that claims a huge length, then a body-less LOOKUP.
    for opcode in [
        LOOKUP,
        OPEN,
        READ,
        MKDIR,
        INIT,
        Opcode::Write as u32,
        Opcode::BatchForget as u32,
    ] {
        let _ = h.request(opcode, 1, &[]);
        let _ = h.request(opcode, u64::MAX, &[0xff; 64]);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Exercises the common requests in a child process confined by the VMM's
/// seccomp filter: a missing syscall kills the child with SIGSYS.
#[test]
fn serving_works_under_the_seccomp_filter() {
    const CHILD: &str = "CAPSA_VMM_FS_SECCOMP_CHILD";
    if std::env::var(CHILD).is_ok() {
        let dir = fixture("seccomp");
        let mut h = Harness::new(&dir, false);
        crate::seccomp::install().unwrap();
        let (node, _) = h.lookup(1, "file").unwrap();
        let fh = h.open(node, libc::O_RDONLY).unwrap();
        assert_eq!(h.read(node, fh, 4096).unwrap(), b"inside");
        assert_eq!(h.request(Opcode::Getattr as u32, node, &[0u8; 16]).0, 0);
        assert_eq!(h.request(Opcode::Statfs as u32, 1, &[]).0, 0);
        let (link, _) = h.lookup(1, "abs").unwrap();
        assert_eq!(h.request(Opcode::Readlink as u32, link, &[]).0, 0);
        let mut mkdir = 0o755u32.to_le_bytes().to_vec();
        mkdir.extend([0u8; 4]);
        mkdir.extend(b"made\0");
        assert_eq!(h.request(MKDIR, 1, &mkdir).0, 0);
        let (sub, _) = h.lookup(1, "sub").unwrap();
        let (err, out) = h.request(Opcode::Opendir as u32, sub, &[0u8; 8]);
        assert_eq!(err, 0);
        let dfh = u64::from_le_bytes(out[0..8].try_into().unwrap());
        let mut readdir = dfh.to_le_bytes().to_vec();
        readdir.extend(0u64.to_le_bytes());
        readdir.extend(4096u32.to_le_bytes());
        readdir.extend([0u8; 20]);
        assert_eq!(h.request(Opcode::Readdir as u32, sub, &readdir).0, 0);
        assert_eq!(h.request(Opcode::Rmdir as u32, 1, b"made\0").0, 0);
        assert_eq!(h.request(Opcode::Unlink as u32, 1, b"file\0").0, 0);
        let _ = std::fs::remove_dir_all(dir);
        std::process::exit(0);
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "devices::virtio::fs::tests::serving_works_under_the_seccomp_filter",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Chains a hostile guest can publish: each is consumed without a panic or a
/// hang (at most one used entry per published head), and the device keeps
/// serving well-formed requests afterwards.
#[test]
fn hostile_descriptor_chains_are_rejected_without_panic() {
    let dir = fixture("chains");
    let mut h = Harness::new(&dir, false);
    let ram = 16u64 << 20;
    let mut header = Vec::new();
    header.extend(56u32.to_le_bytes());
    header.extend(LOOKUP.to_le_bytes());
    header.extend(99u64.to_le_bytes());
    header.extend(1u64.to_le_bytes());
    header.extend([0u8; 16]);
    header.extend(b"file\0\0\0\0\0\0\0\0\0\0\0");
    let req = 0x80_0000;
    h.mem.write_slice(&header, GuestAddress(req)).unwrap();
    let next = VRING_DESC_F_NEXT;
    let write = VRING_DESC_F_WRITE;
    let cases: [&[(u64, u32, u32, u16)]; 8] = [
        // A chain whose last descriptor points back at its head.
        &[(req, 56, next, 1), (0x81_0000, 0x1000, write | next, 0)],
        // A descriptor pointing at itself.
        &[(req, 56, next, 0)],
        // A length of u32::MAX, readable and writable.
        &[(req, u32::MAX, next, 1), (0x81_0000, u32::MAX, write, 0)],
        // Addresses beyond guest RAM and at the top of the address space.
        &[(ram + 0x1000, 56, next, 1), (ram, 0x1000, write, 0)],
        &[(req, 56, next, 1), (u64::MAX - 7, 0x1000, write, 0)],
        // A buffer that starts inside RAM and runs past its end.
        &[(req, 56, next, 1), (ram - 16, 0x1000, write, 0)],
        // A `next` outside the descriptor table.
        &[(req, 56, next, 300)],
        // An indirect table (not negotiated) with a hostile length.
        &[(req, u32::MAX, 4 /* VRING_DESC_F_INDIRECT */, 0)],
    ];
    for descs in cases {
        assert!(h.raw_chain(descs) <= 1, "{descs:x?}");
    }
    // The device still serves a well-formed request.
    let (node, _) = h.lookup(1, "file").unwrap();
    let fh = h.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(node, fh, 4096).unwrap(), b"inside");
    let _ = std::fs::remove_dir_all(dir);
}

/// A guest asking for big writes is offered 1 MiB ones (the server handles
/// them; its passthrough alone would offer 4 KiB); one that does not ask
/// keeps the server's answer.
#[test]
fn init_offers_big_writes_to_a_guest_that_asks() {
    let dir = fixture("init");
    let mut h = Harness::new(&dir, false);
    for (flags, max_write, max_pages) in [
        (
            super::FUSE_BIG_WRITES | super::FUSE_MAX_PAGES,
            1u32 << 20,
            256u16,
        ),
        (0, 4096, 0),
    ] {
        let mut init = Vec::new();
        for v in [7u32, 31, 1 << 20, flags] {
            init.extend(v.to_le_bytes());
        }
        let (err, reply) = h.request(INIT, 0, &init);
        assert_eq!(err, 0);
        let field = |at: usize| u32::from_le_bytes(reply[at..at + 4].try_into().unwrap());
        assert_eq!(field(20), max_write, "flags {flags:#x}");
        assert_eq!(u16::from_le_bytes([reply[28], reply[29]]), max_pages);
        assert_eq!(field(12) & flags, flags);
    }
}
