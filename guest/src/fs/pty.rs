//! Pseudo-terminals: `/dev/ptmx` opens a new pair's master, `/dev/pts/N`
//! (or `TIOCGPTPEER`) its slave. Between them sits a line discipline that
//! does what programs rely on from Linux's n_tty: canonical lines with
//! erase and kill, echo, CR/NL translation of input and NL to CR-NL of
//! output, the INTR, QUIT and SUSP characters as signals to the terminal's
//! foreground process group, `VMIN` 0 reads, a shared window size, and the
//! ends' closes (a master reads EIO once its slaves are gone; a slave
//! reads end of file and cannot write once its master is).
//!
//! Written here: a guest kernel has no tty layer to borrow, and no crate
//! offers a line discipline for a no_std kernel.
//!
//! Blocking is the scheduler's business, as for pipes: an end answers
//! `EBLOCK` and the caller waits for the event counter (`pipe::bump`).
//! Which process may do what with the terminal (controlling terminal,
//! foreground group) is decided by the system-call layer, which knows the
//! caller; this module keeps the state.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::errno::{Errno, Result};
use crate::fs::fd::{File, O_NONBLOCK};
use crate::fs::fuse::{Attr, S_IFCHR};
use crate::fs::pipe;
use crate::fs::Devices;

/// Linux's major number of Unix98 pty slaves (`/dev/pts/N` is 136:N).
pub const PTS_MAJOR: u32 = 136;
/// `/dev/ptmx` is 5:2.
pub const PTMX_RDEV: u32 = 5 << 8 | 2;
/// The device number of the `/dev/pts` file system the guest reports.
pub const DEVPTS_DEV: u64 = 0x16;
/// Bytes of input a terminal holds (Linux's N_TTY_BUF_SIZE less one).
const INPUT_MAX: usize = 4095;
/// Bytes of output a terminal holds before its writer waits.
const OUTPUT_MAX: usize = 64 << 10;
/// The most ptys at once (Linux's default /proc/sys/kernel/pty/max is 4096).
pub const PTY_MAX: u32 = 4096;

// Indices in `c_cc`.
const VINTR: usize = 0;
const VQUIT: usize = 1;
const VERASE: usize = 2;
const VKILL: usize = 3;
const VEOF: usize = 4;
const VMIN: usize = 6;
const VSUSP: usize = 10;
const VEOL: usize = 11;

// c_iflag
const INLCR: u32 = 0o100;
const IGNCR: u32 = 0o200;
const ICRNL: u32 = 0o400;
// c_oflag
const OPOST: u32 = 0o1;
const ONLCR: u32 = 0o4;
// c_lflag
const ISIG: u32 = 0o1;
const ICANON: u32 = 0o2;
const ECHO: u32 = 0o10;
const ECHOE: u32 = 0o20;
const ECHOK: u32 = 0o40;
const ECHONL: u32 = 0o100;
const NOFLSH: u32 = 0o200;
const ECHOCTL: u32 = 0o1000;

const SIGINT: u32 = 2;
const SIGQUIT: u32 = 3;
const SIGTSTP: u32 = 20;

/// The kernel's `struct termios` (what TCGETS and TCSETS move: 36 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; 19],
}

pub const TERMIOS_SIZE: usize = 36;

impl Termios {
    /// A new slave's settings, as Linux gives a pts (tty_std_termios with
    /// the pty driver's c_cflag).
    pub fn slave_default() -> Termios {
        Termios {
            iflag: ICRNL | 0o2000, // ICRNL | IXON
            oflag: OPOST | ONLCR,
            cflag: 0o277, // B38400 | CS8 | CREAD
            lflag: ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHOCTL | 0o4000 | 0o100000, // ECHOKE, IEXTEN
            line: 0,
            cc: [
                3, 28, 127, 21, 4, 0, 1, 0, 17, 19, 26, 0, 18, 15, 23, 22, 0, 0, 0,
            ],
        }
    }

