"""
One session's view of its selected folder (RFC 3501 2.3.1.2, 7.4.1).

The folder object is shared by every session that opens it; each session
keeps only its own sequence-number map (an array of UIDs, 4 bytes a
message), the UIDs it was told are \\Recent, and what changed since it
last told its client. Changes arrive as FolderEvents and are turned into
EXPUNGE / EXISTS / FETCH responses when the RFC allows.
"""

from array import array
from bisect import bisect_left

from mailplat.imap.esearch import compact
from mailplat.imap.fetch import flag_list
from mailplat.imap.parser import parse_sequence_set

# RFC 3501 3: the session's states, as Twisted's IMAP4Server names them.
UNAUTH, AUTH, SELECTED, LOGOUT = "unauth", "auth", "select", "logout"
RECENT = frozenset(["\\Recent"])
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_ALWAYS_KNOWN = frozenset(SYSTEM_FLAGS) | RECENT


def flags_responses(keywords, readonly):
    """The untagged FLAGS and PERMANENTFLAGS for a folder's keywords (RFC 3501 7.2.6, 7.1)."""
    flags = list(SYSTEM_FLAGS) + sorted(keywords)
    out = [b"* FLAGS " + flag_list(flags) + b"\r\n"]
    if readonly:
        out.append(b"* OK [PERMANENTFLAGS ()] read-only mailbox\r\n")
    else:
        out.append(b"* OK [PERMANENTFLAGS " + flag_list(flags + ["\\*"]) + b"] flags permitted\r\n")
    return out


