"""Reading a YAML file that holds a mapping (scoring configs, sweep specs, task files), with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path


def read_yaml(path: str | os.PathLike, error: type[ValueError] = ValueError, what: str = "config") -> dict:
    """A YAML file holding a mapping, or ``error`` naming the file and what is wrong with it (one line)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return raw