    /// A master's settings (raw), as Linux's ptm driver has them.
    pub fn master_default() -> Termios {
        Termios {
            iflag: 0,
            oflag: 0,
            cflag: 0o277,
            lflag: 0,
            ..Termios::slave_default()
        }
    }

    pub fn to_bytes(self) -> [u8; TERMIOS_SIZE] {
        let mut out = [0u8; TERMIOS_SIZE];
        for (i, v) in [self.iflag, self.oflag, self.cflag, self.lflag]
            .iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        out[16] = self.line;
        out[17..].copy_from_slice(&self.cc);
        out
    }

    pub fn from_bytes(raw: &[u8]) -> Option<Termios> {
        let raw: &[u8; TERMIOS_SIZE] = raw.get(..TERMIOS_SIZE)?.try_into().ok()?;
        let word = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let mut cc = [0u8; 19];
        cc.copy_from_slice(&raw[17..]);
        Some(Termios {
            iflag: word(0),
            oflag: word(4),
            cflag: word(8),
            lflag: word(12),
            line: raw[16],
            cc,
        })
    }
}

/// One terminal pair's state, shared by its ends.
pub struct Pty {
    pub index: u32,
    /// The slave's settings (the line discipline's).
    pub termios: Termios,
    /// The master's own settings (reported, not acted on).
    pub master_termios: Termios,
    /// `struct winsize`, shared by both ends.
    pub winsize: [u8; 8],
    /// Set until `unlockpt` (TIOCSPTLCK 0): the slave cannot be opened.
    pub locked: bool,
    /// Owner of `/dev/pts/N`: whoever opened the master.
    pub uid: u32,
    /// Complete canonical lines the slave may read; an empty one is an
    /// end of file (VEOF at the start of a line).
    lines: VecDeque<Vec<u8>>,
    /// The canonical line being typed.
    editing: Vec<u8>,
    /// Input read as it comes (non-canonical mode).
    raw: VecDeque<u8>,
    /// What the master reads: the slave's output and the echo.
    output: VecDeque<u8>,
    masters: usize,
    slaves: usize,
    slave_opened: bool,
    /// The session whose controlling terminal this is.
    pub session: Option<i32>,
    /// Its foreground process group.
    pub foreground: i32,
    generation: u64,
}

/// The ptys that exist, by index (`Devices::ptys`).
#[derive(Default)]
pub struct Ptys {
    by_index: BTreeMap<u32, Weak<RefCell<Pty>>>,
    /// Signals the line discipline raised: (process group, signal), for the
    /// kernel to send once the writing call is done.
    pub signals: Vec<(i32, u32)>,
}

impl Ptys {
    /// A new pair (`/dev/ptmx`): its master, owned by `uid`.
    pub fn open_master(&mut self, uid: u32, flags: u32) -> Result<PtyMaster> {
        self.by_index.retain(|_, p| p.strong_count() > 0);
        let index = (0..PTY_MAX)
            .find(|i| !self.by_index.contains_key(i))
            .ok_or(Errno::ENOSPC)?;
        let pty = Rc::new(RefCell::new(Pty {
            index,
            termios: Termios::slave_default(),
            master_termios: Termios::master_default(),
            winsize: [0; 8],
            locked: true,
            uid,
            lines: VecDeque::new(),
            editing: Vec::new(),
            raw: VecDeque::new(),
            output: VecDeque::new(),
            masters: 1,
            slaves: 0,
            slave_opened: false,
            session: None,
            foreground: 0,
            generation: 0,
        }));
        self.by_index.insert(index, Rc::downgrade(&pty));
        Ok(PtyMaster {
            pty,
            flags: Cell::new(flags),
        })
    }

    /// Pty `index`, if it exists.
    pub fn get(&self, index: u32) -> Option<Rc<RefCell<Pty>>> {
        self.by_index.get(&index)?.upgrade()
    }

    /// Every pty that exists.
    pub fn all(&self) -> Vec<Rc<RefCell<Pty>>> {
        self.by_index.values().filter_map(Weak::upgrade).collect()
    }

