"""
Search and sort results that stay up to date: RETURN (UPDATE) and
CANCELUPDATE (RFC 5267 4, CONTEXT=SEARCH and CONTEXT=SORT). A mixin of
L{mailplat.imap.server.MailplatIMAP}, and the per-folder state it keeps.

A SEARCH or SORT with RETURN (UPDATE) leaves a L{LiveResult} on the
selected folder's view. The session feeds it the folder's events (its own
changes too); when the session may speak (L{server.MailplatIMAP.flush_changes})
the messages that changed are matched again and the differences go out as
`* ESEARCH (TAG "t") REMOVEFROM (...) ADDTO (...)` (RFC 5267 4.3.2-4.3.4).
A message expunged leaves the result in a REMOVEFROM sent just before its
EXPUNGE, while its sequence number still means it.

Messages never change, only their flags do: the answers of the search keys
that read a message (headers, body, sent date) are kept per UID, so a flag
change is matched again without opening the message; only a new message is
read, once, in the thread pool. While that read runs the session holds its
input and output, so the update still comes before the command's tagged
answer.
"""

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailplat.imap import fetch, sort, sortkeys
from mailplat.imap.esearch import compact
from mailplat.imap.parser import BadCommand, quote
from mailplat.imap.search import Context

log = Logger()

# Updating results a session may keep at once; past that, NOUPDATE (RFC 5267 4.3.1).
MAX_LIVE = 16
# The search keys answered from a message's text: remembered per UID.
_CONTENT = ("header", "address", "body", "text", "sent")
# The flow-control reason that holds a session while a new message is read.
UPDATING = "updating"


def _content_leaves(node, out):
    kind = node[0]
    if kind == "and":
        for n in node[1]:
            _content_leaves(n, out)
    elif kind == "not":
        _content_leaves(node[1], out)
    elif kind == "or":
        _content_leaves(node[1], out)
        _content_leaves(node[2], out)
    elif kind in _CONTENT:
        out.append(node)
    return out


class RememberingQuery:
    """
    A L{search.Query} whose keys that read the message are answered once
    per UID: `match` works for any message it has seen with its text, and
    for those without text it answers from what it kept.
    """

    def __init__(self, query):
        self.query = query
        self.needs_file = query.needs_file
        self.leaves = _content_leaves(query.tree, [])
        self._index = {id(n): i for i, n in enumerate(self.leaves)}
        self.memo = {}  # uid -> tuple of bools, one per leaf

    @property
    def saved(self):
        return self.query.saved

    @saved.setter
    def saved(self, value):
        self.query.saved = value

    def knows(self, uid):
        return not self.leaves or uid in self.memo

    def learn(self, ctx):
        """Keep the content keys' answers for `ctx` (its `message` set)."""
        answers = []
        for leaf in self.leaves:
            try:
                answers.append(bool(self.query._eval(leaf, ctx)))
            except Exception:
                answers.append(False)  # a message that breaks the parser matches nothing
        self.memo[ctx.uid] = tuple(answers)

    def forget(self, uid):
        self.memo.pop(uid, None)

    def match(self, ctx):
        if self.leaves and ctx.message is not None:
            self.learn(ctx)
        return self._eval(self.query.tree, ctx, self.memo.get(ctx.uid))

    def _eval(self, node, ctx, memo):
        kind = node[0]
        if kind == "and":
            return all(self._eval(n, ctx, memo) for n in node[1])
        if kind == "or":
            return self._eval(node[1], ctx, memo) or self._eval(node[2], ctx, memo)
        if kind == "not":
            return not self._eval(node[1], ctx, memo)
        if kind in _CONTENT:
            return bool(memo and memo[self._index[id(node)]])
        return self.query._eval(node, ctx)


