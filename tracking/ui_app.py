"""``mlflow ui --app-name cascade`` (or ``mlflow server --app-name cascade``): MLflow's own server and UI,
opening experiments on their runs table in a browser that has never chosen otherwise.

Why: MLflow 3.17's UI does not decide from the experiment which page an experiment opens on. Its sidebar
switch "GenAI | Model training" (the ``workflowType``: ``?workflowType=genai|machine_learning`` in the URL,
else the browser's localStorage key ``mlflow.workflowType_v1``, default ``"genai"``) decides, and the
``mlflow.experimentKind`` tag is not read for it (the UI's feature flag behind the tag is on in 3.17.2, so
the kind is derived from the switch). A fresh browser clicking an experiment on MLflow's home page therefore
lands on the GenAI "Overview" (traces), whatever the experiment holds; links from the home page drop the URL
parameter.

This app is MLflow's (``mlflow.server.fastapi_app:app``, the default of ``mlflow server``) with one change:
the page that loads the UI (``index.html``) first sets that localStorage key to ``"machine_learning"`` when
the browser has no value yet. A choice the user makes with the switch is stored under the same key and
kept; a ``?workflowType=`` in the URL still wins. Registered as the ``mlflow.app`` entry point ``cascade``
(pyproject.toml).
"""

from __future__ import annotations

import json
import os

from flask import Response
from mlflow.server import app as _flask_app

WORKFLOW_KEY = "mlflow.workflowType_v1"  # useLocalStorage({key: "mlflow.workflowType", version: 1})
DEFAULT_WORKFLOW = "machine_learning"
_KEY, _VALUE = json.dumps(WORKFLOW_KEY), json.dumps(json.dumps(DEFAULT_WORKFLOW))
SCRIPT = (f"<script>try{{if(window.localStorage.getItem({_KEY})===null){{window.localStorage.setItem({_KEY},{_VALUE})}}}}"
          "catch(e){}</script>")
_mlflow_serve = _flask_app.view_functions["serve"]


def index_html(html: str) -> str:
    """MLflow's ``index.html`` with the default set before any of the UI's own scripts run."""
    head = html.find("<head>")
    at = head + len("<head>") if head >= 0 else 0
    return html[:at] + SCRIPT + html[at:]


def serve():
    path = os.path.join(_flask_app.static_folder, "index.html")
    if not os.path.exists(path):
        return _mlflow_serve()
    with open(path, encoding="utf-8") as fh:
        return Response(index_html(fh.read()), mimetype="text/html")


_flask_app.view_functions["serve"] = serve

from mlflow.server.fastapi_app import (
    app,  # (imported last: wraps the Flask app above, routes looked up per request)
)

__all__ = ["DEFAULT_WORKFLOW", "WORKFLOW_KEY", "app", "index_html", "serve"]
