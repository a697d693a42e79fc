//! Process identity and limits: exit, uname, credentials, rlimits, TLS.

use alloc::vec;

use crate::arch;
use crate::errno::{Errno, Result};
use crate::kernel::{self, Kernel};
use crate::spec::RLIMIT_COUNT;

const ARCH_SET_GS: u32 = 0x1001;
const ARCH_SET_FS: u32 = 0x1002;
const ARCH_GET_FS: u32 = 0x1003;
const ARCH_GET_GS: u32 = 0x1004;
const FUTEX_WAIT: u32 = 0;
const FUTEX_WAKE: u32 = 1;
const FUTEX_WAIT_BITSET: u32 = 9;
const FUTEX_WAKE_BITSET: u32 = 10;
const PR_SET_PDEATHSIG: u32 = 1;
const PR_GET_PDEATHSIG: u32 = 2;
const PR_GET_DUMPABLE: u32 = 3;
const PR_SET_DUMPABLE: u32 = 4;
const PR_SET_NAME: u32 = 15;
const PR_GET_NAME: u32 = 16;
const PR_SET_NO_NEW_PRIVS: u32 = 38;
const PR_GET_NO_NEW_PRIVS: u32 = 39;

impl Kernel {
    pub fn sys_exit(&mut self, code: i32) -> Result<u64> {
        kernel::exit(code)
    }

    pub fn sys_uname(&mut self, out: u64) -> Result<u64> {
        let mut u = [0u8; 65 * 6];
        let hostname = if self.spec.hostname.is_empty() {
            &b"localhost"[..]
        } else {
            &self.spec.hostname[..]
        };
        let domain = if self.spec.domainname.is_empty() {
            &b"(none)"[..]
        } else {
            &self.spec.domainname[..]
        };
        let fields: [&[u8]; 6] = [
            b"Linux",
            hostname,
            b"6.1.0-capsa",
            b"#1 SMP capsa",
            b"x86_64",
            domain,
        ];
        for (i, f) in fields.iter().enumerate() {
            let n = f.len().min(64);
            u[i * 65..i * 65 + n].copy_from_slice(&f[..n]);
        }
        self.put_user(out, &u)?;
        Ok(0)
    }

    fn privileged(&self) -> bool {
        self.creds.euid == 0
    }

    pub fn sys_setresuid(&mut self, r: u32, e: u32, s: u32) -> Result<u64> {
        let c = &self.creds;
        let allowed = |id: u32| id == u32::MAX || id == c.uid || id == c.euid || id == c.suid;
        let permitted = allowed(r) && allowed(e) && allowed(s);
        if !self.privileged() && !permitted {
            return Err(Errno::EPERM);
        }
        let c = &mut self.creds;
        if r != u32::MAX {
            c.uid = r;
        }
        if e != u32::MAX {
            c.euid = e;
        }
        if s != u32::MAX {
            c.suid = s;
        }
        Ok(0)
    }

    pub fn sys_setresgid(&mut self, r: u32, e: u32, s: u32) -> Result<u64> {
        let c = &self.creds;
        let allowed = |id: u32| id == u32::MAX || id == c.gid || id == c.egid || id == c.sgid;
        let permitted = allowed(r) && allowed(e) && allowed(s);
        if !self.privileged() && !permitted {
            return Err(Errno::EPERM);
        }
        let c = &mut self.creds;
        if r != u32::MAX {
            c.gid = r;
        }
        if e != u32::MAX {
            c.egid = e;
        }
        if s != u32::MAX {
            c.sgid = s;
        }
        Ok(0)
    }

    pub fn sys_getresuid(&mut self, r: u64, e: u64, s: u64, group: bool) -> Result<u64> {
        let c = &self.creds;
        let ids = if group {
            [c.gid, c.egid, c.sgid]
        } else {
            [c.uid, c.euid, c.suid]
        };
        for (ptr, id) in [r, e, s].into_iter().zip(ids) {
            self.put_user(ptr, &id.to_le_bytes())?;
        }
        Ok(0)
    }

    pub fn sys_getgroups(&mut self, size: i32, list: u64) -> Result<u64> {
        let n = self.creds.groups.len();
        if size == 0 {
            return Ok(n as u64);
        }
        if (size as usize) < n || size < 0 {
            return Err(Errno::EINVAL);
        }
        let bytes: alloc::vec::Vec<u8> = self
            .creds
            .groups
            .iter()
            .flat_map(|g| g.to_le_bytes())
            .collect();
        self.put_user(list, &bytes)?;
        Ok(n as u64)
    }

    pub fn sys_setgroups(&mut self, size: u64, list: u64) -> Result<u64> {
        if !self.privileged() {
            return Err(Errno::EPERM);
        }
        if size > 65536 {
            return Err(Errno::EINVAL);
        }
        let raw = self.user_buf(list, size as usize * 4)?;
        self.creds.groups = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(0)
    }

    pub fn sys_umask(&mut self, mask: u32) -> u64 {
        let old = self.umask;
        self.umask = mask & 0o777;
        u64::from(old)
    }

