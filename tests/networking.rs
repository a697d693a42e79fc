//! Differential tests of sockets: TCP and UDP over IPv4 and IPv6 loopback,
//! unix sockets on path names and in the abstract namespace with
//! descriptor passing, and the servers and clients programs build on them
//! (python's http.server with urllib, asyncio streams, node's http). Each
//! runs in both `--isolation=container` (the host kernel in a network
//! namespace of its own) and `--isolation=microvm` (the guest's own
//! sockets) and must give the same stdout, stderr and exit status there,
//! and the expected ones. Every run is bounded (`timeout -k`).

use capsa_tests::*;
use serde_json::json;

const PYTHON: &str = "/usr/bin/python3";
const NODE: &str = "/usr/bin/node";
const JAVA: &str = "/usr/bin/java";
const JAVAC: &str = "/usr/bin/javac";

/// The longest one run may take before it is killed, in seconds.
const RUN_LIMIT_SECS: u32 = 60;

fn check(bundle: &TestBundle, what: &str, stdout: &str) {
    if let Err(problem) = both_modes_verdict(bundle, what, (0, stdout, ""), RUN_LIMIT_SECS) {
        panic!("{problem}");
    }
}

/// A busybox bundle with the host's `/usr`, a tmpfs `/tmp` as the working
/// directory, and the `/etc/hosts` a container engine would bind.
fn host_fixture(args: &[&str]) -> TestBundle {
    let mut bundle = TestBundle::busybox(args);
    bundle.bind_host_usr();
    let etc = bundle.rootfs().join("etc");
    std::fs::create_dir_all(&etc).expect("mkdir /etc");
    std::fs::write(
        etc.join("hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    .expect("write /etc/hosts");
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=64m"]
        }));
        c["process"]["env"] = json!(["PATH=/usr/bin:/bin", "LC_ALL=C", "HOME=/tmp"]);
        c["process"]["cwd"] = json!("/tmp");
    });
    bundle
}

fn require(program: &str) {
    assert!(
        std::path::Path::new(program).exists(),
        "{program} is missing: run scripts/install-deps.sh"
    );
}

fn python_fixture(script: &str) -> TestBundle {
    require(PYTHON);
    host_fixture(&[PYTHON, "-c", script])
}

/// Socket calls at the edges, in C: options and their defaults, a
/// non-blocking connect, accept4's flags, MSG_PEEK and FIONREAD, half-close
/// seen by epoll (EPOLLRDHUP) and poll, a reset by a close with data
/// unread, refused and unroutable connects, a dual-stack listener, UDP
/// truncation and the error of a datagram nobody received, seqpacket
/// boundaries and unix datagram errors.
const SOCKET_EDGES_C: &str = r#"#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int listener(int family, int type, struct sockaddr_storage *ss, socklen_t *len) {
    int s = socket(family, type, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *a = (void *)ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *len = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (void *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        *len = sizeof *a;
    }
    if (bind(s, (void *)ss, *len)) perror("bind");
    if (type == SOCK_STREAM && listen(s, 8)) perror("listen");
    getsockname(s, (void *)ss, len);
    return s;
}

static const char *err(int r) { return r < 0 ? strerror(errno) : "ok"; }

