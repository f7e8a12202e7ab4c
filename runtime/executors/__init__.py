"""Executors: one per graph file format (the closed table in :mod:`edgesdk.backends`, no
plugins on the device); each subclasses :class:`~.base.Executor`."""
from edgesdk.backends import EXECUTORS  # noqa: F401 (the runtime's name for the table)
