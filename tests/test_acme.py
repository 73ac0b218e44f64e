"""
Certificates by ACME ([tls] acme) against Pebble, Let's Encrypt's test CA,
on loopback: Pebble validates by connecting to the names it is asked for,
which the test's name server points at 127.0.0.1, on the ports its config
gives (the server's imaps listener for tls-alpn-01, its [listen] http for
http-01). A new TLS client then verifies the issued certificate against
Pebble's root, fetched from Pebble's management port.

Pebble comes from Debian's package (.ci/run installs it). Without it these
tests skip, or fail when MAILPLAT_TEST_PEBBLE_REQUIRED=1 (CI).
"""

import datetime
import hashlib
import imaplib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.names import dns
from twisted.trial import unittest

from mailplat import config as configuration
from mailplat.testing.dns import start_dns_server
from tests.helpers import MailServer, client_tls, collect_log, free_port, in_thread

DOMAIN = "mail.example.test"
OTHER_DOMAIN = "imap.example.test"
PEBBLE = shutil.which("pebble") or ("/usr/bin/pebble" if os.path.exists("/usr/bin/pebble") else None)
REQUIRED = os.environ.get("MAILPLAT_TEST_PEBBLE_REQUIRED") == "1"


def need_pebble(testcase):
    if PEBBLE is None:
        if REQUIRED:
            testcase.fail("pebble is not installed (MAILPLAT_TEST_PEBBLE_REQUIRED=1): apt-get install pebble")
        raise unittest.SkipTest("pebble is not installed (apt-get install pebble)")


def _write_pem(path, data):
    with open(path, "wb") as f:
        f.write(data)


def make_test_ca(directory):
    """A CA and a certificate for 127.0.0.1 signed by it: Pebble's own HTTPS."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailplat test CA for pebble")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem")}
    _write_pem(paths["ca.pem"], ca.public_bytes(serialization.Encoding.PEM))
    _write_pem(paths["cert.pem"], leaf.public_bytes(serialization.Encoding.PEM))
    _write_pem(paths["key.pem"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


class Pebble:
    """One Pebble process for a test, on free loopback ports, stopped at cleanup."""

    def __init__(self, testcase, dns_address, tls_port, http_port, validity=None):
        self.dir = tempfile.mkdtemp(prefix="mailplat-pebble-")
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.certs = make_test_ca(self.dir)
        self.port, self.management = free_port(), free_port()
        settings = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": self.certs["cert.pem"],
            "privateKey": self.certs["key.pem"],
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity is not None:
            settings["certificateValidityPeriod"] = validity  # seconds
        path = os.path.join(self.dir, "pebble-config.json")
        with open(path, "w") as f:
            json.dump({"pebble": settings}, f)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        self.log_path = os.path.join(self.dir, "pebble.log")
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [PEBBLE, "-config", path, "-dnsserver", dns_address], cwd=self.dir, env=env,
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        testcase.addCleanup(self.stop)
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self.ca_bundle = self.certs["ca.pem"]

    def stop(self):
        if self.log.closed:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    @defer.inlineCallbacks
    def wait_ready(self, timeout=30):
        """Until the ACME directory answers (Pebble prints its address first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"pebble exited ({self.process.returncode}):\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                yield deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"pebble did not start within {timeout} s:\n{self.output()}")

    def root(self):
        """Pebble's root certificate (PEM; it makes a new one at every start)."""
        context = ssl.create_default_context(cafile=self.ca_bundle)
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}/roots/0", context=context, timeout=10) as r:
            return r.read().decode("ascii")


class AcmeServer(MailServer):
    """A MailServer whose listeners named in `fixed` get the given ports (Pebble must know them first)."""

    def __init__(self, testcase, fixed, **kwargs):
        super().__init__(testcase, **kwargs)
        self.fixed = fixed

    def config_text(self):
        text = super().config_text()
        for name, port in self.fixed.items():
            text = text.replace(f'{name} = "tcp:port=0:', f'{name} = "tcp:port={port}:')
        return text


