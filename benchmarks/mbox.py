"""
The mbox store: delivery rate, SELECT and FETCH ENVELOPE on a large mbox,
and one expunge near its end. In-process, through the store's interfaces
(what the SMTP and IMAP layers call), in a temporary directory.

    python benchmarks/mbox.py                       # 20000 messages, ~200 MB
    python benchmarks/mbox.py --messages 2000 --size 4000

Prints:
  - delivery msgs/s: one at a time (each waits for its fsync) and 50 in
    flight (deliveries waiting together share one lock and one fsync);
  - SELECT (the folder's first sync) of the big mbox: cold (no index: the
    whole file parsed), after a restart (index and cache on disk), warm
    (open in this process: one stat);
  - FETCH ENVELOPE-equivalent of every message: the IMAP layer's envelope
    (mailplat.imap.fetch / mime) computed from each message read through
    folder.open() and cached, then answered from the cache after a restart;
  - one EXPUNGE of a message near the end of the file.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor  # noqa: E402

from mailplat.imap import fetch, mime  # noqa: E402
from mailplat.store.mbox import MboxStore, mboxrd  # noqa: E402
from mailplat.store.source import BytesSource  # noqa: E402

USER = "alice@example.test"


def message(n, size):
    head = (
        f"Return-Path: <sender{n % 97}@example.org>\n"
        f"Received: from client.example.org by mx.example.test; Thu, 26 Nov 2026 12:00:00 +0000\n"
        f"From: Sender {n % 97} <sender{n % 97}@example.org>\n"
        f"To: Alice <alice@example.test>\n"
        f"Subject: message number {n}\n"
        f"Date: Thu, 26 Nov 2026 12:00:00 +0000\n"
        f"Message-ID: <{n}@example.org>\n\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog; From here a quoted line.\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def build_mbox(path, count, size):
    """An mbox as another program (procmail, a migration) would have left it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    when = int(time.time()) - 86400
    with open(path, "wb") as f:
        for n in range(count):
            data = message(n, size)
            f.write(mboxrd.render(data, mboxrd.sender_of(data), when + n))
    return os.path.getsize(path)


def timed(label, started, extra=""):
    elapsed = time.perf_counter() - started
    print(f"  {label:<52} {elapsed * 1000:10.1f} ms {extra}")
    return elapsed


@defer.inlineCallbacks
def envelopes(folder, batch=200):
    """What the IMAP layer does for FETCH 1:* ENVELOPE: cached values, else open a batch and parse."""
    computed = 0
    infos = folder.messages()
    for start in range(0, len(infos), batch):
        need = [i.uid for i in infos[start : start + batch] if folder.cached(i.uid, "envelope") is None]
        if not need:
            continue
        files = yield defer.gatherResults([folder.open(uid) for uid in need])
        for uid, f in zip(need, files):
            data = f.read()
            end = data.find(b"\n\n")
            env = mime.envelope(fetch.parse_message(data[: end + 2] if end >= 0 else data))
            folder.cache(uid, "envelope", env.decode("latin-1"))
            computed += 1
    return computed


@defer.inlineCallbacks
def run(args):
    base = tempfile.mkdtemp(prefix="mailplat-bench-mbox-")
    template = os.path.join(base, "%d", "%n")
    try:
        print(f"mbox store benchmark in {base}")

        store = MboxStore(template)
        yield store.account(USER)
        data = message(0, args.delivery_size)
        n = args.deliveries
        started = time.perf_counter()
        for _ in range(n):
            yield store.deliver(USER, BytesSource(data))
        elapsed = time.perf_counter() - started
        print(f"  delivery, one at a time ({n} x {len(data)} B): {n / elapsed:8.0f} msgs/s")
        started = time.perf_counter()
        yield defer.gatherResults([store.deliver(USER, BytesSource(data)) for _ in range(n)])
        elapsed = time.perf_counter() - started
        print(f"  delivery, {n} in flight at once:             {n / elapsed:8.0f} msgs/s")
        yield store.close()

        big = "big@example.test"
        path = os.path.join(base, "example.test", "big", "INBOX")
        started = time.perf_counter()
        size = build_mbox(path, args.messages, args.size)
        timed(f"writing the test mbox ({args.messages} messages, {size / 1e6:.0f} MB)", started)

        store = MboxStore(template)
        account = yield store.account(big)
        started = time.perf_counter()
        folder = yield account.folder("INBOX")
        timed("SELECT cold (no index: whole file parsed)", started, f"{len(folder.messages())} messages")
        started = time.perf_counter()
        yield folder.sync()
        timed("SELECT warm (open in this process)", started)
        started = time.perf_counter()
        computed = yield envelopes(folder)
        timed("FETCH 1:* ENVELOPE cold (messages read, 200 a batch)", started, f"{computed} parsed")
        started = time.perf_counter()
        computed = yield envelopes(folder)
        timed("FETCH 1:* ENVELOPE warm (from the cache)", started, f"{computed} parsed")
        yield store.close()

        store = MboxStore(template)
        account = yield store.account(big)
        started = time.perf_counter()
        folder = yield account.folder("INBOX")
        timed("SELECT after a restart (index on disk, mbox unread)", started)
        started = time.perf_counter()
        computed = yield envelopes(folder)
        timed("FETCH 1:* ENVELOPE after a restart (cache on disk)", started, f"{computed} parsed")

        session = folder.subscribe(lambda event: None)  # as a selected IMAP session: flag writes wait
        target = folder.messages()[-3].uid
        yield folder.store_flags([target], ["\\Deleted"], "+")
        started = time.perf_counter()
        removed = yield folder.expunge()
        timed("EXPUNGE of the 3rd-last message (rewrite + fsync)", started, f"removed {removed}")
        target = folder.messages()[len(folder.messages()) // 2].uid
        yield folder.store_flags([target], ["\\Deleted"], "+")
        started = time.perf_counter()
        removed = yield folder.expunge()
        timed("EXPUNGE of a message in the middle, for comparison", started, f"removed {removed}")
        session()
        yield store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=10000, help="bytes per message of the big mbox")
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--delivery-size", type=int, default=4000)
    args = parser.parse_args()
    reactor.suggestThreadPoolSize(10)

    def go():
        d = run(args)
        d.addErrback(lambda f: f.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()


if __name__ == "__main__":
    main()
