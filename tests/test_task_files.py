"""Task files: benchmarks as YAML (prompt templates over the columns, target, choices, grader, judge).

The fingerprints below were computed with the Python builders the task files replaced (the code before
them), over the same data: the shipped task files must give exactly those prompts, targets, option
letters, references, judge contexts and query ids.
"""

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cascade.data import benchmarks as B
from cascade.scoring.config import ConfigError, load_config
from jobs.commands.score import main as score_main

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "benchmarks"
EXAMPLES = ROOT / "examples" / "benchmarks"
needs_shared = pytest.mark.skipif(not (SHARED / "mmlu-test.parquet").exists(), reason="../shared/benchmarks is absent")

# (rows, sha256) per split, from the Python builders before task files (see fingerprint())
SHARED_FINGERPRINTS = {
    ("mmlu", "train"): (285, "16a6b8864cd1f848d9bb3a480615a3f5b39a64429ec443713ed48fded4bcf749"),
    ("mmlu", "test"): (1531, "7858f7b282bd6cdb238295b99b607ef5e6220a1d4432d527c8adc441d30f090e"),
    ("medmcqa", "train"): (300, "528392adab285acda8e3077f025f9469f38e7751a290bc3e0cf871c715b87118"),
    ("medmcqa", "test"): (1000, "33623dba97177c0084ab562367f6e4f70dd52eef6435d3300624a027bcb44782"),
    ("truthfulqa", "train"): (300, "e26b2a99be7dfc540ac05698d57d5fa3b1379778390e4942f601032fdee9983c"),
    ("truthfulqa", "test"): (517, "72d73e6a52265031df943a6c01f48960a0d27356c5107b0ed7787f5d0ed19c5a"),
    ("gsm8k", "train"): (300, "5792b5794a4dab5ac9343911ff4ae1e8345b4dff1db67fbba0e1ae4107708daf"),
    ("gsm8k", "test"): (1000, "60677f1df9835dba6ed76e534108434ebe79a1e8a253d0d8f35a680d90f0b4e7"),
    ("xsum", "train"): (300, "d2edd257d1e7552c42176cea341242de2ac306150faca0fa8824697b1960fc3d"),
    ("xsum", "test"): (1000, "7876e1877791dbd5a4263cf7c47f458b1e7e9e93c5251bf90785a55500589b6d"),
}
EXAMPLE_FINGERPRINTS = {
    ("mmlu", "test"): (60, "dbf51209fbdda75ae75560689b0ddd2b036d94fbdafd83cc173793a73535ed88"),
    ("mmlu", "train"): (40, "7bb8f9df6819033404a18601c9ce799649a1d48c4f297a1d9944435cc805c048"),
}
TRIVIAQA_FINGERPRINT = (5, "49c9ca1ad01f66543461df3d0ed5918ff9042185fb1201e492183b8d4ee95f36")


def streamed_items(name, split, data_dir, step):
    """The items as scoring reads them: shard by shard (``step`` rows), each from its own one-shard source."""
    task = B.get(name)
    src = B.split_source(task, split, data_dir, step=step)
    for s in range(0, src.n, step):
        part = src.part(s, s + step)
        yield from (task.item(s + k, row) for k, row in enumerate(B.read_rows(part, 0, part.n)))


def fingerprint(name, split, data_dir, step=None):
    """sha256 over every query of a split: the item (prompt, target, choices, references, wrong references,
    judge context, query id), the grader, max_new_tokens, the P(True) prompt and, for free text, the judge's.
    With ``step``, the items are read as scoring streams them (shards of ``step`` rows)."""
    bench = B.get(name)
    h = hashlib.sha256()
    n = 0
    its = (B.items(name, B.load_split(name, split, data_dir=data_dir)) if step is None
           else streamed_items(name, split, data_dir, step))
    for it in its:
        row = {"benchmark": name, "split": split, "task": bench.task, "max_new_tokens": bench.max_new_tokens,
               "item": dataclasses.asdict(it), "ptrue": B.ptrue_prompt(it, " an answer ")}
        if bench.task == "free_text":
            row["judge"] = B.judge_prompt(bench, it, " a candidate ")
        h.update(json.dumps(row, sort_keys=True).encode() + b"\n")
        n += 1
    return n, h.hexdigest()


