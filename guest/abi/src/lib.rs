//! The contract between the capsa VMM (`vmm/`) and its guest kernel (`guest/`).
//!
//! Defined once here so the two sides cannot drift apart; [`BOOT_INFO_VERSION`]
//! changes whenever a layout in this crate changes.
//!
//! # Entry state
//! The VMM enters the guest ELF's entry point directly in 64-bit long mode at
//! CPL0 (no firmware, no bootloader) with:
//! - guest RAM at guest-physical `[0, BootInfo::ram_size)`;
//! - page tables identity-mapping guest-physical `[0, IDENTITY_MAP_SIZE)` with
//!   2 MiB pages, writable and user-accessible (the VM, not the guest ring, is
//!   the security boundary);
//! - CR0 = PE|MP|ET|NE|WP|AM|PG, CR4 = PAE|OSFXSR|OSXMMEXCPT, EFER = SCE|LME|LMA;
//! - `rdi` = guest-physical address of the [`BootInfo`], `rsp` = [`BOOT_STACK_TOP`],
//!   interrupts disabled, no IDT loaded.
//!
//! The guest installs its own GDT, TSS, IDT and syscall MSRs.
//!
//! # Devices
//! virtio-mmio (version 2) devices listed in [`BootInfo::devices`], plus the
//! capsa control registers at [`CONTROL_MMIO_BASE`]. There is no interrupt
//! controller: the VMM completes every request during the MMIO exit of the
//! queue notification, and the guest blocks with [`control::IDLE_NS`].
#![cfg_attr(not(test), no_std)]

pub mod exec;
pub mod process;

/// Version of every layout in this crate.
pub const BOOT_INFO_VERSION: u32 = 3;
/// `BootInfo::magic`: "capsaBI1" little-endian.
pub const BOOT_INFO_MAGIC: u64 = u64::from_le_bytes(*b"capsaBI1");

/// Guest-physical address where the VMM writes the [`BootInfo`].
pub const BOOT_INFO_ADDR: u64 = 0x1000;
/// Guest-physical region the VMM uses for its own boot data (GDT, page
/// tables, boot info, process spec, boot stack); the guest may reuse it after
/// it has copied what it needs.
pub const BOOT_DATA_START: u64 = 0x1000;
pub const BOOT_DATA_END: u64 = 0x20_0000;
/// A little-endian u64 in the boot data region (in the GDT's page, after
/// the TSS) where the VMM sets bit `n - 1` when the host sends it signal
/// `n` for the guest; the guest swaps it to zero and delivers the signals to
/// its first process. Both sides use atomic operations on it.
pub const HOST_SIGNALS_ADDR: u64 = 0x1E_0800;
/// Initial stack pointer (grows down inside the boot data region).
pub const BOOT_STACK_TOP: u64 = 0x20_0000;
/// The guest kernel ELF is linked at this address.
pub const KERNEL_BASE: u64 = 0x20_0000;
/// Size of the identity map the VMM builds (covers RAM and the MMIO window).
pub const IDENTITY_MAP_SIZE: u64 = 4 << 30;
/// Highest guest RAM size the layout supports (RAM must end below the MMIO window).
pub const MAX_RAM_SIZE: u64 = MMIO_WINDOW_START;

/// Start of the MMIO window; nothing above it is RAM.
pub const MMIO_WINDOW_START: u64 = 0xC000_0000;
/// The capsa control registers (see [`control`]).
pub const CONTROL_MMIO_BASE: u64 = MMIO_WINDOW_START;
pub const CONTROL_MMIO_SIZE: u64 = 0x1000;
/// First virtio-mmio device; device `i` is at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_WINDOW_START + 0x1000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const MAX_DEVICES: usize = 16;

/// Virtio device ids (virtio spec 1.2, section 5).
pub const VIRTIO_ID_NET: u32 = 1;
pub const VIRTIO_ID_CONSOLE: u32 = 3;
pub const VIRTIO_ID_FS: u32 = 26;

/// What a device is for, beyond its virtio type.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRole {
    /// Console whose receive queue is the process's stdin and transmit queue its stdout.
    Stdio = 1,
    /// Console whose transmit queue is the process's stderr (receive queue unused).
    Stderr = 2,
    /// virtio-fs device serving the container's root filesystem.
    RootFs = 3,
    /// virtio-fs device serving one bind mount; its destination is in the process spec.
    Mount = 4,
    /// virtio-net device bridged to the container's network interface,
    /// configured as [`BootInfo::net`] says.
    Net = 5,
}

