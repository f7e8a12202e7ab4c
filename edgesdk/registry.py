"""Kebab-case names mapped to import strings, imported on first use."""
import importlib

from edgesdk.errors import UnknownNameError


class Registry(object):
    """A closed table ``name -> "package.module:attribute"`` for one kind of thing."""

    def __init__(self, kind, entries):
        self.kind = kind
        self._entries = dict(entries)
        self._loaded = {}

    def names(self):
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def get(self, name):
        """Import and return the object registered under ``name``."""
        if name not in self._entries:
            raise UnknownNameError("unknown {} '{}'; valid names: {}".format(
                self.kind, name, ", ".join(self.names())))
        if name not in self._loaded:
            module, _, attr = self._entries[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]
