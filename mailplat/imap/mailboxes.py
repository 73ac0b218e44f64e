"""
Commands about folders (RFC 3501 6.3): SELECT, EXAMINE, CREATE, DELETE,
RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (RFC 5258 LIST-EXTENDED, with RFC 5819
RETURN (STATUS ...)), LSUB, STATUS, APPEND (RFC 3502 MULTIAPPEND, RFC 3516
literal8, RFC 4469 CATENATE), NAMESPACE, ENABLE. A mixin of
L{mailplat.imap.server.MailplatIMAP}; it talks to the user's
L{IMailAccount} only.
"""

import calendar
import re
from array import array

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.mail import imap4

from mailplat.imap import condstore, fetch, mime, quota, urls
from mailplat.imap.envelope_pool import BIG_FOLDER
from mailplat.imap.parser import BadCommand, InvalidName, canonical_name, encode_mailbox
from mailplat.imap.session import SELECTED, SelectedFolder, flags_responses, recent_count, unclaimed
from mailplat.store.boundary import FolderExists, RefusedName
from mailplat.store.source import BytesSource

log = Logger()

STATUS_ITEMS = (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN")
# RFC 9208 4.2 (QUOTA): what an EXPUNGE would give back (mailplat.imap.quota).
STATUS_ITEMS += (b"DELETED", b"DELETED-STORAGE")
STATUS_ITEMS += (b"HIGHESTMODSEQ",)  # RFC 7162 3.1.7 (mailplat.imap.condstore)
STATUS_ITEMS += (b"APPENDLIMIT",)  # RFC 7889 3: [limits] message_size, the same for every mailbox
STATUS_ITEMS += (b"SIZE",)  # RFC 8438 2: the sum of RFC822.SIZE, from the index (IMessageInfo.size)
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


def _status_response(name, folder, msgs, items, appendlimit=None):
    """
    The untagged STATUS response (without '* ') for a synced folder;
    `appendlimit` the largest APPEND the folder takes (RFC 7889 3), None for NIL.
    """
    values = {
        b"MESSAGES": len(msgs),
        # RFC 3501 6.3.10: counted, not claimed.
        b"RECENT": recent_count(folder),
        b"UIDNEXT": folder.uidnext,
        b"UIDVALIDITY": folder.uidvalidity,
        b"UNSEEN": sum(1 for m in msgs if "\\Seen" not in m.flags),
        b"HIGHESTMODSEQ": condstore.highestmodseq(folder),
    }
    if b"DELETED" in items or b"DELETED-STORAGE" in items:
        values.update(quota.deleted_status(msgs))
    if b"SIZE" in items:
        # RFC 8438 2: the total size of the mailbox in octets; the index's
        # RFC822.SIZE of each message, no message file is read.
        values[b"SIZE"] = sum(m.size for m in msgs)
    if b"APPENDLIMIT" in items:
        values[b"APPENDLIMIT"] = b"NIL" if appendlimit is None else b"%d" % appendlimit
    body = b" ".join(b"%s %s" % (i, values[i]) if isinstance(values[i], bytes) else b"%s %d" % (i, values[i])
                     for i in items)
    return b"STATUS " + encode_mailbox(name) + b" (" + body + b")"


# RFC 5258 3.1 (SUBSCRIBED, REMOTE, RECURSIVEMATCH); RFC 6154 5.1 (SPECIAL-USE)
SELECTION_OPTIONS = {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
# RFC 5258 3.2 (SUBSCRIBED, CHILDREN); RFC 6154 5.2 (SPECIAL-USE); RFC 5819 (STATUS)
RETURN_OPTIONS = {b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE", b"STATUS"}
SPECIAL_USE = {"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged"}


def _return_option(reader):
    """
    One LIST return option (RFC 5258 3.2) -> (name, STATUS items or None).
    SUBSCRIBED adds \\Subscribed and RFC 5819 STATUS a STATUS response;
    CHILDREN and SPECIAL-USE change nothing: those attributes are always sent.
    """
    name = reader.atom("a return option").upper()
    if name not in RETURN_OPTIONS:
        raise BadCommand(f"unknown LIST return option {name.decode('ascii', 'replace')}")
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


def _reference_and_patterns(reader):
    """
    RFC 5258 3: LIST's reference and one pattern or a parenthesised list of
    them; a pattern that is not valid modified UTF-7 is None (matches nothing).
    """
    if reader.peek() == b"(":
        raise BadCommand("expected a reference name")
    try:
        ref = reader.mailbox()
    except InvalidName:
        ref = None
    reader.space()

    def one():
        try:
            return reader.list_mailbox()
        except InvalidName:
            return None

    patterns = reader.paren_list(one) if reader.peek() == b"(" else [one()]
    if not patterns:
        raise BadCommand("expected a mailbox pattern")
    if ref is None:
        return "", []
    return ref, patterns


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


def _append_message(reader):
    """
    One message of APPEND (RFC 3501 6.3.11, RFC 3502 6.3.11):
    [flag-list SP] [date-time SP] literal, or a literal8 (RFC 3516 4.4), or
    CATENATE (cat-part ...) (RFC 4469 5)
    -> (stored bytes or a list of ("text", bytes) / ("url", str), flags, internaldate).
    """
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
    flags = [f for f in flags if f.lower() != "\\recent"]
    if reader.text[reader.pos : reader.pos + 9].upper() == b"CATENATE ":
        reader.pos += 9
        return _catenate_parts(reader), flags, internaldate
    message = _message_literal(reader)
    # The store keeps LF line ends (IMessageSource); FETCH gives CRLF back.
    return message.replace(b"\r\n", b"\n"), flags, internaldate


def _message_literal(reader):
    """A literal, or a literal8 (RFC 3516 4.4) with its NULs made safe."""
    binary = reader.peek() == b"~"
    if binary:
        reader.pos += 1
        if reader.peek() != b"{":
            raise BadCommand("expected a literal8 after ~")
    message = reader.string("the message literal")
    if not binary and b"\0" in message:
        # RFC 3501 4.3: a literal is CHAR8, no NUL; only a literal8 may carry it.
        raise BadCommand("NUL in a literal; send it as a literal8 (~{n})")
    if binary and b"\0" in message:
        message = mime.without_nul(mime.canonical(message))
    return message


def _catenate_parts(reader):
    """RFC 4469 5: "(" cat-part *(SP cat-part) ")", cat-part = TEXT SP literal / URL SP astring."""
    reader.open_paren()
    parts = []
    while True:
        kind = reader.atom("TEXT or URL").upper()
        reader.space()
        if kind == b"TEXT":
            parts.append(("text", _message_literal(reader)))
        elif kind == b"URL":
            parts.append(("url", reader.astring("a URL").decode("utf-8", "replace")))
        else:
            raise BadCommand("a CATENATE part is TEXT or URL")
        if reader.peek() == b")":
            reader.pos += 1
            return parts
        reader.space()


class _BadURLPart(Exception):
    """A CATENATE URL that cannot be used; its text goes into [BADURL] (RFC 4469 6)."""

    def __init__(self, url, why):
        super().__init__(why)
        self.url = url


class _TooBig(Exception):
    """An assembled message, or all of one APPEND, over the limits (RFC 4469 6 TOOBIG)."""


def _url_part(f, ref):
    """In a thread: the bytes (CRLF) of the part the URL names; None if there is no such part."""
    with f:
        data = f.read()
    section = ref.section.encode("ascii")
    try:
        (item,) = fetch.parse_items(b"BODY.PEEK[" + section + b"]")
    except (BadCommand, ValueError):
        return None
    message = fetch.parse_message(data)
    if item.kind != "section" or (item.part and message.find(item.part) is None):
        return None
    if ref.start is not None:
        # RFC 5092 3: ;PARTIAL=offset[.length], to the end without a length.
        item.start, item.length = ref.start, ref.length if ref.length is not None else len(data) * 2 + 1
    return fetch.section_bytes(item, message)


def _uid_set(uids):
    """RFC 4315 uid-set: ascending runs as a:b."""
    out, run = [], None
    for uid in sorted(uids):
        if run and uid == run[1] + 1:
            run[1] = uid
        else:
            run = [uid, uid]
            out.append(run)
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in out)


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
        params = self.select_params(reader)  # RFC 7162 3.1.8, 3.2.5: (CONDSTORE), (QRESYNC (...))
        reader.end()
        self.closing_for_select()  # RFC 7162 3.2.11: [CLOSED]
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
            pool = getattr(self.factory, "envelopes", None)
            if pool is not None and len(msgs) >= BIG_FOLDER and hasattr(folder, "message_paths"):
                pool.wake()  # its envelopes are read elsewhere (mailplat.imap.envelope_pool)
            if readonly:
                # RFC 3501 6.3.2: EXAMINE shows \Recent but must not take it
                # away from the session that will SELECT.
                sel.recent = set(unclaimed(folder, sel.uids))
            else:
                sel.recent = set(folder.claim_recent(list(sel.uids)))
            sel.unsubscribe = folder.subscribe(self.folder_event)
            keywords = set()
            # Once per distinct flag set (the stores share them), not per message.
            for flags in {m.flags for m in msgs}:
                keywords.update(f for f in flags if not f.startswith("\\"))
            unseen = next((i + 1 for i, m in enumerate(msgs) if "\\Seen" not in m.flags), None)
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
            out.append(condstore.modseq_line(folder))  # RFC 7162 3.1.2.1: HIGHESTMODSEQ
            out.append(self.selected_modseq(sel, params))  # RFC 7162 3.2.5: QRESYNC's answers
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
            if failure.check(FolderExists):
                return self.no(tag, f"[ALREADYEXISTS] {failure.value}")  # RFC 5530 3
            self.no(tag, f"[CANNOT] {failure.value}")

        return d.addCallbacks(lambda _: self._mailbox_done(tag, "CREATE", name), refused)

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

        return d.addCallbacks(lambda _: self._mailbox_done(tag, "DELETE", name), refused)

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
            if failure.check(FolderExists):
                return self.no(tag, f"[ALREADYEXISTS] {failure.value}")  # RFC 5530 3: the new name exists
            self.no(tag, f"[CANNOT] {failure.value}")

        return d.addCallbacks(lambda _: self._mailbox_done(tag, "RENAME", new, old), refused)

    # --- SUBSCRIBE / UNSUBSCRIBE (RFC 3501 6.3.6, 6.3.7) -----------------

    def cmd_SUBSCRIBE(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.end()
        d = defer.maybeDeferred(self.account.subscribe, name)
        return d.addCallbacks(lambda _: self._mailbox_done(tag, "SUBSCRIBE", name), self._refused(tag))

    def cmd_UNSUBSCRIBE(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.end()
        d = defer.maybeDeferred(self.account.unsubscribe, name)
        return d.addCallbacks(lambda _: self._mailbox_done(tag, "UNSUBSCRIBE", name), self._refused(tag))

    def _mailbox_done(self, tag, verb, name, old=None):
        """
        After CREATE, DELETE, RENAME, (UN)SUBSCRIBE: other sessions with
        NOTIFY hear of it (RFC 5465 5.4, 5.5; L{mailplat.imap.notify}); a
        mailbox deleted or renamed loses its URLAUTH key (RFC 4467 7:
        URLs to what was there fetch NIL, L{mailplat.imap.urlauth}).
        """
        self._mailbox_event(verb.lower(), name, old)
        d = defer.succeed(None)
        if verb in ("DELETE", "RENAME"):
            d = self._forget_urlauth([name] if old is None else [old, name])
        return d.addCallback(lambda _: self.ok(tag, f"{verb} completed"))

    def _refused(self, tag):
        def refused(failure):
            failure.trap(ValueError, KeyError)
            self.no(tag, f"[CANNOT] {failure.value}")

        return refused

    # --- LIST / LSUB (RFC 3501 6.3.8, 6.3.9; RFC 6154 SPECIAL-USE) ----------

    def cmd_LIST(self, tag, reader):
        reader.space()
        selection = set()
        if reader.peek() == b"(":
            # RFC 5258 3.1 selection options; RFC 6154 5.1 (SPECIAL-USE)
            selection = set(reader.paren_list(lambda: reader.atom("a selection option").upper()))
            unknown = selection - SELECTION_OPTIONS
            if unknown:
                raise BadCommand(f"unknown LIST selection option {min(unknown).decode('ascii', 'replace')}")
            # RFC 5258 3.1: RECURSIVEMATCH only modifies another option (not REMOTE).
            if b"RECURSIVEMATCH" in selection and not selection - {b"RECURSIVEMATCH", b"REMOTE"}:
                raise BadCommand("RECURSIVEMATCH needs another selection option")
            reader.space()
        ref, patterns = _reference_and_patterns(reader)
        returns = set()
        status_items = None
        if reader.maybe_space():
            if reader.atom("RETURN").upper() != b"RETURN":
                raise BadCommand("expected RETURN")
            reader.space()
            for name, items in reader.paren_list(lambda: _return_option(reader)):
                returns.add(name)
                if name == b"STATUS":
                    status_items = items
        reader.end()
        sep = self._sep()
        patterns = [p for p in patterns if p is not None]
        if not patterns:
            self.ok(tag, "LIST completed")  # no mailbox has a name that is not modified UTF-7
            return None
        if patterns == [""] and not selection:
            # RFC 3501 6.3.8: the hierarchy delimiter and root name.
            self.untagged(b'LIST (\\Noselect) "' + sep.encode() + b'" ""')
            self.ok(tag, "LIST completed")
            return None
        patterns = [p for p in patterns if p != ""] or [""]
        return self._list(tag, ref, patterns, b"LIST", selection, returns, status_items)

    def cmd_LSUB(self, tag, reader):
        reader.space()
        ref, pattern = _reference_and_pattern(reader)
        reader.end()
        if pattern is None:
            self.ok(tag, "LSUB completed")
            return None
        return self._list(tag, ref, [pattern], b"LSUB", set(), set())

    def _list(self, tag, ref, patterns, verb, selection, returns, status_items=None):
        sep = self._sep()

        def full_name(pattern):
            return canonical_name(ref + pattern if ref.endswith(sep) or not ref else ref + sep + pattern)

        fulls = [full_name(p) for p in patterns]
        regexes = [pattern_regex(f, sep) for f in fulls]

        def matches(name):
            return any(r.fullmatch(name) for r in regexes)

        subscribed_only = b"SUBSCRIBED" in selection
        need_subs = verb == b"LSUB" or subscribed_only or b"SUBSCRIBED" in returns
        d = defer.maybeDeferred(self.account.folders)
        if need_subs:
            d.addCallback(
                lambda folders: defer.maybeDeferred(self.account.subscriptions).addCallback(
                    lambda subs: (folders, {canonical_name(s) for s in subs})
                )
            )
        else:
            d.addCallback(lambda folders: (folders, None))

        def matching(result):
            folders, subs = result
            attrs_of = {canonical_name(n): a for n, a in folders}
            if verb == b"LSUB":
                return self._lsub_matches(attrs_of, subs, fulls, matches, sep)
            if subscribed_only:
                names = set(subs)
            else:
                names = set(attrs_of)
            special_only = b"SPECIAL-USE" in selection
            found = {}
            for name in names:
                if not matches(name):
                    continue
                if name in attrs_of:
                    attrs = set(attrs_of[name])
                else:
                    # RFC 5258 3.4: subscribed but gone.
                    attrs = {"\\NonExistent"}
                if special_only and not attrs & SPECIAL_USE:
                    continue
                if subs is not None and name in subs:
                    attrs.add("\\Subscribed")
                found[name] = (attrs, None)
            if subscribed_only and b"RECURSIVEMATCH" in selection:
                # RFC 5258 3.5: a matching mailbox that is not selected itself
                # but has a subscribed descendant no pattern returns gets
                # CHILDINFO ("SUBSCRIBED").
                candidates = set(attrs_of)
                for s in subs:
                    parts = s.split(sep)
                    candidates.update(sep.join(parts[:i]) for i in range(1, len(parts)))
                for name in candidates:
                    if name in found or not matches(name):
                        continue
                    prefix = name + sep
                    if any(s.startswith(prefix) and not matches(s) for s in subs):
                        attrs = set(attrs_of[name]) if name in attrs_of else {"\\NonExistent"}
                        found[name] = (attrs, b' (CHILDINFO ("SUBSCRIBED"))')
            listed = [(name, attrs, extra) for name, (attrs, extra) in sorted(found.items())]
            if status_items is None:
                return [(name, attrs, None, extra) for name, attrs, extra in listed]
            return self._with_status(listed, status_items)

        def answer(found):
            out = []
            for name, attrs, status, extra in found:
                out.append(
                    b"* " + verb + b" " + _attributes(attrs) + b' "' + sep.encode() + b'" ' + encode_mailbox(name) + (extra or b"") + b"\r\n"
                )
                if status is not None:
                    out.append(b"* " + status + b"\r\n")
            self.write(b"".join(out))
            self.ok(tag, verb.decode() + " completed")

        return d.addCallback(matching).addCallback(answer)

    def _lsub_matches(self, attrs_of, subs, fulls, matches, sep):
        names = sorted(subs)
        parents = set()
        for full, regex in zip(fulls, (pattern_regex(f, sep) for f in fulls)):
            if "%" in full:
                parents |= _unsubscribed_parents(names, sep, regex)
        found = []
        for name in sorted(set(names) | parents):
            if not matches(name):
                continue
            if name in parents or name not in attrs_of:
                attrs = {"\\Noselect"}
            else:
                attrs = {a for a in attrs_of[name] if a in ("\\Noselect",)}
            found.append((name, attrs, None, None))
        return found

    @defer.inlineCallbacks
    def _with_status(self, found, items):
        """
        RFC 5819 2: a STATUS response after the LIST response of each
        selectable mailbox. One that can't be opened any more is listed
        \\Noselect without STATUS; one whose status fails otherwise is
        listed without it.
        """
        out = []
        for name, attrs, extra in found:
            status = None
            if not attrs & {"\\Noselect", "\\NonExistent"}:
                try:
                    folder = yield defer.maybeDeferred(self.account.folder, name)
                    msgs = yield defer.maybeDeferred(folder.sync)
                    status = _status_response(name, folder, msgs, items, self.factory.limits["message_size"])
                except KeyError:
                    attrs = attrs | {"\\Noselect"}
                except Exception:
                    log.failure("STATUS of {name} for LIST", name=name)
            out.append((name, attrs, status, extra))
        return out

    # --- STATUS (RFC 3501 6.3.10) ------------------------------------------

    def cmd_STATUS(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.space()
        items = _status_items(reader)
        reader.end()
        if b"HIGHESTMODSEQ" in items:
            self.enable_modseq()  # RFC 7162 3.1: a CONDSTORE-enabling command
        d = defer.maybeDeferred(self.account.folder, name)

        def got(folder):
            return defer.maybeDeferred(folder.sync).addCallback(lambda msgs: (folder, msgs))

        def answer(result):
            folder, msgs = result
            self.untagged(_status_response(name, folder, msgs, items, self.factory.limits["message_size"]))
            self.ok(tag, "STATUS completed")

        def missing(failure):
            failure.trap(KeyError)
            self.no(tag, "[NONEXISTENT] no such mailbox")

        return d.addCallback(got).addCallbacks(answer, missing)

    # --- APPEND (RFC 3501 6.3.11; RFC 4315 APPENDUID; RFC 3502 MULTIAPPEND) ----

    def cmd_APPEND(self, tag, reader):
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.space()
        # RFC 3502 3: one or more messages, each with its own flags and date;
        # all are read and checked before the first is stored.
        messages = [_append_message(reader)]
        while reader.maybe_space():
            messages.append(_append_message(reader))
        reader.end()
        d = defer.maybeDeferred(self.account.folder, name)

        def got(folder):
            # RFC 4469 5: the target is checked first (TRYCREATE beats BADURL).
            d = self._assemble(messages)
            d.addCallback(lambda assembled: self._append_all(folder, assembled))
            return d.addCallback(lambda uids: (folder, uids))

        def done(result):
            folder, uids = result
            # RFC 4315 3: APPENDUID with the UID set of all the messages.
            self.ok(tag, f"[APPENDUID {folder.uidvalidity} {_uid_set(uids)}] APPEND completed")

        def missing(failure):
            failure.trap(KeyError)
            if failure.check(RefusedName):
                # RFC 5530: creating it would not help.
                return self.no(tag, f"[CANNOT] {failure.value}")
            self.no(tag, "[TRYCREATE] no such mailbox")

        def unusable(failure):
            failure.trap(_BadURLPart, _TooBig)
            if failure.check(_TooBig):
                return self.no(tag, f"[TOOBIG] {failure.value}")
            # RFC 4469 6: BADURL names the URL that failed (url-resp-text: no "]", CR or LF).
            url = "".join(c for c in failure.value.url if c not in "]\r\n")
            self.no(tag, f"[BADURL {url}] {failure.value}")

        return d.addCallbacks(lambda f: got(f).addErrback(unusable), missing).addCallback(lambda r: done(r) if r else None)

    @defer.inlineCallbacks
    def _assemble(self, messages):
        """
        RFC 4469 5: build each CATENATE message from its TEXT and URL parts,
        in order; every URL is resolved before anything is stored. The
        APPEND limits apply to the messages so built.
        """
        from mailplat.imap.server import MULTIAPPEND_SIZES  # imported late: server imports us

        size = self.factory.limits["message_size"]
        out, total = [], 0
        for body, flags, internaldate in messages:
            if isinstance(body, list):
                chunks = []
                for kind, value in body:
                    chunks.append(value if kind == "text" else (yield self._url_bytes(value)))
                body = b"".join(chunks).replace(b"\r\n", b"\n")
                if len(body) > size:
                    raise _TooBig(f"the message would be larger than {size} octets")
            total += len(body)
            if total > MULTIAPPEND_SIZES * size:
                raise _TooBig("the messages of this APPEND are too large together")
            out.append((body, flags, internaldate))
        return out

    @defer.inlineCallbacks
    def _url_bytes(self, url):
        """RFC 4469 5 / RFC 5092: the bytes a CATENATE URL names, in this user's account only."""
        try:
            ref = urls.parse(url, self.account.address, self._sep())
        except urls.BadURL as e:
            raise _BadURLPart(url, str(e))
        try:
            folder = yield defer.maybeDeferred(self.account.folder, ref.mailbox)
        except KeyError:
            raise _BadURLPart(url, "no such mailbox")
        if ref.uidvalidity is not None and ref.uidvalidity != folder.uidvalidity:
            raise _BadURLPart(url, "UIDVALIDITY does not match")
        yield defer.maybeDeferred(folder.sync)
        if not any(m.uid == ref.uid for m in folder.messages()):
            raise _BadURLPart(url, "no such message")
        try:
            f = yield defer.maybeDeferred(folder.open, ref.uid)
            data = yield threads.deferToThread(_url_part, f, ref)
        except (KeyError, OSError):
            raise _BadURLPart(url, "no such message")
        if data is None:
            raise _BadURLPart(url, "no such section")
        return data

    @defer.inlineCallbacks
    def _append_all(self, folder, messages):
        """
        RFC 3502 6: all the messages or none. When one cannot be stored, the
        ones already stored are expunged again and the failure goes on.
        """
        uids = []
        try:
            for data, flags, internaldate in messages:
                uid = yield defer.maybeDeferred(
                    folder.append, BytesSource(data), flags=flags, internaldate=internaldate, origin=self
                )
                uids.append(uid)
        except BaseException:
            if uids:
                try:
                    yield defer.maybeDeferred(folder.store_flags, uids, frozenset(["\\Deleted"]), "+", self)
                    yield defer.maybeDeferred(folder.expunge, uids, self)
                except Exception:
                    log.failure("MULTIAPPEND: could not take back UIDs {uids}", uids=uids)
            raise
        return uids

    # --- NAMESPACE (RFC 2342), ENABLE (RFC 5161) ------------------------------

    def cmd_NAMESPACE(self, tag, reader):
        reader.end()
        self.untagged(b'NAMESPACE (("" "' + self._sep().encode() + b'")) NIL NIL')
        self.ok(tag, "NAMESPACE completed")

    def cmd_ENABLE(self, tag, reader):
        reader.space()
        names = [reader.atom("a capability")]
        while reader.maybe_space():
            names.append(reader.atom("a capability"))
        reader.end()
        # RFC 5161 3.1: ENABLED names what was enabled; CONDSTORE and QRESYNC
        # (RFC 7162 3.1, 3.2.3; L{condstore}) are all that need it.
        enabled = self.enable_names(names)
        self.untagged(b"ENABLED" + b"".join(b" " + n for n in enabled))
        self.ok(tag, "ENABLE completed")

