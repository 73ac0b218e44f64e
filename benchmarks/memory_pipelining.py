"""
Server memory while a client pipelines and does not read (issue 17 #4).

Starts `twistd -n mailplat` (the code of the checkout this file is in) in a
temporary directory and, one case at a time, has one client send a flood of
pipelined commands without reading its answers; once neither the client's
sending nor the server's RSS moves any more, the client reads everything
and checks that every command was answered. Prints the growth of the
server's RSS (/proc/<pid>/status VmRSS, peak minus before) per case:

    smtp   12 MB of NOOP on the MX port, no login
    imap   FETCH 1 BODY.PEEK[] x120 of a 900 KB message
    pop3   RETR 1 x120 of the same message

    python benchmarks/memory_pipelining.py
    python benchmarks/memory_pipelining.py --noop-mb 12 --count 120 --size-kb 900

A server that stops reading while its answers wait stays within a few MB;
one that keeps reading buffers every answer.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
[server]
hostname = "bench.example.test"
state_dir = "{state}"

[domains]
local = ["example.test"]

[listen]
smtp = "tcp:port={smtp}:interface=127.0.0.1"
imap = "tcp:port={imap}:interface=127.0.0.1"
pop3 = "tcp:port={pop3}:interface=127.0.0.1"

[tls]
allow_plaintext_auth = true

[realm]
backend = "passwd-file"
path = "{state}/users"

[store]
backend = "maildir"
path = "{state}/mail/%d/%n"

[delivery]
local = "maildir"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_server(workdir, config, port):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "--logfile", os.path.join(workdir, "server.log"), "mailplat", "--config", config],
        cwd=workdir,
        env=env,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                sys.exit("server did not start; see " + os.path.join(workdir, "server.log"))
            time.sleep(0.1)


def stop_server(server):
    server.send_signal(2)
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()


def write_message(maildir, size):
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    line = b"x" * 78 + b"\r\n"
    data = b"From: bench@example.org\r\nSubject: big\r\n\r\n" + line * (size // len(line))
    key = f"1700000000.M1P1Q1.bench,S={len(data)},W={len(data)}"
    with open(os.path.join(maildir, "cur", key + ":2,S"), "wb") as f:
        f.write(data)
    return data


class Flood:
    """One connection: `prelude` logs in, then `data` is sent in 64 KB pieces without reading."""

    def __init__(self, port, prelude, data):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.sock.settimeout(600)
        self.sock.connect(("127.0.0.1", port))
        self.file = self.sock.makefile("rb", buffering=1 << 20)
        prelude(self)
        self.data = data
        self.sent = 0
        self.thread = threading.Thread(target=self._send, daemon=True)

    def start(self):
        self.thread.start()

    def _send(self):
        view = memoryview(self.data)
        try:
            while self.sent < len(view):
                self.sock.sendall(view[self.sent : self.sent + 65536])
                self.sent = min(self.sent + 65536, len(view))
        except OSError:
            pass

    def command(self, text, tag):
        self.sock.sendall(text)
        while True:
            line = self.file.readline()
            if not line or line.startswith(tag):
                return line

    def read_all(self):
        chunks = []
        while True:
            chunk = self.file.read1(1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def run_case(name, pid, port, prelude, data, check):
    flood = Flood(port, prelude, data)
    time.sleep(0.5)
    before = rss_mb(pid)  # logged in (and the folder selected): only the flood is measured
    peak = before
    start = time.perf_counter()
    flood.start()
    last, steady = None, 0
    # Until the client's sending and the server's RSS have stood still for 2 s.
    while steady < 40:
        time.sleep(0.05)
        rss = rss_mb(pid)
        peak = max(peak, rss)
        now = (flood.sent, rss)
        steady = steady + 1 if now == last else 0
        last = now
    stalled_at = flood.sent
    result = {}
    reader = threading.Thread(target=lambda: result.update(data=flood.read_all()), daemon=True)
    reader.start()
    while reader.is_alive():
        reader.join(0.02)
        peak = max(peak, rss_mb(pid))
    flood.thread.join(10)
    flood.sock.close()
    ok = check(result["data"])
    print(f"{name:5s} RSS {before:6.1f} MB before, peak {peak:6.1f} MB: growth {peak - before:6.1f} MB   "
          f"(client had sent {stalled_at / 2**20:6.2f} of {len(data) / 2**20:.2f} MB when it stalled; "
          f"{time.perf_counter() - start:5.1f} s; answers {'complete' if ok else 'WRONG'})")
    return peak - before, ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noop-mb", type=float, default=12)
    ap.add_argument("--count", type=int, default=120, help="FETCH and RETR commands")
    ap.add_argument("--size-kb", type=int, default=900, help="size of the message they fetch")
    ap.add_argument("--cases", default="smtp,imap,pop3")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="mailplat-bench-")
    state = os.path.join(workdir, "var")
    os.makedirs(state)
    with open(os.path.join(state, "users"), "w") as f:
        f.write("user@example.test:{PLAIN}pw\n")
    ports = {"smtp": free_port(), "imap": free_port(), "pop3": free_port()}
    config = os.path.join(workdir, "mailplat.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(state=state, **ports))
    message = write_message(os.path.join(state, "mail", "example.test", "user"), args.size_kb * 1024)
    count = args.count
    noops = int(args.noop_mb * 2**20) // 6

    def smtp_prelude(c):
        c.file.readline()

    def smtp_check(data):
        return data.count(b"250 2.0.0 OK\r\n") == noops and b"\r\n221 " in data

    def imap_prelude(c):
        c.file.readline()
        c.command(b"a LOGIN user@example.test pw\r\n", b"a ")
        c.command(b"b SELECT INBOX\r\n", b"b ")

    def imap_check(data):
        literal = b"BODY[] {%d}\r\n" % len(message) + message
        return data.count(literal) == count and data.count(b" OK FETCH completed") == count

    def pop3_prelude(c):
        c.file.readline()
        c.command(b"USER user@example.test\r\n", b"+OK")
        c.command(b"PASS pw\r\n", b"+OK")

    def pop3_check(data):
        return data.count(message[-2000:] + b".\r\n") == count

    cases = {
        "smtp": (ports["smtp"], smtp_prelude, b"NOOP\r\n" * noops + b"QUIT\r\n", smtp_check),
        "imap": (ports["imap"], imap_prelude,
                 b"".join(b"f%d FETCH 1 BODY.PEEK[]\r\n" % i for i in range(count)) + b"z LOGOUT\r\n", imap_check),
        "pop3": (ports["pop3"], pop3_prelude, b"RETR 1\r\n" * count + b"QUIT\r\n", pop3_check),
    }
    try:
        failed = False
        for name in args.cases.split(","):
            # A fresh server per case: what one case left behind is not the next one's baseline.
            server = start_server(workdir, config, ports["smtp"])
            try:
                _, ok = run_case(name, server.pid, *cases[name])
                failed = failed or not ok
            finally:
                stop_server(server)
        if failed:
            sys.exit("some answers were missing or wrong")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
