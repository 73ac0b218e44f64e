"""
Password hashes in Dovecot's `{SCHEME}hash` notation, so a passwd-file
written by `doveadm pw` works here and the other way round.

Hashing is slow and big on purpose: an ARGON2ID check (Dovecot's default
parameters, m=64 MiB, t=3) takes ~0.1 s and 64 MiB. `verify_later` runs
checks in a small pool of their own, so a burst of logins costs at most
HASH_THREADS x 64 MiB and never stalls the reactor or the disk threads.
"""

import hmac

import argon2
import bcrypt

DEFAULT_SCHEME = "ARGON2ID"
SCHEMES = ("ARGON2ID", "BLF-CRYPT", "PLAIN")

_argon2 = argon2.PasswordHasher()
HASH_THREADS = 2
_pool = None


class UnknownScheme(ValueError):
    pass


def split(stored):
    """`{SCHEME}rest` -> (SCHEME, rest); a hash with no scheme is PLAIN, as in Dovecot."""
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            return stored[1:end].upper(), stored[end + 1 :]
    return "PLAIN", stored


def check_scheme(stored):
    """@raise UnknownScheme: naming the scheme when we cannot verify it."""
    scheme, _ = split(stored)
    if scheme not in SCHEMES:
        raise UnknownScheme(f"unsupported password scheme {{{scheme}}}; use one of {', '.join(SCHEMES)}")
    return scheme


def hash_password(password, scheme=DEFAULT_SCHEME):
    """Hash a password for storage."""
    if scheme == "ARGON2ID":
        return "{ARGON2ID}" + _argon2.hash(password)
    if scheme == "BLF-CRYPT":
        return "{BLF-CRYPT}" + bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt()).decode("ascii")
    if scheme == "PLAIN":
        return "{PLAIN}" + password
    raise UnknownScheme(f"unsupported password scheme {{{scheme}}}")


def verify(stored, password):
    """True when `password` (str) matches the stored `{SCHEME}hash`."""
    scheme, value = split(stored)
    if scheme == "ARGON2ID":
        try:
            return _argon2.verify(value, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
    if scheme == "BLF-CRYPT":
        try:
            return bcrypt.checkpw(password.encode("utf-8"), value.encode("ascii"))
        except ValueError:
            return False
    if scheme == "PLAIN":
        return hmac.compare_digest(value.encode("utf-8"), password.encode("utf-8"))
    return False


def verify_later(stored, password):
    """`verify` in the hashing thread pool: a Deferred firing with a bool."""
    global _pool
    from twisted.internet import reactor, threads
    from twisted.python.threadpool import ThreadPool

    if _pool is None:
        _pool = ThreadPool(0, HASH_THREADS, "mailplat-password-hashing")
        _pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _stop_pool)
    return threads.deferToThreadPool(reactor, _pool, verify, stored, password)


def _stop_pool():
    global _pool
    if _pool is not None:
        _pool.stop()
        _pool = None


_dummy = None


def dummy_hash():
    """A real hash to check against for unknown users, so that the answer
    takes as long as for a real one (made on first use, not at import)."""
    global _dummy
    if _dummy is None:
        _dummy = hash_password("not a real password, only timing")
    return _dummy
