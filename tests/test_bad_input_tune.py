"""Bad-input matrix for `cascade tune`, `cascade compare`, `cascade study` and a sweep spec's tune side.

Each refusal case runs the command (``jobs.cli.main`` in this process, which is what ``cascade`` runs; the
issue's own reproductions also through a real subprocess, ``tests/badinput.run_cli``) and checks: the exit
status, a message holding a fragment that names the problem, no traceback, and that the output folder and
the inputs are untouched (``snapshot``). Edge cases that must give a *correct result* (exit 0)
are checked for what the result holds: finite curves, the transform and why, degenerate-fit reasons, NaN
(not a number pretending to be an area) for a one-cost curve.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from badinput import run_cli, snapshot
from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "examples" / "medmcqa-llama.parquet"
M3 = ["llama3.2-1b", "llama3.2-3b", "llama3.1-8b"]
MODELS = ",".join(M3[:2])


def _base() -> pd.DataFrame:
    df = pd.read_parquet(DEV)
    return df[df["model"].isin(M3)].reset_index(drop=True)


def _first_train(df, model="llama3.2-1b", n=1):
    return df.index[(df["model"] == model) & (df["split"] == "train")][:n]


def _v_inf1(df):  # the issue's reproduction: one +inf confidence
    df.loc[_first_train(df), "confidence"] = np.inf
    return df


def _v_inf30(df):  # 30% +-inf
    rng = np.random.default_rng(0)
    sel = rng.random(len(df)) < 0.3
    df.loc[sel, "confidence"] = np.where(rng.random(int(sel.sum())) < 0.5, np.inf, -np.inf)
    return df


def _v_big(df):
    df.loc[_first_train(df), "confidence"] = 1e308
    return df


def _v_negbig(df):
    df.loc[_first_train(df), "confidence"] = -1e308
    return df


def _v_pos(df):  # positive values in a log-prob signal
    df.loc[_first_train(df, n=5), "confidence"] = 0.5
    return df


def _v_pos_test(df):  # the bad value is in the test split only
    i = df.index[(df["model"] == "llama3.2-3b") & (df["split"] == "test")][:1]
    df.loc[i, "confidence"] = 0.25
    return df


def _v_registered_pos(df):  # a registered log-prob signal with a value above 0
    df = df.rename(columns={"confidence": "conf_mean_logprob"})
    df.loc[_first_train(df), "conf_mean_logprob"] = 0.3
    return df


def _v_ptrue(df):  # the registry decides: conf_ptrue is two-sided
    return df.rename(columns={"confidence": "conf_ptrue"})


def _v_prob(df):  # a generic column holding probabilities in [0, 1]
    df["confidence"] = np.exp(df["confidence"])
    return df


def _v_two_train(df):
    return df[(df["split"] != "train") | (df["query_id"] < 2)]


def _v_one_train(df):
    return df[(df["split"] != "train") | (df["query_id"] < 1)]


def _v_all_correct(df):
    df.loc[df["split"] == "train", "correct"] = True
    return df


def _v_all_wrong(df):
    df.loc[df["split"] == "train", "correct"] = False
    return df


def _v_constant(df):
    df["confidence"] = -0.5
    return df


VARIANTS = {name[3:]: fn for name, fn in globals().items() if name.startswith("_v_")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Records files for every variant (and the clean one), written once."""
    root = tmp_path_factory.mktemp("records")
    paths = {"clean": root / "clean.parquet"}
    _base().to_parquet(paths["clean"], index=False)
    for name, fn in VARIANTS.items():
        paths[name] = root / f"{name}.parquet"
        fn(_base()).to_parquet(paths[name], index=False)
    return paths


@pytest.fixture
def run(capsys):
    """``cascade ARGS`` in this process -> (exit status, stderr)."""

    def _run(args):
        try:
            rc = cli.main(list(map(str, args)))
        except SystemExit as e:  # argparse
            rc = e.code
        return rc, capsys.readouterr().err

    return _run


def _tune_args(records, out, *extra, models=MODELS):
    return ["tune", "--results", records, "--models", models, "--out", out, *extra]


