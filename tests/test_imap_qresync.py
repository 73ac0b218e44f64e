"""
QRESYNC (RFC 7162 3.2) end to end, on the maildir and the mbox store, over
IMAPS sockets: ENABLE QRESYNC, SELECT (QRESYNC (...)) answering exactly
the flag changes and the expunged UIDs (VANISHED (EARLIER)) since the
client's mod-sequence - also across a restart of the server, and with
expunges older than the store remembers - UID FETCH (CHANGEDSINCE n
VANISHED), VANISHED instead of EXPUNGE, and [CLOSED].
"""

import re

from twisted.internet import defer

from mailplat.store import modseq as modseqs
from tests.test_imap_condstore import ModSeqCase, code, flags_of, modseqs_of, untagged

SEED_FLAGS = {1: set(), 2: set(), 3: set(), 4: set(), 5: set()}


def vanished(lines, earlier=True):
    """The UIDs of the VANISHED lines (with or without EARLIER), as a set."""
    out = set()
    for line in lines:
        m = re.match(rb"^\* VANISHED (\(EARLIER\) )?(\S+)$", line)
        if m and bool(m.group(1)) == earlier:
            for part in m.group(2).split(b","):
                a, _, b = part.partition(b":")
                out.update(range(int(a), int(b or a) + 1))
    return out


class Resync(ModSeqCase):
    def remember(self):
        """A client's cache: (UIDVALIDITY, HIGHESTMODSEQ, {uid: flags}) of INBOX."""
        c = self.wire()
        c.ok("ENABLE QRESYNC")
        lines = c.ok("SELECT INBOX")
        cache = flags_of(c.ok("UID FETCH 1:* (FLAGS)"))
        c.ok("LOGOUT")
        return code(lines, "UIDVALIDITY"), code(lines, "HIGHESTMODSEQ"), cache

    def change(self):
        """Another device: flags on 2 and 4, and 3 and 5 expunged."""
        c = self.wire()
        c.ok("SELECT INBOX")
        c.ok("UID STORE 2 +FLAGS (\\Seen)")
        c.ok("UID STORE 4 +FLAGS (\\Flagged $Todo)")
        c.ok("UID STORE 3,5 +FLAGS (\\Deleted)")
        c.ok("EXPUNGE")
        c.ok("LOGOUT")

    def resync(self, validity, since, known="1:5", extra=""):
        c = self.wire()
        c.ok("ENABLE QRESYNC")
        arg = f"{validity} {since}" + (f" {known}" if known else "") + extra
        return c, c.ok(f"SELECT INBOX (QRESYNC ({arg}))")

    def check_resync(self, lines, expunged=frozenset({3, 5})):
        self.assertEqual(vanished(lines), set(expunged))
        fetches = untagged(lines, "FETCH")
        self.assertEqual(flags_of(lines), {2: {"\\Seen"}, 4: {"\\Flagged", "$Todo"}})
        self.assertEqual(len(fetches), 2, lines)
        for line in fetches:
            self.assertRegex(line, rb"MODSEQ \(\d+\)")
        # RFC 7162 3.2.5: VANISHED (EARLIER) comes before the FETCHes.
        first_fetch = min(i for i, line in enumerate(lines) if b" FETCH " in line)
        self.assertLess(min(i for i, line in enumerate(lines) if line.startswith(b"* VANISHED")), first_fetch)
        self.assertIn(b"OK [READ-WRITE]", lines[-1])

    def test_enable_qresync_and_select_without_it_is_bad(self):
        def run():
            c = self.wire()
            self.assertIn(b"BAD", c.command("SELECT INBOX (QRESYNC (1 1))")[-1])
            lines = c.ok("ENABLE QRESYNC CONDSTORE X-UNKNOWN")
            self.assertEqual(lines[0], b"* ENABLED QRESYNC CONDSTORE")
            self.assertIn(b"BAD", c.command("SELECT INBOX (QRESYNC (0 1))")[-1])
            self.assertIn(b"BAD", c.command("SELECT INBOX (FOO)")[-1])

        return self.run_client(run)

    @defer.inlineCallbacks
    def test_two_devices_one_resyncs_and_gets_exactly_the_changes(self):
        validity, since, cache = yield self.run_client(self.remember)
        self.assertEqual(cache, SEED_FLAGS)
        yield self.run_client(self.change)

        def run():
            c, lines = self.resync(validity, since)
            self.check_resync(lines)
            # Nothing since the new HIGHESTMODSEQ.
            now = code(lines, "HIGHESTMODSEQ")
            _, again = self.resync(validity, now)
            self.assertEqual(vanished(again), set())
            self.assertEqual(untagged(again, "FETCH"), [])

        yield self.run_client(run)

    @defer.inlineCallbacks
    def test_resync_after_a_restart_between_the_two_devices(self):
        validity, since, _ = yield self.run_client(self.remember)
        yield self.restart()
        yield self.run_client(self.change)
        yield self.restart()

        def run():
            _, lines = self.resync(validity, since)
            self.check_resync(lines)

        yield self.run_client(run)

    @defer.inlineCallbacks
    def test_resync_without_known_uids_and_with_another_uidvalidity(self):
        validity, since, _ = yield self.run_client(self.remember)
        yield self.run_client(self.change)

        def run():
            _, lines = self.resync(validity, since, known=None)
            self.check_resync(lines)
            # A UIDVALIDITY that is not the mailbox's: an ordinary SELECT.
            _, other = self.resync(validity + 1, since)
            self.assertEqual(vanished(other), set())
            self.assertEqual(untagged(other, "FETCH"), [])
            self.assertIsInstance(code(other, "HIGHESTMODSEQ"), int)

        yield self.run_client(run)

    @defer.inlineCallbacks
    def test_known_uids_limit_the_answer(self):
        validity, since, _ = yield self.run_client(self.remember)
        yield self.run_client(self.change)

        def run():
            _, lines = self.resync(validity, since, known="1:3")
            self.assertEqual(vanished(lines), {3})
            self.assertEqual(flags_of(lines), {2: {"\\Seen"}})

        yield self.run_client(run)

    def expunge(self, *uids):
        c = self.wire()
        c.ok("SELECT INBOX")
        for uid in uids:
            c.ok(f"UID STORE {uid} +FLAGS (\\Deleted)")
            c.ok(f"UID EXPUNGE {uid}")

    @defer.inlineCallbacks
    def test_forgotten_expunges_report_every_known_uid_that_is_gone(self):
        # The store remembers only the last expunged UID here: a client from
        # before the older ones gets every UID it knows that is not there.
        self.patch(modseqs, "KEEP_EXPUNGED", 1)
        yield self.run_client(self.expunge, 1)
        validity, since, cache = yield self.run_client(self.remember)
        self.assertEqual(sorted(cache), [2, 3, 4, 5])
        yield self.run_client(self.expunge, 3, 5)

        def run():
            _, lines = self.resync(validity, since, known="1:9")
            # RFC 7162 3.2.5: more than went since may be named (1 went before), never UIDs not given.
            self.assertEqual(vanished(lines), {1, 3, 5})
            # The client's sequence numbers (message 1 was UID 2) still hold
            # for UID 2: nothing below it went since, so only above it.
            _, matched = self.resync(validity, since, known="1:9", extra=" (1 2)")
            self.assertEqual(vanished(matched), {3, 5})
            # Since the last expunge, it is known exactly again.
            now = code(matched, "HIGHESTMODSEQ")
            _, exact = self.resync(validity, now, known="1:9")
            self.assertEqual(vanished(exact), set())

        yield self.run_client(run)


