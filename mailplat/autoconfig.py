"""
Client autoconfiguration on `[listen] http` (mailplat.web): a mail client
given only an address and a password finds the servers, ports and TLS to use.

    GET  /.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=A   Thunderbird (and others)
    GET  /mail/config-v1.1.xml?emailaddress=A                          Thunderbird, at autoconfig.DOMAIN
    POST /autodiscover/autodiscover.xml                                Microsoft Autodiscover (POX)
    GET  /apple/mobileconfig?emailaddress=A                            an Apple configuration profile

Only the services turned on in `[listen]` are offered, on the port each
listens on, at `[autoconfig] hostname` (default `[server] hostname`);
implicit TLS first (RFC 8314 3.3), then STARTTLS; the MX port (smtp) is
never offered for sending. Addresses outside `[domains] local` get 404.
The login is the whole address, as the realms know users.

The Autodiscover request is parsed with no DTD allowed (so no entity can
be declared, let alone expanded) and a size limit; bad XML is a 400. The
Apple profile is not signed: iOS and macOS show it as "Unverified".
"""

import plistlib
import re
import uuid
from xml.etree import ElementTree

from twisted.web import resource

# RFC 8314 3.3: implicit TLS preferred; ("type", socketType) per [listen] key.
INCOMING = (("imaps", "imap", "SSL"), ("imap", "imap", "STARTTLS"), ("pop3s", "pop3", "SSL"), ("pop3", "pop3", "STARTTLS"))
OUTGOING = (("smtps", "smtp", "SSL"), ("submission", "smtp", "STARTTLS"))

AUTODISCOVER_REQUEST = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AUTODISCOVER_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
AUTODISCOVER_OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
MAX_REQUEST = 64 * 1024  # an Autodiscover request is a few hundred bytes

_ADDRESS = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+$")


def endpoint_port(endpoint):
    """The TCP port of a strports description ("tcp:port=993:interface=::", "tcp:993"), or None."""
    parts = re.split(r"(?<!\\):", endpoint)
    kind, args = parts[0].lower(), parts[1:]
    if kind not in ("tcp", "tcp6", "ssl", "le", "lets"):
        return None
    for arg in args:
        name, eq, value = arg.partition("=")
        if eq and name == "port":
            return int(value) if value.isdigit() else None
    positional = [a for a in args if "=" not in a]
    return int(positional[0]) if positional and positional[0].isdigit() else None


class Offer:
    """What to tell clients: the host, and the (listen key, type, socketType, port) of each service."""

    def __init__(self, hostname, listen, local_domains):
        self.hostname = hostname
        self.local_domains = [d.lower() for d in local_domains]
        self.incoming, self.outgoing = [], []
        for wanted, into in ((INCOMING, self.incoming), (OUTGOING, self.outgoing)):
            for key, kind, socket_type in wanted:
                port = endpoint_port(listen[key]) if key in listen else None
                if port:
                    into.append((key, kind, socket_type, port))

    @classmethod
    def from_config(cls, config):
        return cls(config.autoconfig["hostname"] or config.hostname, config.listen, config.local_domains)

    def domain_of(self, address):
        """The local domain of a valid address, else None."""
        if not address or not _ADDRESS.match(address):
            return None
        domain = address.rsplit("@", 1)[1].lower().rstrip(".")
        return domain if domain in self.local_domains else None


def _argument(request, name):
    values = request.args.get(name.encode("ascii"), [])
    if not values:
        return None
    try:
        return values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""


def _problem(request, code, text):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return (text + "\n").encode("utf-8")


def _element(parent, tag, text=None, **attributes):
    child = ElementTree.SubElement(parent, tag, attributes)
    if text is not None:
        child.text = str(text)
    return child


def _xml(root):
    ElementTree.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="utf-8", xml_declaration=False)


class _OfferResource(resource.Resource):
    """A leaf resource answering from one L{Offer}."""

    isLeaf = True

    def __init__(self, offer):
        super().__init__()
        self.offer = offer


