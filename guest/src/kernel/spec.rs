//! The decoded process spec (see `capsa_abi::process`).

use alloc::vec::Vec;

use capsa_abi::process::{CapabilitySets, Decoder, Record};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub device: u32,
    pub readonly: bool,
    pub destination: Vec<u8>,
}

/// Number of `RLIMIT_*` resources Linux defines.
pub const RLIMIT_COUNT: usize = 16;
pub const RLIM_INFINITY: u64 = u64::MAX;
pub const RLIMIT_STACK: usize = 3;
pub const RLIMIT_NOFILE: usize = 7;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub cwd: Vec<u8>,
    pub hostname: Vec<u8>,
    pub domainname: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: u32,
    /// (soft, hard) per resource.
    pub rlimits: [(u64, u64); RLIMIT_COUNT],
    pub no_new_privileges: bool,
    pub pids_limit: Option<u64>,
    pub mounts: Vec<MountSpec>,
    /// As the container's runtime set them before its execve; a spec
    /// without capabilities leaves root all of them.
    pub capabilities: CapabilitySets,
    pub oom_score_adj: i32,
}

impl Default for ProcessSpec {
    fn default() -> Self {
        let mut rlimits = [(RLIM_INFINITY, RLIM_INFINITY); RLIMIT_COUNT];
        rlimits[RLIMIT_STACK] = (8 << 20, RLIM_INFINITY);
        rlimits[RLIMIT_NOFILE] = (1024, 4096);
        // RLIMIT_CORE soft limit 0, RLIMIT_MEMLOCK 8 MiB, RLIMIT_SIGPENDING, RLIMIT_MSGQUEUE,
        // as a stock Linux gives a container.
        rlimits[4] = (0, RLIM_INFINITY);
        rlimits[8] = (8 << 20, 8 << 20);
        rlimits[11] = (63_422, 63_422);
        rlimits[12] = (819_200, 819_200);
        Self {
            args: Vec::new(),
            env: Vec::new(),
            cwd: b"/".to_vec(),
            hostname: Vec::new(),
            domainname: Vec::new(),
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            umask: 0o022,
            rlimits,
            no_new_privileges: false,
            pids_limit: None,
            mounts: Vec::new(),
            capabilities: CapabilitySets::full(),
            oom_score_adj: 0,
        }
    }
}

impl ProcessSpec {
    /// Decodes an encoded spec. Records after a malformed one are ignored
    /// (the VMM wrote the spec; a truncated tail is reported, not fatal).
    pub fn decode(encoded: &[u8]) -> (ProcessSpec, bool) {
        let mut spec = ProcessSpec::default();
        let mut malformed = false;
        for record in Decoder::new(encoded) {
            let Ok(record) = record else {
                malformed = true;
                break;
            };
            match record {
                Record::Arg(s) => spec.args.push(s.to_vec()),
                Record::Env(s) => spec.env.push(s.to_vec()),
                Record::Cwd(s) => spec.cwd = s.to_vec(),
                Record::Hostname(s) => spec.hostname = s.to_vec(),
                Record::Domainname(s) => spec.domainname = s.to_vec(),
                Record::Uid(v) => spec.uid = v,
                Record::Gid(v) => spec.gid = v,
                Record::AdditionalGid(v) => spec.groups.push(v),
                Record::Umask(v) => spec.umask = v & 0o777,
                Record::Rlimit {
                    resource,
                    soft,
                    hard,
                } => {
                    if let Some(slot) = spec.rlimits.get_mut(resource as usize) {
                        *slot = (soft, hard);
                    }
                }
                Record::NoNewPrivileges => spec.no_new_privileges = true,
                Record::PidsLimit(v) => spec.pids_limit = Some(v),
                Record::Mount {
                    device,
                    readonly,
                    destination,
                } => spec.mounts.push(MountSpec {
                    device,
                    readonly,
                    destination: destination.to_vec(),
                }),
                Record::Capabilities(sets) => spec.capabilities = sets,
                Record::OomScoreAdj(v) => spec.oom_score_adj = v,
                Record::Unknown { .. } => {}
            }
        }
        if spec.cwd.first() != Some(&b'/') {
            spec.cwd = b"/".to_vec();
        }
        (spec, malformed)
    }

    /// The credentials of a process started with this spec: its ids, and
    /// the capability sets the runtime set before its execve of the
    /// program, as that execve leaves them.
    pub fn creds(&self) -> crate::task::Creds {
        let mut creds = crate::task::Creds {
            uid: self.uid,
            euid: self.uid,
            suid: self.uid,
            gid: self.gid,
            egid: self.gid,
            sgid: self.gid,
            fsuid: self.uid,
            fsgid: self.gid,
            groups: self.groups.clone(),
            caps: self.capabilities,
            keep_caps: false,
        };
        creds.fix_exec(self.no_new_privileges);
        creds
    }

    /// The value of `PATH` in the process environment, if set.
    pub fn env_var(&self, name: &[u8]) -> Option<&[u8]> {
        crate::kernel::env_var(&self.env, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_abi::process::Encoder;

    #[test]
    fn decodes_every_field() {
        let mut buf = [0u8; 512];
        let mut e = Encoder::new(&mut buf);
        for r in [
            Record::Arg(b"sh"),
            Record::Arg(b"-c"),
            Record::Env(b"PATH=/bin:/usr/bin"),
            Record::Cwd(b"/tmp"),
            Record::Hostname(b"h"),
            Record::Uid(5),
            Record::Gid(6),
            Record::AdditionalGid(7),
            Record::Umask(0o77),
            Record::Rlimit {
                resource: 7,
                soft: 10,
                hard: 20,
            },
            Record::Mount {
                device: 2,
                readonly: true,
                destination: b"/data",
            },
        ] {
            e.push(&r).expect("fits");
        }
        let len = e.len();
        let (spec, bad) = ProcessSpec::decode(&buf[..len]);
        assert!(!bad);
        assert_eq!(spec.args, [b"sh".to_vec(), b"-c".to_vec()]);
        assert_eq!(spec.env_var(b"PATH"), Some(&b"/bin:/usr/bin"[..]));
        assert_eq!(spec.env_var(b"PAT"), None);
        assert_eq!(spec.cwd, b"/tmp");
        assert_eq!((spec.uid, spec.gid, spec.groups.clone()), (5, 6, vec![7]));
        assert_eq!(spec.umask, 0o77);
        assert_eq!(spec.rlimits[7], (10, 20));
        assert_eq!(spec.mounts[0].destination, b"/data");
    }

    #[test]
    fn relative_cwd_falls_back_to_root() {
        let mut buf = [0u8; 64];
        let mut e = Encoder::new(&mut buf);
        e.push(&Record::Cwd(b"tmp")).expect("fits");
        let len = e.len();
        assert_eq!(ProcessSpec::decode(&buf[..len]).0.cwd, b"/");
    }
}