int main(void) {
    struct sockaddr_storage ss;
    socklen_t len;
    int l = listener(AF_INET, SOCK_STREAM, &ss, &len);
    int opt; socklen_t ol = sizeof opt;
    getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &opt, &ol); printf("acceptconn %d\n", opt);
    getsockopt(l, SOL_SOCKET, SO_TYPE, &opt, &ol); printf("type %d\n", opt);
    getsockopt(l, SOL_SOCKET, SO_REUSEADDR, &opt, &ol); printf("reuseaddr %d\n", opt);
    getsockopt(l, IPPROTO_TCP, TCP_NODELAY, &opt, &ol); printf("nodelay %d\n", opt);
    opt = 1; setsockopt(l, IPPROTO_TCP, TCP_NODELAY, &opt, sizeof opt);
    getsockopt(l, IPPROTO_TCP, TCP_NODELAY, &opt, &ol); printf("nodelay set %d\n", opt);
    opt = 1; setsockopt(l, SOL_SOCKET, SO_KEEPALIVE, &opt, sizeof opt);
    getsockopt(l, SOL_SOCKET, SO_KEEPALIVE, &opt, &ol); printf("keepalive %d\n", opt);
    opt = 4096; setsockopt(l, SOL_SOCKET, SO_RCVBUF, &opt, sizeof opt);
    getsockopt(l, SOL_SOCKET, SO_RCVBUF, &opt, &ol); printf("rcvbuf set 4096 -> %d\n", opt);
    /* a second listener on the same port */
    int l2 = socket(AF_INET, SOCK_STREAM, 0);
    printf("second bind: %s\n", err(bind(l2, (void *)&ss, len)));
    close(l2);

    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int r = connect(c, (void *)&ss, len);
    printf("nonblocking connect: %s\n", err(r));
    struct pollfd p = {c, POLLOUT, 0};
    poll(&p, 1, 1000); printf("connect poll revents %#x\n", p.revents);
    getsockopt(c, SOL_SOCKET, SO_ERROR, &opt, &ol); printf("so_error %d\n", opt);
    printf("connect again: %s\n", err(connect(c, (void *)&ss, len)));
    int a = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    printf("accepted flags nonblock=%d cloexec=%d\n", !!(fcntl(a, F_GETFL) & O_NONBLOCK), !!(fcntl(a, F_GETFD) & FD_CLOEXEC));
    getsockopt(a, SOL_SOCKET, SO_KEEPALIVE, &opt, &ol); printf("accepted inherits keepalive %d\n", opt);
    char buf[64];
    printf("empty recv: %s\n", err(recv(a, buf, sizeof buf, 0)));
    send(c, "hello", 5, 0);
    int n = recv(a, buf, 3, MSG_PEEK); printf("peek %d %.3s\n", n, buf);
    ioctl(a, FIONREAD, &opt); printf("fionread %d\n", opt);
    n = recv(a, buf, sizeof buf, 0); printf("recv %d %.5s\n", n, buf);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = a};
    epoll_ctl(ep, EPOLL_CTL_ADD, a, &ev);
    shutdown(c, SHUT_WR);
    n = epoll_wait(ep, &ev, 1, 1000); printf("epoll after peer SHUT_WR: %d %#x\n", n, ev.events);
    printf("recv after SHUT_WR: %d\n", (int)recv(a, buf, sizeof buf, 0));
    send(a, "back", 4, 0);
    n = recv(c, buf, sizeof buf, 0); printf("half-closed still receives: %d\n", n);
    close(a);
    p.fd = c; p.events = POLLIN | POLLOUT | POLLRDHUP; poll(&p, 1, 1000); printf("after peer close revents %#x\n", p.revents);
    printf("recv at eof: %d\n", (int)recv(c, buf, sizeof buf, 0));
    close(c);

    /* reset: close with unread data */
    c = socket(AF_INET, SOCK_STREAM, 0);
    connect(c, (void *)&ss, len);
    a = accept(l, NULL, NULL);
    send(c, "unread", 6, 0);
    /* wait until the data arrived */
    p.fd = a; p.events = POLLIN; poll(&p, 1, 1000);
    close(a);
    p.fd = c; p.events = POLLIN; poll(&p, 1, 1000); printf("after reset revents %#x\n", p.revents);
    printf("recv after reset: %s\n", err(recv(c, buf, sizeof buf, 0)));
    printf("send after reset: %s\n", err(send(c, "x", 1, MSG_NOSIGNAL)));
    close(c);

    /* refused */
    struct sockaddr_in dead = {.sin_family = AF_INET, .sin_port = htons(1), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    c = socket(AF_INET, SOCK_STREAM, 0);
    printf("blocking refused: %s\n", err(connect(c, (void *)&dead, sizeof dead)));
    close(c);
    struct sockaddr_in far = {.sin_family = AF_INET, .sin_port = htons(80), .sin_addr.s_addr = htonl(0x0a000001)};
    close(l);
    /* ipv6 dual stack */
    int l6 = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 any6 = {.sin6_family = AF_INET6};
    bind(l6, (void *)&any6, sizeof any6); listen(l6, 1);
    len = sizeof any6; getsockname(l6, (void *)&any6, &len);
    struct sockaddr_in to4 = {.sin_family = AF_INET, .sin_port = any6.sin6_port, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    c = socket(AF_INET, SOCK_STREAM, 0);
    printf("v4 to dual-stack: %s\n", err(connect(c, (void *)&to4, sizeof to4)));
    struct sockaddr_in6 peer; len = sizeof peer;
    a = accept(l6, (void *)&peer, &len);
    char text[64]; inet_ntop(AF_INET6, &peer.sin6_addr, text, sizeof text);
    printf("accepted v6 peer %s len %d\n", text, len);
    close(a); close(c); close(l6);
    /* udp */
    int u = listener(AF_INET, SOCK_DGRAM, &ss, &len);
    int v = socket(AF_INET, SOCK_DGRAM, 0);
    connect(v, (void *)&ss, len);
    send(v, "dgram1", 6, 0); send(v, "dgram22", 7, 0);
    struct sockaddr_in from; socklen_t fl = sizeof from;
    n = recvfrom(u, buf, 4, MSG_TRUNC, (void *)&from, &fl);
    printf("udp truncated %d from %s\n", n, inet_ntoa(from.sin_addr));
    n = recv(u, buf, sizeof buf, 0); printf("udp next %d\n", n);
    close(u);
    send(v, "nobody", 6, 0);
    /* the error of a lost datagram shows on a connected socket */
    p.fd = v; p.events = POLLIN; poll(&p, 1, 1000);
    printf("udp to closed port: revents %#x, recv %s\n", p.revents, err(recv(v, buf, sizeof buf, MSG_DONTWAIT)));
    close(v);
    /* unix stream with shutdown and seqpacket boundaries */
    int sp[2];
    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp);
    send(sp[0], "one", 3, 0); send(sp[0], "two!", 4, 0);
    n = recv(sp[1], buf, sizeof buf, 0); printf("seqpacket %d\n", n);
    n = recv(sp[1], buf, sizeof buf, 0); printf("seqpacket %d\n", n);
    close(sp[0]);
    printf("seqpacket eof %d\n", (int)recv(sp[1], buf, sizeof buf, 0));
    close(sp[1]);
    int d = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    strcpy(un.sun_path, "/tmp/nobody.sock");
    printf("unix dgram to missing path: %s\n", err(sendto(d, "x", 1, 0, (void *)&un, sizeof un)));
    bind(d, (void *)&un, sizeof un);
    printf("bind twice: %s\n", err(bind(socket(AF_UNIX, SOCK_DGRAM, 0), (void *)&un, sizeof un)));
    close(d);
    printf("to a closed socket's path: %s\n", err(sendto(socket(AF_UNIX, SOCK_DGRAM, 0), "x", 1, 0, (void *)&un, sizeof un)));
    int s2 = socket(AF_UNIX, SOCK_STREAM, 0);
    printf("stream connect to dgram path: %s\n", err(connect(s2, (void *)&un, sizeof un)));
    printf("no route: %s\n", err(connect(socket(AF_INET, SOCK_STREAM, 0), (void *)&far, sizeof far)));
    printf("bind foreign address: %s\n", err(bind(socket(AF_INET, SOCK_STREAM, 0), (void *)&far, sizeof far)));
    printf("inet socketpair: %s\n", err(socketpair(AF_INET, SOCK_STREAM, 0, sp)));
    int ul = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un us = {.sun_family = AF_UNIX};
    strcpy(us.sun_path, "/tmp/stream.sock");
    bind(ul, (void *)&us, sizeof us);
    listen(ul, 1);
    int uc = socket(AF_UNIX, SOCK_STREAM, 0);
    connect(uc, (void *)&us, sizeof us);
    socklen_t ulen = sizeof us;
    printf("unix accept without an address buffer: %s\n", err(accept(ul, NULL, &ulen)));
    return 0;
}
"#;

