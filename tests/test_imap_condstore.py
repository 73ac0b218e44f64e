"""
CONDSTORE (RFC 7162 3.1) end to end: the real server over the maildir and
the mbox store, driven over IMAPS sockets (raw lines where the exact
answer matters, imaplib to set things up): HIGHESTMODSEQ in SELECT and
STATUS, the MODSEQ item, FETCH (CHANGEDSINCE), STORE (UNCHANGEDSINCE)
with [MODIFIED], SEARCH MODSEQ, and mod-sequences that survive a restart
of the server and never go backwards, also when the index lost its
newest writes or was written by a mailplat older than mod-sequences.
"""

import gc
import imaplib
import json
import os
import re
import socket

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mailplat.store import modseq as modseqs
from tests.helpers import MailServer, client_tls, in_thread

ALICE = "alice@example.test"
LISTENERS = ("imaps",)


def message(n):
    return f"From: bob@example.org\r\nTo: {ALICE}\r\nSubject: message {n}\r\n\r\nbody {n}\r\n".encode()


class Wire:
    """A blocking IMAPS client that sends exact commands and returns the exact answer lines."""

    def __init__(self, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = client_tls().wrap_socket(sock)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()
        self.n = 0

    def command(self, text):
        """The lines (without CRLF) of the answer, the tagged one last."""
        self.n += 1
        tag = b"T%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError(f"connection closed after {lines!r}")
            lines.append(line.rstrip(b"\r\n"))
            if line.startswith(tag + b" "):
                return lines

    def ok(self, text):
        lines = self.command(text)
        status = lines[-1].split(b" ", 2)[1]
        if status != b"OK":
            raise AssertionError(f"{text!r}: {lines!r}")
        return lines

    def login(self):
        self.ok(f"LOGIN {ALICE} pw")
        return self

    def close(self):
        for thing in (self.file, self.sock):
            try:
                thing.close()
            except OSError:
                pass


def untagged(lines, word):
    """The untagged lines whose response is `word` (FETCH, SEARCH, VANISHED...)."""
    word = word.encode()
    out = []
    for line in lines[:-1]:
        parts = line.split(b" ")
        if len(parts) > 1 and (parts[1].upper() == word or (len(parts) > 2 and parts[2].upper() == word)):
            out.append(line)
    return out


def code(lines, name):
    """The value of a response code `[NAME value]` in any line, as int when it is a number."""
    for line in lines:
        m = re.search(rb"\[" + name.encode() + rb"(?: ([^\]]*))?\]", line)
        if m:
            value = m.group(1)
            return int(value) if value is not None and value.isdigit() else value
    return None


def modseqs_of(lines):
    """{uid: modseq} of the FETCH lines."""
    out = {}
    for line in untagged(lines, "FETCH"):
        uid = re.search(rb"UID (\d+)", line)
        m = re.search(rb"MODSEQ \((\d+)\)", line)
        if uid and m:
            out[int(uid.group(1))] = int(m.group(1))
    return out


def flags_of(lines):
    """{uid: set of flags} of the FETCH lines."""
    out = {}
    for line in untagged(lines, "FETCH"):
        uid = re.search(rb"UID (\d+)", line)
        f = re.search(rb"FLAGS \(([^)]*)\)", line)
        if uid and f:
            out[int(uid.group(1))] = set(f.group(1).decode().split())
    return out


class ModSeqCase(unittest.TestCase):
    """A server with five messages in alice's INBOX (UIDs 1-5); on maildir unless `store` says mbox."""

    store = "maildir"

    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=LISTENERS, store=self.store)
        yield self.server.start(users={ALICE: "pw"})
        yield self.run_client(self._fill)

    def _fill(self):
        c = imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls(), timeout=10)
        c.login(ALICE, "pw")
        for n in range(1, 6):
            c.append("INBOX", None, None, message(n))
        c.select("INBOX")  # \Recent is claimed here: the tests' sessions see none
        c.logout()

    def run_client(self, f, *args):
        """Run a blocking client scenario in a thread, closing its Wires afterwards."""
        self.wires = []

        def run():
            try:
                return f(*args)
            finally:
                for w in self.wires:
                    w.close()

        return in_thread(run)

    def wire(self):
        w = Wire(self.server.port("imaps")).login()
        self.wires.append(w)
        return w

    @defer.inlineCallbacks
    def restart(self):
        """Stop the server (its store writes what it keeps) and start it again on the same state."""
        yield self.wait_sessions()
        yield self.server.stop()
        yield self.server.start()

    @defer.inlineCallbacks
    def wait_sessions(self):
        for _ in range(300):
            if not self.server.sessions():
                return
            yield deferLater(reactor, 0.01, lambda: None)

    def index_path(self):
        root = self.server.maildir(ALICE)
        if self.store == "mbox":
            return os.path.join(root, ".imap", "INBOX", "mailplat-index.json")
        return os.path.join(root, "mailplat-index.json")


