//! virtio-fs (virtio 1.2 section 5.11): FUSE requests from the guest served
//! from one host directory by fuse-backend-rs's passthrough file system.
//!
//! Queue 0 is the high-priority queue, queue 1 the single request queue; both
//! are served the same way, synchronously, during the notification exit.
//!
//! Confinement: the passthrough file system resolves every request relative
//! to inode descriptors it opened under the served directory, one path
//! component at a time (names with `/` are refused, `..` of the root is the
//! root, symlinks are never followed on the host: the guest reads them and
//! resolves them itself). Before a request reaches it, [`screen`] refuses
//! opcodes this device does not serve and, for a read-only directory, every
//! request that would modify it (`EROFS`). READ and WRITE reach the
//! passthrough through `FixedFlags` (`fs/fixed_flags.rs`), which keeps a
//! handle's host descriptor its own.

use std::path::Path;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{ByteValued, Bytes};

use self::fixed_flags::FixedFlags;
use super::{queue, VirtioDevice};
use crate::memory::GuestMemory;

mod fixed_flags;

pub const HIPRIO_QUEUE: usize = 0;
pub const REQUEST_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// Longest tag (virtio 1.2 section 5.11.4).
pub const TAG_LEN: usize = 36;

/// Why a directory cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path is not valid UTF-8 or contains a NUL byte.
    #[error("the path cannot be passed to the FUSE server")]
    BadPath,
    /// The directory does not exist or cannot be resolved.
    #[error("cannot resolve the directory")]
    Resolve(#[source] std::io::Error),
    /// The passthrough file system could not open it.
    #[error("cannot open the directory for serving")]
    Open(#[source] std::io::Error),
    /// The tag is longer than virtio-fs allows.
    #[error("tag {0:?} is longer than {TAG_LEN} bytes")]
    TagTooLong(String),
}

type Passthrough = PassthroughFs<()>;

pub struct Fs {
    server: Server<Arc<FixedFlags<Passthrough>>>,
    readonly: bool,
    config: [u8; TAG_LEN + 4],
}

/// What to do with a request before the server sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Serve,
    /// Answer with this errno.
    Refuse(i32),
}

/// Decides whether a request with this header (and, for OPEN, these open
/// flags) may reach the server.
pub fn screen(opcode: u32, open_flags: Option<u32>, readonly: bool) -> Verdict {
    use Opcode as O;
    let served = [
        O::Lookup,
        O::Forget,
        O::Getattr,
        O::Setattr,
        O::Readlink,
        O::Symlink,
        O::Mknod,
        O::Mkdir,
        O::Unlink,
        O::Rmdir,
        O::Rename,
        O::Link,
        O::Open,
        O::Read,
        O::Write,
        O::Statfs,
        O::Release,
        O::Fsync,
        O::Setxattr,
        O::Getxattr,
        O::Listxattr,
        O::Removexattr,
        O::Flush,
        O::Init,
        O::Opendir,
        O::Readdir,
        O::Releasedir,
        O::Fsyncdir,
        O::Getlk,
        O::Setlk,
        O::Setlkw,
        O::Access,
        O::Create,
        O::Interrupt,
        O::Destroy,
        O::BatchForget,
        O::Fallocate,
        O::Readdirplus,
        O::Rename2,
        O::Lseek,
    ];
    if !served.iter().any(|&o| o as u32 == opcode) {
        return Verdict::Refuse(libc::ENOSYS);
    }
    if !readonly {
        return Verdict::Serve;
    }
    let modifies = [
        O::Setattr,
        O::Symlink,
        O::Mknod,
        O::Mkdir,
        O::Unlink,
        O::Rmdir,
        O::Rename,
        O::Link,
        O::Write,
        O::Setxattr,
        O::Removexattr,
        O::Create,
        O::Fallocate,
        O::Rename2,
    ];
    if modifies.iter().any(|&o| o as u32 == opcode) {
        return Verdict::Refuse(libc::EROFS);
    }
    if opcode == O::Open as u32 {
        let flags = open_flags.unwrap_or(0) as i32;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Verdict::Refuse(libc::EROFS);
        }
    }
    Verdict::Serve
}

/// The largest WRITE the device takes: fuse-backend-rs's server accepts
/// requests up to its 1 MiB buffer size, but its passthrough file system
/// does not ask for `BIG_WRITES`, so the server's INIT reply offers 4 KiB
/// writes — 256 requests (and VM exits) per MiB, measured at ~105 MiB/s.
/// The device widens the reply (see [`widen_init_reply`]).
const MAX_WRITE: u32 = 1 << 20;
/// `fuse_init_out` fields, counted from the start of the reply (after the
/// 16-byte out header).
const INIT_OUT_FLAGS: usize = 16 + 12;
const INIT_OUT_MAX_WRITE: usize = 16 + 20;
const INIT_OUT_MAX_PAGES: usize = 16 + 28;
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;

/// Where byte `offset` of a chain's device-writable part lies in guest memory.
fn writable_addr(
    chain: &DescriptorChain<&GuestMemory>,
    offset: usize,
) -> Option<vm_memory::GuestAddress> {
    use vm_memory::Address as _;
    let mut at = 0usize;
    for desc in chain.clone().writable() {
        let len = desc.len() as usize;
        if (at..at.saturating_add(len)).contains(&offset) {
            return desc.addr().checked_add((offset - at) as u64);
        }
        at = at.saturating_add(len);
    }
    None
}

/// Reads or writes the little-endian u32 at `offset` of the writable part.
fn reply_u32(chain: &DescriptorChain<&GuestMemory>, mem: &GuestMemory, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (i, byte) in bytes.iter_mut().enumerate() {
        if let Some(addr) = writable_addr(chain, offset + i) {
            let _ = mem.read_slice(std::slice::from_mut(byte), addr);
        }
    }
    u32::from_le_bytes(bytes)
}