impl DeviceRole {
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Stdio),
            2 => Some(Self::Stderr),
            3 => Some(Self::RootFs),
            4 => Some(Self::Mount),
            5 => Some(Self::Net),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Virtio device id ([`VIRTIO_ID_CONSOLE`], [`VIRTIO_ID_FS`]).
    pub virtio_id: u32,
    /// A [`DeviceRole`] value.
    pub role: u32,
    pub mmio_base: u64,
    pub mmio_size: u64,
}

/// Set in [`BootInfo::flags`]: print every unknown syscall number to the debug log.
pub const FLAG_DEBUG_SYSCALLS: u32 = 1;
/// Set in [`BootInfo::flags`]: the root filesystem is mounted read-only.
pub const FLAG_ROOTFS_READONLY: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    pub magic: u64,
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Guest RAM is guest-physical `[0, ram_size)`.
    pub ram_size: u64,
    /// First page-aligned byte of RAM above the kernel image; everything from
    /// here to `ram_size` is free for the guest.
    pub free_start: u64,
    /// Guest-physical address and length of the encoded process spec
    /// (see [`process`]), inside the boot data region.
    pub process_spec_addr: u64,
    pub process_spec_len: u64,
    /// Host TSC frequency in kHz (0 if unknown; then use the control clock registers).
    pub tsc_khz: u64,
    pub device_count: u32,
    pub _reserved: u32,
    pub devices: [DeviceInfo; MAX_DEVICES],
    /// The network interface behind the [`DeviceRole::Net`] device (all
    /// zero without one).
    pub net: NetConfig,
}

/// How the guest configures its network interface: the addresses, routes
/// and link settings of the container network namespace's interface that
/// the VMM bridged the device to, so the guest takes that interface's
/// place (same MAC, same addresses) and the namespace's peers, port
/// publishing and policies see no difference.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface's name in the namespace (NUL-padded), which the guest
    /// reports as its own (`eth0`).
    pub name: [u8; 16],
    pub mac: [u8; 6],
    /// The link MTU (0: 1500).
    pub mtu: u16,
    /// The IPv4 address and prefix length (prefix 0: no IPv4 address).
    pub ipv4: [u8; 4],
    pub ipv4_prefix: u8,
    pub _pad4: [u8; 3],
    /// The IPv4 default gateway (all zero: none).
    pub ipv4_gateway: [u8; 4],
    /// The global IPv6 address and prefix length (prefix 0: none).
    pub ipv6: [u8; 16],
    pub ipv6_prefix: u8,
    pub _pad6: [u8; 11],
    /// The IPv6 default gateway (all zero: none).
    pub ipv6_gateway: [u8; 16],
}

impl NetConfig {
    /// The interface name, up to its first NUL.
    pub fn name(&self) -> &[u8] {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        &self.name[..end]
    }

    pub fn mtu(&self) -> u16 {
        if self.mtu == 0 {
            1500
        } else {
            self.mtu
        }
    }
}

impl BootInfo {
    pub fn new(ram_size: u64, free_start: u64) -> Self {
        Self {
            magic: BOOT_INFO_MAGIC,
            version: BOOT_INFO_VERSION,
            flags: 0,
            ram_size,
            free_start,
            process_spec_addr: 0,
            process_spec_len: 0,
            tsc_khz: 0,
            device_count: 0,
            _reserved: 0,
            devices: [DeviceInfo::default(); MAX_DEVICES],
            net: NetConfig::default(),
        }
    }

    /// The listed devices (never more than [`MAX_DEVICES`], whatever `device_count` says).
    pub fn devices(&self) -> &[DeviceInfo] {
        let count = (self.device_count as usize).min(MAX_DEVICES);
        &self.devices[..count]
    }

    pub fn is_valid(&self) -> bool {
        self.magic == BOOT_INFO_MAGIC && self.version == BOOT_INFO_VERSION
    }
}