# ------------------------------------------------------------------------------------------------
# refusals: exit 2, one line naming the problem, nothing written, inputs untouched
# ------------------------------------------------------------------------------------------------

TUNE_REFUSALS = [
    # case, records variant, extra args, message fragments
    ("one +inf confidence", "inf1", [], ["+inf", "query 0", "--transform identity"]),
    ("30% +-inf", "inf30", [], ["+inf", "log-probabilities"]),
    ("+1e308 in log-probs", "big", [], ["above 0", "1e+308"]),
    ("positive values in log-probs", "pos", [], ["above 0", "0.5"]),
    ("positive log-prob in the test split", "pos_test", [], ["above 0", "test query"]),
    ("registered log-prob signal above 0", "registered_pos", ["--signal", "conf_mean_logprob"],
     ["conf_mean_logprob", "above 0"]),
    ("one-sided on probabilities", "prob", ["--transform", "one-sided"], ["--transform one-sided", "above 0"]),
    ("two-sided with +inf", "inf1", ["--transform", "two-sided"], ["two-sided", "above 0"]),
    ("calibration none on log-probs", "clean", ["--calibration", "none"], ["[0, 1]"]),
    ("transform with calibration none", "prob", ["--calibration", "none", "--transform", "one-sided"],
     ["applies to --calibration auto"]),
    ("unknown transform", "clean", ["--transform", "log"], ["invalid choice"]),
    ("one training query", "one_train", [], ["at least 2"]),
    ("misspelt method parameter", "clean", ["--method", "bayes-opt", "--param", "n_trial=20"],
     ["unknown parameter 'n_trial'", "n_trials"]),
    ("parameter of the wrong type", "clean", ["--method", "grid", "--param", "n_quantiles=many"], ["whole number"]),
    ("parameter without a value", "clean", ["--param", "n_quantiles"], ["NAME=VALUE"]),
    ("parameter of another method", "clean", ["--method", "grid", "--param", "n_trials=5"],
     ["unknown parameter", "n_quantiles"]),
    ("unknown method", "clean", ["--method", "nosuch"], ["unknown method"]),
    ("unknown model", "clean", ["--models", "llama3.2-1b,nosuch-model"], ["nosuch-model"]),
    ("one model", "clean", ["--models", "llama3.2-1b"], ["at least two models"]),
    ("repeated model", "clean", ["--models", "llama3.2-1b,llama3.2-1b"], ["twice"]),
    ("unknown signal", "clean", ["--signal", "conf_nosuch"], ["conf_nosuch"]),
    ("empty train split", "clean", ["--train-split", "validation"], ["validation"]),
    ("empty test split", "clean", ["--test-split", "holdout"], ["holdout"]),
    ("unknown benchmark", "clean", ["--benchmark", "nosuch"], ["nosuch"]),
]


@pytest.mark.parametrize("case,variant,extra,fragments", TUNE_REFUSALS, ids=[c[0] for c in TUNE_REFUSALS])
def test_tune_refuses(data, tmp_path, run, case, variant, extra, fragments):
    out = tmp_path / "out"
    before = snapshot(data[variant])
    args = _tune_args(data[variant], out)
    if "--models" in extra:  # the case gives its own cascade
        i = args.index("--models")
        del args[i:i + 2]
    rc, err = run(args + extra)
    assert rc == 2, (case, err)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cascade tune: error:") or "invalid choice" in last, err
    for f in fragments:
        assert f in err, (case, f, err)
    assert not out.exists(), sorted(out.rglob("*"))
    assert snapshot(data[variant]) == before


def test_issue_reproduction_in_a_subprocess(data, tmp_path):
    """The issue's steps as a user runs them: import a file with one +inf confidence into a store, tune."""
    store = tmp_path / "store"
    assert run_cli(["import", data["inf1"], "--out", store])[0] == 0
    before = snapshot(store)
    out = tmp_path / "out"
    rc, err = run_cli(_tune_args(store, out))
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "+inf" in err and "llama3.2-1b train query 0" in err
    assert not out.exists() and snapshot(store) == before
    rc, err = run_cli(_tune_args(store, out, "--method", "bayes-opt", "--param", "n_trial=20"))
    assert rc == 2 and "unknown parameter 'n_trial'" in err and "Traceback" not in err, err