class ThunderbirdConfig(_OfferResource):
    """config-v1.1.xml (the Thunderbird autoconfig format), for `?emailaddress=` or every local domain."""

    def render_GET(self, request):
        offer = self.offer
        address = _argument(request, "emailaddress")
        if address is not None:
            domain = offer.domain_of(address)
            if domain is None:
                if not _ADDRESS.match(address or ""):
                    return _problem(request, 400, "emailaddress: not an address")
                return _problem(request, 404, "no such domain here")
            domains, username = [domain], address
        else:
            domains, username = offer.local_domains, "%EMAILADDRESS%"
        if not domains:
            return _problem(request, 404, "no local domains")
        root = ElementTree.Element("clientConfig", version="1.1")
        provider = _element(root, "emailProvider", id=domains[0])
        for domain in domains:
            _element(provider, "domain", domain)
        _element(provider, "displayName", domains[0])
        _element(provider, "displayShortName", domains[0])
        for tag, services in (("incomingServer", offer.incoming), ("outgoingServer", offer.outgoing)):
            for _, kind, socket_type, port in services:
                server = _element(provider, tag, type=kind)
                _element(server, "hostname", offer.hostname)
                _element(server, "port", port)
                _element(server, "socketType", socket_type)
                _element(server, "authentication", "password-cleartext")
                _element(server, "username", username)
        request.setHeader(b"Content-Type", b"application/xml; charset=utf-8")
        return _xml(root)


class BadRequest(ValueError):
    pass


def parse_autodiscover(body):
    """
    The EMailAddress of an Autodiscover POX request.

    @raise BadRequest: not XML, a DTD (no entities, ever), too big, no address.
    """
    if len(body) > MAX_REQUEST:
        raise BadRequest("request too large")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise BadRequest("a DTD is not allowed")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as e:
        raise BadRequest(f"not XML: {e}")
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "EMailAddress":
            address = (element.text or "").strip()
            if address:
                return address
    raise BadRequest("no EMailAddress in the request")


