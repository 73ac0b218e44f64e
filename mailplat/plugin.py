"""
Backend plugins: objects providing twisted.plugin's IPlugin and one factory
interface per kind, in the modules of the top-level `plugins` package (a
drop-in folder, extended like twisted.plugins across sys.path so installed
packages can add modules), chosen by name in the config.

Installed distributions add plugins too, through the entry-point group
`mailplat.plugins`: each entry point names a module that holds
BackendPlugin objects exactly like a file in `plugins/`

    [project.entry-points."mailplat.plugins"]
    foo = "mailplat_foo.plugin"

The modules are imported here with importlib rather than through
twisted.plugin.getPlugins, which logs a broken module and carries on: an
operator must be told which plugin is broken and why (`mailplat plugins`,
`check-config`, start-up), and a selected broken plugin must stop the server.

A plugin declares the keys of its table (L{Key}: type, default, required,
a line of doc; see mailplat.schema); the table is checked before the plugin
is built, and `mailplat plugins --describe NAME` prints them.
"""

import importlib
import importlib.metadata
import os
import pkgutil
import sys
import traceback

from twisted.plugin import IPlugin, pluginPackagePaths
from zope.interface import directlyProvides
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from mailplat.interfaces import (
    ICheck,
    ICheckFactory,
    IDeliveryAgent,
    IDeliveryFactory,
    IMailStore,
    IRealmBackend,
    IRealmFactory,
    IRelayQueue,
    IRelayQueueFactory,
    IStoreFactory,
)
from mailplat.schema import ANY_KEYS, Key, SchemaError, as_schema, check_table, describe_keys

# The entry-point group of installed plugin distributions.
ENTRY_POINT_GROUP = "mailplat.plugins"

# kind -> the table a plugin's build(section, context) receives.
TABLES = {
    "realm": "[realm] as a dict ('backend' and 'path' included; a relative path made absolute)",
    "store": "[store] as a dict ('backend' and 'path' included)",
    "delivery": "the whole [delivery] table ('local', 'recipient_delimiter' and every [delivery.NAME] "
                "sub-table in it): keep a plugin's own keys in its sub-table [delivery.NAME]",
    "check": "[checks.NAME] as a dict, without 'plugin', 'timeout' and 'on_error' (the server reads those)",
    "relay": "the [relay] table as the server checked it (defaults filled in, smarthost parsed, routes), "
             "with the plugin's own keys in its sub-table [relay.NAME]",
}

# kind -> the keys the core reads from the plugin's section itself (the
# name that selects the plugin; paths the core fills in by default).
CORE_KEYS = {
    "realm": ("backend", "path"),
    "store": ("backend", "path"),
    "delivery": ("local", "recipient_delimiter"),
    "check": (),
    # The [relay] keys the server checks itself (mailplat.config.RELAY_KEYS).
    "relay": (),
}

# kind -> (factory interface, backend interface, config key naming it)
KINDS = {
    "realm": (IRealmFactory, IRealmBackend, "realm.backend"),
    "store": (IStoreFactory, IMailStore, "store.backend"),
    "delivery": (IDeliveryFactory, IDeliveryAgent, "delivery.local"),
    "check": (ICheckFactory, ICheck, "checks.enabled"),
    "relay": (IRelayQueueFactory, IRelayQueue, "relay.queue"),
}


class BackendPlugin:
    """
    A plugin object: a name, a line of description, and a `build(section,
    context)` callable that returns the backend (it runs before the
    reactor does: the backend's methods may be C{async def}, build may
    not). Providing `kind` makes it findable.

    `keys` are the keys its section may hold: a dict of name to L{Key}
    (type, default, required, doc), or, as before, names, or a dict of
    name to None (any value) or to the keys of a sub-table ({"lmtp":
    ("endpoint", ...)}); L{ANY_KEYS} to take any. An unknown, missing or
    mistyped key then stops the server before `build` runs, named as
    `FILE: table.key: ...`. A plugin that leaves `keys` out is not checked
    (and the server logs that it is not). See L{TABLES} for the table
    each kind receives.

    `log` is a logger whose namespace is the plugin's name
    (`mailplat.plugins.NAME`): give it to the backend you build.
    """

    def __init__(self, kind, name, description, build, module=None, keys=None):
        self.kind = kind
        self.module = module or sys._getframe(1).f_globals.get("__name__", "?")
        self.name = name
        self.description = description
        self.keys = keys
        self._build = build
        directlyProvides(self, IPlugin, KINDS[kind][0])

    @property
    def log(self):
        return logger(self.name)

    def from_config(self, section, context):
        return self._build(section, context)

    def __repr__(self):
        return f"<BackendPlugin {self.kind} {self.name}>"


def logger(name):
    """The logger of plugin `name`: its lines say `mailplat.plugins.NAME`."""
    from twisted.logger import Logger

    return Logger(namespace=f"mailplat.plugins.{name}")