class Vanished(ModSeqCase):
    def test_expunge_says_vanished_after_enable_qresync(self):
        def run():
            a, b = self.wire(), self.wire()
            a.ok("ENABLE QRESYNC")
            a.ok("SELECT INBOX")
            b.ok("SELECT INBOX")
            a.ok("UID STORE 2,3 +FLAGS (\\Deleted)")
            lines = a.ok("EXPUNGE")
            self.assertEqual(vanished(lines, earlier=False), {2, 3})
            self.assertFalse([line for line in lines if line.endswith(b" EXPUNGE")])
            self.assertIsInstance(code(lines, "HIGHESTMODSEQ"), int)
            # Another session's expunge: VANISHED too (and EXPUNGE for b, without QRESYNC).
            b.ok("UID STORE 5 +FLAGS (\\Deleted)")
            self.assertIn(b"* 3 EXPUNGE", b.ok("UID EXPUNGE 5"))
            seen = a.ok("NOOP")
            self.assertEqual(vanished(seen, earlier=False), {5})
            # With QRESYNC every FETCH carries UID.
            stored = a.ok("STORE 1 +FLAGS (\\Seen)")
            self.assertRegex(stored[0], rb"^\* 1 FETCH \(FLAGS \(\\Seen\) MODSEQ \(\d+\) UID 1\)$")

        return self.run_client(run)

    def test_uid_fetch_changedsince_vanished(self):
        def run():
            c = self.wire()
            c.ok("ENABLE QRESYNC")
            since = code(c.ok("SELECT INBOX"), "HIGHESTMODSEQ")
            c.ok("UID STORE 1 +FLAGS (\\Answered)")
            c.ok("UID STORE 4 +FLAGS (\\Deleted)")
            c.ok("UID EXPUNGE 4")
            lines = c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {since} VANISHED)")
            self.assertEqual(vanished(lines), {4})
            self.assertEqual(flags_of(lines), {1: {"\\Answered"}})
            self.assertEqual(len(modseqs_of(lines)), 1)
            # Only the UIDs of the set asked for.
            self.assertEqual(vanished(c.ok(f"UID FETCH 1:3 (FLAGS) (CHANGEDSINCE {since} VANISHED)")), set())

        return self.run_client(run)

    def test_select_of_another_mailbox_says_closed(self):
        def run():
            c = self.wire()
            plain = c.ok("SELECT INBOX")
            self.assertIsNone(code(plain, "CLOSED"))
            self.assertIsNone(code(c.ok("SELECT Sent"), "CLOSED"))
            c.ok("ENABLE QRESYNC")
            lines = c.ok("EXAMINE INBOX")
            # RFC 7162 3.2.11: first, before anything of the new mailbox.
            self.assertTrue(lines[0].startswith(b"* OK [CLOSED]"), lines)
            self.assertIsNone(code(self.wire().ok("SELECT INBOX"), "CLOSED"))

        return self.run_client(run)


class MboxResync(Resync):
    store = "mbox"


class MboxVanished(Vanished):
    store = "mbox"
