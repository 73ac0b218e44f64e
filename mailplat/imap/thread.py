"""
THREAD and UID THREAD (RFC 5256 4) with the ORDEREDSUBJECT and REFERENCES
algorithms: a mixin of L{mailplat.imap.server.MailplatIMAP}.

Both work on the header keys cached per message (L{mailplat.imap.sortkeys}):
base subject, sent date, Message-ID and references, so threading a folder
whose keys are cached opens no message. Trees are walked with explicit
stacks: a reference chain thousands deep costs no Python recursion.
"""

from mailplat.imap import sortkeys
from mailplat.imap.parser import BadCommand
from mailplat.imap.sort import BADCHARSET, header_keys, search_program


class Node:
    """A message of a thread, or a dummy (ctx None) standing for one we don't have."""

    __slots__ = ("ctx", "keys", "parent", "children")

    def __init__(self, ctx=None, keys=None):
        self.ctx = ctx
        self.keys = keys
        self.parent = None
        self.children = []

    def adopt(self, child):
        child.parent = self
        self.children.append(child)

    def leave(self):
        self.parent.children.remove(self)
        self.parent = None

    def descends_from(self, other):
        """True when `other` is this node or one of its ancestors."""
        node = self
        while node is not None:
            if node is other:
                return True
            node = node.parent
        return False


def _date_key(node):
    # RFC 5256 2.2 sent date, ties in mailbox order; a dummy sorts as its first child.
    if node.ctx is None:
        node = node.children[0]
    return (sortkeys.sent(node.ctx.info, node.keys), node.ctx.seq)


def _subject(node):
    if node.ctx is None:
        node = node.children[0]
    return node.keys[sortkeys.SUBJECT]


def _is_reply(node):
    return node.ctx is not None and bool(node.keys[sortkeys.REPLY])


def _post_order(roots):
    """Every node under `roots`, each after all of its descendants."""
    order, stack = [], list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    order.reverse()
    return order


def ordered_subject(contexts, keys):
    """
    RFC 5256 4 ORDEREDSUBJECT: sorted by base subject, then sent date; one
    thread per base subject, its first message the parent of all the
    others; threads in the sent date order of their first messages.
    """
    nodes = [Node(ctx, keys.get(ctx.uid, sortkeys.EMPTY)) for ctx in contexts]
    nodes.sort(key=lambda n: (n.keys[sortkeys.SUBJECT],) + _date_key(n))
    roots = []
    for node in nodes:
        if roots and _subject(roots[-1]) == node.keys[sortkeys.SUBJECT]:
            roots[-1].adopt(node)
        else:
            roots.append(node)
    roots.sort(key=_date_key)
    return roots