class Capability(ModSeqCase):
    def test_condstore_and_qresync_are_advertised(self):
        def run():
            lines = self.wire().ok("CAPABILITY")
            caps = lines[0].split()
            self.assertIn(b"CONDSTORE", caps)
            self.assertIn(b"QRESYNC", caps)

        return self.run_client(run)


class HighestModSeq(ModSeqCase):
    def test_select_and_status_report_highestmodseq_and_every_change_raises_it(self):
        def run():
            c = self.wire()
            first = code(c.ok("SELECT INBOX"), "HIGHESTMODSEQ")
            self.assertIsInstance(first, int)
            self.assertGreaterEqual(first, 1)
            # A flag change, an append and an expunge each raise it.
            c.ok("STORE 1 +FLAGS (\\Flagged)")
            status = [line for line in c.ok("STATUS INBOX (HIGHESTMODSEQ MESSAGES)") if line.startswith(b"* STATUS")]
            value = int(re.search(rb"HIGHESTMODSEQ (\d+)", status[0]).group(1))
            self.assertGreater(value, first)
            other = self.wire()
            other.ok("APPEND INBOX {%d+}\r\n%s" % (len(message(6)), message(6).decode()))
            appended = int(re.search(rb"HIGHESTMODSEQ (\d+)", other.ok("STATUS INBOX (HIGHESTMODSEQ)")[0]).group(1))
            self.assertGreater(appended, value)
            c.ok("STORE 2 +FLAGS (\\Deleted)")
            expunged = c.ok("EXPUNGE")
            # RFC 7162 3.2.7: with CONDSTORE on, EXPUNGE's OK names the new HIGHESTMODSEQ.
            self.assertGreater(code(expunged, "HIGHESTMODSEQ"), appended)

        return self.run_client(run)

    def test_a_store_that_changes_nothing_keeps_the_modseq(self):
        def run():
            c = self.wire()
            c.ok("SELECT INBOX")
            lines = c.ok("STORE 1 +FLAGS (\\Seen)")
            before = modseqs_of(c.ok("UID FETCH 1 (MODSEQ)"))[1]
            self.assertIn(b"FLAGS", lines[0])
            again = c.ok("STORE 1 +FLAGS (\\Seen)")
            self.assertIn(b"MODSEQ (%d)" % before, again[0])

        return self.run_client(run)


