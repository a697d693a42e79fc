//! Differential tests of Python: the host's `python3` (Debian's, dynamically
//! linked, with its standard library, OpenSSL and SQLite) runs `-c` scripts
//! that use os, subprocess, threading, json, hashlib, sqlite3 and more. Each
//! must give the same stdout, stderr and exit status under
//! `--isolation=container` and `--isolation=microvm`, and the expected ones.
//!
//! The bundle is a busybox rootfs with the host's `/usr` bound read-only (a
//! directory bind: a second virtio-fs device in the microVM), `/lib64` and
//! `/lib` linking into it as on Debian, and a tmpfs on `/tmp`.

use std::path::Path;

use capsa_tests::*;

const PYTHON: &str = "/usr/bin/python3";

/// The bundle, or None (with a note) when the host has no python3.
fn fixture() -> Option<TestBundle> {
    if !Path::new(PYTHON).exists() {
        eprintln!("skipped: {PYTHON} is not installed");
        return None;
    }
    let mut bundle = TestBundle::busybox(&["true"]);
    bundle.bind_host_usr();
    bundle.edit(|c| {
        let mounts = c["mounts"].as_array_mut().expect("mounts");
        mounts.push(serde_json::json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=64m"]
        }));
        c["process"]["env"] = serde_json::json!([
            "PATH=/usr/bin:/bin",
            "LC_ALL=C",
            "HOME=/root",
            "PYTHONDONTWRITEBYTECODE=1"
        ]);
    });
    Some(bundle)
}

/// `python3 -c script` in both modes: identical results, and the expected ones.
fn check(bundle: &mut TestBundle, script: &str, code: i32, stdout: &str, stderr: &str) {
    bundle.edit(|c| c["process"]["args"] = serde_json::json!([PYTHON, "-c", script]));
    assert_both_modes(bundle, script, code, stdout, stderr);
}

#[test]
fn interpreter_and_exit_statuses() {
    let Some(mut b) = fixture() else { return };
    check(&mut b, "print(1)", 0, "1\n", "");
    check(&mut b, "import sys; sys.exit(3)", 3, "", "");
    check(
        &mut b,
        "import sys; print('out'); print('err', file=sys.stderr); sys.exit('bye')",
        1,
        "out\n",
        "err\nbye\n",
    );
    // pid 1 of a container ignores signals it has no handler for, even
    // SIGKILL, when they come from inside; a child dies of them.
    check(
        &mut b,
        "import os, signal, subprocess\n\
         os.kill(os.getpid(), signal.SIGKILL); os.kill(os.getpid(), signal.SIGTERM)\n\
         p = subprocess.Popen(['sleep', '30']); p.kill(); print('init alive, child', p.wait())",
        0,
        "init alive, child -9\n",
        "",
    );
    check(
        &mut b,
        "import sys; print(sys.argv, sys.executable, sys.version_info >= (3, 9))",
        0,
        "['-c'] /usr/bin/python3 True\n",
        "",
    );
}