    /// The controlling terminal of session `sid`.
    pub fn of_session(&self, sid: i32) -> Option<Rc<RefCell<Pty>>> {
        self.all()
            .into_iter()
            .find(|p| p.borrow().session == Some(sid))
    }
}

/// Opens a slave of `pty` (`/dev/pts/N`, `TIOCGPTPEER`, `/dev/tty`).
pub fn open_slave(pty: &Rc<RefCell<Pty>>, flags: u32) -> Result<PtySlave> {
    {
        let mut p = pty.borrow_mut();
        if p.locked {
            return Err(Errno::EIO);
        }
        p.slaves += 1;
        p.slave_opened = true;
        p.changed();
    }
    Ok(PtySlave {
        pty: pty.clone(),
        flags: Cell::new(flags),
    })
}

impl Pty {
    fn changed(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        pipe::bump();
    }

    fn lflag(&self, bit: u32) -> bool {
        self.termios.lflag & bit != 0
    }

    fn canonical(&self) -> bool {
        self.lflag(ICANON)
    }

    /// Output processing of what goes to the master (the slave's writes
    /// and the echo).
    fn put_output(&mut self, bytes: &[u8]) {
        let onlcr = self.termios.oflag & (OPOST | ONLCR) == OPOST | ONLCR;
        for &b in bytes {
            if b == b'\n' && onlcr {
                self.output.push_back(b'\r');
            }
            self.output.push_back(b);
        }
    }

    fn echo(&mut self, c: u8) {
        if !self.lflag(ECHO) {
            if c == b'\n' && self.lflag(ECHONL) && self.canonical() {
                self.put_output(b"\n");
            }
            return;
        }
        if self.lflag(ECHOCTL) && c < 0x20 && c != b'\n' && c != b'\t' {
            self.put_output(&[b'^', c + 0x40]);
        } else {
            self.put_output(&[c]);
        }
    }

    fn input_len(&self) -> usize {
        self.raw.len() + self.editing.len() + self.lines.iter().map(Vec::len).sum::<usize>()
    }

    /// One byte the master wrote, through the input side of the line
    /// discipline. Signals it raises go to `signals`.
    fn receive(&mut self, mut c: u8, signals: &mut Vec<(i32, u32)>) {
        let iflag = self.termios.iflag;
        if c == b'\r' {
            if iflag & IGNCR != 0 {
                return;
            }
            if iflag & ICRNL != 0 {
                c = b'\n';
            }
        } else if c == b'\n' && iflag & INLCR != 0 {
            c = b'\r';
        }
        let cc = self.termios.cc;
        if self.lflag(ISIG) {
            let signal = [(VINTR, SIGINT), (VQUIT, SIGQUIT), (VSUSP, SIGTSTP)]
                .into_iter()
                .find(|&(i, _)| cc[i] != 0 && cc[i] == c)
                .map(|(_, s)| s);
            if let Some(signal) = signal {
                if !self.lflag(NOFLSH) {
                    self.lines.clear();
                    self.editing.clear();
                    self.raw.clear();
                }
                self.echo(c);
                if self.foreground > 0 {
                    signals.push((self.foreground, signal));
                }
                return;
            }
        }
        if !self.canonical() {
            if self.raw.len() < INPUT_MAX {
                self.raw.push_back(c);
                self.echo(c);
            }
            return;
        }
        if c == cc[VERASE] && cc[VERASE] != 0 {
            if self.editing.pop().is_some() && self.lflag(ECHO) && self.lflag(ECHOE) {
                self.put_output(b"\x08 \x08");
            }
            return;
        }
        if c == cc[VKILL] && cc[VKILL] != 0 {
            self.editing.clear();
            if self.lflag(ECHO) {
                self.echo(c);
                if self.lflag(ECHOK) {
                    self.put_output(b"\n");
                }
            }
            return;
        }
        if c == cc[VEOF] && cc[VEOF] != 0 {
            let line = core::mem::take(&mut self.editing);
            self.lines.push_back(line);
            return;
        }
        if self.input_len() >= INPUT_MAX && c != b'\n' {
            return;
        }
        self.editing.push(c);
        self.echo(c);
        if c == b'\n' || (c == cc[VEOL] && cc[VEOL] != 0) {
            let line = core::mem::take(&mut self.editing);
            self.lines.push_back(line);
        }
    }

