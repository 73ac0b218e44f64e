"""
Errors that help (issue 13 item 5): a plugin's factory failing names the
exception and the plugin's file:line; every kind of backend may warn in
`check-config`; the text a plugin puts into a TemporaryFailure or
PermanentFailure is logged in full but reaches the remote client only when
the plugin marks it public.
"""

import os
import smtplib

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from mailplat import config as configuration
from mailplat import plugin
from mailplat.config import ConfigError
from mailplat.interfaces import IRealmBackend, PermanentFailure, TemporaryFailure
from mailplat.service import Backends
from tests.helpers import MailServer, collect_log, in_thread, small_config
from tests.test_plugins import PluginsFolder, mailplat

BUGGY = """
from mailplat.plugin import BackendPlugin

def _build(section, context):
    settings = {}
    return settings["missing"]

buggy = BackendPlugin("check", "buggy", "a check whose factory has a bug", _build, keys=())
"""

WARNS = """
from mailplat.checks import Check
from mailplat.plugin import BackendPlugin


class Warns(Check):
    name = "warns"

    def problems(self):
        return ["warns: the word list is empty, this check refuses nothing"]


warns = BackendPlugin("check", "warns", "a check with a warning", lambda s, c: Warns(), keys=())
"""

CHECKS = """
[checks]
enabled = ["{check}"]
"""


class FactoryFailures(PluginsFolder):
    modules = {"buggy": BUGGY, "warns": WARNS}

    def write(self, check):
        os.makedirs(os.path.join(self.dir, "etc"), exist_ok=True)
        open(os.path.join(self.dir, "etc", "users"), "w").close()
        path = os.path.join(self.dir, "mailplat.toml")
        with open(path, "w") as f:
            f.write(small_config(after=CHECKS.format(check=check)))
        return path

    def test_a_factory_bug_is_reported_with_type_message_and_file_line(self):
        config = configuration.load(self.write("buggy"), cwd=self.dir)
        e = self.assertRaises(ConfigError, Backends, config)
        text = str(e)
        self.assertIn("checks.buggy 'buggy': the plugin's factory failed: KeyError: 'missing'", text)
        self.assertIn(os.path.join("plugins", "buggy.py") + ":6)", text)

    def test_check_config_names_the_factory_bug(self):
        status, out, err = mailplat(["--config", self.write("buggy"), "check-config"], self.dir, self.dir)
        self.assertEqual(status, 2)
        self.assertIn("KeyError: 'missing' (at ", err)
        self.assertIn("buggy.py:6", err)

    def test_any_kind_of_backend_can_warn_in_check_config(self):
        status, out, err = mailplat(["--config", self.write("warns"), "check-config"], self.dir, self.dir)
        self.assertEqual(status, 0, err)
        self.assertIn("warning: warns: the word list is empty, this check refuses nothing", out)


# --- failure texts: logged in full, sent only when public --------------------

SECRET = "cannot read /srv/secret/users.json: Expecting value: line 1 column 1"


@implementer(IRealmBackend)
class DownRealm:
    """A realm whose data cannot be read; `public` says what its failure allows."""

    public = None

    def __init__(self, path):
        pass

    def lookup(self, address):
        raise TemporaryFailure(SECRET if not self.public else "user directory moving, retry in 10 minutes",
                               "4.3.0", public=self.public)

    def check_password(self, address, password):
        return None

    def list_users(self):
        return []


class PublicDownRealm(DownRealm):
    public = True


class RealmServer(MailServer):
    def __init__(self, testcase, backend):
        super().__init__(testcase, listeners=("smtp",))
        self.backend = backend

    def config_text(self):
        return super().config_text().replace('backend = "passwd-file"', f'backend = "{self.backend}"', 1)


def rcpt(port, address):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("client.remote.test")
        c.mail("carol@remote.test")
        code, text = c.rcpt(address)
        return code, text.decode()


class FailureTexts(unittest.TestCase):
    @defer.inlineCallbacks
    def serve(self, realm_class):
        name = f"texts-{realm_class.__name__.lower()}"
        self.addCleanup(plugin.register(plugin.BackendPlugin("realm", name, "a realm that is down",
                                                             lambda s, c: realm_class(s.get("path")))))
        server = RealmServer(self, name)
        yield server.start()
        return server

    @defer.inlineCallbacks
    def test_a_plugins_failure_text_is_logged_but_not_sent(self):
        log = collect_log(self)
        server = yield self.serve(DownRealm)
        code, text = yield in_thread(rcpt, server.port("smtp"), "alice@example.test")
        self.assertEqual(code, 451)
        self.assertIn("4.3.0", text)
        self.assertNotIn("/srv/secret", text)
        self.assertIn("try again later", text)
        self.assertTrue([t for t in log if "/srv/secret/users.json" in t], "the full text is not in the log")

    @defer.inlineCallbacks
    def test_a_public_failure_text_is_sent(self):
        server = yield self.serve(PublicDownRealm)
        code, text = yield in_thread(rcpt, server.port("smtp"), "alice@example.test")
        self.assertEqual(code, 451)
        self.assertIn("user directory moving, retry in 10 minutes", text)

    @defer.inlineCallbacks
    def test_the_servers_own_texts_are_still_sent(self):
        server = yield self.serve(PublicDownRealm)
        code, text = yield in_thread(rcpt, server.port("smtp"), "someone@elsewhere.test")
        self.assertEqual(code, 554)
        self.assertIn("relay access denied", text)


class CheckFailureTexts(unittest.TestCase):
    """A check raising a failure: the same rule (a Verdict's text is always the client's)."""

    def run_check(self, error):
        from mailplat.checks import EnabledCheck, run_stage
        from mailplat.interfaces import CheckSession

        class Raises:
            name = "raises"

            def rcpt(self, session, recipient):
                raise error

        return self.successResultOf(run_stage([EnabledCheck("raises", Raises())], "rcpt", CheckSession(), "a@b"))

    def test_a_raised_failure_gets_the_generic_text(self):
        verdict = self.run_check(PermanentFailure("score 17.2 from spamd at 10.0.0.5:783", "5.7.1"))
        self.assertEqual((verdict.code, verdict.enhanced), (550, "5.7.1"))
        self.assertNotIn("10.0.0.5", verdict.text)

    def test_a_public_one_keeps_its_text(self):
        verdict = self.run_check(TemporaryFailure("greylisted, try again in 5 minutes", "4.7.1", public=True))
        self.assertEqual(verdict.text, "greylisted, try again in 5 minutes")
