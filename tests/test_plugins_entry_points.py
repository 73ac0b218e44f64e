"""
Installable plugins (issue 13 item 3): distributions add plugins through the
entry-point group `mailplat.plugins`, each entry point naming a module that
holds BackendPlugin objects; a module that fails to import is reported like
a broken file in plugins/. `mailplat new-plugin KIND NAME` writes a package
whose own tests pass as generated.

The distributions are wheels built here by hand (the format is a zip with a
.dist-info folder: no network, no build backend needed) and installed with
pip: into the running virtualenv for the working plugin (uninstalled at the
end), into a folder of their own (`pip install --target`) for the others.
"""

import base64
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile

from twisted.internet import defer
from twisted.trial import unittest

from mailplat import plugin
from mailplat.testing.server import imap_login, pop3_login
from tests.helpers import MailServer, in_thread
from tests.test_plugins import mailplat

DEMO_PLUGIN = '''
"""A realm installed from a distribution: users from the passwd-file, async def."""

from zope.interface import implementer

from mailplat.interfaces import IRealmBackend
from mailplat.plugin import BackendPlugin, Key
from mailplat.realm import passwords


@implementer(IRealmBackend)
class DemoRealm:
    def __init__(self, path):
        self.path = path

    def _users(self):
        with open(self.path) as f:
            return dict(line.strip().split(":", 1) for line in f if ":" in line)

    async def lookup(self, address):
        return address.lower() if address.lower() in self._users() else None

    async def check_password(self, address, password):
        stored = self._users().get(address.lower())
        ok = await passwords.verify_later(stored or passwords.dummy_hash(), password)
        return address.lower() if ok and stored else None

    async def list_users(self):
        return sorted(self._users())


kitdemo = BackendPlugin("realm", "kitdemo", "A realm from an installed distribution",
                        lambda section, context: DemoRealm(section["path"]),
                        keys={"path": Key(str, required=True, doc="a passwd-file")})
'''

BROKEN_PLUGIN = '''
raise ImportError("kitbroken needs libnothing, which is not installed")
'''


