"""Per-row faults in an engine (real SmolLM2-135M under transformers): a prompt longer than the model's
context and a row that makes the engine raise are failed rows with their reason; the other rows of the
batch keep their results, and a fault that no row escapes is raised (it is not a row's)."""

import pytest

from cascade.scoring.engines import GenRequest, make_engine
from cascade.scoring.models import materialize
from cascade.scoring.stage import Prompter


@pytest.fixture(scope="module")
def smol():
    return make_engine("transformers", materialize("smollm2-135m"), dtype="float32", batch_size=4, threads=2)


def _requests(smol, n=3):
    p = Prompter(smol.tokenizer)
    return [GenRequest(p.ids(f"Say the number {i}."), 3) for i in range(n)]


def test_a_prompt_longer_than_the_context_is_a_failed_row_and_not_sent(smol):
    assert smol.context_length() == 8192  # SmolLM2's max_position_embeddings
    ok = _requests(smol)
    long = GenRequest(ok[0].prompt_ids * 1000, 3)  # about 10k tokens
    res = smol.answer([ok[0], long, ok[1], ok[2]])
    assert res[1].error.startswith(f"prompt too long: {len(long.prompt_ids)} tokens + 3 to generate > the model's "
                                   "context of 8192 tokens")
    assert res[1].input_tokens == 0 and res[1].token_ids == []
    alone = smol.generate(ok)
    assert [r.text for r in (res[0], res[2], res[3])] == [r.text for r in alone]
    assert all(r.error is None for r in (res[0], res[2], res[3]))


def test_max_model_len_bounds_the_context(smol):
    small = make_engine("transformers", materialize("smollm2-135m"), dtype="float32", batch_size=4, threads=2,
                        max_model_len=16)
    assert small.context_length() == 16
    req = _requests(small, 1)[0]
    assert len(req.prompt_ids) + req.max_new_tokens > 16
    assert small.answer([req])[0].error.startswith("prompt too long")


def test_a_row_that_makes_the_engine_raise_is_isolated(smol):
    ok = _requests(smol)
    bad = GenRequest([len(smol.tokenizer) + 10_000], 3)  # a token id beyond the embedding table
    res = smol.answer([ok[0], bad, ok[1], ok[2]])
    assert res[1].error.startswith("the engine raised IndexError on this row")
    alone = smol.generate(ok)
    assert [r.text for r in (res[0], res[2], res[3])] == [r.text for r in alone]


def test_a_fault_no_row_escapes_is_raised(smol):
    bad = [GenRequest([len(smol.tokenizer) + 10_000 + i], 3) for i in range(2)]
    with pytest.raises(IndexError):
        smol.answer(bad)
