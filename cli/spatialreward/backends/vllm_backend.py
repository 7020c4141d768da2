"""vLLM in process (``pip install 'spatialreward[vllm]'``).

    spatialreward judge m.jsonl -o s.jsonl --backend vllm [--tensor-parallel-size 2]
        [--gpu-memory-utilization 0.9] [--max-model-len N]

The engine is set up for this judge: two images per prompt (SC), prefix caching
on (the SC and PQ prompts share their long text), and vLLM's multimodal
processor cache OFF (``mm_processor_cache_gb=0``): a processor-cache hit after
sleep/wake was reported to corrupt reward scores in an RL framework. The image
processor gets the judge's pixel budget (``mm_processor_kwargs``), and each
image is resized on our side exactly as the Qwen3-VL processor would
(``pixels.resize_for_model``) before it goes in, so the engine changes nothing
further. Requests are the published chat turns (SC: source, edited, text; PQ:
edited, text) through ``LLM.chat``, with explicit sampling parameters per
request: temperature (0 = greedy), top_p, top_k, max_tokens and the request's
own seed; constrained requests use vLLM's structured outputs with the
transformers path's grammar of the kind (xgrammar EBNF from the JSON schema, no
free whitespace).

Identity: ``fingerprint`` is ``vllm:`` + the weights' identity (hub id, or a
digest of a local folder's content), so vLLM and transformers results of the
same weights never resume into each other (engines differ in kernels; see the
openai backend). One generate() call takes up to ``max_batch`` requests, which
vLLM schedules with continuous batching; calls do not overlap (concurrency 1).
"""

from __future__ import annotations

import logging
from typing import Sequence

from ..config import Generation
from ..errors import ConfigError, EngineError
from ..pixels import context_needed, resize_for_model
from ..requests import Request
from ..structured import chars_per_token_of, grammar_for
from .base import Answer

log = logging.getLogger("spatialreward")

INSTALL_HINT = "pip install 'spatialreward[vllm]'"


def _budget(generation: Generation) -> dict:
    return {"size": {"shortest_edge": generation.min_pixels, "longest_edge": generation.max_pixels}}


class VLLMBackend:
    max_batch = 256  # requests per generate(): vLLM batches them continuously
    concurrency = 1

    def __init__(self, llm, *, model_id: str, fingerprint: str, dtype: str, generation: Generation):
        self.llm = llm
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.dtype = dtype
        self._budget = _budget(generation)
        # The grammar's bounds from the served tokenizer, as the transformers path measures them.
        self.chars_per_token = chars_per_token_of(llm.get_tokenizer())

    @classmethod
    def load(cls, model: str, *, revision: str | None = None, device: str = "auto", dtype: str = "auto",
             generation: Generation | None = None, tensor_parallel_size: int = 1,
             gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, **engine_args) -> "VLLMBackend":
        """``engine_args``: further ``vllm.LLM`` arguments (library use)."""
        generation = generation or Generation()
        if device not in (None, "", "auto"):
            raise ConfigError("--device does not apply to --backend vllm: vLLM picks its devices "
                              "(use CUDA_VISIBLE_DEVICES and --tensor-parallel-size)")
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise EngineError(f"--backend vllm needs vLLM, which is not installed here ({exc.__class__.__name__}: "
                              f"{exc}): {INSTALL_HINT}") from None
        from .transformers_backend import locate_model, model_fingerprint

        locate_model(model, revision)  # a missing model is said in seconds, before vLLM starts
        needed, _ = context_needed(generation)
        if max_model_len is not None and max_model_len < needed:
            raise EngineError(
                f"--max-model-len {max_model_len} is too small: an SC request needs up to {needed} tokens (two images "
                f"at --max-pixels {generation.max_pixels}, the prompt, --max-new-tokens {generation.max_new_tokens}): "
                f"raise it to {needed} or lower --max-pixels / --max-new-tokens")
        from vllm import LLM

        llm = LLM(
            model=model,
            revision=revision,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len or needed,
            limit_mm_per_prompt={"image": 2},
            enable_prefix_caching=True,
            # A processor-cache hit after sleep/wake was reported to corrupt reward scores: no cache.
            mm_processor_cache_gb=0,
            mm_processor_kwargs=_budget(generation),
            **engine_args,
        )
        resolved = str(llm.llm_engine.model_config.dtype).removeprefix("torch.")
        return cls(llm, model_id=model, fingerprint="vllm:" + model_fingerprint(model, revision), dtype=resolved,
                   generation=generation)

    def sampling_params(self, request: Request, generation: Generation, *, constrained: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if constrained:
            # The transformers path's grammar (no free whitespace), as text: a request's own
            # disable_any_whitespace is ignored by vLLM.
            structured = StructuredOutputsParams(
                grammar=grammar_for(request.kind, generation.max_new_tokens, self.chars_per_token))
        return SamplingParams(
            n=1,
            temperature=generation.temperature if generation.sampling else 0.0,
            top_p=generation.top_p,
            top_k=generation.top_k,
            max_tokens=generation.max_new_tokens,
            seed=request.seed,
            # Region markers and <think> stay in the text, as the transformers path keeps them.
            skip_special_tokens=False,
            structured_outputs=structured,
        )

    @staticmethod
    def messages(request: Request, generation: Generation) -> list[dict]:
        content = [{"type": "image_pil", "image_pil": resize_for_model(image, generation)} for image in request.images]
        content.append({"type": "text", "text": request.prompt})
        return [{"role": "user", "content": content}]

    def generate(self, requests: Sequence[Request], generation: Generation, *, constrained: bool) -> list[Answer]:
        if not requests:
            return []
        kwargs = {}
        if _budget(generation) != self._budget:
            kwargs["mm_processor_kwargs"] = _budget(generation)
        outputs = self.llm.chat(
            [self.messages(r, generation) for r in requests],
            [self.sampling_params(r, generation, constrained=constrained) for r in requests],
            use_tqdm=False,
            **kwargs,
        )
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        answers = []
        for output in outputs:
            completion = output.outputs[0]
            answers.append(Answer(text=completion.text, tokens=len(completion.token_ids),
                                  finished=completion.finish_reason == "stop"))
        return answers
