"""
NOTIFY (RFC 5465): the client says which mailboxes and which events it
wants to hear of, and the server tells it as they happen, without waiting
for a command. A mixin of L{mailplat.imap.server.MailplatIMAP}.

- The selected mailbox (filter `SELECTED` / `SELECTED-DELAYED`, RFC 5465
  6.1): other sessions' changes go out as EXISTS / FETCH / EXPUNGE as soon
  as no command is running (EXPUNGE waits for a command with DELAYED).
- Other mailboxes (`INBOXES`, `PERSONAL`, `SUBSCRIBED`, `SUBTREE`,
  `MAILBOXES`, RFC 5465 6.2-6.6): the session listens on each folder's
  change bus (L{IMailFolder.subscribe}) and sends `* STATUS` for
  MessageNew, MessageExpunge and FlagChange (RFC 5465 5.1-5.3); with
  `SET STATUS`, a STATUS of each at once (RFC 5465 3.1).
- MailboxName and SubscriptionChange (RFC 5465 5.4, 5.5): CREATE, DELETE,
  RENAME, SUBSCRIBE and UNSUBSCRIBE by another session of the same user in
  this process go out as `* LIST` (L{mailbox_changed}).
"""

import weakref

from twisted.internet import defer
from twisted.logger import Logger

from mailplat.imap import fetch
from mailplat.imap.parser import BadCommand, canonical_name, encode_mailbox
from mailplat.imap.session import recent_count
from mailplat.interfaces import IModSeqFolder

log = Logger()

MESSAGE_EVENTS = {"messagenew": "MessageNew", "messageexpunge": "MessageExpunge", "flagchange": "FlagChange"}
MAILBOX_EVENTS = {"mailboxname": "MailboxName", "subscriptionchange": "SubscriptionChange"}
SUPPORTED = list(MESSAGE_EVENTS.values()) + list(MAILBOX_EVENTS.values())
BADEVENT = "[BADEVENT (" + " ".join(SUPPORTED) + ")]"
_FILTERS = ("SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES")
_KIND_EVENT = {"exists": "MessageNew", "expunge": "MessageExpunge", "flags": "FlagChange"}
MAX_WATCHED = 1000  # folders one session listens on for NOTIFY
INDEX_ITEMS = ("uid", "flags", "internaldate", "rfc822.size")  # fetch items MessageNew may ask for

# address -> the sessions with NOTIFY SET, for MailboxName / SubscriptionChange
_sessions = {}


class BadEvent(Exception):
    """An event we do not offer, or one a filter cannot have (NO [BADEVENT], RFC 5465 3.1)."""


class Group:
    """One event group: a filter, its mailbox names, and its events (RFC 5465 3.1)."""

    def __init__(self, kind, names, events, fetch_items=None):
        self.kind = kind
        self.names = names
        self.events = events
        self.fetch_items = fetch_items  # RFC 5465 5.1: MessageNew's FETCH items (selected mailbox)

    def covers(self, name, subscribed, sep):
        """Whether a non-selected filter covers the mailbox `name`."""
        if self.kind == "INBOXES":
            return name == "INBOX"
        if self.kind == "PERSONAL":
            return True
        if self.kind == "SUBSCRIBED":
            return name in subscribed
        if self.kind == "MAILBOXES":
            return name in self.names
        if self.kind == "SUBTREE":
            return any(name == n or name.startswith(n + sep) for n in self.names)
        return False


def parse_set(reader):
    """
    RFC 5465 8: "SET" [SP "STATUS"] SP event-group *(SP event-group)
    -> (status, [Group]). The reader is after "SET ".
    """
    status = False
    if reader.text[reader.pos : reader.pos + 7].upper() == b"STATUS ":
        reader.pos += 7
        status = True
    groups = [_group(reader)]
    while reader.maybe_space():
        groups.append(_group(reader))
    reader.end()
    return status, groups


