"""
The maildir store's IMAP side on a large folder: how long a SELECT's sync
takes with no index (first open, or a tree Dovecot served), with the index
present and nothing changed (a new process), on the open folder (the
per-command check), and after one outside change; and the process RSS.

    python benchmarks/imap_store.py [--messages 20000] [--repeat 3] [--dir DIR] [--keep]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from mailplat.store.maildir import MaildirStore, index, names  # noqa: E402
from mailplat.store.maildir.uidlist import FILENAME as UIDLIST  # noqa: E402
from mailplat.store.source import BytesSource  # noqa: E402

USER = "bench@example.test"


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(root, count):
    """`count` small messages in cur/, named as Dovecot names them (S=, W=)."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    base = int(time.time()) - count
    flags = ["", "S", "RS", "FS", "S"]
    for n in range(count):
        body = f"From: sender{n % 97}@example.org\nTo: {USER}\nSubject: message {n}\nMessage-ID: <{n}@bench>\n\nbody {n}\n"
        data = body.encode()
        key = names.with_sizes(f"{base + n}.M{n}P1Q{n}.bench", len(data), len(data) + data.count(b"\n"))
        with open(os.path.join(root, "cur", f"{key}:2,{flags[n % len(flags)]}"), "wb") as f:
            f.write(data)


@defer.inlineCallbacks
def timed(label, make, results):
    start = time.perf_counter()
    value = yield make()
    results.setdefault(label, []).append(time.perf_counter() - start)
    return value


def aged(reactor):
    # Let the directory mtimes age past the one-second "too recent" window,
    # as they have on any folder that is not being written right now.
    return task.deferLater(reactor, 1.1, lambda: None)


@defer.inlineCallbacks
def main(reactor, args):
    base = args.dir or tempfile.mkdtemp(prefix="mailplat-bench-")
    template = os.path.join(base, "%d", "%n")
    root = MaildirStore(template).user_root(USER)
    print(f"building {args.messages} messages in {root} ...", flush=True)
    start = time.perf_counter()
    build(root, args.messages)
    print(f"built in {time.perf_counter() - start:.2f} s; RSS {rss_mib():.1f} MiB", flush=True)
    yield aged(reactor)
    results = {}

    async def open_inbox(store):
        account = await store.account(USER)
        return await account.folder("INBOX")

    def opener(store):
        return lambda: defer.ensureDeferred(open_inbox(store))

    rss_cold = None
    for _ in range(args.repeat):
        for name in (UIDLIST, index.INDEX, index.CACHE):
            if os.path.exists(os.path.join(root, name)):
                os.unlink(os.path.join(root, name))
        store = MaildirStore(template)
        folder = yield timed("cold sync (no uidlist, no index)", opener(store), results)
        assert len(folder.messages()) == args.messages, len(folder.messages())
        yield store.close()
        rss_cold = rss_cold or rss_mib()

    for _ in range(args.repeat):
        # A tree Dovecot served: its uidlist, none of our index.
        os.unlink(os.path.join(root, index.INDEX))
        store = MaildirStore(template)
        folder = yield timed("cold sync (uidlist, no index)", opener(store), results)
        yield store.close()
    yield aged(reactor)
    # One more scan once the directory stamps are old enough to be trusted,
    # so the index written is one a later process may take as it is.
    folder._recheck_at = 0
    yield folder.sync()
    yield store.close()

    for _ in range(args.repeat):
        store = MaildirStore(template)
        folder = yield timed("warm sync (index, nothing changed; new process)", opener(store), results)
        assert len(folder.messages()) == args.messages
        assert folder._recheck_at is None, "the index was not taken as it is"
        yield store.close()
    for _ in range(args.repeat):
        yield timed("sync of the open folder, nothing changed", folder.sync, results)

    for n in range(args.repeat):
        # A delivery to the open folder, until a subscriber hears 'exists'.
        heard = defer.Deferred()
        unsubscribe = folder.subscribe(lambda e, heard=heard: heard.called or heard.callback(e))
        body = BytesSource(b"Subject: new\n\nnew\n")
        yield timed(
            "delivery until 'exists' reaches a subscriber",
            lambda: defer.gatherResults([store.deliver(USER, body), heard]),
            results,
        )
        unsubscribe()

    cur = os.path.join(root, "cur")
    for n in range(args.repeat):
        # One message flagged by another program: a rescan of cur/.
        some = folder.messages()[n]
        os.rename(os.path.join(cur, some.filename), os.path.join(cur, some.key + ":2,FS"))
        yield timed("sync after one outside flag change (rescan)", folder.sync, results)
    yield store.close()

    width = max(len(k) for k in results)
    print(f"\n{args.messages} messages; best and median of {args.repeat}")
    for label, runs in results.items():
        runs.sort()
        print(f"  {label:<{width}}  {runs[0] * 1000:9.2f} ms  {runs[len(runs) // 2] * 1000:9.2f} ms")
    print(f"  {'RSS after the first cold sync':<{width}}  {rss_cold:9.1f} MiB")
    print(f"  {'RSS at the end':<{width}}  {rss_mib():9.1f} MiB")
    if not args.keep and not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--dir", help="build the maildir here (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary maildir")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    args = parser.parse_args()
    task.react(main, [args])
