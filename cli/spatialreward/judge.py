"""The judge: samples -> images -> requests -> backend -> parse -> aggregate -> results.

``Judge.score`` judges one edit; ``Judge.score_many`` streams results for an
iterable of samples in order, holding only one batch in memory.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
import statistics
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

from .aggregate import DIMENSIONS, Reward, Scores, aggregate
from .backends import Answer, backend_class
from .config import JudgeConfig, config_hash, load_config, with_overrides
from .errors import InputError, ModelError, ParseError, SampleError
from .images import load_image
from .parse import PQAnswer, SCAnswer, parse_pq, parse_sc
from .prompts import prompts_fingerprint
from .records import build_record
from .requests import PQ, SC, Request, pq_request, sc_request
from .sample import Sample

log = logging.getLogger("spatialreward")


@dataclass
class Judgment:
    """One request kind (SC or PQ) of one pass: the final answer and how it was obtained."""

    answer: SCAnswer | PQAnswer
    raw: str
    repaired: bool = False
    failed_raw: str | None = None  # the unconstrained answer that failed parsing


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
            dtype=backend.dtype, prompts=prompts_fingerprint(), model=getattr(backend, "fingerprint", None)
        )
        self.config_hash = config_hash(self.judge_hash, config.aggregation)

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

    def score_many(self, samples: Iterable[Sample], batch_size: int | None = None) -> Iterator[JudgeResult]:
        """Stream one result per sample, in order, ``batch_size`` samples per batch.

        The next batch's images are decoded in a background thread while the
        model works on the current one (one batch of look-ahead)."""
        size = batch_size or self.config.batch_size
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spatialreward-images") as pool:
            loading = None
            for batch in _batches(samples, size):
                upcoming = pool.submit(self._load_batch, batch)
                if loading is not None:
                    yield from self._judge_loaded(*loading.result())
                loading = upcoming
            if loading is not None:
                yield from self._judge_loaded(*loading.result())

    # -- pipeline ---------------------------------------------------------------
    def _load_batch(self, samples: list[Sample]) -> tuple[list[JudgeResult], dict[int, tuple]]:
        """Decode the batch's images; an unreadable one fails only its own sample."""
        results = [JudgeResult(sample=s, error=s.error, judge=self) for s in samples]
        images: dict[int, tuple] = {}
        for i, result in enumerate(results):
            if result.error is None:
                try:
                    source = load_image(result.sample.source, role="source")
                    edited = load_image(result.sample.edited, role="edited")
                except InputError as exc:
                    result.error = exc
                    continue
                images[i] = (source, edited)
                result.edited_size = edited.size
        return results, images

    def _judge_loaded(self, results: list[JudgeResult], images: dict[int, tuple]) -> list[JudgeResult]:
        live = list(images)
        gen = self.config.generation
        for p in range(gen.passes):
            for kind in (SC, PQ):
                todo = [i for i in live if results[i].error is None]
                if not todo:
                    break
                requests = [self._request(kind, results[i].sample, images[i], p) for i in todo]
                outcomes = self._judge_requests(requests, [results[i].sample.id for i in todo], p)
                for i, outcome in zip(todo, outcomes):
                    if isinstance(outcome, SampleError):
                        results[i].error = outcome
                    else:
                        (results[i].sc if kind == SC else results[i].pq).append(outcome)
        for result in results:
            if result.error is None:
                result.scores = mean_scores(result.pass_scores())
                result.reward = aggregate(result.scores, self.config.aggregation)
        return results

    def _request(self, kind: str, sample: Sample, images: tuple, pass_index: int) -> Request:
        """The published request of ``kind`` for one loaded edit: SC sees source
        then edited with the instruction, PQ the edited image alone."""
        source, edited = images
        seed = request_seed(self.config.generation.seed, sample.id, pass_index, kind)
        if kind == SC:
            return sc_request(source, edited, sample.instruction.strip(), seed=seed)
        return pq_request(edited, seed=seed)

    def _judge_requests(self, requests: list[Request], ids: list[str], pass_index: int) -> list[Judgment | SampleError]:
        """Generate, parse and (per ``structured``) repair one batch of same-kind requests."""
        mode = self.config.generation.structured
        answers = self._generate(requests, constrained=(mode == "always"))
        outcomes: list[Judgment | SampleError] = []
        retry: list[int] = []
        for idx, (request, answer) in enumerate(zip(requests, answers)):
            if isinstance(answer, SampleError):
                outcomes.append(answer)
                continue
            try:
                outcomes.append(Judgment(_parse(request.kind, answer, constrained=(mode == "always")), answer.text))
            except ParseError as exc:
                outcomes.append(exc)
                if mode == "auto":
                    retry.append(idx)
        if retry:
            gen = self.config.generation
            again = [
                replace(requests[i], seed=request_seed(gen.seed, ids[i], pass_index, requests[i].kind, attempt=1))
                for i in retry
            ]
            repaired = self._generate(again, constrained=True)
            for idx, answer in zip(retry, repaired):
                first = outcomes[idx]
                if isinstance(answer, SampleError):
                    outcomes[idx] = ModelError(f"{first.message}; constrained repair failed: {answer.message}")
                    continue
                try:
                    parsed = _parse(requests[idx].kind, answer, constrained=True)
                except ParseError as exc:
                    outcomes[idx] = ParseError(f"{first.message}; constrained repair also failed: {exc.message}")
                    continue
                outcomes[idx] = Judgment(parsed, answer.text, repaired=True, failed_raw=answers[idx].text)
        return outcomes

    def _generate(self, requests: list[Request], *, constrained: bool) -> list[Answer | ModelError]:
        """One generate() for the batch; if it raises or does not return exactly
        one answer per request, each request alone, so one bad request fails only
        its own sample and no answer can land on another request."""
        gen = self.config.generation
        try:
            answers = list(self.backend.generate(requests, gen, constrained=constrained))
            if len(answers) == len(requests):
                return answers
            problem = f"backend returned {len(answers)} answers for {len(requests)} requests"
        except Exception as exc:  # noqa: BLE001 - any model failure becomes per-request errors
            problem = _describe(exc)
        if len(requests) == 1:
            return [ModelError(f"{requests[0].kind.upper()} generation failed: {problem}")]
        log.warning("batch of %d failed (%s); retrying one by one", len(requests), problem)
        return [self._generate([r], constrained=constrained)[0] for r in requests]


def _batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _parse(kind: str, answer: Answer, *, constrained: bool) -> SCAnswer | PQAnswer:
    try:
        return parse_sc(answer.text, reorder_boxes=constrained) if kind == SC else parse_pq(answer.text)
    except ParseError as exc:
        cut = "" if answer.finished else f" (answer cut at {answer.tokens} tokens: raise --max-new-tokens)"
        raise ParseError(f"{kind.upper()} answer: {exc.message}{cut}") from None


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__


def request_seed(seed: int, sample_id: str, pass_index: int, kind: str, attempt: int = 0) -> int:
    """The sampling seed of one request, from the run seed and the request's own
    identity (sample id, pass, kind, attempt) alone: a request draws the same
    tokens whatever batch it lands in, so a resumed sampled run equals an
    uninterrupted one. Unused under greedy decoding."""
    digest = hashlib.sha256(f"{seed}|{sample_id}|{pass_index}|{kind}|{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: any engine's seed field takes it
