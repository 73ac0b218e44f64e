"""
Relay throughput, end to end: submission on instance A, through A's relay
queue (static route, outbound SMTP), into the maildir of instance B.

Starts two `twistd -n mailplat` processes in a temporary directory, sends
N messages (4 KB) over C parallel submission connections (STARTTLS + AUTH,
many messages per connection), and watches B's maildir. Prints messages/s
(first submission to last arrival) and the time from A's 250 to the file
appearing in B's maildir (median, p99; polled every 5 ms).

    python benchmarks/relay.py                 # 1000 msgs, 10 conns
    python benchmarks/relay.py -n 3000 -c 20
"""

import argparse
import os
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

A_CONFIG = """
[server]
hostname = "a.example.test"
state_dir = "{state}"
[domains]
local = ["example.test"]
[listen]
submission = "tcp:port={port}:interface=127.0.0.1"
[realm]
backend = "passwd-file"
path = "{state}/users"
[relay]
connections_per_destination = {per_dest}
[relay.routes]
"example.org" = "127.0.0.1:{route}"
"""

B_CONFIG = """
[server]
hostname = "b.example.org"
state_dir = "{state}"
[domains]
local = ["example.org"]
[listen]
smtp = "tcp:port={port}:interface=127.0.0.1"
[realm]
backend = "passwd-file"
path = "{state}/users"
"""

TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def message(i, size=4096):
    head = (
        f"From: alice@example.test\r\nTo: user{i % 10}@example.org\r\n"
        f"Subject: message {i}\r\nX-Bench-Id: {i}\r\n\r\n"
    )
    line = "x" * 76 + "\r\n"
    return (head + line * max(1, (size - len(head)) // len(line))).encode()


def start(directory, config, users, profile=None):
    os.makedirs(os.path.join(directory, "var"), exist_ok=True)
    with open(os.path.join(directory, "var", "users"), "w") as f:
        f.write(users)
    path = os.path.join(directory, "mailplat.toml")
    with open(path, "w") as f:
        f.write(config)
    log = open(os.path.join(directory, "twistd.log"), "wb")
    extra = ["--profile", os.path.abspath(profile), "--profiler", "cprofile", "--savestats"] if profile else []
    return subprocess.Popen(
        TWISTD + ["-n", "--pidfile="] + extra + ["mailplat", "--config", path],
        cwd=directory, stdout=log, stderr=subprocess.STDOUT,
    )


def sender(port, jobs, accepted, lock):
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.starttls(context=ctx)
        s.login("alice@example.test", "pw")
        while True:
            with lock:
                if not jobs:
                    return
                i = jobs.pop()
            s.sendmail("alice@example.test", [f"user{i % 10}@example.org"], message(i))
            accepted[i] = time.monotonic()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=1000, help="messages")
    p.add_argument("-c", type=int, default=10, help="parallel submission connections")
    p.add_argument("--per-destination", type=int, default=10, help="[relay] connections_per_destination")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--profile", metavar="FILE", help="run instance A under cProfile, stats to FILE")
    args = p.parse_args()

    root = tempfile.mkdtemp(prefix="mailplat-relay-bench-")
    a_dir, b_dir = os.path.join(root, "a"), os.path.join(root, "b")
    a_port, b_port = free_port(), free_port()
    b = start(b_dir, B_CONFIG.format(state=os.path.join(b_dir, "var"), port=b_port),
              "".join(f"user{i}@example.org:{{PLAIN}}pw\n" for i in range(10)))
    a = start(a_dir, A_CONFIG.format(state=os.path.join(a_dir, "var"), port=a_port, route=b_port, per_dest=args.per_destination),
              "alice@example.test:{PLAIN}pw\n", profile=args.profile)
    try:
        wait_port(a_port)
        wait_port(b_port)
        jobs = list(range(args.n))[::-1]
        accepted, arrived, lock = {}, {}, threading.Lock()
        maildirs = [os.path.join(b_dir, "var", "mail", "example.org", f"user{i}", "new") for i in range(10)]
        seen = set()
        started = time.monotonic()
        threads = [threading.Thread(target=sender, args=(a_port, jobs, accepted, lock)) for _ in range(args.c)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 300
        while len(arrived) < args.n and time.monotonic() < deadline:
            now = time.monotonic()
            for d in maildirs:
                try:
                    names = os.listdir(d)
                except FileNotFoundError:
                    continue
                for name in names:
                    if name in seen:
                        continue
                    seen.add(name)
                    with open(os.path.join(d, name), "rb") as f:
                        head = f.read(2048)
                    i = int(head.split(b"X-Bench-Id: ", 1)[1].split(b"\n", 1)[0])
                    arrived[i] = now
            time.sleep(0.005)
        for t in threads:
            t.join()
        if len(arrived) < args.n:
            raise SystemExit(f"only {len(arrived)} of {args.n} messages arrived")
        elapsed = max(arrived.values()) - started
        latency = sorted(arrived[i] - accepted[i] for i in arrived)
        p99 = latency[min(len(latency) - 1, int(len(latency) * 0.99))]
        print(f"messages            {args.n} x 4 KB, {args.c} submission connections, "
              f"{args.per_destination} relay connections")
        print(f"throughput          {args.n / elapsed:.0f} messages/s (submission on A -> maildir on B)")
        print(f"accept -> delivery  median {statistics.median(latency) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    finally:
        for proc in (a, b):
            proc.send_signal(2)  # SIGINT: a clean reactor stop, so --profile saves its stats
            proc.wait(30)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, True)


if __name__ == "__main__":
    main()
