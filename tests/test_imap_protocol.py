"""
IMAP wire behaviour over an in-memory store: framing, literals, bad input,
states, and what one session is told about another's changes. Exact bytes
go over a real socket (tests.imap_support.RawClient).
"""

import threading

from twisted.internet import reactor
from twisted.trial import unittest

from tests.helpers import in_thread
from tests.imap_support import BatchFolder, CountingFolder, MemoryFolder, MemoryIMAP, RawClient

SIMPLE = b"From: Bob <bob@example.org>\nTo: alice@example.test\nSubject: hello\n\nbody one\n"


def tagged(lines, tag):
    return [l for l in lines if l.startswith(tag + b" ")][-1]


def on_reactor(f, *args):
    """Run f in the reactor thread from a client thread and wait for it."""
    done = threading.Event()
    box = []

    def run():
        try:
            box.append(f(*args))
        finally:
            done.set()

    reactor.callFromThread(run)
    done.wait(5)
    return box[0] if box else None


class ProtocolTestCase(unittest.TestCase):
    server_options = {}

    def setUp(self):
        self.server = MemoryIMAP(self, **self.server_options)
        self.inbox = self.server.inbox

    def client(self, login=True, select=False):
        c = RawClient(self.server.port)
        self.addCleanup(c.close)
        if login:
            c.login()
        if select:
            c.command(b"S1 SELECT INBOX")
        return c

    def run_client(self, f):
        return in_thread(f)


class Framing(ProtocolTestCase):
    def test_unknown_command_is_bad_and_session_continues(self):
        def talk():
            c = self.client(login=False)
            bad = c.command(b"a1 FROB")
            ok = c.command(b"a2 NOOP")
            return bad, ok

        def check(result):
            bad, ok = result
            self.assertTrue(tagged(bad, b"a1").startswith(b"a1 BAD"))
            self.assertTrue(tagged(ok, b"a2").startswith(b"a2 OK"))

        return self.run_client(talk).addCallback(check)

    def test_pipelined_commands_are_answered_in_order(self):
        self.inbox.add(SIMPLE)

        def talk():
            c = self.client()
            c.send(b"p1 SELECT INBOX\r\np2 FETCH 1 (UID)\r\np3 NOOP\r\n")
            return c.until(b"p3")

        def check(lines):
            tags = [l.split(b" ")[0] for l in lines if not l.startswith(b"*")]
            self.assertEqual(tags, [b"p1", b"p2", b"p3"])

        return self.run_client(talk).addCallback(check)

    def test_synchronizing_literal_gets_continuation(self):
        def talk():
            c = self.client(login=False)
            c.send(b"a1 LOGIN {5}\r\n")
            cont = c.line()
            c.send(b"alice pw\r\n")
            return cont, c.until(b"a1")

        def check(result):
            cont, lines = result
            self.assertTrue(cont.startswith(b"+"))
            self.assertTrue(tagged(lines, b"a1").startswith(b"a1 OK"))

        return self.run_client(talk).addCallback(check)

    def test_non_synchronizing_literal_needs_no_continuation(self):
        def talk():
            c = self.client(login=False)
            return c.command(b"a1 LOGIN {5+}\r\nalice {2+}\r\npw")

        def check(lines):
            self.assertFalse(any(l.startswith(b"+") for l in lines))
            self.assertTrue(tagged(lines, b"a1").startswith(b"a1 OK"))

        return self.run_client(talk).addCallback(check)

    def test_huge_synchronizing_literal_is_refused_without_continuation(self):
        def talk():
            c = self.client()
            first = c.command(b"a1 CREATE {999999999}")
            return first, c.command(b"a2 NOOP")

        def check(result):
            first, after = result
            self.assertEqual(len(first), 1)
            self.assertTrue(first[0].startswith(b"a1 BAD"))
            self.assertTrue(tagged(after, b"a2").startswith(b"a2 OK"))

        return self.run_client(talk).addCallback(check)

    def test_huge_append_literal_is_no_toobig(self):
        def talk():
            c = self.client()
            return c.command(b"a1 APPEND INBOX {999999999}")

        def check(lines):
            self.assertTrue(lines[0].startswith(b"a1 NO [TOOBIG]"))

        return self.run_client(talk).addCallback(check)

    def test_huge_non_synchronizing_literal_is_read_and_discarded(self):
        size = 70 * 1024

        def talk():
            c = self.client()
            c.send(b"a1 CREATE {%d+}\r\n" % size + b"x" * size + b"\r\n")
            first = c.until(b"a1")
            return first, c.command(b"a2 NOOP")

        def check(result):
            first, after = result
            self.assertTrue(tagged(first, b"a1").startswith(b"a1 BAD"))
            self.assertTrue(tagged(after, b"a2").startswith(b"a2 OK"))

        return self.run_client(talk).addCallback(check)

    def test_overlong_line_is_bad_and_session_continues(self):
        def talk():
            c = self.client()
            c.send(b"a1 NOOP " + b"x" * 100_000 + b"\r\n")
            first = c.until(b"a1")
            return first, c.command(b"a2 NOOP")

        def check(result):
            first, after = result
            self.assertIn(b"too long", tagged(first, b"a1"))
            self.assertTrue(tagged(after, b"a2").startswith(b"a2 OK"))

        return self.run_client(talk).addCallback(check)

    def test_missing_tag_is_untagged_bad(self):
        def talk():
            c = self.client(login=False)
            c.send(b"\r\n")
            return c.line()

        return self.run_client(talk).addCallback(lambda line: self.assertTrue(line.startswith(b"* BAD")))