    pub fn sys_prlimit(&mut self, pid: i32, resource: u32, new: u64, old: u64) -> Result<u64> {
        if pid != 0 && pid != 1 {
            return Err(Errno::ESRCH);
        }
        let r = resource as usize;
        if r >= RLIMIT_COUNT {
            return Err(Errno::EINVAL);
        }
        let current = self.spec.rlimits[r];
        if new != 0 {
            let b = self.user_buf(new, 16)?;
            let soft = u64::from_le_bytes(b[..8].try_into().map_err(|_| Errno::EFAULT)?);
            let hard = u64::from_le_bytes(b[8..].try_into().map_err(|_| Errno::EFAULT)?);
            if soft > hard {
                return Err(Errno::EINVAL);
            }
            if hard > current.1 && !self.privileged() {
                return Err(Errno::EPERM);
            }
            self.spec.rlimits[r] = (soft, hard);
        }
        if old != 0 {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&current.0.to_le_bytes());
            b[8..].copy_from_slice(&current.1.to_le_bytes());
            self.put_user(old, &b)?;
        }
        Ok(0)
    }

    pub fn sys_sched_getaffinity(&mut self, len: u64, mask: u64) -> Result<u64> {
        if len < 8 || !len.is_multiple_of(8) {
            return Err(Errno::EINVAL);
        }
        let mut m = vec![0u8; len.min(128) as usize];
        m[0] = 1;
        self.put_user(mask, &m)?;
        Ok(m.len() as u64)
    }

    pub fn sys_getcpu(&mut self, cpu: u64, node: u64) -> Result<u64> {
        for ptr in [cpu, node] {
            if ptr != 0 {
                self.put_user(ptr, &0u32.to_le_bytes())?;
            }
        }
        Ok(0)
    }

    pub fn sys_sysinfo(&mut self, out: u64) -> Result<u64> {
        let mut s = [0u8; 112];
        let free = self.mm.regions.free_bytes();
        let fields: [(usize, u64); 4] = [
            (0, self.clock.since_boot_ns() / 1_000_000_000),
            (32, self.ram_size),
            (40, free),
            (48, 0),
        ];
        for (at, v) in fields {
            s[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        s[80..82].copy_from_slice(&1u16.to_le_bytes()); // procs
        s[104..108].copy_from_slice(&1u32.to_le_bytes()); // mem_unit
        self.put_user(out, &s)?;
        Ok(0)
    }

    pub fn sys_prctl(&mut self, option: u32, arg: u64) -> Result<u64> {
        match option {
            PR_SET_NAME => {
                let name = self
                    .user_cstr(arg)
                    .or_else(|_| self.user_buf(arg, 16).map(|b| b.to_vec()))?;
                let n = name.len().min(15);
                self.comm = [0; 16];
                self.comm[..n].copy_from_slice(&name[..n]);
                Ok(0)
            }
            PR_GET_NAME => {
                let comm = self.comm;
                self.put_user(arg, &comm)?;
                Ok(0)
            }
            PR_SET_NO_NEW_PRIVS => {
                self.spec.no_new_privileges = true;
                Ok(0)
            }
            PR_GET_NO_NEW_PRIVS => Ok(u64::from(self.spec.no_new_privileges)),
            PR_SET_PDEATHSIG | PR_SET_DUMPABLE => Ok(0),
            PR_GET_PDEATHSIG => {
                self.put_user(arg, &0u32.to_le_bytes())?;
                Ok(0)
            }
            PR_GET_DUMPABLE => Ok(1),
            _ => Err(Errno::EINVAL),
        }
    }

    pub fn sys_arch_prctl(&mut self, code: u32, addr: u64) -> Result<u64> {
        match code {
            ARCH_SET_FS => {
                if addr >= 1 << 47 {
                    return Err(Errno::EPERM);
                }
                arch::set_fs_base(addr);
                self.fs_base = addr;
                Ok(0)
            }
            ARCH_GET_FS => {
                let base = self.fs_base;
                self.put_user(addr, &base.to_le_bytes())?;
                Ok(0)
            }
            ARCH_SET_GS | ARCH_GET_GS => Err(Errno::EINVAL),
            _ => Err(Errno::EINVAL),
        }
    }

    /// One thread: a wait on a value that still matches could never be
    /// woken, so it reports a timeout (or EAGAIN when the value changed).
    pub fn sys_futex(&mut self, addr: u64, op: u32, val: u32) -> Result<u64> {
        match op & 0x7f {
            FUTEX_WAKE | FUTEX_WAKE_BITSET => Ok(0),
            FUTEX_WAIT | FUTEX_WAIT_BITSET => {
                let cur = self.user_buf(addr, 4)?;
                if u32::from_le_bytes([cur[0], cur[1], cur[2], cur[3]]) != val {
                    Err(Errno::EAGAIN)
                } else {
                    Err(Errno::ETIMEDOUT)
                }
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    pub fn sys_getrandom(&mut self, buf: u64, len: u64) -> Result<u64> {
        let out = self.user_buf(buf, len as usize)?;
        self.dev.rng.fill(out);
        Ok(len)
    }
}
