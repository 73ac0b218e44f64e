"""
Small IMAP extensions over real sockets, on the real maildir store (and
the mbox store in the subclasses): RFC 5530 response codes, LITERAL+
(RFC 7888), APPENDLIMIT (RFC 7889), STATUS=SIZE (RFC 8438), WITHIN
(RFC 5032) and SAVEDATE (RFC 8514).
"""

import socket
import ssl

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, client_tls, in_thread
from tests.test_imap_maildir import drain

ALICE = "alice@example.test"
MESSAGE = b"From: Bob <bob@example.org>\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nline one\r\nline two\r\n"


class TLSClient:
    """A blocking line client over implicit TLS: exact bytes in, exact answers out."""

    def __init__(self, port):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = client_tls().wrap_socket(raw)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def send(self, data):
        self.sock.sendall(data)

    def until(self, tag):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return lines
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, text):
        self.send(text + b"\r\n")
        return self.until(text.split(b" ", 1)[0])

    def close(self):
        try:
            self.sock.close()
        except (OSError, ssl.SSLError):
            pass


class Session(unittest.TestCase):
    store = "maildir"
    extra = ""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=("imaps",), extra=self.extra).start(users={ALICE: "pw"})
        self.addCleanup(drain, self.server)

    def talk(self, *commands):
        """Each command's answer lines, in one logged-in session."""

        def run():
            c = TLSClient(self.server.port("imaps"))
            try:
                c.command(b"L1 LOGIN alice@example.test pw")
                return [c.command(command) if isinstance(command, bytes) else command(c) for command in commands]
            finally:
                c.close()

        return in_thread(run)

    def tagged(self, lines):
        return lines[-1].rstrip(b"\r\n")

    def append(self, mailbox=b"INBOX", data=MESSAGE, tag=b"A1", extra=b""):
        def run(c):
            c.send(tag + b" APPEND " + mailbox + extra + b" {%d+}\r\n" % len(data) + data + b"\r\n")
            return c.until(tag)

        return run


class ResponseCodes(Session):
    """RFC 5530 3: the codes of the cases mailplat has."""

    @defer.inlineCallbacks
    def test_create_of_an_existing_mailbox_is_alreadyexists(self):
        first, again, inbox = yield self.talk(b"C1 CREATE Work", b"C2 CREATE Work", b"C3 CREATE INBOX")
        self.assertTrue(self.tagged(first).startswith(b"C1 OK"), first)
        self.assertTrue(self.tagged(again).startswith(b"C2 NO [ALREADYEXISTS]"), again)
        self.assertTrue(self.tagged(inbox).startswith(b"C3 NO [ALREADYEXISTS]"), inbox)

    @defer.inlineCallbacks
    def test_rename_onto_an_existing_mailbox_is_alreadyexists(self):
        _, _, lines = yield self.talk(b"C1 CREATE A", b"C2 CREATE B", b"R1 RENAME A B")
        self.assertTrue(self.tagged(lines).startswith(b"R1 NO [ALREADYEXISTS]"), lines)

    @defer.inlineCallbacks
    def test_a_missing_mailbox_is_nonexistent(self):
        answers = yield self.talk(
            b"S1 SELECT Nope", b"E1 EXAMINE Nope", b"S2 STATUS Nope (MESSAGES)", b"D1 DELETE Nope", b"R1 RENAME Nope Other"
        )
        for lines in answers:
            self.assertIn(b" NO [NONEXISTENT]", self.tagged(lines), lines)

    @defer.inlineCallbacks
    def test_append_and_copy_to_a_missing_mailbox_is_trycreate(self):
        # RFC 5530 3 (NONEXISTENT): for APPEND and COPY, TRYCREATE (RFC 3501 6.3.11) is used instead.
        _, appended, _, copied = yield self.talk(
            self.append(), self.append(b"Nope", tag=b"A2"), b"S1 SELECT INBOX", b"C1 COPY 1:* Nope"
        )
        self.assertTrue(self.tagged(appended).startswith(b"A2 NO [TRYCREATE]"), appended)
        self.assertTrue(self.tagged(copied).startswith(b"C1 NO [TRYCREATE]"), copied)

    @defer.inlineCallbacks
    def test_a_wrong_password_is_authenticationfailed(self):
        def run():
            c = TLSClient(self.server.port("imaps"))
            try:
                return c.command(b"L1 LOGIN alice@example.test wrong")
            finally:
                c.close()

        lines = yield in_thread(run)
        self.assertTrue(self.tagged(lines).startswith(b"L1 NO [AUTHENTICATIONFAILED]"), lines)


