"""
IMAP SELECT and FETCH on a large folder, cold and warm.

Fills a user's INBOX with N maildir files (as another program would),
starts `twistd -n mailplat`, and times over one IMAP connection:

    SELECT INBOX
    FETCH 1:* (UID FLAGS RFC822.SIZE)
    FETCH 1:* (ENVELOPE)
    SORT (ARRIVAL) / (SUBJECT) / (FROM) / (DATE) UTF-8 ALL   (RFC 5256)
    THREAD REFERENCES UTF-8 ALL

three times: cold (first session after the files appeared: UIDs to
assign, every envelope to compute), warm (a second session in the same
process), and after a restart (what the on-disk index and cache keep).
Each command's wall time is printed with the server's CPU time over it
(its worker processes included), the figure a machine shared with other
work inflates least.
Then a reconnecting QRESYNC client (RFC 7162) after 10 flag changes by
another session: how many FETCH lines its SELECT gets.

    python benchmarks/imap_fetch.py                  # 20000 messages
    python benchmarks/imap_fetch.py --messages 5000
    python benchmarks/imap_fetch.py --distinct       # 20000 different messages, all in cur/

With `--store sql --dsn DSN` the same messages (and flags) go into the
user's INBOX in PostgreSQL the way mail arrives there: through the sql
store's delivery (SQLStore.deliver, ENVELOPE and BODYSTRUCTURE indexed at
delivery), in a process of its own before the server starts. The rounds
are the same: cold is the first session of a fresh server process (the
folder loaded from the database), warm a second session in that process,
then one after a restart. Each command also shows the CPU time of the
PostgreSQL backends serving the server (when PostgreSQL runs on this
machine). The tables live in a schema of the run's own in that database,
dropped at the end.

    python benchmarks/imap_fetch.py --distinct --store sql --dsn postgresql://postgres@127.0.0.1:5432/bench

With --idle N it measures idle sessions instead: N clients log in over
implicit TLS, SELECT INBOX and IDLE; it prints the server's RSS before and
after, then delivers one message by SMTP and times until every client has
been told EXISTS.

    python benchmarks/imap_fetch.py --idle 1000
"""

import argparse
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
imap = "tcp:port={port}:interface=127.0.0.1"
# A deep accept queue: thousands of TLS clients connect within seconds.
imaps = "tcp:port={tls_port}:interface=127.0.0.1:backlog=4096"
smtp = "tcp:port={smtp_port}:interface=127.0.0.1"

[limits]
connections_per_ip = 100000
# Thousands of logins at once from one address: a load test, not a guesser
# (otherwise the login throttle refuses those past its waiting queue).
trusted_networks = ["127.0.0.1/32"]

[tls]
allow_plaintext_auth = true

[realm]
backend = "passwd-file"
path = "{state}/users"

[store]
{store}

[delivery]
local = "{delivery}"
"""

MAILDIR_STORE = 'backend = "maildir"\npath = "{state}/mail/%d/%n"'
SQL_STORE = 'backend = "sql"\ndsn = "{dsn}"'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pattern_messages(count, seed=1):
    """`count` messages of one pattern: (subfolder, maildir file name, bytes) of each."""
    rng = random.Random(seed)
    base = 1_700_000_000
    for i in range(count):
        body = ("lorem ipsum dolor sit amet " * rng.randint(10, 120) + "\n") * 3
        data = (
            f"Return-Path: <sender{i % 97}@example.org>\n"
            f"Received: from relay.example.org by bench.example.test; Mon, 1 Jan 2024 00:00:00 +0000\n"
            f"From: Sender {i % 97} <sender{i % 97}@example.org>\n"
            f"To: User <user@example.test>\n"
            f"Cc: list{i % 7}@lists.example.org\n"
            f"Subject: benchmark message number {i}\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\n"
            f"Message-ID: <{i}.bench@example.org>\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}"
        ).encode()
        vsize = len(data) + data.count(b"\n")
        key = f"{base + i}.M{i}P1Q1.bench,S={len(data)},W={vsize}"
        if i % 3:
            yield "cur", key + ":2,S", data
        else:
            yield "new", key, data


def fill(maildir, messages):
    """Write the messages straight into new/ and cur/, as an outside program would."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    for sub, name, data in messages:
        with open(os.path.join(maildir, sub, name), "wb") as f:
            f.write(data)