#[test]
fn socket_calls_at_their_edges_as_on_linux() {
    let mut bundle = busybox_c_program("sockedges", SOCKET_EDGES_C, &["-static", "-O2", "-Wall"]);
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=1m"]
        }));
    });
    check(&bundle, "socket calls at their edges", EXPECTED_EDGES);
}

const EXPECTED_EDGES: &str = "acceptconn 1\n\
type 1\n\
reuseaddr 1\n\
nodelay 0\n\
nodelay set 1\n\
keepalive 1\n\
rcvbuf set 4096 -> 8192\n\
second bind: Address already in use\n\
nonblocking connect: Operation now in progress\n\
connect poll revents 0x4\n\
so_error 0\n\
connect again: ok\n\
accepted flags nonblock=1 cloexec=1\n\
accepted inherits keepalive 1\n\
empty recv: Resource temporarily unavailable\n\
peek 3 hel\n\
fionread 5\n\
recv 5 hello\n\
epoll after peer SHUT_WR: 1 0x2001\n\
recv after SHUT_WR: 0\n\
half-closed still receives: 4\n\
after peer close revents 0x2015\n\
recv at eof: 0\n\
after reset revents 0x19\n\
recv after reset: Connection reset by peer\n\
send after reset: Broken pipe\n\
blocking refused: Connection refused\n\
v4 to dual-stack: ok\n\
accepted v6 peer ::ffff:127.0.0.1 len 28\n\
udp truncated 6 from 127.0.0.1\n\
udp next 7\n\
udp to closed port: revents 0x8, recv Connection refused\n\
seqpacket 3\n\
seqpacket 4\n\
seqpacket eof 0\n\
unix dgram to missing path: No such file or directory\n\
bind twice: Address already in use\n\
to a closed socket's path: Connection refused\n\
stream connect to dgram path: Connection refused\n\
no route: Network is unreachable\n\
bind foreign address: Cannot assign requested address\n\
inet socketpair: Operation not supported\n\
unix accept without an address buffer: ok\n\
";

