"""
The small per-user JSON memories of Sieve extensions (vacation's replies,
duplicate's ids): a dict of key -> when last seen, bounded in size and
written atomically. Blocking file I/O.
"""

import json
import os


def load(path):
    """The dict in `path`, or {} when it is missing, unreadable or not a dict."""
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save(path, data, entries):
    """Write `data` to `path` atomically, keeping only the `entries` most recent (by value)."""
    if len(data) > entries:
        data = dict(sorted(data.items(), key=lambda kv: kv[1])[-entries:])
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
