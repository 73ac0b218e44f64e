"""
Plugin discovery and its errors: every plugin found is listed with kind,
name, module and description; a plugin module that fails to import, or an
object that does not provide the interface it claims, is reported by name
with the reason, and the server refuses to start with a broken selected
plugin.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial import unittest

from mailplat import config as configuration
from mailplat import plugin
from mailplat.config import ConfigError
from mailplat.interfaces import BackendContext
from mailplat.service import Backends, make_service
from tests.helpers import small_config

BROKEN_IMPORT = """
import no_such_module_anywhere  # raises ModuleNotFoundError
"""

BAD_INTERFACE = """
from twisted.plugin import IPlugin
from zope.interface import directlyProvides
from mailplat.interfaces import IRealmFactory

class Claims:
    name = "half-done"
    description = "claims IRealmFactory, has no from_config"

half_done = Claims()
directlyProvides(half_done, IPlugin, IRealmFactory)
"""

BAD_BACKEND = """
from mailplat.plugin import BackendPlugin

class NotARealm:
    pass

wrong_backend = BackendPlugin("realm", "wrong-backend", "builds an object that is no realm", lambda s, c: NotARealm())
"""

GOOD = """
from mailplat.plugin import BackendPlugin
from mailplat.realm.passwdfile import PasswdFileRealm

