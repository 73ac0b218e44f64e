"""The conformance kit's realm suite, run against the built-in passwd-file realm."""

import os
import shutil
import tempfile

from twisted.trial import unittest

from mailplat.realm.passwdfile import PasswdFileRealm
from mailplat.testing import RealmConformance


class PasswdFileConforms(RealmConformance, unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-conformance-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def make_realm(self, users):
        path = os.path.join(self.dir, "users")
        with open(path, "w") as f:
            f.writelines(f"{address}:{stored}\n" for address, stored in users.items())
        return PasswdFileRealm(path)

    def make_unavailable_realm(self):
        # The file's folder is a file: stat fails with ENOTDIR, not ENOENT.
        blocker = os.path.join(self.dir, "not-a-folder")
        open(blocker, "w").close()
        return PasswdFileRealm(os.path.join(blocker, "users"))