class SelectedFolder:
    __slots__ = (
        "folder", "readonly", "uids", "recent", "expunged", "flagged", "known", "saved", "unsubscribe", "__weakref__",
        "contexts", "modseq_mode",
    )

    def __init__(self, folder, readonly):
        self.folder = folder
        self.readonly = readonly
        self.uids = array("I")
        self.recent = set()
        self.expunged = set()  # UIDs gone from the folder, not yet reported
        self.flagged = set()  # UIDs whose flags others changed
        self.known = _ALWAYS_KNOWN  # the flags the client was told of in FLAGS
        # RFC 5182 2.1: the UIDs of the last RETURN (SAVE), `$`; a new
        # SELECT starts empty, and expunged ones drop out when resolved.
        self.saved = frozenset()
        self.unsubscribe = None
        # RFC 5267 4: the results kept up to date (L{mailplat.imap.context.LiveResults}), or None.
        self.contexts = None
        # RFC 7162: 1 with CONDSTORE on (FETCHes carry MODSEQ), 2 with QRESYNC (VANISHED for EXPUNGE).
        self.modseq_mode = 0

    # --- lookups ---------------------------------------------------------

    def info(self, uid):
        """The folder's IMessageInfo for a UID, or None if it has gone."""
        msgs = self.folder.messages()
        i = bisect_left(msgs, uid, key=_uid_of)
        if i < len(msgs) and msgs[i].uid == uid:
            return msgs[i]
        return None

    def with_info(self, pairs):
        """[(seq, uid)] ascending -> [(seq, uid, info or None)], one walk of the index."""
        msgs = self.folder.messages()
        n, j, out = len(msgs), 0, []
        for seq, uid in pairs:
            if j < n and msgs[j].uid < uid:
                j = bisect_left(msgs, uid, j, n, key=_uid_of)
            if j < n and msgs[j].uid == uid:
                out.append((seq, uid, msgs[j]))
                j += 1
            else:
                out.append((seq, uid, None))
        return out

    def seq_of(self, uid):
        i = bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def resolve(self, token, uid_mode):
        """
        A checked sequence set -> [(seq, uid)] in the view, ascending.

        RFC 3501 6.4.8: in UID commands, `*` is the largest UID and a range
        matches the UIDs that exist; numbers beyond the view match nothing.
        """
        uids = self.uids
        if not uids:
            return []
        if token == b"$":
            # RFC 5182 2.1: `$` is the saved result, in UID and plain commands alike.
            return [(i + 1, u) for i, u in enumerate(uids) if u in self.saved]
        if uid_mode:
            ranges = parse_sequence_set(token, uids[-1])
            out = set()
            for a, b in ranges:
                lo = bisect_left(uids, a)
                hi = bisect_left(uids, b + 1)
                out.update(range(lo, hi))
            return [(i + 1, uids[i]) for i in sorted(out)]
        ranges = parse_sequence_set(token, len(uids))
        out = set()
        for a, b in ranges:
            out.update(range(max(a, 1) - 1, min(b, len(uids))))
        return [(i + 1, uids[i]) for i in sorted(out)]

    def bad_sequence(self, token):
        """True when a non-UID set names numbers the view does not have."""
        if token == b"$" or (not self.uids and b"*" in token):
            # `$` names only messages that exist (RFC 5182 2.1); `1:*` in an
            # empty mailbox matches nothing.
            return False
        ranges = parse_sequence_set(token, len(self.uids) or 1)
        return any(b > len(self.uids) for a, b in ranges)

    def flags_of(self, uid, info=None):
        """The flags the client sees: the stored ones plus this session's \\Recent."""
        info = info or self.info(uid)
        flags = info.flags if info else frozenset()
        if uid in self.recent:
            flags = flags | RECENT
        return flags

    def announce(self, flags):
        """
        RFC 3501 7.2.6: a keyword reaches the client in an untagged FLAGS
        (and PERMANENTFLAGS) before any FETCH that shows it. Returns those
        lines when `flags` hold one the client has not been told of, else [].
        """
        if not isinstance(flags, (set, frozenset)):
            flags = frozenset(flags)
        if flags <= self.known:
            return []
        self.known = self.known | flags
        return flags_responses([f for f in self.known if not f.startswith("\\")], self.readonly)

    # --- events --------------------------------------------------------

    def on_event(self, event, me):
        if event.origin is me:
            return False
        if event.kind == "expunge":
            self.expunged.update(u for u in event.uids)
        elif event.kind == "flags":
            self.flagged.update(event.uids)
        return True

    def pending(self, allow_expunge):
        """Untagged responses owed to the client now (RFC 3501 7.4.1, 5.2)."""
        out = []
        if allow_expunge and self.expunged:
            out += self.drop(self.expunged)
            self.expunged = set()
        msgs = self.folder.messages()
        top = self.uids[-1] if self.uids else 0
        if msgs and msgs[-1].uid > top:
            i = bisect_left(msgs, top + 1, key=_uid_of)
            new = [m.uid for m in msgs[i:]]
            self.uids.extend(new)
            if self.readonly:
                self.recent.update(unclaimed(self.folder, new))  # RFC 3501 6.3.2
            else:
                self.recent.update(self.folder.claim_recent(new))
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
        if self.flagged:
            for uid in sorted(self.flagged):
                seq = self.seq_of(uid)
                info = self.info(uid)
                if seq is None or info is None:
                    continue
                flags = self.flags_of(uid, info)
                out += self.announce(flags)
                if self.modseq_mode:
                    # RFC 7162 3.1: with CONDSTORE on, every FETCH of a change carries MODSEQ.
                    modseq = getattr(info, "modseq", 0)
                    out.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, flag_list(flags), modseq))
                    continue
                out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, flag_list(flags)))
            self.flagged = set()
        return out

    def drop(self, uids):
        """Remove UIDs from the view: one EXPUNGE each, numbers as they shift."""
        # RFC 5267 4.3.4: an updating result hears of it first, while its sequence numbers hold.
        out = self.contexts.removing(self, uids) if self.contexts is not None else []
        gone = sorted((self.seq_of(u), u) for u in uids if self.seq_of(u) is not None)
        if gone and self.modseq_mode >= 2:
            # RFC 7162 3.2.10: after ENABLE QRESYNC, one VANISHED for them all.
            out.append(b"* VANISHED " + compact(sorted(u for _, u in gone)) + b"\r\n")
        for seq, uid in reversed(gone):
            if self.modseq_mode < 2:
                out.append(b"* %d EXPUNGE\r\n" % seq)
            self.recent.discard(uid)
        if gone:
            dropped = {u for _, u in gone}
            self.uids = array("I", (u for u in self.uids if u not in dropped))
        self.expunged.difference_update(uids)
        return out

    def close(self):
        if self.unsubscribe is not None:
            self.unsubscribe()
            self.unsubscribe = None


def recent_count(folder):
    """IMailFolder.recent_count, 0 for a folder written before it existed."""
    count = getattr(folder, "recent_count", None)
    return count() if count is not None else 0


def unclaimed(folder, uids):
    """
    Which of `uids` (ascending) are \\Recent for a read-only session (RFC
    3501 6.3.2): those no session claimed yet, the folder's newest
    `recent_count()` messages; nothing is claimed.
    """
    n = recent_count(folder)
    msgs = folder.messages()
    if not n or not msgs:
        return []
    first = msgs[-min(n, len(msgs))].uid
    return [u for u in uids if u >= first]


def _uid_of(info):
    return info.uid
