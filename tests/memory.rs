//! Differential tests of memory management: programs whose runtimes lean on
//! it (Go's and Java's garbage collectors and huge reservations, node's
//! buffers), a 64 GiB `PROT_NONE` reservation, copy-on-write across two
//! generations of fork, small programs under a 64 MiB
//! `linux.resources.memory.limit`, and the OOM killer. Each runs in both
//! `--isolation=container` and `--isolation=microvm` and must give the same
//! stdout, stderr and exit status there, and the expected ones.
//!
//! Every run is bounded (`timeout -k`), so a guest that hangs fails the test
//! with both modes' output rather than stalling the suite.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use capsa_tests::*;
use serde_json::json;

const JAVA: &str = "/usr/bin/java";
const JAVAC: &str = "/usr/bin/javac";
const NODE: &str = "/usr/bin/node";
const PYTHON: &str = "/usr/bin/python3";

/// The longest one run may take before it is killed, in seconds; the slow
/// cases (a JVM in a microVM on a loaded 2-core machine) take a few.
const RUN_LIMIT_SECS: u32 = 60;

/// Both modes' results of `bundle`, container first, each bounded.
fn both_modes(bundle: &TestBundle) -> [Output; 2] {
    bounded_both_modes(bundle, RUN_LIMIT_SECS)
}

/// Runs `bundle` in both modes: identical results, and the expected ones.
fn check(bundle: &TestBundle, what: &str, code: i32, stdout: &str, stderr: &str) {
    if let Err(problem) = verdict(bundle, what, code, stdout, stderr) {
        panic!("{problem}");
    }
}

/// What [`check`] asserts, as a result.
fn verdict(
    bundle: &TestBundle,
    what: &str,
    code: i32,
    stdout: &str,
    stderr: &str,
) -> Result<(), String> {
    both_modes_verdict(bundle, what, (code, stdout, stderr), RUN_LIMIT_SECS)
}

/// A busybox bundle with a tmpfs on `/tmp` and a plain environment.
fn busybox_fixture(args: &[&str]) -> TestBundle {
    let mut bundle = TestBundle::busybox(args);
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=64m"]
        }));
        c["process"]["env"] = json!(["PATH=/usr/bin:/bin", "LC_ALL=C", "HOME=/root"]);
    });
    bundle
}

/// [`busybox_fixture`] with the host's `/usr` bound read-only and `args`.
fn host_usr_fixture(args: &[&str]) -> TestBundle {
    let mut bundle = busybox_fixture(args);
    bundle.bind_host_usr();
    bundle
}

/// Binds the host directory `dir` read-only at the same path.
fn bind_ro(bundle: &mut TestBundle, dir: &str) {
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": dir, "type": "bind", "source": dir, "options": ["rbind", "ro"]
        }))
    });
}

/// Sets `linux.resources.memory.limit`.
fn limit_memory(bundle: &mut TestBundle, bytes: i64) {
    bundle.edit(|c| c["linux"]["resources"]["memory"]["limit"] = json!(bytes));
}

/// A busybox fixture running `/bin/<name>`, the static C program `source`
/// (built with the host's gcc), with `args` after it.
fn c_fixture(name: &str, source: &str, args: &[&str]) -> TestBundle {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = compile_c(dir.path(), name, source, &["-static", "-Wall", "-Werror"]);
    let program = format!("/bin/{name}");
    let argv: Vec<&str> = std::iter::once(program.as_str())
        .chain(args.iter().copied())
        .collect();
    let bundle = busybox_fixture(&argv);
    std::fs::copy(&binary, bundle.rootfs().join(&program[1..])).expect("copy the program");
    bundle
}

/// Panics (rather than skipping, which would hide a broken product) when a
/// tool the test needs is missing.
fn require(tool: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is missing: run scripts/install-deps.sh"
    );
}

// ---------------------------------------------------------------------
// 1. A static Go program from a current toolchain.

/// The Go program: goroutines and channels, the GC under 200 MiB of
/// allocation from four goroutines at once, timers, and file I/O in /tmp.
/// Its output is deterministic: results, not timings or addresses.
const GO_PROGRAM: &str = r#"package main

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"time"
)

func main() {
	// Goroutines and channels: eight workers square 1..1000.
	jobs := make(chan int)
	results := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				results <- j * j
			}
		}()
	}
	go func() {
		for i := 1; i <= 1000; i++ {
			jobs <- i
		}
		close(jobs)
	}()
	go func() { wg.Wait(); close(results) }()
	sum := 0
	for r := range results {
		sum += r
	}
	fmt.Println("squares", sum)

	// The GC under allocation: four goroutines allocate 50 MiB each in
	// short-lived 1 MiB slices (200 MiB in all), keeping one in 25.
	sums := make([]uint64, 4)
	kept := make([][][]byte, 4)
	var gw sync.WaitGroup
	for g := 0; g < 4; g++ {
		gw.Add(1)
		go func(g int) {
			defer gw.Done()
			for i := 0; i < 50; i++ {
				b := make([]byte, 1<<20)
				for k := 0; k < len(b); k += 4096 {
					b[k] = byte(g*50 + i + k/4096)
				}
				for k := 0; k < len(b); k += 4096 {
					sums[g] = sums[g]*31 + uint64(b[k])
				}
				if i%25 == 0 {
					kept[g] = append(kept[g], b)
				}
			}
		}(g)
	}
	gw.Wait()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	check := uint64(0)
	nkept := 0
	for g := range sums {
		check = check*1000003 + sums[g]
		nkept += len(kept[g])
	}
	fmt.Println("checksum", check, "kept", nkept, "gc ran", ms.NumGC > 0, "live heap under 64 MiB", ms.HeapAlloc < 64<<20)

	// Timers: time.After fires in the order of the deadlines (set here,
	// 100 ms apart, before the goroutines wait), a stopped Timer never
	// fires, a Timer waits at least its duration.
	var order []string
	var mu sync.Mutex
	var tw sync.WaitGroup
	for _, d := range []int{30, 10, 20} {
		tw.Add(1)
		after := time.After(time.Duration(d) * 10 * time.Millisecond)
		go func(d int) {
			defer tw.Done()
			<-after
			mu.Lock()
			order = append(order, fmt.Sprint(d))
			mu.Unlock()
		}(d)
	}
	tw.Wait()
	t := time.NewTimer(time.Hour)
	stopped := t.Stop()
	start := time.Now()
	t2 := time.NewTimer(50 * time.Millisecond)
	<-t2.C
	fmt.Println("timers", order, "stopped", stopped, "waited", time.Since(start) >= 50*time.Millisecond)

	// File I/O in /tmp: 1 MiB written, read back and compared.
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	path := "/tmp/go-io-test"
	if err := os.WriteFile(path, data, 0o644); err != nil {
		fmt.Println("write:", err)
		os.Exit(1)
	}
	back, err := os.ReadFile(path)
	if err != nil {
		fmt.Println("read:", err)
		os.Exit(1)
	}
	st, _ := os.Stat(path)
	names, _ := os.ReadDir("/tmp")
	var ls []string
	for _, n := range names {
		ls = append(ls, n.Name())
	}
	sort.Strings(ls)
	fmt.Println("file", len(back), bytes.Equal(back, data), st.Size(), ls)
	if err := os.Remove(path); err != nil {
		fmt.Println("remove:", err)
		os.Exit(1)
	}
}
"#;

