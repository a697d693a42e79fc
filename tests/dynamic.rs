//! Differential tests of dynamically linked programs: the host's own Debian
//! binaries (coreutils, grep, sed, awk, find, dash) with their shared
//! libraries and glibc's loader, copied into a `capsa demo-bundle` rootfs,
//! must give the same stdout, stderr and exit status under
//! `--isolation=container` and `--isolation=microvm` — and the expected ones,
//! so the modes cannot agree on being wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

use capsa_tests::*;

/// Host programs copied into `/hbin` (those missing on a machine are skipped,
/// and so are the cases using them).
const PROGRAMS: [&str; 20] = [
    "/usr/bin/ls",
    "/usr/bin/cat",
    "/usr/bin/sort",
    "/usr/bin/grep",
    "/usr/bin/sed",
    "/usr/bin/mawk",
    "/usr/bin/gawk",
    "/usr/bin/find",
    "/usr/bin/sha256sum",
    "/usr/bin/dash",
    "/usr/bin/wc",
    "/usr/bin/head",
    "/usr/bin/tail",
    "/usr/bin/tr",
    "/usr/bin/uniq",
    "/usr/bin/cut",
    "/usr/bin/seq",
    "/usr/bin/xargs",
    "/usr/bin/echo",
    "/usr/bin/env",
];

const FILES: [(&str, &str); 3] = [
    ("a.txt", "pear\napple\nfig\nbanana\n"),
    ("b.txt", "one two three\nfour five\n"),
    ("empty", ""),
];
const FIXED_TIME: &str = "2021-03-04 05:06:07";

/// The shared objects `ldd` lists for `bin` (the loader included).
fn libraries(bin: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("run ldd");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn copy_into(rootfs: &Path, from: &Path, to: &Path) {
    let dest = rootfs.join(to.strip_prefix("/").expect("absolute path"));
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    // fs::copy follows symlinks (libc.so.6 and the loader are links on
    // Debian) and keeps the permission bits.
    std::fs::copy(from, &dest)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), dest.display()));
}

/// A bundle running `dash -c script` with the host programs in `/hbin`
/// (first on PATH; busybox stays in /bin) and `/data` holding [`FILES`].
fn fixture(script: &str) -> TestBundle {
    let mut bundle = TestBundle::busybox(&["true"]);
    let rootfs = bundle.rootfs();
    for bin in PROGRAMS.iter().filter(|b| Path::new(b).exists()) {
        let name = Path::new(bin).file_name().expect("file name");
        copy_into(&rootfs, Path::new(bin), &Path::new("/hbin").join(name));
        for lib in libraries(bin) {
            copy_into(&rootfs, &lib, &lib);
        }
    }
    // `awk` is whichever implementation the host has.
    for awk in ["/usr/bin/gawk", "/usr/bin/mawk"] {
        if Path::new(awk).exists() {
            copy_into(&rootfs, Path::new(awk), Path::new("/hbin/awk"));
            break;
        }
    }
    let data = rootfs.join("data");
    std::fs::create_dir(&data).expect("mkdir /data");
    for (name, text) in FILES {
        std::fs::write(data.join(name), text).expect("write fixture file");
    }
    let mut touch = Command::new("touch");
    touch.arg("-d").arg(FIXED_TIME).arg(&data);
    for (name, _) in FILES {
        touch.arg(data.join(name));
    }
    assert!(touch.status().expect("touch").success(), "touch -d failed");
    set_script(&mut bundle, script);
    bundle
}