WORDS = (
    "invoice meeting report quarterly budget review draft final update notes travel plan agenda "
    "lunch project status release patch question answer request offer contract minutes slides "
    "photos party weekend order shipping delay urgent reminder account security newsletter"
).split()
ZONES = ("+0000", "+0100", "-0500", "+0530", "-0800", "+0900")


def distinct_messages(count, seed=1):
    """
    `count` different messages, all for cur/ (issue 11's figure): each its
    own subject, sender, date, recipients and size, as a real folder
    copied in by another program. (subfolder, file name, bytes) of each.
    """
    rng = random.Random(seed)
    base = 1_600_000_000
    for i in range(count):
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
        if rng.random() < 0.3:
            subject = rng.choice(("Re: ", "Fwd: ", "RE: Re: ")) + subject
        when = base + i * 1500 + rng.randint(0, 1400)
        date = time.strftime("%a, %d %b %Y %H:%M:%S ", time.gmtime(when)) + rng.choice(ZONES)
        sender = f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()} <person{i}.{rng.randint(0, 99999)}@host{i % 1000}.example.org>"
        to = ", ".join(f"user{rng.randint(0, 50000)}@example.test" for _ in range(rng.randint(1, 4)))
        body = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(rng.randint(3, 200)))
        data = (
            f"Return-Path: <bounce{i}@host{i % 1000}.example.org>\n"
            f"Received: from mx{i % 50}.example.org by bench.example.test; {date}\n"
            f"From: {sender}\n"
            f"To: {to}\n"
            + (f"Cc: {rng.choice(WORDS)}@lists.example.org\n" if rng.random() < 0.4 else "")
            + f"Subject: {subject}\n"
            f"Date: {date}\n"
            f"Message-ID: <{i}.{rng.getrandbits(48):x}@host{i % 1000}.example.org>\n"
            + (f"In-Reply-To: <{rng.randint(0, i + 1)}.x@example.org>\n" if rng.random() < 0.3 else "")
            + f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{body}\n"
        ).encode()
        vsize = len(data) + data.count(b"\n")
        key = f"{when}.M{i}P1Q1.bench,S={len(data)},W={vsize}"
        flags = rng.choice(("", "S", "S", "RS", "FS"))
        yield "cur", f"{key}:2,{flags}", data


# Maildir's info letters (":2,FS") as IMAP flags: how a delivery to the sql store sets them.
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}


def deliver_sql(config, kind, count, in_flight=4):
    """
    The same messages delivered to the user's INBOX through the sql store's
    own delivery API (SQLStore.deliver, as SMTP's local delivery calls it:
    one transaction each, ENVELOPE and BODYSTRUCTURE indexed at delivery),
    with the flags their maildir names carry. Run in a process of its own
    before the server starts (`--fill-sql`).
    """
    from twisted.internet import defer, task

    from mailplat import config as configuration, plugin
    from mailplat.interfaces import BackendContext
    from mailplat.store.source import BytesSource

    settings = configuration.load(config)
    context = BackendContext(settings)
    store = plugin.build("store", "sql", dict(settings.store, listen=False), context)
    messages = (pattern_messages if kind == "pattern" else distinct_messages)(count)

    def one(sub, name, data):
        letters = name.partition(":2,")[2]
        flags = [MAILDIR_FLAGS[c] for c in letters if c in MAILDIR_FLAGS]
        return store.deliver("user@example.test", BytesSource(data), flags=flags)

    @defer.inlineCallbacks
    def main(reactor):
        work = (one(*m) for m in messages)
        try:
            yield defer.gatherResults([task.cooperate(work).whenDone() for _ in range(in_flight)], consumeErrors=True)
        finally:
            yield store.close()

    task.react(main)


def sql_schema_dsn(dsn, schema):
    """`dsn` with the benchmark's own schema as search_path, and a name its connections are found by."""
    from urllib.parse import quote

    options = quote(f"-c search_path={schema}")
    return f"{dsn}{'&' if '?' in dsn else '?'}options={options}&application_name={schema}"


class DatabaseCPU:
    """The CPU time of the PostgreSQL backends serving the server (by application_name), when it runs here."""

    def __init__(self, dsn, name):
        import psycopg

        self.connection = psycopg.connect(dsn, autocommit=True)
        self.name = name

    def pids(self):
        rows = self.connection.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.name,))
        return [row[0] for row in rows]

    def sample(self):
        times = {}
        for pid in self.pids():
            seen = _own_cpu(pid)
            if seen is not None:  # else ended, or another machine's
                times[pid] = seen[1]
        return times

    @staticmethod
    def since(before, after):
        return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())

    def close(self):
        self.connection.close()


