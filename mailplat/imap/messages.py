"""
Commands of the selected state (RFC 3501 6.4): CHECK, CLOSE, UNSELECT,
EXPUNGE, SEARCH, FETCH, STORE, COPY, MOVE and their UID forms (RFC 4315
UIDPLUS, RFC 6851 MOVE, RFC 3691 UNSELECT). A mixin of
L{mailplat.imap.server.MailplatIMAP}.

Message bytes are opened through the folder (a batch in one call when it
provides IBatchOpen) and read in the reactor's thread pool, a batch at a
time, so a FETCH of a large folder neither blocks other sessions nor holds
every message in memory.
"""

from twisted.internet import defer, reactor, task, threads

from mailplat.imap import esearch, fetch
from mailplat.imap.condstore import QRESYNC, modseq_of
from mailplat.imap.parser import BadCommand, canonical_name
from mailplat.imap.search import CHARSETS, Context, Query
from mailplat.imap.envelope_pool import elsewhere
from mailplat.imap.envelope_worker import read_header
from mailplat.interfaces import IBatchOpen
from mailplat.store.boundary import RefusedName

BATCH = 200  # messages read per trip to the thread pool
POOL_BATCH = 1000  # envelopes asked of the envelope processes at once
CHEAP_BATCH = 2000  # index-only FETCH answers built per reactor turn
SEEN = frozenset(["\\Seen"])


def _read_all(files, work, header_only=False):
    """
    In a thread: read and close each file, apply `work(data)`; None where
    it failed. With `header_only`, `work` gets only the message's header
    (and perhaps some body), for answers such as ENVELOPE that need no more.
    """
    results = []
    read = read_header if header_only else (lambda f: f.read())
    for f in files:
        if f is None:
            results.append(None)
            continue
        try:
            with f:
                data = read(f)
            results.append(work(data))
        except OSError:
            results.append(None)  # gone meanwhile (expunged by another writer)
        except Exception:
            # One message that breaks the parser costs only its own answer.
            fetch.report_broken(f)
            results.append(None)
    return results


