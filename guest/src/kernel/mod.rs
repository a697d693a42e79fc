//! The kernel proper: boot, the global state, loading the program, and the
//! entry points the trampolines call (syscall, fault, panic).

pub mod exec;
pub mod mm;
pub mod procfs;
pub mod sched;
pub mod signal;
pub mod spec;
pub mod time;
pub mod uaccess;

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, UnsafeCell};
use core::fmt::Write as _;

use capsa_abi::{
    control, BootInfo, DeviceRole, BOOT_DATA_END, FLAG_DEBUG_SYSCALLS, FLAG_ROOTFS_READONLY,
    VIRTIO_ID_CONSOLE, VIRTIO_ID_FS,
};

use crate::arch::{self, control_write, ExceptionFrame, FaultInfo, SyscallFrame};
use crate::drivers::rng::Rng;
use crate::drivers::virtio::console::Console;
use crate::drivers::virtio::fs::FsDevice;
use crate::drivers::virtio::net::NetDevice;
use crate::errno::{Errno, Result};
use crate::fs::fd::{Fd, FdTable, File, O_RDONLY, O_WRONLY};
use crate::fs::files::{ConsoleIn, ConsoleOut, FuseFile};
use crate::fs::fuse::{FuseFs, VirtioFuse};
use crate::fs::vfs::{Mount, Vfs};
use crate::fs::Devices;
use crate::loader::elf::{self, Elf};
use crate::loader::stack;
use crate::mm::cache::PageCache;
use crate::mm::space::{self, Frames, Space};
use crate::mm::{page_up, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE};
use crate::task::process::{Pid, ProcTable, INIT};
use crate::task::signal::Signals;
use crate::task::{Process, Thread};
use spec::{ProcessSpec, RLIMIT_STACK};
use time::Clock;

/// A process's address space, its shared file mappings holding file objects.
pub type Mm = crate::mm::Mm<dyn File>;
/// One `MAP_SHARED` file mapping of a process.
pub type MappedFile = crate::mm::MappedFile<dyn File>;

/// What all processes share: devices, memory frames, mounts, the process
/// table, clocks, futex queues and locks. Each process's own state is in
/// `processes`, each thread's in its task; `cur` names the running task,
/// The kernel's identity as uname(2) and `/proc/sys/kernel` report it.
pub const OS_TYPE: &[u8] = b"Linux";
pub const OS_RELEASE: &[u8] = b"6.1.0-capsa";
pub const OS_VERSION: &[u8] = b"#1 SMP capsa";

/// and switching is changing it (and CR3).
pub struct Kernel {
    pub dev: Devices,
    pub spec: ProcessSpec,
    pub clock: Clock,
    /// CPU-time accounting of the running task (see `crate::task::cputime`).
    pub meter: crate::task::cputime::Meter,
    pub boot_flags: u32,
    /// Unknown syscall numbers and how often each was called.
    pub unknown_syscalls: BTreeMap<u64, u64>,
    pub ram_size: u64,
    /// User memory frames, shared by all processes.
    pub frames: Rc<Frames>,
    /// A space with no user slots, loaded while no process's space is.
    pub kernel_space: Option<Space>,
    /// Every task (thread), with its own state (`Thread`).
    pub procs: ProcTable<Thread>,
    /// Every live process by its thread group id.
    pub processes: BTreeMap<Pid, Process>,
    /// The running task.
    pub cur: Pid,
    /// Stand-ins the accessors return while the running task or its process
    /// is gone (between its exit and the switch away from it).
    gone_process: Process,
    gone_thread: Thread,
    /// Threads blocked in futex waits, all groups.
    pub futexes: crate::task::futex::Futexes,
    /// Advisory file locks of every process.
    pub locks: crate::fs::locks::Locks,
    /// The socket namespace: bound names and ports.
    pub net: crate::net::Net,
    /// What a call answering `EBLOCK` waits for besides the event counter.
    pub block_deadline: Option<u64>,
    pub block_stdin: bool,
    /// Set when the current task stopped being runnable during a call.
    pub switch_pending: bool,
    /// When the current task was switched in (monotonic ns), for its time slice.
    pub slice_start: u64,
    /// A vfork child to run next, in its parent's memory.
    pub vfork_child: Option<Pid>,
    pub loaded_cr3: u64,
    /// The kernel ran out of frames touching memory for the application:
    /// the OOM killer runs when the system call ends.
    pub oom_pending: core::cell::Cell<bool>,
    /// Duration of the last fork's address-space copy (for measurements).
    pub last_fork_ns: u64,
}

