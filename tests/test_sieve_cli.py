"""
`mailplat sieve list|put|get|activate|check USER [FILE]`, run as an
operator runs it, on the files ManageSieve and delivery use.
"""

import os
import shutil
import tempfile

from twisted.trial import unittest

from tests.test_cli import CONFIG, mailplat

USER = "ann@example.test"


class SieveCommand(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-sieve-cli-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.makedirs(os.path.join(self.dir, "etc"))
        with open(os.path.join(self.dir, "mailplat.toml"), "w") as f:
            f.write(CONFIG)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_cli(self, *args):
        return mailplat(["--config", "mailplat.toml", "sieve", *args], self.dir)

    def test_put_activate_list_get(self):
        path = self.write("rules.sieve", 'require "fileinto";\nfileinto "Lists";\n')
        status, out, err = self.run_cli("put", USER, path)
        self.assertEqual(status, 0, err)
        self.assertEqual(self.run_cli("activate", USER, "rules")[0], 0)
        status, out, _ = self.run_cli("list", USER)
        self.assertEqual(out.strip(), "rules  (active)")
        status, out, _ = self.run_cli("get", USER)
        self.assertEqual(out, 'require "fileinto";\nfileinto "Lists";\n')
        link = os.path.join(self.dir, "var", "home", "example.test", "ann", ".dovecot.sieve")
        self.assertEqual(os.readlink(link), os.path.join("sieve", "rules.sieve"))

    def test_a_bad_script_is_refused_and_not_stored(self):
        path = self.write("bad.sieve", "keep\n")
        status, _, err = self.run_cli("put", USER, path)
        self.assertEqual(status, 1)
        self.assertIn("line 2, column 1", err)
        self.assertEqual(self.run_cli("list", USER)[1], "")

    def test_check(self):
        good = self.write("good.sieve", "if size :over 1M { discard; }\n")
        self.assertEqual(self.run_cli("check", USER, good)[:2], (0, f"{good}: OK\n"))
        missing = os.path.join(self.dir, "nope.sieve")
        status, _, err = self.run_cli("check", USER, missing)
        self.assertEqual(status, 1)
        self.assertIn("nope.sieve", err)

    def test_activating_an_unknown_script(self):
        status, _, err = self.run_cli("activate", USER, "ghost")
        self.assertEqual(status, 1)
        self.assertIn("no script by that name", err)
