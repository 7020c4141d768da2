"""In-process Hugging Face transformers backend (Qwen3-VL)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

from ..config import Generation
from ..errors import ConfigError, ModelNotFoundError
from ..requests import Request
from ..structured import schema_for
from ..torch_pair import check_torch_pair, raise_if_mismatch
from .base import Answer

log = logging.getLogger("spatialreward")

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_device(device: str) -> str:
    import torch

    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return device


# Below this many parameters a model runs on the CPU in seconds per edit (the
# tiny test models have ~0.1M): no warning.
CPU_WARNING_PARAMETERS = 1_000_000_000


def warn_if_slow_on_cpu(net, device: str) -> None:
    """On the CPU, warn that each edit takes minutes, only when the model is
    big enough for that to be true (its actual parameter count)."""
    if device != "cpu":
        return
    count = sum(p.numel() for p in net.parameters())
    if count >= CPU_WARNING_PARAMETERS:
        log.warning(f"running on the CPU: expect minutes per edit with a {count / 1e9:.1f}B-parameter model "
                    "(use a GPU: --device cuda)")


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return getattr(torch, dtype), dtype


def model_fingerprint(model: str, revision: str | None) -> str:
    """Hub ids are identified by name (the revision is hashed separately); a local
    folder by its content (config and weight file names and sizes), so the same
    weights give the same hash wherever the folder lies."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return model
    digest = hashlib.sha256()
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                 "chat_template.jinja", "chat_template.json", "tokenizer.json"):
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}\0".encode())
    return "local:" + digest.hexdigest()[:16]


HUB_PROBE_TIMEOUT_S = 8.0  # one request, no retries: a hub that does not answer by then is out of reach


def _looks_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or (os.sep != "/" and os.sep in model)


