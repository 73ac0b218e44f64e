"""
CONDSTORE and QRESYNC (RFC 7162): a mixin of
L{mailplat.imap.server.MailplatIMAP} and the helpers the commands call.

The mod-sequences are the folder's (L{mailplat.interfaces.IModSeqFolder}:
`highestmodseq`, `IMessageInfo.modseq`, `vanished`, and
`store_flags_unchanged_since`); here is what the protocol does with them:

- CONDSTORE is on for the session after a CONDSTORE-enabling command (RFC
  7162 3.1: ENABLE CONDSTORE or QRESYNC, SELECT/EXAMINE (CONDSTORE), STATUS
  HIGHESTMODSEQ, FETCH MODSEQ or CHANGEDSINCE, SEARCH MODSEQ, STORE
  UNCHANGEDSINCE); from then on every FETCH that reports flags, solicited
  or not, carries MODSEQ, a .SILENT STORE still reports the new MODSEQ,
  and EXPUNGE answers with HIGHESTMODSEQ (3.2.7). One enabled while a
  mailbox is selected sends its HIGHESTMODSEQ at once (RFC 7162 3.1).
- QRESYNC (after ENABLE QRESYNC, RFC 7162 3.2.3) adds SELECT/EXAMINE
  (QRESYNC (...)) with VANISHED (EARLIER) and the changed messages'
  FETCHes (3.2.5), UID FETCH (CHANGEDSINCE n VANISHED) (3.2.6), VANISHED
  instead of EXPUNGE (3.2.10), UID in every FETCH, and [CLOSED] when a
  SELECT replaces the selected mailbox (3.2.11).

SELECT always sends HIGHESTMODSEQ (3.1.2.1), or NOMODSEQ (3.1.2.2) for a
folder of a store that keeps no mod-sequences.
"""

from bisect import bisect_left, bisect_right

from twisted.internet import defer

from mailplat.imap.esearch import compact
from mailplat.imap.fetch import Item, flag_list
from mailplat.imap.parser import BadCommand, Reader, parse_sequence_set
from mailplat.interfaces import IModSeqFolder

CONDSTORE, QRESYNC = 1, 2
# RFC 7162 7: mod-sequence-value is a positive unsigned 63-bit integer.
MAX_MODSEQ = (1 << 63) - 1


def supports(folder):
    """True when the folder keeps mod-sequences (else NOMODSEQ, RFC 7162 3.1.2)."""
    return IModSeqFolder.providedBy(folder)


def number(reader, what="a mod-sequence", zero=False):
    """A mod-sequence-value (or -valzer with `zero`) of RFC 7162 7."""
    token = reader.atom(what)
    if not token.isdigit() or len(token) > 19 or int(token) > MAX_MODSEQ or (int(token) == 0 and not zero):
        raise BadCommand(f"expected {what}")
    return int(token)


def modseq_line(folder):
    """SELECT's HIGHESTMODSEQ (RFC 7162 3.1.2.1), or NOMODSEQ (3.1.2.2)."""
    if not supports(folder):
        return b"* OK [NOMODSEQ] no mod-sequences in this mailbox\r\n"
    return b"* OK [HIGHESTMODSEQ %d] highest mod-sequence\r\n" % folder.highestmodseq


def highestmodseq(folder):
    """STATUS HIGHESTMODSEQ (RFC 7162 3.1.7): 0 for a folder without mod-sequences."""
    return folder.highestmodseq if supports(folder) else 0


def modseq_of(info):
    return getattr(info, "modseq", 0)


# --- FETCH (RFC 7162 3.1.4, 3.2.6) ---------------------------------------------


class FetchModifiers:
    __slots__ = ("modseq", "changedsince", "vanished")

    def __init__(self):
        self.modseq = False  # the MODSEQ item was asked for
        self.changedsince = None
        self.vanished = False