/// The Go program built once per test run: static (CGO_ENABLED=0), offline
/// (standard library only, no proxy, no toolchain download), its build
/// cache and GOPATH in a temporary directory.
fn go_program() -> &'static Path {
    static PROGRAM: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = PROGRAM.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let binary = build_go(dir.path(), "memtest", GO_PROGRAM);
        (dir, binary)
    });
    path
}

#[test]
fn a_current_go_program_runs() {
    let bundle = busybox_fixture(&["/bin/gomem"]);
    std::fs::copy(go_program(), bundle.rootfs().join("bin/gomem")).expect("copy the program");
    // The sums the program computes, computed here the same way.
    let squares: u64 = (1..=1000u64).map(|i| i * i).sum();
    let checksum = (0..4u64).fold(0u64, |check, g| {
        let sum = (0..50u64)
            .flat_map(|i| (0..256u64).map(move |page| (g * 50 + i + page) as u8))
            .fold(0u64, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(b)));
        check.wrapping_mul(1_000_003).wrapping_add(sum)
    });
    check(
        &bundle,
        "Go program",
        0,
        &format!(
            "squares {squares}\n\
             checksum {checksum} kept 8 gc ran true live heap under 64 MiB true\n\
             timers [10 20 30] stopped true waited true\n\
             file 1048576 true 1048576 [go-io-test]\n"
        ),
        "",
    );
}

// ---------------------------------------------------------------------
// 2. Debian's OpenJDK.

const JAVA_PROGRAM: &str = r#"import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.util.*;
import java.util.concurrent.*;

public class Prog {
    public static void main(String[] args) throws Exception {
        // A thread pool: four threads sum 16 ranges; futures read in submit order.
        ExecutorService pool = Executors.newFixedThreadPool(4);
        List<Future<Long>> parts = new ArrayList<>();
        for (int t = 0; t < 16; t++) {
            final long from = t * 100_000L;
            parts.add(pool.submit(() -> {
                long s = 0;
                for (long i = from; i < from + 100_000L; i++) s += i % 7;
                return s;
            }));
        }
        long total = 0;
        for (Future<Long> f : parts) total += f.get();
        Set<String> threads = ConcurrentHashMap.newKeySet();
        CountDownLatch latch = new CountDownLatch(8);
        for (int t = 0; t < 8; t++) {
            pool.execute(() -> { threads.add(Thread.currentThread().getName()); latch.countDown(); });
        }
        latch.await();
        pool.shutdown();
        System.out.println("pool sum " + total + " terminated " + pool.awaitTermination(60, TimeUnit.SECONDS)
            + " at most 4 threads " + (threads.size() <= 4));

        // Collections: word counts in a HashMap, sorted by count, then word.
        String text = "the quick brown fox jumps over the lazy dog the fox";
        Map<String, Integer> counts = new HashMap<>();
        for (String w : text.split(" ")) counts.merge(w, 1, Integer::sum);
        List<Map.Entry<String, Integer>> entries = new ArrayList<>(counts.entrySet());
        entries.sort(Map.Entry.<String, Integer>comparingByValue().reversed()
            .thenComparing(Map.Entry.comparingByKey()));
        System.out.println("counts " + entries);
        List<Integer> nums = new ArrayList<>();
        Random r = new Random(42);
        for (int i = 0; i < 100_000; i++) nums.add(r.nextInt(1_000_000));
        Collections.sort(nums);
        System.out.println("sorted min " + nums.get(0) + " max " + nums.get(nums.size() - 1)
            + " median " + nums.get(50_000));

        // GC pressure: 400 MiB in short-lived 1 MiB arrays, one in 100 kept.
        List<byte[]> keep = new ArrayList<>();
        long check = 0;
        for (int i = 0; i < 400; i++) {
            byte[] b = new byte[1 << 20];
            for (int k = 0; k < b.length; k += 4096) b[k] = (byte) (i + k / 4096);
            for (int k = 0; k < b.length; k += 4096) check = check * 31 + b[k];
            if (i % 100 == 0) keep.add(b);
        }
        System.gc();
        long gcs = 0;
        for (GarbageCollectorMXBean gc : ManagementFactory.getGarbageCollectorMXBeans())
            gcs += gc.getCollectionCount();
        System.out.println("checksum " + check + " kept " + keep.size() + " collected " + (gcs > 0));
    }
}
"#;

