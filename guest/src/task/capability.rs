//! Capabilities: the five sets Linux keeps per process and the rules that
//! move them when ids change and at execve (capabilities(7)), so that a
//! process the spec gives no `CAP_SETUID` cannot setuid in a microVM any
//! more than in a container. File capabilities do not exist here (the
//! guest reads no `security.capability` attributes): a program is treated
//! as Linux treats one without them, root's "all file capabilities"
//! emulation included.

use capsa_abi::process::CapabilitySets;

use super::Creds;

pub const CAP_CHOWN: u32 = 0;
pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_FOWNER: u32 = 3;
pub const CAP_FSETID: u32 = 4;
pub const CAP_KILL: u32 = 5;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_LINUX_IMMUTABLE: u32 = 9;
pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_NICE: u32 = 23;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_MKNOD: u32 = 27;
pub const CAP_MAC_OVERRIDE: u32 = 32;
/// The highest capability number Linux 6.1 knows (`CAP_CHECKPOINT_RESTORE`).
pub const CAP_LAST_CAP: u32 = 40;

const fn bit(cap: u32) -> u64 {
    1 << cap
}

/// The capabilities that follow the file-system uid (`CAP_FS_MASK`): a
/// change of fsuid from 0 drops them from the effective set, back to 0
/// restores those permitted.
const FS_MASK: u64 = bit(CAP_CHOWN)
    | bit(CAP_DAC_OVERRIDE)
    | bit(CAP_DAC_READ_SEARCH)
    | bit(CAP_FOWNER)
    | bit(CAP_FSETID)
    | bit(CAP_LINUX_IMMUTABLE)
    | bit(CAP_MKNOD)
    | bit(CAP_MAC_OVERRIDE);

impl Creds {
    /// Whether the effective set holds `cap`.
    pub fn capable(&self, cap: u32) -> bool {
        self.caps.effective & bit(cap) != 0
    }

    /// After a change of uids from `old` (Linux's `cap_emulate_setxuid`
    /// and `cap_task_fix_setuid`): leaving root in every uid clears the
    /// permitted, effective and ambient sets (unless keep-caps is set, which
    /// keeps the permitted set); leaving effective root clears the effective
    /// set, becoming it again raises the permitted one.
    pub fn fix_setuid(&mut self, old: &Creds) {
        let was_root = [old.uid, old.euid, old.suid].contains(&0);
        let is_root = [self.uid, self.euid, self.suid].contains(&0);
        let caps = &mut self.caps;
        if was_root && !is_root {
            if !self.keep_caps {
                caps.permitted = 0;
                caps.effective = 0;
            }
            caps.ambient = 0;
        }
        if old.euid == 0 && self.euid != 0 {
            caps.effective = 0;
        }
        if old.euid != 0 && self.euid == 0 {
            caps.effective = caps.permitted;
        }
    }

    /// After a change of the fsuid from `old_fsuid`.
    pub fn fix_setfsuid(&mut self, old_fsuid: u32) {
        let caps = &mut self.caps;
        if old_fsuid == 0 && self.fsuid != 0 {
            caps.effective &= !FS_MASK;
        }
        if old_fsuid != 0 && self.fsuid == 0 {
            caps.effective |= caps.permitted & FS_MASK;
        }
    }

    /// The sets after an execve of a program without file capabilities
    /// and without set-id bits (`cap_bprm_creds_from_file`): root gets its
    /// bounding and inheritable sets as permitted, anyone else nothing
    /// from the file; with no_new_privs nothing beyond the old permitted
    /// set; the ambient set is kept and joins the permitted one; the
    /// effective set is the permitted one for effective root, else the
    /// ambient one. Keep-caps is cleared.
    pub fn fix_exec(&mut self, no_new_privs: bool) {
        let old = self.caps;
        let mut permitted = if self.euid == 0 || self.uid == 0 {
            old.bounding | old.inheritable
        } else {
            0
        };
        if no_new_privs {
            permitted &= old.permitted;
        }
        permitted |= old.ambient;
        self.caps = CapabilitySets {
            effective: if self.euid == 0 {
                permitted
            } else {
                old.ambient
            },
            permitted,
            inheritable: old.inheritable,
            bounding: old.bounding,
            ambient: old.ambient,
        };
        self.keep_caps = false;
    }

