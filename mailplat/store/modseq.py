"""
Mod-sequences of one folder (RFC 7162 CONDSTORE and QRESYNC), kept the
same way by both stores.

Every change to a folder (flags, new messages, expunges: one IMAP command,
one scan that found what another program did) gets the next mod-sequence;
the messages it touched carry it (`MessageInfo.modseq`), the UIDs it
expunged are remembered with it. The folder's index holds all of that
beside the UIDs: each message's modseq, HIGHESTMODSEQ, and the last
L{KEEP_EXPUNGED} expunged UIDs with the modseq at which each went.

An index is written lazily (a few seconds after a change, when the last
session leaves, at shutdown), so a crash may lose the newest changes'
modseqs. They must never be given again (RFC 7162 3.1.2: a modseq never
goes backwards), so a small file beside the index, `mailplat-modseq`,
written and fsync'd before a modseq is handed out, holds a ceiling: no
modseq above it was ever given. It is raised a block at a time, and anew
after each index write; the index names the ceiling in force when it was
written. At load, a ceiling file that names another ceiling than the index
means modseqs were given after that index was written: the folder then
starts above the ceiling and gives every message a new modseq and forgets
the expunges older than that (RFC 7162 3.2.5: a client that resyncs from
before is told every UID it knows that is gone) - more FETCHes for a
client once after a crash, never a change missed.

A folder whose index was written before mod-sequences existed starts at
HIGHESTMODSEQ 1 with every message at 1.

Only one process is meant to give a folder mod-sequences (two mailplat
servers on one mail directory would count apart); other programs' changes
are found by the stores' scans and numbered like any other change.
"""

import os
import threading

from twisted.logger import Logger

CEILING = "mailplat-modseq"
# Mod-sequences reserved by one write of the ceiling file.
BLOCK = 1000
# Expunged UIDs remembered per folder for VANISHED (RFC 7162 3.2.5, 3.2.6);
# a client resyncing from before the oldest of them gets every UID it knows
# that is not in the folder.
KEEP_EXPUNGED = 10000

log = Logger()


