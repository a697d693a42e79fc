//! Differential tests of preemption: tasks that compute without system
//! calls must not starve the others, and timers and signals must reach
//! them. Each runs in both `--isolation=container` and
//! `--isolation=microvm` (where the VMM's timer tick preempts the guest)
//! and must give the same stdout, stderr and exit status, and the expected
//! ones. Every run is bounded (`timeout -k`): a microVM that cannot preempt
//! hangs in each of these, and fails the test instead of stalling it.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use capsa_tests::*;

const PYTHON: &str = "/usr/bin/python3";

/// The longest one run may take before it is killed, in seconds.
const RUN_LIMIT_SECS: u32 = 60;

fn check(bundle: &TestBundle, what: &str, stdout: &str) {
    if let Err(problem) = both_modes_verdict(bundle, what, (0, stdout, ""), RUN_LIMIT_SECS) {
        panic!("{problem}");
    }
}

/// A busybox bundle running the static C program `source` as `/bin/<name>`.
fn c_fixture(name: &str, source: &str) -> TestBundle {
    busybox_c_program(
        name,
        source,
        &["-static", "-O2", "-pthread", "-Wall", "-Werror"],
    )
}

/// A busybox bundle with the host's `/usr` and python3 running `script`.
fn python_fixture(script: &str) -> TestBundle {
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/install-deps.sh"
    );
    let mut bundle = TestBundle::busybox(&[PYTHON, "-c", script]);
    bundle.bind_host_usr();
    bundle.edit(|c| {
        c["process"]["env"] = serde_json::json!(["PATH=/usr/bin:/bin", "LC_ALL=C"]);
    });
    bundle
}

/// A thread spins while main sleeps 50 ms (main must wake on time), a
/// pure loop runs until SIGALRM's handler stops it, and a parent SIGKILLs
/// a child that computes.
const STARVATION_C: &str = r#"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static volatile int stop;
static volatile unsigned long spins;
static void *spin(void *arg) { while (!stop) spins++; return arg; }
static void on_alarm(int sig) { (void)sig; stop = 1; }
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, spin, NULL);
    double start = now();
    struct timespec nap = {0, 50000000};
    nanosleep(&nap, NULL);
    /* On time: within a second, where a starved main waits for ever. */
    printf("main woke beside a spinning thread: %s\n", now() - start < 1.0 ? "yes" : "late");
    stop = 1;
    pthread_join(t, NULL);
    stop = 0;
    signal(SIGALRM, on_alarm);
    alarm(1);
    while (!stop) spins++;
    printf("SIGALRM stopped a loop without calls\n");
    pid_t child = fork();
    if (child == 0) {
        for (;;) spins++;
    }
    nanosleep(&nap, NULL);
    kill(child, SIGKILL);
    int status;
    waitpid(child, &status, 0);
    printf("a computing child died of signal %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return 0;
}
"#;

#[test]
fn computing_tasks_do_not_starve_sleepers_timers_or_signals() {
    let bundle = c_fixture("starve", STARVATION_C);
    check(
        &bundle,
        "a spinning thread, SIGALRM, SIGKILL of a computing child",
        "main woke beside a spinning thread: yes\n\
         SIGALRM stopped a loop without calls\n\
         a computing child died of signal 9\n",
    );
}

/// A POSIX timer (SIGEV_SIGNAL, SA_SIGINFO) interrupts a loop without
/// calls; sigtimedwait times out, then takes a signal sent to itself with
/// its siginfo; a periodic timer whose signal stays blocked overruns.
const TIMERS_C: &str = r#"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static volatile sig_atomic_t fired, value, code;
static void on_timer(int sig, siginfo_t *si, void *uc) {
    (void)sig; (void)uc;
    fired = 1; value = si->si_value.sival_int; code = si->si_code;
}
int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_timer;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGRTMIN, &sa, NULL);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN;
    ev.sigev_value.sival_int = 42;
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &ev, &t)) { perror("timer_create"); return 1; }
    struct itimerspec once = {{0, 0}, {0, 30000000}};
    timer_settime(t, 0, &once, NULL);
    unsigned long n = 0;
    while (!fired) n++;
    printf("a timer stopped a loop without calls: value %d, SI_TIMER %d\n", value, code == SI_TIMER);
    struct itimerspec left;
    timer_gettime(t, &left);
    printf("one-shot disarmed: %d\n", left.it_value.tv_sec == 0 && left.it_value.tv_nsec == 0);
    timer_delete(t);
    printf("deleted: %d\n", timer_gettime(t, &left) == -1 && errno == EINVAL);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    struct timespec wait = {0, 50000000};
    int r = sigtimedwait(&set, NULL, &wait);
    printf("sigtimedwait timed out: %d %s\n", r, strerror(errno));
    kill(getpid(), SIGUSR1);
    siginfo_t si;
    r = sigtimedwait(&set, &si, &wait);
    printf("sigtimedwait took signal %d from itself: %d, SI_USER %d\n", r, si.si_pid == getpid(), si.si_code == SI_USER);

    sigaddset(&set, SIGALRM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    if (timer_create(CLOCK_MONOTONIC, NULL, &t)) { perror("timer_create"); return 1; }
    struct itimerspec every = {{0, 5000000}, {0, 5000000}};
    timer_settime(t, 0, &every, NULL);
    struct timespec nap = {0, 60000000};
    nanosleep(&nap, NULL);
    r = sigwaitinfo(&set, &si);
    printf("a blocked periodic timer: signal %d, overran %d\n", r, timer_getoverrun(t) >= 3);
    return 0;
}
"#;

