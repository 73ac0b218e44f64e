"""
On the mbox store a folder that holds mail can have subfolders (imaptest's
`list` and `subscribe` create `imaptest/test` under the mail folder
`imaptest`): they live in `<name>.sbd/` beside the mbox file, Thunderbird's
layout; a parent without mail is still a plain directory, as before.
"""

import os

from tests.helpers import MailServer
from tests.test_imap_maildir import ALICE, LISTENERS, MESSAGE, IMAPTestCase, drain

from twisted.internet import defer


class MailFolderWithSubfolders(IMAPTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = yield MailServer(self, listeners=LISTENERS, store="mbox").start(users={ALICE: "pw"})
        self.addCleanup(drain, self.server)

    def root(self, *parts):
        return os.path.join(self.server.maildir(ALICE), *parts)

    def test_a_folder_with_mail_gets_a_subfolder_beside_it_in_sbd(self):
        def run():
            c = self.imaps()
            c.create_folder("Work")
            c.append("Work", MESSAGE)
            c.create_folder("Work/2024")
            c.append("Work/2024", MESSAGE.replace(b"hello", b"inner"))
            folders = {name: set(flags) for flags, _, name in c.list_folders()}
            self.assertNotIn(b"\\Noselect", folders["Work"])
            self.assertIn(b"\\HasChildren", folders["Work"])
            self.assertIn("Work/2024", folders)
            self.assertNotIn("Work.sbd", folders)
            c.select_folder("Work", readonly=True)
            outer = c.fetch([1], [b"BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])[1]
            c.select_folder("Work/2024", readonly=True)
            inner = c.fetch([1], [b"BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])[1]
            return outer, inner

        def check(result):
            outer, inner = result
            self.assertIn(b"hello", outer[b"BODY[HEADER.FIELDS (SUBJECT)]"])
            self.assertIn(b"inner", inner[b"BODY[HEADER.FIELDS (SUBJECT)]"])
            self.assertTrue(os.path.isfile(self.root("Work")))
            self.assertTrue(os.path.isfile(self.root("Work.sbd", "2024")))

        return self.check(run).addCallback(check)

    def test_deeper_levels_under_mail_folders(self):
        def run():
            c = self.imaps()
            for name in ("box", "box/test3", "box/test3/test4", "box/test3/test4/test5"):
                c.create_folder(name)
            return {name: set(flags) for flags, _, name in c.list_folders()}

        def check(folders):
            for name in ("box", "box/test3", "box/test3/test4", "box/test3/test4/test5"):
                self.assertNotIn(b"\\Noselect", folders[name], name)
            self.assertTrue(os.path.isfile(self.root("box.sbd", "test3.sbd", "test4.sbd", "test5")))

        return self.check(run).addCallback(check)

    def test_renaming_a_mail_folder_takes_its_subfolders(self):
        def run():
            c = self.imaps()
            c.create_folder("Work")
            c.create_folder("Work/2024")
            c.append("Work/2024", MESSAGE)
            c.rename_folder("Work", "Job")
            names = [name for _, _, name in c.list_folders()]
            c.select_folder("Job/2024", readonly=True)
            return names, c.search(["ALL"])

        def check(result):
            names, found = result
            self.assertIn("Job", names)
            self.assertIn("Job/2024", names)
            self.assertNotIn("Work/2024", names)
            self.assertEqual(found, [1])
            self.assertTrue(os.path.isfile(self.root("Job.sbd", "2024")))

        return self.check(run).addCallback(check)

    def test_deleting_a_mail_folder_leaves_its_subfolders_under_a_noselect_name(self):
        def run():
            c = self.imaps()
            c.create_folder("Work")
            c.create_folder("Work/2024")
            c.delete_folder("Work")
            return {name: set(flags) for flags, _, name in c.list_folders()}

        def check(folders):
            # RFC 3501 6.3.4: the inferiors stay; the name is \Noselect.
            self.assertIn(b"\\Noselect", folders["Work"])
            self.assertIn("Work/2024", folders)

        return self.check(run).addCallback(check)

    def test_a_parent_without_mail_is_still_a_plain_directory(self):
        def run():
            self.imaps().create_folder("Lists/twisted")

        def check(_):
            self.assertTrue(os.path.isfile(self.root("Lists", "twisted")))
            self.assertFalse(os.path.exists(self.root("Lists.sbd")))

        return self.check(run).addCallback(check)

    def test_a_name_ending_in_sbd_is_refused(self):
        def run():
            c = self.imaps()
            typ, data = c._imap._simple_command("CREATE", "Work.sbd")
            return typ

        return self.check(run).addCallback(lambda typ: self.assertEqual(typ, "NO"))
