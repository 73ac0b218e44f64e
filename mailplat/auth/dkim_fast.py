"""
dkimpy's hot spots, replaced in place by exact equivalents
(`install()`, called when mailplat's DKIM modules are imported):

- the RSA operations: dkimpy computes them with Python integers (~15-20
  ms to sign with RSA-2048, ~1 ms to verify); here OpenSSL does them
  through `cryptography` (~1.5 ms and ~0.05 ms). PKCS#1 v1.5 signatures
  are deterministic, so the bytes are the same; dkimpy still builds the
  DKIM-Signature field and the hash that is signed or checked;
- the relaxed body canonicalization (RFC 6376 3.4.4): dkimpy runs two
  regular expressions over the whole body (~8 ms per 100 KB); bytes
  methods do the same in well under 1 ms, and nothing when the body has
  no tab, no double space and no space before a line end; the relaxed
  header canonicalization (3.4.2) likewise, two regular expressions per
  field becoming a few `in` tests;
- the key record and the PEM key are parsed once per key, not per message
  (both are pure-Python ASN.1 in dkimpy);
- the regular expression that takes the b= value out of a signature
  field before it is hashed (`RE_BTAG`, ~0.3 ms a field in dkimpy);
- `rfc822_parse`: dkimpy splits the whole message into lines to find the
  header; here only the header is split and the body's line ends are
  made CRLF with one replace for LF-only text (as the server stores it),
  two when LF and CRLF are mixed, nothing when they are all CRLF.

Measured with benchmarks/smtp_deliver.py --auth-checks (docs/authentication.md).
tests/test_dkim_sign.py checks each against dkimpy's own on tricky input.
"""

import functools
import re

_installed = False
original = {}


def relaxed_body(body):
    """RFC 6376 3.4.4, as dkimpy's Relaxed.canonicalize_body computes it."""
    from dkim.canonicalization import correct_empty_body, strip_trailing_lines

    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    # A one-octet search is a memchr; the two-octet ones below take ~1 ns
    # an octet: a body without a space (base64, encoded text) skips them.
    if b" " in body:
        while b"  " in body:  # each pass halves the runs of spaces
            body = body.replace(b"    ", b" ").replace(b"  ", b" ")
        if b" \r\n" in body:  # runs are single spaces now: one before a line end at most
            body = body.replace(b" \r\n", b"\r\n")
    return correct_empty_body(strip_trailing_lines(body))


def relaxed_headers(headers):
    """RFC 6376 3.4.2, as dkimpy's Relaxed.canonicalize_headers computes it, with bytes methods."""
    return [(name.lower().rstrip(), _compress_wsp(_unfold(value)).strip() + b"\r\n") for name, value in headers]


def _unfold(value):
    # = re.sub(b"\r?\n", b"", value): each CRLF, then each LF left.
    first = value.find(b"\n")
    if first < 0:
        return value
    if first == len(value) - 1:  # an unfolded field: its line end only
        return value[:-2] if value.endswith(b"\r\n") else value[:-1]
    return value.replace(b"\r\n", b"").replace(b"\n", b"")


def _compress_wsp(value):
    # = re.sub(b"[\t ]+", b" ", value)
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    while b"  " in value:
        value = value.replace(b"    ", b" ").replace(b"  ", b" ")
    return value


# dkimpy's RE_BTAG (the b= value of a signature field, taken out before
# the field is hashed) with its folding white space, (\s*\r?\n)?\s+
# optional, written \s* (it matches the same strings), and the base64
# matched a run at a time rather than a character at a time: the same
# matches, ~6 times sooner on a 2048-bit signature.
RE_BTAG = re.compile(rb"([;\s]b\s*=)(?:\s*[a-zA-Z0-9+/=]+)*(?:\r?\n\Z)?")


def rfc822_parse(message):
    """dkimpy's rfc822_parse, splitting only the header section into lines."""
    end = _header_end(message)
    if end is None:
        return original["rfc822_parse"](message)
    headers, _ = original["rfc822_parse"](message[:end])
    body = message[end:]
    # = re.sub(b"\r?\n", b"\r\n", body), in as few passes as the line ends allow:
    if b"\r" not in body:  # LF only (as the server stores mail): one replace
        body = body.replace(b"\n", b"\r\n")
    elif body.count(b"\n") != body.count(b"\r\n"):  # some LF without its CR
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return headers, body