def drop_schema(dsn, schema):
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Client:
    """A minimal IMAP client: sends a command, reads to its tagged answer."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.file = self.sock.makefile("rb", buffering=1 << 20)
        self.file.readline()
        self.n = 0

    def command(self, text):
        self.n += 1
        tag = b"b%d" % self.n
        self.sock.sendall(tag + b" " + text + b"\r\n")
        count = 0
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            while line.endswith(b"}\r\n"):  # a literal follows
                size = int(line[line.rindex(b"{") + 1 : -3])
                self.file.read(size)
                line = self.file.readline()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line.decode(errors="replace"))
                return count
            count += 1


ROUND = (
    b"SELECT INBOX",
    b"FETCH 1:* (UID FLAGS RFC822.SIZE)",
    b"FETCH 1:* (ENVELOPE)",
    # The first of these that needs a header reads every message once (cold);
    # the rest, and every later session, use the keys cached in the index.
    b"SORT (ARRIVAL) UTF-8 ALL",
    b"SORT (SUBJECT) UTF-8 ALL",
    b"SORT (FROM) UTF-8 ALL",
    b"SORT (DATE) UTF-8 ALL",
    b"THREAD REFERENCES UTF-8 ALL",
)


def _own_cpu(pid):
    """(parent pid, user + system CPU seconds) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """
    User + system CPU time of the server so far (what a loaded machine does
    not inflate), its own worker processes (envelope, DKIM signer) included.
    """
    total = _own_cpu(pid)[1]
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            seen = _own_cpu(entry)
            if seen is not None and seen[0] == pid:
                total += seen[1]
    return total


def run_round(port, label, pid, database=None):
    """One session's ROUND; with `database` (a L{DatabaseCPU}) also the PostgreSQL backends' CPU."""
    c = Client(port)
    c.command(b"LOGIN user@example.test pw")
    out = []
    for text in ROUND:
        db = database.sample() if database else None
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        lines = c.command(text)
        seconds, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
        db = database.since(db, database.sample()) if database else None
        out.append((text.decode(), seconds, cpu, lines, db))
    c.command(b"LOGOUT")
    print(f"{label}:")
    for text, seconds, cpu, lines, db in out:
        also = f", PostgreSQL {db * 1000:6.0f} ms" if db is not None else ""
        print(f"  {text:36s} {seconds * 1000:9.1f} ms  (server CPU {cpu * 1000:7.0f} ms{also}; {lines} untagged lines)")


