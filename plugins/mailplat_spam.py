"""
Spam defence checks: DNS block and allow lists, greylisting, rspamd and
its learning from the Junk folder, the users' own allow and block lists
(docs/check-dnsbl.md, docs/check-greylist.md, docs/check-rspamd.md,
docs/lists.md).

    [checks]
    enabled = ["dnsbl", "greylist"]

    [checks.dnsbl]
    block = [{ zone = "zen.spamhaus.org", returns = ["127.0.0.2/31", "127.0.0.4/30"] },
             { zone = "dbl.spamhaus.org", query = ["helo", "sender"], weight = 0.5 }]
    allow = [{ zone = "list.dnswl.org" }]
    threshold = 1.0

    [checks.greylist]
    delay = 300

    [checks.rspamd]
    url = "http://127.0.0.1:11333"
    timeout = 10
    on_error = "continue"
    learn = true                    # moves into / out of Junk teach rspamd
    controller = "http://127.0.0.1:11334"
"""

from mailplat.plugin import BackendPlugin, Key
from mailplat.spam import dnsbl as _dnsbl
from mailplat.spam import greylist as _greylist
from mailplat.spam import learn as _learn
from mailplat.spam import lists as _lists
from mailplat.spam import rspamd as _rspamd

dnsbl = BackendPlugin(
    "check", "dnsbl", "DNS block and allow lists (RFC 5782) for the client address, HELO and sender domains",
    _dnsbl.from_section,
    keys={
        "block": Key(list, required=True, doc="block lists: zone names or tables { zone, query, weight, returns }"),
        "allow": Key(list, default=[], doc="allow lists, the same form: a listing there accepts the client"),
        "threshold": Key(float, default=1.0, doc="refuse when the weights of the listing block lists reach this"),
        "deadline": Key(float, default=_dnsbl.DEFAULT_DEADLINE, doc="seconds all the lookups may take together"),
    },
)

greylist = BackendPlugin(
    "check", "greylist", "Greylisting: 451 4.7.1 for a new (client network, sender, recipient) until it retries",
    _greylist.from_section,
    keys={
        "delay": Key(float, default=_greylist.DEFAULT_DELAY, doc="seconds a new triplet must wait before a retry passes"),
        "retry_window": Key(float, default=_greylist.DEFAULT_RETRY_WINDOW,
                            doc="seconds after the first try a retry still passes; later, the wait starts again"),
        "expiry_days": Key(float, default=_greylist.DEFAULT_EXPIRY_DAYS,
                           doc="days a passed triplet is remembered after its last message"),
        "max_entries": Key(int, default=_greylist.DEFAULT_MAX_ENTRIES,
                           doc="triplets kept at most; the least recently seen go first"),
        "allow": Key(list, default=list(_greylist.DEFAULT_ALLOW), doc="client networks never greylisted"),
        "ipv4_prefix": Key(int, default=24, doc="an IPv4 client is greylisted as its network of this length"),
        "ipv6_prefix": Key(int, default=64, doc="an IPv6 client is greylisted as its network of this length"),
    },
)

rspamd = BackendPlugin(
    "check", "rspamd", "rspamd's verdict at end of data: reject, tempfail, Junk folder with X-Spam-* headers",
    _learn.rspamd_from_section,
    keys={
        "url": Key(str, default=_rspamd.DEFAULT_URL, doc="rspamd's normal worker (its /checkv2 is asked)"),
        "folder": Key(str, default="Junk", doc="where add header / rewrite subject messages are filed"),
        "headers": Key(bool, default=True, doc="add X-Spam-Flag, -Score, -Action, -Symbols to scanned messages"),
        "max_size": Key(int, default=_rspamd.DEFAULT_MAX_SIZE, doc="larger messages are not scanned (octets)"),
        "learn": Key(bool, default=False, doc="report messages users move into / out of Junk over IMAP as spam / ham"),
        "controller": Key(str, default=_learn.DEFAULT_CONTROLLER,
                          doc="rspamd's controller worker, for learning (/learnspam, /learnham)"),
        "password": Key(str, doc="the controller's password (sent as the Password header), if it has one"),
        "allow_on_not_junk": Key(bool, default=True,
                                 doc="a message moved out of Junk puts its sender on the user's allow list"),
    },
)

lists = BackendPlugin(
    "check", "lists", "The users' allow and block lists (mailplat lists): block-listed senders refused at RCPT",
    _lists.from_section,
    keys={},
)