def _item_list_end(raw):
    """Where FETCH's item list (an item, or a parenthesised list) ends in `raw`."""
    depth = 0
    for i, c in enumerate(raw):
        if c in b"([":
            depth += 1
        elif c in b")]":
            depth -= 1
            if depth == 0 and raw[:1] == b"(":
                return i + 1
        elif c == 0x20 and depth == 0:
            return i
    return len(raw)


def split_fetch(raw):
    """
    FETCH's items and modifiers: `(FLAGS MODSEQ) (CHANGEDSINCE 5 VANISHED)`
    -> (b"(FLAGS)", FetchModifiers). The items text is None when MODSEQ was
    the only one.
    """
    raw = raw.strip()
    mods = FetchModifiers()
    end = _item_list_end(raw)
    items, rest = raw[:end], raw[end:].strip()
    if rest:
        reader = Reader([rest])
        reader.open_paren()
        while True:
            name = reader.atom("a FETCH modifier").upper()
            if name == b"CHANGEDSINCE" and mods.changedsince is None:
                reader.space()
                mods.changedsince = number(reader, zero=True)
            elif name == b"VANISHED" and not mods.vanished:
                mods.vanished = True
            else:
                raise BadCommand(f"unknown FETCH modifier {name.decode('ascii', 'replace')}")
            if reader.peek() == b")":
                break
            reader.space()
        reader.close_paren()
        reader.end()
    # MODSEQ is an item Twisted's FETCH parser does not know: taken out here.
    inner = items[1:-1] if items[:1] == b"(" else items
    words, out, depth, start = [], [], 0, 0
    for i, c in enumerate(inner + b" "):
        if c in b"([":
            depth += 1
        elif c in b")]":
            depth -= 1
        elif c == 0x20 and depth == 0:
            words.append(inner[start:i])
            start = i + 1
    for word in words:
        if word.upper() == b"MODSEQ":
            mods.modseq = True
        elif word:
            out.append(word)
    if mods.modseq:
        if not out:
            return None, mods
        items = b"(" + b" ".join(out) + b")"
    return items, mods


