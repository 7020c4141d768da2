"""The judge: one asynchronous pipeline from edit to engine.

    sample -> prepare (decode, orient, convert, resize / encode for the engine:
    once per distinct image) -> engine (SC and PQ of every pass at once, repairs
    through the same engine) -> parse -> aggregate -> JudgeResult

Everything runs as coroutines on one event loop over one async engine
(``engine.py``): ``Judge.ajudge`` is the coroutine (the reward server awaits it
on its own loop); ``Judge.score``, ``score_many`` and ``submit`` are the
synchronous doors, run on the judge's own loop thread. ``score_many`` bounds
the work in flight by edits and by decoded bytes, never by the slowest edit:
finished results wait in a buffer until their turn, so a slow answer at the
head never idles the engine. Any exception on an item's path resolves that item
as an error (stage ``input`` or ``model``); nothing hangs.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import statistics
import threading
import weakref
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

from .aggregate import DIMENSIONS, Reward, Scores, aggregate
from .backends import Answer, backend_class
from .config import JudgeConfig, config_hash, load_config, with_overrides
from .engine import DEFAULT_FLOW, make_engine
from .errors import ConfigError, InputError, ModelError, ParseError, SampleError, SpatialRewardError, describe
from .loop import LoopThread
from .constants import MAX_SOURCES
from .pixels import qwen_vl_utils_resize
from .prepare import SharedImages
from .protocols import get_protocol, is_t2i
from .parse import PQAnswer, SCAnswer, parse_pq, parse_sc
from .prompts import prompts_fingerprint
from .records import build_record
from .requests import PQ, SC, T2I, Request, pq_request, sc_request, t2i_request
from .sample import Sample
from .structured import GRAMMAR_VERSION

log = logging.getLogger("spatialreward")


@dataclass
class Judgment:
    """One request kind (SC or PQ) of one pass: the final answer and how it was obtained."""

    answer: SCAnswer | PQAnswer
    raw: str
    repaired: bool = False
    failed_raw: str | None = None  # the unconstrained answer that failed parsing
    tokens: int | None = None  # generated tokens of the final answer, as the backend counted them


@dataclass
class JudgeResult:
    sample: Sample
    error: SampleError | None = None
    scores: Scores | None = None
    reward: Reward | None = None
    sc: list[Judgment] = field(default_factory=list)  # one per pass
    pq: list[Judgment] = field(default_factory=list)
    edited_size: tuple[int, int] | None = None  # (width, height) of the edited image
    judge: "Judge | None" = field(default=None, repr=False, compare=False)
    # t2i-spatial: one judgment per pass, the relations' verdicts, the reward's parts
    t2i: list[Judgment] = field(default_factory=list)
    verdicts: list[dict] | None = None
    t2i_parts: dict | None = None
    t2i_scores: dict | None = None  # {"spatial", "presence"}: means over the passes

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "error"

    @property
    def repaired(self) -> bool:
        return any(j.repaired for j in self.sc + self.pq + self.t2i)

    @property
    def kind(self) -> str:
        return "t2i" if self.t2i or (self.judge is not None and self.judge.t2i) else "edit"

    def to_record(self) -> dict:
        """The JSON record ``spatialreward judge`` writes for this result."""
        if self.judge is None:
            raise ValueError("to_record() needs a result produced by a Judge")
        return build_record(self, model=self.judge.model, judge_hash=self.judge.judge_hash,
                            config_hash=self.judge.config_hash)

    def pass_scores(self) -> list[Scores]:
        return [
            Scores(s.answer.success, s.answer.overediting, p.answer.naturalness, p.answer.artifacts)
            for s, p in zip(self.sc, self.pq)
        ]


def mean_scores(passes: Sequence[Scores]) -> Scores:
    return Scores(*(statistics.fmean(getattr(s, d) for s in passes) for d in DIMENSIONS))


DEFAULT_MAX_BYTES = 2 << 30  # decoded image bytes held by the edits in flight (score_many)
MAX_BUFFERED = 100_000  # finished results waiting for a slower one ahead of them (score_many)


class Judge:
    """SpatialReward-8B behind one object: load once, score many edits."""

    def __init__(self, backend, config: JudgeConfig, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 prepare_workers: int | None = None):
        self.backend = backend
        self.config = config
        self.judge_hash, self.config_hash = judge_identity(config, dtype=backend.dtype,
                                                          fingerprint=getattr(backend, "fingerprint", None))
        self.t2i = is_t2i(config.protocol)  # text-to-image spatial judging: prompt + image, one request
        # The model that judges, as records name it: a server's served model (which may
        # be the one it serves when none was asked for), else the configured one.
        self.model = getattr(backend, "served_model", None) or config.model
        self.engine = make_engine(backend, config.generation, batch_size=config.batch_size)
        # What the engine takes per call and how many requests it holds at once.
        self.max_batch = self.engine.max_batch
        self.concurrency = max(1, self.engine.capacity // self.max_batch)
        self.max_bytes = max_bytes
        # Decoding, resizing and encoding run off the event loop, in a pool sized to the machine.
        workers = prepare_workers or max(2, min(8, os.cpu_count() or 2))
        protocol = get_protocol(config.protocol)
        pre_resize = functools.partial(qwen_vl_utils_resize, **protocol.pre_resize) if protocol.pre_resize else None
        self.images = SharedImages(getattr(backend, "prepare_image", None), config.generation, workers=workers,
                                   pre_resize=pre_resize)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: LoopThread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.unfinished = 0  # edits accepted and not yet resolved
        self._sequence = 0  # input order: the engine serves a flow's requests in it

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        config: JudgeConfig | None = None,
        config_file: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        backend: str = "transformers",
        backend_options: dict | None = None,
        **overrides,
    ) -> "Judge":
        """Load the model. ``overrides`` are config keys, nested as in the YAML
        (e.g. ``generation={"passes": 2, "temperature": 0.7}``, ``batch_size=8``);
        ``backend_options`` go to the backend's ``load`` (e.g. ``{"base_urls":
        ["http://gpu1:8000/v1"], "concurrency": 64}`` for ``backend="openai"``)."""
        if config is None:
            if model is not None:
                overrides["model"] = model
            config = load_config(config_file, overrides)
        elif model is not None or overrides:
            config = with_overrides(config, {**overrides, **({"model": model} if model else {})})
        backend_obj = backend_class(backend).load(
            config.model, revision=config.revision, device=device, dtype=dtype, generation=config.generation,
            **(backend_options or {}),
        )
        return cls(backend_obj, config)

    # -- public API: synchronous doors ------------------------------------------------
    def score(self, source, edited, instruction: str, *, id: str = "edit", meta: dict | None = None) -> JudgeResult:
        """Judge one edit (paths or PIL images). Never raises for a bad edit:
        the result carries ``error`` (stage input/model/parse) instead."""
        sample = Sample(id=id, source=source, edited=edited, instruction=instruction, meta=dict(meta or {}))
        return next(iter(self.score_many([sample])))

    def score_many(self, samples: Iterable[Sample], window: int | None = None) -> Iterator[JudgeResult]:
        """Stream one result per sample, in input order.

        The samples are read here, in the caller's thread. At most ``window``
        edits are being judged at once (default: enough to keep the engine
        full) and their decoded images hold at most ``max_bytes``; an edit that
        has finished no longer counts, it waits in a buffer until the results
        before it are out. So a slow answer at the head never stops new work
        while the bounds allow it."""
        window = window or self.window
        cond = threading.Condition()
        state = {"running": 0}
        pending: deque[Future] = deque()
        iterator = iter(samples)
        exhausted = False

        def done(_future) -> None:
            with cond:
                state["running"] -= 1
                cond.notify_all()

        def admissible() -> bool:
            return (state["running"] < window and len(pending) < MAX_BUFFERED
                    and (state["running"] == 0 or self.images.held_bytes < self.max_bytes))

        try:
            while True:
                while not exhausted:
                    with cond:
                        if not admissible():
                            break
                    sample = next(iterator, None)
                    if sample is None:
                        exhausted = True
                        break
                    future = self.submit(sample)
                    with cond:
                        state["running"] += 1
                    future.add_done_callback(done)
                    pending.append(future)
                if not pending:
                    return
                head = pending[0]
                if head.done():
                    pending.popleft()
                    yield head.result()
                    continue
                with cond:  # until the head is done, or there is room for more
                    cond.wait_for(lambda: head.done() or (not exhausted and admissible()), timeout=1.0)
        finally:
            for future in pending:
                future.cancel()

    def submit(self, sample: Sample, *, flow=DEFAULT_FLOW) -> "Future[JudgeResult]":
        """Judge one sample in the background; the future resolves to its result
        (never raises for a bad edit). ``cancel()`` withdraws it."""
        return self._thread().submit(self.ajudge(sample, flow=flow))

    def submit_many(self, samples: Sequence[Sample]) -> "list[Future[JudgeResult]]":
        """``submit`` for several samples of one caller: they share a flow, so
        other callers' work is interleaved with theirs, not queued behind it."""
        flow = object()
        return [self.submit(sample, flow=flow) for sample in samples]

    # -- public API: the coroutine ---------------------------------------------------
    async def ajudge(self, sample: Sample, *, flow=DEFAULT_FLOW) -> JudgeResult:
        """Judge one sample on the running event loop (the judge's engine is bound
        to the first loop that uses it). Never raises for a bad edit; a
        configuration problem (e.g. a bad SPATIALREWARD_MAX_IMAGE_PIXELS) raises."""
        self._bind()
        if self._closed:
            raise RuntimeError("the judge is closed")
        self.unfinished += 1
        self._sequence += 1
        try:
            return await self._judge(sample, flow, self._sequence)
        finally:
            self.unfinished -= 1

    async def ajudge_many(self, samples: Sequence[Sample], *, flow=None) -> list[JudgeResult]:
        """Several samples of one caller (one flow), judged at once; results in order."""
        flow = flow if flow is not None else object()
        return list(await asyncio.gather(*(self.ajudge(s, flow=flow) for s in samples)))

    @property
    def window(self) -> int:
        """Edits in flight that keep the engine busy: what it holds, plus one batch,
        plus what the prepare pool decodes meanwhile."""
        return self.engine.capacity + self.max_batch + 2 * self.images.workers

    @property
    def queued(self) -> int:
        """Model requests waiting for the engine."""
        return self.engine.queued

    @property
    def in_flight(self) -> int:
        """Model requests inside the engine now."""
        return self.engine.in_flight

    def close(self) -> None:
        """Final: no further work is taken (a later call raises). What is queued
        for the engine fails as cancelled; the loop thread, the engine's and the
        prepare pool's threads stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runner, loop = self._runner, self._loop
        if runner is not None:
            try:
                runner.run(self._aclose_parts(), timeout=120)
            finally:
                runner.stop()
        elif loop is None:
            self.images.shutdown()
        elif loop.is_running():  # bound to the caller's loop: its owner calls aclose()
            loop.call_soon_threadsafe(lambda: loop.create_task(self._aclose_parts()))

    async def aclose(self) -> None:
        """``close`` from a coroutine: on the loop the judge runs on (the reward
        server's), or, for a judge on its own loop thread, handed to that thread."""
        with self._lock:
            runner = self._runner
            if self._closed and runner is None:
                return
        if runner is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.close)
            return
        with self._lock:
            self._closed = True
        await self._aclose_parts()

    async def _aclose_parts(self) -> None:
        await self.engine.aclose()
        # What is still being prepared reaches the closed engine and resolves as an error.
        for _ in range(6000):
            if not self.unfinished:
                break
            await asyncio.sleep(0.01)
        await asyncio.get_running_loop().run_in_executor(None, self.images.shutdown)

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the pipeline ---------------------------------------------------------------
    def _thread(self) -> LoopThread:
        with self._lock:
            if self._closed:
                raise RuntimeError("the judge is closed")
            if self._runner is None:
                if self._loop is not None:
                    raise RuntimeError("this judge runs on another event loop: await judge.ajudge() there")
                self._runner = LoopThread("spatialreward-judge")
                self._loop = self._runner.loop
                # A judge nobody closed stops its loop when it is collected, or at exit.
                weakref.finalize(self, self._runner.stop, 5.0)
            return self._runner

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is None:
                self._loop = loop
            elif self._loop is not loop:
                raise RuntimeError("this judge is bound to another event loop (one judge, one loop)")

    async def _judge(self, sample: Sample, flow, sequence: int) -> JudgeResult:
        result = JudgeResult(sample=sample, error=sample.error, judge=self)
        if result.error is not None:
            return result
        what = "prompt" if self.t2i else "instruction"
        if not isinstance(sample.instruction, str) or not sample.instruction.strip():
            result.error = InputError(f"empty {what}" if isinstance(sample.instruction, str)
                                      else f"{what} must be text, not {type(sample.instruction).__name__}")
            return result
        if self.t2i:
            return await self._judge_t2i(result, flow, sequence)
        if sample.source is None:
            result.error = InputError("no source image: a text-to-image item (prompt + image) is judged with "
                                      "--protocol t2i-spatial")
            return result
        multi = isinstance(sample.source, (list, tuple))
        sources = list(sample.source) if multi else [sample.source]
        wanted = [(p, kind) for p in range(self.config.generation.passes) for kind in (SC, PQ)]

        async def work(held: list):
            if not 1 <= len(sources) <= MAX_SOURCES:
                raise InputError(f"an edit takes 1 to {MAX_SOURCES} source images, not {len(sources)}")
            for k, image in enumerate(sources):
                role = f"source {k + 1}" if multi else "source"
                await self._acquire(held, image, role, flow, sequence, what="the images")
            edited = await self._acquire(held, sample.edited, "edited", flow, sequence, what="the images")
            result.edited_size = edited.size
            images = (tuple(h.value for h in held[:-1]) if multi else held[0].value, edited.value)
            return await asyncio.gather(*(self._ask(kind, sample, images, p, flow, (sequence, p))
                                          for p, kind in wanted))

        outcomes = await self._guarded(result, work)
        if result.error is not None:
            return result
        return finish_result(result, ((kind, outcome) for (_, kind), outcome in zip(wanted, outcomes)),
                             self.config.aggregation)

    async def _guarded(self, result: JudgeResult, work):
        """``await work(held)``'s value; or None, with ``result.error`` set: a
        SampleError is the item's own, anything else unexpected a ``model``
        error (never an unresolved item). The prepared images ``work`` put in
        ``held`` are released however it ends."""
        held: list = []
        try:
            return await work(held)
        except SampleError as exc:
            result.error = exc
        except (ConfigError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - never an unresolved item
            result.error = ModelError(f"judging failed: {describe(exc)}")
        finally:
            for shared in held:
                self.images.release(shared)
        return None

    async def _acquire(self, held: list, image, role: str, flow, sequence: int, *, what: str):
        """One prepared image (``SharedImages.acquire``), added to ``held``; an
        unexpected failure on it is this item's input error ("cannot read WHAT")."""
        try:
            held.append(await self.images.acquire(image, role=role, flow=flow, order=(sequence,)))
        except (SampleError, SpatialRewardError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - anything else on an image is this item's input error
            raise InputError(f"cannot read {what}: {describe(exc)}") from None
        return held[-1]

    async def _judge_t2i(self, result: JudgeResult, flow, sequence: int) -> JudgeResult:
        """t2i-spatial: one request per pass (the image, our prompt with the
        text-to-image prompt); the relations checked by the model and by the
        geometry of its boxes; the reward from both (``spatialreward.t2i``)."""
        from .t2i import t2i_reward_parts, verify

        sample = result.sample
        if sample.source is not None:
            result.error = InputError("an edit (it has a source image) under --protocol t2i-spatial, which judges "
                                      "a prompt and an image: use an edit protocol (eval, reward-server)")
            return result
        relations = sample.meta.get("relations") if isinstance(sample.meta, dict) else None
        if relations is not None and not _valid_relations(relations):
            result.error = InputError("'relations' must be a list of [subject, relation, object] strings")
            return result

        async def work(held: list):
            image = await self._acquire(held, sample.edited, "image", flow, sequence, what="the image")
            result.edited_size = image.size
            return await asyncio.gather(*(self._ask(T2I, sample, (None, image.value), p, flow, (sequence, p))
                                          for p in range(self.config.generation.passes)))

        outcomes = await self._guarded(result, work)
        if result.error is not None:
            return result
        for outcome in outcomes:
            if isinstance(outcome, SampleError):
                result.error = result.error or outcome
            else:
                result.t2i.append(outcome)
        if result.error is not None:
            return result
        first = result.t2i[0].answer
        spatial = statistics.fmean(j.answer.spatial for j in result.t2i)
        presence = statistics.fmean(j.answer.presence for j in result.t2i)
        answer = replace(first, spatial=spatial, presence=presence)  # the passes' mean scores, the first's boxes
        result.verdicts = verify(first, relations, image_size=result.edited_size)
        result.t2i_scores = {"spatial": spatial, "presence": presence}
        result.t2i_parts = t2i_reward_parts(answer, result.verdicts, self.config.t2i)
        # no SC/PQ here: overall, sc and pq stay None (records say so), the reward is t2i-spatial's
        result.reward = Reward(sc=None, pq=None, overall=None, reward=result.t2i_parts["reward"])
        return result

    async def _ask(self, kind: str, sample: Sample, images: tuple, pass_index: int, flow,
                   order: tuple) -> Judgment | SampleError:
        """One request kind of one pass: the answer, parsed; one constrained repair
        when it does not parse (``structured: auto``)."""
        gen = self.config.generation
        request = self._request(kind, sample, images, pass_index)
        constrained = gen.structured == "always"
        answer = await self.engine.generate(request, constrained=constrained, flow=flow, order=order)
        if isinstance(answer, SampleError):
            return answer
        size = images[-1].size if kind == T2I else None
        try:
            return Judgment(_parse(kind, answer, size), answer.text, tokens=answer.tokens)
        except ParseError as exc:
            if gen.structured != "auto":
                return exc
            first = (exc, answer)
        seed = request_seed(gen.seed, sample.id, pass_index, kind, attempt=1)
        repair = await self.engine.generate(replace(request, seed=seed), constrained=True, flow=flow, order=order)
        if isinstance(repair, SampleError):
            return ModelError(f"{first[0].message}; constrained repair failed: {repair.message}")
        try:
            return Judgment(_parse(kind, repair, size), repair.text, repaired=True, failed_raw=first[1].text,
                            tokens=repair.tokens)
        except ParseError as exc:
            return ParseError(f"{first[0].message}; constrained repair also failed: {exc.message}")

    def _request(self, kind: str, sample: Sample, images: tuple, pass_index: int) -> Request:
        """The published request of ``kind`` for one prepared edit: SC sees the
        source(s) then edited with the instruction, PQ the edited image alone, in
        the judge's protocol."""
        source, edited = images  # source: one image, or a tuple of several in their order
        seed = request_seed(self.config.generation.seed, sample.id, pass_index, kind)
        protocol = self.config.protocol
        if kind == T2I:
            return t2i_request(edited, sample.instruction.strip(), seed=seed)
        if kind == SC:
            return sc_request(source, edited, sample.instruction.strip(), seed=seed, protocol=protocol)
        return pq_request(edited, seed=seed, protocol=protocol)


def judge_identity(config: JudgeConfig, *, dtype: str, fingerprint: str | None) -> tuple[str, str]:
    """(judge hash, config hash) of a judge with ``config`` over a backend of
    ``dtype`` and weights ``fingerprint``: what its records carry, and what a
    results file resumes by (``spatialreward.ray`` computes them without an engine)."""
    judge_hash = config.judge_hash(dtype=dtype, prompts=prompts_fingerprint(config.protocol), model=fingerprint,
                                   grammar=GRAMMAR_VERSION)
    return judge_hash, config_hash(judge_hash, config.aggregation, config.t2i if is_t2i(config.protocol) else None)


def identity_before_load(config: JudgeConfig, *, backend: str = "transformers", device: str = "auto",
                         dtype: str = "auto", backend_options: dict | None = None) -> tuple[str, str] | None:
    """(judge hash, config hash) of ``Judge.from_pretrained(config=config, ...)``
    before the model loads, from the backend's ``identity`` (its weights
    fingerprint and resolved dtype, found without loading the weights); None for
    a backend that cannot say them first. It raises what ``load`` would for a
    missing model or an unusable device."""
    identity = getattr(backend_class(backend), "identity", None)
    if identity is None:
        return None
    fingerprint, resolved = identity(config.model, revision=config.revision, device=device, dtype=dtype,
                                     **(backend_options or {}))
    return judge_identity(config, dtype=resolved, fingerprint=fingerprint)


def finish_result(result: JudgeResult, outcomes, aggregation) -> JudgeResult:
    """An edit's result from its (kind, Judgment or SampleError) outcomes, in pass
    and SC-PQ order: the first error, else the passes' mean scores and the reward.
    The one place this is decided, for the judge and the Ray path alike."""
    for kind, outcome in outcomes:
        if isinstance(outcome, SampleError):
            result.error = result.error or outcome  # the first, in pass and SC-PQ order
        else:
            (result.sc if kind == SC else result.pq).append(outcome)
    if result.error is None:
        result.scores = mean_scores(result.pass_scores())
        result.reward = aggregate(result.scores, aggregation)
    return result


def _valid_relations(relations) -> bool:
    return isinstance(relations, list) and all(
        isinstance(r, (list, tuple)) and len(r) == 3 and all(isinstance(p, str) and p.strip() for p in r)
        for r in relations)


def _parse(kind: str, answer: Answer, image_size=None):
    try:
        if kind == T2I:
            from .t2i import parse_t2i

            return parse_t2i(answer.text, image_size)
        return parse_sc(answer.text) if kind == SC else parse_pq(answer.text)
    except ParseError as exc:
        cut = "" if answer.finished else f" (answer cut at {answer.tokens} tokens: raise --max-new-tokens)"
        raise ParseError(f"{kind.upper()} answer: {exc.message}{cut}") from None


def request_seed(seed: int, sample_id: str, pass_index: int, kind: str, attempt: int = 0) -> int:
    """The sampling seed of one request, from the run seed and the request's own
    identity (sample id, pass, kind, attempt) alone: a request draws the same
    tokens whatever batch it lands in, so a resumed sampled run equals an
    uninterrupted one. Unused under greedy decoding."""
    digest = hashlib.sha256(f"{seed}|{sample_id}|{pass_index}|{kind}|{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: any engine's seed field takes it
