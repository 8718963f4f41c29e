"""PEP 562 lazy exports for a package whose submodules import torch: `import imgtrain.data` stays torch-free and
`imgtrain.data.ShardSplit` imports its submodule on first use. One helper, used by data/, models/, tasks/."""
from __future__ import annotations

import importlib
from typing import Callable, Iterable, Mapping


def lazy_exports(package: str, namespace: dict, names: Mapping[str, str],
                 submodules: Iterable[str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for `package`: `names` maps an exported name to the submodule defining it,
    `submodules` may be reached as attributes; `namespace` is the package's globals() (a loaded name is
    cached there, so __getattr__ runs once per name)."""
    subs = frozenset(submodules)

    def __getattr__(name: str):
        if name in names:
            value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
            namespace[name] = value
            return value
        if name in subs:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())) | subs)

    return __getattr__, __dir__