/// TCP echo over loopback with 5 B, 70 kB and 300 kB messages (more than
/// a socket buffer holds), UDP over IPv6 loopback, a refused non-blocking
/// connect, a named unix socket passing a pipe's descriptor (SCM_RIGHTS)
/// with SO_PEERCRED, and an abstract datagram socket.
const LOOPBACK_PY: &str = r#"import socket, os, threading
# TCP echo over loopback
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', 0)); srv.listen()
port = srv.getsockname()[1]
def serve():
    c, a = srv.accept()
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
t = threading.Thread(target=serve); t.start()
cl = socket.create_connection(('127.0.0.1', port))
for n in (5, 70000, 300000):
    msg = os.urandom(n)
    def send(): cl.sendall(msg)
    s = threading.Thread(target=send); s.start()
    got = b''
    while len(got) < n: got += cl.recv(65536)
    s.join()
    print(n, got == msg)
print('peer', cl.getpeername()[0], cl.getsockname()[0])
cl.shutdown(socket.SHUT_WR); print('eof', cl.recv(10)); cl.close(); t.join()
# UDP v6
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(('::1', 0))
v = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
v.sendto(b'hi6', u.getsockname())
d, a = u.recvfrom(100); print('udp6', d, a[0])
# refused
r = socket.socket(); r.setblocking(False)
print('connect_ex', r.connect_ex(('127.0.0.1', 1)))
import select
print('select', [len(x) for x in select.select([], [r], [], 1)])
print('so_error', r.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
# unix path + SCM_RIGHTS
p = '/tmp/sock'
us = socket.socket(socket.AF_UNIX); us.bind(p); us.listen()
uc = socket.socket(socket.AF_UNIX); uc.connect(p)
ua, _ = us.accept()
rfd, wfd = os.pipe()
socket.send_fds(uc, [b'x'], [wfd])
msg, fds, flags, addr = socket.recv_fds(ua, 10, 4)
os.write(fds[0], b'through passed fd'); print(os.read(rfd, 100), msg)
print('stat', oct(os.stat(p).st_mode))
print('peercred', ua.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12) == __import__('struct').pack('3i', os.getpid(), os.getuid(), os.getgid()))
# abstract dgram
a1 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); a1.bind('\0capsa-abs')
a2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); a2.sendto(b'abs', '\0capsa-abs')
print('abstract', a1.recvfrom(10))
"#;