#[test]
fn posix_timers_and_sigtimedwait_as_on_linux() {
    let bundle = c_fixture("timers", TIMERS_C);
    check(
        &bundle,
        "POSIX timers and sigtimedwait",
        "a timer stopped a loop without calls: value 42, SI_TIMER 1\n\
         one-shot disarmed: 1\n\
         deleted: 1\n\
         sigtimedwait timed out: -1 Resource temporarily unavailable\n\
         sigtimedwait took signal 10 from itself: 1, SI_USER 1\n\
         a blocked periodic timer: signal 14, overran 1\n",
    );
}

#[test]
fn python_subprocess_timeout_of_a_computing_child() {
    let bundle = python_fixture(
        "import subprocess, sys\n\
         try:\n    subprocess.call([sys.executable, '-c', 'while True: pass'], timeout=0.5)\n\
         except subprocess.TimeoutExpired:\n    print('timed out as asked')\n",
    );
    check(&bundle, "subprocess timeout", "timed out as asked\n");
}

/// Four goroutines spin in loops without calls while main allocates
/// 200 MiB and forces a GC: the GC must stop them (Go preempts them with
/// SIGURG from its sysmon thread), and a timer must fire.
const SPIN_GO: &str = r#"package main

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
)

var sink []byte

func main() {
	var stop atomic.Bool
	for i := 0; i < 4; i++ {
		go func() {
			n := 0
			for !stop.Load() {
				n++
			}
			_ = n
		}()
	}
	for i := 0; i < 200; i++ {
		sink = make([]byte, 1<<20)
	}
	runtime.GC()
	<-time.NewTimer(20 * time.Millisecond).C
	stop.Store(true)
	fmt.Println("GC and a timer ran beside spinning goroutines")
}
"#;

#[test]
fn go_goroutines_spinning_through_a_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = build_go(dir.path(), "gospin", SPIN_GO);
    let bundle = TestBundle::busybox(&["/bin/gospin"]);
    std::fs::copy(&binary, bundle.rootfs().join("bin/gospin")).expect("copy the program");
    check(
        &bundle,
        "Go goroutines spinning through a GC",
        "GC and a timer ran beside spinning goroutines\n",
    );
}

/// `capsa kill ID TERM` reaches a python3 that computes without calls and
/// handles TERM: its handler runs and sets the exit status. The handler
/// writes with os.write: the TERM may arrive while print('computing') still
/// holds stdout's buffer (CPython runs handlers inside a buffered flush),
/// where a print of its own would fail as a reentrant call.
#[test]
fn capsa_kill_term_reaches_a_computing_process() {
    let bundle = python_fixture(
        "import os, signal, sys\n\
         def handler(sig, frame):\n    os.write(1, b'TERM handled\\n')\n    sys.exit(3)\n\
         signal.signal(signal.SIGTERM, handler)\n\
         print('computing', flush=True)\n\
         n = 0\n\
         while True:\n    n += 1\n",
    );
    let capsa = Capsa::new();
    for mode in ["container", "microvm"] {
        let id = unique_id(mode);
        let mut child = capsa
            .bounded_run_command(&bundle, mode, &id, RUN_LIMIT_SECS)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn capsa run");
        // The first line says the process computes; reading it waits at
        // most as long as the run's bound (then the pipe closes).
        let mut out = BufReader::new(child.stdout.take().expect("stdout pipe"));
        let mut first = String::new();
        out.read_line(&mut first).expect("read stdout");
        assert_eq!(first, "computing\n", "{mode}: never started computing");
        let kill = capsa.output(&["kill", &id, "TERM"]);
        assert!(kill.status.success(), "{mode}: kill: {}", stderr(&kill));
        let mut rest = String::new();
        out.read_to_string(&mut rest).expect("read stdout");
        let status = child.wait().expect("wait capsa run");
        assert_eq!(
            (status.code(), rest.as_str()),
            (Some(3), "TERM handled\n"),
            "{mode}"
        );
        capsa.assert_nothing_left(&id);
    }
}

