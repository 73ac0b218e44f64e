"""
Maildir as the maildir spec and Dovecot write it, shared with other
programs: durable delivery (tmp/, fsync, rename into new/, fsync new/),
Dovecot's ,S= and ,W= size fields, and messages that Python's `mailbox`
module (standing in for mutt, mbsync, Dovecot) adds, flags or moves, served
over POP3.
"""

import errno
import glob
import mailbox
import os
import poplib
import shutil
import smtplib
import stat
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.interfaces import PermanentFailure, TemporaryFailure
from mailplat.store.maildir import names
from mailplat.store.maildir import MaildirStore
from mailplat.store.maildir.deliver import write_message
from mailplat.store.source import BytesSource
from tests.helpers import MailServer, client_tls, in_thread

MESSAGE = b"Return-Path: <carol@remote.test>\nSubject: hi\n\n.leading dot\nFrom the start\nGr\xc3\xbc\xc3\x9fe\n"


class FailingSource:
    """A message source whose reader fails half way (a dropped spool, an I/O error)."""

    size = 100

    def open(self):
        class Reader:
            calls = 0

            def read(self, n=-1):
                self.calls += 1
                if self.calls == 1:
                    return b"Subject: half\n\nthe first half\n"
                raise OSError(errno.EIO, "Input/output error")

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        return Reader()


