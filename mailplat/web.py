"""
The `[listen] http` endpoint: one twisted.web listener for everything the
server says over HTTP (client autoconfiguration, ACME http-01 challenges,
later the metrics), each part a child resource mounted at its path.

How to mount a resource (from make_service, or from a part it builds):

    from mailplat.web import WebRoot

    web = WebRoot()                       # make_service keeps it as top.web
    web.mount("/.well-known/acme-challenge", ChallengeResource())
    web.mount("/mail/config-v1.1.xml", page)

`mount` makes the path's intermediate segments as plain Resources (so two
parts may share `/.well-known/`) and refuses a path already taken, naming
it. A mounted resource sees the rest of the path as usual in twisted.web
(`isLeaf = True` to take all of it, or getChild/putChild below it).
L{WebRoot.site} is the factory for the listener: no tracebacks to clients,
no access-log line per request (an autoconfig poll is not an event).

`top.web` is None when `[listen] http` is not set: a part that mounts must
check, e.g. `if top.web is not None: top.web.mount(...)`.
"""

from twisted.web import resource, server


class PathTaken(ValueError):
    """A path already has a resource mounted on it."""


class WebRoot(resource.Resource):
    """The root of the `[listen] http` site; unknown paths answer 404."""

    def __init__(self):
        super().__init__()
        self.mounted = {}  # "/a/b" -> resource, for the start-up log and tests

    def mount(self, path, child):
        """
        Serve `child` at `path` ("/a/b", or "a/b"; case-sensitive, no
        trailing slash needed).

        @raise PathTaken: when `path` (or a path above it) is already mounted.
        """
        segments = [s for s in path.strip("/").split("/") if s]
        if not segments:
            raise ValueError("cannot mount at the root: mount at a path below it")
        key = "/" + "/".join(segments)
        node = self
        for depth, name in enumerate(segments[:-1]):
            raw = name.encode("utf-8")
            below = node.children.get(raw)
            above = "/" + "/".join(segments[: depth + 1])
            if below is None:
                below = resource.Resource()
                node.putChild(raw, below)
            elif above in self.mounted:
                raise PathTaken(f"{key}: {above} is already served by {type(below).__name__}")
            node = below
        last = segments[-1].encode("utf-8")
        if last in node.children:
            raise PathTaken(f"{key}: already mounted")
        node.putChild(last, child)
        self.mounted[key] = child
        return child

    def site(self):
        """The protocol factory for the `[listen] http` endpoint."""
        site = QuietSite(self)
        site.displayTracebacks = False
        return site


class QuietSite(server.Site):
    """No access-log line per request (client autoconfig polls, ACME checks)."""

    def log(self, request):
        pass