class LiveResult:
    """One updating SEARCH or SORT: its tag, how it answers, and its members."""

    def __init__(self, tag, uid, query, options, criteria=None):
        self.tag = tag
        self.uid = uid
        self.query = query  # a RememberingQuery
        self.options = options
        self.criteria = criteria  # SORT's criteria, None for SEARCH
        self.members = []  # UIDs: ascending for SEARCH, in sort order for SORT
        self.member_set = set()
        self.summary = None  # (MIN, MAX, COUNT) last told, when asked for

    @property
    def lists_changes(self):
        # RFC 5267 4.3.2: ADDTO/REMOVEFROM for ALL, or when no other result was asked for.
        return b"ALL" in self.options or not self.options & {b"MIN", b"MAX", b"COUNT"}

    def start(self, found):
        self.members = [c.uid for c in found]
        self.member_set = set(self.members)
        self.summary = self._summary_of(found)

    def _summary_of(self, found):
        opts = self.options
        if not opts & {b"MIN", b"MAX", b"COUNT"}:
            return None
        return (found[0].uid if found else None, found[-1].uid if found else None, len(found))

    def _head(self):
        return b"ESEARCH (TAG " + quote(self.tag) + b")" + (b" UID" if self.uid else b"")

    def _numbers(self, sel, uids):
        if self.uid:
            return list(uids)
        return [sel.seq_of(u) for u in uids]

    def removing(self, sel, uids):
        """RFC 5267 4.3.4: the members among `uids` (about to be expunged) leave, told now."""
        gone = [u for u in uids if u in self.member_set]
        if not gone:
            return []
        gone_set = set(gone)
        if self.criteria is None:
            gone.sort()
        else:
            # In result order; one not in the order (left out of a re-sort
            # while its expunge waited) goes last.
            listed = [u for u in self.members if u in gone_set]
            gone = listed + sorted(gone_set.difference(listed))
        numbers = self._numbers(sel, gone)
        self.members = [u for u in self.members if u not in gone_set]
        self.member_set -= gone_set
        if not self.lists_changes:
            return self._summary_line(sel)
        return [b"* " + self._head() + b" REMOVEFROM (0 " + compact(numbers) + b")\r\n"]

    def _summary_line(self, sel):
        if self.summary is None:
            return []
        if self.criteria is None:
            ordered = sorted(self.members)
        else:
            ordered = self.members
        summary = (ordered[0] if ordered else None, ordered[-1] if ordered else None, len(ordered))
        if summary == self.summary:
            return []
        self.summary = summary
        parts = [self._head()]
        low, high, count = summary
        if low is not None:
            nlow, nhigh = self._numbers(sel, [low, high])
            if b"MIN" in self.options:
                parts.append(b"MIN %d" % nlow)
            if b"MAX" in self.options:
                parts.append(b"MAX %d" % nhigh)
        if b"COUNT" in self.options:
            parts.append(b"COUNT %d" % count)
        return [b"* " + b" ".join(parts) + b"\r\n"]

    def refresh(self, sel, changed, keys=None):
        """
        Match the changed UIDs (in the view, ascending) again -> the lines
        that tell the client. `keys` are the sort keys of the members and
        the new ones (SORT only).
        """
        added, removed = [], []
        largest_seq = len(sel.uids)
        largest_uid = sel.uids[-1] if sel.uids else 0
        for seq, u, info in sel.with_info([(sel.seq_of(u), u) for u in changed]):
            if info is None:
                continue  # expunged meanwhile: it leaves with its EXPUNGE
            hit = self.query.match(Context(seq, u, info, u in sel.recent, largest_seq, largest_uid))
            if hit and u not in self.member_set:
                added.append(u)
            elif not hit and u in self.member_set:
                removed.append(u)
        if not added and not removed:
            return []
        removed_set = set(removed)
        self.member_set = (self.member_set - removed_set) | set(added)
        out = []
        if self.criteria is None:
            self.members = sorted(self.member_set)
            adds = [(0, added)] if added else []
        else:
            listed = [u for u in self.members if u in removed_set]
            removed = listed + sorted(removed_set.difference(listed))
            self.members, adds = self._resorted(sel, keys or {})
        if not self.lists_changes:
            return self._summary_line(sel)
        line = self._head()
        if removed:
            line += b" REMOVEFROM (0 " + compact(self._numbers(sel, removed)) + b")"
        if adds:
            pairs = [b"%d %s" % (pos, compact(self._numbers(sel, run))) for pos, run in adds]
            line += b" ADDTO (" + b" ".join(pairs) + b")"
        out.append(b"* " + line + b"\r\n")
        out += self._summary_line(sel)
        return out

    def _resorted(self, sel, keys):
        """
        SORT: the members in their new order, and the runs that are new as
        (position in that order, counted from 1, UIDs) (RFC 5267 4.3.3).
        """
        old = set(u for u in self.members if u in self.member_set)
        contexts = []
        for seq, u, info in sel.with_info([(sel.seq_of(u), u) for u in sorted(self.member_set)]):
            if info is not None:
                contexts.append(Context(seq, u, info, u in sel.recent, 0, 0))
        members = [c.uid for c in sort.ordered(contexts, self.criteria, keys)]
        runs = []
        for i, u in enumerate(members):
            if u in old:
                continue
            if runs and runs[-1][0] + len(runs[-1][1]) == i + 1:
                runs[-1][1].append(u)
            else:
                runs.append((i + 1, [u]))
        return members, runs