def peer_certificate(port, cadata=None, hostname=DOMAIN):
    """The certificate a new TLS client sees on `port` (verified against `cadata` when given)."""
    if cadata is None:
        context = client_tls()
    else:
        context = ssl.create_default_context(cadata=cadata)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as s:
            greeting = s.recv(100)
            assert greeting.startswith(b"* OK"), greeting
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True))


def names(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def acme_table(pebble=None, **keys):
    values = {"email": "postmaster@example.test", "domains": [DOMAIN]}
    if pebble is not None:
        values.update(directory=pebble.directory, ca_bundle=pebble.ca_bundle)
    values.update(keys)
    return "\n[tls]\nacme = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + " }\n"


class AcmeIssuanceMixin:
    """Shared set-up: a name server for DOMAIN, Pebble, and a server whose ports Pebble dials."""

    challenge = "tls-alpn-01"
    validity = None  # Pebble's default (years)
    renew_days = 30

    @defer.inlineCallbacks
    def start(self, pebble_ports=None, **acme_keys):
        need_pebble(self)
        self.log = collect_log(self)
        records = {name: [dns.Record_A("127.0.0.1", ttl=60)] for name in (DOMAIN, OTHER_DOMAIN)}
        self.dns = start_dns_server(self, records, zones=("example.test",))
        self.imaps_port, self.http_port = free_port(), free_port()
        tls_port, http_port = pebble_ports or (self.imaps_port, self.http_port)
        self.pebble = Pebble(self, self.dns.address, tls_port=tls_port, http_port=http_port, validity=self.validity)
        yield self.pebble.wait_ready()
        listeners = ("smtp", "imaps") + (("http",) if self.challenge == "http-01" else ())
        fixed = {"imaps": self.imaps_port, "http": self.http_port}
        extra = acme_table(self.pebble, challenge=self.challenge, renew_days=self.renew_days, **acme_keys)
        extra += f'\n[dns]\nservers = ["{self.dns.address}"]\ntimeout = 5\n'
        self.server = AcmeServer(self, fixed, listeners=listeners, extra=extra)
        yield self.server.start()
        self.acme = self.server.service.acme
        self.state = self.server.state

    def acme_lines(self, what):
        return [t for t in self.log if t.startswith(what + " ")]


