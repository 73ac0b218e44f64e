"""
Configuration: the embedded defaults, the TOML an operator writes, and the
errors that stop a bad one, each naming the file, the key and the problem.
"""

import os
import shutil
import stat
import tempfile

from twisted.trial import unittest

from mailplat import config as configuration
from mailplat.config import ConfigError
from mailplat.service import make_service

GOOD = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["Example.TEST", "example.org."]

[listen]
smtp = "tcp:port=0:interface=127.0.0.1"
pop3s = "tcp:port=0:interface=127.0.0.1"

[realm]
backend = "passwd-file"
path = "etc/users"

[store]
backend = "maildir"
path = "var/mail/%d/%n"

[delivery]
local = "maildir"

[aliases]
path = "etc/aliases"
"""


class ConfigTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-config-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "mailplat.toml")

    def load(self, text):
        with open(self.path, "w") as f:
            f.write(text)
        return configuration.load(self.path, cwd=self.dir)

    def error(self, text):
        """The ConfigError the text causes, loading and building the server."""
        with open(self.path, "w") as f:
            f.write(text)

        def load_and_build():
            config = configuration.load(self.path, cwd=self.dir)
            make_service(config)

        return self.assertRaises(ConfigError, load_and_build)

    def replace(self, old, new):
        self.assertIn(old, GOOD)
        return GOOD.replace(old, new)


class EmbeddedDefaults(ConfigTestCase):
    def test_defaults_listen_on_loopback_unprivileged_ports(self):
        config = configuration.load(None, cwd=self.dir)
        expected = {
            "smtp": "tcp:port=2525:interface=127.0.0.1",
            "submission": "tcp:port=5587:interface=127.0.0.1",
            "smtps": "tcp:port=4465:interface=127.0.0.1",
            "pop3": "tcp:port=1110:interface=127.0.0.1",
            "pop3s": "tcp:port=1995:interface=127.0.0.1",
            # once IMAP exists
            "imap": "tcp:port=1143:interface=127.0.0.1",
            "imaps": "tcp:port=1993:interface=127.0.0.1",
            # ManageSieve's standard port is unprivileged already (RFC 5804 1.8)
            "managesieve": "tcp:port=4190:interface=127.0.0.1",
        }
        for name, endpoint in config.listen.items():
            self.assertEqual(endpoint, expected.get(name), name)
        for name in ("smtp", "submission", "smtps", "pop3", "pop3s"):
            self.assertIn(name, config.listen)

    def test_defaults_keep_state_under_var_in_the_start_directory(self):
        config = configuration.load(None, cwd=self.dir)
        var = os.path.join(self.dir, "var")
        self.assertEqual(config.state_dir, var)
        self.assertEqual(config.store["path"], os.path.join(var, "mail", "%d", "%n"))
        self.assertTrue(config.tls_certificate.startswith(var + os.sep))
        self.assertTrue(config.tls_key.startswith(var + os.sep))
        self.assertEqual(config.realm["backend"], "passwd-file")

    def test_first_start_creates_a_self_signed_certificate_with_a_private_key(self):
        config = configuration.load(None, cwd=self.dir)
        make_service(config)
        self.assertTrue(os.path.exists(config.tls_certificate))
        self.assertEqual(stat.S_IMODE(os.stat(config.tls_key).st_mode), 0o600)


class GoodFile(ConfigTestCase):
    def test_paths_are_taken_from_the_start_directory(self):
        config = self.load(GOOD)
        self.assertEqual(config.realm["path"], os.path.join(self.dir, "etc", "users"))
        self.assertEqual(config.store["path"], os.path.join(self.dir, "var", "mail", "%d", "%n"))
        self.assertEqual(config.aliases_path, os.path.join(self.dir, "etc", "aliases"))

    def test_local_domains_are_lower_case_without_trailing_dot(self):
        config = self.load(GOOD)
        self.assertEqual(config.local_domains, ["example.test", "example.org"])
        self.assertTrue(config.is_local_domain("EXAMPLE.test"))

    def test_only_the_listed_services_run(self):
        config = self.load(GOOD)
        self.assertEqual(sorted(config.listen), ["pop3s", "smtp"])
        names = sorted(svc.name for svc in make_service(config))
        self.assertEqual(names, ["pop3s", "smtp"])

    def test_an_empty_listen_value_turns_that_service_off(self):
        config = self.load(self.replace('smtp = "tcp:port=0:interface=127.0.0.1"', 'smtp = ""'))
        self.assertEqual(list(config.listen), ["pop3s"])

    def test_store_path_follows_a_state_dir_the_file_sets(self):
        text = GOOD.replace('state_dir = "var"', 'state_dir = "state"').replace('path = "var/mail/%d/%n"\n', "")
        config = self.load(text)
        self.assertEqual(config.store["path"], os.path.join(self.dir, "state", "mail", "%d", "%n"))

    def test_limits_have_defaults_and_can_be_set(self):
        config = self.load(GOOD + "\n[limits]\nmessage_size = 1000\n")
        self.assertEqual(config.limits["message_size"], 1000)
        self.assertEqual(config.limits["line_length"], configuration.LIMIT_KEYS["line_length"][1])


class BadFile(ConfigTestCase):
    """Each error names the file, the key and what is wrong."""

    def assertNames(self, error, *parts):
        text = str(error)
        self.assertIn(self.path, text)
        for part in parts:
            self.assertIn(part, text)

    def test_missing_file_is_named(self):
        e = self.assertRaises(ConfigError, configuration.load, os.path.join(self.dir, "nope.toml"), self.dir)
        self.assertIn("nope.toml", str(e))
        self.assertIn("not found", str(e))

    def test_invalid_toml_is_named_with_the_file(self):
        e = self.error(GOOD + "\n[server\n")
        self.assertNames(e, "TOML")

    def test_wrong_type_names_the_file_and_the_key(self):
        e = self.error(self.replace('hostname = "mail.example.test"', "hostname = 25"))
        self.assertNames(e, "server.hostname", "25")

    def test_domains_that_are_not_a_list_are_named(self):
        e = self.error(self.replace('local = ["Example.TEST", "example.org."]', 'local = "example.test"'))
        self.assertNames(e, "domains.local")

    def test_an_address_in_local_domains_is_named(self):
        e = self.error(self.replace('local = ["Example.TEST", "example.org."]', 'local = ["a@example.test"]'))
        self.assertNames(e, "domains.local", "a@example.test")

    def test_a_hostname_with_spaces_is_named(self):
        e = self.error(self.replace('hostname = "mail.example.test"', 'hostname = "mail example"'))
        self.assertNames(e, "server.hostname")

    def test_unknown_listen_service_is_named(self):
        e = self.error(GOOD.replace("[listen]\n", '[listen]\nnntp = "tcp:port=0"\n'))
        self.assertNames(e, "listen.nntp")

    def test_bad_listen_endpoint_is_named(self):
        e = self.error(self.replace('smtp = "tcp:port=0:interface=127.0.0.1"', 'smtp = "tcp:port=twentyfive"'))
        self.assertNames(e, "listen.smtp", "twentyfive")

    def test_unknown_endpoint_type_is_named(self):
        e = self.error(self.replace('smtp = "tcp:port=0:interface=127.0.0.1"', 'smtp = "carrier-pigeon:port=25"'))
        self.assertNames(e, "listen.smtp", "carrier-pigeon")

    def test_listen_value_of_the_wrong_type_is_named(self):
        e = self.error(self.replace('smtp = "tcp:port=0:interface=127.0.0.1"', "smtp = 25"))
        self.assertNames(e, "listen.smtp")

    def test_unknown_realm_backend_is_named(self):
        e = self.error(self.replace('backend = "passwd-file"', 'backend = "ldap-of-dreams"'))
        self.assertNames(e, "realm.backend", "ldap-of-dreams", "passwd-file")

    def test_unknown_store_backend_is_named(self):
        e = self.error(self.replace('backend = "maildir"', 'backend = "punchcards"'))
        self.assertNames(e, "store.backend", "punchcards", "maildir")

    def test_unknown_delivery_agent_is_named(self):
        e = self.error(self.replace('local = "maildir"', 'local = "carrier"'))
        self.assertNames(e, "delivery.local", "carrier")

    def test_unknown_limit_is_named(self):
        e = self.error(GOOD + "\n[limits]\nmessage_sise = 10\n")
        self.assertNames(e, "limits.message_sise")

    def test_non_positive_limit_is_named(self):
        e = self.error(GOOD + "\n[limits]\nmessage_size = 0\n")
        self.assertNames(e, "limits.message_size")

    def test_limit_of_the_wrong_type_is_named(self):
        e = self.error(GOOD + '\n[limits]\nmessage_size = "10M"\n')
        self.assertNames(e, "limits.message_size")

    def test_a_section_that_is_not_a_table_is_named(self):
        e = self.error('realm = "passwd-file"\n' + GOOD.replace('[realm]\nbackend = "passwd-file"\npath = "etc/users"\n', ""))
        self.assertNames(e, "realm")

    def test_missing_certificate_is_named_when_not_creating_one(self):
        e = self.error(GOOD + '\n[tls]\ncertificate = "nope/cert.pem"\nkey = "nope/key.pem"\ncreate_self_signed = false\n')
        self.assertNames(e, "tls.certificate", "nope/cert.pem")

    def test_certificate_without_its_key_is_named(self):
        os.makedirs(os.path.join(self.dir, "tls"))
        with open(os.path.join(self.dir, "tls", "cert.pem"), "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\n")
        e = self.error(GOOD + '\n[tls]\ncertificate = "tls/cert.pem"\nkey = "tls/key.pem"\n')
        self.assertNames(e, "tls.key", "tls/key.pem")

    def test_certificate_that_does_not_load_is_named(self):
        os.makedirs(os.path.join(self.dir, "tls"))
        for name in ("cert.pem", "key.pem"):
            with open(os.path.join(self.dir, "tls", name), "w") as f:
                f.write("not PEM at all\n")
        e = self.error(GOOD + '\n[tls]\ncertificate = "tls/cert.pem"\nkey = "tls/key.pem"\n')
        self.assertNames(e, "tls.certificate")


class ShippedExample(unittest.TestCase):
    def test_etc_mailplat_toml_is_a_valid_configuration(self):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        example = os.path.join(here, "etc", "mailplat.toml")
        config = configuration.load(example, cwd=tempfile.gettempdir())
        # The production example: the standard ports on all interfaces.
        ports = {name: value for name, value in config.listen.items()}
        for name, port in (("smtp", "25"), ("submission", "587"), ("smtps", "465"), ("pop3", "110"), ("pop3s", "995")):
            self.assertIn(f"port={port}", ports.get(name, ""), name)
