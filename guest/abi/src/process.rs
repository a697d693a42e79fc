//! The process spec: what the guest runs and how, taken from config.json by
//! the VMM and decoded by the guest.
//!
//! A flat sequence of records, each `tag: u32 LE, len: u32 LE, data[len]`,
//! padded with zeros to a multiple of 8 bytes. Strings are UTF-8 without a
//! terminator. Records repeat where a field is a list (args, env, gids,
//! rlimits, mounts), in order. Unknown tags are skipped by readers.

/// One decoded record; strings and paths borrow from the encoded buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Arg(&'a [u8]),
    /// `KEY=VALUE`.
    Env(&'a [u8]),
    Cwd(&'a [u8]),
    Hostname(&'a [u8]),
    Domainname(&'a [u8]),
    Uid(u32),
    Gid(u32),
    AdditionalGid(u32),
    Umask(u32),
    /// Linux `RLIMIT_*` number, soft and hard limit (`u64::MAX` = unlimited).
    Rlimit {
        resource: u32,
        soft: u64,
        hard: u64,
    },
    NoNewPrivileges,
    PidsLimit(u64),
    /// Device index in `BootInfo::devices` of a virtio-fs device, and where to mount it.
    Mount {
        device: u32,
        readonly: bool,
        destination: &'a [u8],
    },
    /// `process.oomScoreAdj`.
    OomScoreAdj(i32),
    /// The five capability sets of `process.capabilities`, as bit masks
    /// of Linux's `CAP_*` numbers. Absent: a process with all of them.
    Capabilities(CapabilitySets),
    Unknown {
        tag: u32,
    },
}

/// A process's capability sets, each a mask of `1 << CAP_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapabilitySets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub bounding: u64,
    pub ambient: u64,
}

impl CapabilitySets {
    /// Every capability Linux 6.1 defines (`CAP_LAST_CAP` is 40).
    pub const ALL: u64 = (1 << 41) - 1;

    /// What root has in a process whose spec names no capabilities.
    pub fn full() -> Self {
        Self {
            effective: Self::ALL,
            permitted: Self::ALL,
            inheritable: 0,
            bounding: Self::ALL,
            ambient: 0,
        }
    }
}

mod tag {
    pub const ARG: u32 = 1;
    pub const ENV: u32 = 2;
    pub const CWD: u32 = 3;
    pub const HOSTNAME: u32 = 4;
    pub const DOMAINNAME: u32 = 5;
    pub const UID: u32 = 6;
    pub const GID: u32 = 7;
    pub const ADDITIONAL_GID: u32 = 8;
    pub const UMASK: u32 = 9;
    pub const RLIMIT: u32 = 10;
    pub const NO_NEW_PRIVILEGES: u32 = 11;
    pub const PIDS_LIMIT: u32 = 12;
    pub const MOUNT: u32 = 13;
    pub const CAPABILITIES: u32 = 14;
    pub const OOM_SCORE_ADJ: u32 = 15;
}

/// The encoded spec did not fit in the buffer given to the [`Encoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFull;

/// Writes records into a caller-provided buffer (no allocation, so the guest
/// side can share it).
pub struct Encoder<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Encoder<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, record: &Record<'_>) -> Result<(), BufferFull> {
        match *record {
            Record::Arg(s) => self.raw(tag::ARG, &[s]),
            Record::Env(s) => self.raw(tag::ENV, &[s]),
            Record::Cwd(s) => self.raw(tag::CWD, &[s]),
            Record::Hostname(s) => self.raw(tag::HOSTNAME, &[s]),
            Record::Domainname(s) => self.raw(tag::DOMAINNAME, &[s]),
            Record::Uid(v) => self.raw(tag::UID, &[&v.to_le_bytes()]),
            Record::Gid(v) => self.raw(tag::GID, &[&v.to_le_bytes()]),
            Record::AdditionalGid(v) => self.raw(tag::ADDITIONAL_GID, &[&v.to_le_bytes()]),
            Record::Umask(v) => self.raw(tag::UMASK, &[&v.to_le_bytes()]),
            Record::Rlimit {
                resource,
                soft,
                hard,
            } => self.raw(
                tag::RLIMIT,
                &[
                    &resource.to_le_bytes(),
                    &[0; 4],
                    &soft.to_le_bytes(),
                    &hard.to_le_bytes(),
                ],
            ),
            Record::NoNewPrivileges => self.raw(tag::NO_NEW_PRIVILEGES, &[]),
            Record::PidsLimit(v) => self.raw(tag::PIDS_LIMIT, &[&v.to_le_bytes()]),
            Record::Mount {
                device,
                readonly,
                destination,
            } => self.raw(
                tag::MOUNT,
                &[
                    &device.to_le_bytes(),
                    &u32::from(readonly).to_le_bytes(),
                    destination,
                ],
            ),
            Record::OomScoreAdj(v) => self.raw(tag::OOM_SCORE_ADJ, &[&v.to_le_bytes()]),
            Record::Capabilities(c) => self.raw(
                tag::CAPABILITIES,
                &[
                    &c.effective.to_le_bytes(),
                    &c.permitted.to_le_bytes(),
                    &c.inheritable.to_le_bytes(),
                    &c.bounding.to_le_bytes(),
                    &c.ambient.to_le_bytes(),
                ],
            ),
            Record::Unknown { tag } => self.raw(tag, &[]),
        }
    }

    fn raw(&mut self, tag: u32, parts: &[&[u8]]) -> Result<(), BufferFull> {
        let data_len: usize = parts.iter().map(|p| p.len()).sum();
        let data_len32 = u32::try_from(data_len).map_err(|_| BufferFull)?;
        let padded = (8 + data_len).next_multiple_of(8);
        let end = self.len.checked_add(padded).ok_or(BufferFull)?;
        let out = self.buf.get_mut(self.len..end).ok_or(BufferFull)?;
        out[..4].copy_from_slice(&tag.to_le_bytes());
        out[4..8].copy_from_slice(&data_len32.to_le_bytes());
        let mut at = 8;
        for part in parts {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out[at..].fill(0);
        self.len = end;
        Ok(())
    }
}

/// The encoded spec is truncated or a record's payload has the wrong size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// Byte offset of the bad record.
    pub offset: usize,
}

