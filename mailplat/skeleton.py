"""
`mailplat new-plugin KIND NAME [--dir D]`: the skeleton of a plugin package
that works as generated: a module holding the plugin object, a pyproject
declaring it in the entry-point group `mailplat.plugins` (so `pip install`
is all an operator does), and a trial test running the conformance kit.

    mailplat-NAME/
        pyproject.toml
        README.md
        mailplat_NAME/__init__.py
        mailplat_NAME/plugin.py
        mailplat_NAME/test_plugin.py     python -m twisted.trial mailplat_NAME
"""

import os
import re

KINDS = ("realm", "delivery", "check")

_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")

PYPROJECT = '''[build-system]
requires = ["setuptools>=61", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "mailplat-{name}"
version = "0.1.0"
description = "{description}"
requires-python = ">=3.11"
dependencies = ["mailplat"]

# How mailplat finds the plugin once the package is installed.
[project.entry-points."mailplat.plugins"]
{name} = "{module}.plugin"

[tool.setuptools]
packages = ["{module}"]
'''

README = '''# mailplat-{name}

{description}

    pip install .                         # then `mailplat plugins` lists it
    mailplat plugins --describe {name}    # the keys of its table
    python -m twisted.trial {module}      # the conformance kit

Configure it:

```toml
{config}
```
'''

REALM = '''"""
{name}: a realm plugin for mailplat. Users and their password hashes in a
JSON file, {{"alice@example.test": "{{ARGON2ID}}$argon2id$..."}}, read again
when it changes. Replace _current() with your own lookup (a database, an
API); the methods may stay `async def`.
"""

import json
import os

from zope.interface import implementer

from mailplat.interfaces import IRealmBackend, TemporaryFailure
from mailplat.plugin import BackendPlugin, Key
from mailplat.realm import passwords


@implementer(IRealmBackend)
class Realm:
    def __init__(self, path, log=None):
        self.path = path
        self.log = log
        self._users, self._stamp = {{}}, None

    def _current(self):
        """The users, read again when the file changed (a stat per call: cheap)."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8") as f:
                    data = json.load(f)
                self._users = {{a.lower(): h for a, h in data.items()}}
                self._stamp = stamp
        except FileNotFoundError:
            self._users, self._stamp = {{}}, None
        except (OSError, ValueError) as e:
            # Unreadable or half written: "try again", never "no such user".
            # The text goes to the log; clients get a generic one.
            raise TemporaryFailure(f"cannot read {{self.path}}: {{e}}")
        return self._users

    async def lookup(self, address):
        address = address.lower()
        return address if address in self._current() else None

    async def check_password(self, address, password):
        address = address.lower()
        stored = self._current().get(address)
        # Hashing is slow on purpose: verify_later runs it in a thread pool.
        # Unknown users are checked against a dummy hash: the same timing.
        ok = await passwords.verify_later(stored or passwords.dummy_hash(), password)
        return address if ok and stored else None

    async def list_users(self):
        return sorted(self._current())


def _build(section, context):
    return Realm(section["users_file"], log=plugin.log)


plugin = BackendPlugin(
    "realm", "{name}", "{description}", _build,
    keys={{"users_file": Key(str, required=True, doc="the JSON users file, e.g. 'etc/users.json'")}},
)
'''

REALM_TEST = '''import json

from twisted.trial import unittest

from mailplat.testing import RealmConformance
from {module}.plugin import plugin


class Conforms(RealmConformance, unittest.TestCase):
    def make_realm(self, users):
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(users, f)
        return plugin.from_config({{"backend": "{name}", "users_file": path}}, None)

    def make_unavailable_realm(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("{{half written")
        return plugin.from_config({{"backend": "{name}", "users_file": path}}, None)
'''

REALM_CONFIG = '''[realm]
backend = "{name}"
users_file = "/etc/mailplat/users.json"'''