impl Kernel {
    /// The running task's process.
    pub fn proc(&self) -> &Process {
        let tgid = self.procs.tgid(self.cur);
        self.processes.get(&tgid).unwrap_or(&self.gone_process)
    }

    pub fn proc_mut(&mut self) -> &mut Process {
        self.proc_and_dev().0
    }

    /// Resolves `path` from the current process's working directory.
    pub fn walk_from_cwd(&mut self, path: &[u8], follow: bool) -> Result<crate::fs::vfs::Walk> {
        let (p, dev) = self.proc_and_dev();
        dev.vfs.walk(&p.cwd, path, follow)
    }

    /// The running task's process and the devices, borrowed together.
    pub fn proc_and_dev(&mut self) -> (&mut Process, &mut Devices) {
        let tgid = self.procs.tgid(self.cur);
        let p = match self.processes.get_mut(&tgid) {
            Some(p) => p,
            None => &mut self.gone_process,
        };
        (p, &mut self.dev)
    }

    /// The running task's own state.
    pub fn thread(&self) -> &Thread {
        self.procs
            .get(self.cur)
            .map_or(&self.gone_thread, |t| &t.thread)
    }

    pub fn thread_mut(&mut self) -> &mut Thread {
        match self.procs.get_mut(self.cur) {
            Some(t) => &mut t.thread,
            None => &mut self.gone_thread,
        }
    }
}

struct Global(UnsafeCell<Option<Kernel>>);

// SAFETY: one vCPU, no interrupts: the kernel state is only touched from the
// syscall/fault paths, which never nest.
unsafe impl Sync for Global {}

static KERNEL: Global = Global(UnsafeCell::new(None));

/// The kernel, for the entry points (one vCPU: the syscall and fault
/// paths never nest, so one reference exists at a time).
pub fn kernel() -> &'static mut Kernel {
    // SAFETY: see `Global`; boot stores the kernel before enabling any path
    // that reaches here, and callers never hold two references at once.
    match unsafe { (*KERNEL.0.get()).as_mut() } {
        Some(k) => k,
        None => fatal(format_args!("kernel used before boot")),
    }
}

/// Stops the VM: the init process exited with `code`.
pub fn exit(code: i32) -> ! {
    control_write(control::EXIT_CODE, (code & 0xff) as u64);
    loop {
        control_write(control::IDLE_NS, u64::MAX);
    }
}

/// Stops the VM: the init process was killed by `signal`.
pub fn exit_signal(signal: u32) -> ! {
    control_write(control::EXIT_SIGNAL, u64::from(signal));
    loop {
        control_write(control::IDLE_NS, u64::MAX);
    }
}

/// A message in a fixed buffer (formatting must not allocate on error paths).
pub struct MsgBuf {
    buf: [u8; 512],
    len: usize,
}

impl MsgBuf {
    pub fn new() -> Self {
        Self {
            buf: [0; 512],
            len: 0,
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Default for MsgBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for MsgBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// An unrecoverable kernel error: tell the VMM and stop.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    let mut m = MsgBuf::new();
    let _ = m.write_str("capsa guest: ");
    let _ = m.write_fmt(args);
    arch::debug(m.as_bytes());
    control_write(control::PANIC, 1);
    loop {
        control_write(control::IDLE_NS, u64::MAX);
    }
}

pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fatal(format_args!("panic: {info}"))
}

/// Writes to the process's stderr (for messages the runtime prints in
/// container mode too, like a failed exec).
pub(crate) fn stderr_message(dev: &mut Devices, msg: &[u8]) {
    let out = ConsoleOut {
        stderr: true,
        flags: Cell::new(O_WRONLY),
    };
    let _ = out.write(dev, msg);
}

/// The kernel heap: the top of RAM, a sixteenth of it within [4, 64] MiB.
///
/// The global allocator calls this itself on first use, reading the
/// BootInfo the VMM left at `BOOT_INFO_ADDR`, so no allocation can ever
/// happen before the heap exists (even the free-range list needs it).
pub fn heap_region(info: &BootInfo) -> Option<(u64, u64)> {
    if !info.is_valid() {
        return None;
    }
    let ram_size = info.ram_size.min(capsa_abi::MAX_RAM_SIZE);
    let size = (ram_size / 16).clamp(4 << 20, 64 << 20);
    let start = ram_size.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= page_up(info.free_start)? + (8 << 20)).then_some((start, ram_size - start))
}

