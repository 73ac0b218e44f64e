"""
Several mailplat nodes behind HAProxy (issue 16's bar), on this machine.

Starts HAProxy (Debian's package) round-robin in TCP mode in front of N
`twistd -n mailplat` nodes that share one store, and measures:

- SMTP delivery throughput through the balancer with two nodes beside one
  node, in the same run (turns, best of --repeat): msgs/s of each and the
  ratio (the bar: two nodes at least 1.6 times one, the second node using
  the second core);
- with --imap TOOLS: Dovecot's imaptest through the balancer on the two
  nodes — TOOLS/imap-compliance.sh (the bar: what the maildir store
  reaches, 0 failed) and TOOLS/imap-load.sh for 20 s with 10 clients
  (errors=0); TOOLS is the folder of imap-compliance.sh and imap-load.sh.

    python benchmarks/cluster.py                         # maildir store shared by the nodes
    python benchmarks/cluster.py --store sql --dsn postgresql://postgres@127.0.0.1:5432/bench
    python benchmarks/cluster.py --imap ../shared/tools

The nodes of the maildir run share one maildir tree (safe for several
processes; pushes between them by polling); with `--store sql` they share
the PostgreSQL database `--dsn` (created tables are dropped at the end:
give a database of its own). The clients are those of
benchmarks/smtp_deliver.py (80% 4 KB, 20% 100 KB, `--mode reuse` by
default: one connection carries many messages, spread by HAProxy per
connection). It prints msgs/s, the server CPU of each node per message,
and the ratio.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from smtp_deliver import client, cpu_seconds, free_port, make_message  # noqa: E402

NODE_CONFIG = """
[server]
hostname = "node{n}.bench.example.test"
state_dir = "{state}"

[domains]
local = ["example.test"]

[listen]
smtp = "tcp:port={smtp}:interface=127.0.0.1"
imaps = "tcp:port={imaps}:interface=127.0.0.1"

[realm]
backend = "passwd-file"
path = "{shared}/users"

[store]
{store}

[delivery]
local = "{delivery}"

[limits]
auth_failures = 100000
connections_per_ip = 10000
"""

HAPROXY = """
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend smtp
    bind 127.0.0.1:{smtp}
    default_backend smtp_nodes
backend smtp_nodes
    balance roundrobin
{smtp_servers}
frontend imaps
    bind 127.0.0.1:{imaps}
    default_backend imaps_nodes