fn set_reply_bytes(
    chain: &DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    offset: usize,
    bytes: &[u8],
) {
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(addr) = writable_addr(chain, offset + i) {
            let _ = mem.write_slice(&[b], addr);
        }
    }
}

/// Raises max_write to [`MAX_WRITE`] in a successful INIT reply of `len`
/// bytes, when the guest asked for `BIG_WRITES` or `MAX_PAGES`.
fn widen_init_reply(
    chain: &DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
    len: usize,
    guest_flags: u32,
) {
    let wanted = guest_flags & (FUSE_BIG_WRITES | FUSE_MAX_PAGES);
    if len < INIT_OUT_MAX_PAGES + 2 || wanted == 0 {
        return;
    }
    let flags = reply_u32(chain, mem, INIT_OUT_FLAGS) | wanted;
    set_reply_bytes(chain, mem, INIT_OUT_FLAGS, &flags.to_le_bytes());
    set_reply_bytes(chain, mem, INIT_OUT_MAX_WRITE, &MAX_WRITE.to_le_bytes());
    let pages = (MAX_WRITE / 4096) as u16;
    set_reply_bytes(chain, mem, INIT_OUT_MAX_PAGES, &pages.to_le_bytes());
}

/// Reads the first `buf.len()` device-readable bytes of a chain.
fn peek(chain: &DescriptorChain<&GuestMemory>, mem: &GuestMemory, buf: &mut [u8]) -> usize {
    let mut done = 0;
    for desc in chain.clone().readable() {
        if done == buf.len() {
            break;
        }
        let take = (desc.len() as usize).min(buf.len() - done);
        if mem
            .read_slice(&mut buf[done..done + take], desc.addr())
            .is_err()
        {
            break;
        }
        done += take;
    }
    done
}

impl Fs {
    /// Serves `dir` under `tag`; with `readonly`, modifications fail with `EROFS`.
    pub fn new(dir: &Path, tag: &str, readonly: bool) -> Result<Self, Error> {
        if tag.len() > TAG_LEN {
            return Err(Error::TagTooLong(tag.to_string()));
        }
        let dir = dir.canonicalize().map_err(Error::Resolve)?;
        let root_dir = dir.to_str().ok_or(Error::BadPath)?.to_string();
        if root_dir.contains('\0') {
            return Err(Error::BadPath);
        }
        let cfg = Config {
            root_dir,
            do_import: true,
            // Extended attributes reach the host file; the guest passes only
            // the `user.*` and `trusted.*` namespaces (and the host refuses
            // `trusted.*` to the VMM, which lacks CAP_SYS_ADMIN).
            xattr: true,
            writeback: false,
            // virtio-fs's cache=auto: the guest keeps names and attributes
            // for a second and revalidates a file's cached pages on open.
            cache_policy: CachePolicy::Auto,
            attr_timeout: std::time::Duration::from_secs(1),
            entry_timeout: std::time::Duration::from_secs(1),
            ..Default::default()
        };
        let fs = Passthrough::new(cfg).map_err(Error::Open)?;
        fs.import().map_err(Error::Open)?;
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            server: Server::new(Arc::new(FixedFlags::new(fs))),
            readonly,
            config,
        })
    }

    /// Serves one request; returns the number of bytes written to the guest.
    fn serve(&self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        // The header, then the first 16 bytes of the body (open flags,
        // INIT's flags).
        let mut head = [0u8; std::mem::size_of::<InHeader>() + 16];
        let got = peek(&chain, mem, &mut head);
        let Some(header) = head
            .get(..std::mem::size_of::<InHeader>())
            .filter(|_| got >= std::mem::size_of::<InHeader>())
            .and_then(InHeader::from_slice)
            .copied()
        else {
            return 0; // not even a header: nothing to answer
        };
        let open_flags = (got >= std::mem::size_of::<InHeader>() + 4).then(|| {
            let at = std::mem::size_of::<InHeader>();
            u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]])
        });
        match screen(header.opcode, open_flags, self.readonly) {
            Verdict::Serve => {
                let Ok(reader) = Reader::from_descriptor_chain(mem, chain.clone()) else {
                    return 0;
                };
                let chain_copy = chain.clone();
                let Ok(writer) = VirtioFsWriter::new(mem, chain) else {
                    return 0;
                };
                // Errors here are malformed requests the server could not
                // even answer; the buffer goes back empty.
                let written = self
                    .server
                    .handle_message(reader, writer.into(), None, None)
                    .map_or(0, |n| u32::try_from(n).unwrap_or(0));
                if header.opcode == Opcode::Init as u32 && got >= head.len() {
                    // fuse_init_in: major, minor, max_readahead, flags.
                    let at = std::mem::size_of::<InHeader>() + 12;
                    let flags =
                        u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
                    widen_init_reply(&chain_copy, mem, written as usize, flags);
                }
                written
            }
            Verdict::Refuse(errno) => {
                let reply = OutHeader {
                    len: std::mem::size_of::<OutHeader>() as u32,
                    error: -errno,
                    unique: header.unique,
                };
                let Ok(mut writer) = VirtioFsWriter::new(mem, chain) else {
                    return 0;
                };
                match writer.write_obj(reply) {
                    Ok(()) => reply.len,
                    Err(_) => 0,
                }
            }
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        capsa_abi::VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) {
        while let Some(chain) = queue::pop(queue, mem) {
            let head = chain.head_index();
            let len = self.serve(chain, mem);
            queue::add_used(queue, mem, head, len);
        }
    }
}

#[cfg(test)]
mod tests;