/// Boots: called once, at CPL3, on the kernel stack.
pub fn boot(boot_info: u64) -> ! {
    if boot_info != capsa_abi::BOOT_INFO_ADDR {
        fatal(format_args!(
            "boot info at {boot_info:#x}, expected {:#x}",
            capsa_abi::BOOT_INFO_ADDR
        ));
    }
    // SAFETY: the VMM wrote a BootInfo at this address (checked to be in the
    // boot data region, identity mapped); it is read once and copied.
    let info: BootInfo = unsafe { core::ptr::read_volatile(boot_info as *const BootInfo) };
    arch::init_fpu();
    if !info.is_valid() {
        fatal(format_args!(
            "bad boot info (magic {:#x}, version {})",
            info.magic, info.version
        ));
    }
    let ram_size = info.ram_size.min(capsa_abi::MAX_RAM_SIZE);
    // The allocator set itself up from the same BootInfo (see `heap_region`).
    let Some((heap, _)) = heap_region(&info) else {
        fatal(format_args!(
            "not enough RAM for the kernel ({ram_size} bytes)"
        ));
    };
    // User frames: the RAM above the kernel image and below the heap, in
    // whole 2 MiB slots (the identity map around them uses 2 MiB pages;
    // see `mm::space`).
    let mut frames = Frames::new(
        info.free_start.max(capsa_abi::KERNEL_BASE + space::SLOT),
        heap,
    );
    if let Err(e) = frames.build_identity() {
        fatal(format_args!("cannot build page tables: errno {}", e.0));
    }
    let frames = Rc::new(frames);
    let mm = Mm::new(frames.user_lo, frames.user_hi);
    let (kernel_space, first_space) = match (Space::new(&frames), Space::new(&frames)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => fatal(format_args!("cannot build page tables")),
    };
    arch::load_cr3(first_space.cr3());
    first_space.activate();

    let spec_ok = info.process_spec_addr >= 0x1000
        && info
            .process_spec_addr
            .checked_add(info.process_spec_len)
            .is_some_and(|end| end <= BOOT_DATA_END);
    let encoded = if spec_ok {
        // SAFETY: the range was checked to lie inside the boot data region.
        unsafe {
            core::slice::from_raw_parts(
                info.process_spec_addr as *const u8,
                info.process_spec_len as usize,
            )
        }
    } else {
        &[]
    };
    let (spec, malformed) = ProcessSpec::decode(encoded);
    if malformed {
        arch::debug(b"capsa guest: process spec has a malformed record; ignoring the rest");
    }

    let clock = Clock::new(info.tsc_khz);
    let hardware_rng = arch::rdrand().is_some();
    let seed = clock.realtime_ns() ^ arch::rdtsc().rotate_left(32);
    let mut dev = Devices {
        vfs: Vfs::new(),
        cache: PageCache::new(frames.clone()),
        consoles: Vec::new(),
        stdio: None,
        stderr: None,
        rng: Rng::new(seed, hardware_rng),
        want_stdin: false,
        ptys: Default::default(),
        dnotify: Default::default(),
    };
    // Device index in BootInfo -> file system index.
    let mut fs_of_device = BTreeMap::new();
    let mut root_fs = None;
    let mut net_device = None;
    for (index, d) in info.devices().iter().enumerate() {
        if d.mmio_base < capsa_abi::MMIO_WINDOW_START {
            continue;
        }
        match (d.virtio_id, DeviceRole::from_u32(d.role)) {
            (VIRTIO_ID_CONSOLE, Some(role @ (DeviceRole::Stdio | DeviceRole::Stderr))) => {
                // SAFETY: the VMM lists this window as a virtio-console device.
                match unsafe { Console::new(d.mmio_base) } {
                    Ok(c) => {
                        dev.consoles.push(c);
                        let i = dev.consoles.len() - 1;
                        if role == DeviceRole::Stdio {
                            dev.stdio = Some(i);
                        } else {
                            dev.stderr = Some(i);
                        }
                    }
                    Err(e) => fatal(format_args!("console device {index}: {e:?}")),
                }
            }
            (VIRTIO_ID_FS, Some(role @ (DeviceRole::RootFs | DeviceRole::Mount))) => {
                // SAFETY: the VMM lists this window as a virtio-fs device.
                let device = unsafe { FsDevice::pending(d.mmio_base) };
                let transport = VirtioFuse::new(device, spec.uid, spec.gid);
                let readonly = match role {
                    DeviceRole::RootFs => info.flags & FLAG_ROOTFS_READONLY != 0,
                    _ => spec
                        .mounts
                        .iter()
                        .any(|m| m.device as usize == index && m.readonly),
                };
                let mut fs = FuseFs::new(transport, readonly);
                fs.attrs.tsc_khz = info.tsc_khz;
                // The root is always used: set it up now. Other mounts are
                // set up by their first request.
                if role == DeviceRole::RootFs {
                    if let Err(e) = fs.init() {
                        fatal(format_args!(
                            "virtio-fs device {index}: setup or FUSE_INIT failed: errno {}",
                            e.0
                        ));
                    }
                }
                dev.vfs.filesystems.push(fs);
                let fs_index = dev.vfs.filesystems.len() - 1;
                fs_of_device.insert(index as u32, fs_index);
                if role == DeviceRole::RootFs {
                    root_fs = Some(fs_index);
                }
            }
            (capsa_abi::VIRTIO_ID_NET, Some(DeviceRole::Net)) => {
                // SAFETY: the VMM lists this window as a virtio-net device.
                match unsafe { NetDevice::new(d.mmio_base, info.net.mtu()) } {
                    Ok(n) => net_device = Some(n),
                    Err(e) => fatal(format_args!("network device {index}: {e:?}")),
                }
            }
            _ => {}
        }
    }
    let Some(root_fs) = root_fs else {
        fatal(format_args!("no root file system device"));
    };
    dev.vfs.mounts.push(Mount::new(b"/", root_fs));
    for m in &spec.mounts {
        if let Some(&fs) = fs_of_device.get(&m.device) {
            dev.vfs.mounts.push(Mount::new(&m.destination, fs));
        }
    }

    let creds = spec.creds();
    // Finding and loading the program is the first process's system time
    // (setting up the devices before is nobody's).
    let clock_start = clock.cpu_ticks();
    let init = Process {
        fds: FdTable::default(),
        mm,
        space: Some(first_space),
        cwd: spec.cwd.clone(),
        umask: spec.umask,
        creds,
        signals: Signals::default(),
        exe_path: Vec::new(),
        comm: [0; 16],
        personality: 0,
        exited: None,
        timers: Default::default(),
        exec_session: None,
    };
    let loaded_cr3 = init.space.as_ref().map_or(0, Space::cr3);
    let mut k = Kernel {
        dev,
        meter: crate::task::cputime::Meter::new(clock_start),
        clock,
        boot_flags: info.flags,
        unknown_syscalls: BTreeMap::new(),
        ram_size,
        procs: ProcTable::new(spec.pids_limit),
        processes: BTreeMap::from([(INIT, init)]),
        gone_process: Process::default(),
        gone_thread: Thread::default(),
        spec,
        loaded_cr3,
        oom_pending: core::cell::Cell::new(false),
        frames,
        kernel_space: Some(kernel_space),
        cur: INIT,
        futexes: crate::task::futex::Futexes::default(),
        locks: crate::fs::locks::Locks::default(),
        net: crate::net::Net::default(),
        block_deadline: None,
        block_stdin: false,
        switch_pending: false,
        slice_start: 0,
        vfork_child: None,
        last_fork_ns: 0,
    };
    if let Some(n) = net_device {
        let seed = k.dev.rng.next_u64();
        let now = k.clock.monotonic_ns();
        k.net.wire = Some(crate::net::wire::Wire::new(n, info.net, now, seed));
    }
    let limit = k.nofile_limit();
    let stdio: [Rc<dyn File>; 3] = [
        Rc::new(ConsoleIn {
            flags: Cell::new(O_RDONLY),
        }),
        Rc::new(ConsoleOut {
            stderr: false,
            flags: Cell::new(O_WRONLY),
        }),
        Rc::new(ConsoleOut {
            stderr: true,
            flags: Cell::new(O_WRONLY),
        }),
    ];
    for file in stdio {
        if k.proc_mut()
            .fds
            .insert(
                Fd {
                    file,
                    cloexec: false,
                },
                limit.max(3),
            )
            .is_err()
        {
            fatal(format_args!("cannot install stdio"));
        }
    }
    // Resolve the program like runc does: args[0] through PATH unless it has a slash.
    let Some(arg0) = k.spec.args.first().cloned() else {
        stderr_message(&mut k.dev, b"capsa: process.args must not be empty\n");
        exit(127);
    };
    let path_var = k.spec.env_var(b"PATH").unwrap_or(DEFAULT_PATH).to_vec();
    let Some(program) = k.find_program(&arg0, &path_var) else {
        let mut msg = b"capsa: exec ".to_vec();
        msg.extend_from_slice(&arg0);
        msg.extend_from_slice(b": no such file or directory\n");
        stderr_message(&mut k.dev, &msg);
        exit(127);
    };
    let (args, env) = (k.spec.args.clone(), k.spec.env.clone());
    let (entry, sp) = match k.load_program(&program, &args, &env) {
        Ok(v) => v,
        Err(e) => {
            let mut msg = b"capsa: exec ".to_vec();
            msg.extend_from_slice(&arg0);
            msg.extend_from_slice(match e {
                Errno::ENOEXEC => b": exec format error\n".as_slice(),
                Errno::ENOMEM | Errno::E2BIG => b": cannot allocate memory\n".as_slice(),
                Errno::EACCES => b": permission denied\n".as_slice(),
                _ => b": input/output error\n".as_slice(),
            });
            stderr_message(&mut k.dev, &msg);
            exit(if e == Errno::ENOEXEC || e == Errno::EACCES {
                126
            } else {
                127
            });
        }
    };
    k.set_program_names(program);
    k.meter.leave_kernel(k.clock.cpu_ticks());
    // SAFETY: boot runs once, before any syscall or fault can reach `kernel()`.
    unsafe { *KERNEL.0.get() = Some(k) };
    arch::enable_ticks();
    arch::enter_user(entry, sp)
}