def _file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("not a folder\n")
    return f


def _foreign(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me\n")
    return d


OUT_REFUSALS = [
    ("--out is a file", lambda t: _file(t), [], ["is a file"]),
    ("--out below a file", lambda t: _file(t) / "sub", [], ["is a file", "below it"]),
    ("--out holds other files", _foreign, [], ["not a `cascade tune` output", "notes.txt"]),
    ("--all-cascades: --out is a file", lambda t: _file(t), ["--all-cascades"], ["is a file"]),
    ("--all-cascades: a cascade folder holds other files",
     lambda t: _foreign(t).parent / "chain", ["--all-cascades"], ["not a `cascade tune` output"]),
]


@pytest.mark.parametrize("case,make_out,extra,fragments", OUT_REFUSALS, ids=[c[0] for c in OUT_REFUSALS])
def test_tune_refuses_bad_out_before_work(data, tmp_path, run, case, make_out, extra, fragments):
    out = make_out(tmp_path)
    if case.startswith("--all-cascades: a cascade"):
        (out / "llama3.2-1b-llama3.2-3b").mkdir(parents=True)
        (out / "llama3.2-1b-llama3.2-3b" / "notes.txt").write_text("keep me\n")
    before = snapshot(tmp_path)
    rc, err = run(_tune_args(data["clean"], out, *extra) + ["--method", "random"])
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    assert "transform" not in err  # refused before any work (the transform line comes after loading)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# correct results: exit 0, and the result says what it is
# ------------------------------------------------------------------------------------------------

def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _curve(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "curve.parquet")


def _finite_curve(out: Path) -> None:
    c = _curve(out)
    assert np.isfinite(np.vstack(c["thresholds"].to_numpy()).astype(float)).all()
    assert np.isfinite(c[["train_error", "train_cost", "test_error", "test_cost"]].to_numpy()).all()


def test_clean_run_records_transform_and_no_degeneracy(data, tmp_path):
    out = tmp_path / "out"
    rc, err = run_cli(_tune_args(data["clean"], out, "--method", "grid"))
    assert rc == 0, err
    s = _summary(out)
    assert s["transform"] == "one-sided" and "log-probabilities" in s["transform_reason"]
    assert s["degenerate"] == [] and np.isfinite(s["test_auc"])
    line = [x for x in err.splitlines() if "transform" in x]
    assert len(line) == 1 and "one-sided" in line[0] and "conf_ptrue" in line[0]  # says why and how to change it
    _finite_curve(out)


@pytest.mark.parametrize("variant,args,transform,why", [
    ("negbig", [], "one-sided", "log-probabilities"),  # -1e308 is a legal log-prob (p ~ 0): no NaN
    ("inf1", ["--transform", "identity"], "identity", "given"),  # +inf as the top rank of a plain score
    ("big", ["--transform", "identity"], "identity", "given"),  # 1e308 clipped, not an overflow
    ("ptrue", ["--signal", "conf_ptrue"], "two-sided", "registered signal 'ptrue'"),
    ("prob", [], "identity", "[0, 1]"),  # a generic column is decided by its values, not its name
])
def test_extreme_values_give_a_finite_result(data, tmp_path, run, variant, args, transform, why):
    out = tmp_path / "out"
    rc, err = run(_tune_args(data[variant], out, "--method", "grid", *args))
    assert rc == 0, err
    s = _summary(out)
    assert s["transform"] == transform and why in s["transform_reason"], s["transform_reason"]
    _finite_curve(out)
    assert all(np.isfinite(c).all() for c in s["calibrators"])


@pytest.mark.parametrize("variant,reason", [
    ("two_train", "only 2 queries"),
    ("all_correct", "every training answer is correct"),
    ("all_wrong", "every training answer is wrong"),
    ("constant", "constant confidence"),
])
def test_degenerate_fits_warn_and_are_marked(data, tmp_path, run, variant, reason):
    out = tmp_path / "out"
    rc, err = run(_tune_args(data[variant], out, "--method", "grid"))
    assert rc == 0, err
    s = _summary(out)
    assert any(reason in r for r in s["degenerate"]), s["degenerate"]
    assert "warning" in err and reason in err
    if _curve(out)["test_cost"].nunique() == 1:  # a one-cost curve has no AUC
        assert np.isnan(s["test_auc"]) and any("single cost" in r for r in s["degenerate"])


# ------------------------------------------------------------------------------------------------
# compare
# ------------------------------------------------------------------------------------------------

def _fake_output(folder: Path, method: str, models=("a", "b"), costs=(1.0, 2.0, 3.0), errors=(0.5, 0.4, 0.3),
                 **summary):
    from cascade.evaluate.outputs import write_outputs

    curve = pd.DataFrame({"method": method, "test_cost": list(costs), "test_error": list(errors)})
    s = {"method": method, "models": list(models), "benchmark": "syn", "cost_mode": "model-mean",
         "test_split": "test"}
    s.update(summary)
    write_outputs(folder, curve, s)
    return folder


def _compare_case(t: Path, case: str) -> list:
    if case == "cascades do not match":
        return [_fake_output(t / "A", "grid"), _fake_output(t / "B", "random", models=("a", "c"))]
    if case == "no benchmark":
        return [_fake_output(t / "A", "grid"), _fake_output(t / "B", "random", benchmark=None)]
    if case == "same folder twice":
        return [_fake_output(t / "A", "grid"), t / "A", _fake_output(t / "B", "random")]
    if case == "a file":
        return [_fake_output(t / "A", "grid"), _file(t)]
    if case == "damaged curve":
        b = _fake_output(t / "B", "random")
        (b / "curve.parquet").write_bytes(b"not parquet")
        return [_fake_output(t / "A", "grid"), b]
    if case == "missing folder":
        return [_fake_output(t / "A", "grid"), t / "nope"]
    if case == "one method":
        return [_fake_output(t / "A", "grid"), _fake_output(t / "B", "grid", models=("a", "c"))]
    if case == "different cost mode":
        return [_fake_output(t / "A", "grid"), _fake_output(t / "B", "random", cost_mode="per-query")]
    if case == "not a summary":
        d = t / "B"
        d.mkdir()
        (d / "summary.json").write_text("[1, 2]")
        return [_fake_output(t / "A", "grid"), d]
    raise AssertionError(case)


COMPARE_REFUSALS = [
    ("cascades do not match", [], ["A: nothing to compare", "a -> c"]),
    ("no benchmark", [], ["names no benchmark"]),
    ("same folder twice", [], ["both hold grid"]),
    ("a file", [], ["is a file"]),
    ("damaged curve", [], ["cannot be read"]),
    ("missing folder", [], ["no such folder"]),
    ("one method", [], ["at least two methods"]),
    ("different cost mode", [], ["cost_mode"]),
    ("not a summary", [], ["not a `cascade tune` summary"]),
]


@pytest.mark.parametrize("case,extra,fragments", COMPARE_REFUSALS, ids=[c[0] for c in COMPARE_REFUSALS])
def test_compare_refuses(tmp_path, run, case, extra, fragments):
    dirs = _compare_case(tmp_path, case)
    csv = tmp_path / "cmp.csv"
    before = snapshot(tmp_path)
    rc, err = run(["compare", *dirs, "--csv", csv, *extra])
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("cascade compare: error:"), err
    for f in fragments:
        assert f in err, (f, err)
    assert snapshot(tmp_path) == before  # no CSV written


def test_compare_unknown_baseline(tmp_path, run):
    rc, err = run(["compare", _fake_output(tmp_path / "A", "grid"), _fake_output(tmp_path / "B", "random"),
                       "--baseline", "bayes-opt"])
    assert rc == 2 and "--baseline 'bayes-opt'" in err


def test_compare_single_shared_cost_is_nan_with_a_reason(tmp_path):
    a = _fake_output(tmp_path / "A", "grid", costs=(2.0,), errors=(0.4,))  # a one-point curve
    b = _fake_output(tmp_path / "B", "random", models=("a", "b"))
    c = _fake_output(tmp_path / "C", "grid", models=("x", "y"), costs=(5.0, 6.0), errors=(0.4, 0.3))
    d = _fake_output(tmp_path / "D", "random", models=("x", "y"), costs=(1.0, 2.0), errors=(0.4, 0.3))  # no overlap
    e = _fake_output(tmp_path / "E", "grid", models=("p", "q"))
    f = _fake_output(tmp_path / "F", "random", models=("p", "q"), errors=(0.6, 0.5, 0.4))
    csv = tmp_path / "cmp.csv"
    rc, err = run_cli(["compare", a, c, e, b, d, f, "--csv", csv])
    assert rc == 0, err
    t = pd.read_csv(csv).set_index("cascade")
    assert np.isnan(t.loc["a -> b", "pct_change"]) and "single cost" in t.loc["a -> b", "note"]
    assert np.isnan(t.loc["x -> y", "pct_change"]) and "no shared cost range" in t.loc["x -> y", "note"]
    assert t.loc["p -> q", "pct_change"] == pytest.approx(100 * (0.4 - 0.5) / 0.5)
    assert "single cost" in err and "no shared cost range" in err


# ------------------------------------------------------------------------------------------------
# study and sweep spec: method parameters checked before any work
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,extra,fragments", [
    ("misspelt parameter", ["--param", "bayes-opt.n_trial=5"], ["unknown parameter 'n_trial'", "n_trials"]),
    ("parameter of a method not run", ["--param", "grid.n_quantiles=5"], ["grid is not among --methods"]),
    ("parameter without a method", ["--param", "n_trials=5"], ["METHOD.NAME=VALUE"]),
    ("unknown transform", ["--transform", "log"], ["invalid choice"]),
])
def test_study_refuses(data, tmp_path, run, case, extra, fragments):
    out = tmp_path / "out"
    rc, err = run(["study", "--results", f"c={data['clean']}:{MODELS}", "--methods", "bayes-opt,random",
                       "--n-values", "all", "--subsamples", "1", "--out", out, *extra])
    assert rc == 2, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)
    assert not out.exists()