#[test]
fn os_module() {
    let Some(mut b) = fixture() else { return };
    check(
        &mut b,
        "import os; print(os.getpid(), os.getppid(), os.getcwd(), os.getuid(), os.environ['HOME'])",
        0,
        "1 0 / 0 /root\n",
        "",
    );
    check(
        &mut b,
        "import os\n\
         os.makedirs('/tmp/a/b/c'); open('/tmp/a/b/f', 'w').write('x' * 5000)\n\
         os.symlink('b/f', '/tmp/a/l'); os.rename('/tmp/a/b/c', '/tmp/a/c')\n\
         print([(p, sorted(d), sorted(f)) for p, d, f in sorted(os.walk('/tmp/a'))])\n\
         print(os.path.getsize('/tmp/a/l'), os.readlink('/tmp/a/l'), os.path.islink('/tmp/a/l'))\n\
         os.unlink('/tmp/a/l'); os.chmod('/tmp/a/b/f', 0o600)\n\
         print(oct(os.stat('/tmp/a/b/f').st_mode), sorted(os.listdir('/tmp/a')))",
        0,
        "[('/tmp/a', ['b', 'c'], ['l']), ('/tmp/a/b', [], ['f']), ('/tmp/a/c', [], [])]\n\
         5000 b/f True\n0o100600 ['b', 'c']\n",
        "",
    );
    check(
        &mut b,
        "import os\n\
         print(os.getpriority(os.PRIO_PROCESS, 0)); os.setpriority(os.PRIO_PROCESS, 0, 5)\n\
         pid = os.fork()\n\
         if pid == 0: os._exit(os.nice(0))\n\
         print(os.nice(0), os.WEXITSTATUS(os.waitpid(pid, 0)[1]), os.nice(2))\n\
         import ctypes; libc = ctypes.CDLL(None); os.sched_setaffinity(0, {0})\n\
         try: os.sched_setaffinity(0, {63})\n\
         except OSError as e: print('affinity refused', e.errno)\n\
         print(libc.personality(0x0040000), libc.personality(0xffffffff))",
        0,
        "0\n5 5 7\naffinity refused 22\n0 262144\n",
        "",
    );
    check(
        &mut b,
        "import os\n\
         r, w = os.pipe(); pid = os.fork()\n\
         if pid == 0:\n    os.close(r); os.write(w, b'from child'); os._exit(7)\n\
         os.close(w); data = os.read(r, 100); _, st = os.waitpid(pid, 0)\n\
         print(data, os.WEXITSTATUS(st))",
        0,
        "b'from child' 7\n",
        "",
    );
    check(
        &mut b,
        "import os\n\
         print(os.readlink('/proc/self/exe'), open('/proc/self/cmdline', 'rb').read().split(b'\\0')[:2])\n\
         print(sorted(os.listdir('/proc/self/fd')), open('/proc/self/comm').read().strip())\n\
         print([l.split(':')[0] for l in open('/proc/meminfo')][:2], 'model name' in open('/proc/cpuinfo').read())\n\
         st = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n\
         print(st['Name'], st['Pid'], st['PPid'], st['Uid'].split()[0])",
        0,
        "/usr/bin/python3.11 [b'/usr/bin/python3', b'-c']\n\
         ['0', '1', '2', '3'] python3\n['MemTotal', 'MemFree'] True\npython3 1 0 0\n",
        "",
    );
}

#[test]
fn subprocess_module() {
    let Some(mut b) = fixture() else { return };
    // The child says it is up once its shell runs: its /proc entry is then
    // the shell's.
    check(
        &mut b,
        "import os, subprocess\n\
         p = subprocess.Popen(['sh', '-c', 'echo up; read x'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n\
         print(p.stdout.readline(), sorted(int(d) for d in os.listdir('/proc') if d.isdigit()))\n\
         print(open(f'/proc/{p.pid}/cmdline', 'rb').read(), open(f'/proc/{p.pid}/comm').read().strip(), os.readlink(f'/proc/{p.pid}/exe'))\n\
         print([l for l in open(f'/proc/{p.pid}/status').read().splitlines() if l.startswith(('Name', 'PPid'))])\n\
         p.kill(); print(p.wait())",
        0,
        "b'up\\n' [1, 2]\nb'sh\\x00-c\\x00echo up; read x\\x00' sh /usr/bin/dash\n['Name:\\tsh', 'PPid:\\t1']\n-9\n",
        "",
    );
    check(
        &mut b,
        "import subprocess\n\
         print(subprocess.run(['echo', 'hi'], capture_output=True).stdout)\n\
         print(subprocess.check_output('echo abc | tr a-c x-z && exit 0', shell=True))\n\
         print(subprocess.run('exit 7', shell=True).returncode)",
        0,
        "b'hi\\n'\nb'xyz\\n'\n7\n",
        "",
    );
    check(
        &mut b,
        "import subprocess\n\
         p = subprocess.Popen(['cat'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n\
         out, _ = p.communicate(b'x' * 300000, timeout=30)\n\
         print(len(out), p.returncode)\n\
         try:\n    subprocess.run(['false'], check=True)\n\
         except subprocess.CalledProcessError as e:\n    print('failed with', e.returncode)\n\
         print(subprocess.run(['sh', '-c', 'echo $X; pwd'], env={'X': 'set'}, cwd='/tmp', capture_output=True, text=True).stdout)",
        0,
        "300000 0\nfailed with 1\nset\n/tmp\n\n",
        "",
    );
    check(
        &mut b,
        "import subprocess, sys\n\
         r = subprocess.run([sys.executable, '-c', 'import sys; print(input()[::-1]); sys.exit(4)'], input='olleh', capture_output=True, text=True)\n\
         print(r.stdout.strip(), r.returncode)",
        0,
        "hello 4\n",
        "",
    );
}