    /// A settings change: input typed in one mode stays readable in the
    /// other.
    pub fn set_termios(&mut self, termios: Termios) {
        let was_canonical = self.canonical();
        self.termios = termios;
        if was_canonical && !self.canonical() {
            for line in core::mem::take(&mut self.lines) {
                self.raw.extend(line);
            }
            self.raw.extend(core::mem::take(&mut self.editing));
        }
        self.changed();
    }

    /// Bytes the slave may read now (`FIONREAD`).
    pub fn readable_bytes(&self) -> usize {
        self.raw.len() + self.lines.front().map_or(0, Vec::len)
    }

    /// Bytes waiting for the master (`FIONREAD` on the master).
    pub fn output_bytes(&self) -> usize {
        self.output.len()
    }

    /// Drops queued input, output or both (`TCFLSH` 0, 1, 2).
    pub fn flush(&mut self, which: u32) {
        if which != 1 {
            self.lines.clear();
            self.editing.clear();
            self.raw.clear();
        }
        if which != 0 {
            self.output.clear();
        }
        self.changed();
    }

    fn slave_readable(&self) -> bool {
        !self.raw.is_empty() || !self.lines.is_empty() || self.masters == 0
    }

    fn master_hung_up(&self) -> bool {
        self.slave_opened && self.slaves == 0
    }
}

/// The master side of a pty.
pub struct PtyMaster {
    pub pty: Rc<RefCell<Pty>>,
    pub flags: Cell<u32>,
}

/// A slave side of a pty.
pub struct PtySlave {
    pub pty: Rc<RefCell<Pty>>,
    pub flags: Cell<u32>,
}

impl Drop for PtyMaster {
    fn drop(&mut self) {
        let mut p = self.pty.borrow_mut();
        p.masters -= 1;
        p.changed();
    }
}

impl Drop for PtySlave {
    fn drop(&mut self) {
        let mut p = self.pty.borrow_mut();
        p.slaves -= 1;
        p.changed();
    }
}

/// Writes `buf` to the master's side: the line discipline's input.
pub fn master_write(
    pty: &RefCell<Pty>,
    buf: &[u8],
    dev: &mut Devices,
    nonblocking: bool,
) -> Result<usize> {
    let mut p = pty.borrow_mut();
    if p.input_len() >= INPUT_MAX && !buf.is_empty() {
        return Err(if nonblocking {
            Errno::EAGAIN
        } else {
            Errno::EBLOCK
        });
    }
    for &c in buf {
        p.receive(c, &mut dev.ptys.signals);
    }
    p.changed();
    Ok(buf.len())
}

fn stat_of(rdev: u32, ino: u64, uid: u32, mode: u32) -> [u8; 144] {
    Attr {
        ino,
        mode: S_IFCHR | mode,
        nlink: 1,
        uid,
        gid: 5,
        rdev,
        blksize: 1024,
        ..Attr::default()
    }
    .to_stat(DEVPTS_DEV)
}

/// `stat` of `/dev/pts/N`, as of its open slaves.
pub fn slave_stat(pty: &Pty) -> [u8; 144] {
    stat_of(
        PTS_MAJOR << 8 | pty.index,
        u64::from(pty.index) + 3,
        pty.uid,
        0o620,
    )
}

/// `stat` of `/dev/ptmx`.
pub fn ptmx_stat() -> [u8; 144] {
    stat_of(PTMX_RDEV, 2, 0, 0o666)
}

