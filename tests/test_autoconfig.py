"""
`[listen] http` and client autoconfiguration (issue 12, item 8): the
twisted.web root other parts mount pages on (mailplat.web), Thunderbird's
config-v1.1.xml at both its paths, Microsoft Autodiscover (POX) and an
Apple .mobileconfig, each fetched over a real socket and parsed (XML,
plistlib): only the services in [listen] are offered, on their ports, at
the advertised host name; bad requests get 400, never a traceback.
"""

import os
import plistlib
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from xml.etree import ElementTree

from twisted.internet import defer
from twisted.trial import unittest
from twisted.web import static

from mailplat import config as configuration
from mailplat.autoconfig import AUTODISCOVER_OUTLOOK, endpoint_port
from mailplat.web import PathTaken, WebRoot
from tests.helpers import MailServer, free_port, in_thread

ADDRESS = "alice@example.test"
MAIL_SERVICES = ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s")

AUTODISCOVER_REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>%s</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>
"""


class FixedPortServer(MailServer):
    """A MailServer whose mail listeners are on known ports (what autoconfig advertises); http on any."""

    def __init__(self, testcase, services, extra=""):
        super().__init__(testcase, listeners=tuple(services) + ("http",), extra=extra)
        self.fixed = {name: free_port() for name in services}

    def config_text(self):
        text = super().config_text()
        for name, port in self.fixed.items():
            text = text.replace(f'\n{name} = "tcp:port=0:', f'\n{name} = "tcp:port={port}:')
        return text


def http(port, path, data=None, method=None):
    """(status, headers, body) of one request, blocking (run it in a thread)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "text/xml")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def query(address):
    return "?" + urllib.parse.urlencode({"emailaddress": address})


class Base(unittest.TestCase):
    services = MAIL_SERVICES
    extra = ""

    @defer.inlineCallbacks
    def start(self, services=None, extra=None):
        self.server = FixedPortServer(self, services or self.services, extra=self.extra if extra is None else extra)
        yield self.server.start(users={ADDRESS: "pw"})
        self.http_port = self.server.port("http")

    def get(self, path, data=None, method=None):
        return in_thread(http, self.http_port, path, data, method)


class WebRootMounting(unittest.TestCase):
    def test_mount_makes_the_intermediate_segments(self):
        root = WebRoot()
        page = static.Data(b"x", "text/plain")
        root.mount("/.well-known/acme-challenge", page)
        self.assertIs(root.children[b".well-known"].children[b"acme-challenge"], page)

    def test_two_parts_share_a_prefix(self):
        root = WebRoot()
        root.mount("/.well-known/acme-challenge", static.Data(b"a", "text/plain"))
        root.mount("/.well-known/autoconfig/mail/config-v1.1.xml", static.Data(b"b", "text/plain"))
        self.assertEqual(sorted(root.children[b".well-known"].children), [b"acme-challenge", b"autoconfig"])

    def test_a_path_mounted_twice_is_refused_naming_it(self):
        root = WebRoot()
        root.mount("a/b", static.Data(b"a", "text/plain"))
        with self.assertRaises(PathTaken) as caught:
            root.mount("/a/b/", static.Data(b"b", "text/plain"))
        self.assertIn("/a/b", str(caught.exception))

    def test_a_path_below_a_mounted_page_is_refused(self):
        root = WebRoot()
        root.mount("/a", static.Data(b"a", "text/plain"))
        with self.assertRaises(PathTaken):
            root.mount("/a/b", static.Data(b"b", "text/plain"))

    def test_the_root_itself_cannot_be_mounted(self):
        with self.assertRaises(ValueError):
            WebRoot().mount("/", static.Data(b"a", "text/plain"))


