//! Creating the VM and putting the guest at its entry point: guest RAM, the
//! kernel ELF, boot data (page tables, GDT, boot info, process spec), the
//! vCPU's registers and the device map, all as `capsa_abi` specifies.

use std::io::Cursor;
use std::os::fd::RawFd;
use std::rc::Rc;

use capsa_abi::process::{Encoder, Record};
use capsa_abi::{BootInfo, DeviceInfo, DeviceRole};
use kvm_bindings::{kvm_segment, kvm_sregs, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, GuestMemoryRegion};

use crate::bus::Bus;
use crate::devices::control::Control;
use crate::devices::exec::Exec;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::Net;
use crate::devices::Stdin;
use crate::memory::{self, GuestMemory};
use crate::{vcpu, GuestExit, ProcessSpec, SharedDir, VmConfig};

/// Where the boot data goes inside `[BOOT_DATA_START, BOOT_DATA_END)`.
pub mod layout {
    /// The encoded process spec follows the boot info.
    pub const PROCESS_SPEC_ADDR: u64 = capsa_abi::BOOT_INFO_ADDR + 0x400;
    /// GDT (three descriptors) and the TSS the entry state's TR points at.
    pub const GDT_ADDR: u64 = 0x1E_0000;
    pub const TSS_ADDR: u64 = GDT_ADDR + 0x100;
    /// PML4, one PDPT and four page directories of 2 MiB pages.
    pub const PML4_ADDR: u64 = 0x1E_1000;
    pub const PDPT_ADDR: u64 = 0x1E_2000;
    pub const PD_ADDR: u64 = 0x1E_3000;
    pub const PD_COUNT: u64 = capsa_abi::IDENTITY_MAP_SIZE >> 30;
    /// Room for the process spec ends at the GDT.
    pub const PROCESS_SPEC_MAX: usize = (GDT_ADDR - PROCESS_SPEC_ADDR) as usize;
    /// Bottom of the region the boot stack may use.
    pub const STACK_BOTTOM: u64 = PD_ADDR + PD_COUNT * 0x1000;
}