def references(contexts, keys):
    """RFC 5256 4 REFERENCES, step by step."""
    by_id = {}  # message ID -> Node (case-sensitive, RFC 5256 4 (1)(A))
    nodes = []

    def node_for(ident):
        node = by_id.get(ident)
        if node is None:
            node = by_id[ident] = Node()
            nodes.append(node)
        return node

    # (1) link the messages by their references
    for ctx in contexts:
        k = keys.get(ctx.uid, sortkeys.EMPTY)
        ident = k[sortkeys.MESSAGE_ID]
        node = by_id.get(ident) if ident is not None else None
        if node is None and ident is not None:
            node = node_for(ident)
        elif node is None or node.ctx is not None:
            # No Message-ID, or a later message with one already taken:
            # a unique ID of its own, which nothing can reference.
            node = Node()
            nodes.append(node)
        node.ctx, node.keys = ctx, k
        # (1)(A) each reference the parent of the next, unless the child
        # already has a parent or the link would make a loop
        previous = None
        for ref in k[sortkeys.REFERENCES]:
            ref_node = node_for(ref)
            if previous is not None and ref_node.parent is None and not previous.descends_from(ref_node):
                previous.adopt(ref_node)
            previous = ref_node
        # (1)(B) the last reference is the parent: an older link goes (it came
        # from a truncated References field), a link that makes a loop is not made
        if node.parent is not None:
            node.leave()
        if previous is not None and not previous.descends_from(node):
            previous.adopt(node)

    # (2) the messages without a parent are the root set
    roots = [n for n in nodes if n.parent is None]

    # (3) prune dummies: one without children goes; one with children gives
    # them to its parent, but at the root only when it has just one
    for node in _post_order(roots):
        if any(c.ctx is None for c in node.children):
            kept = []
            for child in node.children:
                if child.ctx is not None:
                    kept.append(child)
                    continue
                for grandchild in child.children:
                    grandchild.parent = node
                    kept.append(grandchild)
            node.children = kept
    top = []
    for node in roots:
        if node.ctx is None and len(node.children) < 2:
            for child in node.children:
                child.parent = None
                top.append(child)
        else:
            top.append(node)
    roots = top

    # (4) sort the root set by sent date (a dummy: its children first, then as its first child)
    for node in roots:
        if node.ctx is None:
            node.children.sort(key=_date_key)
    roots.sort(key=_date_key)

    # (5) gather the threads whose (non-empty) base subjects are the same
    # (A), (B) the subject table: a dummy wins, then a message that is not a reply
    table = {}
    for node in roots:
        subject = _subject(node)
        if not subject:
            continue
        held = table.get(subject)
        if held is None or (held.ctx is not None and (node.ctx is None or (_is_reply(held) and not _is_reply(node)))):
            table[subject] = node
    # (C) merge each thread into the one the table holds for its subject
    merged = []
    slot = {}  # root -> its index in merged
    replaced = {}  # root -> the dummy that took its place (the "Otherwise" case)
    for node in roots:
        node = replaced.get(node, node)
        subject = _subject(node)
        held = table.get(subject) if subject else None
        if held is None or held is node:
            slot[node] = len(merged)
            merged.append(node)
            continue
        if held.ctx is None and node.ctx is None:
            for child in node.children:
                held.adopt(child)
            node.children = []
        elif held.ctx is None or (_is_reply(node) and not _is_reply(held)):
            held.adopt(node)
        else:
            dummy = Node()
            dummy.adopt(held)
            dummy.adopt(node)
            table[subject] = dummy
            if held in slot:
                merged[slot[held]] = dummy
                slot[dummy] = slot[held]
            else:
                replaced[held] = dummy  # held comes later in the root set
    roots = merged

    # (6) every set of siblings by sent date, the deepest first
    for node in _post_order(roots):
        node.children.sort(key=_date_key)
    roots.sort(key=_date_key)
    return roots


ALGORITHMS = {b"ORDEREDSUBJECT": ordered_subject, b"REFERENCES": references}


def thread_list(roots, number):
    """
    RFC 5256 5: the THREAD response's thread-lists: a message with one
    child is followed by it ("1 2"), one with more by a list each
    ("1 (2)(3)"); a dummy is only its children's lists.
    """
    out = []
    stack = []
    for node in reversed(roots):
        stack += [")", node, "("]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node = item
        while True:
            if node.ctx is not None:
                out.append(str(number(node.ctx)))
                if len(node.children) == 1:
                    out.append(" ")
                    node = node.children[0]
                    continue
                if node.children:
                    out.append(" ")
            for child in reversed(node.children):
                stack += [")", child, "("]
            break
    return "".join(out).encode("ascii")


class ThreadCommands:
    def cmd_THREAD(self, tag, reader, uid=False):
        # RFC 5256 4: THREAD thread-alg SP search-criteria
        reader.space()
        name = reader.atom("a threading algorithm").upper()
        algorithm = ALGORITHMS.get(name)
        if algorithm is None:
            raise BadCommand(f"unknown threading algorithm {name.decode('ascii', 'replace')}")
        reader.space()
        query = search_program(reader)
        if query is None:
            return self.no(tag, BADCHARSET)

        def answer(found, keys):
            roots = algorithm(found, keys)
            text = thread_list(roots, (lambda c: c.uid) if uid else (lambda c: c.seq))
            self.untagged(b"THREAD" + (b" " + text if text else b""))
            self.ok(tag, "THREAD completed")

        def matched(found):
            return header_keys(self, found).addCallback(lambda keys: answer(found, keys))

        return self._search(query).addCallback(matched)