    /// capset(2)'s rules for a process changing its own sets: the permitted
    /// set may only shrink, the effective set must stay within it, and the
    /// inheritable set may only gain what is both bounding and permitted
    /// (anything bounding with `CAP_SETPCAP`). Shrinking the permitted or
    /// inheritable set drops the ambient capabilities that no longer fit.
    pub fn set_caps(&mut self, effective: u64, permitted: u64, inheritable: u64) -> bool {
        let old = self.caps;
        let inheritable_room = if self.capable(CAP_SETPCAP) {
            old.inheritable | old.bounding
        } else {
            old.inheritable | (old.bounding & old.permitted)
        };
        if permitted & !old.permitted != 0
            || effective & !permitted != 0
            || inheritable & !inheritable_room != 0
        {
            return false;
        }
        self.caps.effective = effective;
        self.caps.permitted = permitted;
        self.caps.inheritable = inheritable;
        self.caps.ambient &= permitted & inheritable;
        true
    }

    /// `PR_CAP_AMBIENT_RAISE`: only what is permitted and inheritable.
    pub fn raise_ambient(&mut self, cap: u32) -> bool {
        let b = bit(cap);
        if cap > CAP_LAST_CAP || self.caps.permitted & self.caps.inheritable & b == 0 {
            return false;
        }
        self.caps.ambient |= b;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(uid: u32, sets: CapabilitySets) -> Creds {
        Creds {
            uid,
            euid: uid,
            suid: uid,
            fsuid: uid,
            caps: sets,
            ..Creds::default()
        }
    }

    /// podman's default set for root.
    fn podman() -> CapabilitySets {
        let set = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 31]
            .iter()
            .fold(0, |m, c| m | bit(*c));
        CapabilitySets {
            effective: set,
            permitted: set,
            inheritable: 0,
            bounding: set,
            ambient: 0,
        }
    }

    #[test]
    fn dropping_root_drops_the_capabilities() {
        let mut c = creds(0, podman());
        let old = c.clone();
        (c.uid, c.euid, c.suid, c.fsuid) = (1000, 1000, 1000, 1000);
        c.fix_setuid(&old);
        assert_eq!((c.caps.permitted, c.caps.effective), (0, 0));
        assert!(!c.capable(CAP_SETUID));
    }

    #[test]
    fn keep_caps_keeps_the_permitted_set_and_seteuid_round_trips() {
        let mut c = creds(0, podman());
        c.keep_caps = true;
        let old = c.clone();
        (c.uid, c.euid, c.suid, c.fsuid) = (1000, 1000, 1000, 1000);
        c.fix_setuid(&old);
        assert_eq!(
            (c.caps.permitted, c.caps.effective),
            (podman().permitted, 0)
        );

        let mut c = creds(0, podman());
        let old = c.clone();
        (c.euid, c.fsuid) = (1000, 1000);
        c.fix_setuid(&old);
        assert_eq!(c.caps.effective, 0);
        assert_eq!(c.caps.permitted, podman().permitted);
        let old = c.clone();
        (c.euid, c.fsuid) = (0, 0);
        c.fix_setuid(&old);
        assert_eq!(c.caps.effective, podman().permitted);
    }

    #[test]
    fn the_fsuid_moves_the_file_system_capabilities() {
        let mut c = creds(0, podman());
        c.fsuid = 1000;
        c.fix_setfsuid(0);
        assert!(!c.capable(CAP_CHOWN) && !c.capable(CAP_DAC_OVERRIDE));
        assert!(c.capable(CAP_SETUID) && c.capable(CAP_KILL));
        c.fsuid = 0;
        c.fix_setfsuid(1000);
        assert!(c.capable(CAP_CHOWN));
    }

    #[test]
    fn exec_gives_root_its_bounding_set_and_others_their_ambient_set() {
        let mut root = creds(0, podman());
        root.caps.effective = 0;
        root.caps.ambient = bit(CAP_KILL);
        root.fix_exec(false);
        assert_eq!(root.caps.effective, podman().bounding);
        assert_eq!(root.caps.ambient, bit(CAP_KILL));

        let mut user = creds(1000, podman());
        user.caps.inheritable = bit(CAP_NET_BIND_SERVICE);
        user.caps.ambient = bit(CAP_NET_BIND_SERVICE);
        user.fix_exec(false);
        assert_eq!(user.caps.permitted, bit(CAP_NET_BIND_SERVICE));
        assert_eq!(user.caps.effective, bit(CAP_NET_BIND_SERVICE));

        let mut nnp = creds(0, podman());
        nnp.caps.permitted = bit(CAP_KILL);
        nnp.fix_exec(true);
        assert_eq!(nnp.caps.permitted, bit(CAP_KILL));
    }

    #[test]
    fn capset_never_gains() {
        let mut c = creds(0, podman());
        assert!(!c.set_caps(0, podman().permitted | bit(CAP_MKNOD), 0));
        assert!(!c.set_caps(bit(CAP_KILL), 0, 0));
        assert!(c.set_caps(bit(CAP_KILL), bit(CAP_KILL), 0));
        assert!(!c.set_caps(0, podman().permitted, 0));
        assert!(!c.raise_ambient(CAP_KILL));
    }
}