#[test]
fn threading_module() {
    let Some(mut b) = fixture() else { return };
    check(
        &mut b,
        "import threading\n\
         total = 0; lock = threading.Lock()\n\
         def work(n):\n    global total\n    for _ in range(n):\n        with lock: total += 1\n\
         ts = [threading.Thread(target=work, args=(2000,)) for _ in range(8)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n\
         print(total, threading.active_count())",
        0,
        "16000 1\n",
        "",
    );
    check(
        &mut b,
        "import threading, queue\n\
         from concurrent.futures import ThreadPoolExecutor\n\
         with ThreadPoolExecutor(4) as ex: print(list(ex.map(lambda x: x * x, range(8))))\n\
         q = queue.Queue(); c = threading.Condition(); done = []\n\
         def producer():\n    [q.put(i) for i in range(100)]\n    with c: done.append(1); c.notify()\n\
         threading.Thread(target=producer).start()\n\
         with c: c.wait_for(lambda: done, timeout=30)\n\
         print(sum(q.get() for _ in range(100)), threading.Event().wait(0.01))",
        0,
        "[0, 1, 4, 9, 16, 25, 36, 49]\n4950 False\n",
        "",
    );
    check(
        &mut b,
        "import threading, os\n\
         from concurrent.futures import ThreadPoolExecutor\n\
         with ThreadPoolExecutor(4) as ex: list(ex.map(abs, range(4)))\n\
         pid = os.fork()\n\
         if pid == 0: os._exit(len(threading.enumerate()))\n\
         print('child saw', os.WEXITSTATUS(os.waitpid(pid, 0)[1]), 'threads')",
        0,
        "child saw 1 threads\n",
        "",
    );
}

#[test]
fn json_and_hashlib_modules() {
    let Some(mut b) = fixture() else { return };
    check(
        &mut b,
        "import json\n\
         doc = {'b': [1, 2.5, None, True], 'a': {'x': 'y\\u00e9'}}\n\
         s = json.dumps(doc, sort_keys=True); print(s)\n\
         json.dump(doc, open('/tmp/d.json', 'w'), indent=2)\n\
         print(json.load(open('/tmp/d.json')) == doc, len(open('/tmp/d.json').read().splitlines()))",
        0,
        "{\"a\": {\"x\": \"y\\u00e9\"}, \"b\": [1, 2.5, null, true]}\nTrue 11\n",
        "",
    );
    check(
        &mut b,
        "import hashlib\n\
         print(hashlib.sha256(b'abc').hexdigest())\n\
         print(hashlib.md5(b'abc').hexdigest(), hashlib.sha1(b'abc').hexdigest())\n\
         print(hashlib.blake2b(b'abc', digest_size=8).hexdigest())\n\
         print(hashlib.pbkdf2_hmac('sha256', b'pw', b'salt', 1000).hex()[:16])\n\
         h = hashlib.sha512()\n\
         for i in range(1000): h.update(str(i).encode())\n\
         print(h.hexdigest()[:32])",
        0,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n\
         900150983cd24fb0d6963f7d28e17f72 a9993e364706816aba3e25717850c26c9cd0d89d\n\
         d8bb14d833d59559\n\
         0a38253555ce37f5\n\
         b8ee3a44a1f37c52ca35e3871349b759\n",
        "",
    );
}

#[test]
fn sqlite3_module() {
    let Some(mut b) = fixture() else { return };
    check(
        &mut b,
        "import sqlite3\n\
         c = sqlite3.connect(':memory:')\n\
         c.execute('create table t(a integer, b text)')\n\
         c.executemany('insert into t values(?, ?)', [(i, str(i)) for i in range(1000)])\n\
         c.execute('create index tb on t(b)')\n\
         print(c.execute('select count(*), sum(a), max(b) from t where a % 3 = 0').fetchone())",
        0,
        "(334, 166833, '999')\n",
        "",
    );
    check(
        &mut b,
        "import sqlite3, os\n\
         c = sqlite3.connect('/tmp/db.sqlite')\n\
         c.execute('create table kv(k text primary key, v)')\n\
         with c: c.executemany('insert into kv values(?, ?)', [('a', 1), ('b', 2)])\n\
         try:\n    with c: c.execute('insert into kv values(?, ?)', ('c', 3)); c.execute('insert into kv values(?, ?)', ('a', 9))\n\
         except sqlite3.IntegrityError as e: print('rolled back:', e)\n\
         c.close(); c = sqlite3.connect('/tmp/db.sqlite')\n\
         print(c.execute('select * from kv order by k').fetchall(), os.path.exists('/tmp/db.sqlite-journal'))",
        0,
        "rolled back: UNIQUE constraint failed: kv.k\n[('a', 1), ('b', 2)] False\n",
        "",
    );
}