def _group(reader):
    reader.open_paren()
    kind = reader.atom("a mailbox filter").upper().decode("ascii", "replace")
    if kind not in _FILTERS:
        raise BadCommand(f"unknown NOTIFY filter {kind}")
    names = []
    if kind in ("SUBTREE", "MAILBOXES"):
        reader.space()
        if reader.peek() == b"(":
            names = reader.paren_list(reader.mailbox)
        else:
            names = [reader.mailbox()]
        if not names:
            raise BadCommand("expected a mailbox")
        names = [canonical_name(n) for n in names]
    reader.space()
    events = set()
    fetch_items = None
    if reader.peek() == b"(":
        reader.open_paren()
        while True:
            name = reader.atom("an event").decode("ascii", "replace")
            key = name.lower()
            if key == "messagenew" and reader.text[reader.pos : reader.pos + 2] == b" (":
                reader.space()
                fetch_items = _fetch_items(reader)
            if key in MESSAGE_EVENTS:
                events.add(MESSAGE_EVENTS[key])
            elif key in MAILBOX_EVENTS:
                if kind.startswith("SELECTED"):
                    # RFC 5465 6.1: the selected mailbox has message events only.
                    raise BadEvent(f"{name} is not an event of the selected mailbox")
                events.add(MAILBOX_EVENTS[key])
            else:
                raise BadEvent(f"event {name} is not offered")
            if reader.peek() == b")":
                reader.pos += 1
                break
            reader.space()
    elif reader.atom("NONE or an event list").upper() != b"NONE":
        raise BadCommand("expected NONE or a parenthesised event list")
    reader.close_paren()
    # RFC 5465 5: FlagChange makes sense only with MessageNew and
    # MessageExpunge; clients (and imaptest) send it alone, so it is taken.
    # MessageNew's FETCH items count for the selected mailbox only.
    return Group(kind, names, events, fetch_items if kind.startswith("SELECTED") else None)


def _fetch_items(reader):
    """
    RFC 5465 5.1: MessageNew "(" fetch-att *(SP fetch-att) ")". Those the
    index answers are offered (UID, FLAGS, INTERNALDATE, RFC822.SIZE and
    the FAST macro's), so a push never waits for a message to be read.
    """
    text, start, depth = reader.text, reader.pos, 0
    for end in range(start, len(text)):
        if text[end] in b"([":
            depth += 1
        elif text[end] in b")]":
            depth -= 1
        if depth == 0:
            break
    else:
        raise BadCommand("unbalanced parentheses after MessageNew")
    reader.pos = end + 1
    try:
        items = fetch.parse_items(text[start : end + 1])
    except BadCommand:
        raise BadEvent("unknown fetch attribute after MessageNew")
    if any(i.kind not in INDEX_ITEMS for i in items):
        raise BadEvent("MessageNew offers " + " ".join(k.upper() for k in INDEX_ITEMS))
    return items


def status_items(events, folder):
    """The STATUS items told for a mailbox watched for `events` (RFC 5465 5.1-5.3)."""
    items = []
    if events & {"MessageNew", "MessageExpunge"}:
        items.append(b"MESSAGES")
    if "MessageNew" in events:
        items += [b"UIDNEXT", b"UIDVALIDITY"]
    if "FlagChange" in events:
        if b"UIDVALIDITY" not in items:
            items.append(b"UIDVALIDITY")
        if IModSeqFolder.providedBy(folder):
            items.append(b"HIGHESTMODSEQ")  # RFC 5465 5.3 with RFC 7162
        else:
            items.append(b"UNSEEN")
    return items


def status_line(name, folder, items):
    msgs = folder.messages()
    values = []
    for item in items:
        if item == b"MESSAGES":
            value = len(msgs)
        elif item == b"UIDNEXT":
            value = folder.uidnext
        elif item == b"UIDVALIDITY":
            value = folder.uidvalidity
        elif item == b"HIGHESTMODSEQ":
            value = folder.highestmodseq
        elif item == b"UNSEEN":
            value = sum(1 for m in msgs if "\\Seen" not in m.flags)
        elif item == b"RECENT":
            value = recent_count(folder)
        else:
            continue
        values.append(b"%s %d" % (item, value))
    return b"* STATUS " + encode_mailbox(name) + b" (" + b" ".join(values) + b")\r\n"


def mailbox_changed(origin, address, event, name, old=None, attrs=()):
    """
    MailboxName / SubscriptionChange (RFC 5465 5.4, 5.5): tell the other
    sessions of `address` with NOTIFY that `name` was created, deleted or
    renamed (event "create", "delete", "rename" with `old`) or subscribed
    ("subscribe", "unsubscribe").
    """
    for session in list(_sessions.get(address, ())):
        if session is origin or session._notifier is None:
            continue
        try:
            session._notifier.mailbox_changed(event, name, old, attrs)
        except Exception:
            log.failure("NOTIFY of a mailbox change")


