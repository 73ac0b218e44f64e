"""
DKIM signing on submission (RFC 6376, RFC 8463): keys made with
`mailplat dkim keygen`, mail submitted over real SMTP (587 with STARTTLS and
AUTH, 465 with implicit TLS), read back from the recipient's maildir and
verified with dkimpy and with OpenDKIM (`opendkim -t`, Debian's opendkim
package, keys from a TestPublicKeys file so no DNS is needed). Mail that
arrives on the MX port, or whose From domain has no key, is not signed.
"""

import contextlib
import io
import os
import re
import shutil
import smtplib
import stat
import subprocess
import tempfile

import dkim
from twisted.internet import defer
from twisted.trial import unittest

from mailplat import cli
from mailplat.auth.dkim_keys import DKIMKey
from mailplat.auth.dkim_sign import field_names, from_domain, header_block
from mailplat.auth.signing_pool import SigningFailed
from tests.helpers import MailServer, client_tls, collect_log, in_thread
from tests.test_smtp import stored

USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: signed on the way out\r\n"
    b"Date: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
    b"Message-ID: <dkim-test@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello, Bob.\r\n"
    b"Gr\xc3\xbc\xc3\x9fe,  with  spaces   \r\n"
    b".a line that starts with a dot\r\n"
)

OPENDKIM = shutil.which("opendkim") or ("/usr/sbin/opendkim" if os.path.exists("/usr/sbin/opendkim") else None)


