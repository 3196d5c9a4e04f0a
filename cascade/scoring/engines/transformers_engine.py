"""Hugging Face transformers engine (CPU by default; CUDA when ``device='cuda'``)."""

from __future__ import annotations

import time

from .base import Engine, GenRequest, GenResult, local_model_preflight, stop_token_ids
from .registry import EngineSpec, register


class _Recorder:
    """A logits processor that keeps, per step, the log-prob of the greedy token (and first-step extras).

    It returns the scores unchanged, so greedy decoding picks the argmax of exactly what it saw; memory
    stays O(steps x batch) instead of O(steps x batch x vocab).
    """

    def __init__(self, watch: list[list[list[int]]]):
        self.watch = watch
        self.step_lp: list = []
        self.first_top2 = None
        self.first_watch: list[list[float]] = []

    def __call__(self, input_ids, scores):
        import torch

        lsm = torch.log_softmax(scores.float(), dim=-1)
        top = torch.topk(lsm, 2, dim=-1)
        self.step_lp.append(top.values[:, 0].clone())
        if self.first_top2 is None:
            self.first_top2 = top.values.tolist()
            for b, groups in enumerate(self.watch):
                row = lsm[b]
                self.first_watch.append(
                    [float(torch.logsumexp(row[torch.tensor(g)], 0)) if g else float("-inf") for g in groups]
                )
        return scores


#: both parts come from the full-vocabulary log-softmax of the raw logits
PROVENANCE = {"logprobs": "full-vocab", "watch": "full-vocab"}


class TransformersEngine(Engine):
    name = "transformers"
    OPTIONS: dict[str, type] = {}  # the device is the stage's own ``device`` field

    def __init__(self, model_path: str, *, device: str = "cpu", **kwargs):
        super().__init__(model_path, **kwargs)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads:
            torch.set_num_threads(int(self.threads))
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("engine transformers: device 'cuda' asked for but torch sees no GPU")
        self.device = device
        torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(self.dtype, "auto")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(device).eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = next(iter(self.stop_ids)) if self.stop_ids else 0
        self.pad_id = int(pad)

    @classmethod
    def stage_kwargs(cls, st) -> dict:
        kw = super().stage_kwargs(st)
        if st.device:
            kw["device"] = st.device
        return kw

    def context_length(self) -> int | None:
        own = getattr(self.model.config, "max_position_embeddings", None)
        lengths = [n for n in (self.max_model_len, own) if n]
        return min(lengths) if lengths else None

    def _batch(self, reqs: list[GenRequest]) -> list[GenResult]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):  # left padding
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        rec = _Recorder([r.watch for r in reqs])
        gen_cfg = GenerationConfig(
            do_sample=False, max_new_tokens=max(r.max_new_tokens for r in reqs),
            eos_token_id=sorted(self.stop_ids) or None, pad_token_id=self.pad_id,
        )
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=gen_cfg,
                logits_processor=LogitsProcessorList([rec]),
            )
        seconds = time.perf_counter() - t0
        gen = out[:, width:].tolist()
        step_lp = torch.stack(rec.step_lp, dim=1).tolist() if rec.step_lp else [[] for _ in reqs]
        results = []
        for i, r in enumerate(reqs):
            toks, lps, stopped = [], [], False
            for j, t in enumerate(gen[i][: r.max_new_tokens]):
                toks.append(int(t))
                lps.append(float(step_lp[i][j]))
                if t in self.stop_ids:
                    stopped = True
                    break
            results.append(
                GenResult(
                    token_ids=toks,
                    text=self.tokenizer.decode(toks, skip_special_tokens=True),
                    token_logprobs=lps,
                    top2_logprobs=(float(rec.first_top2[i][0]), float(rec.first_top2[i][1])),
                    watch_logprobs=rec.first_watch[i] if rec.first_watch else [],
                    input_tokens=len(r.prompt_ids),
                    output_tokens=len(toks),
                    stopped=stopped,
                    seconds=seconds / len(reqs),
                    provenance=dict(PROVENANCE),
                )
            )
        return results

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        # Batch requests of similar length and equal max_new_tokens together; keep the caller's order.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, len(requests[i].prompt_ids)))
        out: list[GenResult | None] = [None] * len(requests)
        for s in range(0, len(order), self.batch_size):
            idx = order[s: s + self.batch_size]
            for i, res in zip(idx, self._batch([requests[i] for i in idx])):
                out[i] = res
        return out  # type: ignore[return-value]


register(EngineSpec(
    name="transformers", factory=f"{__name__}:TransformersEngine", needs="local_model",
    description="Hugging Face transformers on CPU (default) or CUDA (device: cuda)",
    options=TransformersEngine.OPTIONS,
    preflight=local_model_preflight,
))