class ResponseCodesMbox(ResponseCodes):
    store = "mbox"


class Literals(Session):
    """RFC 7888: LITERAL+ only (5: never LITERAL+ and LITERAL- together); big {n+} literals are taken."""

    @defer.inlineCallbacks
    def test_literal_plus_is_advertised_without_literal_minus(self):
        (lines,) = yield self.talk(b"C1 CAPABILITY")
        caps = lines[0].split()
        self.assertIn(b"LITERAL+", caps)
        self.assertNotIn(b"LITERAL-", caps)

    @defer.inlineCallbacks
    def test_a_non_synchronizing_literal_over_4096_octets_is_accepted(self):
        body = b"x" * 70 + b"\r\n"
        big = MESSAGE + body * 200  # about 14,500 octets
        word = b"needle" + b"y" * 5000  # a 5,006-octet search string, outside APPEND

        def search(c):
            c.send(b"S2 SEARCH CHARSET UTF-8 BODY {%d+}\r\n" % len(word) + word + b"\r\n")
            return c.until(b"S2")

        appended, _, found = yield self.talk(self.append(data=big), b"S1 SELECT INBOX", search)
        self.assertTrue(self.tagged(appended).startswith(b"A1 OK"), appended)
        self.assertFalse(any(line.startswith(b"+ ") for line in appended), appended)
        self.assertEqual(found[0], b"* SEARCH\r\n")
        self.assertTrue(self.tagged(found).startswith(b"S2 OK"), found)


class AppendLimit(Session):
    """RFC 7889: APPENDLIMIT=<message_size>, STATUS APPENDLIMIT, NO [TOOBIG] over it."""

    extra = "\n[limits]\nmessage_size = 20000\n"

    @defer.inlineCallbacks
    def test_the_limit_is_advertised(self):
        (lines,) = yield self.talk(b"C1 CAPABILITY")
        self.assertIn(b"APPENDLIMIT=20000", lines[0].split())

    @defer.inlineCallbacks
    def test_status_appendlimit(self):
        (lines,) = yield self.talk(b"S1 STATUS INBOX (MESSAGES APPENDLIMIT)")
        self.assertEqual(lines[0], b'* STATUS "INBOX" (MESSAGES 0 APPENDLIMIT 20000)\r\n')

    @defer.inlineCallbacks
    def test_list_status_appendlimit(self):
        (lines,) = yield self.talk(b'L2 LIST "" INBOX RETURN (STATUS (APPENDLIMIT))')
        self.assertIn(b'* STATUS "INBOX" (APPENDLIMIT 20000)\r\n', lines)

    @defer.inlineCallbacks
    def test_an_append_over_the_limit_is_toobig(self):
        over = MESSAGE + b"z" * (20001 - len(MESSAGE))
        exact = MESSAGE + b"z" * (20000 - len(MESSAGE) - 2) + b"\r\n"

        def synchronizing(c):
            # A synchronizing literal over the limit is refused before its octets.
            c.send(b"A3 APPEND INBOX {%d}\r\n" % len(over))
            return c.until(b"A3")

        refused, taken, refused_sync, status = yield self.talk(
            self.append(data=over), self.append(data=exact, tag=b"A2"), synchronizing, b"S1 STATUS INBOX (MESSAGES)"
        )
        self.assertTrue(self.tagged(refused).startswith(b"A1 NO [TOOBIG]"), refused)
        self.assertTrue(self.tagged(taken).startswith(b"A2 OK"), taken)
        self.assertTrue(self.tagged(refused_sync).startswith(b"A3 NO [TOOBIG]"), refused_sync)
        self.assertEqual(status[0], b'* STATUS "INBOX" (MESSAGES 1)\r\n')