def keygen(server, domain, *options):
    """`mailplat dkim keygen` through the CLI; (status, the TXT record's name, its text)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["--config", server.config_path, "dkim", "keygen", domain, *options])
    [line] = [line for line in out.getvalue().splitlines() if " IN TXT " in line]
    name, _, rest = line.partition(". IN TXT ")
    return status, name, "".join(re.findall(r'"([^"]*)"', rest))


def submit(port, message=MESSAGE, sender="alice@example.test", password="alice-pw", recipients=("bob@example.test",), implicit_tls=False):
    """Blocking: submit over STARTTLS (or implicit TLS) and AUTH."""
    if implicit_tls:
        s = smtplib.SMTP_SSL("127.0.0.1", port, context=client_tls(), timeout=10)
    else:
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    with s:
        if not implicit_tls:
            s.starttls(context=client_tls())
        s.login(sender, password)
        s.sendmail(sender, list(recipients), message)


def send_to_mx(port, message=MESSAGE):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("alice@example.test", ["bob@example.test"], message)


def signatures(message):
    return [v for n, v in _fields(message) if n.lower() == "dkim-signature"]


def _fields(message):
    header = header_block(message).decode("utf-8", "replace")
    return re.findall(r"^([^\s:]+):(.*(?:\n[ \t].*)*)", header, re.M)


def verify_with_dkimpy(message, records):
    """Every DKIM-Signature of the message checked by dkimpy, with `records` as the DNS."""
    def dnsfunc(name, timeout=5):
        return records[name.decode().rstrip(".")].encode()

    def check(idx):
        try:
            return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.ValidationError:
            return False

    return [check(i) for i in range(len(signatures(message)))]


def verify_with_opendkim(testcase, message, records):
    """OpenDKIM's verdict as its Authentication-Results text (keys from a file, not DNS)."""
    work = tempfile.mkdtemp(prefix="mailplat-opendkim-")
    testcase.addCleanup(shutil.rmtree, work, True)
    keys = os.path.join(work, "keys")
    with open(keys, "w") as f:
        for name, text in records.items():
            f.write(f"{name} {text}\n")
    conf = os.path.join(work, "opendkim.conf")
    with open(conf, "w") as f:
        f.write(f"Mode v\nSyslog no\nTestPublicKeys {keys}\n")
    path = os.path.join(work, "message.eml")
    with open(path, "wb") as f:
        f.write(message)
    done = subprocess.run([OPENDKIM, "-x", conf, "-vv", "-t", path], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


class DKIMServer(unittest.TestCase):
    """A server with the submission, smtps and MX listeners, and keys made by the CLI."""

    extra = ""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(self, listeners=("smtp", "submission", "smtps"), extra=self.extra)
        yield self.server.start(users=USERS)
        self.records = {}

    def make_key(self, domain="example.test", *options):
        status, name, text = keygen(self.server, domain, *options)
        self.assertEqual(status, 0)
        self.records[name] = text
        return name, text

    def need_opendkim(self):
        if OPENDKIM is None:
            if os.environ.get("MAILPLAT_TEST_OPENDKIM_REQUIRED"):
                self.fail("opendkim is not installed (apt-get install opendkim)")
            raise unittest.SkipTest("opendkim is not installed (apt-get install opendkim)")

    @defer.inlineCallbacks
    def delivered(self, send=submit, port="submission", **kw):
        yield in_thread(send, self.server.port(port), **kw)
        [message] = stored(self.server, "bob@example.test")
        return message


class KeygenCommand(DKIMServer):
    def test_rsa_key_is_a_0600_file_under_state_dir_dkim(self):
        name, text = self.make_key("example.test", "--selector", "s1", "--algorithm", "rsa")
        path = os.path.join(self.server.state, "dkim", "example.test", "s1.key")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        with open(path, "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN RSA PRIVATE KEY-----"))
        self.assertEqual(name, "s1._domainkey.example.test")
        self.assertTrue(text.startswith("v=DKIM1; k=rsa; p=MIIB"), text)

    def test_ed25519_key_prints_a_k_ed25519_record(self):
        name, text = self.make_key("example.test", "--selector", "e1", "--algorithm", "ed25519")
        self.assertEqual(name, "e1._domainkey.example.test")
        self.assertRegex(text, r"^v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=$")
        path = os.path.join(self.server.state, "dkim", "example.test", "e1.key")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_default_selector_names_the_algorithm_and_month(self):
        name, _ = self.make_key("example.test")
        self.assertRegex(name, r"^rsa-\d{6}\._domainkey\.example\.test$")

    def test_an_existing_selector_is_not_overwritten(self):
        self.make_key("example.test", "--selector", "s1")
        with self.assertRaises(SystemExit) as caught, contextlib.redirect_stdout(io.StringIO()):
            cli.main(["--config", self.server.config_path, "dkim", "keygen", "example.test", "--selector", "s1"])
        self.assertIn("a key exists", str(caught.exception))

    def test_a_selector_that_is_not_a_dns_label_is_refused(self):
        with self.assertRaises(SystemExit) as caught, contextlib.redirect_stdout(io.StringIO()):
            cli.main(["--config", self.server.config_path, "dkim", "keygen", "example.test", "--selector", "../x"])
        self.assertIn("not a valid selector", str(caught.exception))

    def test_list_shows_each_key_and_that_it_signs(self):
        self.make_key("example.test", "--selector", "s1")
        self.make_key("example.test", "--selector", "e1", "--algorithm", "ed25519")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(cli.main(["--config", self.server.config_path, "dkim", "list"]), 0)
        lines = out.getvalue().splitlines()
        self.assertRegex(lines[0], r"^example\.test +e1 +ed25519 +signing +e1\._domainkey\.example\.test$")
        self.assertRegex(lines[1], r"^example\.test +s1 +rsa +signing ")
        self.assertIn("2 key(s)", lines[-1])


