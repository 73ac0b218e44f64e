"""
Backend plugins: objects providing twisted.plugin's IPlugin and one factory
interface per kind, in the modules of the top-level `plugins` package (a
drop-in folder, extended like twisted.plugins across sys.path so installed
packages can add modules), chosen by name in the config.

The modules are imported here with importlib rather than through
twisted.plugin.getPlugins, which logs a broken module and carries on: an
operator must be told which plugin is broken and why (`mailplat plugins`,
`check-config`, start-up), and a selected broken plugin must stop the server.
"""

import importlib
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
    IStoreFactory,
)

# A plugin's `keys` saying it reads whatever its section holds (its
# section is then not checked for misspelt keys).
ANY_KEYS = "any"

# kind -> the keys the core reads from the plugin's section itself (the
# name that selects the plugin; paths the core fills in by default).
CORE_KEYS = {
    "realm": ("backend", "path"),
    "store": ("backend", "path"),
    "delivery": ("local", "recipient_delimiter"),
    "check": (),
}

# kind -> (factory interface, backend interface, config key naming it)
KINDS = {
    "realm": (IRealmFactory, IRealmBackend, "realm.backend"),
    "store": (IStoreFactory, IMailStore, "store.backend"),
    "delivery": (IDeliveryFactory, IDeliveryAgent, "delivery.local"),
    "check": (ICheckFactory, ICheck, "checks.enabled"),
}


class BackendPlugin:
    """
    A plugin object: a name, a line of description, and a `build(section,
    context)` callable. Providing `kind` makes it findable.

    `keys` are the keys its section may hold: names, or a dict of name to
    None (any value) or to the keys of a sub-table ({"lmtp": ("endpoint",
    ...)}); L{ANY_KEYS} to take any. A misspelt key then stops the server
    before `build` runs. A plugin that leaves `keys` out is not checked
    (and the server logs that it is not).
    """

    def __init__(self, kind, name, description, build, module=None, keys=None):
        self.kind = kind
        self.module = module or sys._getframe(1).f_globals.get("__name__", "?")
        self.name = name
        self.description = description
        self.keys = keys
        self._build = build
        directlyProvides(self, IPlugin, KINDS[kind][0])

    def from_config(self, section, context):
        return self._build(section, context)

    def __repr__(self):
        return f"<BackendPlugin {self.kind} {self.name}>"


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


def scan():
    """
    Import every module of the plugins package.

    @return: (plugins, problems): plugins is a list of plugin objects that
        provide IPlugin and a valid factory interface; problems a list of
        L{PluginProblem} for modules that failed to import and for objects
        whose claimed interface does not verify.
    """
    package = _package()
    found, problems, seen, objects = [], [], set(), set()
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in seen or info.name.startswith("_"):
            continue
        seen.add(info.name)
        modname = f"{package.__name__}.{info.name}"
        try:
            module = importlib.import_module(modname)
        except Exception as e:  # a plugin may raise anything on import
            sys.modules.pop(modname, None)
            problems.append(PluginProblem(modname, _import_error(e)))
            continue
        for attr, obj in sorted(vars(module).items()):
            kind = _kind_of(obj)
            if kind is None:
                continue
            if id(obj) in objects:
                continue  # imported by another plugin module: counted once
            objects.add(id(obj))
            name = getattr(obj, "name", attr)
            if not IPlugin.providedBy(obj):
                problems.append(PluginProblem(modname, "does not provide twisted.plugin.IPlugin", name, kind))
                continue
            try:
                verifyObject(KINDS[kind][0], obj)
            except Invalid as e:
                problems.append(
                    PluginProblem(modname, f"does not provide {KINDS[kind][0].__name__}: {_one_line(e)}", name, kind)
                )
                continue
            if not getattr(obj, "module", None):
                try:
                    obj.module = modname
                except AttributeError:
                    pass
            found.append(obj)
    return found, problems


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
    Refuse a key of `section` the plugin `obj` does not declare (its
    `keys`) and the core does not read, naming it as `table.key` with the
    closest spelling. Returns False when the plugin declares nothing.
    """
    declared = getattr(obj, "keys", None)
    if declared is None or declared == ANY_KEYS:
        return declared is not None
    known = dict.fromkeys(CORE_KEYS[kind])
    known.update(declared if isinstance(declared, dict) else dict.fromkeys(declared))
    _check_table(section, table, known)
    return True


def _check_table(section, table, known):
    from mailplat.config import unknown

    for name, value in section.items():
        if name not in known:
            dotted, problem = unknown(table, name, list(known))
            raise PluginError(f"{dotted}: {problem}")
        sub = known[name]
        if sub is not None and sub != ANY_KEYS and isinstance(value, dict):
            _check_table(value, f"{table}.{name}", dict.fromkeys(sub))


def find(kind, name):
    """The working plugin `name` of `kind`, or None."""
    return available(kind).get(name)


def build(kind, name, section, context, key=None, table=None):
    """
    Find the plugin `name` of `kind`, check its section's keys (see
    L{check_section}; `table` names the section, default the kind's
    table), build it, and verify the result.
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
    if not check_section(kind, found[name], section, table):
        from twisted.logger import Logger

        Logger().warn(
            "{kind} plugin {name!r} ({module}) does not declare its keys: [{table}] is not checked for misspellings",
            kind=kind, name=name, module=found[name].module, table=table,
        )
    try:
        backend = found[name].from_config(section, context)
    except (ValueError, KeyError, TypeError) as e:
        raise PluginError(f"{key} {name!r}: {e}")
    try:
        verifyObject(backend_iface, backend)
    except Invalid as e:
        raise PluginError(
            f"{key} {name!r} ({found[name].module}): built object does not provide "
            f"{backend_iface.__name__}: {_one_line(e)}"
        )
    return backend
