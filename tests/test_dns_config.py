"""
The [dns] table and the one resolver of the server: servers and timeout
parsed and checked (every bad key named with the file), the relay's MX
lookups sent to the `[dns] servers` name server, and `[relay] dns_servers`
still taking precedence for the relay when it is set (docs/relay.md).
"""

import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.names import dns
from twisted.trial import unittest

from mailplat import config as configuration
from mailplat.config import ConfigError
from mailplat.dns import SharedResolver, retry_timeouts
from mailplat.testing.dns import start_dns_server, txt
from tests.helpers import MailServer

BASE = """
[server]
hostname = "mail.example.test"
state_dir = "var"

[domains]
local = ["example.test"]

[listen]
submission = "tcp:port=0:interface=127.0.0.1"

[realm]
backend = "passwd-file"
path = "users"
"""

ZONE = {
    "example.org": [dns.Record_MX(10, b"mx.example.org")],
    "mx.example.org": [dns.Record_A("127.0.0.1")],
}


class ConfigFile(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-dns-config-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "mailplat.toml")

    def load(self, text):
        with open(self.path, "w") as f:
            f.write(BASE + text)
        return configuration.load(self.path, cwd=self.dir)

    def error(self, text):
        with self.assertRaises(ConfigError) as caught:
            self.load(text)
        message = str(caught.exception)
        self.assertTrue(message.startswith(self.path + ": "), message)
        return caught.exception


class DNSTable(ConfigFile):
    def test_defaults_are_resolv_conf_and_ten_seconds(self):
        self.assertEqual(self.load("").dns, {"servers": [], "timeout": 10, "validating": False})

    def test_embedded_defaults_have_the_same(self):
        self.assertEqual(configuration.load().dns, {"servers": [], "timeout": 10, "validating": False})

    def test_servers_with_and_without_ports(self):
        config = self.load('[dns]\nservers = ["127.0.0.1:5353", "192.0.2.1", "[::1]:53"]\ntimeout = 2.5\n')
        self.assertEqual(config.dns["servers"], [("127.0.0.1", 5353), ("192.0.2.1", 53), ("::1", 53)])
        self.assertEqual(config.dns["timeout"], 2.5)

    def test_unknown_key_is_named(self):
        e = self.error("[dns]\nretries = 3\n")
        self.assertEqual(e.key, "dns.retries")
        self.assertIn("known: servers, timeout", str(e))

    def test_bad_server_is_named(self):
        self.assertEqual(self.error('[dns]\nservers = ["127.0.0.1:x"]\n').key, "dns.servers")

    def test_server_that_is_not_a_string_is_named(self):
        self.assertEqual(self.error("[dns]\nservers = [53]\n").key, "dns.servers")

    def test_servers_must_be_a_list(self):
        self.assertEqual(self.error('[dns]\nservers = "127.0.0.1"\n').key, "dns.servers")

    def test_timeout_must_be_positive(self):
        for bad in ("0", "-1", '"5s"', "true"):
            self.assertEqual(self.error(f"[dns]\ntimeout = {bad}\n").key, "dns.timeout", bad)

    def test_dns_must_be_a_table(self):
        with open(self.path, "w") as f:
            f.write("dns = 1\n" + BASE)
        with self.assertRaises(ConfigError) as caught:
            configuration.load(self.path, cwd=self.dir)
        self.assertEqual(caught.exception.key, "dns")


class DKIMTable(ConfigFile):
    def test_defaults_sign_every_domain_with_a_key(self):
        dkim = self.load("").dkim
        self.assertEqual((dkim["enabled"], dkim["domains"], dkim["selectors"], dkim["oversign_from"]),
                         (True, None, {}, True))
        self.assertEqual(dkim["headers"], list(configuration.DKIM_HEADERS))
        self.assertEqual(dkim["key_dir"], os.path.join(self.dir, "var", "dkim"))

    def test_domains_and_selectors(self):
        dkim = self.load('[dkim]\ndomains = ["Example.TEST."]\n[dkim.selectors]\n"example.test" = "s1"\n'
                         '"example.org" = ["a", "b"]\n').dkim
        self.assertEqual(dkim["domains"], ["example.test"])
        self.assertEqual(dkim["selectors"], {"example.test": ["s1"], "example.org": ["a", "b"]})

    def test_unknown_key_is_named(self):
        e = self.error("[dkim]\nalgorithm = \"rsa\"\n")
        self.assertEqual(e.key, "dkim.algorithm")
        self.assertIn("known: enabled", str(e))

    def test_headers_must_include_from(self):
        self.assertEqual(self.error('[dkim]\nheaders = ["To", "Subject"]\n').key, "dkim.headers")

    def test_bad_header_name_is_named(self):
        self.assertEqual(self.error('[dkim]\nheaders = ["From", "Sub ject"]\n').key, "dkim.headers")

    def test_bad_domain_is_named(self):
        self.assertEqual(self.error('[dkim]\ndomains = ["../etc"]\n').key, "dkim.domains")

    def test_empty_selector_list_is_named(self):
        self.assertEqual(self.error('[dkim.selectors]\n"example.test" = []\n').key, "dkim.selectors.example.test")


class Timeouts(unittest.TestCase):
    def test_a_short_timeout_is_one_try(self):
        self.assertEqual(retry_timeouts(2), (2,))

    def test_a_longer_one_retries_after_a_second(self):
        self.assertEqual(retry_timeouts(10), (1, 9))


