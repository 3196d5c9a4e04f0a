"""MLflow side of a sweep (``jobs/sweep.py``): which cells are done, one parent run per spec shared by every
driver of that spec, and cleaning up runs a killed driver left RUNNING."""

from __future__ import annotations

import contextlib
import json

from .mlflow_log import OUTPUT_FINGERPRINT_TAG, _flat_params, _open, _tags, git_commit
from .redact import redact_secrets
from .store import configure, experiment_id, guard, tracking_uri, write_lock


def finished_cells(experiment: str, uri: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """``(cell key -> run id, output fingerprint -> run id)`` of the experiment's FINISHED runs. Reads only: a
    SQLite store that does not exist yet is not created (a dry run touches nothing)."""
    import mlflow

    exp_id = experiment_id(experiment, uri)
    by_key: dict[str, str] = {}
    by_output: dict[str, str] = {}
    if exp_id is None:
        return by_key, by_output
    uri = tracking_uri(uri)
    with guard(f"listing the finished cells of {experiment!r}", uri):
        client = mlflow.MlflowClient(uri)
        token = None
        while True:
            page = client.search_runs([exp_id], filter_string="attributes.status = 'FINISHED'", max_results=5000,
                                      page_token=token)
            for run in page:
                if run.data.tags.get("cascade.cell_key"):
                    by_key.setdefault(run.data.tags["cascade.cell_key"], run.info.run_id)
                if run.data.tags.get(OUTPUT_FINGERPRINT_TAG):
                    by_output.setdefault(run.data.tags[OUTPUT_FINGERPRINT_TAG], run.info.run_id)
            token = page.token
            if not token:
                break
    return by_key, by_output


def mark_killed(experiment: str, cell_key: str, uri: str | None = None) -> int:
    """Mark KILLED the runs of ``cell_key`` left RUNNING by a driver that died (call it holding the cell's claim,
    so that no live driver owns them). Returns how many."""
    import mlflow

    exp_id = experiment_id(experiment, uri)
    if exp_id is None:
        return 0
    uri = tracking_uri(uri)
    with guard(f"closing the runs a killed sweep left open in {experiment!r}", uri), write_lock(uri):
        client = mlflow.MlflowClient(uri)
        runs = client.search_runs([exp_id], filter_string=f"tags.`cascade.cell_key` = '{cell_key}' and "
                                                          "attributes.status = 'RUNNING'", max_results=1000)
        for run in runs:
            client.set_terminated(run.info.run_id, status="KILLED")
    return len(runs)


@contextlib.contextmanager
def sweep_parent(experiment: str, sweep_key: str, run_name: str, *, params: dict, spec: dict,
                 uri: str | None = None):
    """The spec's parent run: found by its ``cascade.sweep_key`` tag and resumed, or created (found-or-created
    under the store's write lock, so two drivers of one spec share one parent). Yields the run."""
    import mlflow

    exp_id = configure(uri, experiment)
    created = False

    def start():
        nonlocal created
        client = mlflow.MlflowClient()
        found = client.search_runs([exp_id], filter_string=f"tags.`cascade.sweep_key` = '{sweep_key}' and "
                                                           "tags.`cascade.kind` = 'parent'", max_results=1)
        if found:
            return mlflow.start_run(run_id=found[0].info.run_id)
        created = True
        return mlflow.start_run(run_name=run_name, tags=_tags({
            "cascade.kind": "parent", "cascade.sweep_key": sweep_key, "mlflow.source.git.commit": git_commit()}))

    with _open(start, f"the sweep's parent run {run_name!r}") as run:
        if created:
            with guard(f"logging the parameters of {run_name!r}"), write_lock():
                mlflow.log_params(_flat_params(params))
                mlflow.log_dict(redact_secrets(json.loads(json.dumps(spec, default=str))), "sweep_spec.json")
        yield run