impl File for PtyMaster {
    fn read(&self, _dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        let mut p = self.pty.borrow_mut();
        if p.output.is_empty() {
            if p.master_hung_up() {
                return Err(Errno::EIO);
            }
            if buf.is_empty() {
                return Ok(0);
            }
            return Err(if self.flags.get() & O_NONBLOCK != 0 {
                Errno::EAGAIN
            } else {
                Errno::EBLOCK
            });
        }
        let n = buf.len().min(p.output.len());
        for (dst, src) in buf.iter_mut().zip(p.output.drain(..n)) {
            *dst = src;
        }
        p.changed();
        Ok(n)
    }
    fn write(&self, dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        master_write(&self.pty, buf, dev, self.flags.get() & O_NONBLOCK != 0)
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(ptmx_stat())
    }
    fn proc_name(&self) -> Vec<u8> {
        b"/dev/ptmx".to_vec()
    }
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        let p = self.pty.borrow();
        (
            !p.output.is_empty() || p.master_hung_up(),
            p.input_len() < INPUT_MAX,
        )
    }
    fn poll_generation(&self) -> Option<u64> {
        Some(self.pty.borrow().generation)
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}

impl File for PtySlave {
    fn read(&self, _dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        let mut p = self.pty.borrow_mut();
        let wait = if self.flags.get() & O_NONBLOCK != 0 {
            Errno::EAGAIN
        } else {
            Errno::EBLOCK
        };
        if buf.is_empty() {
            return Ok(0);
        }
        if !p.raw.is_empty() {
            let n = buf.len().min(p.raw.len());
            for (dst, src) in buf.iter_mut().zip(p.raw.drain(..n)) {
                *dst = src;
            }
            p.changed();
            return Ok(n);
        }
        if p.canonical() {
            if let Some(line) = p.lines.front_mut() {
                // One line per read, as Linux's canonical reads; an empty
                // line is an end of file.
                let n = buf.len().min(line.len());
                buf[..n].copy_from_slice(&line[..n]);
                line.drain(..n);
                if line.is_empty() {
                    p.lines.pop_front();
                }
                p.changed();
                return Ok(n);
            }
        } else if p.termios.cc[VMIN] == 0 {
            return Ok(0);
        }
        if p.masters == 0 {
            return Ok(0);
        }
        Err(wait)
    }
    fn write(&self, _dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        let mut p = self.pty.borrow_mut();
        if p.masters == 0 {
            return Err(Errno::EIO);
        }
        if p.output.len() >= OUTPUT_MAX && !buf.is_empty() {
            return Err(if self.flags.get() & O_NONBLOCK != 0 {
                Errno::EAGAIN
            } else {
                Errno::EBLOCK
            });
        }
        let n = buf.len().min(OUTPUT_MAX - p.output.len());
        p.put_output(&buf[..n]);
        p.changed();
        Ok(n)
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(slave_stat(&self.pty.borrow()))
    }
    fn proc_name(&self) -> Vec<u8> {
        alloc::format!("/dev/pts/{}", self.pty.borrow().index).into_bytes()
    }
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        let p = self.pty.borrow();
        (p.slave_readable(), p.output.len() < OUTPUT_MAX)
    }
    fn poll_generation(&self) -> Option<u64> {
        Some(self.pty.borrow().generation)
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}