class MessageCommands:
    def _targets(self, token, uid):
        sel = self.selected
        if not uid and sel.bad_sequence(token):
            # RFC 3501 9 seq-number: a number past EXISTS is an error.
            raise BadCommand("no such message sequence number")
        return sel.resolve(token, uid)

    def _open_batch(self, uids):
        """Deferred firing with open files (None for messages gone)."""
        folder = self.selected.folder
        if not uids:
            return defer.succeed([])
        if IBatchOpen.providedBy(folder):
            # One trip to the store's thread pool for the batch, not one a message.
            return defer.maybeDeferred(folder.open_many, list(uids))
        ds = [defer.maybeDeferred(folder.open, u) for u in uids]
        d = defer.DeferredList(ds, consumeErrors=True)
        return d.addCallback(lambda results: [f if ok else None for ok, f in results])

    # --- CHECK, CLOSE, UNSELECT, EXPUNGE ----------------------------------

    def cmd_CHECK(self, tag, reader):
        reader.end()
        d = defer.maybeDeferred(self.selected.folder.sync)
        return d.addCallback(lambda _: self.ok(tag, "CHECK completed"))

    def cmd_CLOSE(self, tag, reader):
        reader.end()
        sel = self.selected
        # RFC 3501 6.4.2: expunge silently, then leave the selected state.
        self._deselect()
        if sel.readonly:
            self.ok(tag, "CLOSE completed")
            return None
        d = defer.maybeDeferred(sel.folder.expunge, None, self)
        return d.addCallback(lambda _: self.ok(tag, "CLOSE completed"))

    def cmd_UNSELECT(self, tag, reader):
        reader.end()
        self._deselect()  # RFC 3691: no expunge
        self.ok(tag, "UNSELECT completed")

    def cmd_EXPUNGE(self, tag, reader, uid=False):
        uids = None
        if uid:
            # RFC 4315 2.1: UID EXPUNGE removes only the given \Deleted messages.
            reader.space()
            token = reader.sequence_set()
            uids = [u for _, u in self.selected.resolve(token, True)]
        reader.end()
        sel = self.selected
        if sel.readonly:
            return self.no(tag, "[READ-ONLY] mailbox is read-only")
        if uids == []:
            self.ok(tag, "EXPUNGE completed")
            return None
        d = defer.maybeDeferred(sel.folder.expunge, uids, self)

        def done(removed):
            self.write(b"".join(sel.drop(removed)))
            self.ok(tag, self.expunge_done_text(sel))  # RFC 7162 3.2.7: [HIGHESTMODSEQ] with CONDSTORE

        return d.addCallback(done)

    # --- STORE (RFC 3501 6.4.6) ---------------------------------------------

    def cmd_STORE(self, tag, reader, uid=False):
        reader.space()
        token = reader.sequence_set()
        reader.space()
        unchangedsince = self.store_modifiers(reader)  # RFC 7162 3.1.3 (L{condstore})
        what = reader.atom("+FLAGS, -FLAGS or FLAGS").upper()
        mode = "="
        if what[:1] in (b"+", b"-"):
            mode, what = what[:1].decode(), what[1:]
        silent = what.endswith(b".SILENT")
        if silent:
            what = what[: -len(b".SILENT")]
        if what != b"FLAGS":
            raise BadCommand("expected FLAGS, +FLAGS or -FLAGS")
        reader.space()
        flags = reader.flag_list()
        reader.end()
        sel = self.selected
        targets = self._targets(token, uid)
        if sel.readonly:
            return self.no(tag, "[READ-ONLY] mailbox is read-only")
        flags = [f for f in flags if f.lower() != "\\recent"]
        if not targets:
            self.ok(tag, "STORE completed")
            return None
        d = self.condstore_store(sel, [u for _, u in targets], frozenset(flags), mode, unchangedsince)

        def done(result):
            changed, modified, before = result
            out = []
            for seq, u in targets:
                if u in changed:
                    sel.flagged.discard(u)
                    now = frozenset(changed[u]) | ({"\\Recent"} if u in sel.recent else frozenset())
                    if not silent:
                        out += sel.announce(now)  # RFC 3501 7.2.6: a new keyword first
                    # FLAGS, and MODSEQ with CONDSTORE (L{condstore.CondstoreCommands.store_line})
                    line = self.store_line(sel, seq, u, now, uid, silent, before)
                    if line is not None:
                        out.append(line)
            self.write(b"".join(out))
            self.ok(tag, self.store_done_text(sel, targets, modified, uid))
            if changed:
                self.mailbox_event("flags_stored", sel.folder, sorted(changed), frozenset(flags), mode)

        return d.addCallback(done)

    # --- COPY / MOVE (RFC 3501 6.4.7; RFC 4315 COPYUID; RFC 6851) -----------

    def cmd_COPY(self, tag, reader, uid=False):
        return self._transfer(tag, reader, uid, move=False)

    def cmd_MOVE(self, tag, reader, uid=False):
        return self._transfer(tag, reader, uid, move=True)

    def _transfer(self, tag, reader, uid, move):
        reader.space()
        token = reader.sequence_set()
        reader.space()
        name = canonical_name(reader.mailbox())
        reader.end()
        sel = self.selected
        targets = self._targets(token, uid)
        if move and sel.readonly:
            return self.no(tag, "[READ-ONLY] mailbox is read-only")
        verb = "MOVE" if move else "COPY"
        d = defer.maybeDeferred(self.account.folder, name)

        def got(target):
            uids = [u for _, u, info in sel.with_info(targets) if info is not None]
            if not uids:
                return None
            call = sel.folder.move_to if move else sel.folder.copy_to
            return defer.maybeDeferred(call, uids, target, self).addCallback(lambda pairs: (target, pairs))

        def done(result):
            if result is None:
                self.ok(tag, f"{verb} completed")
                return
            target, pairs = result
            pairs = sorted(pairs)
            code = b"COPYUID %d %s %s" % (
                target.uidvalidity,
                esearch.compact([s for s, _ in pairs]),
                esearch.compact([n for _, n in pairs]),
            ) if pairs else b""
            if move:
                # RFC 6851 4.3: COPYUID untagged, then the EXPUNGEs.
                if code:
                    self.write(b"* OK [" + code + b"] moved\r\n")
                self.write(b"".join(sel.drop([s for s, _ in pairs])))
                self.ok(tag, "MOVE completed")
            else:
                self.ok(tag, (b"[" + code + b"] " if code else b"") + b"COPY completed")
            # After the answer: observers (L{mailplat.imap.events}) such as Junk learning.
            self.mailbox_event("copied", sel.folder, target, pairs, move)

        def missing(failure):
            failure.trap(KeyError)
            if failure.check(RefusedName):
                # RFC 3501 6.4.7: TRYCREATE only when CREATE could help.
                self.no(tag, f"[CANNOT] {failure.value}")
            else:
                self.no(tag, "[TRYCREATE] no such mailbox")
            return False

        return d.addCallbacks(got, missing).addCallback(lambda r: done(r) if r is not False else None)

    # --- SEARCH (RFC 3501 6.4.4) -----------------------------------------------

    def cmd_SEARCH(self, tag, reader, uid=False):
        reader.space()
        # RFC 4731 3.1: search = "SEARCH" [search-return-opts] [SP "CHARSET" ...] ...
        ret = esearch.parse_return(reader)
        if ret is not None:
            reader.space()
        try:
            charset = None
            if reader.text[reader.pos : reader.pos + 8].upper() == b"CHARSET ":
                reader.pos += 8
                charset = reader.astring("a charset").decode("ascii", "replace").upper()
                reader.space()
            if charset is not None and charset not in CHARSETS:
                self._forget_saved(ret)
                return self.no(tag, "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset")
            query = Query(reader, charset)
            reader.end()
            self._check_live_tag(tag, ret)
            uses_modseq = query.uses_modseq  # RFC 7162 3.1.5: SEARCH MODSEQ (L{condstore})
            if uses_modseq:
                self._need_modseqs()
                if ret is not None:
                    ret.modseq = True
        except BadCommand:
            self._forget_saved(ret)
            raise
        query = self._live_query(query, ret)  # RFC 5267 4: RETURN (UPDATE), L{mailplat.imap.context}

        def answer(found):
            if ret is not None:
                self._esearch(tag, uid, found, ret)
                self._go_live(tag, uid, found, ret, query)
            else:
                numbers = b" ".join(b"%d" % (c.uid if uid else c.seq) for c in found)
                self.untagged(b"SEARCH" + (b" " + numbers if numbers else b"") + self.search_modseq(uses_modseq, found))
            self.ok(tag, "SEARCH completed")

        return self._search(query).addCallback(answer)

    def _esearch(self, tag, uid, found, ret):
        """RFC 4731 3.1 / RFC 5267 3: one ESEARCH line; RFC 5182 2.1: SAVE sets `$`."""
        line, saved = esearch.answer(tag, uid, found, ret)
        if ret.save:
            self.selected.saved = saved
        if line is not None:
            self.untagged(line)

    def _forget_saved(self, ret):
        # RFC 5182 2.1: a SEARCH with SAVE that fails leaves `$` empty.
        if ret is not None and ret.save and self.selected is not None:
            self.selected.saved = frozenset()

    def _search(self, query):
        """
        The selected messages `query` matches: Deferred firing with their
        Contexts in sequence order (also for SORT and THREAD, RFC 5256 3).
        """
        sel = self.selected
        query.saved = sel.saved
        largest_seq = len(sel.uids)
        largest_uid = sel.uids[-1] if sel.uids else 0
        contexts = []
        for seq, u, info in sel.with_info(enumerate(sel.uids, 1)):
            if info is not None:
                contexts.append(Context(seq, u, info, u in sel.recent, largest_seq, largest_uid))
        found = []

        if not query.needs_file:
            found.extend(c for c in contexts if query.match(c))
            return defer.succeed(found)

        def batch(start):
            chunk = contexts[start : start + BATCH]
            if not chunk:
                return found
            d = self._open_batch([c.uid for c in chunk])

            def evaluate(files):
                def work(pairs):
                    hits = []
                    for ctx, f in pairs:
                        if f is None:
                            continue
                        try:
                            with f:
                                ctx.message = fetch.parse_message(f.read())
                            if query.match(ctx):
                                hits.append(ctx)
                        except OSError:
                            pass  # gone meanwhile
                        except Exception:
                            fetch.report_broken(f)  # this message only: not a match
                        ctx.message = None
                    return hits

                return threads.deferToThread(work, list(zip(chunk, files)))

            d.addCallback(evaluate)
            d.addCallback(found.extend)
            return d.addCallback(lambda _: batch(start + BATCH))

        return defer.maybeDeferred(batch, 0)

    # --- FETCH (RFC 3501 6.4.5) --------------------------------------------

    def cmd_FETCH(self, tag, reader, uid=False):
        reader.space()
        token = reader.sequence_set()
        reader.space()
        # RFC 7162 3.1.4 / 3.2.6: the MODSEQ item, (CHANGEDSINCE n [VANISHED]) (L{condstore}).
        raw, modseq_item, mods = self.fetch_items(reader.rest(), uid)
        items = fetch.parse_items(raw) if raw is not None else []
        reader.end()
        if modseq_item is not None and not any(i.kind == "modseq" for i in items):
            items.append(modseq_item)
        # RFC 7162 3.2.4: with QRESYNC every FETCH carries UID.
        if (uid or self.modseq_mode >= QRESYNC) and not any(i.kind == "uid" for i in items):
            items.insert(0, fetch.Item("uid"))
        sel = self.selected
        targets = sel.with_info(self._targets(token, uid))
        # Messages expunged by another session but not yet reported are skipped.
        targets = [t for t in targets if t[2] is not None]
        targets = self.fetch_changed(sel, token, targets, mods)
        seen = set()
        d = defer.succeed(None)
        if not sel.readonly and any(i.sets_seen for i in items):
            unseen = [u for _, u, info in targets if "\\Seen" not in info.flags]
            if unseen:
                seen.update(unseen)
                d = defer.maybeDeferred(sel.folder.store_flags, unseen, frozenset(["\\Seen"]), "+", self)
        d.addCallback(lambda _: self._fetch_batches(tag, sel, targets, items, seen))
        d.addErrback(self._unknown_cte, tag)
        return d

    def _unknown_cte(self, failure, tag):
        # RFC 3516 4.3: a BINARY section we cannot decode fails the FETCH.
        failure.trap(fetch.UnknownCTE)
        self.no(tag, "[UNKNOWN-CTE] cannot decode the part's Content-Transfer-Encoding")

    def _fetch_batches(self, tag, sel, targets, items, seen):
        needs_file = any(i.needs_file for i in items)
        want_env = any(i.kind == "envelope" for i in items)
        want_bs = any(i.kind in ("bodystructure", "body") for i in items)
        header_only = want_env and not want_bs and not needs_file  # see fetch.compute
        folder = sel.folder

        def prepared(seq, u):
            env = bs = body = None
            if want_env:
                env = folder.cached(u, "envelope")
            if want_bs:
                bs = folder.cached(u, "bodystructure")
                body = folder.cached(u, "body")
            missing = needs_file or (want_env and env is None) or (want_bs and (bs is None or body is None))
            return env, bs, body, missing

        # ENVELOPE alone, of files another process can read: the envelope
        # processes parse them on the other cores (mailplat.imap.envelope_pool).
        pool = getattr(self.factory, "envelopes", None)
        paths_of = getattr(folder, "message_paths", None) if header_only and pool is not None else None
        batch_size = POOL_BATCH if paths_of is not None and pool.available else BATCH

        def read(files):
            if not files:
                return []

            def work(data):
                return fetch.compute(data, items, want_env, want_bs)

            return threads.deferToThread(_read_all, files, work, header_only)

        def in_threads(need):
            return self._open_batch(need).addCallback(read)

        def load(start):
            """Open and parse a batch (in the thread pool or the envelope processes): (chunk, plans, computed)."""
            chunk = targets[start : start + batch_size]
            plans = [prepared(seq, u) for seq, u, _ in chunk]
            need = [c[1] for c, p in zip(chunk, plans) if p[3]]
            if need and paths_of is not None and pool.available:
                d = elsewhere(pool.envelopes, paths_of, need, in_threads, lambda env: ({}, env, None, None))
            else:
                d = in_threads(need)
            return d.addCallback(lambda results: (chunk, plans, dict(zip(need, results))))

        def write(chunk, plans, computed):
            out = []
            for (seq, u, info), (env, bs, body, missing) in zip(chunk, plans):
                sections = {}
                if missing:
                    result = computed.get(u)
                    if result is None:
                        continue  # gone since the index was read
                    sections, new_env, new_bs, new_body = result
                    if want_env and env is None:
                        env = new_env.decode("latin-1")
                        folder.cache(u, "envelope", env)
                    if want_bs and (bs is None or body is None):
                        bs, body = new_bs.decode("latin-1"), new_body.decode("latin-1")
                        folder.cache(u, "bodystructure", bs)
                        folder.cache(u, "body", body)
                out.append(self._fetch_response(sel, seq, u, info, items, sections, env, bs, body, u in seen))
            self.write(b"".join(out))

        def step(start, loading=None):
            if self._closed:
                if loading is not None:
                    loading.addErrback(lambda f: None)  # nobody waits for it now
                return None
            if start >= len(targets):
                self.ok(tag, "FETCH completed")
                return None
            if self._flow.writing:
                # Paced by the client's reading: the next batch waits for
                # the session's send buffer to drain (L{mailplat.backpressure}).
                return self._flow.writable().addCallback(lambda _: step(start, loading))
            if loading is None:
                # Index-only answers go in big batches, without the thread pool.
                chunk = targets[start : start + CHEAP_BATCH]
                plans = [prepared(seq, u) for seq, u, _ in chunk[:BATCH]]
                if not any(p[3] for p in plans):
                    plans += [prepared(seq, u) for seq, u, _ in chunk[BATCH:]]
                    if not any(p[3] for p in plans):
                        write(chunk, plans, {})
                        return step_later(start + len(chunk))
                loading = load(start)

            def loaded(result):
                chunk, plans, computed = result
                following = start + len(chunk)
                # Read the next batch while this one goes out (one ahead).
                ahead = load(following) if following < len(targets) and needs_reading(following) else None
                write(chunk, plans, computed)
                return step(following, ahead)

            return loading.addCallback(loaded)

        def needs_reading(start):
            return any(prepared(seq, u)[3] for seq, u, _ in targets[start : start + BATCH])

        def step_later(start):
            if start >= len(targets):
                return step(start)
            # let other sessions run between big batches
            return task.deferLater(reactor, 0, step, start)

        return defer.maybeDeferred(step, 0)

    def _fetch_response(self, sel, seq, u, info, items, sections, env, bs, body, seen_now):
        flags = None
        parts = []
        for n, item in enumerate(items):
            kind = item.kind
            if kind == "uid":
                parts.append(b"UID %d" % u)
            elif kind == "flags":
                flags = sel.flags_of(u, info)
                if seen_now:
                    flags = flags | SEEN
                parts.append(b"FLAGS " + fetch.flag_list(flags))
            elif kind == "internaldate":
                parts.append(b'INTERNALDATE "' + fetch.internaldate(info.internaldate) + b'"')
            elif kind == "rfc822.size":
                parts.append(b"RFC822.SIZE %d" % info.size)
            elif kind == "savedate":
                # RFC 8514 3: NIL where the store keeps no save date (mbox; see search.saved_day).
                saved = getattr(info, "savedate", None)
                parts.append(b"SAVEDATE NIL" if saved is None else b'SAVEDATE "' + fetch.internaldate(saved) + b'"')
            elif kind == "envelope":
                parts.append(b"ENVELOPE " + _wire(env))
            elif kind == "bodystructure":
                parts.append(b"BODYSTRUCTURE " + _wire(bs))
            elif kind == "body":
                parts.append(b"BODY " + _wire(body))
            elif kind == "modseq":
                # RFC 7162 3.1.4: after an implicit \Seen, the new one.
                parts.append(b"MODSEQ (%d)" % modseq_of((sel.info(u) if seen_now else None) or info))
            else:
                data = sections.get(n, b"")
                parts.append(item.wire(data))
        if seen_now and flags is None:
            # RFC 3501 6.4.5: an implicit \Seen is reported with the data.
            flags = sel.flags_of(u, info) | SEEN
            parts.append(b"FLAGS " + fetch.flag_list(flags))
        if seen_now and self.modseq_mode and not any(i.kind == "modseq" for i in items):
            parts.append(b"MODSEQ (%d)" % modseq_of(sel.info(u) or info))  # RFC 7162 3.1: flags changed
        # RFC 3501 7.2.6: a keyword the client was not told of goes in FLAGS first.
        announced = b"".join(sel.announce(flags)) if flags is not None else b""
        return announced + b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n"


def _wire(value):
    if isinstance(value, str):
        return value.encode("latin-1")
    return value