class HttpListener(Base):
    services = ("imaps", "submission")

    @defer.inlineCallbacks
    def test_a_page_mounted_on_top_web_is_served(self):
        yield self.start()
        self.server.service.web.mount("/hello", static.Data(b"hello", "text/plain"))
        status, _, body = yield self.get("/hello")
        self.assertEqual((status, body), (200, b"hello"))

    @defer.inlineCallbacks
    def test_an_unknown_path_is_404(self):
        yield self.start()
        status, _, _ = yield self.get("/no/such/page")
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_no_http_key_no_web_root(self):
        server = MailServer(self, listeners=("smtp",))
        yield server.start()
        self.assertIsNone(server.service.web)

    def test_http_alone_is_no_service(self):
        directory = tempfile.mkdtemp(prefix="mailplat-autoconfig-")
        path = os.path.join(directory, "mailplat.toml")
        with open(path, "w") as f:
            f.write('[server]\nhostname = "mx.test"\nstate_dir = "var"\n[listen]\nhttp = "tcp:port=8080"\n')
        config = configuration.load(path, cwd=directory)
        with self.assertRaises(configuration.ConfigError):
            configuration.require_service(config)


def servers(xml, tag):
    """[(type, hostname, port, socketType, username)] of a config-v1.1.xml's incoming/outgoing servers."""
    root = ElementTree.fromstring(xml)
    return [
        (s.get("type"), s.findtext("hostname"), int(s.findtext("port")), s.findtext("socketType"), s.findtext("username"))
        for s in root.iter(tag)
    ]


class Thunderbird(Base):
    @defer.inlineCallbacks
    def test_well_known_path_offers_every_mail_service_implicit_tls_first(self):
        yield self.start()
        status, headers, body = yield self.get("/.well-known/autoconfig/mail/config-v1.1.xml" + query(ADDRESS))
        self.assertEqual(status, 200)
        self.assertIn("xml", headers["Content-Type"])
        p = self.server.fixed
        host = "mail.example.test"
        self.assertEqual(servers(body, "incomingServer"), [
            ("imap", host, p["imaps"], "SSL", ADDRESS),
            ("imap", host, p["imap"], "STARTTLS", ADDRESS),
            ("pop3", host, p["pop3s"], "SSL", ADDRESS),
            ("pop3", host, p["pop3"], "STARTTLS", ADDRESS),
        ])
        self.assertEqual(servers(body, "outgoingServer"), [
            ("smtp", host, p["smtps"], "SSL", ADDRESS),
            ("smtp", host, p["submission"], "STARTTLS", ADDRESS),
        ])

    @defer.inlineCallbacks
    def test_the_mx_port_is_never_offered_for_sending(self):
        yield self.start()
        _, _, body = yield self.get("/mail/config-v1.1.xml" + query(ADDRESS))
        self.assertNotIn(self.server.fixed["smtp"], [port for _, _, port, _, _ in servers(body, "outgoingServer")])

    @defer.inlineCallbacks
    def test_autoconfig_domain_path_answers_the_same(self):
        yield self.start()
        _, _, well_known = yield self.get("/.well-known/autoconfig/mail/config-v1.1.xml" + query(ADDRESS))
        status, _, body = yield self.get("/mail/config-v1.1.xml" + query(ADDRESS))
        self.assertEqual((status, body), (200, well_known))

    @defer.inlineCallbacks
    def test_only_the_services_configured_are_offered(self):
        yield self.start(services=("imaps", "submission"))
        _, _, body = yield self.get("/mail/config-v1.1.xml" + query(ADDRESS))
        p = self.server.fixed
        self.assertEqual([(t, port, s) for t, _, port, s, _ in servers(body, "incomingServer")], [("imap", p["imaps"], "SSL")])
        self.assertEqual([(t, port, s) for t, _, port, s, _ in servers(body, "outgoingServer")],
                         [("smtp", p["submission"], "STARTTLS")])

    @defer.inlineCallbacks
    def test_autoconfig_hostname_is_the_host_advertised(self):
        yield self.start(services=("imaps", "submission"), extra='\n[autoconfig]\nhostname = "imap.example.test"\n')
        _, _, body = yield self.get("/mail/config-v1.1.xml" + query(ADDRESS))
        hosts = {h for _, h, _, _, _ in servers(body, "incomingServer") + servers(body, "outgoingServer")}
        self.assertEqual(hosts, {"imap.example.test"})

    @defer.inlineCallbacks
    def test_the_domain_of_the_address_is_the_provider(self):
        yield self.start()
        _, _, body = yield self.get("/mail/config-v1.1.xml" + query("bob@EXAMPLE.org"))
        root = ElementTree.fromstring(body)
        self.assertEqual(root.get("version"), "1.1")
        self.assertEqual([d.text for d in root.iter("domain")], ["example.org"])

    @defer.inlineCallbacks
    def test_without_an_address_every_local_domain_and_a_placeholder_login(self):
        yield self.start()
        _, _, body = yield self.get("/mail/config-v1.1.xml")
        root = ElementTree.fromstring(body)
        self.assertEqual([d.text for d in root.iter("domain")], ["example.test", "example.org"])
        self.assertEqual({u for *_, u in servers(body, "incomingServer")}, {"%EMAILADDRESS%"})

    @defer.inlineCallbacks
    def test_an_address_of_another_domain_is_404(self):
        yield self.start()
        status, _, _ = yield self.get("/mail/config-v1.1.xml" + query("eve@elsewhere.test"))
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_a_bad_address_is_400(self):
        yield self.start()
        status, _, body = yield self.get("/mail/config-v1.1.xml" + query("not an address"))
        self.assertEqual(status, 400)
        self.assertNotIn(b"Traceback", body)

    @defer.inlineCallbacks
    def test_autoconfig_enabled_false_serves_nothing(self):
        yield self.start(extra="\n[autoconfig]\nenabled = false\n")
        status, _, _ = yield self.get("/mail/config-v1.1.xml" + query(ADDRESS))
        self.assertEqual(status, 404)


