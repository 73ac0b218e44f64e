"""
Answers in order. SMTP, POP3 and IMAP clients may pipeline commands; a
server must answer them in the order sent (RFC 2920, RFC 2449, RFC 3501
5.5), so a session reads no further input while a command's answer is
still being worked out.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


def still_running(result):
    """
    A Deferred that fires once `result` (a command handler's return value)
    has run its whole chain, or None when nothing is pending.

    `Deferred.called` is not enough: a Deferred whose callback returned an
    unfired Deferred says `called` while it is still waiting.
    """
    if not isinstance(result, defer.Deferred):
        return None
    finished = defer.Deferred()

    def done(outcome):
        if isinstance(outcome, Failure):
            log.failure("command failed after its answer", outcome)
        finished.callback(None)

    result.addBoth(done)
    return None if finished.called else finished
