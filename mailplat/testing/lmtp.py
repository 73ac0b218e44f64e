"""
A small LMTP server (RFC 2033) for tests: it keeps what it receives in
memory and answers each recipient as the test scripts it, standing in for
Dovecot's LMTP service.

    server = LMTPServer(users={"alice@example.test"})
    port = yield server.start(self)          # self: the TestCase (cleanup)
    server.rcpt_replies["bob@example.test"] = "452 4.2.2 mailbox full"
    server.data_replies["alice@example.test"] = "552 5.2.2 over quota"
    server.messages["alice@example.test"]    # [bytes] delivered (LF ends)
"""

from twisted.internet import defer, endpoints
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver


class _LMTPSession(LineReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 1024 * 1024

    def connectionMade(self):
        self.server = self.factory.server
        self.server.connections.append(self)
        self.sender = None
        self.recipients = []
        self.lines = None
        self.server.sessions += 1
        if self.server.greeting is not None:  # None: a server that hangs
            self.send(self.server.greeting)

    def connectionLost(self, reason):
        if self in self.server.connections:
            self.server.connections.remove(self)

    def send(self, reply):
        self.transport.write(reply.encode("utf-8") + b"\r\n")

    def lineReceived(self, line):
        if self.lines is not None:
            return self._data_line(line)
        text = line.decode("utf-8", "replace")
        self.server.commands.append(text)
        verb = text.split(" ", 1)[0].split(":", 1)[0].upper()
        if verb == "LHLO":
            self.send("250-localhost\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME")
        elif verb == "MAIL":
            self.sender = text[10:].strip().strip("<>")
            self.recipients = []
            self.send(self.server.mail_reply)
        elif verb == "RCPT":
            address = text[8:].strip().strip("<>").lower()
            reply = self.server.rcpt_replies.get(address)
            if reply is None:
                known = self.server.users is None or address in self.server.users
                reply = "250 2.1.5 OK" if known else f"550 5.1.1 <{address}> User doesn't exist"
            if reply.startswith("2"):
                self.recipients.append(address)
            self.send(reply)
        elif verb == "DATA":
            if not self.recipients:
                self.send("503 5.5.1 No valid recipients")
            else:
                self.lines = []
                self.send("354 OK")
        elif verb == "RSET":
            self.sender, self.recipients = None, []
            self.send("250 2.0.0 OK")
        elif verb == "NOOP":
            self.send("250 2.0.0 OK")
        elif verb == "QUIT":
            self.send("221 2.0.0 Bye")
            self.transport.loseConnection()
        else:
            self.send("500 5.5.2 Unknown command")

    def _data_line(self, line):
        if line != b".":
            self.lines.append(line[1:] if line.startswith(b"..") else line)
            return
        message = b"".join(l + b"\n" for l in self.lines)
        self.lines = None
        if self.server.drop_after_data:
            self.transport.abortConnection()
            return
        # RFC 2033 4.2: one reply per accepted recipient, in RCPT order.
        for address in self.recipients:
            reply = self.server.data_replies.get(address, "250 2.0.0 Saved")
            if reply.startswith("2"):
                self.server.messages.setdefault(address, []).append(message)
                self.server.senders.append(self.sender)
            self.send(reply)
        self.recipients = []


class LMTPServer:
    """
    @param users: addresses that exist (others get 550 at RCPT); None for all.
    """

    def __init__(self, users=None):
        self.users = None if users is None else {u.lower() for u in users}
        self.greeting = "220 localhost LMTP ready"
        self.mail_reply = "250 2.1.0 OK"
        self.rcpt_replies = {}  # address -> reply line at RCPT
        self.data_replies = {}  # address -> reply line after DATA
        self.drop_after_data = False  # close without answering the final dot
        self.messages = {}  # address -> [message bytes, LF line ends]
        self.senders = []
        self.commands = []
        self.sessions = 0
        self.connections = []
        self.port = None

    @defer.inlineCallbacks
    def start(self, testcase=None, reactor=None):
        """Listen on a free loopback port; @return: Deferred firing with the port number."""
        if reactor is None:
            from twisted.internet import reactor
        factory = Factory.forProtocol(_LMTPSession)
        factory.server = self
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = yield endpoint.listen(factory)
        if testcase is not None:
            testcase.addCleanup(self.stop)
        return self.port.getHost().port

    @property
    def endpoint(self):
        """The client endpoint string for `[delivery.lmtp] endpoint`."""
        return f"tcp:host=127.0.0.1:port={self.port.getHost().port}"

    @defer.inlineCallbacks
    def stop(self):
        """Stop listening, then wait (up to 5 s) for clients to hang up."""
        from twisted.internet import reactor

        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        for _ in range(500):
            if not self.connections:
                return
            yield deferLater(reactor, 0.01, lambda: None)
        for c in list(self.connections):
            c.transport.abortConnection()
        yield deferLater(reactor, 0, lambda: None)
