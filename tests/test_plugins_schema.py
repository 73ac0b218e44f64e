"""
Config schemas of plugins (issue 13 item 2): a BackendPlugin declares its
keys with a type, a default, whether required and a line of doc; the table
is checked before the plugin is built, and the operator is told
`FILE: table.key: ...`; `mailplat plugins --describe NAME` prints them.
"""

import os

from twisted.trial import unittest

from mailplat import config as configuration
from mailplat import plugin
from mailplat.config import ConfigError
from mailplat.interfaces import BackendContext
from mailplat.plugin import BackendPlugin, Key
from mailplat.schema import as_schema
from mailplat.realm.passwdfile import PasswdFileRealm
from mailplat.service import Backends
from tests.helpers import small_config
from tests.test_plugins import mailplat



class Built:
    """What the plugin's build was given."""

    section = None


def _build(section, context):
    Built.section = section
    return PasswdFileRealm(section["path"])


SCHEMA = {
    "reload_seconds": Key(int, default=30, doc="how often to look at the file"),
    "label": Key(str, required=True, doc="a name for the logs"),
    "ratio": Key(float, doc="a number"),
    "cache": Key(dict, doc="[realm.cache]", keys={"size": Key(int, required=True, doc="entries")}),
}


class Validation(unittest.TestCase):
    def setUp(self):
        self.addCleanup(plugin.register(BackendPlugin("realm", "schema-realm", "a realm with a schema", _build,
                                                      keys=SCHEMA)))
        self.dir = self.mktemp()
        os.makedirs(os.path.join(self.dir, "etc"))
        open(os.path.join(self.dir, "etc", "users"), "w").close()
        Built.section = None

    def backends(self, realm_lines):
        path = os.path.join(self.dir, "mailplat.toml")
        with open(path, "w") as f:
            f.write(small_config("schema-realm", realm_lines + "\n"))
        return Backends(configuration.load(path, cwd=self.dir))

    def refused(self, realm_lines):
        e = self.assertRaises(ConfigError, self.backends, realm_lines)
        self.assertIsNone(Built.section, "the plugin was built from a table that is wrong")
        return str(e)

    def test_an_unknown_key_is_named_with_the_file_and_the_closest_spelling(self):
        text = self.refused('label = "x"\nreload_secnds = 5')
        self.assertIn("mailplat.toml: realm.reload_secnds: unknown key (did you mean reload_seconds?)", text)

    def test_a_missing_required_key_is_named_with_its_doc(self):
        text = self.refused("")
        self.assertIn("mailplat.toml: realm.label: is required (a name for the logs)", text)

    def test_a_mistyped_key_is_named_with_the_type_wanted(self):
        text = self.refused('label = "x"\nreload_seconds = "soon"')
        self.assertIn("mailplat.toml: realm.reload_seconds: must be a whole number, not 'soon'", text)

    def test_true_is_no_number(self):
        self.assertIn("realm.reload_seconds: must be a whole number, not True",
                      self.refused('label = "x"\nreload_seconds = true'))

    def test_a_whole_number_will_do_for_a_number(self):
        self.backends('label = "x"\nratio = 2')
        self.assertEqual(Built.section["ratio"], 2)

    def test_a_sub_tables_keys_are_checked_too(self):
        self.assertIn("realm.cache.size: is required", self.refused('label = "x"\n[realm.cache]\n'))
        self.assertIn("realm.cache.entries: unknown key", self.refused('label = "x"\n[realm.cache]\nsize = 1\nentries = 3'))
        self.assertIn("realm.cache.size: must be a whole number", self.refused('label = "x"\n[realm.cache]\nsize = "3"'))

    def test_build_receives_the_table_with_the_defaults_filled_in(self):
        self.backends('label = "x"')
        self.assertEqual(Built.section["reload_seconds"], 30)
        self.assertEqual(Built.section["label"], "x")
        self.assertNotIn("ratio", Built.section)  # no default: left out

    def test_the_core_keys_stay_allowed(self):
        self.backends('label = "x"')
        self.assertEqual(Built.section["backend"], "schema-realm")
        self.assertTrue(Built.section["path"].endswith(os.path.join("etc", "users")))


class OldDeclarations(unittest.TestCase):
    """Plugins written against the first edition keep working."""

    def test_names_and_sub_table_tuples_still_check_unknown_keys(self):
        old = BackendPlugin("delivery", "old-style", "first-edition keys", lambda s, c: None,
                            keys={"old": ("endpoint", "timeout")})
        e = self.assertRaises(plugin.PluginError, plugin.validate, "delivery", old,
                              {"local": "old-style", "old": {"endpont": "x"}}, "delivery")
        self.assertIn("delivery.old.endpont: unknown key (did you mean endpoint?)", str(e))
        self.assertEqual(plugin.validate("delivery", old, {"old": {"timeout": "any type"}}, "delivery"),
                         {"old": {"timeout": "any type"}})

    def test_any_keys_takes_anything(self):
        free = BackendPlugin("realm", "free", "anything goes", lambda s, c: None, keys=plugin.ANY_KEYS)
        self.assertEqual(plugin.validate("realm", free, {"whatever": 1}, "realm"), {"whatever": 1})

    def test_undeclared_keys_are_not_checked(self):
        silent = BackendPlugin("realm", "silent", "declares nothing", lambda s, c: None)
        self.assertIsNone(plugin.validate("realm", silent, {"whatever": 1}, "realm"))
        self.assertFalse(plugin.check_section("realm", silent, {"whatever": 1}, "realm"))


class BuiltinSchemas(unittest.TestCase):
    def test_every_builtin_declares_documented_keys(self):
        for p in plugin.scan()[0]:
            if not p.module.startswith("plugins.mailplat_"):
                continue
            schema = as_schema(p.keys)
            self.assertIsInstance(schema, dict, p)
            for name, key in schema.items():
                self.assertTrue(key.doc, f"{p.name}: {name} has no doc line")

    def test_the_passwd_file_realm_wants_its_path(self):
        context = BackendContext(configuration.load(None))
        e = self.assertRaises(plugin.PluginError, plugin.build, "realm", "passwd-file", {"backend": "passwd-file"},
                              context)
        self.assertIn("realm.path: is required", str(e))

    def test_a_size_check_of_the_wrong_type_is_named(self):
        context = BackendContext(configuration.load(None))
        e = self.assertRaises(plugin.PluginError, plugin.build, "check", "size", {"max_size": "10M"}, context,
                              key="checks.size", table="checks.size")
        self.assertIn("checks.size.max_size: must be a whole number, not '10M'", str(e))


class Describe(unittest.TestCase):
    def test_describe_prints_the_table_received_and_every_key(self):
        status, out, err = mailplat(["plugins", "--describe", "lmtp"], os.getcwd())
        self.assertEqual(status, 0, err)
        self.assertIn("delivery lmtp (plugins.mailplat_lmtp)", out)
        self.assertIn("receives: the whole [delivery] table", out)
        lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("    ")}
        self.assertIn("a string", lines["endpoint"])
        self.assertIn("required", lines["endpoint"])
        self.assertIn("seconds to wait for each reply", lines["timeout"])

    def test_describe_gives_defaults(self):
        status, out, err = mailplat(["plugins", "--describe", "header"], os.getcwd())
        self.assertEqual(status, 0, err)
        self.assertIn("default 'Junk'", out)

    def test_describe_of_an_unknown_name_fails(self):
        status, out, err = mailplat(["plugins", "--describe", "no-such-plugin"], os.getcwd())
        self.assertEqual(status, 1)
        self.assertIn("no plugin named 'no-such-plugin'", err)
