"""Running many configs in parallel processes and collecting their records."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def config_paths(items: Iterable[Path]) -> list[Path]:
    """YAML files named directly, and every *.yaml/*.yml in named directories, sorted."""
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            paths.append(item)
    return paths
