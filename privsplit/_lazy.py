"""Lazy package attributes: ``privsplit.edge.EdgePipeline`` imports its module on first use.

Keeps ``import privsplit.<side>`` cheap (and torch-free on the edge). Imports nothing heavy itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], object], list[str]]:
    """``(__getattr__, __all__)`` for ``package`` exporting each ``name`` from module ``names[name]``."""

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(names)