class CondstoreCommands:
    """The session's CONDSTORE / QRESYNC state and the parts of commands that use it."""

    modseq_mode = 0  # CONDSTORE or QRESYNC once enabled (a class default: no cost until then)

    # --- enabling (RFC 7162 3.1, 3.2.3; RFC 5161) ---------------------------------

    def enable_modseq(self, mode=CONDSTORE):
        """
        Turn CONDSTORE (or QRESYNC, which implies it) on. A mailbox selected
        when CONDSTORE comes on gets its HIGHESTMODSEQ now (RFC 7162 3.1).
        """
        was = self.modseq_mode
        if mode <= was:
            return
        self.modseq_mode = mode
        sel = self.selected
        if sel is not None:
            sel.modseq_mode = mode
            if not was and supports(sel.folder):
                self.write(modseq_line(sel.folder))

    def enable_names(self, names):
        """ENABLE's capabilities -> those turned on here (RFC 5161 3.1, RFC 7162 3.1, 3.2.3)."""
        out = []
        for name in names:
            upper = name.upper()
            if upper == b"CONDSTORE":
                self.enable_modseq(CONDSTORE)
                out.append(b"CONDSTORE")
            elif upper == b"QRESYNC":
                self.enable_modseq(QRESYNC)
                out.append(b"QRESYNC")
        return out

    def _need_modseqs(self):
        """A command that uses mod-sequences: BAD in a NOMODSEQ mailbox (RFC 7162 3.1.2)."""
        if self.selected is not None and not supports(self.selected.folder):
            raise BadCommand("this mailbox has no mod-sequences (NOMODSEQ)")
        self.enable_modseq(CONDSTORE)

    # --- SELECT / EXAMINE (RFC 7162 3.1.8, 3.2.5, 3.2.11) ------------------------

    def select_params(self, reader):
        """
        SELECT's optional parameters: (CONDSTORE) (3.1.8) and (QRESYNC (uidvalidity
        modseq [known-uids] [(known-seqs known-uids)])) -> a dict, {} without.
        """
        params = {}
        if not reader.maybe_space():
            return params
        reader.open_paren()
        while True:
            name = reader.atom("a SELECT parameter").upper()
            if name == b"CONDSTORE" and b"CONDSTORE" not in params:
                params[b"CONDSTORE"] = True
            elif name == b"QRESYNC" and b"QRESYNC" not in params:
                if self.modseq_mode < QRESYNC:
                    raise BadCommand("QRESYNC is not enabled (ENABLE QRESYNC first)")  # RFC 7162 3.2.5
                reader.space()
                params[b"QRESYNC"] = _qresync_args(reader)
            else:
                raise BadCommand(f"unknown SELECT parameter {name.decode('ascii', 'replace')}")
            if reader.peek() == b")":
                break
            reader.space()
        reader.close_paren()
        return params

    def closing_for_select(self):
        """RFC 7162 3.2.11: a SELECT that replaces a selected mailbox marks the boundary."""
        if self.selected is not None and self.modseq_mode >= QRESYNC:
            self.write(b"* OK [CLOSED] previous mailbox closed\r\n")

    def selected_modseq(self, sel, params):
        """
        After SELECT's usual answers: CONDSTORE when asked for, and
        QRESYNC's VANISHED (EARLIER) and FETCHes (RFC 7162 3.2.5.1).
        """
        if b"CONDSTORE" in params:
            self.enable_modseq(CONDSTORE)
        sel.modseq_mode = self.modseq_mode
        qresync = params.get(b"QRESYNC")
        folder = sel.folder
        if qresync is None or not supports(folder):
            return b""
        uidvalidity, since, known, seq_match = qresync
        if uidvalidity != folder.uidvalidity:
            return b""  # RFC 7162 3.2.5.1: an ordinary SELECT then
        top = sel.uids[-1] if sel.uids else 0
        limit = max(folder.uidnext - 1, top)
        # UIDs never given (at or above UIDNEXT) are no business of VANISHED.
        ranges = [(a, min(b, limit)) for a, b in parse_sequence_set(known, limit)] if known is not None else [(1, limit)]
        within = _Within(ranges)
        gone = folder.vanished(since)
        if gone is None:
            # Expunges that old are forgotten: every known UID not here
            # (RFC 7162 3.2.5.2), above the last point the client's
            # sequence numbers still match when it sent them.
            floor = _matching_floor(sel, seq_match)
            runs = _absent([(max(a, floor + 1), b) for a, b in ranges if b > floor], sel.uids)
        else:
            runs = _runs([u for u in gone if u in within])
        out = []
        if runs:
            out.append(b"* VANISHED (EARLIER) " + _run_set(runs) + b"\r\n")
        for seq, uid, info in sel.with_info(enumerate(sel.uids, 1)):
            if info is None or modseq_of(info) <= since or (known is not None and uid not in within):
                continue
            flags = sel.flags_of(uid, info)
            out += sel.announce(flags)
            out.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, flag_list(flags), info.modseq))
        return b"".join(out)

    # --- FETCH -------------------------------------------------------------------

    def fetch_items(self, raw, uid):
        """
        FETCH's items text -> (the text for L{fetch.parse_items} or None,
        the modseq Item to add or None, FetchModifiers); BAD for modifiers
        the command may not have (RFC 7162 3.1.4.1, 3.2.6).
        """
        items, mods = split_fetch(raw)
        if mods.vanished:
            if not uid or mods.changedsince is None:
                raise BadCommand("VANISHED goes with UID FETCH and CHANGEDSINCE")  # RFC 7162 3.2.6
            if self.modseq_mode < QRESYNC:
                raise BadCommand("QRESYNC is not enabled")
        if mods.modseq or mods.changedsince is not None:
            self._need_modseqs()
        return items, (Item("modseq") if mods.modseq or mods.changedsince is not None else None), mods

    def fetch_changed(self, sel, token, targets, mods):
        """
        CHANGEDSINCE: only the messages changed since (RFC 7162 3.1.4.1);
        with VANISHED, first the UIDs of the set expunged since (3.2.6).
        """
        if mods.changedsince is None:
            return targets
        since = mods.changedsince
        if mods.vanished:
            top = sel.uids[-1] if sel.uids else 0
            ranges = parse_sequence_set(token, top) if token != b"$" else []
            gone = sel.folder.vanished(since)
            if gone is None:
                runs = _absent([(a, min(b, max(sel.folder.uidnext - 1, top))) for a, b in ranges], sel.uids)
            else:
                # Not those this session still shows: they are told as VANISHED later.
                within = _Within(ranges)
                runs = _runs([u for u in gone if u in within and sel.seq_of(u) is None])
            if runs:
                self.write(b"* VANISHED (EARLIER) " + _run_set(runs) + b"\r\n")
        return [t for t in targets if modseq_of(t[2]) > since]

    # --- STORE (RFC 7162 3.1.3) -----------------------------------------------------

    def store_modifiers(self, reader):
        """STORE's optional `(UNCHANGEDSINCE n) ` -> n, or None without it."""
        if reader.peek() != b"(":
            return None
        reader.open_paren()
        name = reader.atom("a STORE modifier").upper()
        if name != b"UNCHANGEDSINCE":
            raise BadCommand(f"unknown STORE modifier {name.decode('ascii', 'replace')}")
        reader.space()
        value = number(reader, zero=True)
        reader.close_paren()
        reader.space()
        self._need_modseqs()
        return value

    def condstore_store(self, sel, uids, flags, mode, unchangedsince):
        """
        The folder's store: Deferred firing with ({uid: flags}, [UIDs that
        failed UNCHANGEDSINCE], {uid: modseq before}).
        """
        before = {}
        if self.modseq_mode:
            for u in uids:
                info = sel.info(u)
                if info is not None:
                    before[u] = modseq_of(info)
        if unchangedsince is None:
            d = defer.maybeDeferred(sel.folder.store_flags, uids, flags, mode, self)
            return d.addCallback(lambda changed: (changed, [], before))
        d = defer.maybeDeferred(sel.folder.store_flags_unchanged_since, uids, flags, mode, unchangedsince, self)
        return d.addCallback(lambda result: (result[0], result[1], before))

    def store_line(self, sel, seq, u, now, uid, silent, before):
        """
        The untagged FETCH a STORE sends for one message, or None. With
        CONDSTORE it carries MODSEQ, and a .SILENT STORE still sends MODSEQ
        for a message whose flags changed (RFC 7162 3.1.3).
        """
        mode = self.modseq_mode
        modseq = None
        if mode:
            info = sel.info(u)
            modseq = modseq_of(info) if info is not None else None
        if silent:
            if modseq is None or modseq == before.get(u):
                return None
            items = b"MODSEQ (%d)" % modseq
        else:
            items = b"FLAGS " + flag_list(now)
            if modseq is not None:
                items += b" MODSEQ (%d)" % modseq
        if uid or mode >= QRESYNC:
            items += b" UID %d" % u
        return b"* %d FETCH (%s)\r\n" % (seq, items)

    def store_done_text(self, sel, targets, modified, uid):
        """STORE's tagged text: [MODIFIED set] for those that failed UNCHANGEDSINCE (RFC 7162 3.1.3)."""
        if not modified:
            return "STORE completed"
        failed = set(modified)
        numbers = sorted(u if uid else seq for seq, u in targets if u in failed)
        return "[MODIFIED " + compact(numbers).decode("ascii") + "] Conditional STORE failed"

    # --- SEARCH and SORT (RFC 7162 3.1.5, 3.1.6, 3.1.9) ----------------------------------

    def search_modseq(self, uses_modseq, found):
        """SEARCH / SORT with MODSEQ (3.1.6, 3.1.9): ` (MODSEQ n)`, the highest of the found messages', to end the response."""
        if not uses_modseq or not found:
            return b""
        return b" (MODSEQ %d)" % max(modseq_of(c.info) for c in found)

    # --- EXPUNGE (RFC 7162 3.2.7) ---------------------------------------------------------

    def expunge_done_text(self, sel):
        """EXPUNGE's tagged text: with CONDSTORE on, the HIGHESTMODSEQ after it."""
        if self.modseq_mode and supports(sel.folder):
            return f"[HIGHESTMODSEQ {sel.folder.highestmodseq}] EXPUNGE completed"
        return "EXPUNGE completed"