extra = BackendPlugin("realm", "extra-file", "A third-party realm, found on sys.path", lambda s, c: PasswdFileRealm(s["path"]))
"""



def mailplat(args, cwd, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(
        [sys.executable, "-m", "mailplat.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env
    )
    return done.returncode, done.stdout, done.stderr


class PluginsFolder(unittest.TestCase):
    """A `plugins/` folder on sys.path (no __init__.py), as a third party installs one."""

    modules = {}

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-plugins-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        folder = os.path.join(self.dir, "plugins")
        os.makedirs(folder)
        for name, text in self.modules.items():
            with open(os.path.join(folder, name + ".py"), "w") as f:
                f.write(textwrap.dedent(text))
        sys.path.insert(0, self.dir)
        self.addCleanup(self._forget, folder)

    def _forget(self, folder):
        import plugins

        sys.path.remove(self.dir)
        if folder in plugins.__path__:
            plugins.__path__.remove(folder)
        for name in self.modules:
            sys.modules.pop(f"plugins.{name}", None)

    def write_config(self, realm):
        path = os.path.join(self.dir, "mailplat.toml")
        with open(path, "w") as f:
            f.write(small_config(realm))
        return path


class Listing(unittest.TestCase):
    def test_plugins_lists_every_builtin_with_kind_name_module_and_description(self):
        status, out, err = mailplat(["plugins"], tempfile.gettempdir())
        self.assertEqual(status, 0, err)
        rows = {tuple(line.split(None, 3)[:3]) for line in out.splitlines()}
        for row in [
            ("realm", "passwd-file", "plugins.mailplat_builtin"),
            ("realm", "sql", "plugins.mailplat_sql"),
            ("store", "maildir", "plugins.mailplat_builtin"),
            ("delivery", "maildir", "plugins.mailplat_builtin"),
            ("delivery", "lmtp", "plugins.mailplat_lmtp"),
            ("check", "size", "plugins.mailplat_checks"),
            ("check", "header", "plugins.mailplat_checks"),
        ]:
            self.assertIn(row, rows)
        self.assertIn("Dovecot-compatible passwd-file", out)
        self.assertNotIn("BROKEN", out)

    def test_available_gives_the_plugins_of_one_kind(self):
        self.assertLessEqual({"size", "header"}, set(plugin.available("check")))
        self.assertIn("sql", plugin.available("realm"))

    def test_every_builtin_plugin_verifies(self):
        found, problems = plugin.scan()
        self.assertEqual(problems, [])
        self.assertGreaterEqual(len(found), 7)


class ThirdPartyPlugin(PluginsFolder):
    modules = {"mailplat_extra": GOOD}

    def test_a_plugin_folder_on_sys_path_is_found(self):
        self.assertIn("extra-file", plugin.available("realm"))

    def test_it_is_listed_with_its_module(self):
        status, out, err = mailplat(["plugins"], self.dir, self.dir)
        self.assertEqual(status, 0, err)
        self.assertIn("extra-file", out)
        self.assertIn("plugins.mailplat_extra", out)


class BrokenPlugins(PluginsFolder):
    modules = {"broken_import": BROKEN_IMPORT, "bad_interface": BAD_INTERFACE, "bad_backend": BAD_BACKEND}

    def problems(self):
        return {p.module: p for p in plugin.scan()[1]}

    def test_a_module_that_fails_to_import_is_reported_with_the_reason(self):
        problem = self.problems()["plugins.broken_import"]
        self.assertIn("import failed", problem.reason)
        self.assertIn("No module named 'no_such_module_anywhere'", problem.reason)
        self.assertIn("broken_import.py", problem.reason)

    def test_an_object_missing_its_interface_is_reported_by_name(self):
        problem = self.problems()["plugins.bad_interface"]
        self.assertEqual((problem.kind, problem.name), ("realm", "half-done"))
        self.assertIn("IRealmFactory", problem.reason)
        self.assertIn("from_config", problem.reason)
        self.assertIn("half-done", str(problem))

    def test_broken_plugins_are_not_offered(self):
        self.assertNotIn("half-done", plugin.available("realm"))
        self.assertIn("passwd-file", plugin.available("realm"))

    def test_plugins_command_shows_the_broken_ones_and_exits_non_zero(self):
        status, out, err = mailplat(["plugins"], self.dir, self.dir)
        self.assertEqual(status, 1, err)
        broken = [line for line in out.splitlines() if line.startswith("BROKEN")]
        self.assertEqual(len(broken), 2, out)
        self.assertTrue(any("plugins.broken_import" in line and "no_such_module_anywhere" in line for line in broken))
        self.assertTrue(any("half-done" in line and "IRealmFactory" in line for line in broken))
        self.assertIn("passwd-file", out)

    def test_check_config_warns_about_broken_plugins_not_selected(self):
        status, out, err = mailplat(["--config", self.write_config("passwd-file"), "check-config"], self.dir, self.dir)
        self.assertEqual(status, 0, err)
        self.assertIn("warning: plugin module plugins.broken_import: import failed", out)
        self.assertIn("half-done", out)
        self.assertIn("OK", out)

    def test_check_config_refuses_a_broken_selected_plugin_naming_it(self):
        status, out, err = mailplat(["--config", self.write_config("half-done"), "check-config"], self.dir, self.dir)
        self.assertEqual(status, 2)
        self.assertIn("realm.backend", err)
        self.assertIn("'half-done' is broken", err)
        self.assertIn("from_config", err)

    def test_an_unknown_backend_names_the_modules_that_failed_to_import(self):
        status, out, err = mailplat(["--config", self.write_config("from-the-broken-module"), "check-config"], self.dir, self.dir)
        self.assertEqual(status, 2)
        self.assertIn("unknown realm backend 'from-the-broken-module'", err)
        self.assertIn("plugins.broken_import", err)

    def test_the_server_does_not_start_with_a_broken_selected_plugin(self):
        config = configuration.load(self.write_config("half-done"), cwd=self.dir)
        e = self.assertRaises(ConfigError, make_service, config)
        self.assertIn("half-done", str(e))

    def test_a_built_object_that_is_no_realm_is_refused(self):
        config = configuration.load(self.write_config("wrong-backend"), cwd=self.dir)
        e = self.assertRaises(ConfigError, Backends, config)
        self.assertIn("does not provide IRealmBackend", str(e))
        self.assertIn("plugins.bad_backend", str(e))

    def test_build_refuses_an_unknown_name_with_the_choices(self):
        context = BackendContext(configuration.load(None, cwd=self.dir))
        e = self.assertRaises(plugin.PluginError, plugin.build, "realm", "nope", {}, context)
        self.assertIn("available:", str(e))
        self.assertIn("passwd-file", str(e))

    def test_start_up_logs_the_broken_plugins_nobody_selected(self):
        from tests.helpers import collect_log

        texts = collect_log(self)
        config = configuration.load(self.write_config("passwd-file"), cwd=self.dir)
        Backends(config)
        self.assertTrue(any("plugin not loaded" in t and "broken_import" in t for t in texts), texts)


class Contract(unittest.TestCase):
    """mailplat.interfaces is the plugin author's API: importable on its own."""

    def test_importing_the_interfaces_starts_nothing(self):
        code = (
            "import sys, mailplat.interfaces\n"
            "bad = [m for m in sys.modules if m.startswith(('twisted.internet', 'mailplat.')) and m != 'mailplat.interfaces']\n"
            "print(bad)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertEqual(done.stdout.strip(), "[]", done.stderr)

    def test_every_plugin_kind_has_its_interfaces(self):
        from mailplat import interfaces

        for kind, (factory_iface, backend_iface, key) in plugin.KINDS.items():
            self.assertTrue(factory_iface.extends(interfaces.IBackendFactory), kind)
            self.assertIn(backend_iface.__name__, dir(interfaces))

    def test_the_conformance_kit_is_importable(self):
        import mailplat.testing

        self.assertTrue(hasattr(mailplat.testing, "RealmConformance"))
        self.assertTrue(hasattr(mailplat.testing, "DeliveryConformance"))
