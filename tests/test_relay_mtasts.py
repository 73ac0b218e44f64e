"""
MTA-STS (RFC 8461) on the relay, over real sockets: a DNS server in the
test publishes `_mta-sts.example.org` and the MX; an HTTPS server (twisted.web,
certificate from a CA made here) serves the policy; the receiving MX speaks
STARTTLS with a certificate from the same CA, which the sender trusts
through `[relay] tls_trust_file`.
"""

import datetime
import json
import os
import tempfile
import shutil

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, reactor, ssl
from twisted.names import dns
from twisted.trial import unittest
from twisted.web import resource, server

from mailplat.delivery.relay.mtasts import Policy, PolicyCache, PolicyError, parse_policy, parse_txt
from mailplat.interfaces import Envelope
from mailplat.store.source import BytesSource
from mailplat.testing.dns import start_dns_server, txt
from tests.helpers import collect_log, free_port
from tests.test_relay_delivery import ALICE, BOB, DomainServer, messages_in, queue_of, relay_config, scripted_server, wait_for

MX = "mx.example.org"
POLICY_HOST = "mta-sts.example.org"
ENFORCE = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.org\r\nmax_age: 86400\r\n"


# --- a certificate authority of the test's own -----------------------------------


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class TestCA:
    """A CA certificate and the server certificates it signs, as PEM files in `directory`."""

    def __init__(self, directory, cn="mailplat test CA"):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = os.path.join(directory, "ca.pem")
        with open(self.path, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, *names):
        """(certificate path, key path, PEM of both) for a server known by `names` (the SANs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = _pem_key(key)
        cert_path = os.path.join(self.directory, f"{names[0]}.crt")
        key_path = os.path.join(self.directory, f"{names[0]}.key")
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        with open(key_path, "wb") as f:
            f.write(key_pem)
        return cert_path, key_path, cert_pem + key_pem


# --- the policy host --------------------------------------------------------------


class PolicyResource(resource.Resource):
    """/.well-known/mta-sts.txt: `policy` (bytes), or `status` with a Location when set."""

    isLeaf = True

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.status = 200
        self.fetches = []

    def render_GET(self, request):
        self.fetches.append((request.getHeader(b"host"), request.path))
        if request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b"not here\n"
        if self.status != 200:
            request.setResponseCode(self.status)
            request.setHeader(b"location", b"https://elsewhere.example.org/.well-known/mta-sts.txt")
            return b""
        request.setHeader(b"content-type", b"text/plain")
        return self.policy


def start_policy_host(testcase, ca, policy):
    """An HTTPS server on a free loopback port; returns (its resource, its port)."""
    _, _, pem = ca.issue(POLICY_HOST)
    context = ssl.PrivateCertificate.loadPEM(pem).options()
    policy_resource = PolicyResource(policy)
    site = server.Site(policy_resource)
    site.displayTracebacks = False
    port = reactor.listenSSL(0, site, context, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return policy_resource, port.getHost().port


def set_txt(dns_server, name, text):
    """Replace the TXT records of `name` (a new policy id)."""
    key = name.encode()
    for authority in dns_server.authorities:
        if key in authority.records:
            authority.records[key] = [r for r in authority.records[key] if not isinstance(r, dns.Record_TXT)] + [txt(text)]


class RelayedMessages:
    """Messages from alice@example.test to bob@example.org through the relay queue of the server `self.a`."""

    def send(self, subject="x", require_tls=False, header=""):
        message = f"From: alice@example.test\nTo: bob@example.org\nSubject: {subject}\n{header}\nbody\n".encode()
        envelope = Envelope("alice@example.test", require_tls=require_tls)
        return queue_of(self.a).enqueue(envelope, ["bob@example.org"], BytesSource(message))

    def recipient(self, queue_id):
        return queue_of(self.a).entries[queue_id].record["recipients"][0]

    @defer.inlineCallbacks
    def wait_deferred(self, queue_id):
        queue = queue_of(self.a)
        yield wait_for(lambda: self.recipient(queue_id)["state"] == "deferred" and not queue.entries[queue_id].busy)
        return self.recipient(queue_id)


class MTASTSCase(RelayedMessages, unittest.TestCase):
    """A (example.test) relays to example.org, whose MX is on loopback with the policy above."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-mtasts-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.ca = TestCA(self.dir)
        self.log = collect_log(self)

    def start_dns(self, policy_id="20260101"):
        records = {
            "example.org": [dns.Record_MX(10, MX.encode())],
            MX: [dns.Record_A("127.0.0.1")],
            POLICY_HOST: [dns.Record_A("127.0.0.1")],
        }
        if policy_id is not None:
            records["_mta-sts.example.org"] = [txt(f"v=STSv1; id={policy_id}")]
        self.dns = start_dns_server(self, records)
        return self.dns

    @defer.inlineCallbacks
    def start_receiver(self, trusted_certificate=True):
        """A mailplat MX for example.org with STARTTLS: a certificate for mx.example.org from the CA, or its self-signed one."""
        extra = ""
        if trusted_certificate:
            cert, key, _ = self.ca.issue(MX)
            extra = f'[tls]\ncertificate = "{cert}"\nkey = "{key}"\n'
        self.b = DomainServer(self, "example.org", listeners=("smtp",), extra=extra)
        yield self.b.start(users=BOB)
        return self.b.port("smtp")

    @defer.inlineCallbacks
    def start_sender(self, mx_port, policy_port, **keys):
        keys.setdefault("retry_first", 3600)
        keys.setdefault("retry_initial", 3600)
        extra = relay_config(
            dns_servers=[self.dns.address], mx_port=mx_port, mta_sts_port=policy_port, tls_trust_file=self.ca.path, **keys
        )
        self.a = DomainServer(self, "example.test", listeners=("submission",), extra=extra)
        yield self.a.start(users=ALICE)
        return queue_of(self.a)