def _qresync_args(reader):
    """(uidvalidity, modseq, known-uids or None, (known seqs, known uids) or None) of RFC 7162 7."""
    reader.open_paren()
    uidvalidity = reader.number("a UIDVALIDITY")
    if uidvalidity == 0:
        raise BadCommand("UIDVALIDITY is not 0")
    reader.space()
    since = number(reader)
    known = seq_match = None
    if reader.maybe_space():
        if reader.peek() != b"(":
            known = reader.sequence_set()
            if known == b"$":
                raise BadCommand("expected known UIDs")
            if reader.maybe_space() and reader.peek() != b"(":
                raise BadCommand("expected sequence match data")
        if reader.peek() == b"(":
            reader.open_paren()
            seqs = reader.sequence_set()
            reader.space()
            uids = reader.sequence_set()
            reader.close_paren()
            if b"$" in (seqs, uids) or b"*" in seqs + uids:
                raise BadCommand("bad sequence match data")
            seq_match = (seqs, uids)
    reader.close_paren()
    return uidvalidity, since, known, seq_match


def _expand(token, limit=100_000):
    """The numbers of a sequence set, at most `limit` of them (the client sends what it likes)."""
    out = []
    for a, b in parse_sequence_set(token, 0):
        out.extend(range(a, min(b, a + limit - len(out) - 1) + 1))
        if len(out) >= limit:
            break
    return out


