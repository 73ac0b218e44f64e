"""
Recipient resolution: what an address given at RCPT time means.

In order: an alias (expanded recursively, loops detected), a plus-tagged
address (`alice+lists@` is alice, into her folder `lists` when it exists),
a user of the realm, `postmaster@` of any local domain (RFC 5321 4.5.1:
always accepted; kept in that address's mailbox until someone reads it),
or a remote address (left to relay).
"""

from twisted.internet import defer

from mailplat.calls import call_backend
from mailplat.interfaces import NoSuchUser, PermanentFailure
from mailplat.store import boundary

MAX_DEPTH = 20


class Target:
    """One final destination of a recipient."""

    __slots__ = ("address", "folder", "remote")

    def __init__(self, address, folder=None, remote=False):
        self.address = address
        self.folder = folder
        self.remote = remote

    def __eq__(self, other):
        return isinstance(other, Target) and (self.address, self.folder, self.remote) == (
            other.address,
            other.folder,
            other.remote,
        )

    def __hash__(self):
        return hash((self.address, self.folder, self.remote))

    def __repr__(self):
        where = "remote" if self.remote else (self.folder or "INBOX")
        return f"<Target {self.address} {where}>"


class AddressResolver:
    def __init__(self, realm, aliases, local_domains, delimiter="+"):
        self.realm = realm
        self.aliases = aliases
        self.local_domains = {d.lower() for d in local_domains}
        self.delimiter = delimiter

    def is_local(self, address):
        return address.rpartition("@")[2].lower() in self.local_domains

    def split_tag(self, address):
        """
        'alice+lists@d' -> ('alice@d', 'lists'); no tag -> (address, None).
        A tag that can name no folder (`alice+/@`, `alice+../bob@`: see
        L{boundary.tag_folder}) is still alice, into her INBOX: the store
        checks again, this keeps such a tag from reaching it at all.
        """
        local, _, domain = address.rpartition("@")
        if self.delimiter and self.delimiter in local:
            base, _, tag = local.partition(self.delimiter)
            if base and tag:
                return f"{base}@{domain}", boundary.tag_folder(tag)
        return address, None

    @defer.inlineCallbacks
    def resolve(self, address):
        """
        @return: Deferred firing with a list of L{Target}s (no duplicates);
            fails with L{NoSuchUser}, or L{PermanentFailure} 5.4.6 for an
            alias loop that reaches nobody.
        """
        found, loops = [], []
        yield self._expand(address.lower(), (), found, loops)
        unique = list(dict.fromkeys(found))
        if unique:
            return unique
        if loops:
            chain = " -> ".join(loops[0])
            raise PermanentFailure(f"alias loop: {chain}", "5.4.6", 550)
        raise NoSuchUser(address)

    @defer.inlineCallbacks
    def _expand(self, address, path, found, loops):
        if not self.is_local(address):
            found.append(Target(address, remote=True))
            return
        if address in path or len(path) > MAX_DEPTH:
            loops.append(path + (address,))
            # A self-reference (`a: a, b`) still means "and the user a".
            user = yield call_backend(self.realm.lookup, address)
            if user is not None:
                found.append(Target(user))
            return
        base, tag = self.split_tag(address)
        targets = yield call_backend(self.aliases.targets, address)
        if targets is None and tag:
            targets = yield call_backend(self.aliases.targets, base)
        if targets:
            for target in targets:
                yield self._expand(target, path + (address,), found, loops)
            return
        user = yield call_backend(self.realm.lookup, base)
        if user is not None:
            found.append(Target(user, folder=tag))
            return
        if base.partition("@")[0] == "postmaster":
            found.append(Target(base))
            return
        if path:
            return  # an alias naming a missing user: skip that target only
        raise NoSuchUser(address)

    @defer.inlineCallbacks
    def mailbox(self, address):
        """
        A final mailbox address (no alias expansion) -> (user, folder):
        plus tag split off, the user looked up; postmaster@ always exists.
        Fails with L{NoSuchUser}.
        """
        base, tag = self.split_tag(address.lower())
        user = yield call_backend(self.realm.lookup, base)
        if user is not None:
            return user, tag
        if base.partition("@")[0] == "postmaster" and self.is_local(base):
            return base, None
        raise NoSuchUser(address)

    def tagged(self, target):
        """A local Target as one address again (`alice+lists@d` for folder lists)."""
        if not target.folder or not self.delimiter:
            return target.address
        local, _, domain = target.address.rpartition("@")
        return f"{local}{self.delimiter}{target.folder}@{domain}"

    @defer.inlineCallbacks
    def owns(self, user, sender):
        """
        May the authenticated `user` send as `sender`? Yes for their own
        address (with any plus tag) and for aliases that reach them.
        """
        sender = sender.lower()
        if self.split_tag(sender)[0] == user or sender == user:
            return True
        if not self.is_local(sender):
            return False
        try:
            targets = yield self.resolve(sender)
        except (NoSuchUser, PermanentFailure):
            return False
        return any(t.address == user and not t.remote for t in targets)
