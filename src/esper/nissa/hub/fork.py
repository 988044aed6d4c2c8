"""Fork safety: one ordered after-fork handler for everything Esper must rebuild in a child.

A forked child has only the thread that called ``fork``; a lock another thread held at that
moment stays held forever in the child. Objects that own locks register here and rebuild them
first (``_reinit_after_fork``); hubs register separately and are reset after that, so a hub's
new delivery threads never meet a backend whose lock is still the parent's.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class _ForkAware(Protocol):
    def _reinit_after_fork(self) -> None: ...


_RESOURCES: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
_HUBS: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def register_fork_resource(obj: _ForkAware) -> None:
    """Call ``obj._reinit_after_fork()`` in every forked child (before any hub restarts)."""
    _RESOURCES.add(obj)


def register_fork_hub(hub: _ForkAware) -> None:
    """Call ``hub._reinit_after_fork()`` in every forked child, after the resources."""
    _HUBS.add(hub)


def _after_fork_in_child() -> None:
    for resource in list(_RESOURCES):
        resource._reinit_after_fork()
    for hub in list(_HUBS):
        hub._reinit_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
