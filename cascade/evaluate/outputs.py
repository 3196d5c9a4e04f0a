"""Tune outputs on disk, and the ``--param NAME=VALUE`` parsing the commands share.

A tune output is a folder holding ``curve.parquet`` and ``summary.json`` (:data:`OUTPUT_FILES`). It is
written as one unit: both files go into a temporary folder beside the target, which then takes the
target's place by rename. An existing output is moved aside and removed only after the new one is in
place, so a reader (or a second writer) sees the old output or the new one, never a mix. Two writers into
the same folder at once each install a complete output; the last rename wins. ``--all-cascades`` writes
one such folder per cascade under ``--out``, all of them under one lock (``filelock``) on ``--out``, so
two runs never interleave their cascades.

:func:`check_out` runs before any work: ``--out`` must not be a file, nor lie below one, its first
existing parent must be a writable folder, and an existing ``--out`` must be empty or a previous tune
output (nothing else in it is ever removed).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

OUTPUT_FILES = frozenset({"curve.parquet", "summary.json"})
LOCK_NAME = ".cascade-tune.lock"


# ------------------------------------------------------------------------------------------------
# --param NAME=VALUE
# ------------------------------------------------------------------------------------------------

def parse_value(v: str):
    """A command-line value: int, float, true/false, none/null, else the string."""
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if v.lower() in ("none", "null"):
        return None
    return v


def parse_params(items) -> dict:
    """``["n_quantiles=20", ...]`` -> ``{"n_quantiles": 20}`` (dashes in names become underscores)."""
    params = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--param {item!r}: use NAME=VALUE, e.g. --param n_quantiles=20")
        k, v = item.split("=", 1)
        params[k.strip().replace("-", "_")] = parse_value(v.strip())
    return params


def parse_method_params(items) -> dict:
    """``["bayes-opt.n_trials=100", ...]`` -> ``{"bayes-opt": {"n_trials": 100}}``."""
    out: dict = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--param {item!r}: use METHOD.NAME=VALUE, e.g. --param bayes-opt.n_trials=100")
        key, v = item.split("=", 1)
        method, name = key.rsplit(".", 1)
        out.setdefault(method.strip(), {})[name.strip().replace("-", "_")] = parse_value(v.strip())
    return out


# ------------------------------------------------------------------------------------------------
# --out checks and atomic folder writes
# ------------------------------------------------------------------------------------------------

def _foreign(folder: Path) -> list[str]:
    """Entries of an existing folder that are not tune-output files. An output file that vanishes while
    we look (a concurrent writer moved the folder aside) is not foreign: only a folder under an output
    file's name or another name is."""
    return sorted(p.name for p in folder.iterdir()
                  if (p.name not in OUTPUT_FILES and p.name != LOCK_NAME) or (p.name in OUTPUT_FILES and p.is_dir()))


def check_out(out, *, unit: bool = True, option: str = "--out") -> Path:
    """Check an output folder before any work; raise ValueError (one line) if nothing could be written there.

    ``unit``: the folder itself is a tune output (``cascade tune`` without ``--all-cascades``): if it exists
    it must be empty or hold only :data:`OUTPUT_FILES`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: is a file; give a folder (new, or a previous output to replace)")
    anc = out
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc != out and not anc.is_dir():
        raise ValueError(f"{option} {out}: {anc} is a file, so nothing can be written below it; give a folder path")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: {anc} is not writable; give a folder you can write to")
    if unit and out.is_dir():
        foreign = _foreign(out)
        if foreign:
            raise ValueError(f"{option} {out}: the folder holds files that are not a `cascade tune` output "
                             f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); give a new or empty "
                             "folder (a previous tune output is replaced)")
    return out


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _install(tmp: Path, target: Path, attempts: int = 100) -> None:
    """Put folder ``tmp`` at ``target`` by rename; a previous output at ``target`` is moved aside first and
    removed afterwards. Safe against a concurrent writer doing the same (the last rename wins)."""
    for _ in range(attempts):
        try:
            os.rename(tmp, target)  # replaces an empty folder; fails on a non-empty one
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        if target.is_dir():
            try:
                foreign = _foreign(target)
            except FileNotFoundError:  # another writer moved it aside between the two looks: try again
                continue
            if foreign:
                raise ValueError(f"{target}: holds files that are not a `cascade tune` output "
                                 f"({', '.join(foreign[:3])}); not replacing it")
        elif target.exists():
            raise ValueError(f"{target}: is a file; not replacing it with a tune output")
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(target, old)
        except FileNotFoundError:  # another writer moved it first: try again
            continue
        shutil.rmtree(old, ignore_errors=True)
    raise OSError(f"{target}: could not install the output after {attempts} attempts (concurrent writers?)")


def write_outputs(out, curve: pd.DataFrame, summary: dict) -> Path:
    """Write ``curve.parquet`` and ``summary.json`` as one folder ``out`` (see the module doc)."""
    out = Path(out).absolute()
    if out.name in ("", ".", ".."):
        raise ValueError(f"{out}: give the output folder a name")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        curve.to_parquet(tmp / "curve.parquet", index=False)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        _install(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def cascade_folder(models) -> str:
    """The folder name of a cascade's output under ``--all-cascades``: the model names joined by ``-``,
    made safe by :func:`cascade.data.records.folder_name` (never ``..``, ``/`` or a hidden name)."""
    name = "-".join(models)
    try:
        from cascade.data.records import folder_name
    except ImportError:  # pragma: no cover - older records module
        folder_name = None
    if folder_name is not None:
        return folder_name(name, "cascade")
    if name in ("", ".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"cascade {name!r} cannot be a folder name; rename the models")
    return name


def cascade_folders(cascades) -> list[str]:
    """:func:`cascade_folder` of each cascade; refuses two cascades that would share a folder."""
    names = [cascade_folder(c) for c in cascades]
    seen: dict[str, list] = {}
    for n, c in zip(names, cascades):
        if n in seen:
            raise ValueError(f"cascades {' -> '.join(seen[n])} and {' -> '.join(c)} would share the output folder "
                             f"{n!r}; rename a model")
        seen[n] = list(c)
    return names


def write_many(out, items) -> list[Path]:
    """``--all-cascades``: ``items`` = [(folder name, curve, summary)], each written with :func:`write_outputs`
    under ``out``, all under one lock on ``out``."""
    from filelock import FileLock

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with FileLock(str(out / LOCK_NAME)):
        for name, curve, summary in items:
            written.append(write_outputs(out / name, curve, summary))
    return written


__all__ = ["OUTPUT_FILES", "parse_value", "parse_params", "parse_method_params", "check_out", "write_outputs",
           "write_many", "cascade_folder", "cascade_folders"]