#[test]
fn tcp_udp_and_unix_sockets_over_loopback() {
    check(
        &python_fixture(LOOPBACK_PY),
        "TCP, UDP and unix sockets over loopback",
        "5 True\n70000 True\n300000 True\npeer 127.0.0.1 127.0.0.1\neof b''\n\
         udp6 b'hi6' ::1\nconnect_ex 115\nselect [0, 1, 0]\nso_error 111\n\
         b'through passed fd' b'x'\nstat 0o140755\npeercred True\nabstract (b'abs', None)\n",
    );
}

/// python's ThreadingHTTPServer answering urllib by address and by name
/// (/etc/hosts), and asyncio streams over TCP and a unix socket.
const HTTP_AND_ASYNCIO_PY: &str = r#"import threading, urllib.request, asyncio, socket
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('hello ' + self.path).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
srv = ThreadingHTTPServer(('127.0.0.1', 0), H)
t = threading.Thread(target=srv.serve_forever); t.start()
for i in range(3):
    with urllib.request.urlopen(f'http://127.0.0.1:{srv.server_port}/x{i}') as r:
        print(r.status, r.read())
with urllib.request.urlopen(f'http://localhost:{srv.server_port}/local') as r:
    print(r.status, r.read())
srv.shutdown(); t.join(); srv.server_close()
async def main():
    async def handle(r, w):
        data = await r.readline()
        w.write(data.upper()); await w.drain(); w.close()
    s = await asyncio.start_server(handle, '127.0.0.1', 0)
    port = s.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection('127.0.0.1', port)
    w.write(b'asyncio line\n'); await w.drain()
    print(await r.readline()); w.close()
    s.close(); await s.wait_closed()
    # unix server in asyncio
    s2 = await asyncio.start_unix_server(handle, '/tmp/a.sock')
    r, w = await asyncio.open_unix_connection('/tmp/a.sock')
    w.write(b'unix line\n'); await w.drain(); print(await r.readline()); w.close()
    s2.close(); await s2.wait_closed()
asyncio.run(main())
"#;

#[test]
fn python_http_server_urllib_and_asyncio_streams() {
    check(
        &python_fixture(HTTP_AND_ASYNCIO_PY),
        "python http.server, urllib and asyncio",
        "200 b'hello /x0'\n200 b'hello /x1'\n200 b'hello /x2'\n200 b'hello /local'\n\
         b'ASYNCIO LINE\\n'\nb'UNIX LINE\\n'\n",
    );
}

/// node's http server on the dual-stack wildcard, and its client by IPv4,
/// IPv6 and name, one request after another.
const NODE_HTTP_JS: &str = r#"'use strict';
const http = require('http');
const get = (host, port) => new Promise((resolve, reject) => {
  http.get({ host, port, path: '/p' }, (res) => {
    let body = '';
    res.on('data', (d) => { body += d; });
    res.on('end', () => resolve(`${host} ${res.statusCode} ${body}`));
  }).on('error', reject);
});
const srv = http.createServer((req, res) => res.end(`node says ${req.url}`));
srv.listen(0, async () => {
  const { port, family } = srv.address();
  console.log(family);
  for (const host of ['127.0.0.1', '::1', 'localhost']) console.log(await get(host, port));
  srv.close();
});
"#;

#[test]
fn node_http_server_and_client() {
    require(NODE);
    check(
        &host_fixture(&[NODE, "-e", NODE_HTTP_JS]),
        "node http",
        "IPv6\n127.0.0.1 200 node says /p\n::1 200 node says /p\nlocalhost 200 node says /p\n",
    );
}

