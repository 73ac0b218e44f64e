"""
mailplat.auth.dkim_fast: each replacement gives what dkimpy's own code
gives, on input chosen to reach the corners (tabs, runs of spaces, spaces
before line ends, lone CR and LF, empty bodies, no header end), and a
signature made through OpenSSL is byte for byte dkimpy's.
"""

import base64
import hashlib
import random

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.trial import unittest

from mailplat.auth import dkim_fast

dkim_fast.install()

BODIES = [
    b"", b"\r\n", b"\r\n\r\n\r\n", b"a\r\n", b"a", b"a \r\n", b"a\t\r\n", b"a  b\r\n", b"a \t \t b \r\n\r\n",
    b" leading\r\n", b"\t\ttabs\t\r\n", b"x" * 76 + b"\r\n" * 3, b"one\r\ntwo  \r\n  three\r\n\r\n",
    b"lone\rCR \r\n", b"    " * 50 + b"end\r\n", b"a" + b" " * 1025 + b"b\r\n", b" \r\n \r\n",
]

MESSAGES = [
    b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n",
    b"From: a@example.org\nSubject: x\n\nbody\nwith LF\n",
    b"From: a@example.org\r\nSubject: folded\r\n\tline\r\n\r\nbody\r\nmixed\nends\r\n",
    b"From: a@example.org\n\r\nbody after LF CRLF\n",
    b"From: a@example.org\r\n\r\n",
    b"From: a@example.org\r\n",
    b"\r\nno header\r\n",
    b"From: a@example.org\r\n\r\n\r\nblank first body line\r\n",
    b"From a@example.org Mon Jan  1 00:00:00 2026\r\nFrom: a@example.org\r\n\r\nmbox\r\n",
    b"From: a@example.org\r\nX: y\r\n\r\nlone\rCR\r\r\nand\n\nLF\r\n",
]


def key_pem():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der)


PEM, PUBLIC = key_pem()


class SameAsDkimpy(unittest.TestCase):
    def test_relaxed_body_canonicalization(self):
        for body in BODIES:
            self.assertEqual(dkim_fast.relaxed_body(body), dkim_fast.original["relaxed_body"](body), body)

    def test_message_parsing(self):
        for message in MESSAGES + [m.replace(b"\r\n", b"\n") for m in MESSAGES]:
            self.assertEqual(dkim.rfc822_parse(message), dkim_fast.original["rfc822_parse"](message), message)

    def test_a_message_parses_as_stored_as_it_does_made_crlf(self):
        # dkim_verify hands dkimpy the message with the server's LF line ends.
        for message in MESSAGES:
            stored = message.replace(b"\r\n", b"\n")
            self.assertEqual(dkim.rfc822_parse(stored), dkim_fast.original["rfc822_parse"](_crlf(stored)), stored)

    def test_relaxed_header_canonicalization(self):
        values = [b" x\r\n", b"a\r\n\tb\r\n", b"  a \t b\t\r\n", b"a\n b\n", b"a\r\r\n\nb\r\n", b"\t\r\n",
                  b"lone\rCR  \r\n", b"", b"x" + b" " * 9 + b"\t\ty\r\n", b"lf only\n", b"cr cr\r\r\n", b"\n"]
        headers = [[name, value] for name in (b"From", b"X-Odd \t", b"subject") for value in values]
        self.assertEqual(dkim_fast.relaxed_headers(headers), dkim_fast.original["relaxed_headers"](headers))

    def test_the_b_tag_is_taken_out_alike(self):
        rng = random.Random(7)  # the same cases each run
        pieces = [b" ", b";", b"b", b"=", b"\r", b"\n", b"\t", b"A", b"0", b"+", b"/", b"\x0b", b"x", b"b=", b"; b=", b"\r\n "]
        cases = [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) for _ in range(20000)]
        cases.append(dkim.sign(MESSAGES[0], b"s", b"example.org", PEM, include_headers=[b"from"]).split(b":", 1)[1])
        for value in cases:
            self.assertEqual(dkim_fast.RE_BTAG.sub(b"\\1", value), dkim_fast.original["RE_BTAG"].sub(b"\\1", value), value)

    def test_a_body_without_spaces_is_canonicalized_alike(self):
        for body in (b"x" * 76 + b"\r\n", b"a\tb\r\n\r\n", b"base64+/=\r\n" * 10):
            self.assertEqual(dkim_fast.relaxed_body(body), dkim_fast.original["relaxed_body"](body), body)

    def test_rsa_signature_bytes(self):
        pk = dkim_fast.original["parse_pem_private_key"](PEM)
        for text in (b"", b"hello", b"x" * 1000):
            ours = dkim_fast.rsa_sign(_Hash(text), pk)
            theirs = dkim_fast.original["RSASSA_PKCS1_v1_5_sign"](_Hash(text), pk)
            self.assertEqual(bytes(ours), bytes(theirs))

    def test_rsa_verification(self):
        pk = dkim_fast.original["parse_pem_private_key"](PEM)
        public = {"modulus": pk["modulus"], "publicExponent": pk["publicExponent"]}
        signature = bytes(dkim_fast.original["RSASSA_PKCS1_v1_5_sign"](_Hash(b"m"), pk))
        self.assertTrue(dkim_fast.rsa_verify(_Hash(b"m"), signature, public))
        self.assertFalse(dkim_fast.rsa_verify(_Hash(b"other"), signature, public))
        broken = bytes([signature[0] ^ 1]) + signature[1:]
        self.assertEqual(dkim_fast.rsa_verify(_Hash(b"m"), broken, public),
                         dkim_fast.original["RSASSA_PKCS1_v1_5_verify"](_Hash(b"m"), broken, public))

    def test_a_whole_signature_verifies_with_dkimpy_as_shipped(self):
        message = MESSAGES[2]
        signature = dkim.sign(message, b"s", b"example.org", PEM, include_headers=[b"from", b"subject"],
                              canonicalize=(b"relaxed", b"relaxed"))
        record = b"v=DKIM1; k=rsa; p=" + PUBLIC
        saved = {name: getattr(dkim, name) for name in ("rfc822_parse", "RSASSA_PKCS1_v1_5_verify", "evaluate_pk", "RE_BTAG")}
        saved_body = dkim.canonicalization.Relaxed.canonicalize_body
        saved_headers = dkim.canonicalization.Relaxed.canonicalize_headers
        try:
            dkim.rfc822_parse = dkim_fast.original["rfc822_parse"]
            dkim.RSASSA_PKCS1_v1_5_verify = dkim_fast.original["RSASSA_PKCS1_v1_5_verify"]
            dkim.evaluate_pk = dkim_fast.original["evaluate_pk"]
            dkim.RE_BTAG = dkim_fast.original["RE_BTAG"]
            dkim.canonicalization.Relaxed.canonicalize_body = staticmethod(dkim_fast.original["relaxed_body"])
            dkim.canonicalization.Relaxed.canonicalize_headers = staticmethod(dkim_fast.original["relaxed_headers"])
            self.assertTrue(dkim.verify(signature + message, dnsfunc=lambda *a, **k: record))
        finally:
            for name, value in saved.items():
                setattr(dkim, name, value)
            dkim.canonicalization.Relaxed.canonicalize_body = saved_body
            dkim.canonicalization.Relaxed.canonicalize_headers = saved_headers


def _crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class _Hash:
    """What dkimpy hands the RSA functions: a hash object with a name."""

    name = "sha256"

    def __init__(self, data):
        self._digest = hashlib.sha256(data).digest()

    def digest(self):
        return self._digest