CHECK = '''"""
{name}: a check plugin for mailplat. Refuses messages whose Subject
contains one of the configured words; change data() (or add connect,
helo, mail, rcpt) to judge what you need.
"""

from email.parser import BytesHeaderParser
from email.policy import default as default_policy

from mailplat.checks import Check, Verdict
from mailplat.plugin import BackendPlugin, Key

HEADER_LIMIT = 64 * 1024


class SubjectCheck(Check):
    name = "{name}"

    def __init__(self, words, log=None):
        self.words = [w.lower() for w in words]
        self.log = log

    async def data(self, session, envelope, source):
        with source.open() as f:
            head = f.read(HEADER_LIMIT)
        end = head.find(b"\\n\\n")
        message = BytesHeaderParser(policy=default_policy).parsebytes(head if end < 0 else head[: end + 1])
        subject = str(message.get("Subject", "")).lower()
        if any(word in subject for word in self.words):
            # A Verdict's text is sent to the client: say nothing private.
            return Verdict.reject("message refused by a content rule", 550, "5.7.1")
        return None


def _build(section, context):
    words = section["words"]
    if not all(isinstance(w, str) and w for w in words):
        raise ValueError(f"words: a list of words is required, not {{words!r}}")
    return SubjectCheck(words, log=plugin.log)


plugin = BackendPlugin(
    "check", "{name}", "{description}", _build,
    keys={{"words": Key(list, default=["viagra"], doc="refuse a Subject containing one of these (any case)")}},
)
'''

CHECK_TEST = '''from twisted.trial import unittest

from mailplat.interfaces import Envelope, Verdict
from mailplat.testing import CheckConformance, message_source
from {module}.plugin import plugin


def message(subject):
    return message_source(f"From: a@remote.test\\nSubject: {{subject}}\\n\\nhello\\n".encode())


class Conforms(CheckConformance, unittest.TestCase):
    cases = [
        ("data", (Envelope("a@remote.test"), message("Cheap viagra")), Verdict.REJECT),
        ("data", (Envelope("a@remote.test"), message("Lunch?")), Verdict.NEXT),
    ]

    def make_check(self):
        return plugin.from_config({{"words": ["viagra"]}}, None)
'''

CHECK_CONFIG = '''[checks]
enabled = ["{name}"]

[checks.{name}]
words = ["viagra"]'''

DELIVERY = '''"""
{name}: a local delivery plugin for mailplat. Each message is written as
an .eml file into DIRECTORY/ADDRESS/FOLDER/ (fsynced, then renamed, then
the directory fsynced: durable before the server answers 250). Replace
_write() with your own (an API, another store); the methods may stay
`async def`.
"""

import os
import uuid

from twisted.internet import threads
from zope.interface import implementer

from mailplat.interfaces import IDeliveryAgent, IDeliveryTransaction, PermanentFailure, TemporaryFailure
from mailplat.plugin import BackendPlugin, Key


def _write(directory, data):
    os.makedirs(directory, exist_ok=True)
    name = uuid.uuid4().hex
    tmp = os.path.join(directory, f".{{name}}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    final = os.path.join(directory, f"{{name}}.eml")
    os.rename(tmp, final)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return final


def _remove(paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@implementer(IDeliveryAgent)
class Delivery:
    def __init__(self, directory, resolver, log=None):
        self.directory = directory
        self.resolver = resolver  # the server's: plus tags, users, postmaster@
        self.log = log

    def start(self, envelope):
        return Transaction(self, envelope)

    def folder_path(self, address, folder):
        return os.path.join(self.directory, address, folder or "INBOX")


@implementer(IDeliveryTransaction)
class Transaction:
    def __init__(self, agent, envelope):
        self.agent = agent
        self.envelope = envelope
        self.recipients = []  # (address, folder or None)

    async def add_recipient(self, address):
        # NoSuchUser (a PermanentFailure) for nobody; postmaster@ always exists.
        mailbox = await self.agent.resolver.mailbox(address)
        if mailbox not in self.recipients:
            self.recipients.append(mailbox)

    async def deliver(self, source):
        if not self.recipients:
            raise PermanentFailure("no valid recipients", "5.5.1", 554)
        with source.open() as f:
            data = f"Return-Path: <{{self.envelope.sender}}>\\n".encode() + f.read()
        written = []
        try:
            for address, tag in self.recipients:
                # A check's folder (Junk) wins over a plus tag's.
                folder = self.envelope.folder or tag
                written.append(await threads.deferToThread(_write, self.agent.folder_path(address, folder), data))
        except OSError as e:
            await threads.deferToThread(_remove, written)  # all or nothing
            raise TemporaryFailure(f"cannot write: {{e}}")
        return written

    def abort(self):
        self.recipients = []


def _build(section, context):
    own = section.get("{name}", {{}})
    return Delivery(own["directory"], context.resolver, log=plugin.log)


plugin = BackendPlugin(
    "delivery", "{name}", "{description}", _build,
    # A delivery plugin receives the whole [delivery] table: its own keys go in [delivery.{name}].
    keys={{"{name}": Key(dict, required=True, doc="[delivery.{name}]", keys={{
        "directory": Key(str, required=True, doc="where the .eml files go, e.g. '/var/mail/eml'"),
    }})}},
)
'''