class Autodiscover(_OfferResource):
    """Microsoft Autodiscover, the plain-old-XML protocol Outlook speaks (POST only)."""

    def render_GET(self, request):
        request.setHeader(b"Allow", b"POST")
        return _problem(request, 405, "POST the Autodiscover request XML")

    def render_POST(self, request):
        body = request.content.read(MAX_REQUEST + 1)
        try:
            address = parse_autodiscover(body)
        except BadRequest as e:
            return _problem(request, 400, f"bad Autodiscover request: {e}")
        if self.offer.domain_of(address) is None:
            if not _ADDRESS.match(address):
                return _problem(request, 400, "bad Autodiscover request: EMailAddress is not an address")
            return _problem(request, 404, "no such domain here")
        ElementTree.register_namespace("", AUTODISCOVER_RESPONSE)
        root = ElementTree.Element(f"{{{AUTODISCOVER_RESPONSE}}}Autodiscover")
        response = _element(root, f"{{{AUTODISCOVER_OUTLOOK}}}Response")
        account = _element(response, f"{{{AUTODISCOVER_OUTLOOK}}}Account")
        o = AUTODISCOVER_OUTLOOK
        _element(account, f"{{{o}}}AccountType", "email")
        _element(account, f"{{{o}}}Action", "settings")
        for _, kind, socket_type, port in self.offer.incoming + self.offer.outgoing:
            protocol = _element(account, f"{{{o}}}Protocol")
            _element(protocol, f"{{{o}}}Type", {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP"}[kind])
            _element(protocol, f"{{{o}}}Server", self.offer.hostname)
            _element(protocol, f"{{{o}}}Port", port)
            _element(protocol, f"{{{o}}}LoginName", address)
            _element(protocol, f"{{{o}}}DomainRequired", "off")
            _element(protocol, f"{{{o}}}SPA", "off")
            _element(protocol, f"{{{o}}}SSL", "on")
            _element(protocol, f"{{{o}}}Encryption", "SSL" if socket_type == "SSL" else "TLS")
            _element(protocol, f"{{{o}}}AuthRequired", "on")
            if kind == "smtp":
                _element(protocol, f"{{{o}}}UsePOPAuth", "off")
                _element(protocol, f"{{{o}}}SMTPLast", "off")
        request.setHeader(b"Content-Type", b"application/xml; charset=utf-8")
        return _xml(root)


class AppleProfile(_OfferResource):
    """A .mobileconfig with one com.apple.mail.managed payload for `?emailaddress=` (unsigned)."""

    def render_GET(self, request):
        offer = self.offer
        address = _argument(request, "emailaddress")
        if not address or not _ADDRESS.match(address):
            return _problem(request, 400, "emailaddress: give the address to configure (?emailaddress=user@domain)")
        domain = offer.domain_of(address)
        if domain is None:
            return _problem(request, 404, "no such domain here")
        incoming = offer.incoming[0] if offer.incoming else None
        outgoing = offer.outgoing[0] if offer.outgoing else None
        if incoming is None or outgoing is None:
            return _problem(request, 404, "this server offers no IMAP/POP3 and submission service to configure")
        # The same UUIDs each time: installing the profile again replaces it.
        ids = ".".join(reversed(offer.hostname.split(".")))
        account = {
            "PayloadType": "com.apple.mail.managed",
            "PayloadVersion": 1,
            "PayloadIdentifier": f"{ids}.mailplat.email.{address}",
            "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailplat:mail:{address}")).upper(),
            "PayloadDisplayName": address,
            "EmailAccountDescription": address,
            "EmailAccountType": "EmailTypeIMAP" if incoming[1] == "imap" else "EmailTypePOP",
            "EmailAddress": address,
            "IncomingMailServerAuthentication": "EmailAuthPassword",
            "IncomingMailServerHostName": offer.hostname,
            "IncomingMailServerPortNumber": incoming[3],
            "IncomingMailServerUseSSL": True,
            "IncomingMailServerUsername": address,
            "OutgoingMailServerAuthentication": "EmailAuthPassword",
            "OutgoingMailServerHostName": offer.hostname,
            "OutgoingMailServerPortNumber": outgoing[3],
            "OutgoingMailServerUseSSL": True,
            "OutgoingMailServerUsername": address,
            "OutgoingPasswordSameAsIncomingPassword": True,
        }
        profile = {
            "PayloadType": "Configuration",
            "PayloadVersion": 1,
            "PayloadIdentifier": f"{ids}.mailplat.{address}",
            "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailplat:profile:{address}")).upper(),
            "PayloadDisplayName": f"Mail: {address}",
            "PayloadDescription": f"The mail account {address} on {offer.hostname}",
            "PayloadRemovalDisallowed": False,
            "PayloadContent": [account],
        }
        request.setHeader(b"Content-Type", b"application/x-apple-aspen-config")
        filename = re.sub(r"[^A-Za-z0-9.@_-]", "_", address)
        request.setHeader(b"Content-Disposition", f'attachment; filename="{filename}.mobileconfig"'.encode("ascii"))
        return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


# Where each page is mounted on the [listen] http root.
PATHS = (
    ("/.well-known/autoconfig/mail/config-v1.1.xml", ThunderbirdConfig),
    ("/mail/config-v1.1.xml", ThunderbirdConfig),
    ("/autodiscover/autodiscover.xml", Autodiscover),
    ("/Autodiscover/Autodiscover.xml", Autodiscover),
    ("/apple/mobileconfig", AppleProfile),
)


def mount(web, config):
    """Put the autoconfig pages on `web` (a L{mailplat.web.WebRoot}) unless `[autoconfig] enabled = false`."""
    if not config.autoconfig["enabled"]:
        return None
    offer = Offer.from_config(config)
    for path, page in PATHS:
        web.mount(path, page(offer))
    return offer
