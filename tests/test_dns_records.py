"""
`mailplat dns-records DOMAIN` and `mailplat dns-check DOMAIN`
(mailplat.auth.records): the records printed are a zone file that a zone
parser (dnspython) reads, the DKIM record is the one `dkim keygen` printed,
the SRV records carry the [listen] ports; dns-check, run as an operator
runs it against an in-test name server serving what dns-records printed,
says ok and exits 0, names what is missing or wrong and exits 1, and calls
a name server that does not answer a temperror within the timeout.
"""

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer
from twisted.names import dns
from twisted.trial import unittest

from mailplat import cli
from mailplat import config as configuration
from mailplat.auth import records
from mailplat.auth.lookups import Lookups
from mailplat.dns import SharedResolver
from mailplat.testing.dns import start_dns_server, txt
from tests.helpers import in_thread

DOMAIN = "example.org"
HOST = "mail.example.org"
ADDRESS = "192.0.2.10"

CONFIG = """
[server]
hostname = "mail.example.org"
state_dir = "{dir}/var"

[domains]
local = ["example.org"]

[listen]
{listen}

[realm]
backend = "passwd-file"
path = "{dir}/users"

[dns]
servers = ["{dns}"]
timeout = {dns_timeout}
"""

STANDARD = """
smtp = "tcp:port=25"
submission = "tcp:port=587"
smtps = "tcp:port=465"
imap = "tcp:port=143"
imaps = "tcp:port=993"
pop3 = "tcp:port=110"
pop3s = "tcp:port=995"
"""

# As the embedded defaults: unprivileged ports on loopback, no POP3 at all.
UNPRIVILEGED = """
smtp = "tcp:port=2525:interface=127.0.0.1"
submission = "tcp:port=5587:interface=127.0.0.1"
smtps = "tcp:port=4465:interface=127.0.0.1"
imap = "tcp:port=1143:interface=127.0.0.1"
imaps = "tcp:port=1993:interface=127.0.0.1"
"""


def zone_records(text):
    """
    The records of dns-records' output as {name: [(type, rdata text)]}:
    the uncommented lines, and the commented ones that are whole records
    (the PTR, which belongs in another zone).
    """
    out = {}
    for line in text.splitlines():
        line = line[2:] if line.startswith("; ") else line
        m = re.match(r"(\S+)\. IN (MX|TXT|SRV|A|AAAA|PTR|CNAME) (.*)\Z", line)
        if m and "<" not in line:
            out.setdefault(m.group(1), []).append((m.group(2), m.group(3)))
    return out


def as_twisted(rtype, rdata):
    """A zone line's record as the test name server serves it."""
    if rtype == "TXT":
        return txt("".join(re.findall(r'"((?:[^"\\]|\\.)*)"', rdata)))
    if rtype == "MX":
        preference, host = rdata.split()
        return dns.Record_MX(int(preference), host.rstrip(".").encode(), ttl=60)
    if rtype == "SRV":
        priority, weight, port, target = rdata.split()
        return dns.Record_SRV(int(priority), int(weight), int(port), target.rstrip(".").encode(), ttl=60)
    if rtype == "A":
        return dns.Record_A(rdata, ttl=60)
    if rtype == "AAAA":
        return dns.Record_AAAA(rdata, ttl=60)
    if rtype == "PTR":
        return dns.Record_PTR(rdata.rstrip(".").encode(), ttl=60)
    raise ValueError(rtype)


def published(text, leave_out=(), replace=None):
    """What a zone that publishes dns-records' output serves, less `leave_out`, with `replace` {name: [records]}."""
    served = {}
    for name, rrs in zone_records(text).items():
        if name not in leave_out:
            served[name] = [as_twisted(t, v) for t, v in rrs]
    served[f"mta-sts.{DOMAIN}"] = [dns.Record_A("192.0.2.80", ttl=60)]
    served.update(replace or {})
    return served


def run_cli(config_path, *args):
    """`mailplat` as a process; (status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "mailplat.cli", "--config", config_path, *args],
        cwd=os.path.dirname(config_path), capture_output=True, text=True, timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


class RecordsTestCase(unittest.TestCase):
    listen = STANDARD
    dns_timeout = 2

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mailplat-dns-records-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.config_path = os.path.join(self.dir, "mailplat.toml")
        self.write_config("127.0.0.1:9")

    def write_config(self, dns_server):
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(dir=self.dir, listen=self.listen, dns=dns_server, dns_timeout=self.dns_timeout))

    def mailplat(self, *args):
        """The command in this process (no reactor needed): (status, stdout)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            try:
                status = cli.main(["--config", self.config_path, *args])
            except SystemExit as e:
                status = e.code
        return status, out.getvalue()

    def keygen(self, *options):
        status, out = self.mailplat("dkim", "keygen", DOMAIN, *options)
        self.assertEqual(status, 0)
        [line] = [line for line in out.splitlines() if " IN TXT " in line]
        return line

    def records(self, *options):
        status, out = self.mailplat("dns-records", DOMAIN, *options)
        self.assertEqual(status, 0, out)
        return out