def locate_model(model: str, revision: str | None) -> bool:
    """Where the weights come from, decided in seconds: True = local only (a
    folder, or a hub id already in the Hugging Face cache: no network at all),
    False = download from the hub (which answered). Raises ModelNotFoundError
    at once for a missing folder, and within HUB_PROBE_TIMEOUT_S when the model
    is not cached and the hub cannot be reached (no retry noise)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return True
    if folder.exists():
        raise ModelNotFoundError(f"model {model!r} is a file: --model takes a model folder or a hub id")
    if _looks_local(model):
        raise ModelNotFoundError(f"model folder {model!r} does not exist")
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json", revision=revision)
    except ValueError as exc:  # not a valid repo id either
        raise ModelNotFoundError(f"model {model!r}: neither a folder here nor a hub id ({exc})") from None
    if isinstance(cached, str):
        return True
    if constants.HF_HUB_OFFLINE:
        raise _not_found(model, revision, "HF_HUB_OFFLINE is set")
    try:
        HfApi().model_info(model, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - unreachable, unknown repo, gated: one line either way
        raise _not_found(model, revision, exc) from None
    return False


def _not_found(model: str, revision: str | None, cause: Exception | str) -> ModelNotFoundError:
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    rev = f" (revision {revision})" if revision else ""
    text = str(cause).strip()
    first = text.splitlines()[0] if text else cause.__class__.__name__
    looks_local = model.startswith((".", "/", "~")) or os.sep in model.rstrip(os.sep).split(os.sep, 1)[-1]
    if looks_local or Path(model).exists():
        return ModelNotFoundError(f"model folder {model!r}{rev} cannot be loaded: {first[:300]}")
    return ModelNotFoundError(
        f"model {model!r}{rev} is not in the local Hugging Face cache (HF_HOME={hf_home}) and could not be "
        f"fetched ({first[:200]}). Download it where the hub is reachable with `hf download {model}` and copy "
        "the cache here (or set HF_HOME to it), or pass --model /path/to/a/local/copy."
    )


class TransformersBackend:
    """Qwen3-VL through ``AutoModelForImageTextToText.generate``, batched with left padding."""

    max_batch: int | None = None  # the judge's --batch-size
    concurrency = 1  # one generate() at a time: the model is not shared between threads

    def __init__(self, model, processor, *, model_id: str, device: str, dtype: str, fingerprint: str | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.fingerprint = fingerprint or model_id
        self.stop_ids = [i for i in (self.tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS) if i is not None]
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[-1]
        self._grammars: dict = {}
        self._compiler = None

    @classmethod
    def identity(cls, model: str, *, revision: str | None = None, device: str = "auto", dtype: str = "auto",
                 **_options) -> tuple[str, str]:
        """(weights fingerprint, dtype) of the backend ``load`` gives, without
        loading the weights: a resumed run checks its results file first."""
        locate_model(model, revision)
        return model_fingerprint(model, revision), resolve_dtype(dtype, resolve_device(device))[1]

    @classmethod
    def load(cls, model: str, *, revision: str | None = None, device: str = "auto", dtype: str = "auto",
             generation: Generation | None = None) -> "TransformersBackend":
        local_only = locate_model(model, revision)  # first: a missing model is said in seconds
        device = resolve_device(device)
        torch_dtype, dtype_name = resolve_dtype(dtype, device)
        check_torch_pair()  # a torch/torchvision mismatch in one line, not transformers' traceback
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(model, revision=revision, local_files_only=local_only)
            # Straight onto the device: no full copy of the weights in CPU memory first.
            net = AutoModelForImageTextToText.from_pretrained(
                model, revision=revision, dtype=torch_dtype, device_map=device, local_files_only=local_only
            )
        except (OSError, ValueError, KeyError) as exc:
            raise _not_found(model, revision, exc) from exc
        except Exception as exc:  # huggingface_hub errors that are not OSErrors
            raise_if_mismatch(exc)
            if exc.__class__.__module__.startswith(("huggingface_hub", "requests", "httpx")):
                raise _not_found(model, revision, exc) from exc
            raise
        net.eval()
        warn_if_slow_on_cpu(net, device)
        return cls(net, processor, model_id=model, device=device, dtype=dtype_name,
                   fingerprint=model_fingerprint(model, revision))

    # -- constrained decoding -------------------------------------------------
    def _grammar(self, kind: str, max_new_tokens: int):
        key = (kind, max_new_tokens)
        if key not in self._grammars:
            import xgrammar as xgr

            from ..structured import chars_per_token_of, json_tokenizer_info

            if self._compiler is None:
                vocab = self.model.config.get_text_config().vocab_size
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab, stop_token_ids=self.stop_ids)
                self._compiler = xgr.GrammarCompiler(json_tokenizer_info(info))
                self._chars_per_token = chars_per_token_of(self.tokenizer)
            schema = json.dumps(schema_for(kind, max_new_tokens, self._chars_per_token))
            # The trained layout: keys in schema order, ", " and ": ", no other whitespace.
            self._grammars[key] = self._compiler.compile_json_schema(
                schema, any_whitespace=False, separators=(", ", ": "), strict_mode=True
            )
        return self._grammars[key]

    # -- generation -----------------------------------------------------------
    def generate(self, requests: Sequence[Request], generation: Generation, *, constrained: bool) -> list[Answer]:
        import torch

        texts = [
            self.processor.apply_chat_template(r.messages(), add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        images = [image for r in requests for image in r.images]
        size = {"longest_edge": generation.max_pixels, "shortest_edge": generation.min_pixels}
        inputs = self.processor(
            text=texts, images=images, padding=True, return_tensors="pt", images_kwargs={"size": size}
        ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        # Every decoding field explicitly, so the model's own sampling defaults
        # never leak in. generate() itself always picks the best token: when
        # sampling, SeededSampler has already drawn it, per request.
        kwargs = dict(
            max_new_tokens=generation.max_new_tokens,
            do_sample=False,
            top_p=generation.top_p,  # inert without do_sample; SeededSampler applies them
            top_k=generation.top_k,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        processors = []
        if constrained:
            import xgrammar as xgr

            grammars = [self._grammar(r.kind, generation.max_new_tokens) for r in requests]
            processors.append(xgr.contrib.hf.LogitsProcessor(grammars))
        if generation.sampling:
            processors.append(SeededSampler([r.seed for r in requests], generation, device=self.device))
        if processors:
            kwargs["logits_processor"] = processors
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1]:].tolist()
        return [self._answer(row) for row in new_tokens]

    def _answer(self, ids: list[int]) -> Answer:
        finished = False
        for i, token in enumerate(ids):
            if token in self.stop_ids:
                ids, finished = ids[:i], True
                break
        # Keep special tokens the model wrote (e.g. <think>, region markers): decode verbatim.
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return Answer(text=text, tokens=len(ids), finished=finished)


class SeededSampler:
    """Temperature / top-k / top-p sampling with one ``torch.Generator`` per
    request, as the last logits processor (after the grammar mask).

    Each row draws its token from its own generator, seeded with the request's
    seed, so a request's answer does not depend on what else shares its batch
    (a resumed run equals an uninterrupted one) and the process-wide RNG of a
    library user is never touched. It leaves only the drawn token possible, so
    generate()'s greedy pick takes it.
    """

    def __init__(self, seeds: Sequence[int], generation: Generation, *, device: str):
        import torch
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(generation.temperature)]
        if generation.top_k:
            self.warpers.append(TopKLogitsWarper(generation.top_k))
        if generation.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(generation.top_p))

    def __call__(self, input_ids, scores):
        import torch

        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)
        chosen = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        picked = torch.full_like(scores, float("-inf"))
        picked[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
        return picked