class LiteralNeverSent(ProtocolTestCase):
    server_options = {"command_timeout": 1}

    def test_literal_announced_and_never_sent_ends_in_bye(self):
        def talk():
            c = self.client(login=False)
            c.send(b"a1 LOGIN {5}\r\n")
            cont = c.line()
            return cont, c.line()

        def check(result):
            cont, bye = result
            self.assertTrue(cont.startswith(b"+"))
            self.assertTrue(bye.startswith(b"* BYE"))

        return self.run_client(talk).addCallback(check)


class BadInput(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.inbox.add(SIMPLE)

    def _one(self, command, expected=b"BAD"):
        def talk():
            c = self.client(select=True)
            first = c.command(b"b1 " + command)
            return first, c.command(b"b2 NOOP")

        def check(result):
            first, after = result
            self.assertTrue(tagged(first, b"b1").startswith(b"b1 " + expected), first)
            self.assertTrue(tagged(after, b"b2").startswith(b"b2 OK"))

        return self.run_client(talk).addCallback(check)

    def test_unbalanced_parentheses_in_fetch(self):
        return self._one(b"FETCH 1 (FLAGS UID")

    def test_unbalanced_parentheses_in_store(self):
        return self._one(b"STORE 1 +FLAGS (\\Seen")

    def test_sequence_number_zero(self):
        return self._one(b"FETCH 0 (FLAGS)")

    def test_sequence_set_with_letters(self):
        return self._one(b"FETCH *:abc (FLAGS)")

    def test_sequence_number_past_exists(self):
        return self._one(b"FETCH 7 (FLAGS)")

    def test_unknown_fetch_item(self):
        return self._one(b"FETCH 1 (FROBNICATE)")

    def test_unknown_search_key(self):
        return self._one(b"SEARCH FROBNICATE")

    def test_uid_with_wrong_command(self):
        return self._one(b"UID NOOP")

    def test_extra_arguments(self):
        return self._one(b"NOOP now")

    def test_select_missing_mailbox_is_no(self):
        return self._one(b"STATUS Nowhere (MESSAGES)", b"NO")

    def test_login_when_logged_in(self):
        return self._one(b"LOGIN alice pw")

    def test_bad_charset_is_no(self):
        return self._one(b"SEARCH CHARSET KOI8-U ALL", b"NO [BADCHARSET")


class States(ProtocolTestCase):
    def test_select_before_login_is_bad(self):
        def talk():
            c = self.client(login=False)
            return c.command(b"a1 SELECT INBOX")

        return self.run_client(talk).addCallback(lambda l: self.assertIn(b"log in first", l[-1]))

    def test_fetch_without_selected_mailbox_is_bad(self):
        def talk():
            c = self.client()
            return c.command(b"a1 FETCH 1 FLAGS")

        return self.run_client(talk).addCallback(lambda l: self.assertIn(b"select a mailbox first", l[-1]))

    def test_failed_select_leaves_nothing_selected(self):
        def talk():
            c = self.client(select=True)
            c.command(b"a1 SELECT Nowhere")
            return c.command(b"a2 FETCH 1 FLAGS")

        return self.run_client(talk).addCallback(lambda l: self.assertIn(b"select a mailbox first", l[-1]))


class Idle(ProtocolTestCase):
    def test_idle_ends_only_on_done(self):
        def talk():
            c = self.client(select=True)
            c.send(b"i1 IDLE\r\n")
            cont = c.line()
            c.send(b"i2 NOOP\r\n")
            complaint = c.line()
            c.send(b"DONE\r\n")
            return cont, complaint, c.until(b"i1")

        def check(result):
            cont, complaint, end = result
            self.assertTrue(cont.startswith(b"+"))
            self.assertTrue(complaint.startswith(b"* BAD"))
            self.assertTrue(tagged(end, b"i1").startswith(b"i1 OK"))

        return self.run_client(talk).addCallback(check)

    def test_idle_pushes_new_message_at_once(self):
        def talk():
            c = self.client(select=True)
            c.send(b"i1 IDLE\r\n")
            c.line()
            on_reactor(self.inbox.add, SIMPLE)
            pushed = [c.line(), c.line()]
            c.send(b"DONE\r\n")
            c.until(b"i1")
            return pushed

        return self.run_client(talk).addCallback(lambda p: self.assertEqual(p[0], b"* 1 EXISTS\r\n"))

    def test_idle_pushes_expunge(self):
        self.inbox.add(SIMPLE)
        self.inbox.add(SIMPLE)

        def expunge():
            self.inbox.store_flags([1], frozenset(["\\Deleted"]), "+", origin="other")
            self.inbox.expunge(origin="other")

        def talk():
            c = self.client(select=True)
            c.send(b"i1 IDLE\r\n")
            c.line()
            on_reactor(expunge)
            pushed = [c.line(), c.line()]
            c.send(b"DONE\r\n")
            c.until(b"i1")
            return pushed

        def check(pushed):
            self.assertIn(b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))\r\n", pushed + [b""] )
            self.assertIn(b"* 1 EXPUNGE\r\n", pushed)

        return self.run_client(talk).addCallback(check)


