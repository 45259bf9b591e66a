"""Run a function once a module has been imported (a post-import hook).

``import mmselds`` must stay light (torch only) yet register mmselds into
mmseg's registries for configs and tools. :func:`when_imported` does both:
it runs the registration right away if mmseg is already imported, and
otherwise right after mmseg's ``__init__`` first runs, i.e. before anything
can look a module up in mmseg's registries. Standard library only.
"""
import importlib.abc
import sys
import threading
from types import ModuleType
from typing import Callable, Dict, List, Optional

Callback = Callable[[ModuleType], None]


class _Loader(importlib.abc.Loader):
    """Wraps a module's real loader: executes the module, then hands it to
    the callbacks waiting for it. The module keeps its real loader."""

    def __init__(self, loader, finder: '_Finder', name: str):
        self.loader, self.finder, self.name = loader, finder, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        for callback in self.finder.pop(self.name):
            callback(module)


class _Finder(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` entry that finds nothing itself: for a module
    with callbacks it asks the finders after it and wraps the loader."""

    def __init__(self):
        self.callbacks: Dict[str, List[Callback]] = {}
        self.lock = threading.Lock()

    def add(self, name: str, callback: Callback) -> None:
        with self.lock:
            self.callbacks.setdefault(name, []).append(callback)

    def pop(self, name: str) -> List[Callback]:
        with self.lock:
            return self.callbacks.pop(name, [])

    def find_spec(self, name, path, target=None):
        if name not in self.callbacks:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, 'find_spec', None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if not hasattr(spec.loader, 'exec_module'):
            return None  # a legacy loader: let the import run as usual
        spec.loader = _Loader(spec.loader, self, name)
        return spec


_finder: Optional[_Finder] = None


def when_imported(name: str, callback: Callback) -> None:
    """Call ``callback(module)`` once the top-level module ``name`` is
    imported: now if it already is, else right after its first import
    executes (a failed import keeps the callback for the next try). A module
    that is never imported never calls it."""
    global _finder
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    if _finder is None:
        _finder = _Finder()
        sys.meta_path.insert(0, _finder)
    _finder.add(name, callback)
