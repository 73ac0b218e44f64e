"""
Commands about folders (RFC 3501 6.3): SELECT, EXAMINE, CREATE, DELETE,
RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (with RFC 5819 RETURN (STATUS ...)),
LSUB, STATUS, APPEND, NAMESPACE, ENABLE. A mixin of
L{mailplat.imap.server.MailplatIMAP}; it talks to the user's
L{IMailAccount} only.
"""

import calendar
import re
from array import array

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import imap4

from mailplat.imap.parser import BadCommand, InvalidName, canonical_name, encode_mailbox
from mailplat.imap.session import SELECTED, SelectedFolder, flags_responses, recent_count, unclaimed
from mailplat.store.boundary import RefusedName
from mailplat.store.source import BytesSource

log = Logger()

STATUS_ITEMS = (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN")
_DATE_TIME = re.compile(
    rb"^([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$"
)
_MONTHS = {m: i + 1 for i, m in enumerate(b"jan feb mar apr may jun jul aug sep oct nov dec".split())}


def parse_date_time(raw):
    """APPEND's date-time (RFC 3501 9) -> seconds since the epoch."""
    m = _DATE_TIME.match(raw)
    if not m or m.group(2).lower() not in _MONTHS:
        raise BadCommand("bad date-time; use \"dd-Mon-yyyy hh:mm:ss +zzzz\"")
    day, mon, year = int(m.group(1)), _MONTHS[m.group(2).lower()], int(m.group(3))
    hh, mm, ss = int(m.group(4)), int(m.group(5)), int(m.group(6))
    offset = (int(m.group(8)) * 60 + int(m.group(9))) * 60
    if m.group(7) == b"-":
        offset = -offset
    try:
        return calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0)) - offset
    except (ValueError, OverflowError):
        raise BadCommand("bad date-time")


def pattern_regex(pattern, separator):
    """LIST wildcards (* and %) -> a case-sensitive regex for whole names."""
    twisted_re = imap4.wildcardToRegexp(pattern, separator)
    return re.compile(twisted_re.pattern)


def _status_items(reader):
    """STATUS's item list (RFC 3501 6.3.10), checked."""
    items = reader.paren_list(lambda: reader.atom("a status item").upper())
    for item in items:
        if item not in STATUS_ITEMS:
            raise BadCommand(f"unknown STATUS item {item.decode('ascii', 'replace')}")
    return items


def _status_response(name, folder, msgs, items):
    """The untagged STATUS response (without '* ') for a synced folder."""
    values = {
        b"MESSAGES": len(msgs),
        # RFC 3501 6.3.10: counted, not claimed.
        b"RECENT": recent_count(folder),
        b"UIDNEXT": folder.uidnext,
        b"UIDVALIDITY": folder.uidvalidity,
        b"UNSEEN": sum(1 for m in msgs if "\\Seen" not in m.flags),
    }
    body = b" ".join(b"%s %d" % (i, values[i]) for i in items)
    return b"STATUS " + encode_mailbox(name) + b" (" + body + b")"


def _return_option(reader):
    """
    One LIST return option (RFC 5258 3) -> (name, STATUS items or None).
    RFC 5819 STATUS is acted on; the others (CHILDREN, SPECIAL-USE, ...)
    change nothing: those attributes are always sent.
    """
    name = reader.atom("a return option").upper()
    if name == b"STATUS":
        reader.space()
        return name, _status_items(reader)
    return name, None


def _reference_and_pattern(reader):
    """
    LIST/LSUB's reference and pattern; the pattern is None when either is not
    valid modified UTF-7 (RFC 3501 5.1.3): it matches no mailbox, an OK.
    """
    valid = True
    try:
        ref = reader.mailbox()
    except InvalidName:
        ref, valid = "", False
    reader.space()
    try:
        pattern = reader.list_mailbox()
    except InvalidName:
        pattern, valid = "", False
    return ref, pattern if valid else None


def _unsubscribed_parents(subscribed, sep, regex):
    """
    RFC 3501 6.3.9: LSUB with "%" lists a subscribed mailbox's parent that
    the pattern matches and that is not subscribed itself, as \\Noselect,
    so that a client walking the tree level by level finds the child.
    """
    have = set(subscribed)
    parents = set()
    for name in subscribed:
        parts = name.split(sep)
        for i in range(1, len(parts)):
            parent = sep.join(parts[:i])
            if parent not in have and regex.fullmatch(parent):
                parents.add(parent)
    return parents