#[test]
fn a_java_program_runs() {
    require(JAVA);
    require(JAVAC);
    // Compiled on the host (cheaper than javac in both modes); the bundle
    // runs only the JVM.
    let classes = tempfile::tempdir().expect("tempdir");
    std::fs::write(classes.path().join("Prog.java"), JAVA_PROGRAM).expect("write Prog.java");
    let out = Command::new("timeout")
        .args(["-k", "10", "300", JAVAC, "-d", "."])
        .arg("Prog.java")
        .current_dir(classes.path())
        .output()
        .expect("run javac");
    assert!(out.status.success(), "javac failed: {}", show(&out));
    let bundle_args = [
        JAVA,
        // A fixed heap bound: the default is a quarter of the RAM the JVM
        // sees, the host's in a container and the guest's in a microVM.
        "-Xmx256m",
        // One collector in both modes: the JVM picks G1 on a "server
        // class" machine (2+ CPUs and 1792+ MiB), Serial otherwise.
        "-XX:+UseSerialGC",
        "-cp",
        "/app",
        "Prog",
    ];
    let mut bundle = host_usr_fixture(&bundle_args);
    // /usr/bin/java links through /etc/alternatives, and the JDK's
    // lib/jvm.cfg and conf/ files link into /etc/java-17-openjdk.
    bind_ro(&mut bundle, "/etc/alternatives");
    bind_ro(&mut bundle, "/etc/java-17-openjdk");
    let app = bundle.rootfs().join("app");
    std::fs::create_dir(&app).expect("mkdir /app");
    std::fs::copy(classes.path().join("Prog.class"), app.join("Prog.class")).expect("copy class");
    // The 16 tasks split the sum of i % 7 over 0..1600000 between them;
    // the checksum folds the first byte of each page (a Java byte, signed).
    let pool_sum: u64 = (0..1_600_000u64).map(|i| i % 7).sum();
    let checksum = (0..400i64)
        .flat_map(|i| (0..256i64).map(move |page| i64::from((i + page) as i8)))
        .fold(0i64, |c, b| c.wrapping_mul(31).wrapping_add(b));
    check(
        &bundle,
        "Java program",
        0,
        &format!(
            "pool sum {pool_sum} terminated true at most 4 threads true\n\
             counts [the=3, fox=2, brown=1, dog=1, jumps=1, lazy=1, over=1, quick=1]\n\
             sorted min 1 max 999991 median 501604\n\
             checksum {checksum} kept 4 collected true\n"
        ),
        "",
    );
}

// ---------------------------------------------------------------------
// 3. node.

const NODE_PROGRAM: &str = r#"'use strict';
const crypto = require('crypto');
const fs = require('fs');
const events = [];
const log = (s) => events.push(s);

// Buffers: 64 x 1 MiB filled and hashed, most left to the GC, and 32 MiB more.
const hash = crypto.createHash('sha256');
const kept = [];
for (let i = 0; i < 64; i++) {
  const b = Buffer.alloc(1 << 20, i);
  b.writeUInt32LE(i * 7919, 4096);
  hash.update(b);
  if (i % 16 === 0) kept.push(b);
}
const big = Buffer.allocUnsafe(32 << 20).fill(0xab);
console.log('buffers', hash.digest('hex').slice(0, 16), kept.length, big.length, big[big.length - 1]);
console.log('concat', Buffer.concat([Buffer.from('ab'), Buffer.from([0x63, 0x64])]).toString(),
  Buffer.from('hello').toString('base64'), Buffer.from('68656c6c6f', 'hex').toString());

// Timers, immediates and microtasks in node's documented order; the
// interval's third tick resolves `ticked`. Timers run in the order of their
// deadlines however late, and the deadlines (200, 250, 400, 500+, 750+ ms)
// are far apart: a stalled process cannot reorder them.
let ticked;
const intervalDone = new Promise((res) => { ticked = res; });
setTimeout(() => log('timeout 400'), 400);
setTimeout(() => log('timeout 200'), 200);
setImmediate(() => log('immediate'));
process.nextTick(() => log('nextTick'));
Promise.resolve().then(() => log('microtask'));
let ticks = 0;
const iv = setInterval(() => {
  ticks++;
  log('interval ' + ticks);
  if (ticks === 3) { clearInterval(iv); ticked(); }
}, 250);
log('sync');

// Promises: all, race against a timer, await of a rejection, allSettled.
const sleep = (ms, v) => new Promise((res) => setTimeout(() => res(v), ms));
async function main() {
  const all = await Promise.all([sleep(20, 'a'), sleep(5, 'b'), 'c']);
  let slow;
  const race = await Promise.race([
    new Promise((res) => { slow = setTimeout(() => res('slow'), 5000); }), sleep(10, 'fast')]);
  clearTimeout(slow);
  let caught;
  try { await Promise.reject(new Error('boom')); } catch (e) { caught = e.message; }
  const settled = await Promise.allSettled([Promise.reject(1), sleep(1, 2)]);
  await intervalDone;
  fs.writeFileSync('/tmp/node-io', big.subarray(0, 1 << 20));
  const back = fs.readFileSync('/tmp/node-io');
  console.log('promises', JSON.stringify(all), race, caught, settled.map((s) => s.status).join(','));
  console.log('file', back.length, back.equals(big.subarray(0, 1 << 20)));
  console.log('events', events.join('; '));
  process.exitCode = 3;
}
main();
"#;