backend imaps_nodes
    balance roundrobin
{imaps_servers}
"""

IMAP_USERS = ["testuser@example.test", "testuser2@example.test"] + [f"load{n}@example.test" for n in range(1, 51)]


def wait_port(port, proc, log, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                with open(log, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise SystemExit(f"nothing listens on {port}; {log} ends:\n{tail}")
            time.sleep(0.1)


class Cluster:
    """N nodes on one store, HAProxy in front; `stop()` ends them all."""

    def __init__(self, args, nodes):
        self.args, self.count = args, nodes
        self.dir = tempfile.mkdtemp(prefix="mailplat-cluster-")
        self.shared = os.path.join(self.dir, "shared")
        os.makedirs(self.shared)
        with open(os.path.join(self.shared, "users"), "w") as f:
            for n in range(10):
                f.write(f"user{n}@example.test:{{PLAIN}}bench-pw\n")
            for user in IMAP_USERS:
                f.write(f"{user}:{{PLAIN}}pass\n")
        self.procs, self.nodes = [], []

    def store_section(self):
        if self.args.store == "sql":
            pool = f"\npool_size = {self.args.pool_size}" if self.args.pool_size else ""
            return f'backend = "sql"\ndsn = "{self.args.dsn}"{pool}', "sql"
        return f'backend = "maildir"\npath = "{self.shared}/mail/%d/%n"', "maildir"

    def start(self):
        store, delivery = self.store_section()
        for n in range(self.count):
            state = os.path.join(self.dir, f"node{n}")
            os.makedirs(state)
            ports = {"smtp": free_port(), "imaps": free_port()}
            config = os.path.join(state, "mailplat.toml")
            with open(config, "w") as f:
                f.write(NODE_CONFIG.format(n=n, state=state, shared=self.shared, store=store, delivery=delivery, **ports))
            log = os.path.join(state, "server.log")
            proc = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                 "--logfile", log, "mailplat", "--config", config], cwd=state)
            self.procs.append(proc)
            self.nodes.append((proc, ports, log))
        for proc, ports, log in self.nodes:
            wait_port(ports["smtp"], proc, log)
            wait_port(ports["imaps"], proc, log)
        self.ports = {"smtp": free_port(), "imaps": free_port()}
        servers = {kind: "\n".join(f"    server node{n} 127.0.0.1:{ports[kind]}" for n, (_, ports, _) in enumerate(self.nodes))
                   for kind in ("smtp", "imaps")}
        config = os.path.join(self.dir, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(HAPROXY.format(smtp=self.ports["smtp"], imaps=self.ports["imaps"],
                                   smtp_servers=servers["smtp"], imaps_servers=servers["imaps"]))
        log = os.path.join(self.dir, "haproxy.log")
        self.haproxy = subprocess.Popen([self.args.haproxy, "-db", "-f", config],
                                        stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.procs.append(self.haproxy)
        wait_port(self.ports["smtp"], self.haproxy, log)
        time.sleep(0.5)  # the nodes' start-up work is not measured
        return self

    def delivered(self):
        if self.args.store == "sql":
            import psycopg

            with psycopg.connect(self.args.dsn, autocommit=True) as c:
                try:
                    return c.execute(self.args.count_sql).fetchone()[0]
                except psycopg.errors.UndefinedTable:
                    return 0  # the store makes its tables on first use
        total = 0
        for root, dirs, files in os.walk(os.path.join(self.shared, "mail")):
            if os.path.basename(root) in ("new", "cur"):
                total += len(files)
        return total

    def cpu(self):
        return [cpu_seconds(proc.pid) for proc, _, _ in self.nodes]

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(2)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def smtp_run(args, messages, nodes):
    """Deliver `messages` through the balancer to `nodes` nodes: (msgs/s, [server CPU ms per message of each node])."""
    cluster = Cluster(args, nodes)
    try:
        cluster.start()
        before = cluster.delivered()
        per_client = [messages[c:: args.connections] for c in range(args.connections)]
        latencies = []

        async def run_all():
            await asyncio.gather(*(client(cluster.ports["smtp"], jobs, args.mode, latencies) for jobs in per_client))

        cpu_before = cluster.cpu()
        start = time.perf_counter()
        asyncio.run(run_all())
        while cluster.delivered() - before < len(messages) and time.perf_counter() - start < 300:
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        delivered = cluster.delivered() - before
        cpu = [(after - b) * 1000 / max(1, delivered) for after, b in zip(cluster.cpu(), cpu_before)]
        if delivered < len(messages):
            print(f"warning: {nodes} node(s): only {delivered} of {len(messages)} delivered", file=sys.stderr)
        return delivered / elapsed, cpu
    finally:
        cluster.stop()
        if args.store == "sql" and args.reset_sql:
            reset_sql(args)


def reset_sql(args):
    import psycopg

    with psycopg.connect(args.dsn, autocommit=True) as c:
        c.execute(args.reset_sql)


def imap_run(args):
    cluster = Cluster(args, 2)
    try:
        cluster.start()
        port = str(cluster.ports["imaps"])
        env = dict(os.environ, SSL="1")
        compliance = subprocess.run(["bash", os.path.join(args.imap, "imap-compliance.sh"), "127.0.0.1", port,
                                     "testuser@example.test", "pass", "testuser2@example.test"],
                                    env=env, capture_output=True, text=True, timeout=1800)
        line = [ln for ln in compliance.stdout.splitlines() if ln.startswith("imap-compliance:")]
        print("through the balancer, 2 nodes:", line[-1] if line else compliance.stdout[-500:] + compliance.stderr[-500:])
        load = subprocess.run(["bash", os.path.join(args.imap, "imap-load.sh"), "127.0.0.1", port,
                               "load@example.test", "pass", "20", "10"],
                              env=env, capture_output=True, text=True, timeout=600)
        line = [ln for ln in load.stdout.splitlines() if ln.startswith("imap-load:")]
        print("through the balancer, 2 nodes:", line[-1] if line else load.stdout[-500:] + load.stderr[-500:])
    finally:
        cluster.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=("maildir", "sql"), default="maildir")
    ap.add_argument("--dsn", help="with --store sql: the PostgreSQL database the nodes share")
    ap.add_argument("--count-sql", default="SELECT count(*) FROM mailplat_messages",
                    help="with --store sql: the query counting stored messages")
    ap.add_argument("--reset-sql", default="", help="with --store sql: run after each cluster (e.g. to empty the tables)")
    ap.add_argument("--pool-size", type=int, help="with --store sql: each node's pool_size (default: the store's)")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--mode", choices=("connect", "reuse", "pipelined"), default="reuse")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each, in turns; the fastest counts")
    ap.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    ap.add_argument("--imap", metavar="TOOLS", help="also run imap-compliance.sh and imap-load.sh from TOOLS through the balancer")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.store == "sql" and not args.dsn:
        ap.error("--store sql needs --dsn")
    if not os.path.exists(args.haproxy):
        sys.exit("haproxy not found (apt-get install haproxy)")

    rng = random.Random(args.seed)
    sizes = [100 * 1024 if rng.random() < 0.2 else 4 * 1024 for _ in range(args.messages)]
    messages = [(i, make_message(i, size), "bench@remote.test") for i, size in enumerate(sizes)]
    print(f"store {args.store}; {args.messages} messages over {args.connections} connections ({args.mode}), "
          f"through HAProxy; {os.cpu_count()} cores")
    best = {1: (0, None), 2: (0, None)}
    for _ in range(args.repeat):
        for nodes in (1, 2):
            rate, cpu = smtp_run(args, messages, nodes)
            print(f"  {nodes} node(s): {rate:7.0f} msgs/s; server CPU per message "
                  + ", ".join(f"node{n} {ms:.2f} ms" for n, ms in enumerate(cpu)))
            if rate > best[nodes][0]:
                best[nodes] = (rate, cpu)
    ratio = best[2][0] / best[1][0]
    print(f"SMTP through the balancer: 1 node {best[1][0]:.0f} msgs/s, 2 nodes {best[2][0]:.0f} msgs/s: "
          f"{ratio:.2f}x (bar 1.6x: {'ok' if ratio >= 1.6 else 'MISSED'})")
    if args.imap:
        imap_run(args)
    return 0 if ratio >= 1.6 else 1


if __name__ == "__main__":
    sys.exit(main())