/// asyncio: its event loop (epoll, a socketpair self-pipe), timers, tasks
/// and a subprocess fed through a socket, whose exit a watcher thread
/// collects; plus a socket pair used directly.
#[test]
fn asyncio_and_socket_pairs() {
    let Some(mut b) = fixture() else { return };
    check(
        &mut b,
        "import asyncio\n\
         async def double(i):\n    await asyncio.sleep(0.01 * i); return 2 * i\n\
         async def main():\n\
         \x20   p = await asyncio.create_subprocess_exec('cat', stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)\n\
         \x20   out, _ = await p.communicate(b'through a socket')\n\
         \x20   print(await asyncio.gather(*(double(i) for i in range(5))), out, p.returncode)\n\
         \x20   try: await asyncio.wait_for(asyncio.sleep(10), 0.02)\n\
         \x20   except asyncio.TimeoutError: print('timed out')\n\
         asyncio.run(main())",
        0,
        "[0, 2, 4, 6, 8] b'through a socket' 0\ntimed out\n",
        "",
    );
    check(
        &mut b,
        "import socket\n\
         a, b = socket.socketpair(); a.sendall(b'ping' * 1000)\n\
         print(b.recv(4, socket.MSG_PEEK), len(b.recv(8192)))\n\
         a.shutdown(socket.SHUT_WR); print(b.recv(10), a.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM)\n\
         b.setblocking(False)\n\
         try: a.recv(1, socket.MSG_DONTWAIT)\n\
         except BlockingIOError: print('would block')",
        0,
        "b'ping' 4000\nb'' True\nwould block\n",
        "",
    );
}

/// Advisory locks between processes: a POSIX lock held by the parent makes
/// the child's non-blocking attempt fail and its blocking one wait for the
/// unlock; flock locks belong to open files and end with them.
#[test]
fn file_locks_between_processes() {
    let Some(mut b) = fixture() else { return };
    check(
        &mut b,
        "import fcntl, os\n\
         f = open('/tmp/l', 'w'); fcntl.lockf(f, fcntl.LOCK_EX)\n\
         r, w = os.pipe(); pid = os.fork()\n\
         if pid == 0:\n\
         \x20   g = open('/tmp/l', 'w')\n\
         \x20   try: fcntl.lockf(g, fcntl.LOCK_EX | fcntl.LOCK_NB)\n\
         \x20   except OSError as e: os.write(w, b'refused %d' % e.errno)\n\
         \x20   fcntl.lockf(g, fcntl.LOCK_EX); print('child got the lock', flush=True); os._exit(0)\n\
         print(os.read(r, 100), flush=True); fcntl.lockf(f, fcntl.LOCK_UN); os.waitpid(pid, 0)\n\
         a = open('/tmp/l'); b = open('/tmp/l'); fcntl.flock(a, fcntl.LOCK_EX)\n\
         try: fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)\n\
         except OSError as e: print('flock refused', e.errno)\n\
         a.close(); fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB); print('flock after close ok')",
        0,
        "b'refused 11'\nchild got the lock\nflock refused 11\nflock after close ok\n",
        "",
    );
}

