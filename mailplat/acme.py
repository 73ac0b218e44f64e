"""
Certificates by ACME (RFC 8555) for `[tls] acme = { email, directory,
domains }`: an account key and the issued certificate under state_dir/acme,
a check every hour that orders a certificate when there is none, when it
does not cover the configured domains, or when it expires within
`renew_days`; the new certificate is served to new connections at once
(mailplat.tls.ServerCertificates.reload).

The protocol is certbot's `acme` library. Its client is synchronous
(requests), so each order runs in a thread of the reactor's pool and only
the challenge answers are handed to the reactor: the tls-alpn-01 certificate
(RFC 8737) to the TLS context of every listener, or the http-01 key
authorization to the `[listen] http` site. Any failure is logged with the
config key it concerns, and the certificate served so far stays.
"""

import datetime
import hashlib
import os

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.web import resource

from mailplat import oplog
from mailplat.tls import self_signed

# How often the certificate's expiry is looked at (seconds): reading one
# file. A failed order is tried again at the next look, which keeps well
# inside a CA's limits on failed validations (Let's Encrypt: 5 an hour).
CHECK_INTERVAL = 3600
# How long one order may wait for its validations and its certificate.
ORDER_TIMEOUT = 120
USER_AGENT = "mailplat"

# RFC 8737 3: the acmeIdentifier extension of a tls-alpn-01 certificate.
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The answer to tls-alpn-01: an empty object (RFC 8555 7.5.1)."""

    typ = "tls-alpn-01"


class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """RFC 8737 (the acme library no longer ships it)."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key, **unused):
        return self.key_authorization(account_key)


if TLSALPN01.typ not in challenges.Challenge.TYPES:
    challenges.Challenge.register(TLSALPN01)


class AcmeError(Exception):
    """An order that failed, with the config key an operator would look at."""

    def __init__(self, key, problem):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def challenge_certificate(domain, key_authorization):
    """
    The self-signed certificate and key a tls-alpn-01 validator must see
    for `domain` (RFC 8737 3): the name as its only subjectAltName and the
    SHA-256 of the key authorization in a critical acmeIdentifier extension.
    """
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # The extension's value is a DER OCTET STRING of the 32-byte digest.
    identifier = x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest)
    return self_signed(domain, x509.SubjectAlternativeName([x509.DNSName(domain)]), 1, [(identifier, True)])