def _matching_floor(sel, seq_match):
    """
    RFC 7162 3.2.5.2: the greatest UID of the client's (seq, UID) pairs
    whose sequence number is still the same here - no message below it
    was expunged since - or 0.
    """
    if seq_match is None:
        return 0
    seqs, uids = (_expand(t) for t in seq_match)
    if len(seqs) != len(uids):
        return 0
    for seq, uid in sorted(zip(seqs, uids), reverse=True):
        if sel.seq_of(uid) == seq:
            return uid
    return 0


class _Within:
    """Membership in a sequence set's ranges by bisection: many numbers, many ranges."""

    def __init__(self, ranges):
        merged = []
        for a, b in sorted(ranges):
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]

    def __contains__(self, n):
        i = bisect_right(self.starts, n) - 1
        return i >= 0 and n <= self.ends[i]


def _runs(uids):
    """Ascending UIDs -> [(first, last)] runs."""
    out = []
    for u in sorted(set(uids)):
        if out and u == out[-1][1] + 1:
            out[-1][1] = u
        else:
            out.append([u, u])
    return [(a, b) for a, b in out]


def _absent(ranges, present):
    """The runs of the UIDs in `ranges` that are not in `present` (an ascending array)."""
    out = []
    for a, b in sorted(ranges):
        if a > b:
            continue
        start = a
        i = bisect_left(present, a)
        stop = bisect_right(present, b)
        for u in present[i:stop]:
            if u > start:
                out.append((start, u - 1))
            start = u + 1
        if start <= b:
            out.append((start, b))
    merged = []
    for a, b in out:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _run_set(runs):
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in runs)