#[test]
fn node_with_buffers_and_timers() {
    require(NODE);
    let bundle = host_usr_fixture(&[NODE, "/app/prog.js"]);
    let app = bundle.rootfs().join("app");
    std::fs::create_dir(&app).expect("mkdir /app");
    std::fs::write(app.join("prog.js"), NODE_PROGRAM).expect("write prog.js");
    // The first 16 hex digits of the SHA-256 of the 64 buffers, computed
    // here as the program does (each 1 MiB buffer filled with i, with
    // i * 7919 little-endian at offset 4096).
    check(
        &bundle,
        "node program",
        3,
        &format!(
            "buffers {} 4 33554432 171\n\
             concat abcd aGVsbG8= hello\n\
             promises [\"a\",\"b\",\"c\"] fast boom rejected,fulfilled\n\
             file 1048576 true\n\
             events sync; nextTick; microtask; immediate; timeout 200; interval 1; \
             timeout 400; interval 2; interval 3\n",
            node_buffers_digest()
        ),
        "",
    );
}

/// The digest prefix the node program prints, from the host's sha256sum.
fn node_buffers_digest() -> String {
    let mut data = Vec::with_capacity(64 << 20);
    for i in 0..64u32 {
        let mut b = vec![i as u8; 1 << 20];
        b[4096..4100].copy_from_slice(&(i * 7919).to_le_bytes());
        data.extend_from_slice(&b);
    }
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&data).expect("feed sha256sum");
    }
    let out = child.wait_with_output().expect("sha256sum");
    assert!(out.status.success(), "sha256sum: {}", show(&out));
    stdout(&out)[..16].to_string()
}

// ---------------------------------------------------------------------
// 4. A 64 GiB reservation.

/// 64 GiB `PROT_NONE` reserved with `MAP_NORESERVE` (as Go, Java and V8
/// reserve their heaps and cages), a 1 MiB window in the middle made
/// writable, written and read back, with every byte outside it still
/// faulting; the maps show the three ranges; the whole is unmapped and
/// reserved twice more.
const RESERVE_C: &str = r#"#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

static sigjmp_buf env;
static void on_segv(int sig) { siglongjmp(env, sig); }

/* Whether a read (or write) of p faults with SIGSEGV. */
static int faults(volatile char *p, int write) {
    if (sigsetjmp(env, 1)) return 1;
    if (write) *p = 1; else (void)*p;
    return 0;
}

static const char *yes(int b) { return b ? "yes" : "no"; }

int main(void) {
    const size_t size = 64ull << 30, window = 1 << 20, off = 32ull << 30;
    struct sigaction sa = {0};
    sa.sa_handler = on_segv;
    sigaction(SIGSEGV, &sa, 0);
    char *base = mmap(0, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) { printf("mmap 64 GiB: %s\n", strerror(errno)); return 1; }
    printf("reserved 64 GiB: yes\n");
    char *w = base + off;
    printf("the middle faults before mprotect: %s\n", yes(faults(w, 0)));
    if (mprotect(w, window, PROT_READ | PROT_WRITE)) { printf("mprotect: %s\n", strerror(errno)); return 1; }
    int zero = 1;
    for (size_t i = 0; i < window; i++) if (w[i]) zero = 0;
    printf("the window reads zero: %s\n", yes(zero));
    for (size_t i = 0; i < window; i++) w[i] = (char)(i * 7 + 3);
    unsigned long sum = 0;
    int ok = 1;
    for (size_t i = 0; i < window; i++) { ok &= w[i] == (char)(i * 7 + 3); sum += (unsigned char)w[i]; }
    printf("the window written and read back: %s, sum %lu\n", yes(ok), sum);
    printf("below the window faults: %s\n", yes(faults(w - 1, 1)));
    printf("above the window faults: %s\n", yes(faults(w + window, 0)));
    printf("the first and last bytes fault: %s\n", yes(faults(base, 0) && faults(base + size - 1, 1)));
    FILE *m = fopen("/proc/self/maps", "r");
    char line[512];
    uintptr_t lo = (uintptr_t)base, hi = lo + size;
    while (m && fgets(line, sizeof line, m)) {
        uintptr_t a, b;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) == 3 && a >= lo && b <= hi)
            printf("maps: +%lu MiB..+%lu MiB %s\n", (unsigned long)((a - lo) >> 20),
                   (unsigned long)((b - lo) >> 20), perms);
    }
    if (m) fclose(m);
    printf("munmap: %s\n", munmap(base, size) == 0 ? "ok" : strerror(errno));
    printf("the window faults after munmap: %s\n", yes(faults(w, 0)));
    for (int i = 0; i < 2; i++) {
        char *again = mmap(0, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        printf("reserved again: %s\n", again == MAP_FAILED ? strerror(errno) : "yes");
        if (again != MAP_FAILED) munmap(again, size);
    }
    return 0;
}
"#;

#[test]
fn a_64_gib_prot_none_reservation_with_a_small_window() {
    let bundle = c_fixture("reserve", RESERVE_C, &[]);
    // Sum of (i * 7 + 3) mod 256 over the window's 2^20 bytes.
    let sum: u64 = (0..1u64 << 20).map(|i| (i * 7 + 3) % 256).sum();
    check(
        &bundle,
        "64 GiB reservation",
        0,
        &format!(
            "reserved 64 GiB: yes\n\
             the middle faults before mprotect: yes\n\
             the window reads zero: yes\n\
             the window written and read back: yes, sum {sum}\n\
             below the window faults: yes\n\
             above the window faults: yes\n\
             the first and last bytes fault: yes\n\
             maps: +0 MiB..+32768 MiB ---p\n\
             maps: +32768 MiB..+32769 MiB rw-p\n\
             maps: +32769 MiB..+65536 MiB ---p\n\
             munmap: ok\n\
             the window faults after munmap: yes\n\
             reserved again: yes\n\
             reserved again: yes\n"
        ),
        "",
    );
}

// ---------------------------------------------------------------------
// 5. Copy-on-write across two generations of fork.