class LiveResults:
    """The updating results of one selected folder's view, by tag."""

    def __init__(self):
        self.results = {}  # tag -> LiveResult, in creation order
        self.changed = set()  # UIDs new or with changed flags, not yet matched again

    def __len__(self):
        return len(self.results)

    def on_event(self, event):
        if event.kind in ("flags", "exists"):
            self.changed.update(event.uids)

    def removing(self, sel, uids):
        """The REMOVEFROM lines owed before the EXPUNGEs of `uids` (L{SelectedFolder.drop})."""
        out = []
        for result in self.results.values():
            out += result.removing(sel, uids)
            for u in uids:
                result.query.forget(u)
        self.changed.difference_update(uids)
        return out

    def update(self, session):
        """
        The lines that tell the client what changed: a list, or a Deferred
        firing with one when a new message must be read first.
        """
        sel = session.selected
        if not self.changed or not self.results:
            return []
        changed = sorted(u for u in self.changed if sel.seq_of(u) is not None)
        # Neither in the view nor in the folder: gone for good.
        self.changed = {u for u in self.changed if sel.seq_of(u) is None and sel.info(u) is not None}
        if not changed:
            return []
        unread = [u for u in changed if any(not r.query.knows(u) for r in self.results.values())]
        sorts = [r for r in self.results.values() if r.criteria is not None and sort.needs_header(r.criteria)]
        d = defer.succeed(None)
        if unread:
            d.addCallback(lambda _: self._read(session, unread))
        keys = {}
        if sorts:
            wanted = set(changed)
            for r in sorts:
                wanted.update(r.member_set)
            d.addCallback(lambda _: sortkeys_of(session, sorted(wanted)))
            d.addCallback(keys.update)

        def lines(_):
            if session.selected is not sel:
                return []
            out = []
            for result in list(self.results.values()):
                out += result.refresh(sel, changed, keys)
            return out

        d.addCallback(lines)
        box = []

        def grab(value):
            box.append(value)
            return value

        d.addBoth(grab)
        if not box:
            return d  # still reading
        if isinstance(box[0], Failure):
            d.addErrback(lambda f: None)
            log.failure("updating search results", box[0])
            return []
        return box[0]

    def _read(self, session, uids):
        """Read the new messages once, in the thread pool, and let every result learn them."""
        queries = [r.query for r in self.results.values() if r.query.leaves]
        d = session._open_batch(uids)

        def work(files):
            for uid, f in zip(uids, files):
                want = [q for q in queries if not q.knows(uid)]
                ctx = Context(0, uid, None, False, 0, 0)
                try:
                    if f is not None:
                        with f:
                            ctx.message = fetch.parse_message(f.read())
                except Exception:
                    if f is not None:
                        fetch.report_broken(f)
                    ctx.message = None
                for q in want:
                    if ctx.message is not None:
                        q.learn(ctx)
                    else:
                        q.memo[uid] = (False,) * len(q.leaves)  # gone or unreadable: no match

        return d.addCallback(lambda files: threads.deferToThread(work, files))


def sortkeys_of(session, uids):
    return sortkeys.message_keys(session.selected.folder, uids, session._open_batch,
                                  getattr(session.factory, "envelopes", None))


class ContextCommands:
    """RETURN (UPDATE) for SEARCH and SORT, and CANCELUPDATE (RFC 5267 4)."""

    _held = None  # output kept back while an update is worked out

    def _live_query(self, query, ret):
        """The query SEARCH/SORT runs: one that remembers, when the result will be kept up to date."""
        if ret is not None and ret.update:
            return RememberingQuery(query)
        return query

    def _go_live(self, tag, uid, found, ret, query, criteria=None):
        """After the first answer of a RETURN (UPDATE): keep the result, or say NOUPDATE."""
        if ret is None or not ret.update:
            return
        sel = self.selected
        why = None
        if ret.partial is not None:
            why = "updates of a PARTIAL result are not offered"
        elif sel.contexts is not None and len(sel.contexts) >= MAX_LIVE:
            why = "too many updating results"
        if why is not None:
            # RFC 5267 4.3.1: the result stands, without updates.
            self.untagged(b"NO [NOUPDATE " + quote(tag) + b"] " + why.encode())
            return
        if not isinstance(query, RememberingQuery):
            query = RememberingQuery(query)
        result = LiveResult(tag, uid, query, ret.options - {b"UPDATE", b"SAVE"}, criteria)
        result.start(found)
        if sel.contexts is None:
            sel.contexts = LiveResults()
        sel.contexts.results[tag] = result

    def _check_live_tag(self, tag, ret):
        """RFC 5267 4.2: a tag names one updating result at a time."""
        if ret is not None and ret.update and self.selected.contexts is not None and tag in self.selected.contexts.results:
            raise BadCommand("an updating result already has this tag")

    def cmd_CANCELUPDATE(self, tag, reader):
        # RFC 5267 4.3.5: CANCELUPDATE "tag" *(SP "tag")
        reader.space()
        tags = [reader.string("a search tag")]
        while reader.maybe_space():
            tags.append(reader.string("a search tag"))
        reader.end()
        live = self.selected.contexts
        unknown = [t for t in tags if live is None or t not in live.results]
        if unknown:
            raise BadCommand("no updating result has tag " + unknown[0].decode("ascii", "replace"))
        for t in set(tags):
            del live.results[t]
        self.ok(tag, "CANCELUPDATE completed")

    def _context_flush(self):
        """After the untagged changes: what the updating results owe the client."""
        sel = self.selected
        if sel is None or sel.contexts is None or self._held is not None:
            return
        result = sel.contexts.update(self)
        if not isinstance(result, defer.Deferred):
            if result:
                self.write(b"".join(result))
            return
        # A new message is being read: keep what follows (the tagged
        # answer) and the next command back until the update is out.
        self._held = []
        self._flow.hold(UPDATING)

        def failed(failure):
            log.failure("updating search results", failure)
            return []

        def done(lines):
            held, self._held = self._held, None
            self.write(b"".join(lines) + b"".join(held))
            self._flow.release(UPDATING)

        result.addErrback(failed).addCallback(done)
