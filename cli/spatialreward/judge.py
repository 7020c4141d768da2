"""The judge: samples -> images -> requests -> scheduler -> backend -> parse -> aggregate -> results.

``Judge.score`` judges one edit; ``Judge.score_many`` streams results for an
iterable of samples in order through a bounded reorder window; ``Judge.submit``
judges one sample in the background (a future), for callers such as the reward
server. Every request of every caller goes through one ``Scheduler``.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

from .aggregate import DIMENSIONS, Reward, Scores, aggregate
from .backends import Answer, backend_class, batch_limit, concurrency_of
from .config import JudgeConfig, config_hash, load_config, with_overrides
from .errors import InputError, ModelError, ParseError, SampleError
from .images import load_image
from .parse import PQAnswer, SCAnswer, parse_pq, parse_sc
from .prompts import prompts_fingerprint
from .records import build_record
from .requests import PQ, SC, Request, pq_request, sc_request
from .sample import Sample
from .scheduler import QueueFull, Scheduler
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

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "error"

    @property
    def repaired(self) -> bool:
        return any(j.repaired for j in self.sc + self.pq)

    def to_record(self) -> dict:
        """The JSON record ``spatialreward judge`` writes for this result."""
        if self.judge is None:
            raise ValueError("to_record() needs a result produced by a Judge")
        return build_record(self, model=self.judge.config.model, judge_hash=self.judge.judge_hash,
                            config_hash=self.judge.config_hash)

    def pass_scores(self) -> list[Scores]:
        return [
            Scores(s.answer.success, s.answer.overediting, p.answer.naturalness, p.answer.artifacts)
            for s, p in zip(self.sc, self.pq)
        ]


def mean_scores(passes: Sequence[Scores]) -> Scores:
    return Scores(*(statistics.fmean(getattr(s, d) for s in passes) for d in DIMENSIONS))


class Judge:
    """SpatialReward-8B behind one object: load once, score many edits."""

    def __init__(self, backend, config: JudgeConfig):
        self.backend = backend
        self.config = config
        self.judge_hash = config.judge_hash(
            dtype=backend.dtype, prompts=prompts_fingerprint(), model=getattr(backend, "fingerprint", None),
            grammar=GRAMMAR_VERSION,
        )
        self.config_hash = config_hash(self.judge_hash, config.aggregation)
        # An in-process model takes batches of --batch-size, one at a time; an
        # engine says what it takes (openai: one request per call, many calls).
        self.max_batch = batch_limit(backend, config.batch_size)
        self.concurrency = concurrency_of(backend)
        self._scheduler: Scheduler | None = None
        self._lock = threading.Lock()
        # Images decode in the background while the model works (Pillow releases the GIL).
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spatialreward-images")

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

    # -- public API -------------------------------------------------------------
    def score(self, source, edited, instruction: str, *, id: str = "edit", meta: dict | None = None) -> JudgeResult:
        """Judge one edit (paths or PIL images). Never raises for a bad edit:
        the result carries ``error`` (stage input/model/parse) instead."""
        sample = Sample(id=id, source=source, edited=edited, instruction=instruction, meta=dict(meta or {}))
        if not isinstance(instruction, str) or not instruction.strip():
            sample.error = InputError("empty instruction")
        return next(iter(self.score_many([sample])))

    def score_many(self, samples: Iterable[Sample], window: int | None = None) -> Iterator[JudgeResult]:
        """Stream one result per sample, in order.

        Up to ``window`` samples are in flight at once (default: enough to keep
        the backend's queue full); results leave in input order through that
        bounded reorder window, so memory stays flat in the number of samples."""
        window = window or self.window
        pending: deque[Future] = deque()
        iterator = iter(samples)
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                sample = next(iterator, None)
                if sample is None:
                    exhausted = True
                    break
                pending.append(self.submit(sample))
            if not pending:
                return
            yield pending.popleft().result()

    def submit(self, sample: Sample) -> "Future[JudgeResult]":
        """Judge one sample in the background: its images are decoded, its SC and
        PQ requests (every pass) go to the shared scheduler together, and the
        future resolves to its result (never raises for a bad edit)."""
        job = _Job(self, sample)
        if sample.error is not None:
            job.finish()
        else:
            self._loader.submit(job.load)
        return job.future

    def submit_many(self, samples: Sequence[Sample]) -> "list[Future[JudgeResult]]":
        """``submit`` for several samples whose requests must reach the scheduler in
        this order (the reward server keeps items that share a source image and an
        instruction adjacent, for engine prefix caching): one background task loads
        them one after another and queues each one's requests as soon as it is loaded."""
        jobs = [_Job(self, sample) for sample in samples]

        def load_in_order() -> None:
            for job in jobs:
                if job.result.sample.error is not None:
                    job.finish()
                else:
                    job.load()

        self._loader.submit(load_in_order)
        return [job.future for job in jobs]

    @property
    def scheduler(self) -> Scheduler:
        """The one queue in front of the backend, shared by every caller of this judge."""
        with self._lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self.backend, self.config.generation, max_batch=self.max_batch,
                                            concurrency=self.concurrency)
            return self._scheduler

    @property
    def window(self) -> int:
        """Samples in flight that keep the backend busy: what it can hold, plus one batch."""
        return self.max_batch * self.concurrency + self.max_batch

    def close(self) -> None:
        """Stop the scheduler's and the image loader's threads."""
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()
        self._loader.shutdown(wait=True)

    def __enter__(self) -> "Judge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, kind: str, sample: Sample, images: tuple, pass_index: int) -> Request:
        """The published request of ``kind`` for one loaded edit: SC sees source
        then edited with the instruction, PQ the edited image alone."""
        source, edited = images
        seed = request_seed(self.config.generation.seed, sample.id, pass_index, kind)
        if kind == SC:
            return sc_request(source, edited, sample.instruction.strip(), seed=seed)
        return pq_request(edited, seed=seed)