class PluginProblem:
    """A plugin module that failed to import, or an object that does not
    provide the interface it claims: what `check-config` reports."""

    def __init__(self, module, reason, name=None, kind=None):
        self.module = module
        self.reason = reason
        self.name = name
        self.kind = kind

    def __str__(self):
        what = f"{self.kind} plugin {self.name!r} in {self.module}" if self.name else f"plugin module {self.module}"
        return f"{what}: {self.reason}"

    def __repr__(self):
        return f"<PluginProblem {self}>"


class PluginError(ValueError):
    """A chosen plugin is missing or broken; the message names it and the key."""


def _package():
    import plugins

    # Folders named `plugins` added to sys.path after the first import
    # (a test's temporary folder, a virtualenv activated late) count too.
    for path in pluginPackagePaths(plugins.__name__):
        if path not in plugins.__path__:
            plugins.__path__.append(path)
    return plugins


def _kind_of(obj):
    for kind, (factory_iface, _, _) in KINDS.items():
        if factory_iface.providedBy(obj):
            return kind
    return None


def _import_error(e):
    """One line: the exception and where in the plugin it was raised."""
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" (at {last.filename}:{last.lineno})"
    return f"import failed: {type(e).__name__}: {e}{where}"


# Plugin objects registered in-process (mailplat.testing runs a server on
# the backend under test this way): found as if a module held them.
_registered = []


def register(obj):
    """
    Offer the plugin object `obj` as if a plugin module held it.
    @return: a no-argument callable that takes it back.
    """
    _registered.append(obj)

    def unregister():
        if obj in _registered:
            _registered.remove(obj)

    return unregister


def _entry_points():
    importlib.invalidate_caches()  # a distribution installed since the last scan counts
    try:
        return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    except Exception:  # a broken distribution's metadata must not hide the rest
        return []


def _modules():
    """(name shown, import callable) of every plugin module: the plugins package, then entry points."""
    package = _package()
    seen = set()
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in seen or info.name.startswith("_"):
            continue
        seen.add(info.name)
        modname = f"{package.__name__}.{info.name}"
        yield modname, modname, (lambda modname=modname: importlib.import_module(modname))
    for ep in _entry_points():
        dist = getattr(getattr(ep, "dist", None), "name", None)
        where = f"{ep.value} (entry point {ep.name!r}{' of ' + dist if dist else ''})"
        yield where, ep.module, (lambda ep=ep: _load_entry_point(ep))


def _load_entry_point(ep):
    module = importlib.import_module(ep.module)
    if ep.attr:  # "pkg.mod:attr" names one object (or a module) in it
        return _Holder(ep.attr, getattr(module, ep.attr))
    return module


class _Holder:
    """An entry point naming one plugin object, as a module holding it."""

    def __init__(self, attr, obj):
        if isinstance(obj, type(sys)):
            self.__dict__.update(vars(obj))
        else:
            setattr(self, attr, obj)


def scan():
    """
    Import every plugin module: those of the plugins package, then those
    the entry points of group `mailplat.plugins` name.

    @return: (plugins, problems): plugins is a list of plugin objects that
        provide IPlugin and a valid factory interface; problems a list of
        L{PluginProblem} for modules that failed to import and for objects
        whose claimed interface does not verify.
    """
    found, problems, objects = [], [], set()
    for where, modname, load in _modules():
        try:
            module = load()
        except Exception as e:  # a plugin may raise anything on import
            sys.modules.pop(modname, None)
            problems.append(PluginProblem(where, _import_error(e)))
            continue
        for attr, obj in sorted(vars(module).items()):
            _consider(obj, attr, modname, found, problems, objects)
    for obj in list(_registered):
        _consider(obj, getattr(obj, "name", "?"), getattr(obj, "module", "?"), found, problems, objects)
    return found, problems


def _consider(obj, attr, modname, found, problems, objects):
    kind = _kind_of(obj)
    if kind is None:
        return
    if id(obj) in objects:
        return  # imported by another plugin module: counted once
    objects.add(id(obj))
    name = getattr(obj, "name", attr)
    if not IPlugin.providedBy(obj):
        problems.append(PluginProblem(modname, "does not provide twisted.plugin.IPlugin", name, kind))
        return
    try:
        verifyObject(KINDS[kind][0], obj)
    except Invalid as e:
        problems.append(
            PluginProblem(modname, f"does not provide {KINDS[kind][0].__name__}: {_one_line(e)}", name, kind)
        )
        return
    if not getattr(obj, "module", None):
        try:
            obj.module = modname
        except AttributeError:
            pass
    found.append(obj)


def _one_line(e):
    return " ".join(str(e).split())


def available(kind):
    """{name: plugin} of every working plugin of a kind."""
    plugins, _ = scan()
    return {p.name: p for p in plugins if KINDS[kind][0].providedBy(p)}


def problems():
    """The L{PluginProblem}s of the plugins package, for reports."""
    return scan()[1]


