"""
URLAUTH=BINARY (RFC 5524): what URLFETCH gives for `(url BINARY
BODYPARTSTRUCTURE BODY)` once L{mailplat.imap.urlauth} has checked the URL:
the part decoded (every leaf below it, for a part that holds others), its
structure, or its bytes as stored.
"""

import re

from mailplat.imap import fetch, mime

FETCH_PARAMS = (b"BODYPARTSTRUCTURE", b"BINARY", b"BODY")  # RFC 5524 3
_CTE_FIELD = re.compile(rb"(?im)^(content-transfer-encoding:)[ \t]*[^\r\n]*(?:\r\n[ \t][^\r\n]*)*")


def binary_entity(part, rewrite=True):
    """
    A part (header and body) with the transfer encoding of every leaf below
    it undone, as RFC 5524 4's BINARY gives a part that holds others: each
    decoded leaf says `Content-Transfer-Encoding: binary` when `rewrite`.
    Everything between the parts (boundaries, preamble, epilogue) is kept.
    """
    data = part.data
    if part.truncated:
        return data[part.start : part.end]
    if part.ctype[0] == "multipart" and part.children:
        kids = part.children
        out = [part.header, data[part.body : kids[0].start]]
        for i, child in enumerate(kids):
            out.append(binary_entity(child, rewrite))
            out.append(data[child.end : kids[i + 1].start if i + 1 < len(kids) else part.end])
        return b"".join(out)
    if part.ctype == ("message", "rfc822") and part.children:
        return part.header + binary_entity(part.children[0], rewrite)
    if mime.transfer_encoding(part) in mime.IDENTITY_CTES:
        return data[part.start : part.end]
    body = mime.decoded_body(part)  # UnknownCTE for one we cannot undo
    header = part.header
    if rewrite:
        header = _CTE_FIELD.sub(lambda m: m.group(1) + b" binary", header, count=1)
    return header + body


def _binary_body(part, rewrite=True):
    """RFC 5524 4 BINARY of a section: the part's body (an attached message whole), decoded."""
    if part.ctype == ("message", "rfc822") and part.children:
        return binary_entity(part.children[0], rewrite)
    if part.ctype[0] == "multipart" and part.children and not part.truncated:
        return binary_entity(part, rewrite)[len(part.header) :]
    return mime.decoded_body(part)


def url_metadata(f, ref, params):
    """
    In a thread: RFC 5524 4 for the part a URL names -> {param: bytes or
    None}: BODY its bytes, BINARY its decoded bytes (None when its transfer
    encoding is unknown), BODYPARTSTRUCTURE its structure. Asked together
    with BINARY, the structure describes the decoded part (its sizes), as
    Dovecot gives it; None when there is no such part.
    """
    with f:
        message = fetch.parse_message(f.read())
    part = message
    if ref.section:
        numbers = ref.section.split(".")
        if not all(n.isdigit() for n in numbers):
            return None  # HEADER, TEXT, MIME: BINARY and BODYPARTSTRUCTURE are for parts
        part = message.find([int(n) for n in numbers])
        if part is None:
            return None
    out = {}
    binary = None
    if b"BINARY" in params or b"BODYPARTSTRUCTURE" in params:
        try:
            binary = _binary_body(part) if ref.section else binary_entity(part)
        except mime.UnknownCTE:
            binary = None
    if b"BODYPARTSTRUCTURE" in params:
        shown = part
        if b"BINARY" in params and binary is not None:
            entity = part.header + _binary_body(part, False) if ref.section else binary_entity(part, False)
            out[b"BODYPARTSTRUCTURE"] = decoded_structure(mime.Part(entity, 0, len(entity), part.default_type))
        else:
            out[b"BODYPARTSTRUCTURE"] = mime.bodystructure(shown, True)
    if b"BINARY" in params:
        out[b"BINARY"] = binary
    if b"BODY" in params:
        out[b"BODY"] = part.text if ref.section else part.data[part.start : part.end]
    return out


def decoded_structure(part):
    """
    BODYSTRUCTURE (extended) of a decoded part (L{binary_entity} without
    rewriting): as L{mime.bodystructure}, but a body's lines are its line
    ends, as Dovecot counts a decoded body ("hello world" has 0 lines).
    """
    kind, sub = part.ctype
    if kind == "multipart" and part.children:
        inner = b"".join(decoded_structure(c) for c in part.children)
        ext = (mime._param_list(part.params), mime._disposition(part), mime._language(part), mime.nstring(part.get("content-location")))
        return b"(" + inner + b" " + mime.nstring(sub.upper()) + b" " + b" ".join(ext) + b")"
    if kind == "multipart":
        return mime.bodystructure(part, True)
    encoding = (part.get("content-transfer-encoding") or "7bit").strip().upper()
    fields = [
        mime.nstring(kind.upper()),
        mime.nstring(sub.upper()),
        mime._param_list(part.params),
        mime.nstring(part.get("content-id")),
        mime.nstring(part.get("content-description")),
        mime.nstring(encoding),
        b"%d" % (part.end - part.body),
    ]
    lines = b"%d" % part.data.count(b"\r\n", part.body, part.end)
    if (kind, sub) == ("message", "rfc822") and part.children:
        inner = part.children[0]
        fields += [mime.envelope(inner), decoded_structure(inner), lines]
    elif kind == "text":
        fields.append(lines)
    fields += [
        mime.nstring(part.get("content-md5")),
        mime._disposition(part),
        mime._language(part),
        mime.nstring(part.get("content-location")),
    ]
    return b"(" + b" ".join(fields) + b")"


def metadata_response(values, params):
    """RFC 5524 3: "(" url-metadata *(SP url-metadata) ")", in the order BODYPARTSTRUCTURE, BINARY, BODY."""
    parts = []
    for name in FETCH_PARAMS:
        if name not in params:
            continue
        value = values.get(name)
        if name == b"BODYPARTSTRUCTURE":
            parts.append(name + b" " + value)
        elif value is None:
            parts.append(name + b" NIL")
        elif name == b"BINARY" and b"\0" in value:
            parts.append(name + b" ~{%d}\r\n" % len(value) + value)  # RFC 3516 literal8
        else:
            parts.append(name + b" {%d}\r\n" % len(value) + value)
    return b"(" + b" ".join(parts) + b")"