class ChallengeResource(resource.Resource):
    """`/.well-known/acme-challenge/TOKEN` on `[listen] http` (RFC 8555 8.3)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.tokens = {}  # token -> key authorization

    def render_GET(self, request):
        token = request.postpath[0].decode("ascii", "replace") if len(request.postpath) == 1 else None
        answer = self.tokens.get(token)
        if answer is None:
            request.setResponseCode(404)
            return b"no such challenge\n"
        request.setHeader(b"content-type", b"application/octet-stream")
        oplog.emit("acme-challenge-answered", challenge="http-01", domain=request.getRequestHostname().decode("ascii", "replace"))
        return answer.encode("ascii")


def _write_private(path, data):
    """Write a file only its owner can read, replacing any other at once."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temporary = path + ".new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def account_key(settings):
    """
    The account's key as a JWK and its signature algorithm: the file
    tls.acme.account_key, made (RSA 2048, 0600) on first use at the default place.
    """
    path = settings["account_key"]
    if not os.path.exists(path):
        if path != os.path.join(settings["dir"], "account.key"):
            raise AcmeError("tls.acme.account_key", f"file not found: {path}")
        _write_private(path, _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise AcmeError("tls.acme.account_key", f"cannot load {path}: {e}")
    if isinstance(key, rsa.RSAPrivateKey):
        return jose.JWKRSA(key=key), jose.RS256
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return jose.JWKEC(key=key), jose.ES256
    raise AcmeError("tls.acme.account_key", f"{path}: an RSA or P-256 key is needed")


def renewal_reason(settings, now=None):
    """
    Why a certificate should be ordered now, or None: there is none, it
    does not name every configured domain, or it expires within renew_days.
    """
    try:
        with open(settings["certificate"], "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except FileNotFoundError:
        return "no certificate yet"
    except (OSError, ValueError) as e:
        return f"the certificate does not load: {e}"
    try:
        names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = set()
    missing = [d for d in settings["domains"] if d not in {n.lower() for n in names}]
    if missing:
        return f"the certificate does not name {', '.join(missing)}"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    left = cert.not_valid_after_utc - now
    if left < datetime.timedelta(days=settings["renew_days"]):
        return f"it expires {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, within renew_days = {settings['renew_days']}"
    return None


class AcmeService(service.Service):
    """
    Keeps an ACME certificate current: L{check} on start and every
    L{interval} seconds; an order in flight is never started twice.
    """

    interval = CHECK_INTERVAL

    def __init__(self, settings, certificates, reactor=None):
        """
        @param settings: the config's `acme` dict (mailplat.config._acme).
        @param certificates: the L{mailplat.tls.ServerCertificates} to
            reload and to hand tls-alpn-01 certificates to.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.settings = settings
        self.certificates = certificates
        self.http = ChallengeResource()
        self._loop = None
        self._ordering = None  # the Deferred of the order in flight
        self._stopping = False
        self.last_error = None

    def startService(self):
        service.Service.startService(self)
        self._stopping = False
        self._loop = task.LoopingCall(self._periodic)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stopService(self):
        service.Service.stopService(self)
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        # An order in flight finishes (or fails) before the server is gone.
        if self._ordering is not None:
            return _copy(self._ordering)
        return None

    def _periodic(self):
        # The timer must outlive any surprise: one bad check is logged, the next runs.
        d = defer.maybeDeferred(self.check)
        d.addErrback(self._failed)
        return d

    def check(self):
        """
        Order a certificate when L{renewal_reason} says so.

        @return: a Deferred that fires (never fails) when that is done:
            with True when a new certificate is served, else False.
        """
        if self._ordering is not None:
            return _copy(self._ordering)
        reason = renewal_reason(self.settings)
        if reason is None:
            return defer.succeed(False)
        oplog.emit("acme-order", domains=self.settings["domains"], directory=self.settings["directory"],
                   challenge=self.settings["challenge"], reason=reason)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._order)
        d.addCallbacks(self._issued, self._failed)
        self._ordering = d
        d.addBoth(self._done)
        return _copy(d)

    def _done(self, result):
        self._ordering = None
        return result

    def _issued(self, _):
        self.last_error = None
        self.certificates.reload()
        current = self.certificates.current
        served = current is not None and current.source.cert_path == self.settings["certificate"]
        oplog.emit("acme-issued", domains=self.settings["domains"], file=self.settings["certificate"],
                   serial=current.serial if served else None, expires=current.expires if served else None)
        return served

    def _failed(self, failure):
        e = failure.value
        if isinstance(e, AcmeError):
            key, problem = e.key, e.problem
        else:
            key, problem = "tls.acme", f"{type(e).__name__}: {e}"
        self.last_error = f"{key}: {problem}"
        current = self.certificates.current
        oplog.emit("acme-failed", level="error", key=key, reason=problem,
                   serving=current.source.cert_path if current else None, retry=self.interval)
        return False

    # -- in the thread -----------------------------------------------------

    def _on_reactor(self, f, *args):
        return threads.blockingCallFromThread(self.reactor, f, *args)

    def _order(self):
        settings = self.settings
        jwk, alg = account_key(settings)
        net = client.ClientNetwork(jwk, alg=alg, verify_ssl=settings["ca_bundle"] or True, user_agent=USER_AGENT, timeout=30)
        try:
            directory = client.ClientV2.get_directory(settings["directory"], net)
        except Exception as e:
            raise AcmeError("tls.acme.directory", f"cannot fetch the ACME directory {settings['directory']}: {_why(e)}")
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(email=settings["email"], terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as e:
            # RFC 8555 7.3.1: this key has an account already; use it.
            net.account = messages.RegistrationResource(uri=e.location, body=messages.Registration())
        except Exception as e:
            raise AcmeError("tls.acme.email", f"the CA refused the account: {_why(e)}")
        key = ec.generate_private_key(ec.SECP256R1())
        csr = crypto_util.make_csr(_pem(key), settings["domains"])
        try:
            order = acme.new_order(csr)
        except Exception as e:
            raise AcmeError("tls.acme.domains", f"the CA refused the order: {_why(e)}")
        answered = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA remembers an earlier validation
                if self._stopping:
                    raise AcmeError("tls.acme", "the server is stopping")
                answered.append(self._answer(acme, jwk, authz))
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
            try:
                order = acme.poll_and_finalize(order, deadline)
            except errors.ValidationError as e:
                raise AcmeError("tls.acme.challenge", f"{settings['challenge']} validation failed: {_validation_problems(e)}")
            except errors.TimeoutError:
                raise AcmeError("tls.acme.challenge", f"no answer from the CA within {ORDER_TIMEOUT} s")
            except Exception as e:
                raise AcmeError("tls.acme", f"finalizing the order: {_why(e)}")
        finally:
            for undo in answered:
                self._on_reactor(undo)
        chain = order.fullchain_pem.encode("ascii")
        x509.load_pem_x509_certificate(chain)  # a CA that sends garbage fails here, not at reload
        # The key first: a reload between the two sees the old certificate
        # with a key that does not match, refuses it and keeps serving.
        _write_private(settings["key"], _pem(key))
        _write_private(settings["certificate"], chain)

    def _answer(self, acme, jwk, authz):
        """Provision and answer one authorization's challenge; return its undo."""
        domain = authz.body.identifier.value.lower()
        wanted = self.settings["challenge"]
        challb = next((c for c in authz.body.challenges if c.chall.typ == wanted), None)
        if challb is None:
            offered = ", ".join(c.chall.typ for c in authz.body.challenges)
            raise AcmeError("tls.acme.challenge", f"the CA offers no {wanted} for {domain} (it offers {offered})")
        key_authorization = challb.chall.key_authorization(jwk)
        if wanted == "tls-alpn-01":
            pair = challenge_certificate(domain, key_authorization)
            table, name, value = self.certificates.challenges, domain, pair
        else:
            table, name, value = self.http.tokens, challb.chall.encode("token"), key_authorization

        def provision():
            table[name] = value

        def undo():
            if table.get(name) is value:
                del table[name]

        self._on_reactor(provision)
        try:
            acme.answer_challenge(challb, challb.chall.response(jwk))
        except Exception as e:
            self._on_reactor(undo)
            raise AcmeError("tls.acme.challenge", f"the CA refused the {wanted} answer for {domain}: {_why(e)}")
        return undo


def _why(e):
    if isinstance(e, messages.Error):
        return e.detail or e.description or str(e)
    text = str(e)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"{text} (a test CA needs tls.acme.ca_bundle)"
    return text or type(e).__name__


def _validation_problems(e):
    out = []
    for authz in e.failed_authzrs:
        for challb in authz.body.challenges:
            if challb.error is not None:
                out.append(f"{authz.body.identifier.value}: {_why(challb.error)}")
    return "; ".join(out) or str(e)


def _copy(deferred):
    """A Deferred with `deferred`'s result, leaving its chain untouched."""
    copy = defer.Deferred()

    def forward(result):
        copy.callback(result)
        return result

    deferred.addBoth(forward)
    return copy