pub const KERNEL_CODE_SELECTOR: u16 = 0x08;
pub const KERNEL_DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;
const GDT: [u64; 3] = [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_AM: u64 = 1 << 18;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Present, writable, user-accessible.
const PTE_TABLE: u64 = 0x7;
/// Present, writable, user-accessible, 2 MiB page.
const PTE_LARGE: u64 = 0x87;

/// Why the VM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the guest's timer tick")]
    Tick(#[from] crate::tick::Error),
    /// Only one vCPU is supported.
    #[error("{0} vCPUs requested; only 1 is supported")]
    VcpuCount(u8),
    #[error("cannot set up guest RAM")]
    Memory(#[from] memory::Error),
    /// A KVM ioctl failed.
    #[error("KVM call {call} failed")]
    Kvm {
        call: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest kernel is not a loadable ELF for this layout.
    #[error("cannot load the guest kernel ELF")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// A kernel segment lies outside `[KERNEL_BASE, ram_size)`.
    #[error("guest kernel segment {start:#x}..{end:#x} is outside [{min:#x}, {max:#x})")]
    KernelPlacement {
        start: u64,
        end: u64,
        min: u64,
        max: u64,
    },
    /// The process spec does not fit in the boot data region.
    #[error("the process spec (args, env, mounts) exceeds {max} bytes")]
    ProcessSpecTooLarge { max: usize },
    /// More shared directories than device slots.
    #[error("{count} mounts requested; at most {max} are supported")]
    TooManyMounts { count: usize, max: usize },
    /// A shared directory could not be opened for serving.
    #[error("cannot serve directory {path}")]
    SharedDir {
        path: String,
        #[source]
        source: crate::devices::virtio::fs::Error,
    },
    /// The TAP descriptor could not be duplicated for the device.
    #[error("cannot take the network interface's TAP device")]
    NetDevice(#[source] std::io::Error),
    /// The exec socket could not be taken for the exec device.
    #[error("cannot serve the exec socket")]
    ExecSocket(#[source] std::io::Error),
    /// Writing boot data into guest RAM failed.
    #[error("cannot write boot data at {addr:#x}")]
    BootData {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("the MMIO device map is inconsistent")]
    Bus(#[from] crate::bus::OverlapError),
}

fn kvm_err(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { call, source }
}

/// Page-table entries of the 4 GiB identity map: `(guest address, value)`.
pub fn page_table_entries() -> Vec<(u64, u64)> {
    let mut entries = vec![(layout::PML4_ADDR, layout::PDPT_ADDR | PTE_TABLE)];
    for i in 0..layout::PD_COUNT {
        let pd = layout::PD_ADDR + i * 0x1000;
        entries.push((layout::PDPT_ADDR + i * 8, pd | PTE_TABLE));
        for j in 0..512 {
            entries.push((pd + j * 8, ((i * 512 + j) << 21) | PTE_LARGE));
        }
    }
    entries
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Sets the special registers of the abi entry state: 64-bit code segment,
/// flat data segments, a TSS, paging on with the identity map, long mode.
pub fn set_long_mode(sregs: &mut kvm_sregs) {
    sregs.cs = segment(KERNEL_CODE_SELECTOR, 11, true);
    let data = segment(KERNEL_DATA_SELECTOR, 3, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: layout::TSS_ADDR,
        limit: 0x67,
        selector: TSS_SELECTOR,
        type_: 11,
        present: 1,
        s: 0,
        g: 0,
        db: 0,
        l: 0,
        ..data
    };
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
    sregs.cr3 = layout::PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_SCE | EFER_LME | EFER_LMA;
}

/// Encodes the process spec and the mount records (`(device index, dir)`).
pub fn encode_process_spec(
    process: &ProcessSpec,
    mounts: &[(u32, &SharedDir)],
) -> Result<Vec<u8>, Error> {
    let mut records = Vec::new();
    records.extend(process.args.iter().map(|a| Record::Arg(a.as_bytes())));
    records.extend(process.env.iter().map(|e| Record::Env(e.as_bytes())));
    records.push(Record::Cwd(process.cwd.as_bytes()));
    records.push(Record::Hostname(process.hostname.as_bytes()));
    records.push(Record::Domainname(process.domainname.as_bytes()));
    records.push(Record::Uid(process.uid));
    records.push(Record::Gid(process.gid));
    records.extend(
        process
            .additional_gids
            .iter()
            .map(|&g| Record::AdditionalGid(g)),
    );
    records.extend(process.umask.map(Record::Umask));
    records.extend(process.rlimits.iter().map(|r| Record::Rlimit {
        resource: r.resource,
        soft: r.soft,
        hard: r.hard,
    }));
    if process.no_new_privileges {
        records.push(Record::NoNewPrivileges);
    }
    records.extend(process.pids_limit.map(Record::PidsLimit));
    records.extend(process.capabilities.map(Record::Capabilities));
    records.extend(process.oom_score_adj.map(Record::OomScoreAdj));
    records.extend(mounts.iter().map(|&(device, dir)| Record::Mount {
        device,
        readonly: dir.readonly,
        destination: dir.destination.as_bytes(),
    }));

    let needed: usize = records
        .iter()
        .map(|r| {
            let data = match r {
                Record::Arg(s)
                | Record::Env(s)
                | Record::Cwd(s)
                | Record::Hostname(s)
                | Record::Domainname(s) => s.len(),
                Record::Mount { destination, .. } => 8 + destination.len(),
                Record::Capabilities(_) => 40,
                _ => 24,
            };
            (8 + data).next_multiple_of(8)
        })
        .sum();
    let max = layout::PROCESS_SPEC_MAX;
    if needed > max {
        return Err(Error::ProcessSpecTooLarge { max });
    }
    let mut buf = vec![0u8; needed];
    let mut encoder = Encoder::new(&mut buf);
    for record in &records {
        encoder
            .push(record)
            .map_err(|_| Error::ProcessSpecTooLarge { max })?;
    }
    let len = encoder.len();
    buf.truncate(len);
    Ok(buf)
}

/// Bytes of a [`BootInfo`] as the guest reads them.
pub fn boot_info_bytes(info: &BootInfo) -> Vec<u8> {
    const _: () = assert!(
        std::mem::size_of::<BootInfo>()
            == 64 + 24 * capsa_abi::MAX_DEVICES + std::mem::size_of::<capsa_abi::NetConfig>()
    );
    const _: () = assert!(std::mem::size_of::<capsa_abi::NetConfig>() == 80);
    // SAFETY: BootInfo is repr(C) with only integer fields laid out without
    // padding (checked by the size assertion above), so all its bytes are
    // initialized; the slice lives no longer than the borrow of `info`.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (info as *const BootInfo).cast::<u8>(),
            std::mem::size_of::<BootInfo>(),
        )
    };
    bytes.to_vec()
}

/// End of the highest `PT_LOAD` segment (memory size, so .bss counts), and
/// checks every segment lies in `[KERNEL_BASE, ram_size)`.
pub fn kernel_extent(elf: &[u8], ram_size: u64) -> Result<u64, Error> {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let bad = || {
        Error::LoadKernel(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::ReadProgramHeader,
        ))
    };
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(bad)?);
    let mut end = capsa_abi::KERNEL_BASE;
    for i in 0..phnum {
        let ph = phoff.checked_add(i * phentsize).ok_or_else(bad)?;
        if u32_at(ph).ok_or_else(bad)? != 1 {
            continue; // not PT_LOAD
        }
        let start = u64_at(ph + 0x18).ok_or_else(bad)?;
        let memsz = u64_at(ph + 0x28).ok_or_else(bad)?;
        let seg_end = start.checked_add(memsz).ok_or_else(bad)?;
        if start < capsa_abi::KERNEL_BASE || seg_end > ram_size {
            return Err(Error::KernelPlacement {
                start,
                end: seg_end,
                min: capsa_abi::KERNEL_BASE,
                max: ram_size,
            });
        }
        end = end.max(seg_end);
    }
    Ok(end.next_multiple_of(0x1000))
}

/// A created VM, ready to run.
pub struct Vm {
    // The VM and KVM handles stay open for as long as the vCPU runs.
    _kvm: Kvm,
    _vm: VmFd,
    vcpu: VcpuFd,
    bus: Bus,
    ticker: crate::tick::Ticker,
    _mem: GuestMemory,
}

const STDIN: RawFd = 0;
const STDOUT: RawFd = 1;
const STDERR: RawFd = 2;

impl Vm {
    pub fn new(config: &VmConfig) -> Result<Self, Error> {
        if config.vcpus != 1 {
            return Err(Error::VcpuCount(config.vcpus));
        }
        let mem = memory::create(config.ram_size, config.hugepages)?;
        let ram_size = mem.last_addr().0 + 1;

        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|source| Error::BootData { addr: 0, source })?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region describes a mapping owned by `mem`, which
            // the returned Vm keeps alive for as long as the VM exists.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }

        // The kernel.
        let free_start = kernel_extent(&config.kernel, ram_size)?;
        let loaded = Elf::load(
            &mem,
            None,
            &mut Cursor::new(&config.kernel[..]),
            Some(GuestAddress(capsa_abi::KERNEL_BASE)),
        )
        .map_err(Error::LoadKernel)?;
        let entry = loaded.kernel_load.0;
        let free_start = free_start.max(loaded.kernel_end.next_multiple_of(0x1000));

        // Devices and the process spec that names them.
        let stdin = Rc::new(Stdin::new(STDIN));
        let mut bus = Bus::new();
        bus.insert(
            capsa_abi::CONTROL_MMIO_BASE,
            capsa_abi::CONTROL_MMIO_SIZE,
            Box::new(Control::new(mem.clone(), stdin.clone())),
        )?;
        if let Some(listener) = &config.exec_socket {
            let listener = listener.try_clone().map_err(Error::ExecSocket)?;
            bus.insert(
                capsa_abi::exec::EXEC_MMIO_BASE,
                capsa_abi::exec::EXEC_MMIO_SIZE,
                Box::new(Exec::new(mem.clone(), listener).map_err(Error::ExecSocket)?),
            )?;
        }
        let max_mounts = capsa_abi::MAX_DEVICES - 3;
        if config.mounts.len() > max_mounts {
            return Err(Error::TooManyMounts {
                count: config.mounts.len(),
                max: max_mounts,
            });
        }
        let mut info = BootInfo::new(ram_size, free_start);
        let add = |bus: &mut Bus,
                   info: &mut BootInfo,
                   role: DeviceRole,
                   virtio_id: u32,
                   device: Box<dyn crate::bus::BusDevice>|
         -> Result<u32, Error> {
            let index = info.device_count;
            let mmio_base =
                capsa_abi::VIRTIO_MMIO_BASE + u64::from(index) * capsa_abi::VIRTIO_MMIO_SIZE;
            bus.insert(mmio_base, capsa_abi::VIRTIO_MMIO_SIZE, device)?;
            info.devices[index as usize] = DeviceInfo {
                virtio_id,
                role: role as u32,
                mmio_base,
                mmio_size: capsa_abi::VIRTIO_MMIO_SIZE,
            };
            info.device_count += 1;
            Ok(index)
        };
        add(
            &mut bus,
            &mut info,
            DeviceRole::Stdio,
            capsa_abi::VIRTIO_ID_CONSOLE,
            Box::new(MmioTransport::new(
                Console::new(Some(stdin), STDOUT),
                mem.clone(),
            )),
        )?;
        add(
            &mut bus,
            &mut info,
            DeviceRole::Stderr,
            capsa_abi::VIRTIO_ID_CONSOLE,
            Box::new(MmioTransport::new(Console::new(None, STDERR), mem.clone())),
        )?;
        let fs = |dir: &std::path::Path, tag: &str, readonly: bool| {
            Fs::new(dir, tag, readonly).map_err(|source| Error::SharedDir {
                path: dir.display().to_string(),
                source,
            })
        };
        add(
            &mut bus,
            &mut info,
            DeviceRole::RootFs,
            capsa_abi::VIRTIO_ID_FS,
            Box::new(MmioTransport::new(
                fs(&config.rootfs, "rootfs", config.rootfs_readonly)?,
                mem.clone(),
            )),
        )?;
        let mut mount_records = Vec::new();
        for (i, dir) in config.mounts.iter().enumerate() {
            let device = fs(&dir.source, &format!("mount{i}"), dir.readonly)?;
            let index = add(
                &mut bus,
                &mut info,
                DeviceRole::Mount,
                capsa_abi::VIRTIO_ID_FS,
                Box::new(MmioTransport::new(device, mem.clone())),
            )?;
            mount_records.push((index, dir));
        }
        if let Some(net) = &config.net {
            let tap = net.tap.try_clone().map_err(Error::NetDevice)?;
            add(
                &mut bus,
                &mut info,
                DeviceRole::Net,
                capsa_abi::VIRTIO_ID_NET,
                Box::new(MmioTransport::new(
                    Net::new(tap, net.config.mac, net.config.mtu()),
                    mem.clone(),
                )),
            )?;
            info.net = net.config;
        }

        // Boot data.
        let spec = encode_process_spec(&config.process, &mount_records)?;
        info.process_spec_addr = layout::PROCESS_SPEC_ADDR;
        info.process_spec_len = spec.len() as u64;
        if config.debug_syscalls {
            info.flags |= capsa_abi::FLAG_DEBUG_SYSCALLS;
        }
        if config.rootfs_readonly {
            info.flags |= capsa_abi::FLAG_ROOTFS_READONLY;
        }

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        info.tsc_khz = vcpu.get_tsc_khz().map_or(0, u64::from);

        write_boot_data(&mem, &info, &spec)?;

        let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        set_long_mode(&mut sregs);
        vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: entry,
            rsp: capsa_abi::BOOT_STACK_TOP,
            rdi: capsa_abi::BOOT_INFO_ADDR,
            rflags: 0x2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;

        let ticker = crate::tick::Ticker::new()?;
        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            vcpu,
            bus,
            ticker,
            _mem: mem,
        })
    }

    /// Where in this process the guest's host-signal word lives (see
    /// [`capsa_abi::HOST_SIGNALS_ADDR`]); null if RAM does not reach it.
    pub fn host_signals_word(&self) -> *const std::sync::atomic::AtomicU64 {
        self._mem
            .get_host_address(GuestAddress(capsa_abi::HOST_SIGNALS_ADDR))
            .map_or(std::ptr::null(), |p| p.cast_const().cast())
    }

    /// Runs the guest until its process ends.
    pub fn run(&mut self) -> Result<GuestExit, vcpu::Error> {
        vcpu::run_loop(&mut self.vcpu, &mut self.bus, &self._mem, &mut self.ticker)
    }
}