/// A 16 MiB malloc'd buffer: the parent fills it, a child rewrites every
/// fourth page from page 1 and forks a grandchild that rewrites every
/// fourth page from page 2. Each generation checks every byte of its view
/// (its own writes and its ancestors', none of its descendants'), the
/// parent also while both descendants are alive with their writes done.
/// A `MAP_SHARED | MAP_ANONYMOUS` page is written by all three and read by
/// the parent after its waits.
const COW_C: &str = r#"#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIZE (16u << 20)
#define PAGE 4096u

/* The byte i of generation g's view. */
static unsigned char expect(unsigned g, size_t i) {
    size_t page = i / PAGE;
    if (g >= 2 && page % 4 == 2) return (unsigned char)(0xc0 ^ (i * 13));
    if (g >= 1 && page % 4 == 1) return (unsigned char)(0x80 ^ (i * 11));
    return (unsigned char)(i * 7 + 1);
}

static void write_gen(unsigned char *b, unsigned g) {
    for (size_t i = 0; i < SIZE; i++)
        if ((i / PAGE) % 4 == g) b[i] = expect(g, i);
}

static void check(const char *who, const unsigned char *b, unsigned g) {
    size_t wrong = 0;
    for (size_t i = 0; i < SIZE; i++) wrong += b[i] != expect(g, i);
    printf("%s: sees generation %u's buffer: %s\n", who, g, wrong ? "no" : "yes");
    if (wrong) printf("%s: %zu bytes differ\n", who, wrong);
    fflush(stdout);
}

