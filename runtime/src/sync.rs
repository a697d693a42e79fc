//! The channel between `capsa` and the container's init while the container
//! is being created: a SOCK_SEQPACKET socketpair, one message per packet, so
//! neither side needs framing and a dead peer reads as end-of-file.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot create the init synchronisation socket")]
    Socket(#[source] nix::Error),
    #[error("cannot talk to the container's init")]
    Io(#[source] nix::Error),
    #[error("the container's init exited during setup")]
    Closed,
    #[error("unexpected message {0:?} from the container's init")]
    Unexpected(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Parent -> init: uid/gid maps are written and the init is in its cgroup.
    Go,
    /// Init -> parent: namespaces exist; run prestart and createRuntime hooks.
    RuntimeHooks,
    /// Parent -> init: the hooks succeeded.
    HooksDone,
    /// Init -> parent: set up, waiting for `start`.
    Ready,
    /// Init -> parent: setup failed with this message.
    Failed(String),
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        match self {
            Message::Go => vec![1],
            Message::RuntimeHooks => vec![2],
            Message::HooksDone => vec![3],
            Message::Ready => vec![4],
            Message::Failed(text) => {
                let mut out = vec![5];
                out.extend_from_slice(text.as_bytes());
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> Result<Message, SyncError> {
        match bytes {
            [1] => Ok(Message::Go),
            [2] => Ok(Message::RuntimeHooks),
            [3] => Ok(Message::HooksDone),
            [4] => Ok(Message::Ready),
            [5, text @ ..] => Ok(Message::Failed(String::from_utf8_lossy(text).into_owned())),
            other => Err(SyncError::Unexpected(other.to_vec())),
        }
    }
}

pub struct Channel(OwnedFd);

impl Channel {
    pub fn pair() -> Result<(Channel, Channel), SyncError> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(SyncError::Socket)?;
        Ok((Channel(a), Channel(b)))
    }

    pub fn send(&self, message: &Message) -> Result<(), SyncError> {
        socket::send(
            self.0.as_raw_fd(),
            &message.encode(),
            MsgFlags::MSG_NOSIGNAL,
        )
        .map_err(SyncError::Io)?;
        Ok(())
    }

    pub fn recv(&self) -> Result<Message, SyncError> {
        let mut buf = [0u8; 4096];
        loop {
            match socket::recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) => return Err(SyncError::Closed),
                Ok(n) => return Message::decode(&buf[..n]),
                Err(nix::Error::EINTR) => continue,
                Err(err) => return Err(SyncError::Io(err)),
            }
        }
    }

    /// Receives and requires one specific message; a `Failed` from the init
    /// becomes an error carrying its text.
    pub fn expect(&self, wanted: Message) -> Result<(), InitFailed> {
        match self.recv() {
            Ok(got) if got == wanted => Ok(()),
            Ok(Message::Failed(text)) => Err(InitFailed::Reported(text)),
            Ok(other) => Err(InitFailed::Sync(SyncError::Unexpected(other.encode()))),
            Err(err) => Err(InitFailed::Sync(err)),
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Why the init did not reach the expected step.
#[derive(Debug, thiserror::Error)]
pub enum InitFailed {
    /// The init's own one-line description of what went wrong.
    #[error("{0}")]
    Reported(String),
    #[error(transparent)]
    Sync(SyncError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_the_pair() {
        let (a, b) = Channel::pair().expect("pair");
        a.send(&Message::Go).expect("send");
        a.send(&Message::Failed("mounts[2]: bad".into()))
            .expect("send");
        assert_eq!(b.recv().expect("recv"), Message::Go);
        match b.expect(Message::Ready) {
            Err(InitFailed::Reported(text)) => assert_eq!(text, "mounts[2]: bad"),
            other => panic!("unexpected {other:?}"),
        }
        drop(a);
        assert!(matches!(b.recv(), Err(SyncError::Closed)));
    }
}