class SubmittedMailIsSigned(DKIMServer):
    @defer.inlineCallbacks
    def test_rsa_signature_verifies_with_dkimpy(self):
        self.make_key("example.test", "--selector", "s1", "--algorithm", "rsa")
        message = yield self.delivered()
        [signature] = signatures(message)
        self.assertIn("a=rsa-sha256", signature)
        self.assertIn("s=s1", signature)
        self.assertEqual(verify_with_dkimpy(message, self.records), [True])

    @defer.inlineCallbacks
    def test_rsa_signature_verifies_with_opendkim(self):
        self.need_opendkim()
        self.make_key("example.test", "--selector", "s1", "--algorithm", "rsa")
        message = yield self.delivered()
        verdict = verify_with_opendkim(self, message, self.records)
        self.assertIn("dkim=pass", verdict)
        self.assertIn("header.a=rsa-sha256 header.s=s1", verdict)

    @defer.inlineCallbacks
    def test_ed25519_signature_verifies_with_dkimpy(self):
        self.make_key("example.test", "--selector", "e1", "--algorithm", "ed25519")
        message = yield self.delivered()
        [signature] = signatures(message)
        self.assertIn("a=ed25519-sha256", signature)
        self.assertEqual(verify_with_dkimpy(message, self.records), [True])

    @defer.inlineCallbacks
    def test_ed25519_signature_verifies_with_opendkim(self):
        self.need_opendkim()
        self.make_key("example.test", "--selector", "e1", "--algorithm", "ed25519")
        message = yield self.delivered()
        verdict = verify_with_opendkim(self, message, self.records)
        self.assertIn("dkim=pass", verdict)
        self.assertIn("header.a=ed25519-sha256 header.s=e1", verdict)

    @defer.inlineCallbacks
    def test_an_rsa_and_an_ed25519_key_give_two_signatures(self):
        self.make_key("example.test", "--selector", "s1", "--algorithm", "rsa")
        self.make_key("example.test", "--selector", "e1", "--algorithm", "ed25519")
        message = yield self.delivered()
        self.assertEqual(len(signatures(message)), 2)
        self.assertEqual(verify_with_dkimpy(message, self.records), [True, True])

    @defer.inlineCallbacks
    def test_smtps_mail_is_signed_too(self):
        self.make_key("example.test", "--selector", "s1")
        message = yield self.delivered(port="smtps", implicit_tls=True)
        self.assertEqual(verify_with_dkimpy(message, self.records), [True])

    @defer.inlineCallbacks
    def test_present_headers_are_signed_and_from_is_oversigned(self):
        self.make_key("example.test", "--selector", "s1")
        message = yield self.delivered()
        [signature] = signatures(message)
        h = re.search(r"\bh=([^;]*);", signature).group(1)
        names = [n.strip() for n in re.sub(r"\s+", "", h).split(":")]
        self.assertEqual(names.count("from"), 2)
        self.assertEqual(set(names), {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"})

    @defer.inlineCallbacks
    def test_a_changed_body_does_not_verify(self):
        self.make_key("example.test", "--selector", "s1")
        message = yield self.delivered()
        tampered = message.replace(b"Hello, Bob.", b"Hello, Eve.")
        self.assertEqual(verify_with_dkimpy(tampered, self.records), [False])

    @defer.inlineCallbacks
    def test_a_key_made_while_the_server_runs_is_used(self):
        message = yield self.delivered()
        self.assertEqual(signatures(message), [])
        self.make_key("example.test", "--selector", "s1")
        for path in os.listdir(os.path.join(self.server.maildir("bob@example.test"), "new")):
            os.unlink(os.path.join(self.server.maildir("bob@example.test"), "new", path))
        message = yield self.delivered()
        self.assertEqual(verify_with_dkimpy(message, self.records), [True])


class NotSigned(DKIMServer):
    @defer.inlineCallbacks
    def test_mail_received_on_the_mx_port_is_not_signed(self):
        self.make_key("example.test", "--selector", "s1")
        message = yield self.delivered(send=send_to_mx, port="smtp")
        self.assertEqual(signatures(message), [])

    @defer.inlineCallbacks
    def test_a_from_domain_without_a_key_is_not_signed(self):
        self.make_key("example.test", "--selector", "s1")
        other = MESSAGE.replace(b"From: Alice <alice@example.test>", b"From: Alice <alice@example.org>")
        message = yield self.delivered(message=other)
        self.assertEqual(signatures(message), [])

    @defer.inlineCallbacks
    def test_a_from_domain_that_is_not_the_senders_is_not_signed(self):
        # alice@example.test must not get example.org's signature on a
        # message that claims to be from example.org, though the server
        # holds that domain's key.
        self.make_key("example.test", "--selector", "s1")
        self.make_key("example.org", "--selector", "s1")
        forged = MESSAGE.replace(b"From: Alice <alice@example.test>", b"From: The CEO <ceo@example.org>")
        message = yield self.delivered(message=forged)
        self.assertEqual(signatures(message), [])

    @defer.inlineCallbacks
    def test_a_signing_failure_delivers_the_message_unsigned_and_logs(self):
        self.make_key("example.test", "--selector", "s1")
        log = collect_log(self)

        signer = self.server.service.backends.dkim
        keys_for = signer.keys_for

        def unusable(domain):
            # A key the signer process cannot read: it answers with an error.
            return [DKIMKey(k.domain, k.selector, k.algorithm, b"-----BEGIN RSA PRIVATE KEY-----\nbroken\n")
                    for k in keys_for(domain)]

        signer.keys_for = unusable
        message = yield self.delivered()
        self.assertEqual(signatures(message), [])
        self.assertIn(b"Hello, Bob.", message)
        self.assertTrue([t for t in log if "DKIM signing failed" in t], log)
        self.assertEqual(signer.pool.signed, 0)
        self.flushLoggedErrors(SigningFailed)

    @defer.inlineCallbacks
    def test_a_signing_failure_in_process_delivers_the_message_unsigned_and_logs(self):
        self.make_key("example.test", "--selector", "s1")
        log = collect_log(self)
        signer = self.server.service.backends.dkim

        def broken(data, keys):
            raise ValueError("no signing today")

        yield signer.pool.stop()  # no signer process: the message is signed in-process
        signer.started = False
        signer.sign = broken
        message = yield self.delivered()
        self.assertEqual(signatures(message), [])
        self.assertIn(b"Hello, Bob.", message)
        self.assertTrue([t for t in log if "DKIM signing failed" in t], log)
        self.flushLoggedErrors(ValueError)

    @defer.inlineCallbacks
    def test_an_unreadable_key_is_logged_and_the_message_delivered(self):
        directory = os.path.join(self.server.state, "dkim", "example.test")
        os.makedirs(directory)
        with open(os.path.join(directory, "bad.key"), "wb") as f:
            f.write(b"not a key\n")
        log = collect_log(self)
        message = yield self.delivered()
        self.assertEqual(signatures(message), [])
        self.assertTrue([t for t in log if "bad.key" in t and "DKIM key not used" in t], log)


class OnlyConfiguredDomains(DKIMServer):
    extra = '[dkim]\ndomains = ["example.org"]\n'

    @defer.inlineCallbacks
    def test_a_domain_left_out_of_dkim_domains_is_not_signed(self):
        self.make_key("example.test", "--selector", "s1")
        message = yield self.delivered()
        self.assertEqual(signatures(message), [])


class OnlyConfiguredSelectors(DKIMServer):
    extra = '[dkim.selectors]\n"example.test" = "e1"\n'

    @defer.inlineCallbacks
    def test_only_the_configured_selector_signs(self):
        self.make_key("example.test", "--selector", "s1")
        self.make_key("example.test", "--selector", "e1", "--algorithm", "ed25519")
        message = yield self.delivered()
        [signature] = signatures(message)
        self.assertIn("s=e1", signature)


class FromHeader(unittest.TestCase):
    def test_the_domain_of_the_from_address(self):
        self.assertEqual(from_domain(b"To: x@y\nFrom: \"A, B\" <a@Example.ORG>\n"), "example.org")

    def test_a_folded_from(self):
        self.assertEqual(from_domain(b"From: Alice\n <alice@example.test>\nTo: b@c\n"), "example.test")

    def test_two_from_fields_are_not_signed_for(self):
        self.assertIsNone(from_domain(b"From: a@example.test\nFrom: b@example.org\n"))

    def test_no_from(self):
        self.assertIsNone(from_domain(b"To: b@example.test\n"))

    def test_field_names_skip_folded_lines(self):
        self.assertEqual(field_names(b"From: a\nTo: b,\n c\nSubject: x\n"), [b"from", b"to", b"subject"])


class RelayedMail(unittest.TestCase):
    """Signed before it is queued: the signature verifies after the relay carried it to a second mailplat."""

    @defer.inlineCallbacks
    def test_a_relayed_message_verifies_at_the_receiving_server(self):
        from tests.test_relay_delivery import DomainServer, messages_in, relay_config, wait_for

        b = DomainServer(self, "example.org", listeners=("smtp",))
        yield b.start(users={"bob@example.org": "bob-pw"})
        extra = relay_config(routes={"example.org": f"127.0.0.1:{b.port('smtp')}"}, retry_first=3600)
        a = DomainServer(self, "example.test", listeners=("submission",), extra=extra)
        yield a.start(users={"alice@example.test": "alice-pw"})
        status, name, text = keygen(a, "example.test", "--selector", "s1")
        self.assertEqual(status, 0)
        outgoing = MESSAGE.replace(b"To: bob@example.test", b"To: bob@example.org")
        yield in_thread(submit, a.port("submission"), message=outgoing, recipients=["bob@example.org"])
        [message] = yield wait_for(lambda: messages_in(b, "bob@example.org"))
        self.assertEqual(verify_with_dkimpy(message, {name: text}), [True])
        if OPENDKIM is not None:
            self.assertIn("dkim=pass", verify_with_opendkim(self, message, {name: text}))
