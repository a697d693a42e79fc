//! What `capsa exec` and the VMM say to each other over the exec socket
//! (`SOCK_SEQPACKET`, one message per packet): the client asks to start a
//! process, handing over its stdin, stdout and stderr with `SCM_RIGHTS`,
//! and may then send signals for it; the VMM answers that it started (or
//! why it could not) and, later, how it ended. Closing the connection
//! before the process ends kills it, as a runtime's exec process dying
//! does for a shim that waits on it.
//!
//! Every message is an 8-byte tag and its payload.

use capsa_abi::process::{Decoder, Record};

/// Client: start a process; the payload is its spec (`capsa_abi::process`).
const START: &[u8; 8] = b"capsaEXS";
/// Client: send the process a signal (a u32 LE).
const SIGNAL: &[u8; 8] = b"capsaSIG";
/// VMM: the process runs as this guest pid (a u32 LE).
const STARTED: &[u8; 8] = b"capsaRUN";
/// VMM: the process could not start; the payload says why (UTF-8).
const FAILED: &[u8; 8] = b"capsaERR";
/// VMM: the process ended with this `wait(2)` status (an i32 LE).
const EXITED: &[u8; 8] = b"capsaXIT";

/// The longest message either side sends.
pub const MAX_MESSAGE: usize = capsa_abi::exec::MAX_EVENT_LEN;
/// The descriptors a start message carries: stdin, stdout, stderr.
pub const STDIO_FDS: usize = 3;

/// A message from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// The encoded process spec.
    Start(&'a [u8]),
    Signal(u32),
}

/// A message from the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Started(u32),
    Failed(String),
    Exited(i32),
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the message is {0} bytes, more than the {MAX_MESSAGE} allowed")]
    TooLong(usize),
    #[error("the message has no known tag")]
    UnknownTag,
    #[error("the message's payload has the wrong length")]
    BadLength,
    #[error("the process spec is malformed at byte {0}")]
    MalformedSpec(usize),
    #[error("the process spec names no program")]
    NoArgs,
    #[error("signal {0} is not a signal number")]
    BadSignal(u32),
}

fn split(message: &[u8]) -> Result<(&[u8; 8], &[u8]), Error> {
    if message.len() > MAX_MESSAGE {
        return Err(Error::TooLong(message.len()));
    }
    let (tag, payload) = message.split_first_chunk::<8>().ok_or(Error::UnknownTag)?;
    Ok((tag, payload))
}

fn u32_payload(payload: &[u8]) -> Result<u32, Error> {
    let bytes: [u8; 4] = payload.try_into().map_err(|_| Error::BadLength)?;
    Ok(u32::from_le_bytes(bytes))
}

/// Parses a client's message; a start's spec must decode in full and name
/// a program.
pub fn parse_request(message: &[u8]) -> Result<Request<'_>, Error> {
    let (tag, payload) = split(message)?;
    match tag {
        START => {
            let mut has_args = false;
            for record in Decoder::new(payload) {
                match record {
                    Ok(Record::Arg(_)) => has_args = true,
                    Ok(_) => {}
                    Err(e) => return Err(Error::MalformedSpec(e.offset)),
                }
            }
            if !has_args {
                return Err(Error::NoArgs);
            }
            Ok(Request::Start(payload))
        }
        SIGNAL => match u32_payload(payload)? {
            sig @ 1..=64 => Ok(Request::Signal(sig)),
            other => Err(Error::BadSignal(other)),
        },
        _ => Err(Error::UnknownTag),
    }
}

/// Parses the VMM's message.
pub fn parse_reply(message: &[u8]) -> Result<Reply, Error> {
    let (tag, payload) = split(message)?;
    match tag {
        STARTED => Ok(Reply::Started(u32_payload(payload)?)),
        FAILED => Ok(Reply::Failed(String::from_utf8_lossy(payload).into_owned())),
        EXITED => Ok(Reply::Exited(u32_payload(payload)? as i32)),
        _ => Err(Error::UnknownTag),
    }
}

fn message(tag: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(tag);
    out.extend_from_slice(payload);
    out
}

impl Request<'_> {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Start(spec) => message(START, spec),
            Request::Signal(sig) => message(SIGNAL, &sig.to_le_bytes()),
        }
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Started(pid) => message(STARTED, &pid.to_le_bytes()),
            Reply::Failed(why) => message(FAILED, why.as_bytes()),
            Reply::Exited(status) => message(EXITED, &status.to_le_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_abi::process::Encoder;

    fn spec(records: &[Record<'_>]) -> Vec<u8> {
        let mut buf = vec![0u8; 1024];
        let mut e = Encoder::new(&mut buf);
        for r in records {
            e.push(r).unwrap();
        }
        let n = e.len();
        buf.truncate(n);
        buf
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let s = spec(&[Record::Arg(b"sh"), Record::Uid(7)]);
        for request in [Request::Start(&s), Request::Signal(15)] {
            assert_eq!(parse_request(&request.encode()), Ok(request));
        }
        for reply in [
            Reply::Started(42),
            Reply::Failed("no such file".into()),
            Reply::Exited(0x0f00),
        ] {
            assert_eq!(parse_reply(&reply.encode()), Ok(reply));
        }
    }

    #[test]
    fn bad_messages_are_refused() {
        assert_eq!(parse_request(b"capsa"), Err(Error::UnknownTag));
        assert_eq!(parse_request(b"capsaXXXabcd"), Err(Error::UnknownTag));
        assert_eq!(parse_request(b"capsaSIG\x01\x00"), Err(Error::BadLength));
        assert_eq!(
            parse_request(&Request::Signal(0).encode()),
            Err(Error::BadSignal(0))
        );
        assert_eq!(
            parse_request(&Request::Signal(65).encode()),
            Err(Error::BadSignal(65))
        );
        let no_args = spec(&[Record::Uid(7)]);
        assert_eq!(
            parse_request(&Request::Start(&no_args).encode()),
            Err(Error::NoArgs)
        );
        let mut truncated = spec(&[Record::Arg(b"a-long-program-name")]);
        truncated.truncate(12);
        assert!(matches!(
            parse_request(&Request::Start(&truncated).encode()),
            Err(Error::MalformedSpec(_))
        ));
        let huge = vec![0u8; MAX_MESSAGE + 1];
        assert_eq!(parse_request(&huge), Err(Error::TooLong(MAX_MESSAGE + 1)));
    }
}