class WriteMessage(unittest.TestCase):
    """mailplat.store.maildir.deliver.write_message, on a real filesystem."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-maildir-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.maildir = os.path.join(self.dir, "alice")

    def files(self, sub):
        return os.listdir(os.path.join(self.maildir, sub))

    def test_missing_maildir_is_created_with_tmp_new_cur(self):
        write_message(self.maildir, BytesSource(MESSAGE))
        for sub in ("tmp", "new", "cur"):
            self.assertTrue(os.path.isdir(os.path.join(self.maildir, sub)), sub)

    def test_message_lands_in_new_with_the_exact_bytes(self):
        key = write_message(self.maildir, BytesSource(MESSAGE))
        self.assertEqual(self.files("new"), [key])
        with open(os.path.join(self.maildir, "new", key), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        self.assertEqual(self.files("tmp"), [])

    def test_name_carries_file_size_and_crlf_size(self):
        key = write_message(self.maildir, BytesSource(MESSAGE))
        self.assertEqual(names.sizes_from_key(key), (len(MESSAGE), len(MESSAGE.replace(b"\n", b"\r\n"))))
        self.assertNotIn(":", key)
        self.assertNotIn("/", key)

    def test_message_with_flags_lands_in_cur_with_its_info(self):
        key = write_message(self.maildir, BytesSource(MESSAGE), flags="S")
        self.assertEqual(self.files("cur"), [key + ":2,S"])
        self.assertEqual(self.files("new"), [])

    def test_maildir_and_message_are_private_to_their_owner(self):
        key = write_message(self.maildir, BytesSource(MESSAGE))
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.maildir, sub)).st_mode), 0o700, sub)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.maildir, "new", key)).st_mode), 0o600)

    def test_every_delivery_gets_its_own_name(self):
        keys = {write_message(self.maildir, BytesSource(MESSAGE)) for _ in range(50)}
        self.assertEqual(len(keys), 50)
        self.assertEqual(len(self.files("new")), 50)

    def test_message_and_directory_are_fsynced_before_it_is_in_new(self):
        synced = []
        real_fsync = os.fsync

        def fsync(fd):
            path = os.readlink(f"/proc/self/fd/{fd}")
            # What new/ holds at the moment of each fsync.
            synced.append((path, sorted(os.listdir(os.path.join(self.maildir, "new")))))
            return real_fsync(fd)

        self.patch(os, "fsync", fsync)
        key = write_message(self.maildir, BytesSource(MESSAGE))
        paths = [p for p, _ in synced]
        tmp_file = os.path.join(self.maildir, "tmp", key.split(",")[0])
        new_dir = os.path.join(self.maildir, "new")
        self.assertIn(tmp_file, paths)
        self.assertIn(new_dir, paths)
        # The file is synced while still in tmp/; new/ is synced after the rename.
        self.assertEqual(synced[paths.index(tmp_file)][1], [])
        self.assertEqual(synced[paths.index(new_dir)][1], [key])

    def test_a_file_where_the_maildir_should_be_is_a_temporary_failure(self):
        with open(self.maildir, "w") as f:
            f.write("in the way\n")
        e = self.assertRaises(TemporaryFailure, write_message, self.maildir, BytesSource(MESSAGE))
        self.assertTrue(e.enhanced.startswith("4."), e.enhanced)

    def test_a_file_where_new_should_be_fails_and_leaves_nothing_in_tmp(self):
        for sub in ("tmp", "cur"):
            os.makedirs(os.path.join(self.maildir, sub))
        with open(os.path.join(self.maildir, "new"), "w") as f:
            f.write("in the way\n")
        self.assertRaises(TemporaryFailure, write_message, self.maildir, BytesSource(MESSAGE))
        self.assertEqual(self.files("tmp"), [])

    def test_source_failing_half_way_leaves_nothing_in_new_or_tmp(self):
        self.assertRaises((TemporaryFailure, OSError), write_message, self.maildir, FailingSource())
        self.assertEqual(self.files("new"), [])
        self.assertEqual(self.files("tmp"), [])

    def test_python_mailbox_reads_the_delivered_message(self):
        key = write_message(self.maildir, BytesSource(MESSAGE))
        box = mailbox.Maildir(self.maildir, factory=None, create=False)
        self.assertEqual(list(box.keys()), [key])
        self.assertEqual(box.get_bytes(key), MESSAGE)


class ArrivalOrder(unittest.TestCase):
    """Messages are numbered (POP3) and given UIDs (IMAP) in the order their names were made."""

    def test_names_made_in_one_second_sort_by_microseconds_as_numbers(self):
        earlier, later = names.unique_name(1000.095), names.unique_name(1000.1)
        self.assertEqual(sorted([later, earlier], key=names.sort_key), [earlier, later])

    def test_the_delivery_counter_sorts_as_a_number(self):
        ninth, tenth = "1000.M5P1Q9.host", "1000.M5P1Q10.host"
        self.assertEqual(sorted([tenth, ninth], key=names.sort_key), [ninth, tenth])

    def test_names_of_other_programs_sort_by_their_seconds(self):
        keys = ["1700000001.M1P1Q1.host", "1700000000.12345_1.otherhost", "not-a-maildir-name"]
        self.assertEqual(
            sorted(keys, key=names.sort_key),
            ["not-a-maildir-name", "1700000000.12345_1.otherhost", "1700000001.M1P1Q1.host"],
        )


class MailboxPaths(unittest.TestCase):
    """Dovecot-style path templates (%d, %n, %u) filled in safely."""

    def test_template_is_filled_in_lower_case(self):
        store = MaildirStore("/srv/mail/%d/%n")
        self.assertEqual(store.user_root("Alice@Example.TEST"), "/srv/mail/example.test/alice")
        self.assertEqual(MaildirStore("/srv/%u/Maildir").user_root("a@b.test"), "/srv/a@b.test/Maildir")

    def test_addresses_that_would_leave_the_mail_tree_are_refused(self):
        store = MaildirStore("/srv/mail/%d/%n")
        for address in ("../../etc@example.test", "a/b@example.test", "alice@../x", ".hidden@example.test", "@example.test"):
            self.assertRaises(PermanentFailure, store.user_root, address)


def pop3s(server, user="alice@example.test", password="alice-pw"):
    p = poplib.POP3_SSL("127.0.0.1", server.port("pop3s"), context=client_tls(), timeout=10)
    try:
        p.user(user)
        p.pass_(password)
    except Exception:
        p.close()
        raise
    return p


def crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def retr_bytes(lines):
    return b"".join(line + b"\r\n" for line in lines)


class SharedMaildir(unittest.TestCase):
    """Other programs work on the same maildir while mailplat serves it."""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=("smtp", "pop3s")).start(
            users={"alice@example.test": "alice-pw"}
        )
        self.root = self.server.maildir("alice@example.test")

    def send(self, data=b"Subject: by smtp\r\n\r\nhello\r\n"):
        def run():
            with smtplib.SMTP("127.0.0.1", self.server.port("smtp")) as s:
                s.sendmail("carol@remote.test", ["alice@example.test"], data)

        return in_thread(run)

    def mailbox(self):
        os.makedirs(os.path.dirname(self.root), exist_ok=True)
        return mailbox.Maildir(self.root, factory=None, create=True)

    def read_all(self):
        """[(LIST size, UIDL, RETR bytes)] over POP3S, then QUIT."""

        def run():
            p = pop3s(self.server)
            out = []
            for line in p.list()[1]:
                n, size = line.split()
                out.append((int(size), p.uidl(int(n)).split()[2], retr_bytes(p.retr(int(n))[1])))
            p.quit()
            return out

        return in_thread(run)

    @defer.inlineCallbacks
    def test_message_flagged_and_moved_to_cur_by_python_mailbox_is_served(self):
        yield self.send(b"Subject: moved\r\n\r\nmoved by mutt\r\n")
        [(size, uidl, before)] = yield self.read_all()
        box = self.mailbox()
        [key] = box.keys()
        message = box[key]
        message.set_subdir("cur")
        message.add_flag("FS")
        box[key] = message
        self.assertEqual(os.listdir(os.path.join(self.root, "new")), [])
        self.assertEqual(len(os.listdir(os.path.join(self.root, "cur"))), 1)
        [(size2, uidl2, after)] = yield self.read_all()
        self.assertEqual(after, before)
        self.assertEqual((size2, uidl2), (size, uidl))
        self.assertEqual(size2, len(after))

    @defer.inlineCallbacks
    def test_message_added_by_python_mailbox_is_served_with_its_exact_size(self):
        data = b"From: mutt@example.test\nSubject: dropped\n\n.dot line\nsecond line\n"
        self.mailbox().add(data)
        [(size, uidl, retrieved)] = yield self.read_all()
        self.assertEqual(retrieved, crlf(data))
        self.assertEqual(size, len(retrieved))

    @defer.inlineCallbacks
    def test_message_dropped_into_new_by_another_program_is_served(self):
        os.makedirs(os.path.join(self.root, "new"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "cur"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
        data = b"Subject: from procmail\r\n\r\nwritten with CRLF line ends\r\n"
        with open(os.path.join(self.root, "new", "1700000000.12345_1.otherhost"), "wb") as f:
            f.write(data)
        [(size, uidl, retrieved)] = yield self.read_all()
        # CRLF stays CRLF (no CR CR LF), and LIST counts what RETR sends.
        self.assertEqual(retrieved, data)
        self.assertEqual(size, len(data))
        self.assertEqual(uidl, b"1700000000.12345_1.otherhost")

    @defer.inlineCallbacks
    def test_message_without_a_final_line_end_is_listed_at_the_size_retr_sends(self):
        self.mailbox()
        data = b"Subject: no final newline\n\nlast line"
        with open(os.path.join(self.root, "new", "1700000000.M1P1Q1.otherhost"), "wb") as f:
            f.write(data)
        [(size, uidl, retrieved)] = yield self.read_all()
        # POP3 must end the message with CRLF before the terminating dot.
        self.assertEqual(retrieved, crlf(data) + b"\r\n")
        self.assertEqual(size, len(retrieved))

    @defer.inlineCallbacks
    def test_messages_from_smtp_and_other_programs_are_served_in_arrival_order(self):
        yield self.send(b"Subject: first\r\n\r\n1\r\n")
        os.makedirs(os.path.join(self.root, "cur"), exist_ok=True)
        with open(os.path.join(self.root, "cur", "9999999999.M1P1Q1.later:2,S"), "wb") as f:
            f.write(b"Subject: last\n\n3\n")
        yield self.send(b"Subject: second\r\n\r\n2\r\n")
        messages = yield self.read_all()
        subjects = [next(l for l in m.split(b"\r\n") if l.startswith(b"Subject:")) for _, _, m in messages]
        self.assertEqual(subjects, [b"Subject: first", b"Subject: second", b"Subject: last"])

    @defer.inlineCallbacks
    def test_message_read_over_pop3_is_marked_seen_in_cur(self):
        yield self.send()
        [key] = os.listdir(os.path.join(self.root, "new"))
        yield self.read_all()
        self.assertEqual(os.listdir(os.path.join(self.root, "new")), [])
        self.assertEqual(os.listdir(os.path.join(self.root, "cur")), [key + ":2,S"])
        self.assertEqual(self.mailbox()[key].get_flags(), "S")

    @defer.inlineCallbacks
    def test_dele_removes_a_message_another_program_moved_to_cur(self):
        yield self.send()
        box = self.mailbox()
        [key] = box.keys()
        message = box[key]
        message.set_subdir("cur")
        message.add_flag("F")
        box[key] = message

        def delete():
            p = pop3s(self.server)
            p.dele(1)
            p.quit()

        yield in_thread(delete)
        self.assertEqual(glob.glob(os.path.join(self.root, "*", "*")), [])

    @defer.inlineCallbacks
    def test_message_removed_by_another_program_mid_session_is_an_error_not_a_hang(self):
        yield self.send(b"Subject: one\r\n\r\n1\r\n")
        yield self.send(b"Subject: two\r\n\r\n2\r\n")

        def run():
            p = pop3s(self.server)
            p.stat()
            box = self.mailbox()
            first = sorted(box.keys(), key=names.sort_key)[0]
            box.remove(first)
            try:
                p.retr(1)
                gone = None
            except poplib.error_proto as e:
                gone = e.args[0]
            second = retr_bytes(p.retr(2)[1])
            p.quit()
            return gone, second

        gone, second = yield in_thread(run)
        self.assertTrue(gone.startswith(b"-ERR"), gone)
        self.assertIn(b"Subject: two", second)


class PathTemplates(unittest.TestCase):
    """`[store] path` templates: %d, %n, %u, %% and everything else as written."""

    def test_the_codes_and_the_rest(self):
        from mailplat.store.maildir.store import expand

        address = "Bob@Example.Org"
        self.assertEqual(expand("var/mail/%d/%n", address), "var/mail/example.org/bob")
        self.assertEqual(expand("/m/%u", address), "/m/bob@example.org")
        self.assertEqual(expand("%%d/%%%n", address), "%d/%bob")
        self.assertEqual(expand("a%qb%", address), "a%qb%")
        self.assertEqual(expand("plain", address), "plain")

    def test_the_same_as_a_walk_over_the_characters(self):
        import random

        from mailplat.store.maildir.store import expand

        def walk(template, local, domain):
            out, i = [], 0
            while i < len(template):
                c = template[i]
                if c == "%" and i + 1 < len(template):
                    code = template[i + 1]
                    out.append({"d": domain, "n": local, "u": f"{local}@{domain}", "%": "%"}.get(code, "%" + code))
                    i += 2
                else:
                    out.append(c)
                    i += 1
            return "".join(out)

        rng = random.Random(5)
        for _ in range(2000):
            template = "".join(rng.choice("%%%dnuqx/.") for _ in range(rng.randint(0, 12)))
            self.assertEqual(expand(template, "bob@example.org"), walk(template, "bob", "example.org"), template)