class _Job:
    """One sample through the pipeline: images -> requests (SC and PQ of every
    pass, sent together) -> parse (-> one constrained repair) -> aggregate."""

    def __init__(self, judge: Judge, sample: Sample):
        self.judge = judge
        self.result = JudgeResult(sample=sample, error=sample.error, judge=judge)
        self.future: Future = Future()
        self.outcomes: dict[tuple[int, str], Judgment | SampleError] = {}
        self.lock = threading.Lock()

    def load(self) -> None:
        sample = self.result.sample
        try:
            images = (load_image(sample.source, role="source"), load_image(sample.edited, role="edited"))
        except InputError as exc:
            self.result.error = exc
            return self.finish()
        except Exception as exc:  # noqa: BLE001 - e.g. a bad SPATIALREWARD_MAX_IMAGE_PIXELS: the caller sees it
            self.future.set_exception(exc)
            return
        self.result.edited_size = images[1].size
        gen = self.judge.config.generation
        wanted = [(p, kind) for p in range(gen.passes) for kind in (SC, PQ)]
        self.remaining = len(wanted)
        for p, kind in wanted:
            self.send(self.judge._request(kind, sample, images, p), p, constrained=(gen.structured == "always"))

    def send(self, request: Request, pass_index: int, *, constrained: bool, first=None) -> None:
        """``first``: (the ParseError, the failed Answer) when this is the repair."""
        try:
            future = self.judge.scheduler.submit(request, constrained=constrained)
        except (QueueFull, RuntimeError) as exc:  # a full or closed queue fails this request, never hangs it
            future = Future()
            future.set_result(ModelError(f"{request.kind.upper()} not queued: {exc}"))
        future.add_done_callback(lambda f: self.answered(request, pass_index, f.result(), constrained, first))

    def answered(self, request: Request, pass_index: int, answer, constrained: bool, first) -> None:
        gen = self.judge.config.generation
        if isinstance(answer, SampleError):
            outcome = answer if first is None else ModelError(
                f"{first[0].message}; constrained repair failed: {answer.message}")
        else:
            try:
                parsed = _parse(request.kind, answer)
                outcome = Judgment(parsed, answer.text, repaired=first is not None,
                                   failed_raw=first[1].text if first else None, tokens=answer.tokens)
            except ParseError as exc:
                if first is None and gen.structured == "auto":
                    seed = request_seed(gen.seed, self.result.sample.id, pass_index, request.kind, attempt=1)
                    self.send(replace(request, seed=seed), pass_index, constrained=True, first=(exc, answer))
                    return
                outcome = exc if first is None else ParseError(
                    f"{first[0].message}; constrained repair also failed: {exc.message}")
        with self.lock:
            self.outcomes[(pass_index, request.kind)] = outcome
            self.remaining -= 1
            done = self.remaining == 0
        if done:
            self.finish()

    def finish(self) -> None:
        result, gen = self.result, self.judge.config.generation
        for p in range(gen.passes):
            for kind in (SC, PQ):
                outcome = self.outcomes.get((p, kind))
                if isinstance(outcome, SampleError):
                    result.error = result.error or outcome  # the first, in pass and SC-PQ order
                elif outcome is not None:
                    (result.sc if kind == SC else result.pq).append(outcome)
        if result.error is None:
            result.scores = mean_scores(result.pass_scores())
            result.reward = aggregate(result.scores, self.judge.config.aggregation)
        self.future.set_result(result)


def _parse(kind: str, answer: Answer) -> SCAnswer | PQAnswer:
    try:
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
