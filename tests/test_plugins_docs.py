"""
docs/plugins.md stays true: its example realm plugin and the example's
conformance tests are taken from the page, installed in a `plugins/`
folder on a fresh PYTHONPATH, and run with trial as a plugin author would;
its example check is run through the check runner.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from mailplat import checks
from mailplat.interfaces import CheckSession, Verdict

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "plugins.md")


def code_after(marker):
    """The first ```python block after the line naming `marker`."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    start = text.index(marker)
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    return match.group(1)


def python_blocks():
    with open(DOC, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


class WalkThrough(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-docs-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_the_example_realm_plugin_passes_the_conformance_kit_and_is_listed(self):
        os.makedirs(os.path.join(self.dir, "plugins"))
        os.makedirs(os.path.join(self.dir, "tests"))
        with open(os.path.join(self.dir, "plugins", "mailplat_jsonrealm.py"), "w") as f:
            f.write(code_after("`plugins/mailplat_jsonrealm.py`:"))
        with open(os.path.join(self.dir, "tests", "test_jsonrealm.py"), "w") as f:
            f.write(code_after("`tests/test_jsonrealm.py`:"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([self.dir, os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run(
            [sys.executable, "-m", "twisted.trial", "test_jsonrealm"],
            cwd=os.path.join(self.dir, "tests"), env=env, capture_output=True, text=True, timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-2000:])
        self.assertIn("PASSED", done.stdout)
        self.assertIn("skips=", done.stdout)  # no IRealmAdmin: those tests skip
        listed = subprocess.run(
            [sys.executable, "-m", "mailplat.cli", "plugins"], cwd=self.dir, env=env, capture_output=True, text=True, timeout=60
        )
        self.assertIn("json-file", listed.stdout)
        self.assertIn("plugins.mailplat_jsonrealm", listed.stdout)

    def test_the_example_check_refuses_bounces_to_lists(self):
        [block] = [b for b in python_blocks() if "NoNullSenderToLists" in b]
        namespace = {}
        exec(compile(block, "docs/plugins.md", "exec"), namespace)
        check = namespace["no_bounces"].from_config({"lists": ["Announce@example.test"]}, None)
        session = CheckSession("192.0.2.1")
        session.sender = ""
        enabled = [checks.EnabledCheck("no-bounces-to-lists", check)]
        verdict = self.successResultOf(checks.run_stage(enabled, "rcpt", session, "announce@example.test"))
        self.assertEqual((verdict.action, verdict.code), (Verdict.REJECT, 550))
        session.sender = "someone@remote.test"
        verdict = self.successResultOf(checks.run_stage(enabled, "rcpt", session, "announce@example.test"))
        self.assertEqual(verdict.action, Verdict.ACCEPT)


class Contract(unittest.TestCase):
    """What the page promises about the second edition of the kit (issue 13)."""

    def text(self):
        with open(DOC, encoding="utf-8") as f:
            return f.read()

    def test_the_example_realm_is_written_async_def(self):
        code = code_after("`plugins/mailplat_jsonrealm.py`:")
        for method in ("lookup", "check_password", "list_users"):
            self.assertIn(f"async def {method}(", code)

    def test_the_entry_point_group_shown_is_the_one_scanned(self):
        from mailplat import plugin

        self.assertIn(f'[project.entry-points."{plugin.ENTRY_POINT_GROUP}"]', self.text())

    def test_the_table_each_kind_receives_is_documented(self):
        from mailplat import plugin

        text = self.text()
        for kind in plugin.KINDS:
            self.assertIn(f"\n| {kind} | ", text)
        self.assertIn("the **whole** `[delivery]` table", text)

    def test_public_failure_texts_are_documented(self):
        self.assertIn("public=True", self.text())