/// The value of `name` in an environment of `KEY=VALUE` entries.
pub fn env_var<'a>(env: &'a [Vec<u8>], name: &[u8]) -> Option<&'a [u8]> {
    env.iter().find_map(|entry| {
        let rest = entry.strip_prefix(name)?;
        rest.strip_prefix(b"=")
    })
}

/// The search path of a process whose environment sets no `PATH`.
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Kernel {
    pub fn nofile_limit(&self) -> usize {
        self.spec.rlimits[crate::kernel::spec::RLIMIT_NOFILE]
            .0
            .min(1 << 20) as usize
    }

    pub fn debug_enabled(&self) -> bool {
        self.boot_flags & FLAG_DEBUG_SYSCALLS != 0
    }

    fn is_regular_file(&mut self, path: &[u8]) -> Option<Vec<u8>> {
        // The path as given, not its target: the process's name (comm) is
        // the last component of what was executed, as on Linux.
        let w = self.walk_from_cwd(path, true).ok()?;
        (w.mode & crate::fs::fuse::S_IFMT == crate::fs::fuse::S_IFREG).then(|| path.to_vec())
    }

    /// The running process's name (comm: the last component of what was
    /// executed, as on Linux) and executable's path, once it loaded `program`.
    pub fn set_program_names(&mut self, program: Vec<u8>) {
        let name = program.rsplit(|&b| b == b'/').next().unwrap_or(&program);
        let n = name.len().min(15);
        self.proc_mut().comm = [0; 16];
        self.proc_mut().comm[..n].copy_from_slice(&name[..n]);
        self.proc_mut().exe_path = self
            .walk_from_cwd(&program, true)
            .map(|w| w.path)
            .unwrap_or(program);
    }

    /// `args[0]` as runc resolves it: as a path when it contains a slash,
    /// else the first regular file of that name along `path_var` (the
    /// process's PATH).
    fn find_program(&mut self, arg0: &[u8], path_var: &[u8]) -> Option<Vec<u8>> {
        if arg0.contains(&b'/') {
            return self.is_regular_file(arg0);
        }
        if arg0.is_empty() {
            return None;
        }
        for dir in path_var.split(|&b| b == b':') {
            let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
            let candidate = crate::fs::vfs::join(dir, arg0);
            if let Some(p) = self.is_regular_file(&candidate) {
                return Some(p);
            }
        }
        None
    }

    pub fn open_for_exec(&mut self, path: &[u8]) -> Result<FuseFile> {
        let w = self.walk_from_cwd(path, true)?;
        if w.mode & crate::fs::fuse::S_IFMT != crate::fs::fuse::S_IFREG {
            return Err(Errno::EACCES);
        }
        let fh = self.dev.vfs.fs(w.node.fs)?.open(w.node.id, O_RDONLY)?;
        Ok(FuseFile {
            node: w.node,
            fh,
            flags: Cell::new(O_RDONLY),
            offset: Cell::new(0),
            path: w.path,
        })
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact(&mut self, file: &dyn File, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = file.read_at(&mut self.dev, &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(Errno::ENOEXEC);
            }
            done += n;
        }
        Ok(())
    }

    /// Loads one ELF image; returns it with its load bias and end address.
    fn load_elf(&mut self, path: &[u8], interp: bool) -> Result<(Elf, u64, u64)> {
        let file: Rc<dyn File> = Rc::new(self.open_for_exec(path)?);
        let result = self.load_elf_from(&file, interp);
        // The mappings hold the file open; without them it closes here.
        mm::release_files(&mut self.dev, vec![file]);
        result
    }

    /// Maps the image's segments as `execve` does on Linux: privately from
    /// the file (so its pages come from the page cache, shared with every
    /// other process running it until written), the rest of the last file
    /// page cleared and the bss beyond it anonymous.
    fn load_elf_from(&mut self, file: &Rc<dyn File>, interp: bool) -> Result<(Elf, u64, u64)> {
        let mut ehdr = [0u8; elf::EHDR_SIZE];
        self.read_exact(&**file, &mut ehdr, 0)?;
        let (phoff, phlen) = elf::parse_header(&ehdr)?;
        let mut phdrs = vec![0u8; phlen];
        self.read_exact(&**file, &mut phdrs, phoff)?;
        let image = elf::parse(&ehdr, &phdrs)?;
        let (lo, hi, align) = image.span();
        let len = hi - lo;
        let bias = if image.relocatable {
            // A program at Linux's PIE base with room for its break after
            // it; its interpreter where mmap puts things, below the stack.
            let align = align.max(PAGE_SIZE);
            let regions = &mut self.proc_mut().mm.regions;
            let base = if interp {
                regions.alloc_top(len, align)
            } else {
                regions.alloc_above(crate::mm::PIE_BASE, len, align)
            };
            base.ok_or(Errno::ENOMEM)? - lo
        } else {
            if !self.proc_mut().mm.regions.reserve(lo, hi) {
                return Err(Errno::ENOMEM);
            }
            0
        };
        for h in image.loads() {
            let start = h.vaddr + bias;
            let mut prot = 0;
            if h.flags & elf::PF_R != 0 {
                prot |= PROT_READ;
            }
            if h.flags & elf::PF_W != 0 {
                prot |= PROT_WRITE;
            }
            if h.flags & elf::PF_X != 0 {
                prot |= PROT_EXEC;
            }
            let map_start = start & !(PAGE_SIZE - 1);
            let file_end = start + h.filesz;
            let file_map_end = page_up(file_end).ok_or(Errno::ENOEXEC)?;
            let map_end = page_up(start + h.memsz).ok_or(Errno::ENOEXEC)?;
            // The segment's offset and address agree modulo the page size
            // (`elf::parse` checks), so whole file pages map.
            let offset = h.offset - (start - map_start);
            let mm = &mut self.proc_mut().mm;
            if h.filesz > 0 {
                mm.vmas.insert(map_start, file_map_end, prot);
                mm.attach_file(map_start, file_map_end, file.clone(), offset);
            }
            if map_end > file_map_end {
                mm.vmas.insert(file_map_end, map_end, prot);
            }
            self.back()?;
            let tail = file_end & (PAGE_SIZE - 1);
            if h.memsz > h.filesz && h.filesz > 0 && tail != 0 {
                // The bss starts inside the last file page: the rest of
                // that page (the file's next bytes) reads as zero. A
                // private copy of the page, written while writable.
                let page = file_end - tail;
                self.proc_mut()
                    .mm
                    .vmas
                    .protect(page, file_map_end, prot | PROT_WRITE)?;
                self.back()?;
                self.populate(page, file_map_end, true)?;
                // SAFETY: [file_end, file_map_end) is the rest of a page of
                // this image's mapping, made writable and backed just above.
                unsafe {
                    core::ptr::write_bytes(
                        file_end as *mut u8,
                        0,
                        (file_map_end - file_end) as usize,
                    )
                };
                self.proc_mut().mm.vmas.protect(page, file_map_end, prot)?;
                self.back()?;
            }
        }
        Ok((image, bias, hi + bias))
    }

    /// Loads the program (and its ELF interpreter, if any) and builds its
    /// stack; returns (entry, stack pointer).
    pub fn load_program(
        &mut self,
        path: &[u8],
        args: &[Vec<u8>],
        env: &[Vec<u8>],
    ) -> Result<(u64, u64)> {
        // The stack at the top of the address space, as on Linux, claimed
        // before the interpreter takes the highest free addresses.
        let stack_size =
            self.spec.rlimits[RLIMIT_STACK].0.clamp(256 << 10, 8 << 20) & !(PAGE_SIZE - 1);
        let stack_base = space::USER_TOP - stack_size;
        if !self
            .proc_mut()
            .mm
            .regions
            .reserve(stack_base, space::USER_TOP)
        {
            return Err(Errno::ENOMEM);
        }
        let (image, bias, end) = self.load_elf(path, false)?;
        let mut entry = image.entry + bias;
        let mut interp_base = 0;
        if let Some((offset, len)) = image.interp() {
            let file = self.open_for_exec(path)?;
            let mut name = vec![0u8; len.min(4096) as usize];
            let read = self.read_exact(&file, &mut name, offset);
            file.release(&mut self.dev);
            read?;
            while name.last() == Some(&0) {
                name.pop();
            }
            let (interp, ibias, _) = self.load_elf(&name, true)?;
            entry = interp.entry + ibias;
            interp_base = interp.span().0 + ibias;
        }
        self.proc_mut()
            .mm
            .set_brk_start(page_up(end).ok_or(Errno::ENOMEM)?);

        let top = stack_base + stack_size;
        self.proc_mut()
            .mm
            .vmas
            .insert(stack_base, top, PROT_READ | PROT_WRITE);
        self.back()?;
        let phdr = image.phdr_vaddr().map(|v| v + bias).unwrap_or(0);
        let auxv = [
            (stack::AT_PHDR, phdr),
            (stack::AT_PHENT, 56),
            (stack::AT_PHNUM, u64::from(image.phnum)),
            (stack::AT_PAGESZ, PAGE_SIZE),
            (stack::AT_BASE, interp_base),
            (stack::AT_FLAGS, 0),
            (stack::AT_ENTRY, image.entry + bias),
            (stack::AT_UID, u64::from(self.proc_mut().creds.uid)),
            (stack::AT_EUID, u64::from(self.proc_mut().creds.euid)),
            (stack::AT_GID, u64::from(self.proc_mut().creds.gid)),
            (stack::AT_EGID, u64::from(self.proc_mut().creds.egid)),
            (stack::AT_SECURE, 0),
            (stack::AT_HWCAP, hwcap()),
            (stack::AT_CLKTCK, 100),
            (stack::AT_HWCAP2, 0),
        ];
        let mut random = [0u8; 16];
        self.dev.rng.fill(&mut random);
        // The top 128 KiB are plenty for arguments and environment.
        let window = stack_size.min(128 << 10);
        self.populate(top - window, top, true)?;
        // SAFETY: the window lies inside the stack region reserved above.
        let mem =
            unsafe { core::slice::from_raw_parts_mut((top - window) as *mut u8, window as usize) };
        let (sp, args_span) = stack::build(mem, top, args, env, path, &auxv, random)?;
        self.proc_mut().mm.args = args_span;
        self.proc_mut().mm.stack = (stack_base, top);
        Ok((entry, sp))
    }
}