class TLSALPNIssuanceTests(AcmeIssuanceMixin, unittest.TestCase):
    """tls-alpn-01 (RFC 8737) answered on the imaps listener."""

    timeout = 180

    @defer.inlineCallbacks
    def test_issues_and_new_client_sees_it_without_restart(self):
        yield self.start()
        served_before = self.server.service.certificates.current.source.cert_path
        self.assertTrue((yield self.acme.check()), self.acme.last_error or self.pebble.output())
        root = yield in_thread(self.pebble.root)
        cert = yield in_thread(peer_certificate, self.imaps_port, root)  # verified against Pebble's root
        self.assertEqual(names(cert), [DOMAIN])
        self.assertNotEqual(cert.issuer, cert.subject)
        self.assertEqual(self.server.service.certificates.current.source.cert_path, self.acme.settings["certificate"])
        self.assertNotEqual(served_before, self.acme.settings["certificate"])
        # Pebble really connected to our listener with ALPN acme-tls/1.
        answered = self.acme_lines("acme-challenge-answered")
        self.assertTrue(answered, self.log)
        self.assertIn(f"challenge=tls-alpn-01 domain={DOMAIN}", answered[0])
        self.assertTrue(self.acme_lines("acme-issued"), self.log)

    @defer.inlineCallbacks
    def test_reload_with_a_new_domain_orders_a_certificate_naming_it(self):
        yield self.start()
        yield self.acme.check()
        with open(self.server.config_path) as f:
            text = f.read()
        old = f'domains = ["{DOMAIN}"]'
        self.assertIn(old, text)
        with open(self.server.config_path, "w") as f:
            f.write(text.replace(old, f'domains = ["{DOMAIN}", "{OTHER_DOMAIN}"]'))
        self.server.service.reload()  # what SIGHUP calls
        self.assertTrue((yield self.acme.check()), self.acme.last_error)  # the order the reload started
        cert = yield in_thread(peer_certificate, self.imaps_port, None, OTHER_DOMAIN)
        self.assertEqual(sorted(names(cert)), sorted([DOMAIN, OTHER_DOMAIN]))
        self.assertFalse([t for t in self.log if t.startswith("reload-needs-restart ")])

    @defer.inlineCallbacks
    def test_keys_are_private(self):
        yield self.start()
        yield self.acme.check()
        for path in (self.acme.settings["key"], self.acme.settings["account_key"]):
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600, path)

    @defer.inlineCallbacks
    def test_current_certificate_is_not_renewed(self):
        yield self.start()
        yield self.acme.check()
        first = yield in_thread(peer_certificate, self.imaps_port)
        self.assertFalse((yield self.acme.check()))
        again = yield in_thread(peer_certificate, self.imaps_port)
        self.assertEqual(first.serial_number, again.serial_number)

    @defer.inlineCallbacks
    def test_failed_validation_keeps_self_signed_and_logs_why(self):
        # Pebble dials a port nobody listens on: the validation fails.
        yield self.start(pebble_ports=(free_port(), free_port()))
        self.assertFalse((yield self.acme.check()))
        failed = self.acme_lines("acme-failed")
        self.assertTrue(failed, self.log)
        self.assertIn("key=tls.acme.challenge", failed[-1])
        self.assertIn("tls-alpn-01 validation failed", failed[-1])
        cert = yield in_thread(peer_certificate, self.imaps_port)
        self.assertEqual(cert.issuer, cert.subject)  # still the self-signed one
        self.assertFalse(os.path.exists(self.acme.settings["certificate"]))