/// Three processes hold distinct patterns in all 16 YMM registers across
/// spins the timer tick preempts, and check every lane afterwards: the
/// guest must save and restore the vector state a task holds (the CPU's
/// AVX is visible to programs in a microVM as in a container).
const VECTOR_STATE_C: &str = r#"#include <cpuid.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
/* Holds a pattern in all 16 YMM registers across a spin long enough for
   the scheduler to run other tasks meanwhile, then checks every lane. */
static int round_ok(uint32_t pattern, long spin) {
    uint32_t out[16][8];
    __asm__ volatile(
        "vmovd %[p], %%xmm0\n\t"
        "vpbroadcastd %%xmm0, %%ymm0\n\t"
        "vmovdqa %%ymm0, %%ymm1\n\t vmovdqa %%ymm0, %%ymm2\n\t vmovdqa %%ymm0, %%ymm3\n\t"
        "vmovdqa %%ymm0, %%ymm4\n\t vmovdqa %%ymm0, %%ymm5\n\t vmovdqa %%ymm0, %%ymm6\n\t"
        "vmovdqa %%ymm0, %%ymm7\n\t vmovdqa %%ymm0, %%ymm8\n\t vmovdqa %%ymm0, %%ymm9\n\t"
        "vmovdqa %%ymm0, %%ymm10\n\t vmovdqa %%ymm0, %%ymm11\n\t vmovdqa %%ymm0, %%ymm12\n\t"
        "vmovdqa %%ymm0, %%ymm13\n\t vmovdqa %%ymm0, %%ymm14\n\t vmovdqa %%ymm0, %%ymm15\n\t"
        "1: dec %[n]\n\t jnz 1b\n\t"
        "vmovdqu %%ymm0, 0(%[o])\n\t vmovdqu %%ymm1, 32(%[o])\n\t vmovdqu %%ymm2, 64(%[o])\n\t"
        "vmovdqu %%ymm3, 96(%[o])\n\t vmovdqu %%ymm4, 128(%[o])\n\t vmovdqu %%ymm5, 160(%[o])\n\t"
        "vmovdqu %%ymm6, 192(%[o])\n\t vmovdqu %%ymm7, 224(%[o])\n\t vmovdqu %%ymm8, 256(%[o])\n\t"
        "vmovdqu %%ymm9, 288(%[o])\n\t vmovdqu %%ymm10, 320(%[o])\n\t vmovdqu %%ymm11, 352(%[o])\n\t"
        "vmovdqu %%ymm12, 384(%[o])\n\t vmovdqu %%ymm13, 416(%[o])\n\t vmovdqu %%ymm14, 448(%[o])\n\t"
        "vmovdqu %%ymm15, 480(%[o])\n\t vzeroupper"
        : [n] "+r"(spin)
        : [p] "r"(pattern), [o] "r"(out)
        : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    for (int r = 0; r < 16; r++)
        for (int l = 0; l < 8; l++)
            if (out[r][l] != pattern) return 0;
    return 1;
}
int main(void) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    __get_cpuid_count(7, 0, &a, &b, &c, &d);
    int avx2 = (b >> 5) & 1;
    __get_cpuid(1, &a, &b, &c, &d);
    if (!avx2 || !((c >> 27) & 1)) { puts("vector registers kept: yes"); return 0; }
    int bad = 0;
    for (int k = 0; k < 3; k++) {
        if (fork() == 0) {
            struct timespec t0, t;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            uint32_t pattern = 0x01010101u * (k + 1);
            int fails = 0;
            do {
                fails += !round_ok(pattern, 20000000);
                clock_gettime(CLOCK_MONOTONIC, &t);
            } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < 400);
            _exit(fails != 0);
        }
    }
    for (int k = 0; k < 3; k++) {
        int status;
        wait(&status);
        bad |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    }
    printf("vector registers kept: %s\n", bad ? "no" : "yes");
    return 0;
}
"#;

#[test]
fn preempted_tasks_keep_their_vector_registers() {
    let bundle = busybox_c_program(
        "vectors",
        VECTOR_STATE_C,
        &["-static", "-O2", "-mavx2", "-Wall", "-Werror"],
    );
    check(
        &bundle,
        "vector registers across preemption",
        "vector registers kept: yes\n",
    );
}