/// Writes the GDT, the identity map, the boot info and the process spec.
pub fn write_boot_data(mem: &GuestMemory, info: &BootInfo, spec: &[u8]) -> Result<(), Error> {
    let write = |bytes: &[u8], addr: u64| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| Error::BootData { addr, source })
    };
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    write(&gdt, layout::GDT_ADDR)?;
    for (addr, value) in page_table_entries() {
        write(&value.to_le_bytes(), addr)?;
    }
    write(&boot_info_bytes(info), capsa_abi::BOOT_INFO_ADDR)?;
    write(spec, layout::PROCESS_SPEC_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsa_abi::process::Decoder;

    #[test]
    fn layout_fits_the_boot_data_region() {
        const {
            assert!(
                capsa_abi::BOOT_INFO_ADDR + std::mem::size_of::<BootInfo>() as u64
                    <= layout::PROCESS_SPEC_ADDR
            );
            assert!(layout::STACK_BOTTOM + 0x8000 <= capsa_abi::BOOT_STACK_TOP);
            assert!(capsa_abi::BOOT_STACK_TOP <= capsa_abi::KERNEL_BASE);
        }
    }

    #[test]
    fn identity_map_covers_4_gib_with_user_pages() {
        let entries = page_table_entries();
        assert_eq!(entries.len(), 1 + 4 + 4 * 512);
        let map: std::collections::HashMap<u64, u64> = entries.into_iter().collect();
        // Walk a few addresses through the tables.
        for addr in [0u64, 0x20_1234, 0xC000_0000, 0xFFFF_FFFF] {
            let pml4e = map[&(layout::PML4_ADDR + ((addr >> 39) & 511) * 8)];
            let pdpte = map[&((pml4e & !0xfff) + ((addr >> 30) & 511) * 8)];
            let pde = map[&((pdpte & !0xfff) + ((addr >> 21) & 511) * 8)];
            assert_eq!(pde & 0x87, 0x87);
            assert_eq!((pde & !0x1f_ffff & !0xfff) | (addr & 0x1f_ffff), addr);
        }
    }

    #[test]
    fn long_mode_registers_match_the_abi() {
        let mut sregs = kvm_sregs::default();
        set_long_mode(&mut sregs);
        assert_eq!(sregs.cr0, 0x8005_0033);
        assert_eq!(sregs.cr4, 0x620);
        assert_eq!(sregs.efer, 0x501);
        assert_eq!(sregs.cr3, layout::PML4_ADDR);
        assert_eq!((sregs.cs.l, sregs.cs.db, sregs.cs.dpl), (1, 0, 0));
    }

    #[test]
    fn process_spec_round_trips() {
        let process = ProcessSpec {
            args: vec!["/bin/busybox".into(), "echo".into(), "hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            hostname: "box".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10],
            umask: Some(0o22),
            rlimits: vec![crate::Rlimit {
                resource: 7,
                soft: 1024,
                hard: 4096,
            }],
            no_new_privileges: true,
            pids_limit: Some(32),
            ..Default::default()
        };
        let dir = SharedDir {
            source: "/tmp".into(),
            destination: "/data".into(),
            readonly: true,
        };
        let spec = encode_process_spec(&process, &[(3, &dir)]).unwrap();
        let records: Vec<Record> = Decoder::new(&spec).collect::<Result<_, _>>().unwrap();
        assert_eq!(records[0], Record::Arg(b"/bin/busybox"));
        assert!(records.contains(&Record::Rlimit {
            resource: 7,
            soft: 1024,
            hard: 4096
        }));
        assert_eq!(
            records.last(),
            Some(&Record::Mount {
                device: 3,
                readonly: true,
                destination: b"/data"
            })
        );

        let huge = ProcessSpec {
            env: vec!["X".repeat(layout::PROCESS_SPEC_MAX)],
            ..Default::default()
        };
        assert!(matches!(
            encode_process_spec(&huge, &[]),
            Err(Error::ProcessSpecTooLarge { .. })
        ));
    }

    #[test]
    fn boot_info_bytes_have_the_abi_layout() {
        let mut info = BootInfo::new(64 << 20, 0x40_0000);
        info.device_count = 1;
        info.devices[0].mmio_base = 0xC000_1000;
        let bytes = boot_info_bytes(&info);
        assert_eq!(&bytes[..8], b"capsaBI1");
        assert_eq!(bytes[16..24], (64u64 << 20).to_le_bytes());
        assert_eq!(bytes[56..60], 1u32.to_le_bytes());
        assert_eq!(bytes[64 + 8..64 + 16], 0xC000_1000u64.to_le_bytes());
    }
}