/// A Go (current toolchain) net/http server answering 16 concurrent
/// clients, UDP over IPv6, a refused dial and a unix socket echo: Go's
/// runtime polls every socket with edge-triggered epoll.
const GO_NET: &str = r#"package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "go says %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	url := "http://" + ln.Addr().String()
	var wg sync.WaitGroup
	results := make([]string, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			resp, err := http.Get(fmt.Sprintf("%s/r%d", url, i))
			if err != nil {
				results[i] = err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			results[i] = fmt.Sprintf("%d %s", resp.StatusCode, b)
		}(i)
	}
	wg.Wait()
	for _, r := range results {
		fmt.Println(r)
	}
	u, _ := net.ListenPacket("udp6", "[::1]:0")
	c, _ := net.Dial("udp6", u.LocalAddr().String())
	c.Write([]byte("udp over v6"))
	buf := make([]byte, 64)
	n, from, _ := u.ReadFrom(buf)
	fmt.Println(string(buf[:n]), from.(*net.UDPAddr).IP)
	_, err = net.Dial("tcp", "127.0.0.1:1")
	fmt.Println("refused:", err != nil)
	us, _ := net.Listen("unix", "/tmp/go.sock")
	go func() { conn, _ := us.Accept(); io.Copy(conn, conn); conn.Close() }()
	uc, _ := net.Dial("unix", "/tmp/go.sock")
	uc.Write([]byte("unix echo"))
	n, _ = uc.Read(buf)
	fmt.Println(string(buf[:n]))
}
"#;

#[test]
fn go_net_http_server_and_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = build_go(dir.path(), "gonet", GO_NET);
    let mut bundle = host_fixture(&["/bin/gonet"]);
    std::fs::copy(&binary, bundle.rootfs().join("bin/gonet")).expect("copy the program");
    bundle.edit(|c| c["process"]["env"] = json!(["PATH=/bin", "HOME=/tmp"]));
    let mut expected: String = (0..16).map(|i| format!("200 go says /r{i}\n")).collect();
    expected.push_str("udp over v6 ::1\nrefused: true\nunix echo\n");
    check(&bundle, "Go net/http", &expected);
}

/// The JDK's HttpServer answering its HttpClient over loopback.
const JAVA_NET: &str = r#"import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
public class Net {
    public static void main(String[] args) throws Exception {
        HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
        s.createContext("/", ex -> {
            byte[] body = ("java says " + ex.getRequestURI().getPath()).getBytes();
            ex.sendResponseHeaders(200, body.length);
            ex.getResponseBody().write(body);
            ex.close();
        });
        s.start();
        HttpClient c = HttpClient.newHttpClient();
        for (int i = 0; i < 3; i++) {
            HttpResponse<String> r = c.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + s.getAddress().getPort() + "/j" + i)).build(), HttpResponse.BodyHandlers.ofString());
            System.out.println(r.statusCode() + " " + r.body());
        }
        s.stop(0);
    }
}
"#;

#[test]
fn java_http_server_and_client() {
    require(JAVAC);
    let classes = tempfile::tempdir().expect("tempdir");
    std::fs::write(classes.path().join("Net.java"), JAVA_NET).expect("write Net.java");
    let out = std::process::Command::new("timeout")
        .args(["-k", "10", "300", JAVAC, "-d", "."])
        .arg("Net.java")
        .current_dir(classes.path())
        .output()
        .expect("run javac");
    assert!(out.status.success(), "javac failed: {}", show(&out));
    let mut bundle = host_fixture(&[JAVA, "-Xmx128m", "-XX:+UseSerialGC", "-cp", "/app", "Net"]);
    // /usr/bin/java links through /etc/alternatives, and the JDK's
    // lib/jvm.cfg and conf/ files link into /etc/java-17-openjdk.
    bundle.edit(|c| {
        let mounts = c["mounts"].as_array_mut().expect("mounts");
        for dir in ["/etc/alternatives", "/etc/java-17-openjdk"] {
            mounts.push(json!({
                "destination": dir, "type": "bind", "source": dir, "options": ["rbind", "ro"]
            }));
        }
    });
    let app = bundle.rootfs().join("app");
    std::fs::create_dir_all(&app).expect("mkdir /app");
    std::fs::copy(classes.path().join("Net.class"), app.join("Net.class")).expect("copy the class");
    check(
        &bundle,
        "Java HttpServer and HttpClient",
        "200 java says /j0\n200 java says /j1\n200 java says /j2\n",
    );
}