class DNSRecords(RecordsTestCase):
    def test_the_output_is_a_zone_file_with_every_record(self):
        from dns import rdatatype, zone

        self.keygen()
        text = self.records("--address", ADDRESS)
        # The zone it is pasted into has its own $TTL (the records carry none).
        parsed = zone.from_text("$TTL 3600\n" + text, origin=DOMAIN + ".", relativize=False, check_origin=False)
        types = {(str(name).rstrip("."), rdatatype.to_text(rds.rdtype)) for name, rds in parsed.iterate_rdatasets()}
        expected = {(DOMAIN, "MX"), (DOMAIN, "TXT"), (HOST, "A"), (f"_dmarc.{DOMAIN}", "TXT"),
                    (f"_mta-sts.{DOMAIN}", "TXT"), (f"_smtp._tls.{DOMAIN}", "TXT")}
        expected |= {(f"{owner}.{DOMAIN}", "SRV") for owner, *_ in records.SRV_SERVICES}
        self.assertTrue(expected <= types, expected - types)
        self.assertEqual(len([t for t in types if "._domainkey." in t[0]]), 1)

    def test_mx_points_to_the_hostname(self):
        self.assertIn(f"{DOMAIN}. IN MX 10 {HOST}.", self.records().splitlines())

    def test_the_dkim_record_is_the_one_keygen_printed(self):
        rsa = self.keygen("--selector", "rsa-1")
        ed = self.keygen("--selector", "ed-1", "--algorithm", "ed25519")
        lines = self.records().splitlines()
        self.assertIn(rsa, lines)
        self.assertIn(ed, lines)

    def test_spf_without_an_address_is_the_mx(self):
        self.assertEqual(zone_records(self.records())[DOMAIN], [("MX", f"10 {HOST}."), ("TXT", '"v=spf1 mx -all"')])

    def test_a_known_address_goes_in_spf_the_host_record_and_the_ptr(self):
        got = zone_records(self.records("--address", ADDRESS, "--address", "2001:db8::10"))
        self.assertIn(("TXT", '"v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 mx -all"'), got[DOMAIN])
        self.assertEqual(got[HOST], [("A", ADDRESS), ("AAAA", "2001:db8::10")])
        self.assertEqual(got["10.2.0.192.in-addr.arpa"], [("PTR", f"{HOST}.")])

    def test_the_ptr_is_a_note_for_another_zone(self):
        [line] = [line for line in self.records("--address", ADDRESS).splitlines() if " IN PTR " in line]
        self.assertTrue(line.startswith("; "), line)

    def test_dmarc_starts_with_p_none_and_reports_to_postmaster(self):
        got = zone_records(self.records())[f"_dmarc.{DOMAIN}"]
        self.assertEqual(got, [("TXT", f'"v=DMARC1; p=none; rua=mailto:postmaster@{DOMAIN}"')])

    def test_tls_rpt_record(self):
        got = zone_records(self.records())[f"_smtp._tls.{DOMAIN}"]
        self.assertEqual(got, [("TXT", f'"v=TLSRPTv1; rua=mailto:postmaster@{DOMAIN}"')])

    def test_srv_records_carry_the_standard_listen_ports(self):
        got = zone_records(self.records())
        ports = {owner: int(got[f"{owner}.{DOMAIN}"][0][1].split()[2]) for owner, *_ in records.SRV_SERVICES}
        self.assertEqual(ports, {"_submissions._tcp": 465, "_submission._tcp": 587, "_imaps._tcp": 993,
                                 "_imap._tcp": 143, "_pop3s._tcp": 995, "_pop3._tcp": 110})
        self.assertTrue(all(v.endswith(f" {HOST}.") for rrs in got.values() for t, v in rrs if t == "SRV"))

    def test_implicit_tls_is_preferred(self):
        got = zone_records(self.records())
        priority = {owner: int(got[f"{owner}.{DOMAIN}"][0][1].split()[0]) for owner, *_ in records.SRV_SERVICES}
        self.assertLess(priority["_submissions._tcp"], priority["_submission._tcp"])
        self.assertLess(priority["_imaps._tcp"], priority["_imap._tcp"])

    def test_the_mta_sts_policy_file_alone(self):
        policy = self.records("--mta-sts-policy")
        self.assertEqual(policy, f"version: STSv1\nmode: testing\nmx: {HOST}\nmax_age: 86400\n")
        self.assertIn("mode: enforce", self.records("--mta-sts-policy", "--mta-sts-mode", "enforce"))

    def test_the_mta_sts_id_changes_with_the_policy(self):
        def sts_id(*options):
            [(_, value)] = zone_records(self.records(*options))[f"_mta-sts.{DOMAIN}"]
            return re.search(r"id=([A-Za-z0-9]+)", value).group(1)

        self.assertEqual(sts_id(), sts_id())
        self.assertNotEqual(sts_id(), sts_id("--mta-sts-mode", "enforce"))
        self.assertTrue(re.fullmatch(r"[A-Za-z0-9]{1,32}", sts_id()))

    def test_without_a_key_it_says_to_run_keygen(self):
        text = self.records()
        self.assertIn(f"mailplat dkim keygen {DOMAIN}", text)
        self.assertNotIn("._domainkey.", "".join(zone_records(text)))

    def test_a_bad_address_is_refused(self):
        status, _ = self.mailplat("dns-records", DOMAIN, "--address", "mail.example.org")
        self.assertNotEqual(status, 0)