def _record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(folder, name, files, entry_points, version="0.1"):
    """
    A wheel of distribution `name` holding `files` ({path in the wheel:
    text}) and `entry_points` ({group: {name: value}}). @return: its path.
    """
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) for group, items in entry_points.items()]
    contents = dict(files)
    contents[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    contents[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: mailplat-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    contents[f"{info}/entry_points.txt"] = "\n".join(lines)
    top = sorted({p.split("/")[0] for p in files if "/" in p})
    contents[f"{info}/top_level.txt"] = "".join(t + "\n" for t in top)
    record = []
    path = os.path.join(folder, f"{dist}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for member, text in contents.items():
            data = text.encode("utf-8")
            z.writestr(member, data)
            record.append(f"{member},{_record_hash(data)},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def pip(*args):
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class InstalledIntoTheVirtualenv(unittest.TestCase):
    """`pip install mailplat-kitdemo` is all it takes."""

    def setUp(self):
        # (trial has no setUpClass: one install per test)
        self.dir = tempfile.mkdtemp(prefix="mailplat-wheel-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        wheel = build_wheel(self.dir, "mailplat-kitdemo", {
            "mailplat_kitdemo/__init__.py": "",
            "mailplat_kitdemo/plugin.py": DEMO_PLUGIN,
        }, {"mailplat.plugins": {"kitdemo": "mailplat_kitdemo.plugin"}})
        pip("install", "--no-deps", "--no-index", "--no-build-isolation", wheel)
        self.addCleanup(self._uninstall)

    def _uninstall(self):
        pip("uninstall", "-y", "mailplat-kitdemo")
        sys.modules.pop("mailplat_kitdemo.plugin", None)
        sys.modules.pop("mailplat_kitdemo", None)
        importlib.invalidate_caches()
        self.assertNotIn("kitdemo", plugin.available("realm"))

    def test_it_is_found_listed_and_described(self):
        found = plugin.available("realm")
        self.assertIn("kitdemo", found)
        self.assertEqual(found["kitdemo"].module, "mailplat_kitdemo.plugin")
        status, out, err = mailplat(["plugins"], self.dir)
        rows = {tuple(line.split(None, 3)[:3]) for line in out.splitlines()}
        self.assertIn(("realm", "kitdemo", "mailplat_kitdemo.plugin"), rows, out + err)
        status, out, err = mailplat(["plugins", "--describe", "kitdemo"], self.dir)
        self.assertEqual(status, 0, err)
        self.assertIn("a passwd-file", out)

    @defer.inlineCallbacks
    def test_a_server_uses_it_for_logins(self):
        server = KitdemoServer(self)
        yield server.start(users={"alice@example.test": "alice-pw"})
        self.assertEqual((yield in_thread(imap_login, server.port("imaps"), "alice@example.test", "alice-pw")), "OK")
        self.assertEqual((yield in_thread(pop3_login, server.port("pop3s"), "alice@example.test", "alice-pw")), "OK")


class KitdemoServer(MailServer):
    def __init__(self, testcase):
        super().__init__(testcase, listeners=("imaps", "pop3s"))

    def config_text(self):
        return super().config_text().replace('backend = "passwd-file"', 'backend = "kitdemo"', 1)


class BrokenDistribution(unittest.TestCase):
    """An entry point whose module does not import is a BROKEN line, like a broken file."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-wheel-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        wheel = build_wheel(self.dir, "mailplat-kitbroken", {
            "mailplat_kitbroken/__init__.py": "",
            "mailplat_kitbroken/plugin.py": BROKEN_PLUGIN,
        }, {"mailplat.plugins": {"kitbroken": "mailplat_kitbroken.plugin"}})
        self.target = os.path.join(self.dir, "site")
        pip("install", "--no-deps", "--no-index", "--target", self.target, wheel)

    def test_it_is_reported_broken_with_the_reason(self):
        status, out, err = mailplat(["plugins"], self.dir, self.target)
        self.assertEqual(status, 1, out + err)
        broken = [line for line in out.splitlines() if line.startswith("BROKEN")]
        self.assertEqual(len(broken), 1, out)
        self.assertIn("mailplat_kitbroken.plugin (entry point 'kitbroken' of mailplat-kitbroken)", broken[0])
        self.assertIn("ImportError: kitbroken needs libnothing", broken[0])
        self.assertIn("passwd-file", out)  # the others are still listed


class NewPlugin(unittest.TestCase):
    """`mailplat new-plugin KIND NAME --dir D`: a package that passes its tests as generated."""

    def generate(self, kind, name):
        folder = tempfile.mkdtemp(prefix="mailplat-new-plugin-")
        self.addCleanup(shutil.rmtree, folder, True)
        status, out, err = mailplat(["new-plugin", kind, name, "--dir", folder], folder)
        self.assertEqual(status, 0, err)
        return os.path.join(folder, f"mailplat-{name}")

    def run_its_tests(self, package, module):
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        done = subprocess.run([sys.executable, "-m", "twisted.trial", module], cwd=package, capture_output=True,
                              text=True, timeout=600, env=env)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-2000:])
        self.assertIn("PASSED", done.stdout)
        return done.stdout

    def test_the_files_of_a_realm_package(self):
        package = self.generate("realm", "myrealm")
        for relative in ("pyproject.toml", "README.md", "mailplat_myrealm/__init__.py",
                         "mailplat_myrealm/plugin.py", "mailplat_myrealm/test_plugin.py"):
            self.assertTrue(os.path.isfile(os.path.join(package, relative)), relative)
        with open(os.path.join(package, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        self.assertEqual(project["name"], "mailplat-myrealm")
        self.assertEqual(project["entry-points"]["mailplat.plugins"], {"myrealm": "mailplat_myrealm.plugin"})
        with open(os.path.join(package, "mailplat_myrealm", "plugin.py")) as f:
            self.assertIn("async def check_password", f.read())

    def test_a_generated_realm_passes_the_kit_logins_included(self):
        out = self.run_its_tests(self.generate("realm", "myrealm"), "mailplat_myrealm")
        self.assertIn("test_logins_work_through_a_running_server", out)

    def test_a_generated_check_passes_the_kit(self):
        self.run_its_tests(self.generate("check", "subjects"), "mailplat_subjects")

    def test_a_generated_delivery_passes_the_kit(self):
        out = self.run_its_tests(self.generate("delivery", "eml-files"), "mailplat_eml_files")
        self.assertIn("test_mail_and_its_directory_are_fsynced_before_deliver_fires ...", out)

    def test_installed_it_is_listed_and_validated(self):
        """The generated package, installed (a wheel of its files and its
        pyproject's entry points), is listed and its table checked."""
        package = self.generate("realm", "myrealm")
        with open(os.path.join(package, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        files = {}
        for name in os.listdir(os.path.join(package, "mailplat_myrealm")):
            if name.endswith(".py"):
                with open(os.path.join(package, "mailplat_myrealm", name)) as f:
                    files[f"mailplat_myrealm/{name}"] = f.read()
        wheel = build_wheel(package, project["name"], files, project["entry-points"])
        target = os.path.join(package, "site")
        pip("install", "--no-deps", "--no-index", "--target", target, wheel)
        status, out, err = mailplat(["plugins"], package, target)
        rows = {tuple(line.split(None, 3)[:3]) for line in out.splitlines()}
        self.assertIn(("realm", "myrealm", "mailplat_myrealm.plugin"), rows, out + err)
        config = os.path.join(package, "mailplat.toml")
        with open(config, "w") as f:
            f.write('[server]\nhostname = "mx.example.test"\nstate_dir = "var"\n[domains]\nlocal = ["example.test"]\n'
                    '[listen]\nsmtp = "tcp:port=0:interface=127.0.0.1"\n[realm]\nbackend = "myrealm"\n'
                    'users_fle = "users.json"\n')
        status, out, err = mailplat(["--config", config, "check-config"], package, target)
        self.assertEqual(status, 2)
        self.assertIn("realm.users_fle: unknown key (did you mean users_file?)", err)

    def test_an_unknown_kind_or_a_bad_name_is_refused(self):
        folder = self.mktemp()
        os.makedirs(folder)
        status, out, err = mailplat(["new-plugin", "realm", "My Realm", "--dir", folder], folder)
        self.assertEqual(status, 2)
        self.assertIn("lower-case letters, digits and dashes", err)
        status, out, err = mailplat(["new-plugin", "spaceship", "x", "--dir", folder], folder)
        self.assertEqual(status, 2)
