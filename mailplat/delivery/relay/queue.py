"""
The relay queue: accepts messages for remote recipients, keeps them on disk
(L{Spool}), tries each recipient's domain (L{Router}, L{ConnectionPool}),
retries temporary failures with backoff, and bounces permanent ones with a
DSN (RFC 3464) to the sender.

It runs as a service of the server; `mailplat queue ...` talks to it through
files in <state_dir>/queue/control/, which it polls every second (see
L{mailplat.delivery.relay.control}).
"""

import fcntl
import os
import time

from twisted.application import service
from twisted.internet import defer, reactor, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailplat.delivery.relay import control, dsn
from mailplat.delivery.relay.client import Job
from mailplat.delivery.relay.spool import BOUNCED, DEFERRED, PENDING, SENT, Spool, new_record
from mailplat.interfaces import Envelope, IMessageSource, IRelayQueue, PermanentFailure, TemporaryFailure
from mailplat.store.source import BytesSource

log = Logger()

# New messages are dispatched together, a moment after they arrive: one pass
# for a burst, and a window in which `cancel` finds them untouched.
KICK_DELAY = 0.01

# RFC 5321 6.3: a message with this many Received: fields is in a loop.
MAX_HOPS = 100


class RetryPolicy:
    """RFC 5321 4.5.4.1: retry at least 30 min apart, give up after 4-5 days; first retry early."""

    def __init__(self, first=60, initial=300, maximum=4 * 3600, max_age=5 * 86400, delay_warning=0):
        self.first = min(first, initial)
        self.initial = initial
        self.maximum = maximum
        self.max_age = max_age
        self.delay_warning = delay_warning

    def delay(self, attempts):
        """Seconds before the next try, after `attempts` failed ones."""
        if attempts <= 1:
            return self.first
        return min(self.initial * 2 ** (attempts - 2), self.maximum)


@implementer(IMessageSource)
class FileSource:
    """A queued message file as a message source (for local delivery of DSNs)."""

    def __init__(self, path):
        self.path = path
        self.size = os.path.getsize(path)

    def open(self):
        return open(self.path, "rb")


class Entry:
    """A queued message in memory: its record and what is happening to it."""

    def __init__(self, record):
        self.record = record
        self.busy = False
        self.doomed = None  # "delete" / "bounce" asked for during an attempt
        self.cancelled = False
        self.writes = defer.succeed(None)

    @property
    def id(self):
        return self.record["id"]

    def pending(self):
        return [r for r in self.record["recipients"] if r["state"] in PENDING]

    def due(self, now):
        return [r for r in self.pending() if r["next"] <= now]


def _domain(address):
    return address.rpartition("@")[2].lower()