class Notifier:
    """One session's NOTIFY SET: what it listens on and what it owes the client."""

    def __init__(self, session, status, groups):
        self.session = session  # weak: see close()
        self.status = status
        self.groups = groups
        self.selected = None
        for g in groups:
            if g.kind.startswith("SELECTED") and g.events:
                self.selected = g
        self.others = [g for g in groups if not g.kind.startswith("SELECTED")]
        self.watching = {}  # name -> (folder, unsubscribe)
        self.owed = {}  # name -> events that happened, STATUS not yet sent
        self.lines = []  # LIST lines not yet sent
        self.closed = False

    @property
    def delayed(self):
        return self.selected is not None and self.selected.kind == "SELECTED-DELAYED"

    def events_for(self, name, subscribed, sep):
        events = set()
        for g in self.others:
            if g.covers(name, subscribed, sep):
                events |= g.events
        return events

    @defer.inlineCallbacks
    def watch(self, initial=False):
        """Listen on every folder a non-selected filter covers; with STATUS, say each one's now."""
        session = self.session
        account = session.account
        sep = session._sep()
        subscribed = set()
        if any(g.kind == "SUBSCRIBED" for g in self.others):
            subscribed = {canonical_name(s) for s in (yield defer.maybeDeferred(account.subscriptions))}
        names = []
        if any(g.kind in ("PERSONAL", "SUBTREE", "SUBSCRIBED") for g in self.others):
            folders = yield defer.maybeDeferred(account.folders)
            names = [canonical_name(n) for n, attrs in folders if "\\Noselect" not in attrs and "\\NonExistent" not in attrs]
        else:
            for g in self.others:
                names += g.names if g.kind == "MAILBOXES" else (["INBOX"] if g.kind == "INBOXES" else [])
            if any(g.kind == "INBOXES" for g in self.others):
                names.append("INBOX")
        wanted = {}
        for name in names:
            events = self.events_for(name, subscribed, sep) & set(_KIND_EVENT.values())
            if events and len(wanted) < MAX_WATCHED:
                wanted[name] = events
        for name in list(self.watching):
            if name not in wanted:
                self.watching.pop(name)[1]()
        out = []
        for name in sorted(wanted):
            if self.closed:
                return
            if name in self.watching:
                continue
            try:
                folder = yield defer.maybeDeferred(account.folder, name)
                yield defer.maybeDeferred(folder.sync)
            except KeyError:
                continue  # RFC 5465 6.6: a mailbox that does not exist is left out
            if self.closed:
                return
            self.watching[name] = (folder, folder.subscribe(self._event_for(name, folder)), wanted[name])
            if initial and self.status and not self._is_selected(folder):
                out.append(status_line(name, folder, status_items(wanted[name], folder)))
        for name in list(self.watching):
            folder, unsubscribe, _ = self.watching[name]
            self.watching[name] = (folder, unsubscribe, wanted.get(name, set()))
        return out

    def _is_selected(self, folder):
        sel = self.session.selected
        return sel is not None and sel.folder is folder

    def _event_for(self, name, folder):
        ref = weakref.ref(self)

        def on_event(event):
            me = ref()
            if me is not None:
                me.folder_event(name, folder, event)

        return on_event

    def folder_event(self, name, folder, event):
        if self.closed or self._is_selected(folder):
            return  # the selected mailbox speaks for itself (RFC 5465 6.1)
        entry = self.watching.get(name)
        kind = _KIND_EVENT.get(event.kind)
        if entry is None or kind not in entry[2]:
            return
        self.owed.setdefault(name, set()).add(kind)
        self.session._notify_push()

    def mailbox_changed(self, event, name, old, attrs):
        sep = self.session._sep()
        rewatch = True
        if event in ("subscribe", "unsubscribe"):
            if any("SubscriptionChange" in g.events and g.covers(name, {name}, sep) for g in self.others):
                flags = b"(\\Subscribed)" if event == "subscribe" else b"()"
                self.lines.append(b"* LIST " + flags + b' "' + sep.encode() + b'" ' + encode_mailbox(name) + b"\r\n")
            # What SUBSCRIBED covers has changed.
            rewatch = any(g.kind == "SUBSCRIBED" for g in self.others)
        else:
            names = [name] + ([old] if old else [])
            if any("MailboxName" in g.events and any(g.covers(n, {n}, sep) for n in names) for g in self.others):
                if event == "delete":
                    flags = b"(\\NonExistent)"
                else:
                    flags = b"(" + b" ".join(a.encode("ascii") for a in sorted(attrs)) + b")"
                line = b"* LIST " + flags + b' "' + sep.encode() + b'" ' + encode_mailbox(name)
                if event == "rename" and old:
                    line += b' ("OLDNAME" (' + encode_mailbox(old) + b"))"  # RFC 5465 5.4
                self.lines.append(line + b"\r\n")
            # A folder that came or went changes what PERSONAL and SUBTREE cover.
        if rewatch:
            d = self.watch()
            d.addErrback(lambda f: log.failure("NOTIFY: watching again", f))
        self.session._notify_push()

    def owed_lines(self):
        out, self.lines = self.lines, []
        owed, self.owed = self.owed, {}
        for name in sorted(owed):
            entry = self.watching.get(name)
            if entry is None or self._is_selected(entry[0]):
                continue
            folder, _, events = entry
            out.append(status_line(name, folder, status_items(events, folder)))
        return out

    def close(self):
        self.closed = True
        for folder, unsubscribe, _ in self.watching.values():
            unsubscribe()
        self.watching = {}


