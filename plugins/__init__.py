"""
Backend plugins for mailplat: realms, stores and delivery agents.

A third-party backend is one module dropped in here (or in a `plugins/`
folder without __init__.py anywhere on sys.path), defining objects made
with `mailplat.plugin.BackendPlugin`. The config picks them by name.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
