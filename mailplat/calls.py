"""
The one calling convention at the seam between the server and its backends.

Every call from the server into a plugin's object (a realm's
check_password, a delivery transaction's deliver, a store's deliver, an
alias source's targets, a check's stage) goes through L{call_backend}, so a
plugin author may write a method in any of three ways and no call site has
to guess which:

  - return a plain value (an answer from memory),
  - return a Deferred (Twisted style),
  - be an C{async def} coroutine function (C{await} Deferreds inside).

What the plugin raises is sorted here too: a L{MailplatError}
(TemporaryFailure, PermanentFailure, NoSuchUser) is part of the contract
and goes through as it is; anything else is a bug or an outage the plugin
did not foresee, so it is logged with its traceback and answered as a
L{TemporaryFailure} ("try again later": nothing is bounced or refused for
good because of a plugin's bug).

The texts of failures that come from a plugin are for the operator: they
are marked not public (unless the plugin said C{public=True}), and
L{client_text} gives protocols the text they may send to a remote client.
"""

import inspect
import time
from types import CoroutineType

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailplat.interfaces import MailplatError, PermanentFailure, TemporaryFailure

log = Logger(namespace="mailplat.calls")

# A backend call whose synchronous part holds the reactor longer than this
# is logged (every session of the process waited meanwhile).
SLOW_CALL = 0.1

# What a client is told when a plugin's failure text is not public.
GENERIC_TEXT = {
    TemporaryFailure: "temporary local problem, please try again later",
    PermanentFailure: "requested action not taken",
}


def _name(fn):
    owner = getattr(fn, "__self__", None)
    qualname = getattr(fn, "__qualname__", None) or repr(fn)
    if owner is not None and "." not in qualname:
        return f"{type(owner).__name__}.{qualname}"
    return qualname


def as_deferred(result):
    """A plain value, a Deferred, a Failure or a coroutine (or other awaitable) as a Deferred."""
    if isinstance(result, defer.Deferred):
        return result
    if isinstance(result, Failure):
        return defer.fail(result)
    if isinstance(result, CoroutineType) or inspect.isawaitable(result):
        return defer.ensureDeferred(result)
    return defer.succeed(result)


def _call(fn, args, kwargs, expected):
    started = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        d = defer.fail(Failure())
    else:
        try:
            d = as_deferred(result)
        except Exception:
            d = defer.fail(Failure())
    spent = time.perf_counter() - started
    if spent > SLOW_CALL:
        log.warn(
            "backend call {call} held the reactor for {ms:.0f} ms: slow work belongs in a thread "
            "(deferToThread) or asynchronous I/O",
            call=_name(fn),
            ms=spent * 1000,
        )
    return d.addErrback(_sorted, fn, expected)


def _sorted(failure, fn, expected):
    if failure.check(MailplatError):
        e = failure.value
        if getattr(e, "public", None) is None:
            try:
                e.public = False  # a plugin's text: for the log, not for the client
            except AttributeError:
                pass
        return failure
    if failure.check(defer.CancelledError, defer.TimeoutError, *expected):
        return failure
    log.failure(
        "backend call {call} failed unexpectedly; answered as a temporary failure", failure, call=_name(fn)
    )
    raise TemporaryFailure(f"{_name(fn)}: {failure.type.__name__}: {failure.getErrorMessage()}", "4.3.0")


def call_backend(fn, *args, **kwargs):
    """
    Call a backend method the one way the server calls them all.

    @return: a Deferred of what `fn` answered (a plain value, a Deferred's
        result, a coroutine's result). An exception other than a
        L{MailplatError} (and cancellation) is logged and becomes a
        L{TemporaryFailure}, whose text is not public.
    """
    return _call(fn, args, kwargs, ())


def calling(*expected):
    """
    L{call_backend} letting the exception types `expected` through
    unchanged, for a method whose contract has them (a store's
    C{open_message} fails with KeyError for a message that has gone).
    """

    def call(fn, *args, **kwargs):
        return _call(fn, args, kwargs, expected)

    call.__doc__ = f"call_backend letting {', '.join(e.__name__ for e in expected)} through"
    return call


def is_public(error):
    """True when `error`'s text may be sent to a remote client."""
    return getattr(error, "public", None) is not False


def client_text(error):
    """
    The text a protocol may send to a remote client for a
    TemporaryFailure / PermanentFailure: its own text when public (the
    server's own failures, or a plugin that passed C{public=True}), else a
    generic one (the enhanced status code in the reply still says what
    kind of failure it was).
    """
    if is_public(error):
        return getattr(error, "text", str(error))
    kind = PermanentFailure if isinstance(error, PermanentFailure) else TemporaryFailure
    return GENERIC_TEXT[kind]