def test_study_out_is_a_file(data, tmp_path, run):
    f = _file(tmp_path)
    rc, err = run(["study", "--results", str(data["clean"]), "--out", f])
    assert rc == 2 and "is a file" in err
    assert f.read_text() == "not a folder\n"


def test_sweep_dry_run_refuses_a_misspelt_parameter(tmp_path):
    import yaml

    spec = {"experiment": "x", "records": [{"name": "r", "path": str(DEV), "chain": M3[:2]}],
            "methods": [{"name": "bayes-opt", "params": {"n_trial": 10}}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    rc, err = run_cli(["sweep", path, "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert rc == 2, err
    assert "unknown parameter 'n_trial'" in err and "n_trials" in err
    assert not (tmp_path / "m.db").exists()


def test_sweep_spec_transform_field(tmp_path):
    from cascade.evaluate import sweep_spec as S

    raw = {"experiment": "x", "records": [{"name": "r", "path": str(DEV), "chain": M3[:2]}], "methods": ["grid"]}
    auto = S.expand(S.load_spec(raw))
    raw["records"][0]["transform"] = "two-sided"
    two = S.expand(S.load_spec(raw))
    assert [c.transform for c in two] == ["two-sided"] and auto[0].transform == "auto"
    assert auto[0].key != two[0].key  # a different transform is a different cell
    raw["records"][0]["transform"] = "log"
    with pytest.raises(S.SpecError, match="transform"):
        S.load_spec(raw)


# ------------------------------------------------------------------------------------------------
# the shared mechanisms, unit by unit
# ------------------------------------------------------------------------------------------------

def test_logprob_transforms_refuse_values_above_zero():
    from cascade.tuners import calibration as C

    for f in (C.one_sided, C.two_sided):
        with pytest.raises(C.TransformError, match="above 0"):
            f([-0.5, 0.5])
        with pytest.raises(C.TransformError, match="above 0"):
            f([-0.5, np.inf])
        out = f([-np.inf, -1e308, -0.5, -1e-9, 0.0, 5e-7])  # 5e-7: float32 rounding of log-softmax, read as 0
        assert not np.isnan(out).any() and np.isposinf(out[-1]) and np.isposinf(out[-2])


def test_calibration_is_finite_and_keeps_the_order_for_extreme_values():
    from cascade.tuners.calibration import LogisticCalibrator

    x = np.array([-1e308, -np.inf, -0.3, -0.2, 0.1, 0.2, 0.4, 1e308, np.inf])
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1])
    c = LogisticCalibrator("identity").fit(x, y)
    p = c.predict(x)
    assert np.isfinite(c.coef_).all() and np.isfinite(p).all()
    assert np.all(np.diff(p[np.argsort(np.array([0, -1, 2, 3, 4, 5, 6, 7, 8]))]) >= 0)  # -inf lowest ... +inf top
    # one finite level (or none) besides +-inf: +-inf stay on either side of it
    c = LogisticCalibrator("one-sided").fit([0.0, 0.0, -1.0, -1.0, -1.0], [1, 1, 1, 0, 0])
    assert c.predict([0.0])[0] > c.predict([-1.0])[0]
    c = LogisticCalibrator("identity").fit([np.inf, np.inf, -np.inf, -np.inf, np.inf], [1, 0, 0, 0, 1])
    assert c.predict([np.inf])[0] > c.predict([-np.inf])[0]


def test_auto_transform_registry_first_then_values():
    from cascade.tuners.calibration import TransformError, auto_transform

    assert auto_transform("conf_ptrue", [-3.0, -0.1])[0] == "two-sided"  # registry, whatever the values
    assert auto_transform("conf_top2_margin", [0.1, 0.9])[0] == "identity"
    assert auto_transform("confidence", [-3.0, -0.1, 0.0, -np.inf])[0] == "one-sided"
    assert auto_transform("confidence", [0.0, 0.3, 1.0])[0] == "identity"
    assert auto_transform("conf_my_logit", np.linspace(-3, 3, 50))[0] == "identity"  # a score of both signs
    with pytest.raises(TransformError, match=r"\+inf"):
        auto_transform("confidence", [-3.0, -0.1, np.inf])
    with pytest.raises(TransformError, match="above 0"):
        auto_transform("confidence", np.r_[-np.linspace(0.1, 3, 99), 0.5])


def _methods():
    from cascade.tuners import METHODS

    return sorted(METHODS)


@pytest.mark.parametrize("method", _methods())
def test_every_tuner_declares_and_checks_its_parameters(method):
    import inspect

    from cascade.tuners import get_method

    cls = get_method(method)
    names = cls.param_names()
    assert names == sorted(list(inspect.signature(cls.__init__).parameters)[1:])
    defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    assert cls.validate_params(defaults) == defaults  # the defaults pass their own check
    with pytest.raises(ValueError, match=f"method {method}: unknown parameter 'nosuch'"):
        cls.validate_params({"nosuch": 1})
    ints = [n for n, v in defaults.items() if isinstance(v, int) and not isinstance(v, bool)]
    for n in ints:
        with pytest.raises(ValueError, match=f"{n} must be a whole number"):
            cls.validate_params({n: 2.5})
        assert cls.validate_params({n: 3.0})[n] == 3 and isinstance(cls.validate_params({n: 3.0})[n], int)


def test_cascade_folders_never_leave_out():
    from cascade.evaluate.outputs import cascade_folder, cascade_folders

    for models in (["a/../../../escaped", "b"], [".hidden", "b"], ["..", "b"]):
        name = cascade_folder(models)
        assert "/" not in name and not name.startswith(".") and name not in (".", "..")
    with pytest.raises(ValueError, match="share the output folder"):
        cascade_folders([["a-b", "c"], ["a", "b-c"]])


@pytest.mark.parametrize("extra,method,fragment", [
    (["--gof"], "grid", "--gof works with --method markov-copula"),
    (["--gof"], "copula", "--gof works with --method markov-copula"),
    (["--lambda-stop", "cheapest"], "grid", "--lambda-stop cheapest works with --method markov-copula or copula"),
])
def test_options_of_another_method_are_refused_not_ignored(tmp_path, capsys, extra, method, fragment):
    out = tmp_path / "out"
    code = cli.main(["tune", "--results", str(ROOT / "examples" / "medmcqa-llama.parquet"), "--models",
                     "llama3.2-1b,llama3.1-405b", "--method", method, "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0]
    assert not out.exists()
