"""Runs a command left open because the tracking store failed under it (an MLflow server that died mid-run).

A command that exits 3 on a tracking failure saves the runs it could not end into its kept results
(``<folder>/.mlflow-open-runs.json``: hidden, so no output fingerprint and no reader sees it); the next
`cascade log <folder>` or rerun of the sweep, once the store answers, marks those still RUNNING as KILLED and
removes the file. While the store still fails the file stays and the command exits 3 again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .mlflow_log import UNENDED
from .store import TrackingUnavailable, check_reachable, guard, write_lock

FILE = ".mlflow-open-runs.json"


def save(folder: str | os.PathLike) -> int:
    """Add this process's unended runs to ``folder``'s list (kept with the results); returns how many."""
    if not UNENDED:
        return 0
    folder = Path(folder)
    path = folder / FILE
    have = _read(path)
    have.update(UNENDED)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps([{"run_id": r, "uri": u} for r, u in sorted(have.items())], indent=1))
        os.replace(tmp, path)
    except OSError:
        return 0  # the results are kept either way; the runs then stay RUNNING
    n = len(UNENDED)
    UNENDED.clear()
    return n


def close(folder: str | os.PathLike) -> int:
    """Mark KILLED the runs listed in ``folder`` that are still RUNNING, then drop the list; returns how many
    were marked. Raises :class:`TrackingUnavailable` (the list kept) while their store fails."""
    import mlflow

    path = Path(folder) / FILE
    runs = _read(path)
    if not runs:
        return 0
    n = 0
    for uri in sorted(set(runs.values())):
        check_reachable(uri)
        with guard("closing the runs a failed command left open", uri), write_lock(uri):
            client = mlflow.MlflowClient(uri)
            for run_id in sorted(r for r, u in runs.items() if u == uri):
                try:
                    status = client.get_run(run_id).info.status
                except mlflow.exceptions.MlflowException as e:
                    if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                        continue  # deleted since: nothing to close
                    raise
                if status == "RUNNING":
                    client.set_terminated(run_id, status="KILLED")
                    n += 1
    path.unlink(missing_ok=True)
    return n


def _read(path: Path) -> dict[str, str]:
    try:
        items = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise TrackingUnavailable(f"{path} is unreadable ({e}); remove it (it only lists runs to mark "
                                  "KILLED)") from e
    return {str(i["run_id"]): str(i["uri"]) for i in items if isinstance(i, dict) and "run_id" in i and "uri" in i}