class NonStandardPorts(RecordsTestCase):
    listen = UNPRIVILEGED

    def test_srv_records_keep_the_standard_port_with_a_note(self):
        text = self.records()
        got = zone_records(text)
        self.assertEqual(got[f"_imap._tcp.{DOMAIN}"], [("SRV", f"10 1 143 {HOST}.")])
        self.assertIn("; imap: [listen] imap is port 1143, not the standard 143", text)

    def test_a_service_not_listened_on_is_a_dot(self):
        got = zone_records(self.records())
        self.assertEqual(got[f"_pop3._tcp.{DOMAIN}"], [("SRV", "0 0 0 .")])
        self.assertEqual(got[f"_pop3s._tcp.{DOMAIN}"], [("SRV", "0 0 0 .")])

    def test_loopback_listeners_and_the_mx_port_are_noted(self):
        text = self.records()
        self.assertIn("; note: [listen] smtp: port 2525, not 25", text)
        self.assertIn("on 127.0.0.1 only", text)


class ListenerAddress(unittest.TestCase):
    def test_forms_of_endpoint(self):
        self.assertEqual(records.listener_address("tcp:port=587"), (587, ""))
        self.assertEqual(records.listener_address("tcp:993:interface=192.0.2.1"), (993, "192.0.2.1"))
        self.assertEqual(records.listener_address(r"tcp6:port=25:interface=\:\:1"), (25, "::1"))
        self.assertEqual(records.listener_address("unix:/run/mail.sock"), (None, None))

    def test_a_public_smtp_interface_is_the_servers_address(self):
        config = configuration.load(None)
        config.listen = {"smtp": "tcp:port=25:interface=203.0.114.7"}
        config.dkim = dict(config.dkim, key_dir="/nonexistent")
        plan = records.Plan.for_domain(config, DOMAIN)
        self.assertEqual([str(a) for a in plan.addresses], ["203.0.114.7"])