/// Iterates over the records of an encoded spec. Stops at the first malformed
/// record, yielding `Err` once.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            failed: false,
        }
    }

    fn decode(tag: u32, data: &'a [u8]) -> Option<Record<'a>> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
        };
        let exact_u32 = || if data.len() == 4 { u32_at(0) } else { None };
        Some(match tag {
            tag::ARG => Record::Arg(data),
            tag::ENV => Record::Env(data),
            tag::CWD => Record::Cwd(data),
            tag::HOSTNAME => Record::Hostname(data),
            tag::DOMAINNAME => Record::Domainname(data),
            tag::UID => Record::Uid(exact_u32()?),
            tag::GID => Record::Gid(exact_u32()?),
            tag::ADDITIONAL_GID => Record::AdditionalGid(exact_u32()?),
            tag::UMASK => Record::Umask(exact_u32()?),
            tag::RLIMIT if data.len() == 24 => Record::Rlimit {
                resource: u32_at(0)?,
                soft: u64_at(8)?,
                hard: u64_at(16)?,
            },
            tag::RLIMIT => return None,
            tag::NO_NEW_PRIVILEGES => Record::NoNewPrivileges,
            tag::PIDS_LIMIT if data.len() == 8 => Record::PidsLimit(u64_at(0)?),
            tag::PIDS_LIMIT => return None,
            tag::MOUNT => Record::Mount {
                device: u32_at(0)?,
                readonly: u32_at(4)? != 0,
                destination: data.get(8..)?,
            },
            tag::CAPABILITIES if data.len() == 40 => Record::Capabilities(CapabilitySets {
                effective: u64_at(0)?,
                permitted: u64_at(8)?,
                inheritable: u64_at(16)?,
                bounding: u64_at(24)?,
                ambient: u64_at(32)?,
            }),
            tag::CAPABILITIES => return None,
            tag::OOM_SCORE_ADJ => Record::OomScoreAdj(exact_u32()? as i32),
            tag => Record::Unknown { tag },
        })
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Record<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let offset = self.pos;
        let record = (|| {
            let header = self.buf.get(offset..offset.checked_add(8)?)?;
            let tag = u32::from_le_bytes(header[..4].try_into().ok()?);
            let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
            let data_end = offset.checked_add(8)?.checked_add(len)?;
            let data = self.buf.get(offset + 8..data_end)?;
            let record_end = (8 + len).next_multiple_of(8).checked_add(offset)?;
            if record_end > self.buf.len() {
                return None;
            }
            let record = Self::decode(tag, data)?;
            self.pos = record_end;
            Some(record)
        })();
        match record {
            Some(record) => Some(Ok(record)),
            None => {
                self.failed = true;
                Some(Err(Malformed { offset }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_order() {
        let records = [
            Record::Arg(b"/bin/echo"),
            Record::Arg(b"hello world"),
            Record::Env(b"PATH=/bin"),
            Record::Cwd(b"/"),
            Record::Hostname(b"box"),
            Record::Domainname(b""),
            Record::Uid(1000),
            Record::Gid(100),
            Record::AdditionalGid(5),
            Record::Umask(0o22),
            Record::Rlimit {
                resource: 7,
                soft: 1024,
                hard: u64::MAX,
            },
            Record::NoNewPrivileges,
            Record::PidsLimit(64),
            Record::Mount {
                device: 3,
                readonly: true,
                destination: b"/data",
            },
            Record::OomScoreAdj(-998),
            Record::Capabilities(CapabilitySets {
                effective: 1 << 7,
                permitted: 1 << 7 | 1 << 6,
                inheritable: 0,
                bounding: CapabilitySets::ALL,
                ambient: 1 << 10,
            }),
            Record::Unknown { tag: 999 },
        ];
        let mut buf = [0u8; 1024];
        let mut encoder = Encoder::new(&mut buf);
        for record in &records {
            encoder.push(record).expect("fits");
        }
        let len = encoder.len();
        assert_eq!(len % 8, 0);
        let decoded: Result<Vec<_>, _> = Decoder::new(&buf[..len]).collect();
        assert_eq!(decoded.expect("well formed"), records);
    }

    #[test]
    fn encoder_reports_a_full_buffer() {
        let mut buf = [0u8; 16];
        let mut encoder = Encoder::new(&mut buf);
        assert_eq!(encoder.push(&Record::Arg(b"12345678")), Ok(()));
        assert_eq!(encoder.push(&Record::Arg(b"x")), Err(BufferFull));
    }

    #[test]
    fn truncated_and_missized_records_are_malformed() {
        let mut buf = [0u8; 64];
        let mut encoder = Encoder::new(&mut buf);
        encoder.push(&Record::Arg(b"abc")).expect("fits");
        let len = encoder.len();
        let mut decoder = Decoder::new(&buf[..len - 1]);
        assert_eq!(decoder.next(), Some(Err(Malformed { offset: 0 })));
        assert_eq!(decoder.next(), None);

        // A UID record with a 2-byte payload.
        let bad = [6, 0, 0, 0, 2, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            Decoder::new(&bad).next(),
            Some(Err(Malformed { offset: 0 }))
        );
        // A length that points past the end.
        let huge = [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            Decoder::new(&huge).next(),
            Some(Err(Malformed { offset: 0 }))
        );
    }
}