def run_qresync(port, changes=10):
    """
    RFC 7162 QRESYNC (issue 11's figure): a client remembers the folder,
    another changes `changes` messages' flags, the first reconnects with
    SELECT (QRESYNC ...) and is told only those: counts its FETCH lines.
    """
    import re

    def lines_of(c, text):
        c.n += 1
        tag = b"q%d" % c.n
        c.sock.sendall(tag + b" " + text + b"\r\n")
        out = []
        while True:
            line = c.file.readline()
            if not line or line.startswith(tag + b" "):
                return out
            out.append(line)

    first = Client(port)
    first.command(b"LOGIN user@example.test pw")
    first.command(b"ENABLE QRESYNC")
    selected = b"".join(lines_of(first, b"SELECT INBOX"))
    validity = int(re.search(rb"\[UIDVALIDITY (\d+)\]", selected).group(1))
    since = int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", selected).group(1))
    count = int(re.search(rb"\* (\d+) EXISTS", selected).group(1))
    first.command(b"LOGOUT")
    other = Client(port)
    other.command(b"LOGIN user@example.test pw")
    other.command(b"SELECT INBOX")
    for n in range(changes):
        other.command(b"STORE %d +FLAGS (\\Flagged $Bench)" % (1 + n * max(1, count // changes)))
    other.command(b"LOGOUT")
    again = Client(port)
    again.command(b"LOGIN user@example.test pw")
    again.command(b"ENABLE QRESYNC")
    start = time.perf_counter()
    lines = lines_of(again, b"SELECT INBOX (QRESYNC (%d %d))" % (validity, since))
    took = time.perf_counter() - start
    again.command(b"LOGOUT")
    fetches = sum(1 for line in lines if re.match(rb"\* \d+ FETCH ", line))
    print(f"QRESYNC reconnect after {changes} flag changes in {count} messages: {fetches} FETCH lines "
          f"(bar: <= {2 * changes}), SELECT {took * 1000:.1f} ms")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_server(workdir, config, port):
    server = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "--logfile", os.path.join(workdir, "server.log"), "mailplat", "--config", config],
        cwd=workdir,
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


def idle_sessions(port, count):
    """
    One client process of --idle: `count` sessions over implicit TLS, set up
    one after another with blocking sockets (LOGIN, SELECT INBOX, IDLE), then
    all waited on at once with epoll until each has been told EXISTS.

    It speaks to its parent by lines on stdout: "ready N FAILED [error]" when
    its sessions idle, then "told N LAST" (LAST: time.perf_counter() when its
    last session was told; CLOCK_MONOTONIC, comparable between processes).
    Plain ssl sockets and a selector, not asyncio: the clients' own reading
    (asyncio's TLS is Python code) must not be what the push figure measures.
    """
    import select
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sessions, failed = [], []

    def reply(sock, buffered, tag):
        while True:
            while b"\r\n" not in buffered[0]:
                data = sock.recv(16384)
                if not data:
                    raise OSError("the server closed the session")
                buffered[0] += data
            line, buffered[0] = buffered[0].split(b"\r\n", 1)
            if tag is None or line.startswith(tag + b" "):
                return line

    for _ in range(count):
        try:
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60))
            buffered = [b""]
            reply(sock, buffered, None)  # greeting
            for tag, command in ((b"a", b"LOGIN user@example.test pw"), (b"b", b"SELECT INBOX")):
                sock.sendall(tag + b" " + command + b"\r\n")
                line = reply(sock, buffered, tag)
                if not line.startswith(tag + b" OK"):
                    # A refused session would never be told: say so rather than wait.
                    raise RuntimeError(line.decode(errors="replace"))
            sock.sendall(b"c IDLE\r\n")
            if not reply(sock, buffered, b"+").startswith(b"+"):
                raise RuntimeError("no continuation for IDLE")
            sessions.append((sock, buffered))
        except (OSError, RuntimeError) as e:
            failed.append(e)
    print(f"ready {len(sessions)} {len(failed)} {failed[0]!r}" if failed else f"ready {len(sessions)} 0", flush=True)

    poller = select.epoll()
    waiting = {}
    for sock, buffered in sessions:
        sock.setblocking(False)
        waiting[sock.fileno()] = (sock, buffered)
        poller.register(sock.fileno(), select.EPOLLIN)
    told, last = 0, 0.0
    while waiting:
        for fd, _ in poller.poll():
            sock, buffered = waiting[fd]
            closed = False
            try:
                while True:
                    data = sock.recv(16384)
                    if not data:
                        closed = True
                        break
                    buffered[0] += data
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            except OSError:
                closed = True
            if b"EXISTS\r\n" in buffered[0]:
                told += 1
                last = time.perf_counter()
            elif not closed:
                continue
            poller.unregister(fd)
            del waiting[fd]
    print(f"told {told} {last!r}", flush=True)
    for sock, _ in sessions:
        sock.close()