class FetchModSeq(ModSeqCase):
    def test_modseq_item_and_changedsince(self):
        def run():
            c = self.wire()
            c.ok("SELECT INBOX")
            lines = c.ok("UID FETCH 1:* (MODSEQ)")
            start = modseqs_of(lines)
            self.assertEqual(sorted(start), [1, 2, 3, 4, 5])
            since = max(start.values())
            c.ok("STORE 2 +FLAGS (\\Answered)")
            c.ok("UID STORE 4 +FLAGS ($Label1)")
            changed = c.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {since})")
            fetches = untagged(changed, "FETCH")
            # RFC 7162 3.1.4.1: only the changed ones, and CHANGEDSINCE implies MODSEQ.
            self.assertEqual([line.split()[1] for line in fetches], [b"2", b"4"])
            for line in fetches:
                self.assertRegex(line, rb"MODSEQ \(\d+\)")
                self.assertGreater(int(re.search(rb"MODSEQ \((\d+)\)", line).group(1)), since)
            # Nothing changed since the newest of them.
            newest = max(int(re.search(rb"MODSEQ \((\d+)\)", line).group(1)) for line in fetches)
            self.assertEqual(untagged(c.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {newest})"), "FETCH"), [])
            # The item alone, and beside others.
            one = c.ok("FETCH 3 MODSEQ")
            self.assertRegex(one[0], rb"^\* 3 FETCH \(MODSEQ \(\d+\)\)$")
            both = c.ok("UID FETCH 3 (FLAGS MODSEQ)")
            self.assertRegex(both[0], rb"UID 3")
            self.assertRegex(both[0], rb"MODSEQ \(\d+\)")

        return self.run_client(run)

    def test_fetch_modseq_enables_condstore_and_sends_highestmodseq(self):
        def run():
            c = self.wire()
            c.ok("SELECT INBOX")
            plain = c.ok("STORE 1 +FLAGS (\\Seen)")
            self.assertNotIn(b"MODSEQ", plain[0])
            lines = c.ok("FETCH 1 (MODSEQ)")
            # RFC 7162 3.1: CONDSTORE comes on while selected: HIGHESTMODSEQ now.
            self.assertIsInstance(code(lines, "HIGHESTMODSEQ"), int)
            after = c.ok("STORE 2 +FLAGS (\\Seen)")
            self.assertRegex(after[0], rb"^\* 2 FETCH \(FLAGS \(\\Seen\) MODSEQ \(\d+\)\)$")

        return self.run_client(run)

    def test_silent_store_still_reports_the_new_modseq(self):
        def run():
            c = self.wire()
            c.ok("ENABLE CONDSTORE")
            c.ok("SELECT INBOX")
            lines = c.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
            self.assertEqual(len(lines), 2, lines)
            self.assertRegex(lines[0], rb"^\* 1 FETCH \(MODSEQ \(\d+\)\)$")
            # Nothing changed: nothing to say.
            self.assertEqual(len(c.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")), 1)

        return self.run_client(run)

    def test_other_sessions_changes_come_with_modseq(self):
        def run():
            a, b = self.wire(), self.wire()
            a.ok("SELECT INBOX (CONDSTORE)")
            b.ok("SELECT INBOX")
            b.ok("STORE 3 +FLAGS (\\Flagged)")
            lines = a.ok("NOOP")
            fetches = untagged(lines, "FETCH")
            self.assertEqual(len(fetches), 1, lines)
            self.assertRegex(fetches[0], rb"^\* 3 FETCH \(UID 3 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)$")

        return self.run_client(run)

    def test_implicit_seen_reports_the_new_modseq(self):
        def run():
            c = self.wire()
            c.ok("SELECT INBOX (CONDSTORE)")
            before = modseqs_of(c.ok("UID FETCH 2 (MODSEQ)"))[2]
            lines = c.command("UID FETCH 2 (BODY[TEXT])")
            fetched = [line for line in lines if b"FETCH" in line][0]
            after = int(re.search(rb"MODSEQ \((\d+)\)", b" ".join(lines)).group(1))
            self.assertIn(b"\\Seen", b" ".join(lines))
            self.assertGreater(after, before, fetched)

        return self.run_client(run)

    def test_vanished_modifier_needs_uid_fetch_and_qresync(self):
        def run():
            c = self.wire()
            c.ok("SELECT INBOX")
            self.assertIn(b"BAD", c.command("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")[-1])
            self.assertIn(b"BAD", c.command("FETCH 1:* (FLAGS) (VANISHED)")[-1])
            self.assertIn(b"BAD", c.command("FETCH 1:* (FLAGS) (CHANGEDSINCE x)")[-1])

        return self.run_client(run)


class UnchangedSince(ModSeqCase):
    def test_conflicting_store_is_refused_with_modified(self):
        def run():
            a, b = self.wire(), self.wire()
            a.ok("SELECT INBOX (CONDSTORE)")
            b.ok("SELECT INBOX (CONDSTORE)")
            seen = modseqs_of(a.ok("UID FETCH 1:3 (MODSEQ)"))
            # b changes message 2 meanwhile.
            b.ok("STORE 2 +FLAGS ($Label2)")
            lines = a.ok(f"STORE 1:3 (UNCHANGEDSINCE {max(seen.values())}) +FLAGS (\\Deleted)")
            # RFC 7162 3.1.3: 2 failed the test and is left as it is; 1 and 3 are changed.
            self.assertEqual(code(lines, "MODIFIED"), 2)
            stored = [line for line in untagged(lines, "FETCH") if b"\\Deleted" in line]
            self.assertEqual(sorted(line.split()[1] for line in stored), [b"1", b"3"])
            for line in untagged(lines, "FETCH"):
                # Message 2's FETCH, if any, is b's change (RFC 7162 3.1: with MODSEQ too).
                self.assertRegex(line, rb"MODSEQ \(\d+\)")
            flags = flags_of(a.ok("UID FETCH 1:3 (FLAGS)"))
            self.assertIn("\\Deleted", flags[1])
            self.assertNotIn("\\Deleted", flags[2])
            self.assertIn("\\Deleted", flags[3])
            # With the new modseq the store goes through.
            now = modseqs_of(a.ok("UID FETCH 2 (MODSEQ)"))[2]
            uid_lines = a.ok(f"UID STORE 2 (UNCHANGEDSINCE {now}) +FLAGS (\\Deleted)")
            self.assertIsNone(code(uid_lines, "MODIFIED"))
            self.assertIn("\\Deleted", flags_of(a.ok("UID FETCH 2 (FLAGS)"))[2])

        return self.run_client(run)

    def test_unchangedsince_zero_always_fails_and_uid_store_names_uids(self):
        def run():
            c = self.wire()
            c.ok("SELECT INBOX")
            c.ok("STORE 1 +FLAGS (\\Deleted)")
            c.ok("EXPUNGE")  # sequence numbers and UIDs differ now
            lines = c.ok("UID STORE 3:5 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
            self.assertEqual(code(lines, "MODIFIED"), b"3:5")
            lines = c.ok("STORE 2:3 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
            self.assertEqual(code(lines, "MODIFIED"), b"2:3")
            self.assertEqual(untagged(lines, "FETCH"), [])
            self.assertEqual(flags_of(c.ok("UID FETCH 1:* (FLAGS)")), {2: set(), 3: set(), 4: set(), 5: set()})

        return self.run_client(run)


class SearchModSeq(ModSeqCase):
    def test_search_modseq_with_the_highest_modseq_found(self):
        def run():
            c = self.wire()
            c.ok("SELECT INBOX")
            c.ok("STORE 2 +FLAGS (\\Seen)")
            c.ok("STORE 4 +FLAGS (\\Seen)")
            mods = modseqs_of(c.ok("UID FETCH 1:* (MODSEQ)"))
            lines = c.ok(f"SEARCH MODSEQ {mods[2]}")
            self.assertEqual(untagged(lines, "SEARCH"), [b"* SEARCH 2 4 (MODSEQ %d)" % mods[4]])
            lines = c.ok(f'UID SEARCH MODSEQ "/flags/\\\\Seen" all {mods[4]}')
            self.assertEqual(untagged(lines, "SEARCH"), [b"* SEARCH 4 (MODSEQ %d)" % mods[4]])
            # Nothing found: no (MODSEQ) at all.
            self.assertEqual(untagged(c.ok(f"SEARCH MODSEQ {mods[4] + 1}"), "SEARCH"), [b"* SEARCH"])
            # ESEARCH (RFC 4731): MODSEQ of what the answer reports.
            lines = c.ok(f"SEARCH RETURN (MIN) MODSEQ {mods[2]}")
            self.assertEqual(untagged(lines, "ESEARCH"), [b'* ESEARCH (TAG "T%d") MIN 2 MODSEQ %d' % (c.n, mods[2])])
            lines = c.ok(f"SEARCH RETURN (ALL) MODSEQ {mods[2]}")
            self.assertEqual(untagged(lines, "ESEARCH"), [b'* ESEARCH (TAG "T%d") ALL 2,4 MODSEQ %d' % (c.n, mods[4])])
            lines = c.ok(f"SEARCH RETURN (COUNT) MODSEQ {mods[4] + 1}")
            self.assertEqual(untagged(lines, "ESEARCH"), [b'* ESEARCH (TAG "T%d") COUNT 0' % c.n])
            # RFC 7162 3.1.9: SORT the same.
            lines = c.ok(f"SORT (REVERSE SUBJECT) UTF-8 MODSEQ {mods[2]}")
            self.assertEqual(untagged(lines, "SORT"), [b"* SORT 4 2 (MODSEQ %d)" % mods[4]])

        return self.run_client(run)


class Restart(ModSeqCase):
    @defer.inlineCallbacks
    def test_modseqs_survive_a_restart_and_never_go_backwards(self):
        def before():
            c = self.wire()
            c.ok("SELECT INBOX (CONDSTORE)")
            c.ok("STORE 1 +FLAGS (\\Seen)")
            c.ok("STORE 3 +FLAGS ($Work)")
            c.ok("STORE 5 +FLAGS (\\Deleted)")
            c.ok("EXPUNGE")
            lines = c.ok("UID FETCH 1:* (MODSEQ FLAGS)")
            highest = code(c.ok("SELECT INBOX"), "HIGHESTMODSEQ")
            c.ok("LOGOUT")
            return modseqs_of(lines), flags_of(lines), highest

        mods, flags, highest = yield self.run_client(before)
        yield self.restart()

        def after():
            c = self.wire()
            lines = c.ok("SELECT INBOX (CONDSTORE)")
            self.assertEqual(code(lines, "HIGHESTMODSEQ"), highest)
            again = c.ok("UID FETCH 1:* (MODSEQ FLAGS)")
            self.assertEqual(modseqs_of(again), mods)
            self.assertEqual(flags_of(again), flags)
            self.assertEqual(untagged(c.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})"), "FETCH"), [])
            changed = c.ok("UID STORE 2 +FLAGS (\\Answered)")
            self.assertGreater(modseqs_of(changed)[2], highest)

        yield self.run_client(after)

    @defer.inlineCallbacks
    def test_a_folder_nobody_selected_keeps_its_modseqs_across_a_restart(self):
        # APPEND and COPY into Sent while INBOX is selected: Sent's folder
        # object is let go after each command, its index still to be written.
        def before():
            c = self.wire()
            c.ok("SELECT INBOX")
            for n in (7, 8):
                data = message(n).decode()
                c.ok("APPEND Sent {%d+}\r\n%s" % (len(data), data))
            c.ok("COPY 1:2 Sent")
            lines = c.ok("STATUS Sent (HIGHESTMODSEQ MESSAGES)")
            # STATUS HIGHESTMODSEQ turns CONDSTORE on: INBOX's HIGHESTMODSEQ comes first.
            self.assertIsInstance(code(lines, "HIGHESTMODSEQ"), int)
            status = [line for line in lines if line.startswith(b"* STATUS")][0]
            self.assertIn(b"MESSAGES 4", status)
            return int(re.search(rb"HIGHESTMODSEQ (\d+)", status).group(1))

        highest = yield self.run_client(before)
        yield self.wait_sessions()
        gc.collect()  # whatever of Sent's folder object was left only in reference cycles goes
        yield self.restart()

        def after():
            c = self.wire()
            lines = c.ok("SELECT Sent (CONDSTORE)")
            self.assertEqual(code(lines, "HIGHESTMODSEQ"), highest)
            self.assertEqual(untagged(c.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})"), "FETCH"), [])
            # Each change has its own modseq still: the COPY's two messages
            # came last; nothing was numbered again.
            last = untagged(c.ok(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {highest - 1})"), "FETCH")
            self.assertEqual([line.split()[1] for line in last], [b"3", b"4"])

        yield self.run_client(after)

    @defer.inlineCallbacks
    def test_an_index_that_lost_its_last_writes_never_gives_a_modseq_again(self):
        # The index as it was before the last changes (a crash before it was
        # written again): the mod-sequence ceiling on disk is newer.
        def first():
            c = self.wire()
            c.ok("SELECT INBOX (CONDSTORE)")
            c.ok("STORE 1 +FLAGS (\\Seen)")
            c.ok("LOGOUT")

        yield self.run_client(first)
        yield self.wait_sessions()
        yield self.server.service.backends.store.close()  # the index as of now
        with open(self.index_path(), "rb") as f:
            old_index = f.read()

        def second():
            c = self.wire()
            c.ok("SELECT INBOX (CONDSTORE)")
            c.ok("STORE 2 +FLAGS (\\Flagged)")
            lines = c.ok("STORE 4 +FLAGS (\\Flagged)")
            seen = modseqs_of(c.ok("UID FETCH 1:* (MODSEQ)"))
            c.ok("LOGOUT")
            return seen, max(seen.values()), lines

        seen, top, _ = yield self.run_client(second)
        yield self.wait_sessions()
        yield self.server.stop()
        with open(self.index_path(), "wb") as f:
            f.write(old_index)
        yield self.server.start()

        def after():
            c = self.wire()
            lines = c.ok("SELECT INBOX (CONDSTORE)")
            self.assertGreater(code(lines, "HIGHESTMODSEQ"), top)
            # Every message counts as changed since anything the client saw.
            changed = modseqs_of(c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {top})"))
            self.assertEqual(sorted(changed), [1, 2, 3, 4, 5])
            for uid, value in changed.items():
                self.assertGreater(value, seen[uid])
            new = modseqs_of(c.ok("UID STORE 3 +FLAGS (\\Seen)"))[3]
            self.assertGreater(new, top)

        yield self.run_client(after)

    @defer.inlineCallbacks
    def test_an_index_written_before_modseqs_loads_with_modseq_one(self):
        def first():
            c = self.wire()
            c.ok("SELECT INBOX")
            c.ok("STORE 2 +FLAGS (\\Seen $Old)")
            c.ok("LOGOUT")

        yield self.run_client(first)
        yield self.wait_sessions()
        yield self.server.stop()
        # What an older mailplat wrote: no modseq fields and no ceiling file.
        path = self.index_path()
        with open(path) as f:
            data = json.load(f)
        for key in ("modseqs", "highestmodseq", "modseq_ceiling", "vanished", "vanished_since"):
            data.pop(key, None)
        with open(path, "w") as f:
            json.dump(data, f)
        os.unlink(os.path.join(os.path.dirname(path), modseqs.CEILING))
        yield self.server.start()

        def after():
            c = self.wire()
            lines = c.ok("SELECT INBOX (CONDSTORE)")
            self.assertEqual(code(lines, "UIDVALIDITY"), data["uidvalidity"])
            self.assertEqual(code(lines, "HIGHESTMODSEQ"), 1)
            fetched = c.ok("UID FETCH 1:* (MODSEQ FLAGS)")
            self.assertEqual(modseqs_of(fetched), {1: 1, 2: 1, 3: 1, 4: 1, 5: 1})
            self.assertEqual(flags_of(fetched)[2], {"\\Seen", "$Old"})
            self.assertEqual(modseqs_of(c.ok("UID STORE 4 +FLAGS (\\Seen)"))[4], 2)

        yield self.run_client(after)


class MboxCapability(Capability):
    store = "mbox"


class MboxHighestModSeq(HighestModSeq):
    store = "mbox"


class MboxFetchModSeq(FetchModSeq):
    store = "mbox"


class MboxUnchangedSince(UnchangedSince):
    store = "mbox"


class MboxSearchModSeq(SearchModSeq):
    store = "mbox"


class MboxRestart(Restart):
    store = "mbox"