class NotifyCommands:
    """NOTIFY SET / NOTIFY NONE (RFC 5465 3)."""

    _notifier = None

    def cmd_NOTIFY(self, tag, reader):
        reader.space()
        verb = reader.atom("SET or NONE").upper()
        if verb == b"NONE":
            reader.end()
            self._notify_close()
            self.ok(tag, "NOTIFY completed")
            return None
        if verb != b"SET":
            raise BadCommand("NOTIFY SET or NOTIFY NONE")
        reader.space()
        try:
            status, groups = parse_set(reader)
        except BadEvent as e:
            # RFC 5465 3.1: the NOTIFY fails as a whole; the old one stays.
            return self.no(tag, f"{BADEVENT} {e}")
        self._notify_close()
        notifier = Notifier(self, status, groups)
        self._notifier = notifier
        _sessions.setdefault(self.account.address, weakref.WeakSet()).add(self)
        d = notifier.watch(initial=True)

        def started(lines):
            if lines:
                self.write(b"".join(lines))
            self.ok(tag, "NOTIFY completed")

        return d.addCallback(started)

    def _notify_close(self):
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None
            sessions = _sessions.get(getattr(self.account, "address", None))
            if sessions is not None:
                sessions.discard(self)

    def _mailbox_event(self, event, name, old=None):
        """A mailbox of ours was created, deleted, renamed or (un)subscribed: tell the other sessions."""
        address = getattr(self.account, "address", None)
        if _sessions.get(address):
            mailbox_changed(self, address, event, name, old)

    def _notify_push(self):
        """Send what NOTIFY owes the client now, unless a command is running (then at its end)."""
        if self._notifier is None or self._closed:
            return
        if self._flow.paused or self._held is not None or self._segments is not None:
            return  # flush_changes sends it with the command's answer
        lines = self._notifier.owed_lines()
        if lines:
            self.write(b"".join(lines))

    def _notify_selected(self):
        """RFC 5465 6.1: the selected mailbox's changes at once, with NOTIFY SET (SELECTED ...)."""
        notifier = self._notifier
        if notifier is None or notifier.selected is None or self.selected is None:
            return
        if self._flow.paused or self._held is not None or self._segments is not None:
            return
        before = len(self.selected.uids)
        lines = self.selected.pending(not notifier.delayed)
        if lines:
            self.write(b"".join(lines))
        self._notify_new(before)
        self._context_flush()

    def _notify_new(self, before):
        """RFC 5465 5.1: after EXISTS, a FETCH of each new message with MessageNew's items."""
        notifier, sel = self._notifier, self.selected
        if notifier is None or notifier.selected is None or not notifier.selected.fetch_items or sel is None:
            return
        items = notifier.selected.fetch_items
        pairs = [(i + 1, sel.uids[i]) for i in range(before, len(sel.uids))]
        out = [
            self._fetch_response(sel, seq, u, info, items, {}, None, None, None, False)
            for seq, u, info in sel.with_info(pairs)
            if info is not None
        ]
        if out:
            self.write(b"".join(out))

    def _notify_flush(self):
        """At a command's end: the STATUS and LIST lines owed (L{server.MailplatIMAP.flush_changes})."""
        if self._notifier is not None:
            lines = self._notifier.owed_lines()
            if lines:
                self.write(b"".join(lines))