/// Route netlink: the interfaces and addresses of a namespace with only
/// loopback, as glibc (if_nameindex, getaddrinfo with AI_ADDRCONFIG) and
/// a raw dump see them.
const NETLINK_PY: &str = r#"
import socket, struct
print(socket.if_nameindex())
print(sorted({a[4][0] for a in socket.getaddrinfo('localhost', 80, flags=socket.AI_ADDRCONFIG, type=socket.SOCK_STREAM)}))
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.bind((0, 0))
pid = s.getsockname()[0]
# RTM_GETADDR dump of all families
s.send(struct.pack('=LHHLLB3x', 20, 22, 0x301, 9, 0, 0))
kinds = []
while True:
    data, addr = s.recvfrom(65536)
    at = 0
    while at < len(data):
        length, kind, flags, seq, port = struct.unpack_from('=LHHLL', data, at)
        if kind == 20:
            family, prefix, _, scope, index = struct.unpack_from('=BBBBi', data, at + 16)
            kinds.append((family, prefix, scope, index, seq, port == pid))
        at += (length + 3) & ~3
    if kind == 3:
        break
print(addr, kinds)
"#;

#[test]
fn route_netlink_shows_loopback() {
    check(
        &python_fixture(NETLINK_PY),
        "route netlink",
        "[(1, 'lo')]\n['127.0.0.1']\n(0, 0) [(2, 8, 254, 1, 9, True), (10, 128, 254, 1, 9, True)]\n",
    );
}

/// iproute2's `ip` over route netlink: the same interface and addresses
/// as in a container's namespace with only loopback.
#[test]
fn ip_shows_loopback_as_in_a_namespace_of_its_own() {
    require("/usr/sbin/ip");
    check(
        &host_fixture(&["/bin/sh", "-c", "/usr/sbin/ip -o addr; /usr/sbin/ip link"]),
        "ip addr and ip link",
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
         1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever\n\
         1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue qlen 1000\n    \
         link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n",
    );
}

/// The instance in a namespace with an interface (a veth to the host, as
/// a bridge network gives): it listens on the wildcard, connects out to a
/// host server through the interface, then serves the host's request.
const VETH_PY: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
print(sorted(name for _, name in socket.if_nameindex()))
srv = socket.socket()
srv.bind(('0.0.0.0', 8000))
srv.listen(4)
c = socket.create_connection((host, port), timeout=30)
print(c.recv(100).decode())
c.sendall(b'listening')
c.close()
srv.settimeout(30)
conn, peer = srv.accept()
print('client', peer[0])
data = b''
while not data.endswith(b'?'):
    chunk = conn.recv(65536)
    assert chunk, 'early end'
    data += chunk
print('request', len(data))
conn.sendall(b'x' * 300000)
conn.close()
"#;

/// The host's side of VETH_PY: greets the instance, then sends 70 kB to
/// its server and returns how much came back.
fn veth_host_side(ns: &VethNamespace) -> (u16, std::thread::JoinHandle<usize>) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let limit = std::time::Duration::from_secs(u64::from(RUN_LIMIT_SECS));
    let listener = TcpListener::bind((ns.host_addr(), 0)).expect("host listener");
    let port = listener.local_addr().expect("port").port();
    let guest: std::net::SocketAddr = format!("{}:8000", ns.guest_addr()).parse().expect("addr");
    let host = std::thread::spawn(move || {
        // A bounded accept: an instance that never connects fails the test.
        listener.set_nonblocking(true).expect("non-blocking");
        let deadline = std::time::Instant::now() + limit;
        let (mut from_guest, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the instance never connected"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        from_guest.set_nonblocking(false).expect("blocking");
        from_guest.set_read_timeout(Some(limit)).expect("timeout");
        from_guest
            .write_all(format!("hello {}", peer.ip()).as_bytes())
            .expect("greet");
        let mut said = String::new();
        from_guest.read_to_string(&mut said).expect("read");
        assert_eq!(said, "listening");
        let mut to_guest = TcpStream::connect_timeout(&guest, limit).expect("connect");
        to_guest.set_read_timeout(Some(limit)).expect("timeout");
        let mut request = vec![b'r'; 70_000];
        request.push(b'?');
        to_guest.write_all(&request).expect("send");
        let mut reply = Vec::new();
        to_guest.read_to_end(&mut reply).expect("reply");
        reply.len()
    });
    (port, host)
}