static int status_of(pid_t pid) {
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(void) {
    unsigned char *b = malloc(SIZE);
    volatile unsigned *shared = mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int up[2], down[2];
    if (!b || shared == MAP_FAILED || pipe(up) || pipe(down)) { puts("setup failed"); return 1; }
    for (size_t i = 0; i < SIZE; i++) b[i] = expect(0, i);
    check("parent", b, 0);
    pid_t child = fork();
    if (child == 0) {
        check("child before writing", b, 0);
        write_gen(b, 1);
        check("child", b, 1);
        shared[1] = 1111;
        pid_t grandchild = fork();
        if (grandchild == 0) {
            check("grandchild before writing", b, 1);
            write_gen(b, 2);
            check("grandchild", b, 2);
            shared[2] = 2222;
            shared[0] += 2;
            /* Tell the parent both descendants wrote; wait for its check. */
            char c = 'w';
            if (write(up[1], &c, 1) != 1 || read(down[0], &c, 1) != 1) _exit(99);
            check("grandchild after the parent's check", b, 2);
            _exit(22);
        }
        printf("child: grandchild exited %d\n", status_of(grandchild));
        check("child after the grandchild", b, 1);
        printf("child: shared from the grandchild %u\n", shared[2]);
        shared[0] += 1;
        fflush(stdout);
        _exit(11);
    }
    char c;
    if (read(up[0], &c, 1) != 1) { puts("no word from the grandchild"); return 1; }
    check("parent while both descendants live", b, 0);
    if (write(down[1], &c, 1) != 1) return 1;
    printf("parent: child exited %d\n", status_of(child));
    check("parent after both", b, 0);
    printf("parent: shared %u %u %u\n", shared[0], shared[1], shared[2]);
    /* Its pages are its own again: writing them works and sticks. */
    write_gen(b, 1);
    check("parent after writing as the child did", b, 1);
    free(b);
    return 0;
}
"#;

#[test]
fn copy_on_write_fork_keeps_writes_private_across_two_generations() {
    let bundle = c_fixture("cow", COW_C, &[]);
    check(
        &bundle,
        "copy-on-write fork",
        0,
        "parent: sees generation 0's buffer: yes\n\
         child before writing: sees generation 0's buffer: yes\n\
         child: sees generation 1's buffer: yes\n\
         grandchild before writing: sees generation 1's buffer: yes\n\
         grandchild: sees generation 2's buffer: yes\n\
         parent while both descendants live: sees generation 0's buffer: yes\n\
         grandchild after the parent's check: sees generation 2's buffer: yes\n\
         child: grandchild exited 22\n\
         child after the grandchild: sees generation 1's buffer: yes\n\
         child: shared from the grandchild 2222\n\
         parent: child exited 11\n\
         parent after both: sees generation 0's buffer: yes\n\
         parent: shared 3 1111 2222\n\
         parent after writing as the child did: sees generation 1's buffer: yes\n",
        "",
    );
}

// ---------------------------------------------------------------------
// 6. Everyday programs under a 64 MiB memory limit.

const LIMIT: i64 = 64 << 20;

#[test]
fn small_programs_run_under_a_64_mib_memory_limit() {
    let mut pipeline = busybox_fixture(&["sh", "-c", "seq 1 20000 | sort -rn | head -1"]);
    limit_memory(&mut pipeline, LIMIT);
    let mut problems = Vec::new();
    problems.extend(verdict(&pipeline, "a pipeline under 64 MiB", 0, "20000\n", "").err());

    // The ten print in any order, so the bundle's sh sorts them.
    let mut children = busybox_fixture(&[
        "sh",
        "-c",
        "(for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 0.1; echo $i) & done; wait) | sort -n; echo done",
    ]);
    limit_memory(&mut children, LIMIT);
    let ten: String = (1..=10).map(|i| format!("{i}\n")).collect();
    problems.extend(
        verdict(
            &children,
            "ten background children under 64 MiB",
            0,
            &format!("{ten}done\n"),
            "",
        )
        .err(),
    );

    require(PYTHON);
    let mut python = host_usr_fixture(&[
        PYTHON,
        "-c",
        "import os\n\
         buf = bytearray(20 << 20)\n\
         for i in range(0, len(buf), 4096): buf[i] = 1\n\
         pids = []\n\
         for n in range(4):\n\
         \x20   pid = os.fork()\n\
         \x20   if pid == 0:\n\
         \x20       buf[n * 4096] = 100 + n\n\
         \x20       os._exit(10 + sum(buf[0:4 * 4096:4096]))\n\
         \x20   pids.append(pid)\n\
         codes = [os.WEXITSTATUS(os.waitpid(p, 0)[1]) for p in pids]\n\
         print(len(buf), sum(buf[0:4 * 4096:4096]), codes)",
    ]);
    limit_memory(&mut python, LIMIT);
    // Child n sees its own write (100 + n) and three untouched 1s; the
    // parent's buffer keeps its four 1s.
    let codes: Vec<String> = (0..4).map(|n| (10 + 100 + n + 3).to_string()).collect();
    problems.extend(
        verdict(
            &python,
            "python fork under 64 MiB",
            0,
            &format!("{} 4 [{}]\n", 20 << 20, codes.join(", ")),
            "",
        )
        .err(),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------
// 7. The OOM killer.

/// `oom alone` allocates and touches 1 MiB at a time until it is killed.
/// `oom` forks a sibling that touches 1 MiB and waits for the parent's
/// word, and such a hog; it reports how each ended.
const OOM_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Kept reachable, so the compiler cannot drop the allocations. */
void *volatile head;

static void hog(void) {
    for (size_t mib = 0;; mib++) {
        void **p = malloc(1 << 20);
        if (!p) { printf("hog: malloc failed after %zu MiB\n", mib); fflush(stdout); _exit(1); }
        memset(p, 0x5a, 1 << 20);
        *p = head;
        head = p;
        if (mib == 4096) { puts("hog: 4 GiB and still alive"); fflush(stdout); _exit(2); }
    }
}

static void report(const char *who, int st) {
    if (WIFSIGNALED(st)) printf("%s: killed by signal %d\n", who, WTERMSIG(st));
    else printf("%s: exited %d\n", who, WEXITSTATUS(st));
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "alone") == 0) hog();
    int go[2];
    if (pipe(go)) return 1;
    pid_t sibling = fork();
    if (sibling == 0) {
        close(go[1]);
        volatile char *p = malloc(1 << 20);
        for (int i = 0; i < 1 << 20; i++) p[i] = 1;
        char c;
        ssize_t n = read(go[0], &c, 1);
        long sum = 0;
        for (int i = 0; i < 1 << 20; i += 4096) sum += p[i];
        printf("sibling: read %zd, its memory intact: %s\n", n, sum == 256 ? "yes" : "no");
        fflush(stdout);
        _exit(0);
    }
    close(go[0]);
    pid_t h = fork();
    if (h == 0) hog();
    int st;
    waitpid(h, &st, 0);
    report("hog", st);
    close(go[1]);
    waitpid(sibling, &st, 0);
    report("sibling", st);
    puts("parent: alive");
    return 0;
}
"#;

/// Asserts `out`'s stderr holds nothing but capsa's out-of-memory notices.
/// Their wording is each mode's own (the container's names the container,
/// the guest's the process it killed), and only a microVM reports a kill
/// that spared the container's init, so stderr is not compared across modes.
fn only_oom_notices(mode: &str, out: &Output) {
    let err = stderr(out);
    assert!(
        err.lines().all(|l| l.starts_with("capsa: out of memory: ")),
        "{mode}: stderr has more than out-of-memory notices\n{}",
        show(out)
    );
}

#[test]
fn the_oom_killer_kills_the_process_over_the_limit() {
    // The init itself is the hog: SIGKILL, so `capsa run` exits 137.
    let mut alone = c_fixture("oom", OOM_C, &["alone"]);
    limit_memory(&mut alone, LIMIT);
    let [container, microvm] = both_modes(&alone);
    for (mode, out) in [("container", &container), ("microvm", &microvm)] {
        assert_eq!(
            (out.status.code(), stdout(out).as_str()),
            (Some(137), ""),
            "{mode}: the hog was not OOM-killed\n== container: {}\n== microvm: {}",
            show(&container),
            show(&microvm)
        );
        only_oom_notices(mode, out);
        assert!(
            stderr(out).contains("capsa: out of memory: "),
            "{mode}: no out-of-memory notice\n{}",
            show(out)
        );
    }

    // A hog beside a sibling that touched 1 MiB: the hog is killed, the
    // sibling and the parent live on.
    let mut pair = c_fixture("oom", OOM_C, &[]);
    limit_memory(&mut pair, LIMIT);
    let [container, microvm] = both_modes(&pair);
    let expected = "hog: killed by signal 9\n\
                    sibling: read 0, its memory intact: yes\n\
                    sibling: exited 0\n\
                    parent: alive\n";
    for (mode, out) in [("container", &container), ("microvm", &microvm)] {
        assert_eq!(
            (out.status.code(), stdout(out).as_str()),
            (Some(0), expected),
            "{mode}: not just the hog was killed\n== container: {}\n== microvm: {}",
            show(&container),
            show(&microvm)
        );
        only_oom_notices(mode, out);
    }
}

/// Resident memory of process `pid` in bytes (`VmRSS`).
fn rss_bytes(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("VMM status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS line");
    kb * 1024
}

/// Reclaim: a microVM whose python3 writes 500 MB and frees it shrinks
/// back on the host (free page reporting), to within 20% of its resident
/// memory before the burst. The guest says where it is on stdout and
/// waits on stdin, so each figure is read while it holds still.
#[test]
fn a_microvm_that_burst_to_500_mb_shrinks_back_on_the_host() {
    use std::io::{BufRead, BufReader, Write};
    let script = "import sys\n\
        def stage(name):\n    print(name, flush=True)\n    sys.stdin.readline()\n\
        stage('started')\n\
        burst = bytearray(500 << 20)\n\
        for i in range(0, len(burst), 4096):\n    burst[i] = 1\n\
        stage('allocated')\n\
        del burst\n\
        stage('freed')\n";
    let bundle = host_usr_fixture(&[PYTHON, "-c", script]);
    let capsa = Capsa::new();
    let id = unique_id("reclaim");
    let mut child = capsa
        .bounded_run_command(&bundle, "microvm", &id, RUN_LIMIT_SECS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run capsa run");
    // A hung guest would keep the VMM, and so the pipe, alive past the
    // bound on `capsa run`: the watchdog deletes it, which ends the read.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let (root, id) = (capsa.root.path().to_path_buf(), id.clone());
        std::thread::spawn(move || {
            let bound = std::time::Duration::from_secs(u64::from(RUN_LIMIT_SECS) + 15);
            if finished.recv_timeout(bound).is_err() {
                let _ = Command::new(capsa_bin())
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", &id])
                    .status();
            }
        })
    };
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut figures = Vec::new();
    for stage in ["started", "allocated", "freed"] {
        let line = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        assert_eq!(line, stage, "the guest did not reach {stage}");
        // The VMM is the process in the microVM's memory cgroup named capsa.
        let tasks = cgroup_dirs(&id)
            .into_iter()
            .find(|d| d.starts_with("/sys/fs/cgroup/memory"))
            .map(|d| std::fs::read_to_string(d.join("tasks")).expect("tasks"))
            .expect("the microVM's memory cgroup");
        let vmm = tasks
            .lines()
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "capsa")
            })
            .expect("the VMM among the cgroup's tasks")
            .to_string();
        figures.push(rss_bytes(&vmm));
        writeln!(stdin, "go on").expect("write to the guest");
    }
    drop(stdin);
    let status = child.wait().expect("wait for capsa run");
    let _ = done.send(());
    let _ = watchdog.join();
    if capsa.root.path().join(&id).exists() {
        let _ = capsa.output(&["delete", "--force", &id]);
    }
    let [before, burst, after] = [figures[0], figures[1], figures[2]];
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "VMM RSS: {:.1} MiB before, {:.1} MiB at the burst, {:.1} MiB after",
        mib(before),
        mib(burst),
        mib(after)
    );
    assert!(status.success(), "capsa run: {status}");
    assert!(
        burst >= before + (450 << 20),
        "the burst was not resident: {:.1} -> {:.1} MiB",
        mib(before),
        mib(burst)
    );
    assert!(
        after * 5 <= before * 6,
        "the VMM kept {:.1} MiB after the guest freed the burst (started at {:.1} MiB)",
        mib(after),
        mib(before)
    );
}

