"""vLLM in process (``pip install 'spatialreward[vllm]'``), on vLLM's ``AsyncLLM``.

    spatialreward judge m.jsonl -o s.jsonl --backend vllm [--tensor-parallel-size 2]
        [--gpu-memory-utilization 0.9] [--max-model-len N]

The engine is set up for this judge: two images per prompt (SC), prefix caching
on (the SC and PQ prompts share their long text), and vLLM's multimodal
processor cache OFF (``mm_processor_cache_gb=0``): a processor-cache hit after
sleep/wake was reported to corrupt reward scores in an RL framework. The image
processor gets the judge's pixel budget (``mm_processor_kwargs``), and each
image is resized on our side exactly as the Qwen3-VL processor would
(``pixels.resize_for_model``) before it goes in, so the engine changes nothing
further: ``prepare_image`` does it once per distinct image, in the judge's
prepare pool, off the engine's path. The engine settings are those ``vllm.LLM``
would use (its usage context, so the same scheduler defaults), and the
context length defaults to what the budget needs (a smaller
``--max-model-len`` is refused at once).

Requests are the published chat turns (SC: source, edited, text; PQ: edited,
text), rendered as ``LLM.chat`` renders them (the model's chat template through
vLLM's renderer, image placeholders in that order, the images as multimodal
data, no extra special tokens), with explicit sampling parameters per request:
temperature (0 = greedy), top_p, top_k, max_tokens and the request's own seed,
special tokens kept in the text; constrained requests use vLLM's structured
outputs with the transformers path's grammar of the kind (xgrammar EBNF from
the JSON schema, no free whitespace). So the answers are those of the former
``LLM.chat`` batches, token for token.

Continuous batching, no barrier: ``agenerate`` submits ONE request to the
``AsyncLLM`` (a request id of its own) and awaits its final output; the judge
keeps ``capacity`` of them in flight (default: the engine's ``max_num_seqs``,
what vLLM schedules at once: 256 on most machines, 1024 on the largest GPUs;
``capacity=`` in ``load`` changes it). vLLM schedules every request it holds,
from every caller, step by step: a request enters while others are decoding,
nothing waits for a batch to end. A cancelled ``agenerate`` (its caller went
away) is aborted in the engine.

The engine lives on an event loop of its own thread (``spatialreward-vllm``):
``agenerate`` awaited on any other loop (the judge's, a reward server's) is
handed over to it and awaited there, with cancellation passed on; the
synchronous ``generate(requests)`` (library callers) runs its requests at once
on that loop. ``close``/``aclose`` (the judge's close) shut the engine down:
final.

Identity: ``fingerprint`` is ``vllm:`` + the weights' identity (hub id, or a
digest of a local folder's content), so vLLM and transformers results of the
same weights never resume into each other (engines differ in kernels; see the
openai backend); ``dtype`` is the engine's resolved dtype.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import itertools
import logging
import threading
import weakref
from typing import Sequence

from PIL import Image

from ..config import Generation
from ..errors import ConfigError, EngineError
from ..pixels import context_needed, resize_for_model
from ..requests import Request
from ..structured import chars_per_token_of, grammar_for
from .base import Answer

log = logging.getLogger("spatialreward")

INSTALL_HINT = "pip install 'spatialreward[vllm]'"
TESTED_WITH = "0.32.0"


def _budget(generation: Generation) -> dict:
    return {"size": {"shortest_edge": generation.min_pixels, "longest_edge": generation.max_pixels}}


class EngineClosed(RuntimeError):
    """The engine was shut down (the judge closed) while a request was in it."""


class VLLMBackend:
    max_batch = 1  # the judge drives agenerate(): one request per call, `capacity` in flight

    def __init__(self, engine, *, model_id: str, fingerprint: str, dtype: str, generation: Generation, runner,
                 capacity: int | None = None):
        """``engine``: a started ``vllm.v1.engine.async_llm.AsyncLLM`` whose loop is
        ``runner``'s (a ``loop.LoopThread``); ``load`` makes both."""
        self.engine = engine
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.dtype = dtype
        self._budget = _budget(generation)
        self._runner = runner
        self._ids = itertools.count()
        self._closed = False
        self._close_lock = threading.Lock()
        max_num_seqs = getattr(getattr(getattr(engine, "vllm_config", None), "scheduler_config", None),
                               "max_num_seqs", None)
        capacity = capacity if capacity is not None else (max_num_seqs or 256)
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"capacity must be an integer >= 1, not {capacity!r}")
        self.capacity = capacity  # requests the judge keeps in flight in the engine
        self.concurrency = capacity  # generate()/agenerate() calls may overlap (thread-safe)
        # The grammar's bounds from the served tokenizer, as the transformers path measures them.
        self.chars_per_token = chars_per_token_of(engine.get_tokenizer())
        # As LLM.chat renders: the chat template tokenizes only for Mistral tokenizers / prompt embeds.
        try:
            from vllm.utils.mistral import is_mistral_tokenizer

            mistral = is_mistral_tokenizer(engine.renderer.tokenizer)
        except ImportError:
            mistral = False
        self._tokenize_chat = bool(mistral or getattr(engine.model_config, "enable_prompt_embeds", False))

    @classmethod
    def load(cls, model: str, *, revision: str | None = None, device: str = "auto", dtype: str = "auto",
             generation: Generation | None = None, tensor_parallel_size: int = 1,
             gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, capacity: int | None = None,
             **engine_args) -> "VLLMBackend":
        """``capacity``: requests kept in flight (default: the engine's ``max_num_seqs``);
        ``engine_args``: further ``vllm.AsyncEngineArgs`` fields (library use)."""
        generation = generation or Generation()
        if device not in (None, "", "auto"):
            raise ConfigError("--device does not apply to --backend vllm: vLLM picks its devices "
                              "(use CUDA_VISIBLE_DEVICES and --tensor-parallel-size)")
        from ..torch_pair import raise_if_mismatch

        try:
            import vllm
        except ImportError as exc:
            raise_if_mismatch(exc)  # transformers wraps the mismatch in an ImportError
            raise EngineError(f"--backend vllm needs vLLM, which is not installed here ({exc.__class__.__name__}: "
                              f"{exc}): {INSTALL_HINT}") from None
        except RuntimeError as exc:  # a torch/torchvision mismatch: one line (TorchPairError)
            raise_if_mismatch(exc)
            raise
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.renderers import ChatParams
            from vllm.usage.usage_lib import UsageContext
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise_if_mismatch(exc)
            raise EngineError(f"--backend vllm needs a vLLM with AsyncLLM and its chat renderer (tested with "
                              f"{TESTED_WITH}); this one ({getattr(vllm, '__version__', '?')}) lacks it "
                              f"({exc}): pip install -U 'spatialreward[vllm]'") from None
        except RuntimeError as exc:
            raise_if_mismatch(exc)
            raise
        from ..loop import LoopThread
        from .transformers_backend import locate_model

        locate_model(model, revision)  # a missing model is said in seconds, before vLLM starts
        needed, _ = context_needed(generation)
        if max_model_len is not None and max_model_len < needed:
            raise EngineError(
                f"--max-model-len {max_model_len} is too small: an SC request needs up to {needed} tokens (two images "
                f"at --max-pixels {generation.max_pixels}, the prompt, --max-new-tokens {generation.max_new_tokens}): "
                f"raise it to {needed} or lower --max-pixels / --max-new-tokens")
        if capacity is not None and (not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1):
            raise ConfigError(f"capacity must be an integer >= 1, not {capacity!r}")
        fixed = {
            "model": model,
            "revision": revision,
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len or needed,
            "limit_mm_per_prompt": {"image": 2},
            "enable_prefix_caching": True,
            # A processor-cache hit after sleep/wake was reported to corrupt reward scores: no cache.
            "mm_processor_cache_gb": 0,
            "mm_processor_kwargs": _budget(generation),
        }
        clash = sorted(set(engine_args) & set(fixed))
        if clash:
            raise ConfigError(f"engine argument(s) {', '.join(clash)} are set by the vllm backend itself "
                              "(use its own options)")
        # vllm.LLM's defaults: the engine seed (unused: every request has its own) and no stats lines.
        args = {"seed": 0, "disable_log_stats": True, **engine_args, **fixed}

        async def start():
            # On the engine's own loop, so its output handler lives there from the start.
            # The LLM_CLASS usage context gives the scheduler defaults vllm.LLM has
            # (max_num_seqs, max_num_batched_tokens), so the engine batches as it did.
            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args), usage_context=UsageContext.LLM_CLASS)
            try:
                engine.renderer.warmup(ChatParams())  # as vllm.LLM: the chat template compiled before the first request
            except Exception:  # noqa: BLE001 - a warm-up is an optimisation
                log.debug("vLLM renderer warm-up failed", exc_info=True)
            return engine

        runner = LoopThread("spatialreward-vllm")
        try:
            engine = runner.run(start())
        except BaseException:
            runner.stop(timeout=30)
            raise
        resolved = str(engine.model_config.dtype).removeprefix("torch.")
        try:
            backend = cls(engine, model_id=model, fingerprint=vllm_fingerprint(model, revision),
                          dtype=resolved, generation=generation, runner=runner, capacity=capacity)
        except BaseException:
            _shutdown(engine, runner)
            raise
        # A backend nobody closed (the CLI) shuts its engine down at exit, while the
        # interpreter is whole (vLLM's own finalizer at teardown fails noisily).
        ref = weakref.ref(backend)
        atexit.register(lambda: ref() is not None and ref().close())
        return backend

    # -- requests -------------------------------------------------------------------
    def prepare_image(self, image: Image.Image, generation: Generation) -> Image.Image:
        """The image as the engine takes it: resized to the budget, once per distinct
        image (the judge's prepare stage, in its pool of threads)."""
        return resize_for_model(image, generation)

    def sampling_params(self, request: Request, generation: Generation, *, constrained: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

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
            output_kind=RequestOutputKind.FINAL_ONLY,  # as LLM.chat: only the finished answer
        )

    @staticmethod
    def messages(request: Request, generation: Generation) -> list[dict]:
        """The chat turn: the images (already at the budget's size when the judge's
        prepare stage made them; resized here otherwise), then the text."""
        content = [{"type": "image_pil", "image_pil": resize_for_model(image, generation)} for image in request.images]
        content.append({"type": "text", "text": request.prompt})
        return [{"role": "user", "content": content}]

    async def render(self, request: Request, generation: Generation):
        """The engine input of ``request``, as ``LLM.chat`` renders a conversation:
        the model's chat template with a generation prompt, tokenized without extra
        special tokens, the images through the multimodal processor (in vLLM's
        renderer threads). A budget other than the engine's goes with the request."""
        from vllm.renderers import ChatParams, merge_kwargs

        budget = _budget(generation)
        extra = None if budget == self._budget else budget
        renderer = self.engine.renderer
        chat_params = ChatParams(
            chat_template=None,
            chat_template_content_format="auto",
            chat_template_kwargs=merge_kwargs(None, dict(add_generation_prompt=True, continue_final_message=False,
                                                         tools=None, tokenize=self._tokenize_chat)),
            mm_processor_kwargs=extra,
        )
        tok_params = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
        _, prompts = await renderer.render_chat_async(
            [self.messages(request, generation)], chat_params, tok_params,
            prompt_extras=None if extra is None else {"mm_processor_kwargs": extra})
        return prompts[0]

    async def _generate_here(self, request: Request, generation: Generation, constrained: bool) -> Answer:
        """One request on the engine's loop: submitted alone, its final output awaited.
        Cancelled here, vLLM aborts it in the engine."""
        params = self.sampling_params(request, generation, constrained=constrained)
        prompt = await self.render(request, generation)
        request_id = f"spatialreward-{request.kind}-{next(self._ids)}"
        final = None
        async for output in self.engine.generate(prompt, params, request_id):
            final = output
        if final is None or not final.finished or not final.outputs:
            raise RuntimeError(f"vLLM ended request {request_id} without an answer")
        completion = final.outputs[0]
        return Answer(text=completion.text, tokens=len(completion.token_ids),
                      finished=completion.finish_reason == "stop")

    async def agenerate(self, request: Request, generation: Generation, *, constrained: bool) -> Answer:
        """One request, asynchronously, on any event loop: its answer, or raise."""
        if self._closed:
            raise EngineClosed("the vLLM engine is shut down")
        coro = self._generate_here(request, generation, constrained)
        if asyncio.get_running_loop() is self._runner.loop:
            return await coro
        future = self._runner.submit(coro)  # cancelling the wrapper cancels it on the engine's loop
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", None)
            if cancelling is None or cancelling():
                raise  # our caller went away (the request is aborted in the engine)
            # Cancelled on the engine's side: the engine was shut down under it.
            raise EngineClosed("the vLLM engine was shut down while the request was in it") from None

    def generate(self, requests: Sequence[Request], generation: Generation, *, constrained: bool) -> list[Answer]:
        """The synchronous door (library callers, tests): the requests at once on the
        engine's loop, one answer per request in order; raises if one fails (the
        others are aborted)."""
        if not requests:
            return []
        if self._closed:
            raise EngineClosed("the vLLM engine is shut down")
        if _running_loop() is self._runner.loop:
            raise RuntimeError("VLLMBackend.generate() called on the engine's own loop: await agenerate() there")

        async def run() -> list[Answer]:
            tasks = [asyncio.ensure_future(self._generate_here(r, generation, constrained)) for r in requests]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:
                    task.cancel()  # the rest, when one failed: aborted in the engine

        future = self._runner.submit(run())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    # -- closing --------------------------------------------------------------------
    def close(self) -> None:
        """Shut the engine down (its processes end) and stop its loop: final."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        engine, self.engine = self.engine, None
        _shutdown(engine, self._runner)
        del engine
        gc.collect()  # the engine's own finalizer (it sits in reference cycles) runs now, not at teardown

    async def aclose(self) -> None:
        """``close`` from an event loop (the judge's close): the engine's shutdown
        runs on a worker thread, the loop goes on."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)


def vllm_fingerprint(model: str, revision: str | None) -> str:
    """The weights' identity as a vLLM backend's records name it."""
    from .transformers_backend import model_fingerprint

    return "vllm:" + model_fingerprint(model, revision)


def engine_identity(model: str, *, revision: str | None = None, dtype: str = "auto",
                    **engine_args) -> tuple[str, str]:
    """(fingerprint, dtype) of the engine ``load`` would start, without starting
    it: the dtype as vLLM resolves it from the model's config (and ``engine_args``:
    a quantization or config override can change it) on this machine's platform
    (a CPU and a GPU may resolve "auto" differently, so ask on a machine like the
    engine's). ``spatialreward.ray`` hashes its records with these."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    config = AsyncEngineArgs(**{**engine_args, "model": model, "revision": revision, "dtype": dtype,
                                "seed": 0}).create_model_config()
    return vllm_fingerprint(model, revision), str(config.dtype).removeprefix("torch.")


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _shutdown(engine, runner) -> None:
    """The engine's shutdown on its own loop (its tasks live there), then the loop's stop
    (which cancels what was still waiting in it)."""
    async def shutdown() -> None:
        engine.shutdown()

    try:
        if runner.loop.is_running():
            runner.run(shutdown(), timeout=120)
        else:
            engine.shutdown()
    except Exception:  # noqa: BLE001 - closing anyway
        log.warning("vLLM engine shutdown failed", exc_info=True)
    finally:
        runner.stop(timeout=30)