fn hwcap() -> u64 {
    u64::from(core::arch::x86_64::__cpuid(1).edx)
}

/// Where the fault path builds the context it resumes (one vCPU, and the
/// fault path never nests).
struct FaultResume(UnsafeCell<(SyscallFrame, arch::FxArea)>);
// SAFETY: one vCPU, no interrupts; only `fault` touches it.
unsafe impl Sync for FaultResume {}
static FAULT_RESUME: FaultResume = FaultResume(UnsafeCell::new((
    SyscallFrame {
        rax: 0,
        rdi: 0,
        rsi: 0,
        rdx: 0,
        r10: 0,
        r8: 0,
        r9: 0,
        rbx: 0,
        rbp: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
        rip: 0,
        rflags: 0,
        rsp: 0,
        rcx: 0,
        r11: 0,
    },
    arch::FxArea([0; arch::FX_SIZE]),
)));

fn signal_for(frame: &ExceptionFrame) -> u32 {
    match frame.vector {
        0 | 16 | 19 => 8, // SIGFPE
        1 | 3 => 5,       // SIGTRAP
        6 => 4,           // SIGILL
        17 => 7,          // SIGBUS
        _ => 11,          // SIGSEGV
    }
}

/// Entry from `capsa_fault_user`: an exception in the application (or in
/// the kernel, which is fatal).
pub fn fault(regs: &FaultInfo, fx: &arch::FxArea) -> ! {
    let frame = arch::exception_frame();
    let kernel_end = kernel_end();
    if (capsa_abi::KERNEL_BASE..kernel_end).contains(&frame.rip) {
        fatal(format_args!(
            "exception {} (error {:#x}) in the kernel at rip {:#x}, cr2 {:#x}, rsp {:#x}",
            frame.vector, frame.error, frame.rip, frame.cr2, frame.rsp
        ));
    }
    let mut signal = signal_for(&frame);
    // SAFETY: the kernel state exists once the application runs.
    let Some(k) = (unsafe { (*KERNEL.0.get()).as_mut() }) else {
        exit_signal(signal)
    };
    k.meter.enter_kernel(k.clock.cpu_ticks());
    // SAFETY: see `FaultResume`.
    let (rf, rfx) = unsafe { &mut *FAULT_RESUME.0.get() };
    *rf = SyscallFrame {
        rax: regs.rax,
        rdi: regs.rdi,
        rsi: regs.rsi,
        rdx: regs.rdx,
        r10: regs.r10,
        r8: regs.r8,
        r9: regs.r9,
        rbx: regs.rbx,
        rbp: regs.rbp,
        r12: regs.r12,
        r13: regs.r13,
        r14: regs.r14,
        r15: regs.r15,
        rip: frame.rip,
        rflags: frame.rflags,
        rsp: frame.rsp,
        rcx: regs.rcx,
        r11: regs.r11,
    };
    *rfx = *fx;
    if frame.vector == capsa_abi::control::TICK_VECTOR {
        // The VMM's timer caught the application computing: the end of a
        // kernel entry (time slice, timers, signals) runs as after a call.
        k.end_entry(rf, rfx);
        k.meter.leave_kernel(k.clock.cpu_ticks());
        arch::return_user(rf, rfx)
    }
    // A page the mappings allow but that has no frame yet (or is shared
    // copy-on-write): back it and run the instruction again.
    const PF_WRITE: u64 = 2;
    let write = frame.error & PF_WRITE != 0;
    if frame.vector == 14
        && k.frames.is_user(frame.cr2)
        && k.proc().mm.vmas.allows(frame.cr2, frame.cr2 + 1, write)
    {
        match k.page_fault(frame.cr2, write) {
            Ok(()) => {
                k.meter.leave_kernel(k.clock.cpu_ticks());
                arch::return_user(rf, rfx)
            }
            Err(Errno::ENOMEM) => {
                // The OOM killer chose this process: the next task runs.
                k.finish_fault(rf, rfx);
                k.meter.leave_kernel(k.clock.cpu_ticks());
                arch::return_user(rf, rfx)
            }
            // A file mapping's page past the end of its file.
            Err(Errno::EIO) => signal = 7,
            Err(_) => {}
        }
    }
    if k.debug_enabled() {
        let mut m = MsgBuf::new();
        let _ = write!(
            m,
            "capsa guest: pid {}: exception {} (error {:#x}) at rip {:#x}, cr2 {:#x}, rsp {:#x}, rax {:#x}: signal {}",
            k.cur, frame.vector, frame.error, frame.rip, frame.cr2, frame.rsp, regs.rax, signal
        );
        arch::debug(m.as_bytes());
    }
    // A handler for the signal, not blocked: it runs on the faulting
    // context, with the fault's address in its siginfo.
    // SEGV_ACCERR when a mapping covers the address (its protection said
    // no), SEGV_MAPERR when none does.
    let mapped = frame.vector == 14 && k.proc_mut().mm.vmas.get(frame.cr2).is_some();
    let code = match (signal, mapped) {
        (11, false) => 1, // SEGV_MAPERR
        (11, true) => 2,  // SEGV_ACCERR
        (7, true) => 2,   // BUS_ADRERR
        (8, _) => 1,      // FPE_INTDIV
        (4, _) => 1,      // ILL_ILLOPC
        _ => 1,
    };
    let addr = if frame.vector == 14 {
        frame.cr2
    } else {
        frame.rip
    };
    if k.deliver_fault_signal(signal, code, addr, rf, rfx) {
        k.meter.leave_kernel(k.clock.cpu_ticks());
        arch::return_user(rf, rfx)
    }
    // No handler: the process dies with the signal (no core: the spec's
    // RLIMIT_CORE is 0 as in a container), and the next one runs.
    let cur = k.cur;
    k.terminate(
        cur,
        crate::task::process::ExitStatus::Signaled {
            signal,
            core: false,
        },
    );
    k.finish_fault(rf, rfx);
    k.meter.leave_kernel(k.clock.cpu_ticks());
    arch::return_user(rf, rfx)
}

#[cfg(not(test))]
fn kernel_end() -> u64 {
    extern "C" {
        static __kernel_end: u8;
    }
    core::ptr::addr_of!(__kernel_end) as u64
}

#[cfg(test)]
fn kernel_end() -> u64 {
    capsa_abi::KERNEL_BASE
}