/// The pty of a master or slave descriptor, and whether it is the master.
pub fn pty_of(file: &dyn File) -> Option<(&Rc<RefCell<Pty>>, bool)> {
    let any = file.as_any()?;
    if let Some(m) = any.downcast_ref::<PtyMaster>() {
        return Some((&m.pty, true));
    }
    any.downcast_ref::<PtySlave>().map(|s| (&s.pty, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Ptys, PtyMaster) {
        let mut ptys = Ptys::default();
        let master = ptys.open_master(0, 2).expect("a master");
        master.pty.borrow_mut().locked = false;
        (ptys, master)
    }

    fn type_in(master: &PtyMaster, text: &[u8], signals: &mut Vec<(i32, u32)>) {
        let mut p = master.pty.borrow_mut();
        for &c in text {
            p.receive(c, signals);
        }
    }

    fn read_all_output(master: &PtyMaster) -> Vec<u8> {
        master.pty.borrow_mut().output.drain(..).collect()
    }

    #[test]
    fn termios_bytes_round_trip() {
        let t = Termios::slave_default();
        assert_eq!(Termios::from_bytes(&t.to_bytes()), Some(t));
        assert_eq!(Termios::from_bytes(&[0; 10]), None);
    }

    #[test]
    fn canonical_input_is_edited_echoed_and_read_a_line_at_a_time() {
        let (_ptys, master) = pair();
        let slave = open_slave(&master.pty, 2).expect("a slave");
        let mut signals = Vec::new();
        type_in(&master, b"helo\x7flo\r", &mut signals);
        type_in(&master, b"second\n", &mut signals);
        assert_eq!(read_all_output(&master), b"helo\x08 \x08lo\r\nsecond\r\n");
        let mut p = slave.pty.borrow_mut();
        assert_eq!(p.lines.pop_front().expect("a line"), b"hello\n");
        assert_eq!(p.lines.pop_front().expect("a line"), b"second\n");
        drop(p);
        // VEOF on an empty line: an end of file.
        type_in(&master, b"\x04", &mut signals);
        let mut buf = [0u8; 8];
        assert_eq!(slave.pty.borrow().lines.len(), 1);
        let mut dev_free_read = || {
            let mut p = slave.pty.borrow_mut();
            let line = p.lines.pop_front().expect("a line");
            buf[..line.len()].copy_from_slice(&line);
            line.len()
        };
        assert_eq!(dev_free_read(), 0);
        assert!(signals.is_empty());
    }

    #[test]
    fn intr_signals_the_foreground_group_and_flushes() {
        let (_ptys, master) = pair();
        master.pty.borrow_mut().foreground = 42;
        let mut signals = Vec::new();
        type_in(&master, b"partial\x03", &mut signals);
        assert_eq!(signals, [(42, SIGINT)]);
        assert!(master.pty.borrow().editing.is_empty());
        assert_eq!(read_all_output(&master), b"partial^C");
    }

    #[test]
    fn raw_mode_passes_bytes_and_output_gets_cr() {
        let (_ptys, master) = pair();
        let mut t = Termios::slave_default();
        t.lflag &= !(ICANON | ECHO | ISIG);
        master.pty.borrow_mut().set_termios(t);
        let mut signals = Vec::new();
        type_in(&master, b"a\x03\r", &mut signals);
        assert!(signals.is_empty());
        assert_eq!(
            master.pty.borrow().raw.iter().copied().collect::<Vec<_>>(),
            b"a\x03\n"
        );
        master.pty.borrow_mut().put_output(b"x\ny");
        assert_eq!(read_all_output(&master), b"x\r\ny");
    }

    #[test]
    fn closing_ends_hangs_up_the_other() {
        let (mut ptys, master) = pair();
        let pty = master.pty.clone();
        let slave = open_slave(&pty, 2).expect("a slave");
        assert!(!pty.borrow().master_hung_up());
        drop(slave);
        assert!(pty.borrow().master_hung_up());
        let again = open_slave(&pty, 2).expect("a slave");
        drop(master);
        assert!(
            again.pty.borrow().slave_readable(),
            "a hung-up slave reads end of file"
        );
        drop(again);
        drop(pty);
        assert!(ptys.get(0).is_none());
        assert_eq!(
            ptys.open_master(0, 2).expect("a master").pty.borrow().index,
            0,
            "the index is free again"
        );
    }

    #[test]
    fn a_locked_slave_cannot_be_opened() {
        let mut ptys = Ptys::default();
        let master = ptys.open_master(0, 2).expect("a master");
        assert_eq!(open_slave(&master.pty, 2).err(), Some(Errno::EIO));
    }
}
