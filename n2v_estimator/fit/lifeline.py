"""A rank process's first moments: it dies with the process that started it, and it does not run
that process's script.

``fit(n_devices > 1)`` starts its ranks with multiprocessing's "spawn". Left to itself, spawn runs
the parent's main module again in every child (a script without ``if __name__ == "__main__":``
then fits again, and the fit never ended), and a child learns its parent is gone only if it asks.
Here:

- :func:`started_without_main` starts a process without running the parent's main module: the
  rank needs only the package and its arguments (its data, its settings), which arrive pickled.
- :func:`rank_entry`, what a rank runs first, imports nothing heavy before it watches its parent:
  torch takes seconds to import, and a parent killed meanwhile must not leave the rank behind.
- :func:`watch_parent` ends the process (after a cleanup) when its parent is gone, however the
  parent ended (``kill -9`` too): a thread waits on the pipe multiprocessing keeps open to the
  parent, or, in a process that multiprocessing did not start (a rank torchrun started), checks
  the parent process id twice a second.

Torch-free: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import multiprocessing
import multiprocessing.connection
import multiprocessing.queues
import os
import shutil
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# How often a process that multiprocessing did not start checks that its parent is still there.
WATCH_SECONDS = 0.5
# The process ids of the parents watched: one thread each, however many fits a process makes.
_WATCHED_PARENTS: set[int] = set()


class DroppingQueue(multiprocessing.queues.Queue):
    """A queue whose background writer drops silently what it cannot deliver: the plan of a rank
    that died while starting (its pipe closed), where multiprocessing prints a traceback. Defined
    here, not beside its use: a rank unpickles it before it can watch its parent."""

    @staticmethod
    def _on_queue_feeder_error(error: Exception, obj: object) -> None:
        pass


def watch_parent(parent: int | None = None, cleanup: Callable[[], object] | None = None) -> None:
    """End this process (``os._exit(1)``) when its parent is gone, after ``cleanup()``.

    ``parent``: the parent's process id (default: the current one), checked every
    :data:`WATCH_SECONDS` where multiprocessing did not start this process; where it did, its
    pipe to the parent tells at once.
    """
    parent = os.getppid() if parent is None else parent
    if parent in _WATCHED_PARENTS:
        return
    _WATCHED_PARENTS.add(parent)
    sentinel = getattr(multiprocessing.parent_process(), "sentinel", None)

    def exit_when_parent_gone() -> None:
        if sentinel is not None:
            multiprocessing.connection.wait([sentinel])
        else:
            while os.getppid() == parent:
                time.sleep(WATCH_SECONDS)
        if cleanup is not None:
            cleanup()
        os._exit(1)

    threading.Thread(target=exit_when_parent_gone, name="n2v-parent-watch", daemon=True).start()


def rank_entry(folder: str, target: str, *args: object) -> None:
    """What a rank of ``fit(n_devices > 1)`` runs: watch the parent (removing the fit's rendezvous
    ``folder`` when it is gone), then import and call ``target`` (``"module:function"``, here
    :func:`n2v_estimator.fit.distributed.rank_main`) with ``(folder, *args)``. The target is named,
    not pickled: unpickling a function imports its module (torch), before the watch could start."""
    watch_parent(cleanup=lambda: shutil.rmtree(folder, ignore_errors=True))
    module, name = target.split(":")
    getattr(importlib.import_module(module), name)(folder, *args)


@contextlib.contextmanager
def started_without_main() -> Iterator[None]:
    """Within: processes started with "spawn" do not run this process's main module (the script).

    Spawn names the main module to its children by ``__main__.__spec__`` (a module run with
    ``-m``) or else by ``__main__.__file__``; a spec named ``__main__`` is the one it skips. Objects
    the children receive must then be importable from a module (not defined in the script).
    """
    main = sys.modules.get("__main__")
    if main is None or (getattr(main, "__file__", None) is None and getattr(main, "__spec__", None) is None):
        yield  # an interactive session or a notebook: nothing is run again anyway
        return
    spec = main.__spec__
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)  # the name spawn skips
    try:
        yield
    finally:
        main.__spec__ = spec