def _header_end(message):
    """Where the body starts (after the empty line ending the header), or None for the odd cases."""
    if message[:1] in (b"\n", b"\r"):
        return None
    # The first of LF LF and LF CR LF: the one the first line end suggests
    # is looked for first, the other only before it (a search that finds
    # nothing reads the whole message).
    line_end = message.find(b"\n")
    if line_end > 0 and message[line_end - 1 : line_end] == b"\r":
        crlf = message.find(b"\n\r\n")
        lf = message.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else len(message))
    else:
        lf = message.find(b"\n\n")
        crlf = message.find(b"\n\r\n", 0, lf + 2 if lf >= 0 else len(message))
    ends = [i for i in (lf, crlf) if i >= 0]
    if not ends:
        return None
    first = min(ends)
    return first + (2 if message[first + 1 : first + 2] == b"\n" else 3)


@functools.lru_cache(maxsize=64)
def _openssl_key(modulus, public_exponent, private_exponent, p, q, dp, dq, qinv):
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.RSAPrivateNumbers(p, q, private_exponent, dp, dq, qinv, rsa.RSAPublicNumbers(public_exponent, modulus))
    return numbers.private_key()


def rsa_sign(hash, private_key):
    """dkimpy's RSASSA_PKCS1_v1_5_sign (RFC 8017 8.2.1), the arithmetic done by OpenSSL."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    algorithm = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}.get(hash.name.lower())
    if algorithm is None:
        return original["RSASSA_PKCS1_v1_5_sign"](hash, private_key)
    k = private_key
    key = _openssl_key(k["modulus"], k["publicExponent"], k["privateExponent"], k["prime1"], k["prime2"],
                       k["exponent1"], k["exponent2"], k["coefficient"])
    return key.sign(hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


@functools.lru_cache(maxsize=1024)
def _openssl_public_key(modulus, exponent):
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def rsa_verify(hash, signature, public_key):
    """dkimpy's RSASSA_PKCS1_v1_5_verify (RFC 8017 8.2.2) through OpenSSL: True or False."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    algorithm = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}.get(hash.name.lower())
    modulus, exponent = public_key["modulus"], public_key["publicExponent"]
    length = (modulus.bit_length() + 7) // 8
    value = int.from_bytes(bytes(signature), "big")
    if algorithm is None or value >= modulus or exponent > 2**64:
        return original["RSASSA_PKCS1_v1_5_verify"](hash, signature, public_key)
    try:
        # dkimpy reads b= as a number: a signature short of its leading zeros is the same one.
        _openssl_public_key(modulus, exponent).verify(
            value.to_bytes(length, "big"), hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm)
        )
    except InvalidSignature:
        return False
    except ValueError:  # a key OpenSSL refuses (an even modulus, ...): dkimpy's arithmetic decides
        return original["RSASSA_PKCS1_v1_5_verify"](hash, signature, public_key)
    return True


def evaluate_pk(name, record):
    """dkimpy's key record parser (base64 and ASN.1 in Python), once per record rather than per signature."""
    if not isinstance(name, bytes) or not isinstance(record, bytes):
        return original["evaluate_pk"](name, record)
    return _evaluate_pk(name, record)


@functools.lru_cache(maxsize=1024)
def _evaluate_pk(name, record):
    return original["evaluate_pk"](name, record)


@functools.lru_cache(maxsize=64)
def parse_pem_private_key(data):
    """dkimpy's PEM parser (pure-Python ASN.1), once per key rather than once per message."""
    return original["parse_pem_private_key"](data)


def install():
    """Put the equivalents in place in dkimpy (once per process)."""
    global _installed
    if _installed:
        return
    import dkim
    import dkim.canonicalization

    original["relaxed_body"] = dkim.canonicalization.Relaxed.canonicalize_body
    original["relaxed_headers"] = dkim.canonicalization.Relaxed.canonicalize_headers
    original["rfc822_parse"] = dkim.rfc822_parse
    original["RSASSA_PKCS1_v1_5_sign"] = dkim.RSASSA_PKCS1_v1_5_sign
    original["parse_pem_private_key"] = dkim.parse_pem_private_key
    original["RSASSA_PKCS1_v1_5_verify"] = dkim.RSASSA_PKCS1_v1_5_verify
    original["evaluate_pk"] = dkim.evaluate_pk
    original["RE_BTAG"] = dkim.RE_BTAG
    dkim.canonicalization.Relaxed.canonicalize_body = staticmethod(relaxed_body)
    dkim.canonicalization.Relaxed.canonicalize_headers = staticmethod(relaxed_headers)
    dkim.rfc822_parse = rfc822_parse
    dkim.RSASSA_PKCS1_v1_5_sign = rsa_sign
    dkim.parse_pem_private_key = parse_pem_private_key
    dkim.RSASSA_PKCS1_v1_5_verify = rsa_verify
    dkim.evaluate_pk = evaluate_pk
    dkim.RE_BTAG = RE_BTAG
    _installed = True