def _attributes(attrs):
    return b"(" + b" ".join(a.encode("ascii") for a in sorted(attrs)) + b")"


class MailboxCommands:
    # --- SELECT / EXAMINE (RFC 3501 6.3.1, 6.3.2) ---------------------------

    def cmd_SELECT(self, tag, reader):
        return self._select(tag, reader, readonly=False)

    def cmd_EXAMINE(self, tag, reader):
        return self._select(tag, reader, readonly=True)

    def _select(self, tag, reader, readonly):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.end()
        # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected.
        self._deselect()
        d = defer.maybeDeferred(self.account.folder, name)

        def opened(folder):
            return defer.maybeDeferred(folder.sync).addCallback(lambda msgs: (folder, msgs))

        def selected(result):
            folder, msgs = result
            if self._closed:
                return
            sel = SelectedFolder(folder, readonly)
            sel.uids = array("I", (m.uid for m in msgs))
            if readonly:
                # RFC 3501 6.3.2: EXAMINE shows \Recent but must not take it
                # away from the session that will SELECT.
                sel.recent = set(unclaimed(folder, sel.uids))
            else:
                sel.recent = set(folder.claim_recent(list(sel.uids)))
            sel.unsubscribe = folder.subscribe(self.folder_event)
            keywords = set()
            unseen = None
            for i, m in enumerate(msgs):
                keywords.update(f for f in m.flags if not f.startswith("\\"))
                if unseen is None and "\\Seen" not in m.flags:
                    unseen = i + 1
            sel.known = sel.known | keywords
            flags_line, permanent_line = flags_responses(keywords, readonly)
            # RFC 3501 6.3.1 / 7.1: Twisted sends no UNSEEN, UIDNEXT or
            # PERMANENTFLAGS; clients need all three to sync by UID.
            out = [
                flags_line,
                b"* %d EXISTS\r\n" % len(sel.uids),
                b"* %d RECENT\r\n" % len(sel.recent),
            ]
            if unseen is not None:
                out.append(b"* OK [UNSEEN %d] first unseen message\r\n" % unseen)
            out.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % folder.uidvalidity)
            out.append(b"* OK [UIDNEXT %d] predicted next UID\r\n" % folder.uidnext)
            out.append(permanent_line)
            self.write(b"".join(out))
            self.selected = sel
            self.state = SELECTED
            verb = "EXAMINE" if readonly else "SELECT"
            self.ok(tag, f"[READ-{'ONLY' if readonly else 'WRITE'}] {verb} completed")

        def missing(failure):
            failure.trap(KeyError)
            self.no(tag, "[NONEXISTENT] no such mailbox")

        return d.addCallback(opened).addCallbacks(selected, missing)

    # --- CREATE / DELETE / RENAME (RFC 3501 6.3.3-6.3.5) ----------------------

    def _sep(self):
        return getattr(self.account, "separator", ".")

    def cmd_CREATE(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.end()
        # RFC 3501 6.3.3: a trailing separator says "will have children".
        name = name.rstrip(self._sep())
        if not name or name == "INBOX":
            return self.no(tag, "[ALREADYEXISTS] INBOX always exists")
        d = defer.maybeDeferred(self.account.create, name)

        def refused(failure):
            failure.trap(ValueError, KeyError)
            self.no(tag, f"[CANNOT] {failure.value}")

        return d.addCallbacks(lambda _: self.ok(tag, "CREATE completed"), refused)

    def cmd_DELETE(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.end()
        if name == "INBOX":
            return self.no(tag, "[CANNOT] INBOX cannot be deleted")
        if self.selected is not None and self.selected.folder.name == name:
            self._deselect()
        d = defer.maybeDeferred(self.account.delete, name)

        def refused(failure):
            if failure.check(KeyError):
                return self.no(tag, "[NONEXISTENT] no such mailbox")
            failure.trap(ValueError)
            self.no(tag, f"[CANNOT] {failure.value}")

        return d.addCallbacks(lambda _: self.ok(tag, "DELETE completed"), refused)

    def cmd_RENAME(self, tag, reader):
        reader.space()
        old = canonical_name(reader.mailbox())
        reader.space()
        new = canonical_name(reader.mailbox()).rstrip(self._sep())
        reader.end()
        if not new or new == "INBOX":
            return self.no(tag, "[CANNOT] cannot rename to INBOX")
        d = defer.maybeDeferred(self.account.rename, old, new)

        def refused(failure):
            if failure.check(KeyError) and not failure.check(RefusedName):
                return self.no(tag, "[NONEXISTENT] no such mailbox")
            failure.trap(ValueError)
            self.no(tag, f"[CANNOT] {failure.value}")

        return d.addCallbacks(lambda _: self.ok(tag, "RENAME completed"), refused)

    # --- SUBSCRIBE / UNSUBSCRIBE (RFC 3501 6.3.6, 6.3.7) -----------------

    def cmd_SUBSCRIBE(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.end()
        d = defer.maybeDeferred(self.account.subscribe, name)
        return d.addCallbacks(lambda _: self.ok(tag, "SUBSCRIBE completed"), self._refused(tag))

    def cmd_UNSUBSCRIBE(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.end()
        d = defer.maybeDeferred(self.account.unsubscribe, name)
        return d.addCallbacks(lambda _: self.ok(tag, "UNSUBSCRIBE completed"), self._refused(tag))

    def _refused(self, tag):
        def refused(failure):
            failure.trap(ValueError, KeyError)
            self.no(tag, f"[CANNOT] {failure.value}")

        return refused

    # --- LIST / LSUB (RFC 3501 6.3.8, 6.3.9; RFC 6154 SPECIAL-USE) ----------

    def cmd_LIST(self, tag, reader):
        reader.space()
        special_only = False
        if reader.peek() == b"(":
            # RFC 5258 selection options; RFC 6154 5.1 (SPECIAL-USE)
            options = reader.paren_list(lambda: reader.atom("a selection option").upper())
            special_only = b"SPECIAL-USE" in options
            reader.space()
        ref, pattern = _reference_and_pattern(reader)
        status_items = None
        if reader.maybe_space():
            if reader.atom("RETURN").upper() != b"RETURN":
                raise BadCommand("expected RETURN")
            reader.space()
            for name, items in reader.paren_list(lambda: _return_option(reader)):
                if name == b"STATUS":
                    status_items = items
        reader.end()
        sep = self._sep()
        if pattern is None:
            self.ok(tag, "LIST completed")  # no mailbox has a name that is not modified UTF-7
            return None
        if pattern == "":
            # RFC 3501 6.3.8: the hierarchy delimiter and root name.
            self.untagged(b'LIST (\\Noselect) "' + sep.encode() + b'" ""')
            self.ok(tag, "LIST completed")
            return None
        return self._list(tag, ref, pattern, b"LIST", special_only, status_items)

    def cmd_LSUB(self, tag, reader):
        reader.space()
        ref, pattern = _reference_and_pattern(reader)
        reader.end()
        if pattern is None:
            self.ok(tag, "LSUB completed")
            return None
        return self._list(tag, ref, pattern, b"LSUB", False)

    def _list(self, tag, ref, pattern, verb, special_only, status_items=None):
        sep = self._sep()
        full = canonical_name(ref + pattern if ref.endswith(sep) or not ref else ref + sep + pattern)
        regex = pattern_regex(full, sep)
        d = defer.maybeDeferred(self.account.folders)
        if verb == b"LSUB":
            d.addCallback(
                lambda folders: defer.maybeDeferred(self.account.subscriptions).addCallback(
                    lambda subs: (folders, subs)
                )
            )
        else:
            d.addCallback(lambda folders: (folders, None))

        def matching(result):
            folders, subs = result
            attrs_of = {canonical_name(n): a for n, a in folders}
            names = sorted(attrs_of) if subs is None else sorted({canonical_name(s) for s in subs})
            parents = _unsubscribed_parents(names, sep, regex) if subs is not None and "%" in full else set()
            found = []
            for name in sorted(set(names) | parents):
                if not regex.fullmatch(name):
                    continue
                attrs = set(attrs_of.get(name, ()))
                if special_only and not attrs & {"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged"}:
                    continue
                if verb == b"LSUB":
                    if name in parents or name not in attrs_of:
                        attrs = {"\\Noselect"}
                    else:
                        attrs = {a for a in attrs if a in ("\\Noselect",)}
                found.append((name, attrs, None))
            if status_items is None:
                return found
            return self._with_status(found, status_items)

        def answer(found):
            out = []
            for name, attrs, status in found:
                out.append(
                    b"* " + verb + b" " + _attributes(attrs) + b' "' + sep.encode() + b'" ' + encode_mailbox(name) + b"\r\n"
                )
                if status is not None:
                    out.append(b"* " + status + b"\r\n")
            self.write(b"".join(out))
            self.ok(tag, verb.decode() + " completed")

        return d.addCallback(matching).addCallback(answer)

    @defer.inlineCallbacks
    def _with_status(self, found, items):
        """
        RFC 5819 2: a STATUS response after the LIST response of each
        selectable mailbox. One that can't be opened any more is listed
        \\Noselect without STATUS; one whose status fails otherwise is
        listed without it.
        """
        out = []
        for name, attrs, _ in found:
            status = None
            if not attrs & {"\\Noselect", "\\NonExistent"}:
                try:
                    folder = yield defer.maybeDeferred(self.account.folder, name)
                    msgs = yield defer.maybeDeferred(folder.sync)
                    status = _status_response(name, folder, msgs, items)
                except KeyError:
                    attrs = attrs | {"\\Noselect"}
                except Exception:
                    log.failure("STATUS of {name} for LIST", name=name)
            out.append((name, attrs, status))
        return out

    # --- STATUS (RFC 3501 6.3.10) ------------------------------------------

    def cmd_STATUS(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.space()
        items = _status_items(reader)
        reader.end()
        d = defer.maybeDeferred(self.account.folder, name)

        def got(folder):
            return defer.maybeDeferred(folder.sync).addCallback(lambda msgs: (folder, msgs))

        def answer(result):
            folder, msgs = result
            self.untagged(_status_response(name, folder, msgs, items))
            self.ok(tag, "STATUS completed")

        def missing(failure):
            failure.trap(KeyError)
            self.no(tag, "[NONEXISTENT] no such mailbox")

        return d.addCallback(got).addCallbacks(answer, missing)

    # --- APPEND (RFC 3501 6.3.11; RFC 4315 APPENDUID) ----------------------

    def cmd_APPEND(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.space()
        flags = []
        internaldate = None
        # RFC 3501 6.3.11: the flag list and the date are both optional
        # (Twisted's APPEND fails without flags).
        if reader.peek() == b"(":
            flags = reader.paren_list(reader.flag)
            reader.space()
        if reader.peek() == b'"':
            internaldate = parse_date_time(reader.string())
            reader.space()
        message = reader.string("the message literal")
        reader.end()
        flags = [f for f in flags if f.lower() != "\\recent"]
        # The store keeps LF line ends (IMessageSource); FETCH gives CRLF back.
        data = message.replace(b"\r\n", b"\n")
        d = defer.maybeDeferred(self.account.folder, name)

        def got(folder):
            added = folder.append(BytesSource(data), flags=flags, internaldate=internaldate, origin=self)
            return defer.maybeDeferred(lambda: added).addCallback(lambda uid: (folder, uid))

        def done(result):
            folder, uid = result
            self.ok(tag, f"[APPENDUID {folder.uidvalidity} {uid}] APPEND completed")

        def missing(failure):
            failure.trap(KeyError)
            if failure.check(RefusedName):
                # RFC 5530: creating it would not help.
                return self.no(tag, f"[CANNOT] {failure.value}")
            self.no(tag, "[TRYCREATE] no such mailbox")

        return d.addCallbacks(got, missing).addCallback(lambda r: done(r) if r else None)

    # --- NAMESPACE (RFC 2342), ENABLE (RFC 5161) ------------------------------

    def cmd_NAMESPACE(self, tag, reader):
        reader.end()
        self.untagged(b'NAMESPACE (("" "' + self._sep().encode() + b'")) NIL NIL')
        self.ok(tag, "NAMESPACE completed")

    def cmd_ENABLE(self, tag, reader):
        reader.space()
        reader.atom("a capability")
        while reader.maybe_space():
            reader.atom("a capability")
        reader.end()
        # None of our extensions needs enabling (no CONDSTORE, no UTF8=ACCEPT).
        self.untagged(b"ENABLED")
        self.ok(tag, "ENABLE completed")