@implementer(IRelayQueue)
class RelayQueue(service.Service):
    """The persistent relay queue and its runner."""

    name = "relay"
    poll_interval = 1.0

    def __init__(self, state_dir, hostname, local_domains, router, pool, retry, local_agent=None, clock=reactor, on_stop=()):
        self.spool = Spool(os.path.join(state_dir, "queue"))
        self.hostname = hostname
        self.local_domains = {d.lower() for d in local_domains}
        self.router = router
        self.pool = pool
        self.retry = retry
        self.local_agent = local_agent
        self.clock = clock
        self.entries = {}
        self._fresh = []
        self._kick_call = None
        self._loop = None
        self._lock_fd = None
        self._lock_warned = False
        self._attempts = set()  # Deferreds of running attempts
        self._on_stop = list(on_stop)

    # --- service -------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self.spool.ensure()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.poll_interval, now=True)

    def stopService(self):
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._kick_call is not None and self._kick_call.active():
            self._kick_call.cancel()
        self._kick_call = None
        for hook in self._on_stop:
            hook()

        def writes_done(_):
            pending = [e.writes for e in self.entries.values()]
            return defer.DeferredList(pending)

        def unlock(_):
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        d = self.pool.stop()
        d.addCallback(lambda _: self._attempts_done(timeout=3))
        d.addCallback(writes_done)
        d.addBoth(unlock)
        return d

    def _attempts_done(self, timeout):
        """Attempts end soon after their connections close; a DNS lookup may take longer: don't wait for it."""
        if not self._attempts:
            return None
        done = defer.DeferredList(list(self._attempts))
        timer = self.clock.callLater(timeout, lambda: done.called or done.callback(None))
        done.addBoth(lambda r: timer.active() and timer.cancel())
        return done

    def _take_lock(self):
        """One runner per queue directory; the CLI works offline while none runs."""
        fd = os.open(self.spool.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _load(self):
        records, problems = self.spool.load()
        for queue_id in problems:
            log.error("relay queue: {queue_id} has an unreadable record or no message file; left in place", queue_id=queue_id)
        for record in records:
            if record["id"] not in self.entries:
                self.entries[record["id"]] = Entry(record)
        if records:
            log.info("relay queue: {count} message(s) picked up from {path}", count=len(records), path=self.spool.messages)

    def _tick(self):
        if self._lock_fd is None:
            if not self._take_lock():
                if not self._lock_warned:
                    log.warn("relay queue: {path} is locked by another process; waiting", path=self.spool.lock_path)
                    self._lock_warned = True
                return
            self._load()
        self._poll_control()
        now = time.time()
        for entry in list(self.entries.values()):
            self._warn_if_late(entry, now)
            if not entry.busy and entry.due(now):
                self._attempt(entry)

    # --- IRelayQueue ----------------------------------------------------------

    def enqueue(self, envelope, recipients, source):
        return self._enqueue(envelope, recipients, source)

    def _enqueue(self, envelope, recipients, source, is_dsn=False):
        if not recipients:
            return defer.fail(PermanentFailure("no recipients", "5.5.1", 554))
        record = new_record(envelope, recipients, dsn=is_dsn)
        d = self._store_new(record, source)

        def stored(record):
            entry = Entry(record)
            self.entries[entry.id] = entry
            log.info(
                "relay {queue_id} queued from=<{sender}> to={recipients} size={size}",
                queue_id=entry.id, sender=record["sender"], recipients=list(recipients), size=record["size"],
            )
            self._fresh.append(entry)
            if self._kick_call is None and self.running:
                self._kick_call = self.clock.callLater(KICK_DELAY, self._kick)
            return entry.id

        def failed(failure):
            log.failure("relay queue: cannot store a message", failure)
            # Clean up what was half written; if that fails too, say so in the log.
            self._store_discard(record["id"]).addErrback(
                lambda f: log.failure("relay queue: cannot remove a half-written message", f)
            )
            raise TemporaryFailure("cannot queue the message; try again later", "4.3.0")

        return d.addCallbacks(stored, failed)

    def cancel(self, queue_id):
        entry = self.entries.get(queue_id)
        if entry is None:
            return defer.succeed(None)
        if entry.busy:
            log.warn("relay {queue_id}: cancel came after the first attempt began", queue_id=queue_id)
            entry.doomed = "delete"
            return defer.succeed(None)
        entry.cancelled = True
        return self._forget(entry)

    def _kick(self):
        self._kick_call = None
        fresh, self._fresh = self._fresh, []
        now = time.time()
        for entry in fresh:
            if not entry.cancelled and not entry.busy and entry.id in self.entries and entry.due(now):
                self._attempt(entry)

    # --- attempts ---------------------------------------------------------------

    def _attempt(self, entry):
        entry.busy = True
        now = time.time()
        due = entry.due(now)
        if entry.record.get("hops", 0) > MAX_HOPS:
            results = {r["address"]: (554, f"5.4.6 mail loop: {entry.record['hops']} Received: fields", "") for r in due}
            for address, (code, text, _) in results.items():
                self._log_attempt(entry, address, "", code, text)
            d = self._settle(entry, results)
            d.addBoth(self._attempt_done, entry)
            return d
        by_domain = {}
        for r in due:
            by_domain.setdefault(_domain(r["address"]), []).append(r["address"])
        attempts = [self._deliver_domain(entry, domain, rcpts) for domain, rcpts in by_domain.items()]
        d = defer.gatherResults(attempts, consumeErrors=True)
        d.addCallback(lambda results: self._settle(entry, {k: v for part in results for k, v in part.items()}))
        d.addErrback(lambda f: log.failure("relay {queue_id}: attempt failed", f, queue_id=entry.id))
        d.addBoth(self._attempt_done, entry)
        self._attempts.add(d)
        d.addBoth(lambda r: self._attempts.discard(d) or r)
        return d

    def _attempt_done(self, _, entry):
        entry.busy = False
        if entry.doomed and entry.id in self.entries:
            action, entry.doomed = entry.doomed, None
            return self._bounce_all(entry, "5.0.0 bounced by the administrator") if action == "bounce" else self._forget(entry)
        return None

    def _log_attempt(self, entry, recipient, destination, code, text):
        result = "sent" if 200 <= code < 300 else ("bounced" if code >= 500 else "deferred")
        log.info(
            "relay {queue_id} to=<{recipient}> via={destination} result={result} reply={reply}",
            queue_id=entry.id, recipient=recipient, destination=destination or "-",
            result=result, reply=(f"{code} {text}" if code else text), code=code,
        )

    @defer.inlineCallbacks
    def _deliver_domain(self, entry, domain, recipients):
        """{recipient: (code, text, destination)}; code 0 is no reply (temporary)."""
        if domain in self.local_domains:
            results = yield self._deliver_local(entry, recipients)
            return results
        record = entry.record
        try:
            # RFC 8689 3: "TLS-Required: No" lets the message past the domain's TLS policy.
            if record.get("tls_optional"):
                destinations = yield self.router.route(domain, tls_optional=True)
            else:
                destinations = yield self.router.route(domain)
            if record.get("require_tls"):
                destinations = self._verified_only(domain, destinations)
        except PermanentFailure as e:
            results = {r: (e.code, f"{e.enhanced} {e.text}", "") for r in recipients}
        except TemporaryFailure as e:
            results = {r: (0, f"{e.enhanced} {e.text}", "") for r in recipients}
        except Exception as e:
            log.failure("relay {queue_id}: routing {domain} failed", queue_id=entry.id, domain=domain)
            results = {r: (0, f"4.4.3 routing failed: {e}", "") for r in recipients}
        else:
            results, last = {}, {}
            remaining = list(recipients)
            for destination in destinations:
                job = Job(entry.id, record["sender"], remaining, self.spool.eml(entry.id), record["crlf_size"], record["eight_bit"],
                          require_tls=bool(record.get("require_tls")))
                replies = yield self.pool.send(destination, job)
                for r, (code, text) in replies.items():
                    self._log_attempt(entry, r, destination, code, text)
                    if 200 <= code < 300 or code >= 500:
                        results[r] = (code, text, destination.name)
                    else:
                        # RFC 5321 5.1: a temporary failure moves on to the next MX.
                        last[r] = (code, text, destination.name)
                remaining = [r for r in remaining if r not in results]
                if not remaining or self.pool.stopping:
                    break
            for r in remaining:
                results[r] = last[r]
            return results
        for r, (code, text, _) in results.items():
            self._log_attempt(entry, r, "", code, text)
        return results

    @staticmethod
    def _verified_only(domain, destinations):
        """
        RFC 8689 4.2: REQUIRETLS mail goes only where TLS is required and
        the certificate checked (an MTA-STS enforce policy, or a route or
        smarthost with tls_verify); nowhere else is a bounce, 5.7.30.
        """
        verified = [d for d in destinations if d.verify and d.tls in ("starttls", "implicit")]
        if not verified:
            raise PermanentFailure(
                f"REQUIRETLS: no verified TLS path to {domain} (no MTA-STS policy in enforce mode, "
                "no route with tls_verify); not sent", "5.7.30", 550)
        return verified

    @defer.inlineCallbacks
    def _deliver_local(self, entry, recipients):
        """Mail the queue holds for a local address (a DSN): through the local delivery agent."""
        if self.local_agent is None:
            return {r: (0, "4.3.5 no local delivery agent", "") for r in recipients}
        record = entry.record
        envelope = Envelope(sender=record["sender"], received_by=self.hostname, protocol="ESMTP")
        results, accepted = {}, []
        try:
            transaction = yield defer.maybeDeferred(self.local_agent.start, envelope)
            for r in recipients:
                try:
                    yield defer.maybeDeferred(transaction.add_recipient, r)
                    accepted.append(r)
                except PermanentFailure as e:
                    results[r] = (e.code, f"{e.enhanced} {e.text}", "local")
                except TemporaryFailure as e:
                    results[r] = (451, f"{e.enhanced} {e.text}", "local")
            if accepted:
                yield defer.maybeDeferred(transaction.deliver, FileSource(self.spool.eml(entry.id)))
                for r in accepted:
                    results[r] = (250, "2.0.0 delivered locally", "local")
        except PermanentFailure as e:
            for r in accepted or recipients:
                results.setdefault(r, (e.code, f"{e.enhanced} {e.text}", "local"))
        except Exception as e:
            text = e.text if isinstance(e, TemporaryFailure) else "local delivery failed"
            for r in recipients:
                if r in accepted or r not in results:
                    results[r] = (451, f"4.3.0 {text}", "local")
        for r, (code, text, where) in results.items():
            self._log_attempt(entry, r, where, code, text)
        return results

    # --- after an attempt ----------------------------------------------------------

    @defer.inlineCallbacks
    def _settle(self, entry, results):
        now = time.time()
        record = entry.record
        failed = []
        expired = now >= record["created"] + self.retry.max_age
        for r in record["recipients"]:
            if r["address"] not in results:
                continue
            code, text, where = results[r["address"]]
            final = 200 <= code < 300 or code >= 500
            if not final and not self.running:
                continue  # cut short by shutdown: not a failed attempt
            r["attempts"] += 1
            r["destination"] = where
            r["code"], r["reply"] = code, text
            r["error"] = "" if 200 <= code < 300 else (f"{code} {text}" if code else text)
            if 200 <= code < 300:
                r["state"] = SENT
            elif code >= 500:
                r["state"] = BOUNCED
                failed.append((r["address"], code, text, where))
            elif expired:
                # RFC 5321 4.5.4.1: give up after the configured age, with a bounce.
                r["state"] = BOUNCED
                r["error"] += " (gave up: too long in the queue)"
                failed.append((r["address"], code, f"{text} (4.4.7 delivery time expired)", where))
            else:
                r["state"] = DEFERRED
                r["next"] = min(now + self.retry.delay(r["attempts"]), record["created"] + self.retry.max_age)
        if failed:
            yield self._send_dsn(entry, failed)
        yield self._save_or_forget(entry)

    def _save_or_forget(self, entry):
        """After an attempt: keep the record of a message still waiting, forget one that is done."""
        if entry.pending():
            return self._save(entry)
        return self._forget(entry)

    # --- where records live (the spool on disk; L{SQLRelayQueue} overrides these) ---

    def _store_new(self, record, source):
        """Store a new message and its record durably: a Deferred of the completed record."""
        return threads.deferToThread(self.spool.create, record, source)

    def _store_discard(self, queue_id):
        """Remove what a failed enqueue left."""
        return threads.deferToThread(self.spool.remove, queue_id)

    def _save(self, entry):
        """The record of `entry` changed: write it."""
        return self._write(entry, self.spool.save, entry.record)

    def _write(self, entry, fn, *args):
        """Writes of one record run one after another, in a thread."""
        def run(_):
            return threads.deferToThread(fn, *args)

        entry.writes = entry.writes.addBoth(run)
        entry.writes.addErrback(lambda f: log.failure("relay {queue_id}: cannot write the queue record", f, queue_id=entry.id))
        return entry.writes

    def _forget(self, entry):
        self.entries.pop(entry.id, None)
        return self._write(entry, self.spool.remove, entry.id)

    @defer.inlineCallbacks
    def _send_dsn(self, entry, failed, delayed=False):
        """Queue a DSN to the sender (which may be local: the queue hands it to local delivery)."""
        record = entry.record
        if not record["sender"] or record.get("dsn"):
            # RFC 5321 4.5.5 / RFC 3464: never bounce the null sender.
            log.info("relay {queue_id}: no DSN for the null sender; {count} recipient(s) dropped",
                     queue_id=entry.id, count=len(failed))
            return None
        header = yield threads.deferToThread(dsn.original_header, self.spool.eml(entry.id))
        until = record["created"] + self.retry.max_age
        body = dsn.build(self.hostname, record, failed, header, delayed=delayed, until=until)
        # RFC 8689 5: the DSN of a REQUIRETLS message is sent with REQUIRETLS too.
        envelope = Envelope(sender="", received_by=self.hostname, protocol="ESMTP",
                            require_tls=bool(record.get("require_tls")))
        try:
            queue_id = yield self._enqueue(envelope, [record["sender"]], BytesSource(body), is_dsn=True)
        except Exception:
            log.failure("relay {queue_id}: cannot queue the DSN", queue_id=entry.id)
            return None
        log.info("relay {queue_id}: {kind} DSN {dsn_id} queued for <{sender}>", queue_id=entry.id,
                 kind="delay" if delayed else "failure", dsn_id=queue_id, sender=record["sender"])
        return queue_id

    def _warn_if_late(self, entry, now):
        """RFC 3464 Action: delayed, once, when a message has waited `delay_warning` seconds."""
        record = entry.record
        if not self.retry.delay_warning or record.get("warned") or entry.busy:
            return
        if now - record["created"] < self.retry.delay_warning:
            return
        late = [r for r in entry.pending() if r["attempts"]]
        if not late:
            return
        record["warned"] = True
        failed = [(r["address"], r.get("code", 0), r.get("reply") or "4.4.1 not delivered yet", r["destination"]) for r in late]
        self._send_dsn(entry, failed, delayed=True).addCallback(lambda _: self._save(entry))

    # --- operator actions ------------------------------------------------------------

    def flush(self):
        """Every waiting recipient is due now."""
        now = time.time()
        count = 0
        for entry in self.entries.values():
            for r in entry.pending():
                r["next"] = now
                count += 1
            if not entry.busy and entry.pending():
                self._attempt(entry)
        return f"{count} recipient(s) in {len(self.entries)} message(s) scheduled now"

    def delete(self, queue_id):
        entry = self.entries.get(queue_id)
        if entry is None:
            raise KeyError(queue_id)
        if entry.busy:
            entry.doomed = "delete"
            return f"{queue_id} will be deleted when its current attempt ends"
        self._forget(entry)
        return f"{queue_id} deleted"

    def bounce(self, queue_id):
        entry = self.entries.get(queue_id)
        if entry is None:
            raise KeyError(queue_id)
        if entry.busy:
            entry.doomed = "bounce"
            return f"{queue_id} will be bounced when its current attempt ends"
        self._bounce_all(entry, "5.0.0 bounced by the administrator")
        return f"{queue_id} bounced"

    @defer.inlineCallbacks
    def _bounce_all(self, entry, text):
        failed = []
        for r in entry.pending():
            r["state"] = BOUNCED
            failed.append((r["address"], 0, f"{text}; last error: {r['error']}" if r["error"] else text, r["destination"]))
        if failed:
            yield self._send_dsn(entry, failed)
        yield self._forget(entry)

    def _poll_control(self):
        """Commands from `mailplat queue` (see control.py)."""
        actions = {"flush": lambda _: self.flush(), "delete": self.delete, "bounce": self.bounce}
        for name, message in control.run_commands(self.spool.control, actions):
            log.info("relay queue: control {name}: {message}", name=name, message=message)
