"""
SORT and UID SORT (RFC 5256 3), with DISPLAYFROM and DISPLAYTO (RFC 5957):
a mixin of L{mailplat.imap.server.MailplatIMAP}.

The search program after the charset is SEARCH's (L{mailplat.imap.search.Query});
ARRIVAL and SIZE come from the folder's index, the other keys from the
header keys cached per message (L{mailplat.imap.sortkeys}), so a sort of a
folder whose keys are cached opens no message.
"""

from mailplat.imap import esearch, sortkeys
from mailplat.imap.parser import BadCommand
from mailplat.imap.search import CHARSETS, Query

BADCHARSET = "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset"


# sort-key -> (needs the header keys, key of (Context, header keys))
_KEYS = {
    b"ARRIVAL": (False, lambda ctx, keys: ctx.info.internaldate),
    b"SIZE": (False, lambda ctx, keys: ctx.info.size),
    b"DATE": (True, lambda ctx, keys: sortkeys.sent(ctx.info, keys)),  # RFC 5256 2.2
    b"SUBJECT": (True, lambda ctx, keys: keys[sortkeys.SUBJECT]),
    b"FROM": (True, lambda ctx, keys: keys[sortkeys.FROM]),
    b"TO": (True, lambda ctx, keys: keys[sortkeys.TO]),
    b"CC": (True, lambda ctx, keys: keys[sortkeys.CC]),
    b"DISPLAYFROM": (True, lambda ctx, keys: keys[sortkeys.DISPLAYFROM]),  # RFC 5957 2
    b"DISPLAYTO": (True, lambda ctx, keys: keys[sortkeys.DISPLAYTO]),
}


def parse_criteria(reader):
    """
    RFC 5256 5: sort-criteria = "(" sort-criterion *(SP sort-criterion) ")",
    sort-criterion = ["REVERSE" SP] sort-key. -> [(key name, reverse)]
    """
    reader.open_paren()
    criteria = []
    while True:
        name = reader.atom("a sort key").upper()
        reverse = name == b"REVERSE"
        if reverse:
            reader.space()
            name = reader.atom("a sort key").upper()
        if name not in _KEYS:
            raise BadCommand(f"unknown sort key {name.decode('ascii', 'replace')}")
        criteria.append((name, reverse))
        if not reader.maybe_space():
            break
    reader.close_paren()
    return criteria


def search_program(reader):
    """
    RFC 5256 5: search-criteria = charset 1*(SP search-key). -> the Query,
    or None for a charset we don't have (the caller answers NO BADCHARSET).
    """
    charset = reader.astring("a charset").decode("ascii", "replace").upper()
    if reader.at_end():
        raise BadCommand("expected a charset and search keys")
    if charset not in CHARSETS:
        return None
    reader.space()
    query = Query(reader, charset)
    reader.end()
    return query


def needs_header(criteria):
    return any(_KEYS[name][0] for name, _ in criteria)


def ordered(contexts, criteria, keys):
    """
    The Contexts (in sequence order) sorted by the criteria. RFC 5256 3:
    messages equal under every criterion stay in sequence order, and
    REVERSE turns only its own criterion around, never that last one; so
    a stable sort per criterion, the last criterion first.
    """
    out = list(contexts)
    for name, reverse in reversed(criteria):
        key = _KEYS[name][1]
        out.sort(key=lambda ctx: key(ctx, keys.get(ctx.uid, sortkeys.EMPTY)), reverse=reverse)
    return out


def header_keys(session, contexts):
    """Deferred firing with {uid: header keys} for the Contexts (L{sortkeys.message_keys})."""
    return sortkeys.message_keys(session.selected.folder, [c.uid for c in contexts], session._open_batch,
                                  getattr(session.factory, "envelopes", None))


class SortCommands:
    def cmd_SORT(self, tag, reader, uid=False):
        # RFC 5256 3: SORT sort-criteria SP search-criteria; RFC 5267 3:
        # SORT [sort-return-opts SP] sort-criteria ..., answered with ESEARCH.
        reader.space()
        ret = esearch.parse_return(reader)
        if ret is not None:
            reader.space()
        try:
            criteria = parse_criteria(reader)
            reader.space()
            query = search_program(reader)
            self._check_live_tag(tag, ret)
        except BadCommand:
            self._forget_saved(ret)
            raise
        if query is None:
            self._forget_saved(ret)
            return self.no(tag, BADCHARSET)
        uses_modseq = query.uses_modseq  # RFC 7162 3.1.9: SORT with MODSEQ ends with (MODSEQ n)
        if uses_modseq:
            self._need_modseqs()
            if ret is not None:
                ret.modseq = True
        query = self._live_query(query, ret)  # RFC 5267 4: RETURN (UPDATE), L{mailplat.imap.context}

        def answer(found, keys):
            found = ordered(found, criteria, keys)
            if ret is not None:
                self._esearch(tag, uid, found, ret)
                self._go_live(tag, uid, found, ret, query, criteria)
            else:
                numbers = b" ".join(b"%d" % (c.uid if uid else c.seq) for c in found)
                self.untagged(b"SORT" + (b" " + numbers if numbers else b"") + self.search_modseq(uses_modseq, found))
            self.ok(tag, "SORT completed")

        def matched(found):
            if not needs_header(criteria):
                return answer(found, {})
            return header_keys(self, found).addCallback(lambda keys: answer(found, keys))

        return self._search(query).addCallback(matched)
