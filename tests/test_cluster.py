"""cluster/: every YAML parses, has the keys its kind needs, and points at real modules and files of this repo."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
YAMLS = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
RAY_IMAGE = re.compile(r"^rayproject/ray(-ml)?:2\.60\.\d+-py311-(gpu|cu\d+)$")
OUR_IMAGE = "ghcr.io/YOUR-ORG/cascade-eval:"


def _docs(p: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(p.read_text()) if d is not None]


def _commands(obj) -> list[str]:
    """Every string in a document that runs something of ours (python -m jobs.X / ray job submit)."""
    out = []
    if isinstance(obj, dict):
        for v in obj.values():
            out += _commands(v)
    elif isinstance(obj, list):
        for v in obj:
            out += _commands(v)
    elif isinstance(obj, str) and ("-m jobs." in obj or "jobs/" in obj):
        out.append(obj)
    return out


def _check_entrypoint(cmd: str) -> None:
    """`python -m jobs.<name> CONFIG ...`: jobs/<name>.py exists (score, tune, sweep) and so does CONFIG."""
    # ${{ ... }} (GitHub expressions) and $(...) are not shell words we can split
    cmd = re.sub(r"\$\{\{[^}]*\}\}", "X", cmd)
    cmd = re.sub(r"\$\([^)]*\)", "X", cmd)
    words = shlex.split(cmd)
    mods = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-m" and words[i + 1].startswith("jobs.")]
    assert mods, f"no `python -m jobs.*` in {cmd!r}"
    for i, w in enumerate(words[:-1]):
        if w == "-m" and words[i + 1].startswith("jobs."):
            name = words[i + 1].split(".", 1)[1]
            assert name in {"score", "tune", "sweep"}, f"{cmd!r}: jobs.{name} is not a job entry point"
            assert (ROOT / "jobs" / f"{name}.py").exists(), f"{cmd!r}: jobs/{name}.py does not exist"
            if i + 2 < len(words) and not words[i + 2].startswith("-"):
                cfg = words[i + 2]
                assert (ROOT / cfg).exists(), f"{cmd!r}: {cfg} does not exist in the repository"


def test_there_is_something_to_check():
    names = {p.relative_to(CLUSTER).as_posix() for p in YAMLS}
    assert {"aws-a100.yaml", "gcp-a100.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-sweep.yaml",
            "kuberay/raycronjob-sweep.yaml", "kuberay/cronjob-sweep.yaml", "ci/sweep-cron.yml"} <= names
    # the CI example must not run in this project's CI
    assert not (ROOT / ".github" / "workflows" / "sweep-cron.yml").exists()


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_yaml_parses_and_entrypoints_are_real(path):
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for d in docs:
        for cmd in _commands(d):
            _check_entrypoint(cmd)


@pytest.mark.parametrize("name", ["aws-a100.yaml", "gcp-a100.yaml"])
def test_launcher_configs(name):
    (cfg,) = _docs(CLUSTER / name)
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type", "docker",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands", "file_mounts"):
        assert key in cfg, f"{name}: missing {key}"
    assert RAY_IMAGE.match(cfg["docker"]["image"]), cfg["docker"]["image"]
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert gpu and all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in gpu.values())  # autoscaling from 0
    if cfg["provider"]["type"] == "aws":
        assert {v["node_config"]["InstanceType"] for v in gpu.values()} == {"p4d.24xlarge"}
    else:
        assert cfg["provider"]["type"] == "gcp"
        assert {v["node_config"]["machineType"] for v in gpu.values()} == {"a2-highgpu-1g", "a2-highgpu-8g"}
        for v in gpu.values():
            assert v["node_config"]["guestAccelerators"][0]["acceleratorType"] == "nvidia-tesla-a100"
    setup = " ".join(cfg["setup_commands"])
    assert "[gpu,tracking]" in setup and "ray[data,default]==2.60.*" in setup
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
               if "ray start" in c)
    assert cfg["file_mounts"]["~/cascade-eval"] == "."
    for excl in (".venv", "mlflow.db", "runs"):
        assert excl in cfg["rsync_exclude"]


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _check_raycluster_spec(spec: dict, where: str) -> None:
    assert spec["rayVersion"].startswith("2.60."), where
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth"
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head
    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1, f"{where}: autoscaling GPU workers"
        assert spec.get("enableInTreeAutoscaling") is True
        (c,) = _containers(g["template"])
        assert c["resources"]["limits"]["nvidia.com/gpu"], f"{where}: GPU workers"
    for c in _containers(head["template"]) + [c for g in groups for c in _containers(g["template"])]:
        assert c["image"].startswith(OUR_IMAGE), c["image"]
        assert {"configMapRef": {"name": "cascade-eval-mlflow"}} in c.get("envFrom", []), f"{where}: MLflow env"


def test_kuberay_manifests():
    (rc,) = _docs(CLUSTER / "kuberay" / "raycluster.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_raycluster_spec(rc["spec"], "raycluster.yaml")

    (rj,) = _docs(CLUSTER / "kuberay" / "rayjob-sweep.yaml")
    assert (rj["apiVersion"], rj["kind"]) == ("ray.io/v1", "RayJob")
    assert rj["spec"]["entrypoint"].startswith("python -m jobs.sweep examples/sweep-medmcqa.yaml")
    assert rj["spec"]["shutdownAfterJobFinishes"] is True
    _check_raycluster_spec(rj["spec"]["rayClusterSpec"], "rayjob-sweep.yaml")

    (cj,) = _docs(CLUSTER / "kuberay" / "raycronjob-sweep.yaml")
    assert (cj["apiVersion"], cj["kind"]) == ("ray.io/v1", "RayCronJob")  # KubeRay >= 1.6 (alpha, feature gate)
    assert len(cj["spec"]["schedule"].split()) == 5
    tmpl = cj["spec"]["jobTemplate"]
    assert tmpl["entrypoint"].startswith("python -m jobs.sweep ")
    _check_raycluster_spec(tmpl["rayClusterSpec"], "raycronjob-sweep.yaml")

    (k8s,) = _docs(CLUSTER / "kuberay" / "cronjob-sweep.yaml")
    assert (k8s["apiVersion"], k8s["kind"]) == ("batch/v1", "CronJob")
    assert k8s["spec"]["concurrencyPolicy"] == "Forbid"
    pod = k8s["spec"]["jobTemplate"]["spec"]["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    (c,) = _containers(pod)
    script = " ".join(c["args"])
    assert "ray job submit" in script and "--address http://cascade-eval-head-svc:8265" in script
    env = {e["name"]: e for e in c["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]

    (cm,) = _docs(CLUSTER / "kuberay" / "mlflow-env.yaml")
    assert cm["kind"] == "ConfigMap" and cm["data"]["MLFLOW_TRACKING_URI"].startswith("http")


def test_ci_cron_example():
    (wf,) = _docs(CLUSTER / "ci" / "sweep-cron.yml")
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as True
    assert len(on["schedule"][0]["cron"].split()) == 5
    steps = wf["jobs"]["sweep"]["steps"]
    submit = [s["run"] for s in steps if "ray job submit" in s.get("run", "")]
    assert submit and "--working-dir ." in submit[0] and '"excludes"' in submit[0]
    assert wf["jobs"]["sweep"]["env"]["RAY_AUTH_MODE"] == "token"


def test_dockerfile_copies_what_the_jobs_need():
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.\d+-py311-gpu$", text, re.M)
    for d in ("cascade", "jobs", "tracking", "examples"):
        assert f"COPY --chown=ray:users {d} ./{d}" in text
        assert (ROOT / d).is_dir()
    assert '".[gpu,tracking]"' in text
