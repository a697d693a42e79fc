//! Processes the host starts in the running guest (`capsa exec`, through
//! `drivers::exec`): the events the VMM queues, a new process for each
//! start request, its program loaded when it first runs, and its end
//! reported back.

use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::Cell;

use capsa_abi::exec as abi;

use crate::arch::{self, FxArea, SyscallFrame};
use crate::drivers::exec as device;
use crate::errno::Errno;
use crate::fs::fd::{Fd, File, O_RDONLY, O_WRONLY};
use crate::fs::files::ExecStream;
use crate::kernel::spec::ProcessSpec;
use crate::kernel::Kernel;
use crate::mm::space::Space;
use crate::mm::Mm;
use crate::task::process::{Context, ExitStatus, Pid};
use crate::task::{Launch, Process};

const SIGKILL: u32 = 9;

impl Kernel {
    /// Acts on what the VMM set in the host-events word: wakes readers of
    /// exec streams that have input, and takes the queued events. Called
    /// where host signals are taken.
    pub fn take_host_events(&mut self) {
        let bits = device::take_events();
        if bits != 0 && self.debug_enabled() {
            arch::debug(format!("capsa guest: host events {bits:#x}").as_bytes());
        }
        if bits & abi::STREAM_READY != 0 {
            crate::fs::pipe::bump();
        }
        if bits & abi::EVENTS_PENDING == 0 {
            return;
        }
        let mut buf = Vec::new();
        while let Some((kind, session, payload)) = device::next_event(&mut buf) {
            match kind {
                abi::event::START => {
                    let (spec, _) = ProcessSpec::decode(payload);
                    self.start_exec(session, spec);
                }
                abi::event::SIGNAL => {
                    let sig = payload
                        .first_chunk::<4>()
                        .map_or(0, |b| u32::from_le_bytes(*b));
                    if let (Some(pid), 1..=64) = (self.exec_process(session), sig) {
                        self.send(pid, sig);
                    }
                }
                abi::event::HANGUP => {
                    if let Some(pid) = self.exec_process(session) {
                        self.send(pid, SIGKILL);
                    }
                }
                _ => {}
            }
        }
        crate::fs::pipe::bump();
    }

    fn exec_process(&self, session: u32) -> Option<Pid> {
        self.processes
            .iter()
            .find(|(_, p)| p.exec_session == Some(session))
            .map(|(&pid, _)| pid)
    }

    /// A new process for `spec`, outside every session and with no parent
    /// in the guest; its program is found and loaded when it first runs,
    /// in its own address space (`launch`).
    fn start_exec(&mut self, session: u32, spec: ProcessSpec) {
        let space = match Space::new(&self.frames) {
            Ok(space) => space,
            Err(_) => return device::failed(session, b"cannot allocate memory"),
        };
        let pid = match self.procs.spawn_detached() {
            Ok(pid) => pid,
            Err(_) => {
                space.release(&self.frames);
                return device::failed(session, b"the pids limit is reached");
            }
        };
        let creds = spec.creds();
        let mut process = Process {
            mm: Mm::new(self.frames.user_lo, self.frames.user_hi),
            space: Some(space),
            cwd: spec.cwd.clone(),
            umask: spec.umask,
            creds,
            exec_session: Some(session),
            ..Process::default()
        };
        let limit = self.nofile_limit().max(3);
        for (stream, flags) in [(0, O_RDONLY), (1, O_WRONLY), (2, O_WRONLY)] {
            let file: Rc<dyn File> = Rc::new(ExecStream {
                session,
                stream,
                flags: Cell::new(flags),
            });
            let _ = process.fds.insert(
                Fd {
                    file,
                    cloexec: false,
                },
                limit,
            );
        }
        self.processes.insert(pid, process);
        if let Some(t) = self.procs.get_mut(pid) {
            t.ctx = Some(Box::new(Context {
                frame: SyscallFrame::default(),
                fx: FxArea::initial(),
            }));
            t.thread.launch = Some(Box::new(Launch {
                args: spec.args,
                env: spec.env,
            }));
        }
    }

    /// The running task was started by the host and has not run yet:
    /// finds and loads its program (as the first process's is, along its
    /// own PATH) and points `frame` at its entry, or reports why it cannot
    /// and ends it.
    pub fn launch(&mut self, launch: Launch, frame: &mut SyscallFrame, fx: &mut FxArea) {
        let session = self.proc().exec_session.unwrap_or(0);
        let arg0 = launch.args.first().cloned().unwrap_or_default();
        let path_var = crate::kernel::env_var(&launch.env, b"PATH")
            .unwrap_or(crate::kernel::DEFAULT_PATH)
            .to_vec();
        let loaded = match self.find_program(&arg0, &path_var) {
            None => Err(b"executable file not found in $PATH".as_slice()),
            Some(program) => match self.load_program(&program, &launch.args, &launch.env) {
                Ok(entry) => Ok((program, entry)),
                Err(Errno::ENOEXEC) => Err(b"exec format error".as_slice()),
                Err(Errno::EACCES) => Err(b"permission denied".as_slice()),
                Err(Errno::ENOMEM | Errno::E2BIG) => Err(b"cannot allocate memory".as_slice()),
                Err(_) => Err(b"input/output error".as_slice()),
            },
        };
        let pid = self.cur;
        let (program, (entry, sp)) = match loaded {
            Ok(v) => v,
            Err(why) => {
                let arg0 = core::str::from_utf8(&arg0).unwrap_or("?");
                let message = format!(
                    "process.args: {arg0:?}: {}",
                    core::str::from_utf8(why).unwrap_or("")
                );
                device::failed(session, message.as_bytes());
                self.proc_mut().exec_session = None;
                return self.terminate(pid, ExitStatus::Exited(127));
            }
        };
        self.set_program_names(program);
        *frame = SyscallFrame {
            rip: entry,
            rsp: sp,
            rflags: 0x2,
            ..SyscallFrame::default()
        };
        *fx = FxArea::initial();
        arch::set_fs_base(0);
        device::started(session, pid);
    }

    /// A process the host started ended: its client hears the status.
    pub fn report_exec_exit(&mut self, process: &Process, status: ExitStatus) {
        if let Some(session) = process.exec_session {
            device::exited(session, status.wstatus());
        }
    }
}