def protocols(xml):
    """[(Type, Server, Port, Encryption, LoginName)] of an Autodiscover response."""
    root = ElementTree.fromstring(xml)
    o = "{%s}" % AUTODISCOVER_OUTLOOK
    return [
        (p.findtext(o + "Type"), p.findtext(o + "Server"), int(p.findtext(o + "Port")), p.findtext(o + "Encryption"),
         p.findtext(o + "LoginName"))
        for p in root.iter(o + "Protocol")
    ]


class MicrosoftAutodiscover(Base):
    @defer.inlineCallbacks
    def test_post_answers_the_settings_for_the_address(self):
        yield self.start()
        status, headers, body = yield self.get("/autodiscover/autodiscover.xml", AUTODISCOVER_REQUEST % ADDRESS.encode())
        self.assertEqual(status, 200)
        self.assertIn("xml", headers["Content-Type"])
        p, host = self.server.fixed, "mail.example.test"
        self.assertEqual(protocols(body), [
            ("IMAP", host, p["imaps"], "SSL", ADDRESS),
            ("IMAP", host, p["imap"], "TLS", ADDRESS),
            ("POP3", host, p["pop3s"], "SSL", ADDRESS),
            ("POP3", host, p["pop3"], "TLS", ADDRESS),
            ("SMTP", host, p["smtps"], "SSL", ADDRESS),
            ("SMTP", host, p["submission"], "TLS", ADDRESS),
        ])
        root = ElementTree.fromstring(body)
        self.assertEqual(root.tag, "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}Autodiscover")
        self.assertEqual(root.findtext(f".//{{{AUTODISCOVER_OUTLOOK}}}Action"), "settings")

    @defer.inlineCallbacks
    def test_outlooks_capitalised_path_answers_too(self):
        yield self.start(services=("imaps", "submission"))
        status, _, body = yield self.get("/Autodiscover/Autodiscover.xml", AUTODISCOVER_REQUEST % ADDRESS.encode())
        self.assertEqual(status, 200)
        self.assertEqual([t for t, *_ in protocols(body)], ["IMAP", "SMTP"])

    @defer.inlineCallbacks
    def test_bad_xml_is_400_without_a_traceback(self):
        yield self.start()
        status, _, body = yield self.get("/autodiscover/autodiscover.xml", b"<Autodiscover><Request>")
        self.assertEqual(status, 400)
        self.assertNotIn(b"Traceback", body)

    @defer.inlineCallbacks
    def test_entities_are_refused_not_expanded(self):
        yield self.start()
        bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                b'<Autodiscover><Request><EMailAddress>&b;</EMailAddress></Request></Autodiscover>')
        status, _, body = yield self.get("/autodiscover/autodiscover.xml", bomb)
        self.assertEqual(status, 400)
        self.assertIn(b"DTD", body)

    @defer.inlineCallbacks
    def test_a_request_without_an_address_is_400(self):
        yield self.start()
        status, _, _ = yield self.get("/autodiscover/autodiscover.xml", AUTODISCOVER_REQUEST % b"")
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_another_domain_is_404(self):
        yield self.start()
        status, _, _ = yield self.get("/autodiscover/autodiscover.xml", AUTODISCOVER_REQUEST % b"eve@elsewhere.test")
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_get_is_405(self):
        yield self.start()
        status, headers, _ = yield self.get("/autodiscover/autodiscover.xml")
        self.assertEqual((status, headers["Allow"]), (405, "POST"))


