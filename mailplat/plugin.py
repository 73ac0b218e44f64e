"""
Backend plugins: found with twisted.plugin in the top-level `plugins`
package (a drop-in folder, extended like twisted.plugins across sys.path)
and chosen by name in the config.
"""

import sys

from twisted.plugin import IPlugin, getPlugins
from zope.interface import directlyProvides
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from mailplat.interfaces import (
    IDeliveryAgent,
    IDeliveryFactory,
    IMailStore,
    IRealmBackend,
    IRealmFactory,
    IStoreFactory,
)

# kind -> (factory interface, backend interface, config key naming it)
KINDS = {
    "realm": (IRealmFactory, IRealmBackend, "realm.backend"),
    "store": (IStoreFactory, IMailStore, "store.backend"),
    "delivery": (IDeliveryFactory, IDeliveryAgent, "delivery.local"),
}


class BackendPlugin:
    """
    A plugin object: a name, a line of description, and a `build(section,
    context)` callable. Providing `kind` makes it findable.
    """

    def __init__(self, kind, name, description, build, module=None):
        self.kind = kind
        self.module = module or sys._getframe(1).f_globals.get("__name__", "?")
        self.name = name
        self.description = description
        self._build = build
        directlyProvides(self, IPlugin, KINDS[kind][0])

    def from_config(self, section, context):
        return self._build(section, context)

    def __repr__(self):
        return f"<BackendPlugin {self.name}>"


def _package():
    import plugins

    return plugins


def available(kind):
    """{name: plugin} of every plugin of a kind."""
    return {p.name: p for p in getPlugins(KINDS[kind][0], _package())}


class PluginError(ValueError):
    """A chosen plugin is missing or broken; the message names it and the key."""


def build(kind, name, section, context):
    """Find the plugin `name` of `kind`, build it, and verify the result."""
    factory_iface, backend_iface, key = KINDS[kind]
    found = available(kind)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise PluginError(f"{key}: unknown {kind} backend {name!r} (available: {known})")
    try:
        backend = found[name].from_config(section, context)
    except (ValueError, KeyError) as e:
        raise PluginError(f"{key} {name!r}: {e}")
    try:
        verifyObject(backend_iface, backend)
    except Invalid as e:
        raise PluginError(f"{key} {name!r}: built object does not provide {backend_iface.__name__}: {e}")
    return backend