/// `/proc/self/statm`, `status` and `smaps_rollup` report real figures:
/// touching 16 MiB raises the resident set by at least that much, and a
/// forked child, which shares its parent's pages copy-on-write, has a
/// proportional set size well below its resident set.
const PROC_MEMORY_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static long field(const char *path, const char *name) {
    FILE *f = fopen(path, "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, name, strlen(name)) == 0) kb = atol(line + strlen(name));
    if (f) fclose(f);
    return kb;
}

static long statm_resident_kb(void) {
    long size, resident;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2) return -1;
    fclose(f);
    return resident * 4;
}

int main(void) {
    long before = field("/proc/self/smaps_rollup", "Rss:");
    long statm_before = statm_resident_kb();
    size_t n = 16 << 20;
    volatile char *p = malloc(n);
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    long after = field("/proc/self/smaps_rollup", "Rss:");
    long status_after = field("/proc/self/status", "VmRSS:");
    long statm_after = statm_resident_kb();
    printf("rollup grew %d, status %d, statm %d\n", after - before >= 16384,
           status_after >= after - 1024, statm_after - statm_before >= 16384);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        long rss = field("/proc/self/smaps_rollup", "Rss:");
        long pss = field("/proc/self/smaps_rollup", "Pss:");
        printf("child shares: %d\n", rss >= 16384 && pss * 3 < rss * 2);
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    return p[0] == 1 ? 0 : 1;
}
"#;

#[test]
fn proc_reports_real_memory_figures() {
    let bundle = c_fixture("procmem", PROC_MEMORY_C, &[]);
    check(
        &bundle,
        "memory figures in /proc",
        0,
        "rollup grew 1, status 1, statm 1\nchild shares: 1\n",
        "",
    );
}