class MTASTSDelivery(MTASTSCase):
    # --- mode=enforce ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_enforce_delivers_over_verified_tls_to_a_matching_mx(self):
        self.start_dns()
        policy, policy_port = start_policy_host(self, self.ca, ENFORCE)
        mx_port = yield self.start_receiver()
        queue = yield self.start_sender(mx_port, policy_port)
        queue_id = yield self.send()
        [data] = yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        self.assertIn(b"with ESMTPS", data)  # RFC 3848: B saw TLS
        self.assertEqual(policy.fetches, [(f"{POLICY_HOST}:{policy_port}".encode(), b"/.well-known/mta-sts.txt")])
        yield wait_for(lambda: queue_id not in queue.entries)

    @defer.inlineCallbacks
    def test_enforce_never_sends_in_clear_to_a_server_without_starttls(self):
        self.start_dns()
        _, policy_port = start_policy_host(self, self.ca, ENFORCE)
        factory, mx_port = scripted_server(self)  # offers no STARTTLS
        yield self.start_sender(mx_port, policy_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(factory.messages, [])
        self.assertFalse([c for c in factory.sessions[0] if c.startswith(b"MAIL")])
        self.assertIn("4.7.5 MTA-STS", recipient["error"])
        self.assertIn("TLS", recipient["error"])

    @defer.inlineCallbacks
    def test_enforce_refuses_a_certificate_the_trust_root_does_not_sign(self):
        self.start_dns()
        _, policy_port = start_policy_host(self, self.ca, ENFORCE)
        mx_port = yield self.start_receiver(trusted_certificate=False)
        yield self.start_sender(mx_port, policy_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(messages_in(self.b, "bob@example.org"), [])
        self.assertIn("4.7.5 MTA-STS", recipient["error"])

    @defer.inlineCallbacks
    def test_enforce_does_not_send_to_an_mx_outside_the_policy(self):
        self.start_dns()
        _, policy_port = start_policy_host(self, self.ca, ENFORCE.replace(b"mx: mx.example.org", b"mx: *.mail.example.org"))
        factory, mx_port = scripted_server(self)
        yield self.start_sender(mx_port, policy_port)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(factory.sessions, [])  # not even a connection
        self.assertIn("4.7.5", recipient["error"])
        self.assertIn("matches its MTA-STS policy", recipient["error"])

    @defer.inlineCallbacks
    def test_enforce_failure_bounces_at_max_age_never_in_clear(self):
        self.start_dns()
        _, policy_port = start_policy_host(self, self.ca, ENFORCE)
        factory, mx_port = scripted_server(self)
        yield self.start_sender(mx_port, policy_port, max_age=2, retry_first=1, retry_initial=1)
        yield self.send(subject="secret")
        [dsn] = yield wait_for(lambda: messages_in(self.a, "alice@example.test"), timeout=8)
        self.assertIn(b"Action: failed", dsn)
        self.assertIn(b"MTA-STS", dsn)
        self.assertEqual(factory.messages, [])

    # --- mode=testing ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_testing_mode_delivers_and_logs_what_enforce_would_refuse(self):
        self.start_dns()
        policy = ENFORCE.replace(b"enforce", b"testing").replace(b"mx.example.org", b"other.example.org")
        _, policy_port = start_policy_host(self, self.ca, policy)
        factory, mx_port = scripted_server(self)  # no STARTTLS, not in the policy
        yield self.start_sender(mx_port, policy_port)
        yield self.send()
        yield wait_for(lambda: factory.messages)
        yield wait_for(lambda: [t for t in self.log if "offers no STARTTLS" in t])
        self.assertTrue([t for t in self.log if "MTA-STS testing: example.org: MX mx.example.org does not match" in t])

    # --- the cache -----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_the_policy_is_fetched_once_per_id(self):
        self.start_dns(policy_id="one")
        policy, policy_port = start_policy_host(self, self.ca, ENFORCE)
        mx_port = yield self.start_receiver()
        queue = yield self.start_sender(mx_port, policy_port)
        for i in range(2):
            queue_id = yield self.send(subject=f"message {i}")
            yield wait_for(lambda: queue_id not in queue.entries)
        self.assertEqual(len(policy.fetches), 1)
        set_txt(self.dns, "_mta-sts.example.org", "v=STSv1; id=two")
        queue_id = yield self.send(subject="after the id changed")
        yield wait_for(lambda: queue_id not in queue.entries)
        self.assertEqual(len(policy.fetches), 2)
        self.assertEqual(len(messages_in(self.b, "bob@example.org")), 3)
        with open(os.path.join(self.a.state, "mta-sts.json")) as f:
            saved = json.load(f)["policies"]["example.org"]
        self.assertEqual((saved["id"], saved["mode"], saved["mx"]), ("two", "enforce", ["mx.example.org"]))

    @defer.inlineCallbacks
    def test_a_cached_policy_applies_when_the_policy_host_is_down(self):
        # A policy persisted by an earlier run (the restart case), id "old";
        # DNS now says "new", and nobody answers on the policy port.
        self.start_dns(policy_id="new")
        factory, mx_port = scripted_server(self)
        self.a = None
        state = os.path.join(self.dir, "cache")
        cache = PolicyCache(os.path.join(state, "mta-sts.json"))
        cache.put("example.org", "old", parse_policy(ENFORCE))
        extra = relay_config(dns_servers=[self.dns.address], mx_port=mx_port, mta_sts_port=free_port(),
                             tls_trust_file=self.ca.path, retry_first=3600)
        self.a = DomainServer(self, "example.test", listeners=("submission",), extra=extra)
        os.makedirs(self.a.state)
        shutil.copy(cache.path, os.path.join(self.a.state, "mta-sts.json"))
        yield self.a.start(users=ALICE)
        queue_id = yield self.send()
        recipient = yield self.wait_deferred(queue_id)
        self.assertEqual(factory.messages, [])
        self.assertIn("4.7.5 MTA-STS", recipient["error"])
        self.assertTrue([t for t in self.log if "keeping the cached one" in t])

    # --- no usable policy: deliver as before (RFC 8461 5) -------------------------------

    @defer.inlineCallbacks
    def test_an_unreachable_policy_host_without_a_cache_changes_nothing(self):
        self.start_dns()
        mx_port = yield self.start_receiver(trusted_certificate=False)
        queue = yield self.start_sender(mx_port, free_port())
        queue_id = yield self.send()
        yield wait_for(lambda: messages_in(self.b, "bob@example.org"))
        yield wait_for(lambda: queue_id not in queue.entries)
        self.assertTrue([t for t in self.log if "delivering without MTA-STS" in t])

    @defer.inlineCallbacks
    def test_a_malformed_policy_is_ignored(self):
        self.start_dns()
        policy, policy_port = start_policy_host(self, self.ca, b"<html>this is not a policy</html>\n")
        factory, mx_port = scripted_server(self)
        yield self.start_sender(mx_port, policy_port)
        yield self.send()
        yield wait_for(lambda: factory.messages)
        self.assertEqual(len(policy.fetches), 1)
        self.assertTrue([t for t in self.log if "no usable policy" in t and "not a key: value line" in t])

    @defer.inlineCallbacks
    def test_a_redirect_is_not_followed(self):
        self.start_dns()
        policy, policy_port = start_policy_host(self, self.ca, ENFORCE)
        policy.status = 301
        factory, mx_port = scripted_server(self)
        yield self.start_sender(mx_port, policy_port)
        yield self.send()
        yield wait_for(lambda: factory.messages)  # no policy: sent as before
        self.assertEqual(len(policy.fetches), 1)
        self.assertTrue([t for t in self.log if "HTTP status 301" in t])

    @defer.inlineCallbacks
    def test_a_policy_larger_than_64_kb_is_ignored(self):
        self.start_dns()
        padding = b"".join(b"x%d: %s\r\n" % (i, b"y" * 100) for i in range(700))
        policy, policy_port = start_policy_host(self, self.ca, ENFORCE + padding)
        factory, mx_port = scripted_server(self)
        yield self.start_sender(mx_port, policy_port)
        yield self.send()
        yield wait_for(lambda: factory.messages)
        self.assertTrue([t for t in self.log if "larger than 65536" in t])

    @defer.inlineCallbacks
    def test_a_policy_host_with_an_untrusted_certificate_is_no_policy(self):
        self.start_dns()
        other_ca = TestCA(tempfile.mkdtemp(dir=self.dir), cn="someone else")
        policy, policy_port = start_policy_host(self, other_ca, ENFORCE)
        factory, mx_port = scripted_server(self)
        yield self.start_sender(mx_port, policy_port)
        yield self.send()
        yield wait_for(lambda: factory.messages)
        self.assertEqual(policy.fetches, [])
        self.assertTrue([t for t in self.log if "delivering without MTA-STS" in t])

    @defer.inlineCallbacks
    def test_messages_sent_together_share_one_fetch(self):
        self.start_dns()
        policy, policy_port = start_policy_host(self, self.ca, ENFORCE)
        mx_port = yield self.start_receiver()
        queue = yield self.start_sender(mx_port, policy_port)
        ids = yield defer.gatherResults([self.send(subject=f"together {i}") for i in range(3)])
        yield wait_for(lambda: not any(i in queue.entries for i in ids))
        self.assertEqual(len(policy.fetches), 1)
        self.assertEqual(len(messages_in(self.b, "bob@example.org")), 3)

    @defer.inlineCallbacks
    def test_no_txt_record_means_no_fetch(self):
        self.start_dns(policy_id=None)
        policy, policy_port = start_policy_host(self, self.ca, ENFORCE)
        factory, mx_port = scripted_server(self)
        yield self.start_sender(mx_port, policy_port)
        yield self.send()
        yield wait_for(lambda: factory.messages)
        self.assertEqual(policy.fetches, [])


class PolicyFile(unittest.TestCase):
    """RFC 8461 3.2: the policy file's grammar."""

    def test_enforce_with_several_mx(self):
        policy = parse_policy(b"version: STSv1\nmode: enforce\nmx: mx1.example.org\nmx: *.backup.example.org\nmax_age: 604800\n")
        self.assertEqual((policy.mode, policy.mx, policy.max_age), ("enforce", ["mx1.example.org", "*.backup.example.org"], 604800))

    def test_unknown_keys_are_ignored(self):
        self.assertEqual(parse_policy(ENFORCE + b"future: thing\r\n").mode, "enforce")

    def test_mode_none_needs_no_mx(self):
        self.assertEqual(parse_policy(b"version: STSv1\r\nmode: none\r\nmax_age: 60\r\n").mode, "none")

    def test_bad_files_raise_policy_error(self):
        for bad in (
            b"",
            b"version: STSv2\r\nmode: enforce\r\nmx: a.example\r\nmax_age: 1\r\n",
            b"version: STSv1\r\nmode: strict\r\nmx: a.example\r\nmax_age: 1\r\n",
            b"version: STSv1\r\nmode: enforce\r\nmax_age: 1\r\n",
            b"version: STSv1\r\nmode: enforce\r\nmx: a.example\r\nmax_age: forever\r\n",
            b"version: STSv1\r\nmode: enforce\r\nmx: a.example\r\nmax_age: 99999999999\r\n",
            b"version: STSv1\r\nmode: enforce\r\nmx: a b\r\nmax_age: 1\r\n",
            b"version: STSv1\r\nmode: enforce\r\nmx: \xff\r\nmax_age: 1\r\n",
        ):
            self.assertRaises(PolicyError, parse_policy, bad)

    def test_wildcards_stand_for_one_leftmost_label(self):
        policy = Policy("enforce", ["*.example.org", "mx.other.org."], 60)
        self.assertTrue(policy.matches("mx1.example.org"))
        self.assertTrue(policy.matches("MX1.Example.Org."))
        self.assertTrue(policy.matches("mx.other.org"))
        self.assertFalse(policy.matches("example.org"))
        self.assertFalse(policy.matches("a.b.example.org"))
        self.assertFalse(policy.matches("mx1.example.org.evil"))


class PolicyRecord(unittest.TestCase):
    """RFC 8461 3.1: the `_mta-sts` TXT record."""

    def test_the_id_of_the_one_sts_record(self):
        self.assertEqual(parse_txt([[b"v=STSv1; id=20260101T000000"], [b"some other text"]]), "20260101T000000")

    def test_strings_are_joined(self):
        self.assertEqual(parse_txt([[b"v=STSv1; ", b"id=abc"]]), "abc")

    def test_two_sts_records_mean_no_policy(self):
        self.assertIsNone(parse_txt([[b"v=STSv1; id=a"], [b"v=STSv1; id=b"]]))

    def test_a_bad_id_means_no_policy(self):
        self.assertIsNone(parse_txt([[b"v=STSv1; id=not-alnum!"]]))
        self.assertIsNone(parse_txt([[b"v=STSv1;"]]))


class Cache(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-mtasts-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "mta-sts.json")

    def test_a_policy_outlives_a_restart(self):
        PolicyCache(self.path).put("example.org", "abc", parse_policy(ENFORCE))
        entry = PolicyCache(self.path).get("example.org")
        self.assertEqual((entry.id, entry.policy.mode, entry.policy.mx), ("abc", "enforce", ["mx.example.org"]))
        self.assertFalse(os.path.exists(self.path + ".tmp"))

    def test_an_expired_policy_is_not_used(self):
        now = [1000.0]
        cache = PolicyCache(self.path, clock=lambda: now[0])
        cache.put("example.org", "abc", parse_policy(ENFORCE))
        now[0] += 86401
        self.assertIsNone(cache.get("example.org"))

    def test_a_damaged_cache_file_is_an_empty_cache(self):
        with open(self.path, "w") as f:
            f.write("{not json")
        self.assertIsNone(PolicyCache(self.path).get("example.org"))


class TrustFileConfig(unittest.TestCase):
    """`[relay] tls_trust_file` and `mta_sts_port`: a bad value names the file and the key."""

    BASE = (
        '[server]\nhostname = "mail.example.test"\nstate_dir = "var"\n[domains]\nlocal = ["example.test"]\n'
        '[listen]\nsubmission = "tcp:port=0:interface=127.0.0.1"\n[realm]\nbackend = "passwd-file"\npath = "users"\n'
    )

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-mtasts-config-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "mailplat.toml")

    def error(self, relay):
        from mailplat import config as configuration
        from mailplat.config import ConfigError
        from mailplat.service import Backends

        with open(self.path, "w") as f:
            f.write(self.BASE + "[relay]\n" + relay)
        with self.assertRaises(ConfigError) as caught:
            Backends(configuration.load(self.path, cwd=self.dir))
        self.assertTrue(str(caught.exception).startswith(self.path + ": "), str(caught.exception))
        return str(caught.exception)

    def test_a_missing_trust_file_is_named(self):
        text = self.error('tls_trust_file = "nowhere.pem"\n')
        self.assertIn("relay.tls_trust_file", text)
        self.assertIn(os.path.join(self.dir, "nowhere.pem"), text)

    def test_a_trust_file_without_certificates_is_named(self):
        with open(os.path.join(self.dir, "ca.pem"), "w") as f:
            f.write("not a certificate\n")
        self.assertIn("relay.tls_trust_file", self.error('tls_trust_file = "ca.pem"\n'))

    def test_mta_sts_port_must_be_a_port(self):
        self.assertIn("relay.mta_sts_port", self.error("mta_sts_port = 70000\n"))