class ModSeqs:
    """
    The mod-sequence state of one folder. Changed only holding the folder's
    lock (in the reactor, or in the thread of the locked step); a lock of
    its own keeps the thread and the reactor from seeing half a change.

    @param directory: the directory of the ceiling file (set `directory`
        again when the folder is renamed).
    @param create: make that directory when it is missing (the mbox index
        directory); otherwise a missing directory means the folder is gone
        and nothing is written.
    """

    def __init__(self, directory, create=False):
        self.directory = directory
        self._create = create
        self.highest = 0  # HIGHESTMODSEQ
        self.ceiling = 0  # no modseq above it was given out (on disk)
        self.since = 0  # every expunge with a greater modseq is in `expunged`
        self.expunged = []  # [modseq, first uid, last uid], ascending modseq
        self.count = 0  # UIDs in `expunged`
        self.recovering = False  # every message needs a new modseq
        self._legacy = False  # loaded from an index older than modseqs
        self._reserved = False  # the ceiling was raised since the last snapshot
        self._lock = threading.Lock()

    # --- loading (blocking) ---------------------------------------------------

    def load(self, saved):
        """
        Take the state of an index (`saved`: its dict, None when there is
        none) and the ceiling file. Blocking; at a folder's first scan.
        """
        on_disk = self._read_ceiling()
        with self._lock:
            self.expunged, self.count, self._legacy = [], 0, False
            self._reserved = False
            if saved is None:
                # No index: nothing is known of earlier modseqs but the
                # ceiling. HIGHESTMODSEQ is at least 1 (RFC 7162 7: a
                # mod-sequence-value is positive), the first change 2.
                self.highest = self.since = self.ceiling = max(on_disk or 0, 1)
                self.recovering = True
                return
            try:
                highest = int(saved["highestmodseq"])
            except (KeyError, TypeError, ValueError):
                highest = None
            if highest is None:
                # Written before modseqs: everything starts at 1.
                self.highest = self.since = self.ceiling = max(on_disk or 0, 1)
                self._legacy = on_disk is None
                self.recovering = on_disk is not None
                return
            written = saved.get("modseq_ceiling")
            try:
                self.since = int(saved.get("vanished_since", 0))
                expunged = [[int(m), int(a), int(b)] for m, a, b in saved.get("vanished", ())]
            except (TypeError, ValueError):
                self.since, expunged = highest, []
            self.expunged = expunged
            self.count = sum(b - a + 1 for _, a, b in expunged)
            if on_disk is not None and on_disk == written:
                self.highest, self.ceiling = highest, on_disk
                self.recovering = False
                return
            # Modseqs were given after this index was written (a crash), or
            # the ceiling file is lost: start above anything that may have
            # been seen, and number every message again.
            top = max(highest, on_disk or 0, written if isinstance(written, int) else 0)
            self.highest = self.ceiling = self.since = top
            self.recovering = True

    def index_modseqs(self, saved, count):
        """
        The modseqs of the `count` messages an index lists, in its order
        (0: give it a new one), after L{load} of the same index.
        """
        if self._legacy:
            return [1] * count
        values = saved.get("modseqs") if saved is not None else None
        if self.recovering or not isinstance(values, list) or len(values) != count:
            return [0] * count
        # One int object per value: most messages share a few modseqs.
        shared = {}
        return [shared.setdefault(v, v) if isinstance(v, int) and 0 < v <= self.highest else 0 for v in values]

    def _read_ceiling(self):
        try:
            with open(os.path.join(self.directory, CEILING), "rb") as f:
                return int(f.read().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warn("{path}: unreadable mod-sequence ceiling ({e})", path=self.directory, e=e)
            return None

    # --- giving modseqs ---------------------------------------------------------

    def prepare(self):
        """
        Make the next L{allocate} free of I/O: raise the ceiling now when it
        must be (blocking; called in the thread of a locked step).
        """
        with self._lock:
            if not self._reserved or self.highest + 1 > self.ceiling:
                self._reserve()

    def ready(self):
        """True when the next L{allocate} needs no I/O."""
        with self._lock:
            return self._reserved and self.highest + 1 <= self.ceiling

    def allocate(self):
        """The next mod-sequence (reactor thread, folder lock held)."""
        with self._lock:
            if not self._reserved or self.highest + 1 > self.ceiling:
                self._reserve()  # not prepared: a small blocking write
            self.highest += 1
            return self.highest

    def _reserve(self):
        """
        Raise the ceiling on disk (blocking): rewritten in place and
        fsync'd, one small write; a torn one reads as no ceiling at all,
        which L{load} takes for a crash (safe).
        """
        value = max(self.highest + BLOCK, self.ceiling + 1)
        directory = self.directory
        path = os.path.join(directory, CEILING)
        payload = b"%d\n" % value
        try:
            if self._create:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            elif not os.path.isdir(directory):
                return  # the folder is gone: nothing to keep
            created = not os.path.exists(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, payload, 0)
                os.ftruncate(fd, len(payload))
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                dir_fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as e:
            log.warn("{path}: cannot write the mod-sequence ceiling ({e})", path=path, e=e)
            self.ceiling = max(self.ceiling, self.highest + 1)
            return
        self.ceiling = value
        self._reserved = True

    # --- expunged UIDs -------------------------------------------------------------

    def expunged_at(self, uids, modseq):
        """Remember `uids` (ascending) as expunged at `modseq`."""
        with self._lock:
            run = None
            for uid in uids:
                if run is not None and uid == run[2] + 1:
                    run[2] = uid
                    continue
                run = [modseq, uid, uid]
                self.expunged.append(run)
            self.count += len(uids)
            while self.count > KEEP_EXPUNGED and self.expunged:
                m, a, b = self.expunged.pop(0)
                self.count -= b - a + 1
                self.since = max(self.since, m)

    def forget_expunged(self):
        """The UIDs were renumbered (a new UIDVALIDITY): the old expunges mean nothing now."""
        with self._lock:
            self.expunged, self.count = [], 0
            self.since = self.highest

    def vanished(self, modseq):
        """
        The UIDs expunged at a modseq above `modseq`, ascending; None when
        expunges that old are no longer remembered.
        """
        with self._lock:
            if modseq < self.since:
                return None
            out = set()
            for m, a, b in reversed(self.expunged):
                if m <= modseq:
                    break
                out.update(range(a, b + 1))
        return sorted(out)

    # --- the index -----------------------------------------------------------------

    def snapshot(self):
        """
        The fields the index keeps (its per-message list aside). The next
        modseq after a snapshot raises the ceiling again, so that a ceiling
        file naming this snapshot's ceiling proves nothing was given since.
        """
        with self._lock:
            self._reserved = False
            return {
                "highestmodseq": self.highest,
                "modseq_ceiling": self.ceiling,
                "vanished_since": self.since,
                "vanished": [list(r) for r in self.expunged],
            }


def settle(modseqs, infos, removed=(), reset=False):
    """
    One change installed in a folder's view (reactor thread, folder lock
    held): the infos among `infos` without a modseq (0) - all of them when
    the folder is recovering or was renumbered - get the next one, and the
    `removed` UIDs are remembered as expunged at it.

    @return: the modseq used, or None when nothing needed one.
    """
    if modseqs.recovering or reset:
        fresh = list(infos)
    else:
        fresh = [i for i in infos if not i.modseq]
    if not fresh and not removed and not reset:
        return None
    value = modseqs.allocate()
    for info in fresh:
        info.modseq = value
    if reset:
        modseqs.forget_expunged()
    elif removed:
        modseqs.expunged_at(sorted(removed), value)
    modseqs.recovering = False
    return value
