"""
The IMAP and POP3 suites of the maildir store, run unchanged over the mbox
store: each class here is the shared test class with `store = "mbox"`
(tests.helpers.MailServer reads it), plus the few expectations where the
stores differ by design (the hierarchy separator; what "the files" are).
"""

import mailbox

from tests import test_imap_maildir as imap
from tests import test_pop3 as pop3


class OnMbox:
    store = "mbox"


# --- IMAP ---------------------------------------------------------------------------


class IMAPLogin(OnMbox, imap.Login):
    pass


class IMAPFolders(OnMbox, imap.Folders):
    def test_namespace(self):
        # Dovecot's mbox layout: folders are files in directories, '/' between levels.
        def run():
            ns = self.imaps().namespace()
            self.assertEqual(ns.personal, (("", "/"),))

        return self.check(run)

    def test_subfolders_are_files_in_directories(self):
        import os

        def run():
            c = self.imaps()
            c.create_folder("Lists/twisted")
            folders = {name: set(flags) for flags, _, name in c.list_folders()}
            self.assertIn(b"\\Noselect", folders["Lists"])
            self.assertIn(b"\\HasChildren", folders["Lists"])
            c.append("Lists/twisted", imap.MESSAGE)
            return folders

        path = self.server.mbox(imap.ALICE, "Lists/twisted")
        return self.check(run).addCallback(lambda _: self.assertTrue(os.path.isfile(path)))


class IMAPSelect(OnMbox, imap.Select):
    pass


class IMAPRecent(OnMbox, imap.Recent):
    pass


class IMAPFetch(OnMbox, imap.Fetch):
    pass


class IMAPAppend(OnMbox, imap.Append):
    pass


class IMAPStore(OnMbox, imap.Store):
    pass


class IMAPCopyMoveExpunge(OnMbox, imap.CopyMoveExpunge):
    pass


class IMAPManyDevices(OnMbox, imap.ManyDevices):
    pass


class IMAPRestart(OnMbox, imap.Restart):
    pass


# --- POP3 -----------------------------------------------------------------------------


class MboxFiles(OnMbox):
    def files(self, address="alice@example.test"):
        """The messages in the user's INBOX, as Python's mailbox reads it."""
        path = self.server.mbox(address)
        try:
            box = mailbox.mbox(path, create=False)
        except mailbox.NoSuchMailboxError:
            return []
        try:
            return sorted(f"{m.get_from()} {m['Subject']}" for m in box)
        finally:
            box.close()


class POP3EndToEnd(MboxFiles, pop3.EndToEnd):
    pass


class POP3Capabilities(MboxFiles, pop3.Capabilities):
    pass


class POP3Authentication(MboxFiles, pop3.Authentication):
    pass


class POP3Transaction(MboxFiles, pop3.Transaction):
    pass


class POP3BadInput(MboxFiles, pop3.BadInput):
    pass


# --- what only the mbox store has -------------------------------------------------------


class IMAPOnMboxFiles(OnMbox, imap.IMAPTestCase):
    def test_message_appended_by_another_program_is_noticed(self):
        import time

        def run():
            c = self.imaplib()
            c.select("INBOX")
            box = mailbox.mbox(self.server.mbox(imap.ALICE))
            box.lock()
            box.add(b"Subject: dropped\n\nFrom mutt\n")
            box.flush()
            box.unlock()
            box.close()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                c.noop()
                if c.untagged_responses.get("EXISTS", [b"0"])[-1] == b"1":
                    break
                time.sleep(0.05)
            self.assertEqual(c.untagged_responses["EXISTS"][-1], b"1")
            typ, data = c.fetch("1", "(BODY.PEEK[TEXT])")
            self.assertEqual(data[0][1], b"From mutt\r\n")

        return self.check(run)


class IMAPFlagsAcrossRestarts(OnMbox, imap.unittest.TestCase):
    @imap.defer.inlineCallbacks
    def test_flags_reach_the_file_and_survive_a_restart(self):
        first = yield imap.MailServer(self, listeners=imap.LISTENERS).start(users={imap.ALICE: "pw"})

        def before(port):
            c = imap.imapclient.IMAPClient("127.0.0.1", port, ssl_context=imap.client_tls(), timeout=10)
            c.login(imap.ALICE, "pw")
            for _ in range(2):
                c.append("INBOX", imap.MESSAGE)
            c.select_folder("INBOX")
            c.add_flags([1], [imap.imapclient.SEEN, imap.imapclient.FLAGGED, b"$Work"])
            c.logout()

        yield imap.in_thread(before, first.port("imaps"))
        yield imap.drain(first)
        yield first.stop()
        box = mailbox.mbox(first.mbox(imap.ALICE))
        self.assertEqual([set(m.get_flags()) for m in box], [set("ROF"), set()])
        self.assertEqual(box[0]["X-Keywords"], "$Work")
        box.close()
        second = imap.MailServer(self, listeners=imap.LISTENERS)
        second.dir, second.state, second.config_path = first.dir, first.state, first.config_path
        yield second.start()
        self.addCleanup(imap.drain, second)

        def after(port):
            c = imap.imapclient.IMAPClient("127.0.0.1", port, ssl_context=imap.client_tls(), timeout=10)
            c.login(imap.ALICE, "pw")
            c.select_folder("INBOX")
            flags = c.get_flags([1, 2])
            c.logout()
            return flags

        flags = yield imap.in_thread(after, second.port("imaps"))
        self.assertEqual(set(flags[1]), {imap.imapclient.SEEN, imap.imapclient.FLAGGED, b"$Work"})
        self.assertEqual(set(flags[2]) - {b"\\Recent"}, set())


class POP3OnMboxFiles(MboxFiles, pop3.POP3TestCase):
    messages = 2

    @pop3.defer.inlineCallbacks
    def test_retrieved_mail_is_marked_read_in_the_file_and_deleted_mail_is_gone(self):
        def talk():
            p = pop3.pop3s(self.server)
            p.retr(1)
            p.dele(2)
            p.quit()

        yield pop3.in_thread(talk)
        box = mailbox.mbox(self.server.mbox("alice@example.test"))
        self.addCleanup(box.close)
        # As Dovecot: mail read over POP3 is \Seen (Status: RO), which mutt shows as read.
        self.assertEqual([(m["Subject"], m.get_flags()) for m in box], [("message 1", "RO")])