class StatusSize(Session):
    """RFC 8438: STATUS (SIZE) is the sum of RFC822.SIZE."""

    @defer.inlineCallbacks
    def test_size_is_the_sum_of_rfc822_size(self):
        lf = b"Subject: bare LF\n\nline\n"  # counted with CRLF line ends
        answers = yield self.talk(
            b"C1 CAPABILITY",
            b"S0 STATUS INBOX (SIZE)",
            self.append(),
            self.append(data=lf, tag=b"A2"),
            b"S1 SELECT INBOX",
            b"F1 FETCH 1:* (RFC822.SIZE)",
            b"S2 STATUS INBOX (MESSAGES SIZE)",
        )
        self.assertIn(b"STATUS=SIZE", answers[0][0].split())
        self.assertEqual(answers[1][0], b'* STATUS "INBOX" (SIZE 0)\r\n')
        sizes = [int(line.rsplit(b" ", 1)[1].rstrip(b")\r\n")) for line in answers[5][:-1]]
        self.assertEqual(len(sizes), 2)
        self.assertEqual(answers[6][0], b'* STATUS "INBOX" (MESSAGES 2 SIZE %d)\r\n' % sum(sizes))


class StatusSizeMbox(StatusSize):
    store = "mbox"


class StatusSizeFromTheIndex(unittest.TestCase):
    """STATUS (SIZE) opens no message (the memory store counts the opens)."""

    @defer.inlineCallbacks
    def test_no_message_is_opened(self):
        from tests.imap_support import BatchFolder, MemoryIMAP, RawClient

        imap = MemoryIMAP(self)
        folder = BatchFolder("INBOX")
        imap.account._folders["INBOX"] = folder
        folder.add(MESSAGE)
        folder.add(MESSAGE + b"more\r\n")

        def run():
            c = RawClient(imap.port)
            try:
                c.login()
                return c.command(b"S1 STATUS INBOX (SIZE)")
            finally:
                c.close()

        lines = yield in_thread(run)
        self.assertEqual(lines[0], b'* STATUS "INBOX" (SIZE %d)\r\n' % (2 * len(MESSAGE) + 6))
        self.assertEqual((folder.single_opens, folder.batches), (0, []))


def internaldate(seconds_ago):
    """An APPEND date-time (RFC 3501 9) `seconds_ago` before now, in UTC."""
    import time

    return time.strftime('"%d-%b-%Y %H:%M:%S +0000"', time.gmtime(time.time() - seconds_ago)).encode()


class Within(Session):
    """RFC 5032: SEARCH OLDER n / YOUNGER n, seconds against INTERNALDATE."""

    def setUp(self):
        d = super().setUp()
        # Messages 1, 2, 3: a day, two hours and a minute old.
        self.appends = [
            self.append(extra=b" " + internaldate(age), tag=b"A%d" % n)
            for n, age in enumerate((86400, 7200, 60), 1)
        ]
        return d

    @defer.inlineCallbacks
    def test_older_and_younger(self):
        answers = yield self.talk(
            b"C1 CAPABILITY",
            *self.appends,
            b"S1 SELECT INBOX",
            b"F1 SEARCH YOUNGER 3600",
            b"F2 SEARCH OLDER 3600",
            b"F3 SEARCH OLDER 3600 YOUNGER 10800",
            b"F4 SEARCH OR YOUNGER 120 OLDER 80000",
            b"F5 UID SEARCH RETURN (COUNT) NOT YOUNGER 100000",
            b"F6 SEARCH OLDER 0",
            b"F7 SEARCH YOUNGER x",
        )
        self.assertIn(b"WITHIN", answers[0][0].split())
        found = answers[5:]
        self.assertEqual(found[0][0], b"* SEARCH 3\r\n")
        self.assertEqual(found[1][0], b"* SEARCH 1 2\r\n")
        self.assertEqual(found[2][0], b"* SEARCH 2\r\n")
        self.assertEqual(found[3][0], b"* SEARCH 1 3\r\n")
        self.assertEqual(found[4][0], b'* ESEARCH (TAG "F5") UID COUNT 0\r\n')
        self.assertTrue(self.tagged(found[5]).startswith(b"F6 BAD"), found[5])
        self.assertTrue(self.tagged(found[6]).startswith(b"F7 BAD"), found[6])


class WithinMbox(Within):
    store = "mbox"


def search_date(seconds_ago=0):
    import time

    return time.strftime("%d-%b-%Y", time.gmtime(time.time() - seconds_ago)).encode()