#[test]
fn time_signals_and_io_multiplexing() {
    let Some(mut b) = fixture() else { return };
    check(
        &mut b,
        "import time, signal\n\
         got = []\n\
         signal.signal(signal.SIGALRM, lambda s, f: got.append(s))\n\
         signal.setitimer(signal.ITIMER_REAL, 0.02)\n\
         t = time.monotonic(); time.sleep(0.1); slept = time.monotonic() - t\n\
         print(got, 0.1 <= slept < 5, signal.alarm(0))\n\
         signal.signal(signal.SIGUSR1, lambda s, f: got.append(s)); signal.raise_signal(signal.SIGUSR1)\n\
         print(got, abs(time.time() - time.clock_gettime(time.CLOCK_REALTIME)) < 1)",
        0,
        "[14] True 0\n[14, 10] True\n",
        "",
    );
    check(
        &mut b,
        "import selectors, os, select\n\
         r, w = os.pipe(); e = os.eventfd(0)\n\
         s = selectors.DefaultSelector(); print(type(s).__name__)\n\
         s.register(r, selectors.EVENT_READ, 'pipe'); s.register(e, selectors.EVENT_READ, 'eventfd')\n\
         print(s.select(timeout=0.01))\n\
         os.write(w, b'x'); os.eventfd_write(e, 5)\n\
         print(sorted(k.data for k, _ in s.select(timeout=5)), os.eventfd_read(e))\n\
         print(select.select([r], [w], [], 1)[0:2] == ([r], [w]))",
        0,
        "EpollSelector\n[]\n['eventfd', 'pipe'] 5\nTrue\n",
        "",
    );
    check(
        &mut b,
        "import tempfile, shutil, os, gzip, zlib, base64, mmap\n\
         with tempfile.TemporaryDirectory() as d:\n\
         \x20   os.makedirs(d + '/a/b'); open(d + '/a/b/f', 'w').write('hi')\n\
         \x20   shutil.copytree(d + '/a', d + '/c')\n\
         \x20   with gzip.open(d + '/x.gz', 'wb') as g: g.write(b'data' * 1000)\n\
         \x20   print(sorted(os.listdir(d)), open(d + '/c/b/f').read(), len(gzip.open(d + '/x.gz').read()))\n\
         print(os.path.exists(d), base64.b64encode(zlib.compress(b'aaaa')))\n\
         m = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE); m[:3] = b'abc'\n\
         m.madvise(mmap.MADV_DONTNEED); print(m[:3])",
        0,
        "['a', 'c', 'x.gz'] hi 4000\nFalse b'eJxLTExMBAADzgGF'\nb'\\x00\\x00\\x00'\n",
        "",
    );
}

/// multiprocessing with the fork start method: shared values live in a
/// `MAP_SHARED` file mapping and locks are POSIX semaphores (`sem_open`)
/// in shared memory, so workers in other processes see each other's
/// increments and block on each other's locks; a Pool maps over worker
/// processes; a file written through `mmap` reaches the file.
#[test]
fn multiprocessing_shares_memory_and_locks() {
    let Some(mut b) = fixture() else { return };
    check(
        &mut b,
        "import multiprocessing as mp\n\
         mp.set_start_method('fork')\n\
         def work(v, lock):\n\
         \x20   for _ in range(200):\n\
         \x20       with lock: v.value += 1\n\
         v = mp.Value('i', 0); lock = mp.Lock()\n\
         ps = [mp.Process(target=work, args=(v, lock)) for _ in range(3)]\n\
         [p.start() for p in ps]; [p.join() for p in ps]\n\
         print(v.value, [p.exitcode for p in ps])\n\
         arr = mp.Array('d', 4)\n\
         def fill(i): arr[i] = i * 1.5\n\
         qs = [mp.Process(target=fill, args=(i,)) for i in range(4)]\n\
         [q.start() for q in qs]; [q.join() for q in qs]\n\
         print(list(arr))\n\
         with mp.Pool(2) as pool: print(pool.map(abs, [-1, -2, 3]))\n\
         q = mp.Queue(); p = mp.Process(target=q.put, args=('via queue',)); p.start(); print(q.get()); p.join()",
        0,
        "600 [0, 0, 0]\n[0.0, 1.5, 3.0, 4.5]\n[1, 2, 3]\nvia queue\n",
        "",
    );
    check(
        &mut b,
        "import mmap, os\n\
         fd = os.open('/tmp/m', os.O_RDWR | os.O_CREAT); os.ftruncate(fd, 4096)\n\
         m = mmap.mmap(fd, 4096); m[:5] = b'hello'; m.flush(); print(os.pread(fd, 5, 0))\n\
         if os.fork() == 0:\n\
         \x20   m[:5] = b'child'; os._exit(0)\n\
         os.wait(); print(m[:5]); m.close(); os.close(fd); print(open('/tmp/m', 'rb').read(5))",
        0,
        "b'hello'\nb'child'\nb'child'\n",
        "",
    );
}
