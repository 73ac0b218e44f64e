"""
Connections that never finish TLS are closed (issue 17 #7): a client that
opens an implicit-TLS port, or asks for STARTTLS/STLS, and then never
sends its ClientHello is aborted after the command timeout, and its
`connections_per_ip` slot is free again.
"""

import imaplib

from twisted.internet import defer
from twisted.trial import unittest

from tests.helpers import LineClient, MailServer, client_tls, in_thread

# command_timeout is 1 s here; a connection must be gone well before the
# 5 s grace of a polite close would end it.
CLOSED_WITHIN = 3.5


class TLSHandshakeDeadline(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = MailServer(
            self,
            listeners=("smtp", "smtps", "imap", "imaps", "pop3", "pop3s"),
            extra="[limits]\ncommand_timeout = 1\nconnections_per_ip = 3\n",
        )
        yield self.server.start(users={"alice@example.test": "pw"})

    def silent(self, name):
        c = LineClient(self.server.port(name))
        self.addCleanup(c.close)
        return c

    @defer.inlineCallbacks
    def test_implicit_tls_without_client_hello_is_aborted(self):
        def run():
            clients = {name: self.silent(name) for name in ("smtps", "imaps", "pop3s")}
            return {name: c.closed(wait=CLOSED_WITHIN) for name, c in clients.items()}

        closed = yield in_thread(run)
        self.assertEqual(closed, {"smtps": True, "imaps": True, "pop3s": True})

    @defer.inlineCallbacks
    def test_starttls_without_client_hello_is_aborted(self):
        def run():
            smtp = self.silent("smtp")
            smtp.smtp_reply()
            smtp.send(b"EHLO client.test\r\n")
            smtp.smtp_reply()
            smtp.send(b"STARTTLS\r\n")
            ready = [smtp.smtp_reply()[0]]
            imap = self.silent("imap")
            imap.line()
            imap.send(b"a STARTTLS\r\n")
            ready.append(imap.line())
            pop = self.silent("pop3")
            pop.line()
            pop.send(b"STLS\r\n")
            ready.append(pop.line())
            return ready, [c.closed(wait=CLOSED_WITHIN) for c in (smtp, imap, pop)]

        ready, closed = yield in_thread(run)
        self.assertEqual(ready[0], 220)
        self.assertTrue(ready[1].startswith(b"a OK"), ready[1])
        self.assertTrue(ready[2].startswith(b"+OK"), ready[2])
        self.assertEqual(closed, [True, True, True])

    @defer.inlineCallbacks
    def test_silent_connections_give_their_slots_back(self):
        def run():
            clients = [self.silent("imaps") for _ in range(3)]
            gone = [c.closed(wait=CLOSED_WITHIN) for c in clients]
            with imaplib.IMAP4_SSL("127.0.0.1", self.server.port("imaps"), ssl_context=client_tls(), timeout=10) as m:
                status = m.login("alice@example.test", "pw")[0]
                m.logout()
            return gone, status

        gone, status = yield in_thread(run)
        self.assertEqual(gone, [True, True, True])
        self.assertEqual(status, "OK")