class AppleProfile(Base):
    @defer.inlineCallbacks
    def test_profile_has_one_mail_payload_with_the_preferred_services(self):
        yield self.start()
        status, headers, body = yield self.get("/apple/mobileconfig" + query(ADDRESS))
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "application/x-apple-aspen-config")
        self.assertIn(".mobileconfig", headers["Content-Disposition"])
        profile = plistlib.loads(body)
        self.assertEqual(profile["PayloadType"], "Configuration")
        (mail,) = profile["PayloadContent"]
        p = self.server.fixed
        self.assertEqual(mail["PayloadType"], "com.apple.mail.managed")
        self.assertEqual(mail["EmailAddress"], ADDRESS)
        self.assertEqual(mail["EmailAccountType"], "EmailTypeIMAP")
        self.assertEqual((mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"]),
                         ("mail.example.test", p["imaps"]))
        self.assertEqual(mail["OutgoingMailServerPortNumber"], p["smtps"])
        self.assertTrue(mail["IncomingMailServerUseSSL"] and mail["OutgoingMailServerUseSSL"])
        self.assertEqual(mail["IncomingMailServerUsername"], ADDRESS)

    @defer.inlineCallbacks
    def test_the_same_address_gets_the_same_uuids(self):
        yield self.start(services=("imaps", "submission"))
        _, _, first = yield self.get("/apple/mobileconfig" + query(ADDRESS))
        _, _, second = yield self.get("/apple/mobileconfig" + query(ADDRESS))
        self.assertEqual(plistlib.loads(first)["PayloadUUID"], plistlib.loads(second)["PayloadUUID"])

    @defer.inlineCallbacks
    def test_pop3_only_is_a_pop_account(self):
        yield self.start(services=("pop3s", "submission"))
        _, _, body = yield self.get("/apple/mobileconfig" + query(ADDRESS))
        (mail,) = plistlib.loads(body)["PayloadContent"]
        self.assertEqual((mail["EmailAccountType"], mail["IncomingMailServerPortNumber"]), ("EmailTypePOP", self.server.fixed["pop3s"]))

    @defer.inlineCallbacks
    def test_no_address_is_400(self):
        yield self.start()
        status, _, _ = yield self.get("/apple/mobileconfig")
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_nothing_to_send_with_is_404(self):
        yield self.start(services=("smtp", "imaps"))
        status, _, _ = yield self.get("/apple/mobileconfig" + query(ADDRESS))
        self.assertEqual(status, 404)


class EndpointPort(unittest.TestCase):
    def test_ports_of_strports_descriptions(self):
        self.assertEqual(endpoint_port("tcp:port=993:interface=127.0.0.1"), 993)
        self.assertEqual(endpoint_port("tcp:587"), 587)
        self.assertEqual(endpoint_port(r"tcp6:port=143:interface=\:\:"), 143)
        self.assertIsNone(endpoint_port("unix:/run/mailplat/imap.sock"))


class AutoconfigTable(unittest.TestCase):
    def load(self, text):
        directory = tempfile.mkdtemp(prefix="mailplat-autoconfig-")
        path = os.path.join(directory, "mailplat.toml")
        with open(path, "w") as f:
            f.write('[server]\nhostname = "mx.example.test"\nstate_dir = "var"\n[listen]\nimaps = "tcp:993"\n' + text)
        return configuration.load(path, cwd=directory)

    def test_hostname_defaults_to_the_server_hostname(self):
        self.assertEqual(self.load("").autoconfig, {"enabled": True, "hostname": "mx.example.test"})

    def test_an_unknown_key_is_named(self):
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load('[autoconfig]\nhostnam = "x.test"\n')
        self.assertIn("autoconfig.hostnam", str(caught.exception))

    def test_a_bad_hostname_is_named(self):
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load('[autoconfig]\nhostname = "a b"\n')
        self.assertIn("autoconfig.hostname", str(caught.exception))
