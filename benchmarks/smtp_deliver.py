"""
SMTP delivery throughput, end to end.

Starts `twistd -n mailplat` in a temporary directory, sends N messages
(80% 4 KB, 20% 100 KB) over C parallel connections to the MX port, waits
until every message is a file in the maildir, and prints messages/s and
the server's peak RSS.

    python benchmarks/smtp_deliver.py                       # 2000 msgs, 20 conns
    python benchmarks/smtp_deliver.py --mode reuse          # many msgs per connection
    python benchmarks/smtp_deliver.py --mode pipelined      # MAIL/RCPT/DATA in one packet

Modes: `connect` opens a connection per message (EHLO, one transaction,
QUIT); `reuse` sends many messages per connection, waiting for each reply;
`pipelined` sends MAIL, RCPT and DATA in one packet (RFC 2920).
"""

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

CONFIG = """
[server]
hostname = "bench.example.test"
state_dir = "{state}"

[domains]
local = ["example.test"]

[listen]
smtp = "tcp:port={port}:interface=127.0.0.1"

[realm]
backend = "passwd-file"
path = "{state}/users"

[store]
backend = "maildir"
path = "{state}/mail/%d/%n"

[delivery]
local = "maildir"
{aliases}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_message(i, size):
    head = f"From: bench@remote.test\r\nTo: user{i % 10}@example.test\r\nSubject: message {i}\r\n\r\n"
    line = ("x" * 76 + "\r\n").encode()
    body = line * max(1, (size - len(head)) // len(line))
    return head.encode() + body


async def read_reply(reader):
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            code = int(line[:3])
            return code


async def expect(reader, wanted):
    code = await read_reply(reader)
    if code != wanted:
        raise RuntimeError(f"expected {wanted}, got {code}")


async def transaction(reader, writer, i, message, pipelined):
    rcpt = f"user{i % 10}@example.test"
    if pipelined:
        writer.write(f"MAIL FROM:<bench@remote.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        await expect(reader, 250)
        await expect(reader, 250)
        await expect(reader, 354)
    else:
        writer.write(b"MAIL FROM:<bench@remote.test>\r\n")
        await expect(reader, 250)
        writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
        await expect(reader, 250)
        writer.write(b"DATA\r\n")
        await expect(reader, 354)
    writer.write(message + b".\r\n")
    await expect(reader, 250)


async def session(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await expect(reader, 220)
    writer.write(b"EHLO bench.remote.test\r\n")
    await expect(reader, 250)
    return reader, writer


async def client(port, jobs, mode, latencies):
    reader = writer = None
    for i, message in jobs:
        start = time.perf_counter()
        if reader is None:
            reader, writer = await session(port)
        await transaction(reader, writer, i, message, mode == "pipelined")
        if mode == "connect":
            writer.write(b"QUIT\r\n")
            await read_reply(reader)
            writer.close()
            reader = writer = None
        latencies.append(time.perf_counter() - start)
    if writer is not None:
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
        writer.close()


def count_delivered(state):
    total = 0
    for root, dirs, files in os.walk(os.path.join(state, "mail")):
        if os.path.basename(root) in ("new", "cur"):
            total += len(files)
    return total


def peak_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--mode", choices=("connect", "reuse", "pipelined"), default="connect")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--aliases", type=int, default=0, metavar="N",
                    help="an aliases file of N entries (the recipients are looked up in it)")
    ap.add_argument("--profile", metavar="FILE", help="run the server under cProfile, stats to FILE")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="mailplat-bench-")
    state = os.path.join(workdir, "var")
    os.makedirs(state)
    with open(os.path.join(state, "users"), "w") as f:
        for n in range(10):
            f.write(f"user{n}@example.test:{{PLAIN}}not-used-here\n")
    port = free_port()
    config = os.path.join(workdir, "mailplat.toml")
    aliases = ""
    if args.aliases:
        path = os.path.join(workdir, "aliases")
        with open(path, "w") as f:
            for n in range(args.aliases):
                f.write(f"list{n}@example.test: user{n % 10}@example.test\n")
        aliases = f'[aliases]\npath = "{path}"'
    with open(config, "w") as f:
        f.write(CONFIG.format(state=state, port=port, aliases=aliases))
    server = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "--logfile", os.path.join(workdir, "server.log")]
        + (["--profile", os.path.abspath(args.profile), "--profiler", "cprofile", "--savestats"] if args.profile else [])
        + ["mailplat", "--config", config],
        cwd=workdir,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("server did not start; see " + os.path.join(workdir, "server.log"))
                time.sleep(0.1)

        rng = random.Random(args.seed)
        sizes = [100 * 1024 if rng.random() < 0.2 else 4 * 1024 for _ in range(args.messages)]
        messages = [(i, make_message(i, size)) for i, size in enumerate(sizes)]
        per_client = [messages[c :: args.connections] for c in range(args.connections)]
        latencies = []

        async def run_all():
            await asyncio.gather(*(client(port, jobs, args.mode, latencies) for jobs in per_client))

        start = time.perf_counter()
        asyncio.run(run_all())
        accepted = time.perf_counter() - start
        while count_delivered(state) < args.messages and time.perf_counter() - start < 120:
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        delivered = count_delivered(state)
        latencies.sort()
        megabytes = sum(sizes) / 1e6
        print(f"mode                {args.mode}" + (f", {args.aliases} aliases" if args.aliases else ""))
        print(f"messages            {args.messages} ({megabytes:.1f} MB) over {args.connections} connections")
        print(f"delivered on disk   {delivered}")
        print(f"throughput          {delivered / elapsed:.0f} msgs/s ({megabytes / elapsed:.1f} MB/s)")
        print(f"all accepted after  {accepted:.2f} s; on disk after {elapsed:.2f} s")
        print(f"per-message latency median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms")
        print(f"server peak RSS     {peak_rss_kb(server.pid) / 1024:.1f} MB")
    finally:
        server.send_signal(2)  # SIGINT: a clean reactor stop, so --profile saves its stats
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