/// pthreads: four workers summing under a mutex, a condition variable, a
/// timed wait that times out, pthread_exit, pthread_kill to a thread, joins,
/// then a fork from the threaded process.
const THREADS_C: &str = r#"#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <sys/syscall.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER, never = PTHREAD_COND_INITIALIZER;
static long total;
static int ready;
static volatile sig_atomic_t got;
static void on_usr1(int sig) { got = sig; }
static void *work(void *arg) {
    long id = (long)arg, sum = 0;
    for (long i = 1; i <= 100000; i++) sum += i % (id + 2);
    for (int k = 0; k < 100; k++) {
        pthread_mutex_lock(&lock);
        total += sum / 100;
        pthread_mutex_unlock(&lock);
        sched_yield();
    }
    pthread_mutex_lock(&lock);
    ready++;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    if (id == 3) pthread_exit((void *)30);
    return (void *)(id * 10);
}
static void *sleeper(void *arg) {
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 20 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
    pthread_mutex_lock(&lock);
    int rc = pthread_cond_timedwait(&never, &lock, &ts);
    pthread_mutex_unlock(&lock);
    while (!got) sched_yield();
    printf("timedwait: %s, signal %d in thread %d\n", strerror(rc), (int)got,
           getpid() != (pid_t)syscall(SYS_gettid));
    return NULL;
}
int main(void) {
    signal(SIGUSR1, on_usr1);
    pthread_t t[4], s;
    /* Small stacks: the microVM backs memory in 2 MiB frames and a fork
       copies every one, so five default 8 MiB stacks (which glibc caches
       after the joins) would make the fork below cost twice ~110 MiB. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_create(&s, &attr, sleeper, NULL);
    for (long i = 0; i < 4; i++) pthread_create(&t[i], &attr, work, (void *)i);
    pthread_mutex_lock(&lock);
    while (ready < 4) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    long rets = 0;
    for (int i = 0; i < 4; i++) { void *r; pthread_join(t[i], &r); rets += (long)r; }
    usleep(50000);
    pthread_kill(s, SIGUSR1);
    pthread_join(s, NULL);
    printf("total %ld rets %ld pid is tid %d\n", total, rets, getpid() == (pid_t)syscall(SYS_gettid));
    fflush(stdout);
    if (fork() == 0) { printf("child\n"); return 3; }
    int st; wait(&st);
    printf("child status %d\n", WEXITSTATUS(st));
    return 0;
}
"#;

/// [`THREADS_C`] built (dynamically linked) with the host's gcc into `rootfs`.
fn add_threads_program(rootfs: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = compile_c(dir.path(), "threads", THREADS_C, &["-pthread"]);
    copy_into(rootfs, &binary, Path::new("/hbin/threads"));
    for lib in libraries(&binary.to_string_lossy()) {
        copy_into(rootfs, &lib, &lib);
    }
    // pthread_exit unwinds the thread through libgcc_s, which glibc dlopens.
    let gcc_s = Path::new("/lib/x86_64-linux-gnu/libgcc_s.so.1");
    copy_into(rootfs, gcc_s, gcc_s);
}

fn set_script(bundle: &mut TestBundle, script: &str) {
    bundle.edit(|c| {
        c["process"]["args"] = serde_json::json!(["/hbin/dash", "-c", script]);
        c["process"]["env"] = serde_json::json!(["PATH=/hbin:/bin", "LC_ALL=C", "HOME=/root"]);
    });
}

/// Runs `script` in both modes: identical results, and the expected ones.
fn check(bundle: &mut TestBundle, script: &str, code: i32, stdout: &str, stderr: &str) {
    set_script(bundle, script);
    assert_both_modes(bundle, script, code, stdout, stderr);
}

#[test]
fn coreutils() {
    let mut b = fixture("true");
    check(&mut b, "ls /data", 0, "a.txt\nb.txt\nempty\n", "");
    check(
        &mut b,
        "ls -l /data",
        0,
        concat!(
            "total 8\n",
            "-rw-r--r-- 1 root root 22 Mar  4  2021 a.txt\n",
            "-rw-r--r-- 1 root root 24 Mar  4  2021 b.txt\n",
            "-rw-r--r-- 1 root root  0 Mar  4  2021 empty\n",
        ),
        "",
    );
    check(
        &mut b,
        "ls /nonexistent",
        2,
        "",
        "ls: cannot access '/nonexistent': No such file or directory\n",
    );
    check(
        &mut b,
        "cat /data/a.txt | sort",
        0,
        "apple\nbanana\nfig\npear\n",
        "",
    );
    check(
        &mut b,
        "sort -r /data/a.txt",
        0,
        "pear\nfig\nbanana\napple\n",
        "",
    );
    check(
        &mut b,
        "wc -l /data/a.txt /data/b.txt",
        0,
        " 4 /data/a.txt\n 2 /data/b.txt\n 6 total\n",
        "",
    );
    check(&mut b, "seq 1 1000 | sort -rn | head -n 1", 0, "1000\n", "");
    check(
        &mut b,
        "tr a-z A-Z < /data/b.txt | tail -n 1",
        0,
        "FOUR FIVE\n",
        "",
    );
    check(
        &mut b,
        "cut -d' ' -f1 /data/b.txt /data/b.txt | sort | uniq -c",
        0,
        "      2 four\n      2 one\n",
        "",
    );
    check(
        &mut b,
        "head -c 3 /data/b.txt; echo; env | grep -c PATH=",
        0,
        "one\n1\n",
        "",
    );
    let sums = Command::new("sha256sum")
        .current_dir(b.rootfs())
        .args(["data/a.txt", "data/empty"])
        .output()
        .expect("host sha256sum");
    let expected = String::from_utf8_lossy(&sums.stdout).replace("data/", "/data/");
    check(
        &mut b,
        "sha256sum /data/a.txt /data/empty",
        0,
        &expected,
        "",
    );
}

#[test]
fn grep_sed_awk_find() {
    let mut b = fixture("true");
    check(&mut b, "grep -n an /data/a.txt", 0, "4:banana\n", "");
    check(&mut b, "grep -c p /data/a.txt", 0, "2\n", "");
    check(&mut b, "grep -q kiwi /data/a.txt", 1, "", "");
    check(&mut b, "grep -E '^(f|p)' /data/a.txt", 0, "pear\nfig\n", "");
    check(
        &mut b,
        "sed -n 's/p/P/gp' /data/a.txt",
        0,
        "Pear\naPPle\n",
        "",
    );
    check(&mut b, "sed '1d;3q' /data/a.txt", 0, "apple\nfig\n", "");
    check(
        &mut b,
        "awk '{n += NF} END {print n, NR}' /data/b.txt",
        0,
        "5 2\n",
        "",
    );
    check(
        &mut b,
        "awk -F' ' '{print $2}' /data/b.txt | sort",
        0,
        "five\ntwo\n",
        "",
    );
    check(
        &mut b,
        "seq 1 5 | awk '{s += $1 * $1} END {printf \"%d\\n\", s}'",
        0,
        "55\n",
        "",
    );
    check(
        &mut b,
        "find /data -type f | sort",
        0,
        "/data/a.txt\n/data/b.txt\n/data/empty\n",
        "",
    );
    check(&mut b, "find /data -empty", 0, "/data/empty\n", "");
    check(
        &mut b,
        "find /data -name '*.txt' | sort | xargs cat | wc -l",
        0,
        "6\n",
        "",
    );
    // GNU awk's own extensions, when the host has gawk.
    if Path::new("/usr/bin/gawk").exists() {
        check(
            &mut b,
            "gawk 'BEGIN { n = split(\"pear fig apple\", x); asort(x); print x[1], x[3], n }'",
            0,
            "apple pear 3\n",
            "",
        );
        check(
            &mut b,
            "gawk '{ w += NF; print toupper(substr($0, 1, 3)) } END { printf \"%d words\\n\", w }' /data/b.txt",
            0,
            "ONE\nFOU\n5 words\n",
            "",
        );
    }
}

#[test]
fn dash_pipelines_and_status() {
    let mut b = fixture("true");
    check(
        &mut b,
        "for i in 3 1 2; do echo $i; done | sort | xargs echo",
        0,
        "1 2 3\n",
        "",
    );
    check(
        &mut b,
        "x=$(grep -c a /data/a.txt); echo \"$x\"; exit 7",
        7,
        "3\n",
        "",
    );
    check(
        &mut b,
        "(echo out; echo err >&2) | sed s/out/OUT/",
        0,
        "OUT\n",
        "err\n",
    );
    check(&mut b, "/hbin/dash -c 'exit 3'; echo $?", 0, "3\n", "");
}

#[test]
fn pthreads() {
    let mut b = fixture("true");
    add_threads_program(&b.rootfs());
    check(
        &mut b,
        "threads",
        0,
        concat!(
            "timedwait: Connection timed out, signal 10 in thread 1\n",
            "total 500000 rets 60 pid is tid 1\n",
            "child\n",
            "child status 3\n",
        ),
        "",
    );
}