/// A bundle joining a namespace by path (what podman, CNI and CRI pods
/// hand over) reaches the host and is reached from it through the
/// namespace's interface, in both modes alike: in a microVM the guest has
/// taken the interface's place (its address, MAC and routes).
#[test]
fn the_namespace_s_interface_carries_traffic_both_ways() {
    require(PYTHON);
    let subnet = 100 + (std::process::id() % 100) as u8;
    let capsa = Capsa::new();
    let [container, microvm] = ["container", "microvm"].map(|mode| {
        let ns = VethNamespace::new(subnet);
        let (port, host) = veth_host_side(&ns);
        let mut bundle = host_fixture(&[PYTHON, "-c", VETH_PY, &ns.host_addr(), &port.to_string()]);
        ns.join(&mut bundle);
        let out = capsa.bounded_run(&bundle, mode, RUN_LIMIT_SECS);
        assert!(out.status.success(), "{mode}: {}", show(&out));
        assert_eq!(host.join().expect("host side"), 300_000, "{mode}");
        // The namespace has its interface back: no TAP, no redirect.
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(["-n", &ns.name])
                .args(args)
                .output()
                .expect("ip");
            stdout(&out)
        };
        assert!(
            !ip(&["-o", "link"]).lines().any(|l| l.contains(": capsa")),
            "{mode}: a TAP is left"
        );
        let qdiscs = std::process::Command::new("tc")
            .args(["-n", &ns.name, "qdisc", "show", "dev", "eth0"])
            .output()
            .expect("tc");
        assert!(
            !stdout(&qdiscs).contains("ingress"),
            "{mode}: a redirect is left"
        );
        out
    });
    assert_eq!(show(&container), show(&microvm), "the modes differ");
    assert_eq!(
        stdout(&microvm),
        format!(
            "['eth0', 'lo']\nhello 10.213.{subnet}.2\nclient 10.213.{subnet}.1\nrequest 70001\n"
        )
    );
}

/// Two microVMs in one namespace, as a pod's sandbox and its container: each
/// has a TAP of its own, the later one takes the interface over, and
/// deleting them gives the namespace its interface back.
#[test]
fn a_second_microvm_in_a_namespace_takes_the_interface_over() {
    require(PYTHON);
    let subnet = 100 + ((std::process::id() + 50) % 100) as u8;
    let ns = VethNamespace::new(subnet);
    let capsa = Capsa::new();
    let mut sandbox = TestBundle::busybox(&["sleep", "120"]);
    ns.join(&mut sandbox);
    let sandbox_id = unique_id("sandbox");
    let out = capsa.create(&sandbox, &["--isolation", "microvm"], &sandbox_id);
    assert!(out.status.success(), "create the sandbox: {}", show(&out));
    let out = capsa.output(&["start", &sandbox_id]);
    assert!(out.status.success(), "start the sandbox: {}", show(&out));

    let (port, host) = veth_host_side(&ns);
    let mut bundle = host_fixture(&[PYTHON, "-c", VETH_PY, &ns.host_addr(), &port.to_string()]);
    ns.join(&mut bundle);
    let out = capsa.bounded_run(&bundle, "microvm", RUN_LIMIT_SECS);
    let sandbox_left = capsa.output(&["delete", "--force", &sandbox_id]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(host.join().expect("host side"), 300_000);
    assert!(sandbox_left.status.success(), "{}", show(&sandbox_left));
    capsa.assert_nothing_left(&sandbox_id);
    let links = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-o", "link"])
        .output()
        .expect("ip");
    assert!(
        !stdout(&links).lines().any(|l| l.contains(": capsa")),
        "a TAP is left: {}",
        stdout(&links)
    );
    let qdiscs = std::process::Command::new("tc")
        .args(["-n", &ns.name, "qdisc", "show", "dev", "eth0"])
        .output()
        .expect("tc");
    assert!(!stdout(&qdiscs).contains("ingress"), "a redirect is left");
}