def check_section(kind, obj, section, table):
    """
    Check `section` against the keys the plugin `obj` declares (its `keys`)
    and those the core reads: refuse an unknown key (naming it as
    `table.key`, with the closest spelling), a missing required one, and
    one of the wrong type. Returns False when the plugin declares nothing.
    """
    return validate(kind, obj, section, table) is not None


def validate(kind, obj, section, table):
    """
    L{check_section}, returning the table `build` is to receive: a copy of
    `section` with the declared defaults filled in; None when the plugin
    declares no keys (the section is then given as it is).

    @raise PluginError: "table.key: problem".
    """
    schema = as_schema(getattr(obj, "keys", None))
    if schema is None:
        return None
    if schema == ANY_KEYS:
        return dict(section)
    known = {name: Key() for name in _core_keys(kind)}
    known.update(schema)
    try:
        return check_table(section, table, known)
    except SchemaError as e:
        raise PluginError(str(e))


def find(kind, name):
    """The working plugin `name` of `kind`, or None."""
    return available(kind).get(name)


def describe(obj):
    """Lines saying what plugin `obj` is and the keys of its table (`mailplat plugins --describe`)."""
    kind = _kind_of(obj)
    lines = [f"{kind} {obj.name} ({getattr(obj, 'module', '?')})", f"  {obj.description}"]
    lines.append(f"  receives: {TABLES.get(kind, 'its table')}")
    schema = as_schema(getattr(obj, "keys", None))
    if schema is None:
        lines.append("  keys: not declared (its table is not checked)")
        return lines
    if schema == ANY_KEYS:
        lines.append("  keys: any (its table is not checked)")
        return lines
    if _core_keys(kind):
        lines.append(f"  read by the server: {', '.join(_core_keys(kind))}")
    if not schema:
        lines.append("  keys: none of its own")
    lines += describe_keys(schema, "  ")
    return lines


def _core_keys(kind):
    if kind == "relay":
        from mailplat.config import RELAY_KEYS

        return ("routes", *RELAY_KEYS)
    return CORE_KEYS.get(kind, ())


def _factory_error(e, plugin):
    """The exception a plugin's build raised: type, message and the plugin's file:line."""
    frames = traceback.extract_tb(e.__traceback__)
    module = sys.modules.get(getattr(plugin, "module", None) or "")
    files = set()
    if module is not None and getattr(module, "__file__", None):
        files.add(os.path.abspath(module.__file__))
    build = getattr(plugin, "_build", None)
    code = getattr(build, "__code__", None)
    if code is not None:
        files.add(os.path.abspath(code.co_filename))
    ours = [f for f in frames if os.path.abspath(f.filename) in files]
    last = (ours or frames or [None])[-1]
    where = f" (at {last.filename}:{last.lineno})" if last is not None else ""
    message = str(e)
    return f"{type(e).__name__}: {message}{where}" if message else f"{type(e).__name__}{where}"


def build(kind, name, section, context, key=None, table=None):
    """
    Find the plugin `name` of `kind`, check its section's keys (see
    L{validate}; `table` names the section, default the kind's table),
    build it, and verify the result.
    """
    factory_iface, backend_iface, default_key = KINDS[kind]
    key = key or default_key
    table = table or key.split(".")[0]
    plugins, broken = scan()
    found = {p.name: p for p in plugins if factory_iface.providedBy(p)}
    if name not in found:
        named = [p for p in broken if p.name == name]
        if named:
            raise PluginError(f"{key}: {kind} plugin {name!r} is broken: {named[0]}")
        known = ", ".join(sorted(found)) or "none"
        text = f"{key}: unknown {kind} backend {name!r} (available: {known})"
        unnamed = [str(p) for p in broken if p.name is None]
        if unnamed:
            text += "; plugin modules that failed to load: " + "; ".join(unnamed)
        raise PluginError(text)
    chosen = found[name]
    checked = validate(kind, chosen, section, table)
    if checked is None:
        from twisted.logger import Logger

        Logger().warn(
            "{kind} plugin {name!r} ({module}) does not declare its keys: [{table}] is not checked for misspellings",
            kind=kind, name=name, module=chosen.module, table=table,
        )
        checked = section
    from mailplat.config import ConfigError

    try:
        backend = chosen.from_config(checked, context)
    except ConfigError:
        raise  # the server's own checks (a built-in plugin), already naming file and key
    except ValueError as e:
        # The documented way to refuse a setting: the message names the key.
        raise PluginError(f"{key} {name!r}: {e}")
    except Exception as e:  # a bug in the plugin: say what and where
        raise PluginError(f"{key} {name!r}: the plugin's factory failed: {_factory_error(e, chosen)}")
    try:
        verifyObject(backend_iface, backend)
    except Invalid as e:
        raise PluginError(
            f"{key} {name!r} ({chosen.module}): built object does not provide "
            f"{backend_iface.__name__}: {_one_line(e)}"
        )
    return backend