def triviaqa_rows():
    """The hub schema of mandarjoshi/trivia_qa (rc.nocontext), with the answer struct's edge cases."""
    def ans(value, aliases, norm):
        return {"aliases": aliases, "normalized_aliases": norm, "value": value, "normalized_value": (value or "").lower(),
                "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "", "type": "WikipediaEntity"}
    return pd.DataFrame({
        "question": ["Which planet is known as the Red Planet? ", " Who wrote Hamlet?", "Capital of France?",
                     "Largest ocean?", "Unanswerable?"],
        "answer": [ans("Mars", ["Mars", "Planet Mars"], ["mars", "planet mars"]),
                   ans("William Shakespeare", ["Shakespeare"], ["shakespeare"]),
                   ans("", ["Paris", "Paree"], None),
                   ans("Pacific", None, ["pacific ocean"]),
                   ans(None, [], [])],
    })


def test_builtin_benchmarks_are_the_shipped_task_files():
    files = sorted(p.stem for p in B.TASKS_DIR.glob("*.yaml"))
    assert files == sorted(B.BENCHMARKS) == ["gsm8k", "medmcqa", "mmlu", "triviaqa", "truthfulqa", "xsum"]
    assert all(B.BENCHMARKS[n].file == B.TASKS_DIR / f"{n}.yaml" for n in files)
    assert B.BENCHMARKS["mmlu"].columns == ("answer", "choices", "question")


@needs_shared
@pytest.mark.parametrize("key", sorted(SHARED_FINGERPRINTS))
def test_task_files_reproduce_the_builtin_prompts_on_the_shared_benchmarks(key):
    assert fingerprint(*key, SHARED) == SHARED_FINGERPRINTS[key]
    assert fingerprint(*key, SHARED, step=97) == SHARED_FINGERPRINTS[key]  # as scoring streams it


@pytest.mark.parametrize("key", sorted(EXAMPLE_FINGERPRINTS))
def test_task_files_reproduce_the_builtin_prompts_on_the_example_slice(key):
    assert fingerprint(*key, EXAMPLES) == EXAMPLE_FINGERPRINTS[key]
    assert fingerprint(*key, EXAMPLES, step=7) == EXAMPLE_FINGERPRINTS[key]


@pytest.mark.parametrize("suffix", ["parquet", "jsonl", "csv", "json"])
def test_streamed_shards_read_the_rows_of_the_whole_file(tmp_path, suffix):
    """The same split as Parquet, JSONL (with blank lines), CSV and a JSON array: read shard by shard from
    byte offsets / row groups, the items equal those of the whole-file reader, and a limit stops early."""
    df = pd.read_parquet(EXAMPLES / "mmlu-test.parquet")
    df = df.assign(choices=df["choices"].map(list))
    path = tmp_path / f"mmlu-test.{suffix}"
    if suffix == "parquet":
        df.to_parquet(path, row_group_size=8)
    elif suffix == "jsonl":
        path.write_text("\n\n".join(df.to_json(orient="records", lines=True).splitlines()) + "\n\n")
    elif suffix == "json":
        df.to_json(path, orient="records")
    else:  # CSV cells are text: the template parses the options back
        df.assign(choices=df["choices"].map(json.dumps)).to_csv(path, index=False)
    task = B.get("mmlu") if suffix != "csv" else B.parse_task({
        **B.get("mmlu").model_dump(by_alias=True), "task": "mmlu_csv",
        "doc_to_text": B.get("mmlu").doc_to_text.replace("in choices", "in choices | from_json"),
        "doc_to_target": "{{ letters[answer | int] }}", "doc_to_choice": "{{ letters[:choices | from_json | length] | list }}"})
    if suffix == "csv":
        B.use([task.spec()])
        (tmp_path / "mmlu_csv-test.csv").write_bytes(path.read_bytes())
    name = task.name
    whole = [dataclasses.asdict(it) for it in B.items("mmlu", B.load_split("mmlu", "test", data_dir=EXAMPLES))]
    for step in (1, 7, 25, 60, 100):
        assert [dataclasses.asdict(it) for it in streamed_items(name, "test", tmp_path, step)] == whole, step
    src = B.split_source(task, "test", tmp_path, limit=10, step=4)
    assert src.n == 10 and len(B.read_rows(src.part(8, 12), 0, 99)) == 2


def test_triviaqa_task_file_reproduces_the_builtin_aliases(tmp_path):
    triviaqa_rows().to_parquet(tmp_path / "triviaqa-test.parquet")
    assert fingerprint("triviaqa", "test", tmp_path) == TRIVIAQA_FINGERPRINT
    assert fingerprint("triviaqa", "test", tmp_path, step=2) == TRIVIAQA_FINGERPRINT


# ------------------------------------------------------------------------------------ own data

QA_TASK = {
    "task": "capitals",
    "description": "capital cities, my own data",
    "grader": "multiple_choice",
    "data_files": {"test": "capitals.jsonl"},
    "doc_to_text": "Which city is the capital of {{ country }}?\n{% for c in options %}{{ letters[loop.index0] }}. {{ c }}\n"
                   "{% endfor %}Reply with the letter only.\nAnswer:",
    "doc_to_target": "{{ letters[options.index(capital)] }}",
    "doc_to_choice": "{{ letters[:options | length] | list }}",
    "max_new_tokens": 4,
}
CAPITALS = [("France", "Paris", ["Lyon", "Paris", "Nice"]), ("Japan", "Tokyo", ["Tokyo", "Osaka", "Kyoto"]),
            ("Italy", "Rome", ["Milan", "Turin", "Rome"]), ("Spain", "Madrid", ["Madrid", "Seville", "Bilbao"]),
            ("Egypt", "Cairo", ["Giza", "Cairo", "Luxor"])]


def _own_data(tmp_path, task=None, rows=CAPITALS) -> Path:
    with open(tmp_path / "capitals.jsonl", "w") as f:
        for country, capital, options in rows:
            f.write(json.dumps({"country": country, "capital": capital, "options": options}) + "\n")
    p = tmp_path / "capitals.yaml"
    p.write_text(yaml.safe_dump(QA_TASK if task is None else task, sort_keys=False))
    return p


def _score_cfg(tmp_path, task_path, **over) -> Path:
    raw = {"benchmarks": [{"name": str(task_path.name), "splits": ["test"]}], "out": "out", "shard_size": 2,
           "signals": ["mean_logprob", "choice_logprob"],
           "stages": [{"name": "smol", "model": "smollm2-135m", "dtype": "float32", "batch_size": 5,
                       "resources": {"num_cpus": 1, "threads": 1}}],
           "ray": {"progress": False}}
    raw.update(over)
    p = tmp_path / "score.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_a_task_file_with_its_own_jsonl_is_checked_and_planned(tmp_path, capsys):
    task = _own_data(tmp_path)
    cfg = load_config(_score_cfg(tmp_path, task))  # the task path is relative to the config
    t = cfg.bench_task(cfg.benchmarks[0])
    assert t.name == "capitals" and t.file == task.resolve()
    its = B.items(str(task), B.load_split(str(task), "test", data_dir=None))
    assert [it.target for it in its] == ["B", "A", "C", "A", "B"] and its[0].choices == ["A", "B", "C"]
    assert its[0].prompt.startswith("Which city is the capital of France?\nA. Lyon\nB. Paris\n")
    assert score_main([str(tmp_path / "score.yaml"), "--check"]) == 0
    assert "5 queries x 1 stage(s), 3 shards" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", ["csv", "parquet", "json"])
def test_task_data_as_csv_parquet_or_json(tmp_path, suffix):
    df = pd.DataFrame({"q": ["1+1", "2+3"], "a": [2, 5]})
    {"csv": lambda p: df.to_csv(p, index=False), "parquet": df.to_parquet,
     "json": lambda p: df.to_json(p, orient="records")}[suffix](tmp_path / f"sums.{suffix}")
    (tmp_path / "sums.yaml").write_text(yaml.safe_dump({
        "task": "sums", "grader": "number", "data_files": {"test": f"sums.{suffix}"},
        "doc_to_text": "What is {{ q }}?", "doc_to_target": "{{ a }}"}))
    its = B.items(str(tmp_path / "sums.yaml"), B.load_split(str(tmp_path / "sums.yaml"), "test"))
    assert [(it.prompt, it.target, it.references) for it in its] == [("What is 1+1?", "2", ["2"]),
                                                                     ("What is 2+3?", "5", ["5"])]


def _bad(tmp_path, change) -> str:
    task = dict(QA_TASK)
    change(task)
    _own_data(tmp_path, task)
    cfg = _score_cfg(tmp_path, tmp_path / "capitals.yaml")
    return str(cfg)


@pytest.mark.parametrize("change,message", [
    (lambda t: t.update(doc_to_text="Capital of {{ contry }}?"),
     r"capitals/test \(.*capitals\.jsonl\) lacks column\(s\) contry used by .*capitals\.yaml: doc_to_text; "
     r"the data has columns: country, capital, options"),
    (lambda t: t.update(references="{{ [capital, alias] }}"),
     r"lacks column\(s\) alias used by .*capitals\.yaml: references; the data has columns: country, capital, options"),
    (lambda t: t.update(data_files={"test": "nowhere.jsonl"}),
     r"capitals\.yaml: data_files\.test: no file .*nowhere\.jsonl"),
    (lambda t: t.update(doc_to_target="{{ capital }}"),
     r"capitals\.yaml: doc_to_target: renders 'Paris', not one of the options \['A', 'B', 'C'\] \(grader "
     r"multiple_choice.*columns: country, capital, options"),
    (lambda t: t.update(grader="number"), r"capitals\.yaml: doc_to_choice is for grader multiple_choice, not number"),
    (lambda t: (t.update(grader="number"), t.pop("doc_to_choice")),
     r"capitals\.yaml: doc_to_target: renders 'B', not a number \(grader number\)"),
    (lambda t: t.pop("doc_to_choice"), r"capitals\.yaml: doc_to_choice: grader multiple_choice needs it"),
    (lambda t: t.update(grader="exact"), r"capitals\.yaml: grader: Input should be 'multiple_choice'"),
    (lambda t: t.update(doc_to_txt="x"), r"capitals\.yaml: doc_to_txt: unknown field"),
    (lambda t: t.update(doc_to_text="{{ country "), r"capitals\.yaml: doc_to_text: not a valid Jinja2 template"),
    (lambda t: t.update(doc_to_choice="{{ options | length }}"), r"doc_to_choice: renders '3', not a list"),
    (lambda t: t.update(task="mmlu"), r"capitals\.yaml: task 'mmlu' is a built-in task's name; rename it"),
    (lambda t: t.update(judge={"prompt": "{{ verdict }}"}), r"capitals\.yaml: judge\.prompt: unknown name\(s\) verdict"),
    (lambda t: t.update(data_files={"test": "capitals.txt"}), r"data_files: .*none of \.parquet, \.jsonl"),
])
def test_bad_task_files_are_refused_with_one_line_naming_field_and_file(tmp_path, capsys, change, message):
    cfg = _bad(tmp_path, change)
    assert score_main([cfg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_a_missing_task_file_and_an_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match=r"benchmarks\.0\.name: .*nope\.yaml: no such task file"):
        load_config({"benchmarks": [str(tmp_path / "nope.yaml")], "out": str(tmp_path / "o"),
                     "stages": [{"name": "s", "model": "smollm2-135m"}]})
    with pytest.raises(ConfigError, match=r"unknown benchmark 'capitalz'; known: .*or give the path of a task file"):
        load_config({"benchmarks": ["capitalz"], "out": str(tmp_path / "o"), "stages": [{"name": "s", "model": "smollm2-135m"}]})


def test_the_same_task_twice_in_a_config_is_refused(tmp_path):
    task = _own_data(tmp_path)
    with pytest.raises(ConfigError, match=r"benchmarks\.1\.name: task 'capitals' is also benchmarks\.0"):
        load_config({"benchmarks": [str(task), {"name": str(task), "splits": ["test"]}], "out": str(tmp_path / "o"),
                     "splits": ["test"], "stages": [{"name": "s", "model": "smollm2-135m"}]})


def test_the_builtin_registry_refuses_a_duplicate_name():
    with pytest.raises(B.BenchmarkError, match="'mmlu' is registered already"):
        B.register(B.BENCHMARKS["mmlu"])


def test_command_line_limit_wins_over_a_per_benchmark_limit(capsys):
    example = ROOT / "examples" / "score-mmlu-tiny.yaml"  # limit: 50 on its benchmark entry
    assert score_main([str(example), "--check"]) == 0
    assert "90 queries x 2 stage(s)" in capsys.readouterr().out  # 50 test + 40 train
    assert score_main([str(example), "--check", "--limit", "5"]) == 0
    assert "10 queries x 2 stage(s), 4 shards" in capsys.readouterr().out


@pytest.mark.slow
def test_own_jsonl_scored_end_to_end_with_a_tiny_model(tmp_path):
    """A JSONL file and a task file written here, named by path in a scoring config: `cascade score` writes
    one record per query, graded by the task's grader against its target, and a rerun skips every shard."""
    from cascade.data import records

    task = _own_data(tmp_path)
    cfg = _score_cfg(tmp_path, task)

    def run():
        r = subprocess.run([sys.executable, "-m", "jobs.score", str(cfg), "--json", "--no-progress"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout[r.stdout.index("{"):])

    stats = run()
    assert stats["scored_records"] == stats["n_records"] == 5 and stats["n_shards"] == 3
    df = records.validate(records.load(tmp_path / "out"))
    assert sorted(df["query_id"]) == [0, 1, 2, 3, 4] and set(df["benchmark"]) == {"capitals"}
    assert (tmp_path / "out" / "capitals" / "smol" / "test-000000-000002.parquet").exists()
    its = {it.query_id: it for it in B.items(str(task), B.load_split(str(task), "test"))}
    assert list(df.sort_values("query_id")["target"]) == ["B", "A", "C", "A", "B"]
    assert all(B.grade(B.get("capitals"), its[q], a) == c for q, a, c in zip(df["query_id"], df["answer"], df["correct"]))
    assert df["conf_choice_logprob"].notna().all() and (df["conf_choice_logprob"] <= 0).all()
    again = run()
    assert again["scored_records"] == 0 and again["skipped_shards"] == 3


def test_the_own_data_example_checks(capsys):
    """examples/own-data (docs/own-data.md): a task file with its JSONL splits, named by path in the config."""
    assert score_main([str(ROOT / "examples" / "own-data" / "score-capitals.yaml"), "--check"]) == 0
    assert "config ok: 40 queries x 2 stage(s), 8 shards" in capsys.readouterr().out


@pytest.mark.slow
def test_an_over_long_question_is_a_failed_row_and_the_rest_are_records(tmp_path):
    """One 50,000-character question among normal ones (longer than SmolLM2's 8,192-token context): it is a
    failed row with the reason, never a record; every other query is stored; the command exits 1 saying so."""
    from cascade.data import records

    rows = list(CAPITALS)
    rows[2] = ("Italy " * 8400, "Rome", ["Milan", "Turin", "Rome"])
    task = _own_data(tmp_path, rows=rows)
    # the stage holds every CPU of the local cluster: the shard reads (no CPU) must still run (with 0.1 CPU
    # each they waited forever, as the demo's two 1-CPU stages did on 2 cores)
    cfg = _score_cfg(tmp_path, task, stages=[{"name": "smol", "model": "smollm2-135m", "dtype": "float32",
                                              "batch_size": 5, "resources": {"num_cpus": os.cpu_count(), "threads": 1}}])
    r = subprocess.run([sys.executable, "-m", "jobs.score", str(cfg), "--json", "--no-progress"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "1 row(s) failed" in r.stderr and "Traceback" not in r.stderr
    failed = [json.loads(x) for x in (tmp_path / "out" / "_failed_rows.jsonl").read_text().splitlines()]
    assert [f["query_id"] for f in failed] == [2] and failed[0]["error"].startswith("prompt too long: ")
    assert "the model's context of 8192 tokens" in failed[0]["error"]
    df = records.load(tmp_path / "out")
    # query 3 shares its shard with the failed row: it waits in .pending until that row is scored
    assert sorted(df["query_id"]) == [0, 1, 4]
    held = [pd.read_parquet(p) for p in (tmp_path / "out" / ".pending").rglob("*.pending")]
    assert [list(h["query_id"]) for h in held] == [[3]]