class RenewalTests(AcmeIssuanceMixin, unittest.TestCase):
    """Short-lived certificates (a day) with renew_days = 30: every check renews."""

    timeout = 180
    validity = 86400

    @defer.inlineCallbacks
    def test_renewal_new_serial_for_new_clients_old_connection_keeps_working(self):
        yield self.start()
        self.assertTrue((yield self.acme.check()), self.acme.last_error)
        first = yield in_thread(peer_certificate, self.imaps_port)

        def open_session():
            session = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=client_tls(), timeout=10)
            return session, x509.load_der_x509_certificate(session.sock.getpeercert(binary_form=True))

        old, old_cert = yield in_thread(open_session)
        self.addCleanup(lambda: old.shutdown())
        self.assertEqual(old_cert.serial_number, first.serial_number)
        self.assertTrue((yield self.acme.check()), self.acme.last_error)
        renewed = yield in_thread(peer_certificate, self.imaps_port)
        self.assertNotEqual(renewed.serial_number, first.serial_number)
        self.assertEqual(names(renewed), [DOMAIN])
        # The connection opened before the renewal goes on, on its old certificate.
        typ, _ = yield in_thread(old.noop)
        self.assertEqual(typ, "OK")
        self.assertEqual(x509.load_der_x509_certificate(old.sock.getpeercert(binary_form=True)).serial_number, first.serial_number)

    @defer.inlineCallbacks
    def test_failed_renewal_keeps_serving_the_issued_certificate(self):
        yield self.start()
        self.assertTrue((yield self.acme.check()), self.acme.last_error)
        issued = yield in_thread(peer_certificate, self.imaps_port)
        self.pebble.stop()  # the CA goes away
        self.assertFalse((yield self.acme.check()))
        failed = self.acme_lines("acme-failed")
        self.assertTrue(failed, self.log)
        self.assertIn("key=tls.acme.directory", failed[-1])
        self.assertIn(f"serving={self.acme.settings['certificate']}", failed[-1])
        still = yield in_thread(peer_certificate, self.imaps_port)
        self.assertEqual(still.serial_number, issued.serial_number)

    @defer.inlineCallbacks
    def test_renews_on_its_own_schedule(self):
        from mailplat.acme import AcmeService

        self.patch(AcmeService, "interval", 0.5)  # the periodic check (hourly in service)
        yield self.start()
        yield self.acme.check()  # the first order, started by the service itself
        first = yield in_thread(peer_certificate, self.imaps_port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = self.server.service.certificates.current
            if current.leaf.serial_number != first.serial_number:
                break
            yield deferLater(reactor, 0.2, lambda: None)
        seen = yield in_thread(peer_certificate, self.imaps_port)
        self.assertNotEqual(seen.serial_number, first.serial_number)


class HTTP01IssuanceTests(AcmeIssuanceMixin, unittest.TestCase):
    """http-01 answered on [listen] http."""

    timeout = 180
    challenge = "http-01"

    @defer.inlineCallbacks
    def test_issues_with_http01(self):
        yield self.start()
        self.assertTrue((yield self.acme.check()), self.acme.last_error or self.pebble.output())
        root = yield in_thread(self.pebble.root)
        cert = yield in_thread(peer_certificate, self.imaps_port, root)
        self.assertEqual(names(cert), [DOMAIN])
        self.assertEqual(self.acme.http.tokens, {})  # answered and withdrawn
        answered = self.acme_lines("acme-challenge-answered")
        self.assertTrue(answered, self.log)
        self.assertIn(f"challenge=http-01 domain={DOMAIN}", answered[0])


class AcmeFailureTests(unittest.TestCase):
    """No CA to talk to: the server starts, serves its own certificate, and says why."""

    timeout = 60

    @defer.inlineCallbacks
    def test_unreachable_directory_keeps_self_signed_and_names_the_key(self):
        log = collect_log(self)
        closed = free_port()
        server = MailServer(self, listeners=("smtp", "imaps"), extra=acme_table(directory=f"https://127.0.0.1:{closed}/dir"))
        yield server.start()
        self.assertFalse((yield server.service.acme.check()))
        failed = [t for t in log if t.startswith("acme-failed ")]
        self.assertTrue(failed, log)
        self.assertIn("key=tls.acme.directory", failed[-1])
        self.assertIn(f"127.0.0.1:{closed}", failed[-1])
        cert = yield in_thread(peer_certificate, server.port("imaps"))
        self.assertEqual(cert.issuer, cert.subject)
        self.assertIn("tls.acme.directory", server.service.acme.last_error)


class AcmeConfigTests(unittest.TestCase):
    """[tls] acme is checked at start-up, each error naming its key."""

    def load(self, acme, listen='imaps = "tcp:port=1993"'):
        d = tempfile.mkdtemp(prefix="mailplat-acme-config-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "mailplat.toml")
        with open(path, "w") as f:
            f.write(f'[server]\nhostname = "{DOMAIN}"\nstate_dir = "var"\n[listen]\n{listen}\n[tls]\nacme = {acme}\n')
        return configuration.load(path, cwd=d)

    def error(self, acme, **kwargs):
        return str(self.assertRaises(configuration.ConfigError, self.load, acme, **kwargs))

    def test_missing_email(self):
        self.assertIn("tls.acme.email: is required", self.error('{ directory = "https://ca.test/dir", domains = ["a.test"] }'))

    def test_missing_domains(self):
        self.assertIn("tls.acme.domains: is required", self.error('{ email = "a@b.test", directory = "https://ca.test/dir" }'))

    def test_empty_domains(self):
        self.assertIn("tls.acme.domains", self.error('{ email = "a@b.test", directory = "https://ca.test/dir", domains = [] }'))

    def test_wildcard_refused(self):
        text = self.error('{ email = "a@b.test", directory = "https://ca.test/dir", domains = ["*.a.test"] }')
        self.assertIn("tls.acme.domains: *.a.test: a wildcard needs the dns-01 challenge", text)

    def test_missing_directory(self):
        self.assertIn("tls.acme.directory: is required", self.error('{ email = "a@b.test", domains = ["a.test"] }'))

    def test_directory_must_be_https(self):
        self.assertIn("tls.acme.directory: must be an https:// URL",
                      self.error('{ email = "a@b.test", directory = "http://ca.test/dir", domains = ["a.test"] }'))

    def test_unknown_key_suggests(self):
        text = self.error('{ email = "a@b.test", directory = "https://ca.test/dir", domains = ["a.test"], renew_dayz = 3 }')
        self.assertIn("tls.acme.renew_dayz: unknown key (did you mean renew_days?)", text)

    def test_tls_alpn_needs_an_implicit_tls_listener(self):
        text = self.error('{ email = "a@b.test", directory = "https://ca.test/dir", domains = ["a.test"] }',
                          listen='smtp = "tcp:port=2525"')
        self.assertIn("tls.acme.challenge: tls-alpn-01 is answered on an implicit-TLS listener", text)

    def test_http01_needs_listen_http(self):
        text = self.error('{ email = "a@b.test", directory = "https://ca.test/dir", domains = ["a.test"], challenge = "http-01" }')
        self.assertIn("tls.acme.challenge: http-01 is answered on [listen] http", text)

    def test_missing_ca_bundle(self):
        text = self.error('{ email = "a@b.test", directory = "https://ca.test/dir", domains = ["a.test"], ca_bundle = "nope.pem" }')
        self.assertIn("tls.acme.ca_bundle: file not found", text)

    def test_defaults(self):
        acme = self.load('{ email = "a@b.test", directory = "https://ca.test/dir", domains = ["A.test"] }').acme
        self.assertEqual(acme["domains"], ["a.test"])
        self.assertEqual((acme["challenge"], acme["renew_days"]), ("tls-alpn-01", 30))
        self.assertTrue(acme["certificate"].endswith(os.path.join("var", "acme", "cert.pem")))


class TLSALPNHookTests(unittest.TestCase):
    """RFC 8737 on a listener, without a CA: who gets which certificate."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("smtp", "imaps"))
        yield self.server.start()
        self.port = self.server.port("imaps")

    def handshake(self, alpn, hostname=DOMAIN):
        context = client_tls()
        context.set_alpn_protocols(alpn)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=hostname) as s:
                return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)), s.selected_alpn_protocol()

    @defer.inlineCallbacks
    def test_validator_gets_the_challenge_certificate_others_the_served_one(self):
        from mailplat.acme import ACME_IDENTIFIER, challenge_certificate

        self.server.service.certificates.challenges[DOMAIN] = challenge_certificate(DOMAIN, "token.thumbprint")
        cert, protocol = yield in_thread(self.handshake, ["acme-tls/1"])
        self.assertEqual(protocol, "acme-tls/1")
        extension = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
        self.assertTrue(extension.critical)
        self.assertEqual(extension.value.value, b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest())
        self.assertEqual(names(cert), [DOMAIN])
        served, protocol = yield in_thread(self.handshake, ["imap"])
        self.assertIsNone(protocol)
        self.assertEqual(served.serial_number, self.server.service.certificates.current.leaf.serial_number)

    @defer.inlineCallbacks
    def test_validator_for_a_name_without_challenge_is_refused(self):
        with self.assertRaises((ssl.SSLError, OSError)):
            yield in_thread(self.handshake, ["acme-tls/1"], "other.example.test")
        # and an ordinary client is served as before
        cert, _ = yield in_thread(self.handshake, [])
        self.assertEqual(cert.serial_number, self.server.service.certificates.current.leaf.serial_number)