class SaveDate(Session):
    """
    RFC 8514 on maildir: the save date is the time in the file's unique
    name, made at each APPEND, COPY and MOVE; the INTERNALDATE (the mtime)
    stays what APPEND gave.
    """

    @defer.inlineCallbacks
    def test_fetch_and_search_savedate(self):
        import calendar
        import re
        import time

        before = int(time.time())
        answers = yield self.talk(
            b"C1 CAPABILITY",
            b"C2 CREATE Other",
            self.append(extra=b" " + internaldate(3 * 86400)),
            b"S1 SELECT INBOX",
            b"F1 FETCH 1 (SAVEDATE INTERNALDATE)",
            b"T1 STORE 1 +FLAGS (\\Seen)",  # a rename: the save date stays
            b"F2 FETCH 1 SAVEDATE",
            b"Q1 SEARCH SAVEDON " + search_date(),
            b"Q2 SEARCH SAVEDBEFORE " + search_date(),
            b"Q3 SEARCH SAVEDSINCE " + search_date(-86400),
            b"Q4 SEARCH BEFORE " + search_date(),
            b"Q5 SEARCH SAVEDATESUPPORTED",
            b"M1 COPY 1 Other",
            b"S2 SELECT Other",
            b"F3 FETCH 1 (SAVEDATE INTERNALDATE)",
        )
        after = time.time()
        self.assertIn(b"SAVEDATE", answers[0][0].split())
        first = answers[4][0]
        saved = re.search(rb'SAVEDATE "([^"]+)"', first).group(1)
        stamp = calendar.timegm(time.strptime(saved.decode()[:-6], "%d-%b-%Y %H:%M:%S"))
        self.assertTrue(before - 1 <= stamp <= after, (before, stamp, after))
        self.assertIn(b'INTERNALDATE "' + internaldate(3 * 86400).strip(b'"')[:11], first)
        self.assertIn(b'SAVEDATE "' + saved + b'"', answers[6][0])
        self.assertEqual(answers[7][0], b"* SEARCH 1\r\n")
        self.assertEqual(answers[8][0], b"* SEARCH\r\n")
        self.assertEqual(answers[9][0], b"* SEARCH\r\n")
        self.assertEqual(answers[10][0], b"* SEARCH 1\r\n")
        self.assertEqual(answers[11][0], b"* SEARCH 1\r\n")
        copied = answers[14][0]
        self.assertRegex(copied, rb'SAVEDATE "[^"]+"')
        self.assertIn(b'INTERNALDATE "' + internaldate(3 * 86400).strip(b'"')[:11], copied)

    @defer.inlineCallbacks
    def test_savedate_alone_and_in_a_list(self):
        answers = yield self.talk(
            self.append(), b"S1 SELECT INBOX", b"F1 FETCH 1 SAVEDATE", b"F2 FETCH 1 (UID SAVEDATE)",
            b"F3 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SAVEDATE)])",
        )
        self.assertRegex(answers[2][0], rb'^\* 1 FETCH \(SAVEDATE "[^"]+"\)\r\n$')
        self.assertRegex(answers[3][0], rb'^\* 1 FETCH \(SAVEDATE "[^"]+" UID 1\)\r\n$')
        self.assertNotIn(b"SAVEDATE \"", answers[4][0])
        self.assertTrue(self.tagged(answers[4]).startswith(b"F3 OK"), answers[4])


class SaveDateMbox(Session):
    """RFC 8514 on mbox: no save date is kept, SAVEDATE is NIL, SAVED* keys use the INTERNALDATE."""

    store = "mbox"

    @defer.inlineCallbacks
    def test_nil_and_internaldate(self):
        answers = yield self.talk(
            self.append(extra=b" " + internaldate(3 * 86400)),
            b"S1 SELECT INBOX",
            b"F1 FETCH 1 (SAVEDATE)",
            b"Q1 SEARCH SAVEDON " + search_date(3 * 86400),
            b"Q2 SEARCH SAVEDSINCE " + search_date(),
            b"Q3 SEARCH SAVEDATESUPPORTED",
        )
        self.assertEqual(answers[2][0], b"* 1 FETCH (SAVEDATE NIL)\r\n")
        self.assertEqual(answers[3][0], b"* SEARCH 1\r\n")
        self.assertEqual(answers[4][0], b"* SEARCH\r\n")
        self.assertEqual(answers[5][0], b"* SEARCH\r\n")
