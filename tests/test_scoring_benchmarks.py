"""Benchmarks: loaders on the hub-schema files, prompts, and graders."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.data import benchmarks as B

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "benchmarks"
EXAMPLES = ROOT / "examples" / "benchmarks"
needs_shared = pytest.mark.skipif(not (SHARED / "mmlu-test.parquet").exists(), reason="../shared/benchmarks is absent")


@needs_shared
@pytest.mark.parametrize("name", ["mmlu", "medmcqa", "truthfulqa", "gsm8k", "xsum"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_shared_benchmark_loads_and_grades_its_own_target(name, split):
    df = B.load_split(name, split, data_dir=SHARED, limit=20)
    assert len(df) == 20
    its = B.items(name, df)
    assert [it.query_id for it in its] == list(range(20))
    bench = B.get(name)
    for it in its:
        assert it.prompt and it.target
        # the gold answer, written as a model would, is graded correct by the reference grader
        gold = {"multiple_choice": f"{it.target}. something", "number": f"So the answer is: {it.target}",
                "alias": it.target, "free_text": it.references[0]}[bench.task]
        assert B.grade(bench, it, gold) == 1.0, (name, it.query_id, gold)
    if bench.task == "multiple_choice":
        assert all(it.choices == ["A", "B", "C", "D"] for it in its)
        assert "A. " in its[0].prompt and "D. " in its[0].prompt


@needs_shared
def test_mmlu_targets_follow_the_answer_index():
    df = B.load_split("mmlu", "test", data_dir=SHARED, limit=30)
    its = B.items("mmlu", df)
    assert [it.target for it in its] == ["ABCD"[a] for a in df["answer"]]


def test_example_slice_has_train_and_test():
    assert len(B.load_split("mmlu", "test", data_dir=EXAMPLES)) >= 50
    assert len(B.load_split("mmlu", "train", data_dir=EXAMPLES)) >= 20


def _triviaqa_rows():
    # the hub schema of mandarjoshi/trivia_qa (rc.nocontext): answer is a struct with aliases
    return pd.DataFrame({
        "question": ["Which planet is known as the Red Planet?", "Who wrote Hamlet?"],
        "question_id": ["tc_1", "tc_2"],
        "question_source": ["x", "x"],
        "entity_pages": [{"title": []}, {"title": []}],
        "search_results": [{"url": []}, {"url": []}],
        "answer": [
            {"aliases": ["Mars", "Planet Mars"], "normalized_aliases": ["mars", "planet mars"], "value": "Mars",
             "normalized_value": "mars", "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
             "type": "WikipediaEntity"},
            {"aliases": ["William Shakespeare", "Shakespeare"], "normalized_aliases": ["william shakespeare", "shakespeare"],
             "value": "William Shakespeare", "normalized_value": "william shakespeare", "matched_wiki_entity_name": "",
             "normalized_matched_wiki_entity_name": "", "type": "WikipediaEntity"},
        ],
    })


def test_triviaqa_loads_from_a_local_file_in_the_hub_schema(tmp_path):
    _triviaqa_rows().to_parquet(tmp_path / "triviaqa-test.parquet")
    df = B.load_split("triviaqa", "test", data_dir=tmp_path)
    its = B.items("triviaqa", df)
    bench = B.get("triviaqa")
    assert its[0].target == "Mars"
    assert B.grade(bench, its[0], "Mars.") == 1.0
    assert B.grade(bench, its[0], "It is the planet Mars") == 1.0
    assert B.grade(bench, its[0], "Jupiter") == 0.0
    assert B.grade(bench, its[0], "Marshmallow") == 0.0
    assert B.grade(bench, its[1], "shakespeare") == 1.0
    assert B.grade(bench, its[1], "Christopher Marlowe") == 0.0


def test_missing_column_is_named(tmp_path):
    _triviaqa_rows().drop(columns=["answer"]).to_parquet(tmp_path / "triviaqa-test.parquet")
    with pytest.raises(B.BenchmarkError, match="lacks column.*answer"):
        B.load_split("triviaqa", "test", data_dir=tmp_path)


def test_missing_file_and_unknown_benchmark(tmp_path):
    with pytest.raises(B.BenchmarkError, match="no file"):
        B.load_split("mmlu", "test", data_dir=tmp_path)
    with pytest.raises(B.BenchmarkError, match="unknown benchmark 'nope'"):
        B.get("nope")


@pytest.mark.parametrize("text,letter", [
    ("B", "B"), (" C.", "C"), ("(D) Paris", "D"), ("A. 4", "A"), ("The answer is C", "C"),
    ("Answer: B", "B"), ("\nStatement 1 | A permutation", None), ("I don't know", None), ("E", None),
])
def test_extract_letter(text, letter):
    assert B.extract_letter(text, ["A", "B", "C", "D"]) == letter


@pytest.mark.parametrize("text,num", [
    ("3 + 4 = 7.\nAnswer: 7", 7.0), ("so #### 1,234", 1234.0), ("the total is $18.50.", 18.5),
    ("We get 5 then 10. Answer: -3", -3.0), ("no number", None), ("Answer: 48.0", 48.0),
])
def test_extract_number(text, num):
    assert B.extract_number(text) == num


def test_gsm8k_grading_normalises_numbers():
    bench = B.get("gsm8k")
    it = B.Item(0, "q", "1,234", references=["1,234"])
    assert B.grade(bench, it, "Total: 1234. Answer: 1234") == 1.0
    assert B.grade(bench, it, "Answer: $1,234.00") == 1.0
    assert B.grade(bench, it, "Answer: 1235") == 0.0


def test_free_text_reference_fallback():
    tq = B.get("truthfulqa")
    it = B.Item(0, "q", "Nothing happens", references=["Nothing happens", "Nothing in particular happens"],
                wrong_references=["You will die", "Something bad happens"])
    assert B.grade(tq, it, "Nothing in particular happens.") == 1.0
    assert B.grade(tq, it, "Something bad happens to you") == 0.0
    xs = B.get("xsum")
    it = B.Item(0, "q", "The council approved a new park in the town centre.",
                references=["The council approved a new park in the town centre."])
    assert B.grade(xs, it, "A new park in the town centre was approved by the council.") == 1.0
    assert B.grade(xs, it, "Stocks fell sharply on Monday.") == 0.0
    assert B.grade(xs, it, "x", B.GradingConfig(rouge_threshold=0.0)) == 1.0


def test_rouge_and_f1():
    assert B.rouge_l("a b c d", "a b c d") == pytest.approx(1.0)
    assert B.rouge_l("cat sat mat", "cat on mat") == pytest.approx(2 / 3)
    assert B.token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert B.token_f1("", "x") == 0.0


def test_judge_and_ptrue_prompts_carry_the_answer():
    it = B.Item(3, "What is 2+2?", "4", references=["4", "four"], context="What is 2+2?")
    assert "Candidate answer: five" in B.judge_prompt(B.get("truthfulqa"), it, "five")
    assert "Proposed answer: 5" in B.ptrue_prompt(it, "5")
    assert B.logsumexp([np.log(0.25), np.log(0.25)]) == pytest.approx(np.log(0.5))
    assert B.logsumexp([]) == -np.inf


ARC_TASK = """
task: arc
grader: multiple_choice
dataset_path: allenai/ai2_arc
dataset_name: ARC-Challenge
splits: {train: train, test: test}
doc_to_text: |-
  {{ question }}
  {% for t in choices.text %}{{ choices.label[loop.index0] }}. {{ t }}
  {% endfor %}Answer:
doc_to_target: "{{ answerKey }}"
doc_to_choice: "{{ choices.label }}"
max_new_tokens: 8
"""


def test_adding_a_benchmark_is_one_task_file(tmp_path):
    (tmp_path / "arc.yaml").write_text(ARC_TASK)
    pd.DataFrame({"question": ["2+2?"], "choices": [{"text": ["3", "4"], "label": ["A", "B"]}],
                  "answerKey": ["B"]}).to_parquet(tmp_path / "arc-test.parquet")
    arc = B.get(tmp_path / "arc.yaml")
    its = B.items(str(tmp_path / "arc.yaml"), B.load_split(str(tmp_path / "arc.yaml"), "test", data_dir=tmp_path))
    assert its[0].choices == ["A", "B"] and "B. 4" in its[0].prompt and its[0].prompt.endswith("Answer:")
    assert B.grade(arc, its[0], "B") == 1.0 and B.grade(arc, its[0], "A") == 0.0
    assert B.get("arc") is arc  # known by its name in this process once read


def test_hub_code_path_through_datasets_load_dataset(tmp_path, monkeypatch):
    """The hub branch (datasets.load_dataset, split mapping, column check) on a local dataset repo layout."""
    repo = tmp_path / "trivia_qa"
    (repo / "data").mkdir(parents=True)
    _triviaqa_rows().to_parquet(repo / "data" / "validation-00000-of-00001.parquet")
    bench = B.get("triviaqa").model_copy(update={"dataset_path": str(repo), "dataset_name": None})
    monkeypatch.setitem(B.BENCHMARKS, "triviaqa", bench)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    df = B.load_split("triviaqa", "test", data_dir="hub")  # our "test" is the hub's "validation"
    its = B.items("triviaqa", df)
    assert len(its) == 2 and its[1].target == "William Shakespeare"
    assert B.grade(bench, its[1], "Shakespeare") == 1.0


def test_benchmark_folder_rule_config_value_then_env_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv(B.BENCHMARKS_DIR_ENV, raising=False)
    assert B.benchmarks_dir() == ROOT.parent / "shared" / "benchmarks"  # beside the checkout
    monkeypatch.setenv(B.BENCHMARKS_DIR_ENV, str(tmp_path / "env"))
    assert B.benchmarks_dir() == tmp_path / "env"
    assert B.benchmarks_dir(tmp_path / "cfg") == tmp_path / "cfg"  # a config value wins
    assert B.benchmarks_dir("hub") is None  # the hub, explicitly
    with pytest.raises(B.BenchmarkError, match=r"no file .*env/mmlu-test.parquet.*CASCADE_BENCHMARKS_DIR"):
        B.benchmark_file("mmlu", "test")


def test_scoring_config_and_learned_baselines_share_the_folder_rule(tmp_path, monkeypatch):
    from cascade.scoring.config import load_config
    from cascade.tuners.learned import benchmark_questions

    data = tmp_path / "bench"
    data.mkdir()
    df = pd.read_parquet(EXAMPLES / "mmlu-test.parquet").iloc[:7]
    df.to_parquet(data / "mmlu-test.parquet")
    monkeypatch.setenv(B.BENCHMARKS_DIR_ENV, str(data))
    raw = {"benchmarks": ["mmlu"], "out": str(tmp_path / "out"), "stages": [{"name": "s", "model": "smollm2-135m"}]}
    cfg = load_config(raw)  # no data_dir: $CASCADE_BENCHMARKS_DIR
    assert cfg.bench_data_dir(cfg.benchmarks[0]) == str(data)
    assert len(B.load_split("mmlu", "test", data_dir=cfg.bench_data_dir(cfg.benchmarks[0]))) == 7
    qs = benchmark_questions("mmlu", "test")
    assert len(qs) == 7 and qs[0].startswith(df["question"].iloc[0]) and "\nA. " in qs[0]
    assert load_config({**raw, "data_dir": "hub"}).bench_data_dir(cfg.benchmarks[0]) is None


def test_a_new_benchmark_is_planned_by_config_after_one_task_file(tmp_path):
    """One task file plus a data file: the scoring config names it by path and the plan cuts its shards."""
    from cascade.scoring.config import load_config
    from jobs.score import plan

    (tmp_path / "arc.yaml").write_text(ARC_TASK)
    pd.DataFrame({"question": [f"{k}+{k}?" for k in range(5)],
                  "choices": [{"text": ["3", "4"], "label": ["A", "B"]}] * 5,
                  "answerKey": ["B"] * 5}).to_parquet(tmp_path / "arc-test.parquet")
    cfg = load_config({"benchmarks": [str(tmp_path / "arc.yaml")], "data_dir": str(tmp_path),
                       "out": str(tmp_path / "out"), "shard_size": 2, "stages": [{"name": "s", "model": "smollm2-135m"}]})
    shards, per_split = plan(cfg)
    assert [len(v) for v in per_split.values()] == [5] and list(per_split) == [("arc", "test")]
    assert [sh.path.name for sh in shards["s"]] == ["test-000000-000002.parquet", "test-000002-000004.parquet",
                                                    "test-000004-000005.parquet"]
    assert shards["s"][0].path.parent == tmp_path / "out" / "arc" / "s"