/// File mappings read their pages when first touched: a 3 GiB sparse
/// file maps whole in a VM with 1 GiB of RAM and reads back its tail; a
/// private writable mapping keeps its writes to itself and reads the file
/// again after MADV_DONTNEED; a shared one writes back on munmap.
const FILE_MAPPINGS_C: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void) {
    const off_t big = 3LL << 30;
    int fd = open("/tmp/sparse", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || pwrite(fd, "tail", 4, big - 4) != 4) { perror("sparse"); return 1; }
    char *m = mmap(NULL, big, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) { perror("mmap 3 GiB"); return 1; }
    printf("big: head %d tail %.4s\n", m[0], m + big - 4);
    munmap(m, big);
    close(fd);
    unlink("/tmp/sparse");

    fd = open("/tmp/small", O_RDWR | O_CREAT | O_TRUNC, 0600);
    char page[8192];
    memset(page, 'f', sizeof page);
    if (write(fd, page, sizeof page) != sizeof page) return 1;
    char *p = mmap(NULL, sizeof page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    p[0] = 'p';
    char in_file;
    pread(fd, &in_file, 1, 0);
    printf("private: mapping %c file %c\n", p[0], in_file);
    madvise(p, sizeof page, MADV_DONTNEED);
    printf("after MADV_DONTNEED: %c\n", p[0]);
    munmap(p, sizeof page);
    char *s = mmap(NULL, sizeof page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    s[4096] = 's';
    munmap(s, sizeof page);
    pread(fd, &in_file, 1, 4096);
    printf("shared: file %c\n", in_file);
    close(fd);
    return 0;
}
"#;

#[test]
fn file_mappings_read_pages_when_touched() {
    let bundle = c_fixture("filemap", FILE_MAPPINGS_C, &[]);
    check(
        &bundle,
        "file mappings",
        0,
        "big: head 0 tail tail\nprivate: mapping p file f\nafter MADV_DONTNEED: f\nshared: file s\n",
        "",
    );
}

// ---------------------------------------------------------------------
// The page cache.

/// Two instances of perl (a program the python parent does not map) side
/// by side: the second adds less than three quarters of what the first
/// cost alone (PSS), since perl's and its libraries' text are one set of
/// frames. Without sharing the second adds as much as the first.
const SHARED_TEXT_PY: &str = r#"
import subprocess
def pss(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
child = ["/usr/bin/perl", "-e", "$| = 1; print qq(ready\n); <STDIN>"]
first = subprocess.Popen(child, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
first.stdout.readline()
alone = pss(first.pid)
second = subprocess.Popen(child, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
second.stdout.readline()
added = pss(first.pid) + pss(second.pid) - alone
print("the second instance adds less:", added < alone * 0.75)
if added >= alone * 0.75:
    print(f"alone {alone} kB, added {added} kB")
for p in (first, second):
    p.stdin.close()
    p.wait()
"#;

#[test]
fn a_second_instance_shares_the_programs_text() {
    require(PYTHON);
    let bundle = host_usr_fixture(&[PYTHON, "-c", SHARED_TEXT_PY]);
    check(
        &bundle,
        "shared text",
        0,
        "the second instance adds less: True\n",
        "",
    );
}

/// One file, mapped `MAP_SHARED` by a process and written by others that
/// did not inherit the mapping: write(2) shows in the mapping at once, a
/// store through another process's mapping shows in this one and in
/// pread while that process still runs, and this mapping's store shows in
/// pread. A mapping's page wholly past the end of its file is SIGBUS; the
/// rest of the last page reads as zero.
const COHERENCE_PY: &str = r#"
import mmap, os, subprocess, sys
path = "/tmp/coherent"
with open(path, "wb") as f:
    f.write(b"a" * 8192)
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, 8192)
print("mapped", m[:5])
subprocess.run([sys.executable, "-c",
    f"import os; os.pwrite(os.open({path!r}, os.O_RDWR), b'hello', 0)"], check=True)
print("after another process's pwrite", m[:5])
child = subprocess.Popen([sys.executable, "-c", f"""
import mmap, os, sys
fd = os.open({path!r}, os.O_RDWR)
m = mmap.mmap(fd, 8192)
m[4096:4101] = b"world"
print("the writer's pread", os.pread(fd, 5, 4096), flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
print(child.stdout.readline().decode().strip())
print("while the writer maps it", m[4096:4101], os.pread(fd, 5, 4096))
child.stdin.close()
child.wait()
m[100:103] = b"xyz"
print("pread of this mapping's store", os.pread(fd, 3, 100))
with open("/tmp/short", "wb") as f:
    f.write(b"s" * 100)
probe = """
import ctypes, os
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
p = libc.mmap(None, 8192, 1, 1, os.open("/tmp/short", os.O_RDONLY), 0)
print("the last page", ctypes.string_at(p + 99, 2), flush=True)
print("past the end", ctypes.string_at(p + 4096, 1), flush=True)
"""
r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
print(r.stdout.strip(), "->", r.returncode)
"#;

#[test]
fn the_page_cache_is_one_per_file_and_past_its_end_is_sigbus() {
    require(PYTHON);
    let bundle = host_usr_fixture(&[PYTHON, "-c", COHERENCE_PY]);
    check(
        &bundle,
        "page-cache coherence",
        0,
        "mapped b'aaaaa'\n\
         after another process's pwrite b'hello'\n\
         the writer's pread b'world'\n\
         while the writer maps it b'world' b'world'\n\
         pread of this mapping's store b'xyz'\n\
         the last page b's\\x00' -> -7\n",
        "",
    );
}

/// Under a 64 MiB limit, a 192 MiB file is read whole and then 32 MiB
/// are allocated and touched: the cached pages of the file make room (in
/// a microVM, clean page-cache pages go before the OOM killer acts).
const READ_THEN_ALLOCATE_PY: &str = r#"
import hashlib
h = hashlib.md5()
with open("/data/big", "rb") as f:
    while chunk := f.read(1 << 20):
        h.update(chunk)
print(h.hexdigest())
block = bytearray(32 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
print("allocated", sum(block[::4096]))
"#;

#[test]
fn reading_a_file_larger_than_memory_leaves_room_to_allocate() {
    require(PYTHON);
    let data = tempfile::tempdir().expect("tempdir");
    let mut big = Vec::with_capacity(192 << 20);
    for i in 0u32..(48 << 20) {
        big.extend_from_slice(&i.to_le_bytes());
    }
    std::fs::write(data.path().join("big"), &big).expect("write the big file");
    let digest = {
        let out = Command::new("md5sum")
            .arg(data.path().join("big"))
            .output()
            .expect("md5sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("a digest")
            .to_string()
    };
    let mut bundle = host_usr_fixture(&[PYTHON, "-c", READ_THEN_ALLOCATE_PY]);
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/data", "type": "bind",
            "source": data.path(), "options": ["rbind", "ro"]
        }))
    });
    limit_memory(&mut bundle, LIMIT);
    check(
        &bundle,
        "a big read, then an allocation, under 64 MiB",
        0,
        &format!("{digest}\nallocated {}\n", 8192),
        "",
    );
}
