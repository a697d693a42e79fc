#!/usr/bin/env python3
"""Writes the seed corpora of capsa's fuzz targets into corpus/<target>/.

Run from anywhere: `python3 fuzz/seeds.py`. The seeds follow each target's
input format (see the doc comment at the top of fuzz_targets/<target>.rs);
they give the fuzzer a valid starting point: a live queue, a served FUSE
request, a config.json that passes validation, a loadable ELF.
corpus/config_json/default.json is `capsa spec`'s output and regression
seeds (regress-*) are crash inputs kept after their fix; neither is written
here.
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- FUSE requests ------------------------------------------------------

LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKDIR, UNLINK, RENAME, OPEN, READ, WRITE, STATFS, RELEASE = 9, 10, 12, 14, 15, 16, 17, 18
INIT, OPENDIR, READDIR, RELEASEDIR, CREATE, READDIRPLUS, LSEEK = 26, 27, 28, 29, 35, 44, 46
O_RDONLY, O_RDWR = 0, 2


class Fuse:
    def __init__(self):
        self.unique = 1

    def req(self, opcode, nodeid, body=b""):
        """One FUSE request: the 40-byte in-header, then the body."""
        self.unique += 1
        return struct.pack("<IIQQIIII", 40 + len(body), opcode, self.unique,
                           nodeid, 0, 0, 0, 0) + body


def name(s):
    return s.encode() + b"\0"


def read_in(fh, offset, size):
    return struct.pack("<QQIIQII", fh, offset, size, 0, 0, 0, 0)


def init_body(flags=0):
    return struct.pack("<IIII", 7, 31, 0, flags)


# --- virtio -------------------------------------------------------------

NEXT, WRITE_F, INDIRECT = 1, 2, 4


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


class Image:
    """Guest RAM contents from address 0."""

    def __init__(self):
        self.b = bytearray()

    def put(self, at, data):
        if len(self.b) < at + len(data):
            self.b.extend(b"\0" * (at + len(data) - len(self.b)))
        self.b[at:at + len(data)] = data

    def avail(self, at, heads):
        self.put(at, struct.pack("<HH", 0, len(heads)))
        for i, h in enumerate(heads):
            self.put(at + 4 + 2 * i, struct.pack("<H", h))


def fuse_request_seeds():
    def record(request, reply_len=4096, split=0):
        return struct.pack("<HHB", len(request), reply_len, split) + request

    f = Fuse()
    read_path = b"".join([
        record(f.req(LOOKUP, 1, name("file"))),
        record(f.req(GETATTR, 2, struct.pack("<IIQ", 0, 0, 0))),
        record(f.req(OPEN, 2, struct.pack("<II", O_RDONLY, 0))),
        record(f.req(READ, 2, read_in(1, 0, 4096)), 8192, 0b0101),
        record(f.req(LSEEK, 2, struct.pack("<QQII", 1, 10, 0, 0))),
        record(f.req(RELEASE, 2, struct.pack("<QIIQ", 1, 0, 0, 0))),
        record(f.req(LOOKUP, 1, name("up"))),
        record(f.req(READLINK, 3)),
        record(f.req(OPEN, 3, struct.pack("<II", O_RDONLY, 0))),
        record(f.req(OPENDIR, 1, struct.pack("<II", 0, 0))),
        record(f.req(READDIRPLUS, 1, read_in(2, 0, 4096))),
        record(f.req(READDIR, 1, read_in(2, 0, 4096)), 4096, 0b1111),
        record(f.req(RELEASEDIR, 1, struct.pack("<QIIQ", 2, 0, 0, 0))),
        record(f.req(STATFS, 1)),
        record(f.req(FORGET, 2, struct.pack("<Q", 1))),
    ])
    write("fuse_request", "read", b"\0" + read_path)
    write("fuse_request", "read-readonly-hiprio", b"\x05" + read_path)

    f = Fuse()
    setattr_size = struct.pack("<IIQQQQQQIIIIIIII", 1 << 3, 0, 0, 3,
                               0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    modify = b"".join([
        record(f.req(CREATE, 1, struct.pack("<IIII", O_RDWR | 0o100, 0o644, 0o22, 0)
                     + name("new"))),
        record(f.req(WRITE, 2, struct.pack("<QQIIQII", 1, 0, 6, 0, 0, 0, 0)
                     + b"hello\n"), 4096, 0b0010),
        record(f.req(SETATTR, 2, setattr_size)),
        record(f.req(MKDIR, 1, struct.pack("<II", 0o755, 0o22) + name("sub"))),
        record(f.req(RENAME, 1, struct.pack("<Q", 1) + name("new") + name("renamed"))),
        record(f.req(SYMLINK, 1, name("link") + name("../outside/secret"))),
        record(f.req(UNLINK, 1, name("file"))),
        record(f.req(LOOKUP, 1, name("abs"))),
        record(f.req(OPEN, 5, struct.pack("<II", O_RDWR, 0))),
    ])
    write("fuse_request", "modify", b"\0" + modify)
    write("fuse_request", "modify-readonly", b"\x01" + modify)

    f = Fuse()
    own_init = record(f.req(INIT, 0, init_body(0x0400_0000 | 0x2000 | 0x1))) \
        + record(f.req(LOOKUP, 1, name("dir")))
    write("fuse_request", "own-init", b"\x02" + own_init)


def virtqueue_chain_seeds():
    # Rings at 0x0 (table), 0x100 (avail), 0x200 (used), buffers from 0x300.
    def header(which, notifications=0, stdin=b""):
        return struct.pack("<BBHHHBB", which, 4, 0x0, 0x100, 0x200,
                           notifications, len(stdin)) + stdin

    img = Image()
    img.put(0x00, desc(0x300, 6, NEXT, 1) + desc(0x310, 6))
    img.avail(0x100, [0])
    img.put(0x300, b"hello ")
    img.put(0x310, b"world\n")
    write("virtqueue_chain", "console-tx", header(0b10) + bytes(img.b))

    img = Image()
    img.put(0x00, desc(0x300, 4, WRITE_F | NEXT, 1) + desc(0x310, 64, WRITE_F))
    img.put(0x20, desc(0x400, 64, WRITE_F))
    img.avail(0x100, [0, 2])
    write("virtqueue_chain", "console-rx",
          header(0b00, 1, b"typed input\n") + bytes(img.b))

    # An indirect table at 0x380 holding the two-descriptor chain.
    img = Image()
    img.put(0x00, desc(0x380, 32, INDIRECT))
    img.put(0x380, desc(0x300, 6, NEXT, 1) + desc(0x310, 6))
    img.avail(0x100, [0])
    img.put(0x300, b"hello ")
    img.put(0x310, b"world\n")
    write("virtqueue_chain", "console-tx-indirect", header(0b10) + bytes(img.b))

    f = Fuse()
    init = f.req(INIT, 0, init_body())
    lookup = f.req(LOOKUP, 1, name("file"))
    img = Image()
    img.put(0x00, desc(0x300, len(init), NEXT, 1) + desc(0x400, 256, WRITE_F))
    img.put(0x20, desc(0x500, len(lookup), NEXT, 3) + desc(0x600, 256, WRITE_F))
    img.avail(0x100, [0, 2])
    img.put(0x300, init)
    img.put(0x500, lookup)
    write("virtqueue_chain", "fs-init-lookup", header(0b11) + bytes(img.b))


def virtio_mmio_seeds():
    # Targets: 0 control, 1 stdio console, 2 stderr console, 3 virtio-fs.
    def rd(target, offset, width=4):
        return struct.pack("<BH", 0 | ({1: 0, 2: 1, 4: 2, 8: 3}[width] << 2)
                           | (target << 4), offset)

    def wr(target, offset, value, width=4):
        return struct.pack("<BHQ", 1 | ({1: 0, 2: 1, 4: 2, 8: 3}[width] << 2)
                           | (target << 4), offset, value)

    def poke(addr, data):
        data = data + b"\0" * (-len(data) % 4)
        return b"".join(struct.pack("<BHI", 2, addr + i,
                                    struct.unpack("<I", data[i:i + 4])[0])
                        for i in range(0, len(data), 4))

    idle = struct.pack("<BH", 3, 0)

    def activate(t, queue, desc_at, avail_at, used_at):
        ops = [rd(t, 0x000), rd(t, 0x008), rd(t, 0x010)]
        ops += [wr(t, 0x070, s) for s in (0, 1, 3)]
        ops += [wr(t, 0x024, 1), wr(t, 0x020, 1), wr(t, 0x024, 0), wr(t, 0x020, 0),
                wr(t, 0x070, 0xb), rd(t, 0x070)]
        ops += [wr(t, 0x030, queue), rd(t, 0x034), wr(t, 0x038, 16),
                wr(t, 0x080, desc_at), wr(t, 0x084, 0), wr(t, 0x090, avail_at),
                wr(t, 0x094, 0), wr(t, 0x0a0, used_at), wr(t, 0x0a4, 0),
                wr(t, 0x044, 1), wr(t, 0x070, 0xf)]
        return b"".join(ops)

    # stderr console: transmit "hello" on queue 1.
    img = Image()
    img.put(0x1000, desc(0x4000, 5))
    img.avail(0x2000, [0])
    img.put(0x4000, b"hello")
    ops = activate(2, 1, 0x1000, 0x2000, 0x3000) + poke(0x1000, bytes(img.b[0x1000:0x1010])) \
        + poke(0x2000, bytes(img.b[0x2000:0x2008])) + poke(0x4000, b"hello") \
        + wr(2, 0x050, 1) + rd(2, 0x060) + wr(2, 0x064, 1)
    # control: magic, stdin ready, a debug line, idle, clocks.
    ops += rd(0, 0x00, 8) + rd(0, 0x48, 8) + wr(0, 0x30, 0x4000, 8) + wr(0, 0x38, 5, 8) \
        + wr(0, 0x28, 0, 8) + rd(0, 0x20, 8) + rd(0, 0x100, 2)
    # stdio console: a receive buffer on queue 0, then idle polls deliver stdin.
    img = Image()
    img.put(0x5000, desc(0x6000, 64, WRITE_F))
    img.avail(0x5100, [0])
    ops += activate(1, 0, 0x5000, 0x5100, 0x5200) + poke(0x5000, bytes(img.b[0x5000:0x5010])) \
        + poke(0x5100, bytes(img.b[0x5100:0x5108])) + wr(1, 0x050, 0) + idle
    stdin = b"hi\n"
    write("virtio_mmio", "consoles-and-control", bytes([len(stdin)]) + stdin + ops)

    # virtio-fs: INIT on the request queue, and its config space (the tag).
    f = Fuse()
    init = f.req(INIT, 0, init_body())
    img = Image()
    img.put(0x1000, desc(0x4000, len(init), NEXT, 1) + desc(0x5000, 256, WRITE_F))
    img.avail(0x2000, [0])
    ops = activate(3, 1, 0x1000, 0x2000, 0x3000) + poke(0x1000, bytes(img.b[0x1000:0x1020])) \
        + poke(0x2000, bytes(img.b[0x2000:0x2008])) + poke(0x4000, init) \
        + wr(3, 0x050, 1) + rd(3, 0x100) + rd(3, 0x124) + rd(3, 0x0fc) \
        + wr(3, 0x030, 0) + wr(3, 0x0c0, 1) + wr(3, 0x070, 0)
    write("virtio_mmio", "fs-init", b"\0" + ops)


def guest_elf_seeds():
    def elf(kind, entry, phdrs):
        eh = bytearray(64)
        eh[0:4] = b"\x7fELF"
        eh[4], eh[5], eh[6] = 2, 1, 1
        struct.pack_into("<HHIQQQIHHHHHH", eh, 16, kind, 62, 1, entry, 64, 0, 0,
                         64, 56, len(phdrs), 64, 0, 0)
        return bytes(eh) + b"".join(
            struct.pack("<IIQQQQQQ", *p) for p in phdrs)

    PT_LOAD, PT_INTERP, PT_PHDR = 1, 3, 6
    R, W, X = 4, 2, 1
    static = elf(2, 0x401000, [
        (PT_LOAD, R, 0, 0x400000, 0x400000, 0xb0, 0xb0, 0x1000),
        (PT_LOAD, R | X, 0x1000, 0x401000, 0x401000, 0x10, 0x10, 0x1000),
        (PT_LOAD, R | W, 0x2000, 0x402000, 0x402000, 0x8, 0x2000, 0x1000),
    ])
    write("guest_elf", "static", static)
    interp = b"/lib64/ld-linux-x86-64.so.2\0"
    n = 4
    at = 64 + 56 * n
    pie = elf(3, 0x1000, [
        (PT_PHDR, R, 64, 64, 64, 56 * n, 56 * n, 8),
        (PT_INTERP, R, at, at, at, len(interp), len(interp), 1),
        (PT_LOAD, R, 0, 0, 0, at + len(interp), at + len(interp), 0x1000),
        (PT_LOAD, R | X, 0x1000, 0x1000, 0x1000, 0x10, 0x10, 0x200000),
    ]) + interp
    write("guest_elf", "pie-with-interp", pie)


def config_json_seeds():
    spec = {
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "fuzz",
        "domainname": "example.org",
        "annotations": {"dev.capsa.isolation": "microvm"},
        "process": {
            "terminal": False,
            "user": {"uid": 1000, "gid": 1000, "umask": 0o27,
                     "additionalGids": [5, 100]},
            "args": ["/bin/sh", "-c", "echo hi"],
            "env": ["PATH=/usr/bin:/bin", "TERM=xterm"],
            "cwd": "/tmp",
            "noNewPrivileges": True,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512},
                        {"type": "RLIMIT_STACK", "hard": 8388608, "soft": 8388608}],
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "rootfs/etc",
             "options": ["rbind", "ro"]},
            {"destination": "/escape/up", "type": "none", "source": ".",
             "options": ["bind", "rw"]},
            {"destination": "/abs/x", "source": "/dev/null", "options": ["bind"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in
                           ("pid", "network", "ipc", "uts", "mount")],
            "resources": {"memory": {"limit": 134217728},
                          "pids": {"limit": 64},
                          "devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "rootfsPropagation": "rprivate",
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    {"names": ["mount", "umount2"], "action": "SCMP_ACT_ERRNO",
                     "errnoRet": 1},
                    {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                     "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_NE"}]},
                ],
            },
        },
    }
    write("config_json", "microvm.json", json.dumps(spec, separators=(",", ":")))


# --- exec channel ---------------------------------------------------------

def exec_channel_seeds():
    """A client's start (with its three descriptors) and a signal, then
    the guest's calls on the session: fetch the event, report it started,
    write, read, poll, exit, close."""
    def record(tag, data):
        r = struct.pack("<II", tag, len(data)) + data
        return r + b"\0" * (-len(r) % 8)
    spec = (record(1, b"sh") + record(1, b"-c") + record(1, b"echo hi")
            + record(3, b"/tmp"))
    start = b"capsaEXS" + spec
    signal = b"capsaSIG" + struct.pack("<I", 15)

    def call(op, session, stream, addr, length):
        return struct.pack("<IIIIQQq", op, session, stream, 0, addr, length, 0)
    calls = [call(1, 0, 0, 0x3000, 4096), call(5, 1, 0, 0, 2),
             call(3, 1, 1, 0x2000, 5), call(2, 1, 0, 0x2000, 64),
             call(8, 1, 0, 0, 0), call(7, 1, 0, 0, 0x300), call(4, 1, 0, 0, 0)]
    data = (bytes([2]) + bytes([1]) + struct.pack("<H", len(start)) + start
            + bytes([0]) + struct.pack("<H", len(signal)) + signal
            + bytes([len(calls)]) + b"".join(calls) + b"hello")
    write("exec_channel", "start-and-calls", data)


fuse_request_seeds()
virtqueue_chain_seeds()
virtio_mmio_seeds()
guest_elf_seeds()
config_json_seeds()
exec_channel_seeds()