class TwoSessions(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        for _ in range(3):
            self.inbox.add(SIMPLE)

    def test_expunge_by_other_session_waits_during_fetch(self):
        def talk():
            a = self.client(select=True)
            b = self.client(select=True)
            b.command(b"b1 STORE 2 +FLAGS.SILENT (\\Deleted)")
            b.command(b"b2 EXPUNGE")
            during = a.command(b"a1 FETCH 1:* (UID)")
            after = a.command(b"a2 NOOP")
            return during, after

        def check(result):
            during, after = result
            self.assertFalse(any(b"EXPUNGE" in l for l in during))
            self.assertIn(b"* 2 EXPUNGE\r\n", after)

        return self.run_client(talk).addCallback(check)

    def test_expunge_by_other_session_is_sent_during_uid_fetch(self):
        def talk():
            a = self.client(select=True)
            b = self.client(select=True)
            b.command(b"b1 STORE 2 +FLAGS.SILENT (\\Deleted)")
            b.command(b"b2 EXPUNGE")
            return a.command(b"a1 UID FETCH 1:* (UID)")

        return self.run_client(talk).addCallback(lambda l: self.assertIn(b"* 2 EXPUNGE\r\n", l))

    def test_flag_change_by_other_session_is_reported(self):
        def talk():
            a = self.client(select=True)
            b = self.client(select=True)
            b.command(b"b1 STORE 3 +FLAGS (\\Flagged)")
            return a.command(b"a1 NOOP")

        def check(lines):
            self.assertTrue(any(l.startswith(b"* 3 FETCH (UID 3 FLAGS (") and b"\\Flagged" in l for l in lines))

        return self.run_client(talk).addCallback(check)

    def test_new_message_is_reported_at_next_command(self):
        def talk():
            a = self.client(select=True)
            b = self.client()
            b.command(b"b1 APPEND INBOX {8+}\r\nhi\r\n\r\nx")
            return a.command(b"a1 NOOP")

        return self.run_client(talk).addCallback(lambda l: self.assertIn(b"* 4 EXISTS\r\n", l))

    def test_recent_is_told_to_one_session_only(self):
        def talk():
            a = self.client(login=True)
            first = a.command(b"a1 SELECT INBOX")
            b = self.client(login=True)
            second = b.command(b"b1 SELECT INBOX")
            return first, second

        def check(result):
            first, second = result
            self.assertIn(b"* 3 RECENT\r\n", first)
            self.assertIn(b"* 0 RECENT\r\n", second)

        return self.run_client(talk).addCallback(check)


class Recent(ProtocolTestCase):
    """RFC 3501 2.3.2: \\Recent is counted by STATUS and shown by EXAMINE, claimed only by SELECT."""

    def setUp(self):
        super().setUp()
        self.inbox.add(SIMPLE)

    def test_status_counts_recent_without_claiming_it(self):
        def talk():
            status = self.client().command(b"a1 STATUS INBOX (RECENT)")
            return status, self.client().command(b"b1 SELECT INBOX")

        def check(result):
            status, select = result
            self.assertEqual(status[0], b'* STATUS "INBOX" (RECENT 1)\r\n')
            self.assertIn(b"* 1 RECENT\r\n", select)

        return self.run_client(talk).addCallback(check)

    def test_status_counts_none_once_a_select_claimed_them(self):
        def talk():
            self.client(select=True)
            return self.client().command(b"a1 STATUS INBOX (MESSAGES RECENT)")

        return self.run_client(talk).addCallback(
            lambda lines: self.assertEqual(lines[0], b'* STATUS "INBOX" (MESSAGES 1 RECENT 0)\r\n')
        )

    def test_examine_shows_recent_without_claiming_it(self):
        def talk():
            a = self.client()
            examine = a.command(b"a1 EXAMINE INBOX")
            flags = a.command(b"a2 FETCH 1 (FLAGS)")
            return examine, flags, self.client().command(b"b1 SELECT INBOX")

        def check(result):
            examine, flags, select = result
            self.assertIn(b"* 1 RECENT\r\n", examine)
            self.assertIn(b"\\Recent", flags[0])
            self.assertIn(b"* 1 RECENT\r\n", select)

        return self.run_client(talk).addCallback(check)

    def test_examining_session_is_told_of_new_mail_as_recent_without_claiming_it(self):
        def talk():
            a = self.client()
            a.command(b"a1 EXAMINE INBOX")
            on_reactor(self.inbox.add, SIMPLE)
            noop = a.command(b"a2 NOOP")
            return noop, self.client().command(b"b1 SELECT INBOX")

        def check(result):
            noop, select = result
            self.assertIn(b"* 2 EXISTS\r\n", noop)
            self.assertIn(b"* 2 RECENT\r\n", noop)
            self.assertIn(b"* 2 RECENT\r\n", select)

        return self.run_client(talk).addCallback(check)

    def test_folder_written_before_recent_count_answers_zero(self):
        class Older(MemoryFolder):
            @property
            def recent_count(self):
                raise AttributeError("recent_count")

        older = self.server.account._folders["INBOX"] = Older("INBOX")
        older.add(SIMPLE)

        def talk():
            c = self.client()
            return c.command(b"a1 STATUS INBOX (RECENT)"), c.command(b"a2 EXAMINE INBOX")

        def check(result):
            status, examine = result
            self.assertEqual(status[0], b'* STATUS "INBOX" (RECENT 0)\r\n')
            self.assertIn(b"* 0 RECENT\r\n", examine)

        return self.run_client(talk).addCallback(check)


class BatchOpen(ProtocolTestCase):
    """FETCH and SEARCH read message text through IBatchOpen.open_many when the folder has it."""

    def use(self, folder, count):
        self.server.account._folders["INBOX"] = folder
        for _ in range(count):
            folder.add(SIMPLE)
        return folder

    def fetch_lines(self, command):
        def talk():
            return self.client(select=True).command(command)

        return self.run_client(talk).addCallback(lambda lines: [l for l in lines if b" FETCH (" in l])

    def test_fetch_opens_a_batch_at_a_time(self):
        folder = self.use(BatchFolder("INBOX"), 450)

        def check(lines):
            self.assertEqual(len(lines), 450)
            self.assertEqual([len(b) for b in folder.batches], [200, 200, 50])
            self.assertEqual(folder.single_opens, 0)

        return self.fetch_lines(b"f1 FETCH 1:* (BODY.PEEK[TEXT])").addCallback(check)

    def test_fetch_answered_from_the_cache_opens_nothing(self):
        folder = self.use(BatchFolder("INBOX"), 3)

        def again(_):
            del folder.batches[:]
            return self.fetch_lines(b"f2 FETCH 1:* (ENVELOPE)")

        def check(lines):
            self.assertEqual(len(lines), 3)
            self.assertEqual(folder.batches, [])

        return self.fetch_lines(b"f1 FETCH 1:* (ENVELOPE)").addCallback(again).addCallback(check)

    def test_message_open_many_reports_gone_is_left_out(self):
        folder = self.use(BatchFolder("INBOX"), 3)
        folder.missing.add(2)

        def check(lines):
            self.assertEqual([l.split(b" ")[1] for l in lines], [b"1", b"3"])

        return self.fetch_lines(b"f1 FETCH 1:3 (BODY.PEEK[])").addCallback(check)

    def test_search_of_text_opens_a_batch_at_a_time(self):
        folder = self.use(BatchFolder("INBOX"), 250)

        def talk():
            return self.client(select=True).command(b"s1 SEARCH BODY one")

        def check(lines):
            self.assertEqual(lines[0], b"* SEARCH " + b" ".join(b"%d" % n for n in range(1, 251)) + b"\r\n")
            self.assertEqual([len(b) for b in folder.batches], [200, 50])
            self.assertEqual(folder.single_opens, 0)

        return self.run_client(talk).addCallback(check)

    def test_folder_without_open_many_is_read_with_open(self):
        folder = self.use(CountingFolder("INBOX"), 3)

        def check(lines):
            self.assertEqual(len(lines), 3)
            self.assertEqual(folder.single_opens, 3)

        return self.fetch_lines(b"f1 FETCH 1:* (RFC822)").addCallback(check)


class Login(ProtocolTestCase):
    server_options = {"tls": True, "plaintext": False}

    def test_plain_port_advertises_logindisabled_and_no_auth(self):
        def talk():
            c = self.client(login=False)
            return c.command(b"a1 CAPABILITY")

        def check(lines):
            caps = lines[0]
            self.assertIn(b"LOGINDISABLED", caps)
            self.assertIn(b"STARTTLS", caps)
            self.assertNotIn(b"AUTH=", caps)

        return self.run_client(talk).addCallback(check)

    def test_login_before_starttls_is_refused(self):
        def talk():
            c = self.client(login=False)
            return c.command(b"a1 LOGIN alice pw")

        return self.run_client(talk).addCallback(lambda l: self.assertIn(b"a1 NO [PRIVACYREQUIRED]", l[-1]))

    def test_authenticate_before_starttls_is_refused(self):
        def talk():
            c = self.client(login=False)
            return c.command(b"a1 AUTHENTICATE PLAIN")

        return self.run_client(talk).addCallback(lambda l: self.assertIn(b"a1 NO", l[-1]))

    def test_command_pipelined_after_starttls_is_dropped(self):
        def talk():
            c = self.client(login=False)
            c.send(b"a1 STARTTLS\r\na2 CAPABILITY\r\n")
            answer = c.line()
            c.starttls()
            after = c.command(b"a3 NOOP")
            return answer, after

        def check(result):
            answer, after = result
            self.assertTrue(answer.startswith(b"a1 OK"))
            self.assertEqual([l.split(b" ")[0] for l in after], [b"a3"])

        return self.run_client(talk).addCallback(check)

    def test_authenticate_plain_after_starttls(self):
        import base64

        def talk():
            c = self.client(login=False)
            c.command(b"a1 STARTTLS")
            c.starttls()
            caps = c.command(b"a2 CAPABILITY")[0]
            c.send(b"a3 AUTHENTICATE PLAIN\r\n")
            cont = c.line()
            c.send(base64.b64encode(b"\0alice\0pw") + b"\r\n")
            return caps, cont, c.until(b"a3")

        def check(result):
            caps, cont, lines = result
            self.assertIn(b"AUTH=PLAIN", caps)
            self.assertNotIn(b"LOGINDISABLED", caps)
            self.assertTrue(cont.startswith(b"+"))
            self.assertTrue(tagged(lines, b"a3").startswith(b"a3 OK"))

        return self.run_client(talk).addCallback(check)

    def test_authenticate_login_with_initial_response_after_starttls(self):
        import base64

        def talk():
            c = self.client(login=False)
            c.command(b"a1 STARTTLS")
            c.starttls()
            c.send(b"a2 AUTHENTICATE LOGIN " + base64.b64encode(b"alice") + b"\r\n")
            c.line()
            c.send(base64.b64encode(b"pw") + b"\r\n")
            return c.until(b"a2")

        return self.run_client(talk).addCallback(lambda l: self.assertTrue(tagged(l, b"a2").startswith(b"a2 OK")))


class Throttle(ProtocolTestCase):
    server_options = {"auth_failures": 2}

    def test_failed_logins_are_throttled(self):
        def talk():
            c = self.client(login=False)
            answers = [c.command(b"a%d LOGIN alice wrong" % i)[-1] for i in range(3)]
            answers.append(c.command(b"a9 LOGIN alice pw")[-1])
            return answers

        def check(answers):
            self.assertIn(b"[AUTHENTICATIONFAILED]", answers[0])
            self.assertIn(b"[UNAVAILABLE]", answers[2])
            self.assertIn(b"[UNAVAILABLE]", answers[3])

        return self.run_client(talk).addCallback(check)


class FetchCache(ProtocolTestCase):
    def test_envelope_and_bodystructure_are_kept_in_the_folder_cache(self):
        self.inbox.add(SIMPLE)

        def talk():
            c = self.client(select=True)
            return c.command(b"f1 FETCH 1 (ENVELOPE BODYSTRUCTURE)")

        def check(lines):
            self.assertIsNotNone(self.inbox.cached(1, "envelope"))
            self.assertIsNotNone(self.inbox.cached(1, "bodystructure"))
            self.inbox._messages[0].data = b"Subject: changed\n\nx\n"  # a second FETCH must not re-read
            return in_thread(lambda: self.client(select=True).command(b"f2 FETCH 1 (ENVELOPE)")).addCallback(
                lambda again: self.assertIn(b'"hello"', again[0])
            )

        return self.run_client(talk).addCallback(check)


class Commands(ProtocolTestCase):
    def setUp(self):
        super().setUp()
        self.inbox.add(SIMPLE)
        self.inbox.add(SIMPLE)

    def talk(self, *commands, select=True):
        def run():
            c = self.client(select=select)
            return [c.command(b"c%d " % i + text) for i, text in enumerate(commands)]

        return self.run_client(run)

    def test_list_special_use_selection_returns_only_special_folders(self):
        def check(answers):
            names = [l.rsplit(b" ", 1)[1].strip() for l in answers[0] if l.startswith(b"* LIST")]
            self.assertEqual(sorted(names), [b'"Archive"', b'"Drafts"', b'"Junk"', b'"Sent"', b'"Trash"'])

        return self.talk(b'LIST (SPECIAL-USE) "" "*"').addCallback(check)

    def test_list_with_empty_pattern_gives_the_separator(self):
        return self.talk(b'LIST "" ""').addCallback(
            lambda a: self.assertEqual(a[0][0], b'* LIST (\\Noselect) "." ""\r\n')
        )

    def test_list_percent_stops_at_the_separator(self):
        self.account_create("Lists.Python")

        def check(answers):
            names = [l.rsplit(b" ", 1)[1].strip() for l in answers[0] if l.startswith(b"* LIST")]
            self.assertIn(b'"Lists"', names)
            self.assertNotIn(b'"Lists.Python"', names)

        return self.talk(b'LIST "" "%"').addCallback(check)

    def test_list_return_status_follows_each_list_response(self):
        # RFC 5819 2
        self.inbox.store_flags([1], frozenset(["\\Seen"]), "+")

        def check(answers):
            lines = answers[0]
            for i, line in enumerate(lines[:-1]):
                if line.startswith(b"* LIST"):
                    name = line.rsplit(b" ", 1)[1].strip()
                    self.assertTrue(lines[i + 1].startswith(b"* STATUS " + name + b" ("), lines[i + 1])
            self.assertIn(b'* STATUS "INBOX" (MESSAGES 2 UNSEEN 1)\r\n', lines)
            self.assertEqual(len([l for l in lines if l.startswith(b"* STATUS")]), 6)

        return self.talk(b'LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))', select=False).addCallback(check)

    def test_list_return_status_gives_none_for_unselectable_mailboxes(self):
        account = self.server.account
        listed = account.folders

        def folders():
            extra = [("Ghost", frozenset(["\\Noselect", "\\HasChildren"])), ("Vanished", frozenset(["\\HasNoChildren"]))]
            return listed().addCallback(lambda found: found + extra)

        account.folders = folders

        def check(answers):
            lines = answers[0]
            ghost = [i for i, l in enumerate(lines) if l.endswith(b' "Ghost"\r\n')][0]
            vanished = [i for i, l in enumerate(lines) if l.endswith(b' "Vanished"\r\n')][0]
            self.assertFalse(lines[ghost + 1].startswith(b"* STATUS"))
            # RFC 5819 2: gone between LIST and STATUS: \Noselect, no STATUS.
            self.assertIn(b"\\Noselect", lines[vanished])
            self.assertFalse(lines[vanished + 1].startswith(b"* STATUS"))

        return self.talk(b'LIST "" "*" RETURN (STATUS (MESSAGES))', select=False).addCallback(check)

    def test_list_return_status_with_an_unknown_item_is_bad(self):
        return self.talk(b'LIST "" "*" RETURN (STATUS (BOGUS))', select=False).addCallback(
            lambda a: self.assertTrue(a[0][-1].startswith(b"c0 BAD"))
        )

    def test_list_with_other_return_options_answers_as_plain_list(self):
        return self.talk(b'LIST "" "*" RETURN (CHILDREN SPECIAL-USE)', select=False).addCallback(
            lambda a: (
                self.assertFalse(any(l.startswith(b"* STATUS") for l in a[0])),
                self.assertEqual(len([l for l in a[0] if l.startswith(b"* LIST")]), 6),
            )
        )

    def account_create(self, name):
        for part in ("Lists", name):
            self.server.account.create(part)

    def test_store_silent_sends_no_fetch(self):
        return self.talk(b"STORE 1 +FLAGS.SILENT (\\Flagged)").addCallback(
            lambda a: self.assertEqual([l for l in a[0] if b"FETCH" in l], [])
        )

    def test_uid_store_answers_with_uid(self):
        return self.talk(b"UID STORE 2 +FLAGS (\\Flagged)").addCallback(
            lambda a: self.assertIn(b"UID 2", a[0][0])
        )

    def test_uid_search_answers_uids(self):
        self.inbox.store_flags([1], frozenset(["\\Deleted"]), "+")
        self.inbox.expunge()
        return self.talk(b"UID SEARCH ALL", b"SEARCH ALL").addCallback(
            lambda a: (self.assertEqual(a[0][0], b"* SEARCH 2\r\n"), self.assertEqual(a[1][0], b"* SEARCH 1\r\n"))
        )

    def test_search_with_literal_utf8_string(self):
        self.inbox.add("Subject: Grüße\n\nx\n".encode())
        data = "grüße".encode()

        def run():
            c = self.client(select=True)
            return c.command(b"c1 SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n" % len(data) + data)

        return self.run_client(run).addCallback(lambda l: self.assertEqual(l[0], b"* SEARCH 3\r\n"))

    def test_examine_has_no_permanent_flags(self):
        return self.talk(b"EXAMINE INBOX", select=False).addCallback(
            lambda a: (
                self.assertIn(b"* OK [PERMANENTFLAGS ()] read-only mailbox\r\n", a[0]),
                self.assertIn(b"[READ-ONLY]", a[0][-1]),
            )
        )

    def test_copy_to_missing_mailbox_says_trycreate(self):
        return self.talk(b"COPY 1 Nowhere").addCallback(lambda a: self.assertIn(b"NO [TRYCREATE]", a[0][-1]))

    def test_move_sends_copyuid_then_expunge(self):
        def check(a):
            lines = a[0]
            self.assertTrue(lines[0].startswith(b"* OK [COPYUID "))
            self.assertEqual(lines[1], b"* 1 EXPUNGE\r\n")

        return self.talk(b"MOVE 1 Archive").addCallback(check)

    def test_check_and_noop(self):
        return self.talk(b"CHECK", b"NOOP").addCallback(
            lambda a: self.assertEqual([x[-1][:5] for x in a], [b"c0 OK", b"c1 OK"])
        )

    def test_logout_says_bye_first(self):
        def run():
            c = self.client()
            return c.command(b"c1 LOGOUT")

        return self.run_client(run).addCallback(
            lambda l: (self.assertTrue(l[0].startswith(b"* BYE")), self.assertTrue(l[1].startswith(b"c1 OK")))
        )

    def test_append_without_flags_or_date(self):
        return self.talk(b"APPEND INBOX {12+}\r\nSubject: x\r\n", select=False).addCallback(
            lambda a: self.assertIn(b"[APPENDUID ", a[0][-1])
        )

    def test_append_with_flags_and_date(self):
        def check(a):
            self.assertIn(b"[APPENDUID ", a[0][-1])
            info = self.inbox.messages()[-1]
            self.assertEqual(info.flags, frozenset(["\\Seen"]))
            self.assertEqual(info.internaldate, 1704103200)  # 2024-01-01 10:00 UTC

        return self.talk(
            b'APPEND INBOX (\\Seen) "01-Jan-2024 11:00:00 +0100" {12+}\r\nSubject: x\r\n', select=False
        ).addCallback(check)

    def test_fetch_of_many_messages_answers_each(self):
        for _ in range(600):
            self.inbox.add(SIMPLE)
        return self.talk(b"FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (Subject)])").addCallback(
            lambda a: self.assertEqual(len([l for l in a[0] if l.startswith(b"* ") and b"FETCH" in l]), 602)
        )

    def test_enable_answers_enabled(self):
        return self.talk(b"ENABLE CONDSTORE", select=False).addCallback(
            lambda a: self.assertEqual(a[0][0], b"* ENABLED CONDSTORE\r\n")  # RFC 7162 3.1
        )

    def test_unselect_does_not_expunge(self):
        self.inbox.store_flags([1], frozenset(["\\Deleted"]), "+")
        return self.talk(b"UNSELECT").addCallback(lambda a: self.assertEqual(len(self.inbox.messages()), 2))

    def test_close_expunges(self):
        self.inbox.store_flags([1], frozenset(["\\Deleted"]), "+")
        return self.talk(b"CLOSE").addCallback(lambda a: self.assertEqual(len(self.inbox.messages()), 1))

    def test_search_starting_with_a_parenthesis(self):
        return self.talk(b"SEARCH (OR SEEN UNSEEN)").addCallback(lambda a: self.assertEqual(a[0][0], b"* SEARCH 1 2\r\n"))


class EmptyMailbox(ProtocolTestCase):
    def test_fetch_star_in_an_empty_mailbox_matches_nothing(self):
        def run():
            return self.client(select=True).command(b"e1 FETCH 1:* (FLAGS)")

        return self.run_client(run).addCallback(lambda l: self.assertEqual(l, [b"e1 OK FETCH completed\r\n"]))
