"""
The conformance kit's delivery suite against the built-in local delivery
agents: maildir (the store on disk) and lmtp (an LMTP server started in
the test, standing in for Dovecot).
"""

import glob
import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from mailplat.delivery.addresses import AddressResolver
from mailplat.delivery.aliases import AliasesFile
from mailplat.delivery.lmtp import LMTPDelivery
from mailplat.delivery.local import LocalDelivery
from mailplat.realm import passwords
from mailplat.realm.passwdfile import PasswdFileRealm
from mailplat.store.maildir import MaildirStore
from mailplat.testing import DeliveryConformance, LMTPServer
from tests.helpers import free_port


class MaildirDeliveryConforms(DeliveryConformance, unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-conformance-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        users = os.path.join(self.dir, "users")
        with open(users, "w") as f:
            f.writelines(f"{u}:{passwords.hash_password('pw', 'PLAIN')}\n" for u in self.users)
        self.realm = PasswdFileRealm(users)
        self.resolver = AddressResolver(self.realm, AliasesFile(None), ["example.test"])

    def _agent(self, template):
        store = MaildirStore(template)
        self.addCleanup(store.close)
        return LocalDelivery(self.resolver, store)

    def make_agent(self):
        return self._agent(os.path.join(self.dir, "mail/%d/%n"))

    def maildir(self, address):
        local, domain = address.split("@")
        return os.path.join(self.dir, "mail", domain, local)

    def delivered(self, address):
        found = []
        for path in sorted(glob.glob(os.path.join(self.maildir(address), "new", "*"))) + sorted(
            glob.glob(os.path.join(self.maildir(address), "cur", "*"))
        ):
            with open(path, "rb") as f:
                found.append(f.read())
        return found

    def delivered_in(self, address, folder):
        found = []
        for sub in ("new", "cur"):
            for path in sorted(glob.glob(os.path.join(self.maildir(address), "." + folder, sub, "*"))):
                with open(path, "rb") as f:
                    found.append(f.read())
        return found

    def make_folder(self, agent, address, folder):
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(self.maildir(address), "." + folder, sub), exist_ok=True)

    def break_mailbox(self, agent, address):
        # A file where the maildir should be: every write fails (even as root).
        os.makedirs(os.path.dirname(self.maildir(address)), exist_ok=True)
        open(self.maildir(address), "w").close()

    def make_unavailable_agent(self):
        blocker = os.path.join(self.dir, "not-a-folder")
        open(blocker, "w").close()
        return self._agent(os.path.join(blocker, "%d/%n"))


class LMTPDeliveryConforms(DeliveryConformance, unittest.TestCase):
    # An LMTP server cannot give back a copy it saved (RFC 2033 4.2).
    all_or_nothing = False
    # The LMTP server keeps the mail (its 250 is the fsync), files it into
    # folders and answers for postmaster@: the agent hands recipients on.
    durability = "handed-on"
    honours_folders = False
    accepts_postmaster = False

    @defer.inlineCallbacks
    def setUp(self):
        self.server = LMTPServer(users=self.users)
        yield self.server.start(self)

    def make_agent(self):
        return LMTPDelivery(self.server.endpoint, "mx.example.test", timeout=10, connect_timeout=5)

    def delivered(self, address):
        return list(self.server.messages.get(address, []))

    def break_mailbox(self, agent, address):
        self.server.data_replies[address] = "452 4.2.2 Mailbox is full"

    def make_unavailable_agent(self):
        return LMTPDelivery(f"tcp:host=127.0.0.1:port={free_port()}", "mx.example.test", timeout=5, connect_timeout=5)