/// Registers of the capsa control device at [`CONTROL_MMIO_BASE`]. All are
/// 64-bit, accessed with a single aligned 8-byte (or 4-byte for writes of
/// small values) load or store.
pub mod control {
    /// Read: [`MAGIC_VALUE`].
    pub const MAGIC: u64 = 0x00;
    pub const MAGIC_VALUE: u64 = u64::from_le_bytes(*b"capsaCTL");
    /// Write: the process exited with this code (low 8 bits used); the VM stops.
    pub const EXIT_CODE: u64 = 0x08;
    /// Write: the process was killed by this signal number; the VM stops and
    /// the VMM exits with 128 + signal.
    pub const EXIT_SIGNAL: u64 = 0x10;
    /// Read: host `CLOCK_REALTIME` in nanoseconds.
    pub const REALTIME_NS: u64 = 0x18;
    /// Read: host `CLOCK_MONOTONIC` in nanoseconds.
    pub const MONOTONIC_NS: u64 = 0x20;
    /// Write: block the vCPU for up to this many nanoseconds, or until a
    /// device has input for the guest (stdin readable), whichever comes
    /// first. `u64::MAX` waits without a timeout.
    pub const IDLE_NS: u64 = 0x28;
    /// Write: guest-physical address of a debug message.
    pub const DEBUG_ADDR: u64 = 0x30;
    /// Write: length of the debug message at `DEBUG_ADDR`; the VMM logs it.
    pub const DEBUG_LEN: u64 = 0x38;
    /// Write: the guest kernel hit an unrecoverable error; the message is the
    /// last one written through `DEBUG_*`. The VMM stops and fails the run.
    pub const PANIC: u64 = 0x40;
    /// Read: 1 if the process's stdin has data or end-of-file pending.
    pub const STDIN_READY: u64 = 0x48;
    /// Write: guest-physical address of an array of records of
    /// [`MMIO_WRITE_SIZE`] bytes each.
    pub const MMIO_BATCH_ADDR: u64 = 0x50;
    /// Write: the number of records at `MMIO_BATCH_ADDR` (at most
    /// [`MAX_MMIO_BATCH`]); the VMM performs them in order, as if the guest
    /// had stored each value to its address, before this store returns.
    /// Only virtio device windows are reachable this way. Setting up a
    /// device register by register costs dozens of exits, each 20-40 µs
    /// under PVM; a batch costs one.
    pub const MMIO_BATCH_LEN: u64 = 0x58;
    /// Most records one batch may hold.
    pub const MAX_MMIO_BATCH: u64 = 256;
    /// One 32-bit register store of a batch: `addr` (guest-physical, in a
    /// virtio-mmio window), `value`, then 4 bytes of padding.
    pub const MMIO_WRITE_SIZE: u64 = 16;
    /// Write: guest-physical address of an array of free-page records of
    /// [`FREE_RANGE_SIZE`] bytes each.
    pub const FREE_PAGES_ADDR: u64 = 0x60;
    /// Write: the number of records at `FREE_PAGES_ADDR` (at most
    /// [`MAX_FREE_RANGES`]). Each names guest RAM the guest no longer uses
    /// (start and length, both 4 KiB aligned); the VMM gives the host
    /// memory behind it back, so the guest reads it as zero from then on.
    /// This is free page reporting: a guest that burst and went idle
    /// shrinks back on the host.
    pub const FREE_PAGES_LEN: u64 = 0x68;
    /// Most records one report may hold.
    pub const MAX_FREE_RANGES: u64 = 256;
    /// One free range: guest-physical start, then length, 8 bytes each.
    pub const FREE_RANGE_SIZE: u64 = 16;
    /// Write: the guest-physical start (aligned to it) of [`POPULATE_SIZE`]
    /// bytes of RAM the guest is about to use for the first time. The VMM
    /// backs them on the host at once (`MADV_POPULATE_WRITE`): one exit in
    /// place of a host page fault on each page's first touch.
    pub const POPULATE_ADDR: u64 = 0x70;
    /// The size of one populate request (256 KiB).
    pub const POPULATE_SIZE: u64 = 256 << 10;
    /// Write: guest-physical address of the guest's tick entry, five
    /// little-endian u64s: the `rip` and `rsp` the interrupted context's
    /// handler starts with, where the VMM writes the interrupted context's
    /// frame (seven u64s: [`TICK_VECTOR`], 0, rip, cs, rflags, rsp, ss, as
    /// the CPU's exception frame), and the `[start, end)` of the kernel's
    /// code, which is never interrupted. From then on, every
    /// [`TICK_PERIOD_NS`] of the vCPU running guest code, the VMM
    /// interrupts it if it is in the application at CPL3: it writes the
    /// frame and resumes the vCPU at the entry (the guest has no interrupt
    /// controller, and its code runs with interrupts off).
    pub const TICK_ENTRY_ADDR: u64 = 0x78;
    /// The vector a tick's frame names (the first one after the exceptions).
    pub const TICK_VECTOR: u64 = 32;
    /// The tick period while the guest runs (none while it idles).
    pub const TICK_PERIOD_NS: u64 = 10_000_000;
    /// Write: guest-physical address of a terminal request on the
    /// process's own stdio, three little-endian u64s: the stream (0 stdin,
    /// 1 stdout, 2 stderr) and the request (one of
    /// [`crate::exec::TERMINAL_REQUESTS`]) as one u64 (`stream | request
    /// << 32`), the guest-physical address of its argument, and the result
    /// the VMM stores (0 or a negated errno: `-ENOTTY` when the stream is
    /// no terminal). The runtime makes stdio a pty when the spec asks for
    /// a terminal.
    pub const TERMINAL_REQUEST: u64 = 0x80;
}