def run_idle(count, ports, pid):
    import smtplib

    # Enough client processes that reading 10,000 sessions is not the figure.
    workers = max(2, min(8, (os.cpu_count() or 2) * 2))
    shares = [count // workers + (1 if n < count % workers else 0) for n in range(workers)]
    before = rss_mb(pid)
    start = time.perf_counter()
    clients = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "--idle-client", str(ports["imaps"]), str(share)],
                         stdout=subprocess.PIPE, text=True)
        for share in shares if share
    ]
    idle, failures = 0, []
    for proc in clients:
        word, ready, failed, *error = proc.stdout.readline().split(" ", 3)
        assert word == "ready", word
        idle += int(ready)
        if int(failed):
            failures.append((int(failed), " ".join(error).strip()))
    print(f"{idle} sessions in IDLE after {time.perf_counter() - start:.1f} s ({len(clients)} client processes)")
    if failures:
        print(f"{sum(n for n, _ in failures)} sessions failed, e.g. {failures[0][1]}")
    after = rss_mb(pid)
    print(f"server RSS {before:.1f} MB before, {after:.1f} MB with {idle} idle TLS sessions "
          f"({(after - before) * 1024 / max(idle, 1):.1f} KB each)")
    cpu = cpu_seconds(pid)
    sent = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", ports["smtp"]) as s:
        s.sendmail("bench@example.org", ["user@example.test"], b"Subject: ping\r\n\r\nhi\r\n")
    told, last = 0, 0.0
    for proc in clients:
        word, n, when = proc.stdout.readline().split()
        assert word == "told", word
        told += int(n)
        last = max(last, float(when))
        proc.wait()
    time.sleep(2)  # the server sees the sessions leave
    print(f"new message pushed to {told} of {idle} sessions {(last - sent) * 1000:.0f} ms after SMTP DATA began "
          f"(server CPU {(cpu_seconds(pid) - cpu) * 1000:.0f} ms to deliver, push and see them all leave)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--idle", type=int, metavar="N", help="measure N idle TLS sessions instead")
    ap.add_argument(
        "--distinct", action="store_true", help="different messages straight into cur/ (issue 11's figure) instead of one pattern"
    )
    ap.add_argument("--store", choices=("maildir", "sql"), default="maildir")
    ap.add_argument("--dsn", help="with --store sql: a PostgreSQL database (a schema of the run's own is made and dropped)")
    ap.add_argument("--fill-sql", metavar="CONFIG", help=argparse.SUPPRESS)  # the delivery step of --store sql
    ap.add_argument("--idle-client", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)  # one of --idle's clients
    args = ap.parse_args()
    if args.idle_client:
        return idle_sessions(*args.idle_client)
    kind = "distinct" if args.distinct else "pattern"
    if args.fill_sql:
        return deliver_sql(args.fill_sql, kind, args.messages)
    if args.store == "sql" and not args.dsn:
        ap.error("--store sql needs --dsn")
    if args.idle:
        args.messages = 10

    workdir = tempfile.mkdtemp(prefix="mailplat-bench-")
    state = os.path.join(workdir, "var")
    os.makedirs(state)
    with open(os.path.join(state, "users"), "w") as f:
        f.write("user@example.test:{PLAIN}pw\n")
    port = free_port()
    ports = {"imaps": free_port(), "smtp": free_port()}
    schema = database = None
    if args.store == "sql":
        import psycopg

        schema = f"bench_imap_{os.getpid()}_{random.getrandbits(24):06x}"
        with psycopg.connect(args.dsn, autocommit=True) as c:
            c.execute(f"CREATE SCHEMA {schema}")
        store = SQL_STORE.format(dsn=sql_schema_dsn(args.dsn, schema))
    else:
        store = MAILDIR_STORE.format(state=state)
    config = os.path.join(workdir, "mailplat.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(state=state, port=port, tls_port=ports["imaps"], smtp_port=ports["smtp"],
                              store=store, delivery=args.store))
    try:
        start = time.perf_counter()
        messages = (distinct_messages if args.distinct else pattern_messages)(args.messages)
        if args.store == "sql":
            fill_args = ["--fill-sql", config, "--messages", str(args.messages)] + (["--distinct"] if args.distinct else [])
            subprocess.run([sys.executable, os.path.abspath(__file__)] + fill_args, check=True, cwd=workdir)
            print(f"delivered {args.messages} messages through the sql store in {time.perf_counter() - start:.1f} s")
            database = DatabaseCPU(args.dsn, schema)
        else:
            fill(os.path.join(state, "mail", "example.test", "user"), messages)
            print(f"wrote {args.messages} messages in {time.perf_counter() - start:.1f} s")
        server = start_server(workdir, config, port)
        if args.idle:
            try:
                run_idle(args.idle, ports, server.pid)
            finally:
                stop_server(server)
            return
        try:
            run_round(port, "cold (first session)", server.pid, database)
            run_round(port, "warm (same process)", server.pid, database)
            print(f"server RSS {rss_mb(server.pid):.1f} MB")
        finally:
            stop_server(server)
        server = start_server(workdir, config, port)
        try:
            run_round(port, "after restart (on-disk index)" if database is None else "after restart", server.pid, database)
            run_qresync(port)
        finally:
            stop_server(server)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if database is not None:
            database.close()
        if schema is not None:
            drop_schema(args.dsn, schema)


if __name__ == "__main__":
    main()