class SharedResolverLookups(unittest.TestCase):
    """The shared resolver against the test's name server."""

    @defer.inlineCallbacks
    def test_lookups_go_to_the_configured_server(self):
        server = start_dns_server(self, ZONE)
        resolver = SharedResolver({"servers": [("127.0.0.1", server.port)], "timeout": 5})
        self.addCleanup(resolver.close)
        answers, _, _ = yield resolver.lookupMailExchange("example.org")
        self.assertEqual([str(a.payload.name) for a in answers], ["mx.example.org"])
        self.assertIn(("example.org", "MX"), server.queries)

    @defer.inlineCallbacks
    def test_an_answer_too_long_for_udp_comes_over_tcp(self):
        text = "v=DKIM1; k=rsa; p=" + "A" * 1200
        server = start_dns_server(self, {"s1._domainkey.example.org": [txt(text)]})
        resolver = SharedResolver({"servers": [("127.0.0.1", server.port)], "timeout": 5})
        self.addCleanup(resolver.close)
        answers, _, _ = yield resolver.lookupText("s1._domainkey.example.org")
        self.assertEqual(b"".join(answers[0].payload.data).decode(), text)

    def test_nothing_is_built_until_a_lookup(self):
        resolver = SharedResolver(None)
        self.assertIsNone(resolver._chain)
        resolver.close()


class QuietLookups(unittest.TestCase):
    """A lookup's UDP port writes no "Starting/Stopping protocol" lines (Twisted's port still says it starts)."""

    @defer.inlineCallbacks
    def test_a_lookup_logs_nothing(self):
        from tests.helpers import collect_log

        server = start_dns_server(self, ZONE)
        resolver = SharedResolver({"servers": [("127.0.0.1", server.port)], "timeout": 5})
        self.addCleanup(resolver.close)
        lines = collect_log(self)
        yield resolver.lookupMailExchange("example.org")
        yield resolver.lookupAddress("mx.example.org").addErrback(lambda f: None)
        self.assertEqual([line for line in lines if "Starting protocol" in line or "Stopping protocol" in line], [])


class HostsFileCache(unittest.TestCase):
    """/etc/hosts is read again when it changes, not at every lookup."""

    def setUp(self):
        from mailplat.dns import HostsFile

        self.path = os.path.join(self.mktemp())
        self.write(b"127.0.0.1 localhost here.test  # a comment\n::1 localhost here.test\n")
        self.now = 0.0
        self.hosts = HostsFile(self.path.encode(), clock=lambda: self.now)

    def write(self, data):
        with open(self.path, "wb") as f:
            f.write(data)

    @defer.inlineCallbacks
    def answer(self, name, lookup="lookupAddress"):
        try:
            answers, _, _ = yield getattr(self.hosts, lookup)(name)
        except Exception:
            return []
        return [a.payload.dottedQuad() if a.type == dns.A else a.payload._address for a in answers]

    @defer.inlineCallbacks
    def test_names_are_answered_from_the_file(self):
        self.assertEqual((yield self.answer("HERE.test")), ["127.0.0.1"])
        self.assertEqual(len((yield self.answer("here.test", "lookupIPV6Address"))), 1)
        self.assertEqual((yield self.answer("elsewhere.test")), [])

    @defer.inlineCallbacks
    def test_a_change_is_seen_after_the_check_interval_and_not_before(self):
        self.assertEqual((yield self.answer("new.test")), [])
        self.write(b"192.0.2.9 new.test\n" + b"#" * 100 + b"\n")
        self.now += 0.5
        self.assertEqual((yield self.answer("new.test")), [])  # not looked at yet
        self.now += 1.0
        self.assertEqual((yield self.answer("new.test")), ["192.0.2.9"])

    @defer.inlineCallbacks
    def test_a_missing_file_answers_nothing(self):
        os.unlink(self.path)
        self.now += 5
        self.assertEqual((yield self.answer("here.test")), [])


class RelayUsesTheSharedResolver(unittest.TestCase):
    """A whole server: the relay's MX lookups go where [dns] says, unless [relay] dns_servers says otherwise."""

    @defer.inlineCallbacks
    def start(self, extra):
        server = MailServer(self, listeners=("submission",), extra=extra)
        yield server.start(users={"alice@example.test": "pw"})
        return server

    @defer.inlineCallbacks
    def test_relay_mx_lookup_goes_to_the_dns_servers_server(self):
        name_server = start_dns_server(self, ZONE)
        server = yield self.start(f'[dns]\nservers = ["{name_server.address}"]\ntimeout = 5\n[relay]\n')
        router = server.service.backends.relay.router
        self.assertIs(router.resolver, server.service.backends.dns)
        destinations = yield router.route("example.org")
        self.assertEqual([(d.name, d.address) for d in destinations], [("mx.example.org", "127.0.0.1")])
        self.assertIn(("example.org", "MX"), name_server.queries)

    @defer.inlineCallbacks
    def test_relay_dns_servers_takes_precedence_for_the_relay(self):
        shared = start_dns_server(self, {"example.org": [dns.Record_MX(10, b"wrong.example.org")]})
        own = start_dns_server(self, ZONE)
        server = yield self.start(
            f'[dns]\nservers = ["{shared.address}"]\n[relay]\ndns_servers = ["{own.address}"]\n'
        )
        hosts = yield server.service.backends.relay.router.mx_hosts("example.org")
        self.assertEqual(hosts, ["mx.example.org"])
        self.assertEqual(shared.queries, [])

    @defer.inlineCallbacks
    def test_the_dkim_signer_and_plugins_see_the_same_resolver(self):
        name_server = start_dns_server(self, ZONE)
        server = yield self.start(f'[dns]\nservers = ["{name_server.address}"]\n')
        backends = server.service.backends
        self.assertEqual(backends.dns.servers, [("127.0.0.1", name_server.port)])
        answers, _, _ = yield backends.dns.lookupAddress("mx.example.org")
        self.assertEqual(answers[0].payload.dottedQuad(), "127.0.0.1")
