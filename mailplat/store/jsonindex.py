"""Reading a store's JSON index file: both stores keep one beside the mail."""

import json

from twisted.logger import Logger

log = Logger()


def load_versioned(path, version):
    """
    The JSON object at `path`, or None when it is missing, unreadable or of
    another version: an index is only a cache of what the mail says, so a
    bad one is rebuilt, never trusted.
    """
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warn("{path}: unreadable index, rebuilding ({e})", path=path, e=e)
        return None
    if not isinstance(data, dict) or data.get("version") != version:
        return None
    return data