class DNSCheck(RecordsTestCase):
    """dns-check as a process, against a name server serving what dns-records printed."""

    def setUp(self):
        RecordsTestCase.setUp(self)
        self.keygen()
        self.text = self.records("--address", ADDRESS)

    def serve(self, records_served):
        server = start_dns_server(self, records_served, zones=[DOMAIN, "in-addr.arpa"])
        self.write_config(server.address)
        return server

    @defer.inlineCallbacks
    def check(self, *options):
        status, out, err = yield in_thread(run_cli, self.config_path, "dns-check", DOMAIN, *options)
        self.assertNotIn("Traceback", err)
        return status, out, {line.split()[1] + (" " + line.split()[2] if line.split()[2] == "host" else ""): line
                             for line in out.splitlines()[:-1]}

    @defer.inlineCallbacks
    def test_every_record_right_exits_zero(self):
        self.serve(published(self.text))
        status, out, lines = yield self.check()
        self.assertEqual(status, 0, out)
        self.assertTrue(all(line.startswith("ok ") for line in out.splitlines()[:-1]), out)
        self.assertIn(f"{DOMAIN}: all 6 required records are right.", out)

    @defer.inlineCallbacks
    def test_the_address_is_found_through_the_hostname(self):
        self.serve(published(self.text))
        status, out, lines = yield self.check()  # no --address: A of mail.example.org, then its PTR
        self.assertEqual(status, 0, out)
        self.assertIn(ADDRESS, lines["PTR"])
        self.assertIn(f"passes for {ADDRESS}", lines["SPF"])

    @defer.inlineCallbacks
    def test_missing_and_wrong_records_exit_one_and_are_named(self):
        self.serve(published(self.text, leave_out=[f"_dmarc.{DOMAIN}"], replace={
            DOMAIN: [dns.Record_MX(10, b"mx.elsewhere.example", ttl=60), txt("v=spf1 -all")],
        }))
        status, out, lines = yield self.check("--address", ADDRESS)
        self.assertEqual(status, 1, out)
        self.assertTrue(lines["DMARC"].startswith("missing "), lines["DMARC"])
        self.assertTrue(lines["MX"].startswith("wrong "), lines["MX"])
        self.assertIn("mx.elsewhere.example", lines["MX"])
        self.assertTrue(lines["SPF"].startswith("wrong "), lines["SPF"])
        self.assertIn(f"fail for {ADDRESS}", lines["SPF"])
        self.assertTrue(lines["DKIM"].startswith("ok "), lines["DKIM"])
        self.assertIn("3 of 6 required records are right (MX wrong, SPF wrong, DMARC missing)", out)

    @defer.inlineCallbacks
    def test_another_dkim_key_is_wrong(self):
        [name] = [n for n in zone_records(self.text) if "._domainkey." in n]
        self.serve(published(self.text, replace={name: [txt("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCg")]}))
        status, out, lines = yield self.check()
        self.assertEqual(status, 1, out)
        self.assertTrue(lines["DKIM"].startswith("wrong "), lines["DKIM"])

    @defer.inlineCallbacks
    def test_a_ptr_to_another_name_is_wrong(self):
        self.serve(published(self.text, replace={"10.2.0.192.in-addr.arpa": [dns.Record_PTR(b"host.isp.example", ttl=60)]}))
        status, out, lines = yield self.check()
        self.assertEqual(status, 1, out)
        self.assertIn("points to \"host.isp.example\"", lines["PTR"])

    @defer.inlineCallbacks
    def test_missing_optional_records_do_not_fail(self):
        optional = [n for n in zone_records(self.text) if n.startswith(("_mta-sts", "_smtp._tls", "_imap", "_pop3", "_sub"))]
        self.serve(published(self.text, leave_out=optional))
        status, out, lines = yield self.check()
        self.assertEqual(status, 0, out)
        self.assertTrue(lines["MTA-STS"].startswith("missing "), lines["MTA-STS"])
        self.assertIn("(optional)", lines["TLS-RPT"])

    @defer.inlineCallbacks
    def test_a_wrong_srv_port_is_said(self):
        self.serve(published(self.text, replace={
            f"_imaps._tcp.{DOMAIN}": [dns.Record_SRV(0, 1, 9993, HOST.encode(), ttl=60)],
        }))
        status, out, _ = yield self.check()
        [line] = [line for line in out.splitlines() if f"_imaps._tcp.{DOMAIN}" in line]
        self.assertTrue(line.startswith("wrong "), line)
        self.assertIn("9993", line)
        self.assertEqual(status, 0, out)  # optional: said, not failed

    @defer.inlineCallbacks
    def test_without_a_dkim_key_the_check_fails(self):
        shutil.rmtree(os.path.join(self.dir, "var", "dkim"))
        self.serve(published(self.text))
        status, out, lines = yield self.check()
        self.assertEqual(status, 1, out)
        self.assertIn(f"mailplat dkim keygen {DOMAIN}", lines["DKIM"])


class SilentNameServer(RecordsTestCase):
    dns_timeout = 1

    def setUp(self):
        RecordsTestCase.setUp(self)
        self.keygen()
        self.server = start_dns_server(self, {DOMAIN: [txt("v=spf1 mx -all")]})
        self.server.silent = True
        self.write_config(self.server.address)

    @defer.inlineCallbacks
    def test_every_record_is_a_temperror_and_the_exit_status_one(self):
        started = time.monotonic()
        status, out, err = yield in_thread(run_cli, self.config_path, "dns-check", DOMAIN)
        self.assertNotIn("Traceback", err)
        self.assertEqual(status, 1, out + err)
        lines = out.splitlines()[:-1]
        self.assertTrue(lines and all(line.startswith("temperror ") for line in lines), out)
        self.assertLess(time.monotonic() - started, 15)  # a process start, and about one timeout

    @defer.inlineCallbacks
    def test_the_check_ends_within_about_one_timeout(self):
        config = configuration.load(self.config_path, cwd=self.dir)
        plan = records.Plan.for_domain(config, DOMAIN)
        resolver = SharedResolver(config.dns)
        self.addCleanup(resolver.close)
        started = time.monotonic()
        findings = yield records.check(plan, Lookups(resolver, deadline=resolver.timeout))
        elapsed = time.monotonic() - started
        self.assertEqual({f.status for f in findings}, {records.TEMPERROR})
        self.assertFalse(records.passed(findings))
        self.assertLess(elapsed, 2 * self.dns_timeout + 0.5)
        self.assertGreater(len(self.server.queries), 5)