DELIVERY_TEST = '''import glob
import os

from twisted.trial import unittest

from mailplat.testing import DeliveryConformance, FakeRealm, resolver
from {module}.plugin import Delivery


class Conforms(DeliveryConformance, unittest.TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.realm = FakeRealm({{u: "pw" for u in self.users}})

    def make_agent(self):
        return Delivery(self.directory, resolver(self.realm))

    def delivered_in(self, address, folder):
        found = []
        for path in sorted(glob.glob(os.path.join(self.directory, address, folder, "*.eml"))):
            with open(path, "rb") as f:
                found.append(f.read())
        return found

    def delivered(self, address):
        return self.delivered_in(address, "INBOX")

    def break_mailbox(self, agent, address):
        os.makedirs(self.directory, exist_ok=True)
        open(os.path.join(self.directory, address), "w").close()  # a file where a folder should be

    def make_unavailable_agent(self):
        blocker = os.path.abspath(self.mktemp())
        open(blocker, "w").close()
        return Delivery(os.path.join(blocker, "mail"), resolver(self.realm))
'''

DELIVERY_CONFIG = '''[delivery]
local = "{name}"

[delivery.{name}]
directory = "/var/mail/eml"'''

TEMPLATES = {
    "realm": (REALM, REALM_TEST, REALM_CONFIG, "Users in a JSON file"),
    "check": (CHECK, CHECK_TEST, CHECK_CONFIG, "Refuse messages whose Subject has a word of a list"),
    "delivery": (DELIVERY, DELIVERY_TEST, DELIVERY_CONFIG, "Deliver local mail as .eml files"),
}


def write(kind, name, directory="."):
    """
    Write the skeleton of a `kind` plugin called `name` under `directory`.

    @return: the paths written.
    @raise ValueError: for an unknown kind, a name that is not
        lower-case letters, digits and dashes, or a folder that exists.
    """
    if kind not in TEMPLATES:
        raise ValueError(f"no skeleton for kind {kind!r}; choose one of {', '.join(TEMPLATES)}")
    if not _NAME.match(name):
        raise ValueError(f"{name!r}: a plugin name is lower-case letters, digits and dashes, e.g. myrealm")
    module = "mailplat_" + name.replace("-", "_")
    code, test, config, description = TEMPLATES[kind]
    top = os.path.join(directory, f"mailplat-{name}")
    if os.path.exists(top):
        raise ValueError(f"{top} exists already")
    values = dict(name=name, module=module, description=description)
    files = {
        "pyproject.toml": PYPROJECT.format(**values),
        "README.md": README.format(config=config.format(**values), **values),
        os.path.join(module, "__init__.py"): f'"""mailplat-{name}: {description} (a mailplat {kind} plugin)."""\n',
        os.path.join(module, "plugin.py"): code.format(**values),
        os.path.join(module, "test_plugin.py"): test.format(**values),
    }
    written = []
    for relative, text in files.items():
        path = os.path.join(top, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written
