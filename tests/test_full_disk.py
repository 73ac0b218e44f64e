"""
A full disk never loses an acknowledged message: the client gets
451 4.3.0 (try again), nothing half-written is left, and mail flows again
once there is room. The disk is a real, tiny tmpfs (mounting needs root;
elsewhere the test is skipped).
"""

import os
import smtplib
import subprocess

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import MailServer, in_thread


def mount_tiny_tmpfs(path, size="64k"):
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                            capture_output=True, text=True)
    return result.returncode == 0


class FullDisk(unittest.TestCase):
    @defer.inlineCallbacks
    def test_full_disk_answers_451_and_leaves_nothing_behind(self):
        server = MailServer(self)
        mail = os.path.join(server.state, "mail")
        if os.geteuid() != 0 or not mount_tiny_tmpfs(mail):
            raise unittest.SkipTest("needs root to mount a tiny tmpfs")
        self.addCleanup(subprocess.run, ["umount", "-l", mail])
        yield server.start(users={"alice@example.test": "pw"})

        def send(size):
            body = b"Subject: s\r\n\r\n" + (b"z" * 78 + b"\r\n") * (size // 80)
            with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
                try:
                    s.sendmail("a@remote.test", ["alice@example.test"], body)
                    return 250, ""
                except smtplib.SMTPDataError as e:
                    return e.smtp_code, e.smtp_error.decode()

        code, text = yield in_thread(send, 200 * 1024)
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith("4.3.0"), text)
        self.flushLoggedErrors()
        root = server.maildir("alice@example.test")
        self.assertEqual(os.listdir(os.path.join(root, "new")), [])
        self.assertEqual(os.listdir(os.path.join(root, "tmp")), [])

        code, _ = yield in_thread(send, 2 * 1024)
        self.assertEqual(code, 250)
        self.assertEqual(len(os.listdir(os.path.join(root, "new"))), 1)
