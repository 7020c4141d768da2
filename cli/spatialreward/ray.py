"""Judging at cluster scale on Ray Data (``pip install 'spatialreward[ray]'``).

    spatialreward judge m.jsonl -o s.jsonl --ray [--ray-address ADDR] [--replicas N] \\
        --backend openai --base-url http://gpu1:8000/v1 [--base-url ...]

    spatialreward judge m.jsonl -o s.jsonl --ray --backend vllm --model M [--replicas N] \\
        [--tensor-parallel-size T]

    from spatialreward.ray import judge_dataset
    records = judge_dataset(ray.data.read_json("m.jsonl"), base_urls=["http://gpu1:8000/v1"])
    records = judge_dataset(ds, backend="vllm", model="SpatialReward/SpatialReward-8B", replicas=8)

The records are the ones ``judge --backend openai`` (or ``--backend vllm``)
writes for the same manifest and flags (the same judge hash, config hash and
model; the same fields): every step is the library's own function, run on Ray
workers.

vLLM replicas (``--backend vllm``, ``load_vllm_spec``): one Ray Data actor pool
of N engines, each a ``Judge`` over the vllm backend holding its GPUs
(``_VLLMReplica``); the sample rows go straight to it (its own prepare pool
decodes), and it returns their records. The rest of this docstring is the
OpenAI-compatible path.

Pipeline (one row per edit, or per candidate of a group; no shuffle, so the SC
and PQ answers of an edit stay in its row):

1. prepare (a Ray Data ``map``): the sample (``manifest._entry_samples`` for
   ``judge_dataset``; the driver's ``read_manifest`` for the CLI), its input
   checks as the judge makes them, its images decoded once (``prepare.prepare_one``:
   orientation, mode, the protocol's pre-resize, ``openai_backend.encode_image``)
   and the chat bodies of every pass (``requests.sc_request``/``pq_request``,
   ``judge.request_seed``, ``openai_backend.chat_payload``), as JSON text;
2. one ``ray.data.llm`` HTTP processor (``HttpRequestProcessorConfig``) per
   request kind and pass, SC then PQ, each adding its answer column;
3. ``--structured auto``: the answers that do not parse (``judge._parse``) get
   their constrained body (seed of attempt 1, ``openai_backend.constraint_fields``)
   and go through one more HTTP processor per kind and pass; rows with nothing
   to repair pass through it without a request;
4. finish (a ``map``): the judge's outcome rules, ``aggregate``, and
   ``records.build_record``.

The HTTP processors send through the openai backend's own client
(``OpenAIBackend.asend``: the endpoints' rotation, retries with backoff on
connection errors, 429 and 5xx, timeouts), plugged into ``ray.data.llm`` as its
``session_factory``: an engine failure becomes that request's ``model`` error,
with the message ``judge`` writes, never an exception. (``ray.data.llm``'s own
HTTP stage raises when its retries run out, which fails the block, and then the
job; it sends a batch's requests one after the other; and it returns an HTTP
error's body as if it were an answer.) A bad image is the edit's ``input``
error record.

Results (the CLI): each block's records go to a shard file in ``OUT.ray/``
(written whole, then renamed into place); the driver merges the shards into
OUT in manifest order, under the lock ``judge`` takes (``output.exclusive``),
each multi-candidate group ranked whole (``records.rank_group``), and writes
the summary. A run killed at any point is resumed by the same command: the
records already in OUT (same config hash) and in the shards are not judged
again, and an id is written once (deduplicated at the merge).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .config import Aggregation, Generation, JudgeConfig, load_config, with_overrides
from .errors import ConfigError, EngineError, InputError, ModelError, ParseError, SampleError, SpatialRewardError, describe
from .sample import Sample

log = logging.getLogger("spatialreward")

DEFAULT_REPLICAS = 8  # requests in flight per endpoint
SHARD_SUFFIX = ".ray"  # OUT.ray/: the shards of OUT
HTTP_NUM_CPUS = 0  # an HTTP actor waits on the network: it reserves no CPU (with 0.1 each, a 1-CPU cluster
# could not schedule a map task beside the HTTP actors and the run never finished)
_ERRORS = {cls.__name__: cls for cls in (SampleError, InputError, ModelError, ParseError)}


def _require_ray():
    try:
        import ray  # noqa: F401
        import ray.data.llm  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--ray needs Ray Data: pip install 'spatialreward[ray]' ({describe(exc)})") from None


# -- the spec the workers get ------------------------------------------------------


@dataclass(frozen=True)
class RaySpec:
    """What a worker needs to prepare, send and record (small, picklable): the
    servers and the judge's identity as the driver's ``Judge`` computed it."""

    urls: tuple[str, ...]
    served_model: str
    model: str
    judge_hash: str
    config_hash: str
    generation: Generation
    aggregation: Aggregation
    protocol: str
    structured_field: str = "vllm"
    chars_per_token: float = 0.0
    request_timeout: float = 300.0
    max_model_len: int | None = None
    api_key: str | None = field(default=None, repr=False)
    replicas: int = DEFAULT_REPLICAS  # requests in flight per endpoint
    actors: int = 1  # HTTP actors per stage
    batch_size: int = 16  # rows per HTTP batch
    block_rows: int = 64  # rows per block (a task of every stage; a shard)
    # engine "vllm": vLLM replicas placed by Ray, each a Judge over the vllm backend
    engine: str = "openai"
    config: JudgeConfig | None = None  # what each replica loads
    engine_options: tuple = ()  # its vllm backend's load() options, as (key, value) pairs
    dtype: str = "auto"
    replica_resources: tuple = ()  # Ray resources of one replica, as (key, value) pairs

    @property
    def in_flight(self) -> int:
        """Requests in flight per HTTP actor."""
        return max(1, -(-self.replicas * len(self.urls) // self.actors))

    def stages(self) -> list[tuple[int, str]]:
        from .requests import PQ, SC

        return [(p, kind) for p in range(self.generation.passes) for kind in (SC, PQ)]


def block_shape(replicas: int) -> dict:
    """Rows per HTTP batch and per block for ``replicas`` requests in flight.

    A block is the unit every stage hands on (one task per stage; one shard),
    and a stage's task ends only when its block's last answer is in: each block
    costs a fill and a drain. Within a task Ray runs up to four batches of an
    async stage at once, so batches of half the requests in flight keep the
    gate full while a batch ends. Measured (benchmarks/ray_scale.py, 8 slots,
    16 in flight, 128 edits): blocks of 4x the requests in flight, batches of
    half, gave the engine window 0.93 of the judge's; blocks of 2x with one
    batch each (before) 0.85-0.92, one block for all 0.85."""
    return {"batch_size": max(1, -(-replicas // 2)), "block_rows": max(4, 4 * replicas)}


def _edit_config(config: JudgeConfig | None, config_file: str | None, model: str | None,
                 overrides: dict | None) -> JudgeConfig:
    """The run's config (a given one with ``model``/``overrides`` applied, else
    loaded); edits only: t2i is not judged under --ray."""
    from .protocols import is_t2i

    if config is None:
        tree = dict(overrides or {})
        if model is not None:
            tree["model"] = model
        config = load_config(config_file, tree)
    elif model is not None or overrides:
        config = with_overrides(config, {**(overrides or {}), **({"model": model} if model else {})})
    if is_t2i(config.protocol):
        raise ConfigError("--ray judges edits; --protocol t2i-spatial is not supported under --ray")
    return config


def load_spec(*, base_urls: Sequence[str] | str, config: JudgeConfig | None = None, config_file: str | None = None,
              model: str | None = None, overrides: dict | None = None, api_key_env: str | None = None,
              replicas: int = DEFAULT_REPLICAS, actors: int | None = None, backend_options: dict | None = None,
              model_explicit: bool | None = None) -> RaySpec:
    """Connect to the servers as ``judge --backend openai`` does (the same
    checks, one clear line each) and return the spec: the judge hash, config
    hash and model are the ``Judge``'s own."""
    from .backends.openai_backend import OpenAIBackend
    from .judge import Judge

    config = _edit_config(config, config_file, model, overrides)
    if not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"--replicas must be an integer >= 1, not {replicas!r}")
    options = dict(backend_options or {})
    options.pop("concurrency", None)
    backend = OpenAIBackend.load(config.model, generation=config.generation, base_urls=base_urls,
                                 api_key_env=api_key_env, model_explicit=model_explicit, **options)
    try:
        judge = Judge(backend, config, prepare_workers=1)
        judge.close()
        urls = tuple(e.url for e in backend.pool.endpoints)
        actors = actors or len(urls)
        return RaySpec(
            urls=urls, served_model=backend.served_model, model=judge.model, judge_hash=judge.judge_hash,
            config_hash=judge.config_hash, generation=config.generation, aggregation=config.aggregation,
            protocol=config.protocol, structured_field=backend.structured_field,
            chars_per_token=backend.chars_per_token, request_timeout=backend.request_timeout,
            max_model_len=backend.max_model_len, api_key=os.environ.get(api_key_env) if api_key_env else None,
            replicas=replicas, actors=actors, **block_shape(replicas),
        )
    finally:
        backend.close()


# vLLM replicas: edits per call of a replica; Ray Data runs four calls of an async UDF at once
# (256 edits, 512 requests: twice the max_num_seqs of most GPUs, so the engine refills as
# answers leave), and a block (a shard) is eight calls: it drains once per 512 edits. Not yet
# measured on a GPU (none lent here).
VLLM_BATCH = 64
VLLM_BLOCK = 512


def load_vllm_spec(*, config: JudgeConfig | None = None, config_file: str | None = None, model: str | None = None,
                   overrides: dict | None = None, replicas: int | None = None, dtype: str = "auto",
                   backend_options: dict | None = None, address: str | None = None) -> RaySpec:
    """The spec of a run on vLLM replicas placed by Ray (``judge --ray --backend
    vllm``): ``replicas`` engines (default: one per ``tensor_parallel_size`` GPUs
    of the cluster; one on a cluster without GPUs, vLLM's CPU build), each
    holding ``num_gpus=tensor_parallel_size``. The judge and config hashes are
    those ``judge --backend vllm`` writes: the weights' fingerprint and the dtype
    as vLLM resolves it, asked of a Ray task with a replica's resources (a CPU
    head node may resolve "auto" otherwise than the GPU nodes)."""
    from .judge import judge_identity

    _require_ray()
    config = _edit_config(config, config_file, model, overrides)
    if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1):
        raise ConfigError(f"--replicas must be an integer >= 1, not {replicas!r}")
    options = dict(backend_options or {})
    options.pop("device", None)
    tp = int(options.get("tensor_parallel_size") or 1)
    if tp > 1:
        # The replica's engine runs its tensor-parallel workers inside the actor's GPUs ("mp"),
        # never as Ray tasks of their own (which would ask for GPUs the actor already holds).
        options.setdefault("distributed_executor_backend", "mp")
    import importlib.util

    if address is None and importlib.util.find_spec("vllm") is None:  # a local Ray: the replicas run here
        raise EngineError("--ray --backend vllm needs vLLM where the replicas run (here, with a local Ray): "
                          "pip install 'spatialreward[vllm,ray]'")
    ray = _init_ray(address)
    node_gpus = [node.get("Resources", {}).get("GPU", 0) for node in ray.nodes() if node.get("Alive")]
    fits = sum(int(gpus // tp) for gpus in node_gpus)
    if any(node_gpus):
        if fits < 1:
            raise ConfigError(f"--tensor-parallel-size {tp}: no node of the Ray cluster has {tp} GPUs for a replica")
        resources = {"num_gpus": tp}
    else:
        if tp > 1:
            raise ConfigError(f"--tensor-parallel-size {tp} needs GPUs; the Ray cluster has none")
        log.warning("no GPU in the Ray cluster: the vLLM replicas run on CPUs (vLLM's CPU build)")
        resources = {"num_cpus": 1}
        fits = None
    if replicas is None:
        replicas = fits or 1
    elif fits is not None and replicas > fits:
        raise ConfigError(f"--replicas {replicas}: the Ray cluster's nodes hold {fits} replica(s) of "
                          f"{tp} GPU(s) each")
    identity_args = {k: v for k, v in options.items() if k != "capacity"}
    try:
        # On a node like the replicas': the weights must be there, and vLLM resolves the dtype there.
        found = ray.get(ray.remote(_engine_identity).options(**resources).remote(
            config.model, config.revision, dtype, identity_args), timeout=IDENTITY_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise EngineError(f"no Ray worker with {resources} answered within {IDENTITY_TIMEOUT_S} s (is every node's "
                          "Ray up, and does one have those resources free?)") from None
    except ray.exceptions.RayError as exc:
        if isinstance(getattr(exc, "cause", None), SpatialRewardError):
            raise exc.cause from None  # the worker's own one line (a missing model), as judge says it
        raise EngineError(f"a Ray worker could not read {config.model}'s engine config: {_root_cause(exc)} "
                          "(vLLM and spatialreward[vllm,ray] must be installed on every node)") from None
    fingerprint, resolved = found
    judge_hash, config_hash = judge_identity(config, dtype=resolved, fingerprint=fingerprint)
    return RaySpec(
        urls=(), served_model="", model=config.model, judge_hash=judge_hash, config_hash=config_hash,
        generation=config.generation, aggregation=config.aggregation, protocol=config.protocol,
        replicas=replicas, actors=replicas, batch_size=VLLM_BATCH, block_rows=VLLM_BLOCK, engine="vllm",
        config=config, engine_options=tuple(sorted(options.items())), dtype=dtype,
        replica_resources=tuple(sorted(resources.items())),
    )


IDENTITY_TIMEOUT_S = 600  # a worker's start and vLLM's import, on a busy cluster


def _engine_identity(model: str, revision: str | None, dtype: str, engine_args: dict) -> tuple[str, str]:
    """On a replica's node: where the weights are (a missing model raises its
    one-line error, which reaches the driver whole), and the (fingerprint,
    dtype) a replica's engine will have."""
    from .backends.transformers_backend import locate_model
    from .backends.vllm_backend import engine_identity

    locate_model(model, revision)
    return engine_identity(model, revision=revision, dtype=dtype, **engine_args)


def _init_ray(address: str | None):
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


# -- samples as rows -----------------------------------------------------------------


def _image_json(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_image_json(v) for v in value]
    return value


def _image_value(value):
    if isinstance(value, dict) and "bytes" in value:
        return base64.b64decode(value["bytes"])
    if isinstance(value, list):
        return [_image_value(v) for v in value]
    return value


def sample_json(sample: Sample) -> str:
    """A sample as the JSON text a row carries (``sample_from_json`` reads it back)."""
    error = None if sample.error is None else [type(sample.error).__name__, sample.error.message]
    return json.dumps({
        "id": sample.id, "source": _image_json(sample.source), "edited": _image_json(sample.edited),
        "instruction": sample.instruction, "meta": sample.meta, "group": sample.group,
        "group_size": sample.group_size, "candidate": sample.candidate, "origin": sample.origin, "error": error,
    }, ensure_ascii=False)


def sample_from_json(text: str) -> Sample:
    data = json.loads(text)
    error = data.pop("error")
    sample = Sample(**{**data, "source": _image_value(data["source"]), "edited": _image_value(data["edited"])})
    if error is not None:
        sample.error = _ERRORS.get(error[0], InputError)(error[1])
    return sample


def _error_json(error: SampleError) -> str:
    return json.dumps([type(error).__name__, error.message], ensure_ascii=False)


def _error_from_json(text: str) -> SampleError:
    name, message = json.loads(text)
    return _ERRORS.get(name, SampleError)(message)


class _ExpandRows:
    """Manifest rows -> one row per sample (``manifest._entry_samples``: groups
    expand into their candidates). Images: paths (relative to ``base``) or bytes.
    A null column is an absent field (a Dataset gives every row every column).
    ``_origin`` (\"FILE:LINE\") names where a row was read; ``_seq`` orders it."""

    def __init__(self, base: str | None):
        self.base = base

    def __call__(self, row: dict) -> list[dict]:
        from .manifest import _entry_samples

        base = Path(self.base or os.getcwd()).expanduser().absolute()
        origin = row.get("_origin") or "<dataset>"
        number = _line_number(origin)
        seq = row.get("_seq")
        entry, blobs = {}, {}
        for key, value in row.items():
            if key in ("_origin", "_seq") or value is None:
                continue
            entry[key] = _placeholders(_plain(value), blobs, base)
        out = []
        for k, sample in enumerate(_entry_samples(entry, origin, base, number)):
            sample.source = _restore(sample.source, blobs)
            sample.edited = _restore(sample.edited, blobs)
            out.append({"_seq": [seq if seq is not None else -1, k], "_sample": sample_json(sample)})
        return out


def _line_number(origin: str) -> int:
    tail = origin.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _plain(value):
    """Arrow/numpy values as plain Python."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _placeholders(value, blobs: dict, base: Path):
    """Image bytes -> a stand-in path (the manifest reader takes paths), remembered."""
    if isinstance(value, (bytes, bytearray)):
        import hashlib

        name = f"<bytes {hashlib.sha1(bytes(value)).hexdigest()[:12]}>"
        blobs[str(base / name)] = bytes(value)
        return name
    if isinstance(value, list) and any(isinstance(v, (bytes, bytearray)) for v in value):
        return [_placeholders(v, blobs, base) for v in value]
    return value


def _restore(value, blobs: dict):
    if isinstance(value, list):
        return [_restore(v, blobs) for v in value]
    return blobs.get(value, value) if isinstance(value, str) else value


# -- stage 1: prepare ----------------------------------------------------------------


def _body_column(kind: str, p: int) -> str:
    return f"_body_{kind}{p}"


def _answer_column(kind: str, p: int) -> str:
    return f"_answer_{kind}{p}"


def _repair_column(kind: str, p: int) -> str:
    return f"_repair_{kind}{p}"


def _repaired_column(kind: str, p: int) -> str:
    return f"_repaired_{kind}{p}"


class _Prepare:
    """A sample row -> its input error, or its edited size and chat bodies:
    the judge's checks (``Judge._judge``), in its order and with its messages."""

    def __init__(self, spec: RaySpec):
        self.spec = spec

    def __call__(self, row: dict) -> dict:
        spec = self.spec
        out = {"_seq": row["_seq"], "_sample": row["_sample"], "_error": "", "_size": ""}
        for p, kind in spec.stages():
            out[_body_column(kind, p)] = ""
        sample = sample_from_json(row["_sample"])
        try:
            size, bodies = self._bodies(sample)
        except SampleError as exc:
            out["_error"] = _error_json(exc)
            return out
        except (ConfigError, SpatialRewardError):
            raise
        except Exception as exc:  # noqa: BLE001 - never an unresolved item (as the judge)
            out["_error"] = _error_json(ModelError(f"judging failed: {describe(exc)}"))
            return out
        out["_size"] = json.dumps(list(size))
        out.update(bodies)
        return out

    def _bodies(self, sample: Sample):
        import functools

        from .backends.openai_backend import chat_payload, encode_image
        from .constants import MAX_SOURCES
        from .judge import request_seed
        from .pixels import qwen_vl_utils_resize
        from .prepare import prepare_one
        from .protocols import get_protocol
        from .requests import SC, pq_request, sc_request

        spec, gen = self.spec, self.spec.generation
        if sample.error is not None:
            raise sample.error
        if not isinstance(sample.instruction, str) or not sample.instruction.strip():
            raise InputError("empty instruction" if isinstance(sample.instruction, str)
                             else f"instruction must be text, not {type(sample.instruction).__name__}")
        if sample.source is None:
            raise InputError("no source image: a text-to-image item (prompt + image) is judged with "
                             "--protocol t2i-spatial")
        multi = isinstance(sample.source, (list, tuple))
        sources = list(sample.source) if multi else [sample.source]
        protocol = get_protocol(spec.protocol)
        pre_resize = functools.partial(qwen_vl_utils_resize, **protocol.pre_resize) if protocol.pre_resize else None
        prepared = []
        try:
            if not 1 <= len(sources) <= MAX_SOURCES:
                raise InputError(f"an edit takes 1 to {MAX_SOURCES} source images, not {len(sources)}")
            roles = [f"source {k + 1}" if multi else "source" for k in range(len(sources))] + ["edited"]
            for image, role in zip([*sources, sample.edited], roles):
                prepared.append(prepare_one(image, role, prepare_image=encode_image, generation=gen,
                                            pre_resize=pre_resize))
        except (SampleError, SpatialRewardError):
            raise
        except Exception as exc:  # noqa: BLE001 - anything else on an image is this item's input error
            raise InputError(f"cannot read the images: {describe(exc)}") from None
        values = [value for value, _ in prepared]
        source = tuple(values[:-1]) if multi else values[0]
        edited = values[-1]
        instruction = sample.instruction.strip()
        bodies = {}
        for p, kind in spec.stages():
            seed = request_seed(gen.seed, sample.id, p, kind)
            request = (sc_request(source, edited, instruction, seed=seed, protocol=spec.protocol) if kind == SC
                       else pq_request(edited, seed=seed, protocol=spec.protocol))
            body = chat_payload(request, gen, served_model=spec.served_model,
                                constrained=gen.structured == "always", structured_field=spec.structured_field,
                                chars_per_token=spec.chars_per_token)
            bodies[_body_column(kind, p)] = json.dumps(body)
        return prepared[-1][1], bodies


# -- stage 2: the HTTP processors (ray.data.llm) ------------------------------------------


class _SessionFactory:
    """``HttpRequestProcessorConfig.session_factory``: an aiohttp-like session
    whose ``post`` sends through the openai backend's client (one per actor,
    made at its first batch). Every request of a batch is sent at once (at most
    ``spec.in_flight`` per actor); each answers HTTP 200 to Ray with
    ``{"r": JSON text}``: the answer (text, tokens, finished), or the
    request's error as ``judge`` words it. A row with no body (an input error,
    nothing to repair) answers at once, without a request."""

    def __init__(self, spec: RaySpec):
        self.spec = spec
        self._backend = None
        self._gate = None

    def __call__(self):
        import asyncio

        from .backends.openai_backend import OpenAIBackend

        if self._backend is None:
            spec = self.spec
            self._backend = OpenAIBackend(spec.urls, served_model=spec.served_model, api_key=spec.api_key,
                                          concurrency=spec.in_flight, request_timeout=spec.request_timeout,
                                          structured_field=spec.structured_field, max_model_len=spec.max_model_len)
            self._backend.chars_per_token = spec.chars_per_token
            self._gate = asyncio.Semaphore(spec.in_flight)
        return _Session(self._backend, self._gate)


class _Session:
    def __init__(self, backend, gate):
        self.backend, self.gate = backend, gate

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def post(self, url, headers=None, data=None, **_):
        import asyncio

        return _Pending(asyncio.ensure_future(self._send(data)))

    async def _send(self, data) -> dict:
        from .engine import _failure
        from .requests import Request

        payload = json.loads(data)
        if not payload["body"]:
            return {"r": ""}
        request = Request(payload["kind"], (), "")
        try:
            async with self.gate:
                answer = await self.backend.asend(json.loads(payload["body"]))
        except Exception as exc:  # noqa: BLE001 - any engine failure is this request's error (as the judge's engine)
            return {"r": json.dumps({"error": _failure(request, describe(exc)).message}, ensure_ascii=False)}
        return {"r": json.dumps({"text": answer.text, "tokens": answer.tokens, "finished": answer.finished},
                                ensure_ascii=False)}


class _Pending:
    def __init__(self, task):
        self.task = task

    def __await__(self):
        return self._resolve().__await__()

    async def _resolve(self):
        return _Response(await self.task)


class _Response:
    status = 200
    reason = "OK"

    def __init__(self, data: dict):
        self.data = data

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def json(self):
        return self.data


class _ToPayload:
    def __init__(self, column: str, kind: str):
        self.column, self.kind = column, kind

    def __call__(self, row: dict) -> dict:
        return {"payload": {"body": row[self.column], "kind": self.kind}}


class _FromResponse:
    def __init__(self, column: str, drop: Sequence[str] = ()):
        self.column, self.drop = column, set(drop)

    def __call__(self, row: dict) -> dict:
        out = {k: v for k, v in row.items() if k not in ("payload", "http_response") and k not in self.drop}
        out[self.column] = row["http_response"]["r"]
        return out


def _http_stage(ds, spec: RaySpec, body: str, answer: str, kind: str, drop: Sequence[str] = ()):
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(
        url=spec.urls[0] + "/chat/completions",  # unused: the session sends through the backend's rotation
        batch_size=spec.batch_size, concurrency=spec.actors, max_retries=0,
        session_factory=_SessionFactory(spec),
        http_request_stage={"num_cpus": HTTP_NUM_CPUS},
    )
    processor = build_processor(config, preprocess=_ToPayload(body, kind), postprocess=_FromResponse(answer, drop))
    return processor(ds)


# -- stage 3: constrained repairs ------------------------------------------------------


def _answer_of(text: str):
    """A stored answer column -> Answer, or ModelError."""
    from .backends.base import Answer

    data = json.loads(text)
    if "error" in data:
        return ModelError(data["error"])
    return Answer(text=data["text"], tokens=data["tokens"], finished=data["finished"])


class _MarkRepairs:
    """``structured: auto``: an answer that does not parse gets its constrained
    body (the attempt-1 seed, the grammar of its kind); the others none."""

    def __init__(self, spec: RaySpec):
        self.spec = spec

    def __call__(self, row: dict) -> dict:
        from .backends.openai_backend import constraint_fields
        from .judge import _parse, request_seed

        spec = self.spec
        out = {k: v for k, v in row.items() if not k.startswith("_body_")}
        sample_id = None
        for p, kind in spec.stages():
            out[_repair_column(kind, p)] = ""
            if row["_error"] or not row[_body_column(kind, p)]:
                continue
            answer = _answer_of(row[_answer_column(kind, p)])
            if isinstance(answer, SampleError):
                continue
            try:
                _parse(kind, answer)
                continue
            except ParseError:
                pass
            if sample_id is None:
                sample_id = json.loads(row["_sample"])["id"]
            body = json.loads(row[_body_column(kind, p)])
            body["seed"] = request_seed(spec.generation.seed, sample_id, p, kind, attempt=1)
            body.update(constraint_fields(kind, spec.generation, structured_field=spec.structured_field,
                                          chars_per_token=spec.chars_per_token))
            out[_repair_column(kind, p)] = json.dumps(body)
        return out


# -- stage 4: records ----------------------------------------------------------------


def _outcome(kind: str, first_text: str, repair_text: str | None, structured: str):
    """One request kind of one pass, as ``Judge._ask`` resolves it."""
    from .judge import Judgment, _parse

    answer = _answer_of(first_text)
    if isinstance(answer, SampleError):
        return answer
    try:
        return Judgment(_parse(kind, answer), answer.text, tokens=answer.tokens)
    except ParseError as exc:
        if structured != "auto":
            return exc
        first = (exc, answer)
    repair = _answer_of(repair_text) if repair_text else ModelError("constrained repair not sent")
    if isinstance(repair, SampleError):
        return ModelError(f"{first[0].message}; constrained repair failed: {repair.message}")
    try:
        return Judgment(_parse(kind, repair), repair.text, repaired=True, failed_raw=first[1].text,
                        tokens=repair.tokens)
    except ParseError as exc:
        return ParseError(f"{first[0].message}; constrained repair also failed: {exc.message}")


class _Finish:
    """The row's record (``records.build_record``), as JSON text."""

    def __init__(self, spec: RaySpec):
        self.spec = spec

    def __call__(self, row: dict) -> dict:
        from .judge import JudgeResult, finish_result
        from .records import build_record

        spec = self.spec
        sample = sample_from_json(row["_sample"])
        result = JudgeResult(sample=sample)
        if row["_error"]:
            result.error = _error_from_json(row["_error"])
            if row["_size"]:
                result.edited_size = tuple(json.loads(row["_size"]))
        else:
            result.edited_size = tuple(json.loads(row["_size"]))
            outcomes = ((kind, _outcome(kind, row[_answer_column(kind, p)], row.get(_repaired_column(kind, p)) or None,
                                        spec.generation.structured)) for p, kind in spec.stages())
            finish_result(result, outcomes, spec.aggregation)
        record = build_record(result, model=spec.model, judge_hash=spec.judge_hash, config_hash=spec.config_hash)
        return {"_seq": row["_seq"], "id": sample.id,
                "record": json.dumps(record, ensure_ascii=False, allow_nan=False)}


class _VLLMReplica:
    """One vLLM replica (``engine: vllm``): a ``Judge`` over the vllm backend,
    loaded once per actor; each call judges a batch of sample rows with the
    judge's own pipeline (its prepare pool decodes and resizes, the engine
    batches continuously) and returns their records, exactly as ``judge
    --backend vllm`` writes them. The calls are coroutines on the actor's one
    event loop (Ray Data runs several at once), so the engine is refilled from
    the next batch while a batch ends."""

    def __init__(self, spec: RaySpec):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from .judge import Judge

        self.judge = None
        judge = Judge.from_pretrained(config=spec.config, dtype=spec.dtype, backend="vllm",
                                      backend_options=dict(spec.engine_options))
        if (judge.judge_hash, judge.config_hash) != (spec.judge_hash, spec.config_hash):
            backend = judge.backend
            judge.close()
            raise ConfigError(
                f"this replica's engine is not the one the driver hashed for {spec.model} (here: dtype "
                f"{backend.dtype}, weights {backend.fingerprint}; the driver's judge hash {spec.judge_hash}): "
                "pass --dtype explicitly, and give every node the same copy of the weights")
        self.judge = judge

    def __del__(self):
        if getattr(self, "judge", None) is not None:
            self.judge.close()  # the engine's processes end with the actor (Ray Data's pool shutdown)

    async def __call__(self, batch: dict) -> dict:
        samples = [sample_from_json(str(text)) for text in batch["_sample"]]
        records = [r.to_record() for r in await self.judge.ajudge_many(samples)]
        return {"_seq": batch["_seq"], "id": [r["id"] for r in records],
                "record": [json.dumps(r, ensure_ascii=False, allow_nan=False) for r in records]}


def judge_rows(ds, spec: RaySpec):
    """Rows ``{"_seq", "_sample"}`` (``sample_json``) -> rows ``{"_seq", "id",
    "record"}`` (the record as JSON text), lazily."""
    if spec.engine == "vllm":
        import ray

        return ds.map_batches(_VLLMReplica, fn_constructor_args=(spec,), batch_size=spec.batch_size,
                              batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=spec.replicas),
                              **dict(spec.replica_resources))
    ds = ds.map(_Prepare(spec))
    for p, kind in spec.stages():
        ds = _http_stage(ds, spec, _body_column(kind, p), _answer_column(kind, p), kind)
    if spec.generation.structured == "auto":
        ds = ds.map(_MarkRepairs(spec))
        for p, kind in spec.stages():
            ds = _http_stage(ds, spec, _repair_column(kind, p), _repaired_column(kind, p), kind,
                             drop=[_repair_column(kind, p)])
    return ds.map(_Finish(spec))


def judge_dataset(ds, *, base_urls: Sequence[str] | str | None = None, config: JudgeConfig | None = None,
                  config_file: str | None = None, model: str | None = None, overrides: dict | None = None,
                  concurrency: int = DEFAULT_REPLICAS, api_key_env: str | None = None,
                  manifest_base: str | os.PathLike | None = None, actors: int | None = None,
                  backend_options: dict | None = None, spec: RaySpec | None = None, backend: str = "openai",
                  replicas: int | None = None, dtype: str = "auto"):
    """A Dataset of manifest rows -> a Dataset of records (one per edit, one per
    candidate of a group; the record's fields as columns would lose their
    nesting, so each row is ``{"id", "record"}`` with the record as the JSON
    text ``judge`` writes, plus ``_seq``).

    Rows carry the manifest's columns (``id``, ``source``, ``edited``,
    ``instruction``, ...; a null column counts as absent); images are paths,
    relative to ``manifest_base`` (default: the working directory), or bytes.
    Optional ``_origin`` ("FILE:LINE") names a row in error records, and
    ``_seq`` orders it. Duplicate ids are not detected here (the CLI's
    ``--ray`` does it, as ``judge``); groups are not ranked (``rank_group``).

    ``backend="openai"`` (default): the servers at ``base_urls``, checked on the
    driver (``OpenAIBackend.load``); ``concurrency``: requests in flight per
    endpoint. ``backend="vllm"``: ``replicas`` vLLM engines placed by Ray
    (``load_vllm_spec``; ``backend_options``: the vllm backend's, e.g.
    ``{"tensor_parallel_size": 2}``). Either way the hashes are the ``Judge``'s."""
    _require_ray()
    if spec is None and backend == "vllm":
        spec = load_vllm_spec(config=config, config_file=config_file, model=model, overrides=overrides,
                              replicas=replicas, dtype=dtype, backend_options=backend_options)
    elif spec is None:
        if backend != "openai":
            raise ConfigError(f"judge_dataset judges through backend openai or vllm, not {backend!r}")
        if not base_urls:
            raise ConfigError("judge_dataset(backend='openai') needs base_urls: the servers to send to")
        spec = load_spec(base_urls=base_urls, config=config, config_file=config_file, model=model,
                         overrides=overrides, api_key_env=api_key_env, replicas=concurrency, actors=actors,
                         backend_options=backend_options)
    base = str(Path(manifest_base).expanduser().absolute()) if manifest_base is not None else os.getcwd()
    return judge_rows(ds.flat_map(_ExpandRows(base)), spec)


# -- the CLI: shards, merge, resume ---------------------------------------------------------


def shard_dir(output: Path) -> Path:
    """``scores.jsonl`` -> ``scores.jsonl.ray/``: the shards of a --ray run."""
    return output.with_name(output.name + SHARD_SUFFIX)


class _WriteShard:
    """A block's records -> one shard file, written whole then renamed in."""

    def __init__(self, folder: str):
        self.folder = folder

    def __call__(self, batch: dict) -> dict:
        records = list(batch["record"])
        if records:
            name = f"shard-{uuid.uuid4().hex}.jsonl"
            tmp = os.path.join(self.folder, f".{name}.tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write("".join(str(r) + "\n" for r in records))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, os.path.join(self.folder, name))
        return {"written": [len(records)]}


def _load_shards(folder: Path, config_hash: str, retry_errors: bool) -> tuple[dict, list[Path]]:
    """{id: record} of the shards (first of a repeated id; another config's
    records ignored; with ``retry_errors`` error records and their groups left
    out), and the shard files read."""
    from .results import id_key

    records: dict[bytes, dict] = {}
    files = sorted(folder.glob("shard-*.jsonl")) if folder.is_dir() else []
    for path in files:
        with path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or record.get("config_hash") != config_hash:
                    continue
                records.setdefault(id_key(record["id"]), record)
    if retry_errors:
        bad_groups = {r.get("group") for r in records.values() if r.get("status") != "ok"}
        records = {k: r for k, r in records.items()
                   if r.get("status") == "ok" and (r.get("group") is None or r.get("group") not in bad_groups)}
    return records, files


def _units(samples: Iterable[Sample]) -> Iterator[list[Sample]]:
    """Samples as units: one sample, or a group's consecutive candidates."""
    unit: list[Sample] = []
    for sample in samples:
        if unit and (sample.group is None or sample.group != unit[0].group):
            yield unit
            unit = []
        unit.append(sample)
        if sample.group is None:
            yield unit
            unit = []
    if unit:
        yield unit


def _merge(output: Path, samples: Iterable[Sample], done: set, folder: Path, config_hash: str,
           retry_errors: bool, on_record: Callable[[dict], None] | None = None) -> int:
    """Shard records -> OUT in manifest order (groups whole, ranked), each id
    once; what cannot be written yet (a group not all judged) stays in one
    shard. Returns the records written."""
    from .output import RecordWriter
    from .records import rank_group
    from .results import id_key

    pending, files = _load_shards(folder, config_hash, retry_errors)
    if not files:
        return 0
    writer = RecordWriter(output)
    written = 0
    try:
        for unit in _units(samples):
            keys = [id_key(s.id) for s in unit if id_key(s.id) not in done]
            if not keys or not all(k in pending for k in keys):
                continue
            records = [pending.pop(k) for k in keys]
            if unit[0].group is not None:
                records = rank_group(records)
                for record in records:
                    record["group_size"] = len(records)
            writer.write(records)
            done.update(keys)
            written += len(records)
            for record in records:
                if on_record:
                    on_record(record)
    finally:
        writer.close()
    left = [r for k, r in pending.items() if k not in done]
    if left:  # kept for the next run: one shard of them, in before the old ones go
        _WriteShard(str(folder))({"record": [json.dumps(r, ensure_ascii=False, allow_nan=False) for r in left]})
    for path in files:
        path.unlink(missing_ok=True)
    return written


@dataclass
class RayRunReport:
    summary: dict
    written: int
    skipped: int
    resume: object
    summary_file: Path | None


def run_manifest(spec: RaySpec, read_samples: Callable[[], Iterable[Sample]], output: Path, *,
                 overwrite: bool = False, retry_errors: bool = False, threshold: float = 0.5,
                 address: str | None = None, on_record: Callable[[dict], None] | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> RayRunReport:
    """The ``judge --ray`` run: what OUT and the shards do not hold yet, judged
    on Ray Data into shards, merged into OUT; the summary beside it.
    ``read_samples`` reads the manifest afresh (it is walked more than once)."""
    _require_ray()
    from .output import exclusive, prepare, summary_path, write_atomic
    from .results import id_key
    from .summary import summarize_file

    output = Path(output)
    folder = shard_dir(output)
    with exclusive(output):
        if overwrite and folder.exists():
            shutil.rmtree(folder)
        resume = prepare(output, spec.config_hash, overwrite=overwrite, retry_errors=retry_errors)
        done = set(resume.done)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".shard-*.tmp"):  # a worker killed mid-write
            stale.unlink(missing_ok=True)
        written = _merge(output, read_samples(), done, folder, spec.config_hash, retry_errors, on_record)
        in_shards, _ = _load_shards(folder, spec.config_hash, retry_errors)
        rows, skipped = [], 0
        for seq, sample in enumerate(read_samples()):
            key = id_key(sample.id)
            if key in resume.done:
                skipped += 1
            elif key not in done and key not in in_shards:
                rows.append({"_seq": [seq, 0], "_sample": sample_json(sample)})
        if rows:
            _judge_into_shards(rows, spec, folder, address, on_progress)
            written += _merge(output, read_samples(), done, folder, spec.config_hash, False, on_record)
        if not any(folder.iterdir()):
            folder.rmdir()
        summary = summarize_file(output, threshold)
        summary_file = summary_path(output)
        write_atomic(summary_file, json.dumps(summary, indent=2) + "\n")
    return RayRunReport(summary=summary, written=written, skipped=skipped, resume=resume, summary_file=summary_file)


def _judge_into_shards(rows: list[dict], spec: RaySpec, folder: Path, address: str | None,
                       on_progress: Callable[[int, int], None] | None) -> None:
    import dataclasses

    ray = _init_ray(address)
    if spec.engine == "vllm":
        # Every replica gets work (a block is one replica's task), and none loads an engine for nothing.
        per_replica = -(-len(rows) // spec.replicas)
        block_rows = min(spec.block_rows, max(spec.batch_size, per_replica))
        spec = dataclasses.replace(spec, block_rows=block_rows,
                                   replicas=min(spec.replicas, -(-len(rows) // block_rows)))
    blocks = max(1, min(len(rows), -(-len(rows) // max(1, spec.block_rows))))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    out = judge_rows(ds, spec).map_batches(_WriteShard(str(folder)), batch_size=None, batch_format="numpy")
    total, finished, last = len(rows), 0, 0.0
    quiet = _QuietRayData()
    try:
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            finished += int(sum(batch["written"]))
            now = time.monotonic()
            if on_progress and (now - last >= 2.0 or finished >= total):
                on_progress(finished, total)
                last = now
    except (ray.exceptions.RayError, ray.data.exceptions.UserCodeException) as exc:
        # A stage that cannot go on (an engine replica that cannot start, a worker's bug):
        # one line; the shards already written stay, so the same command resumes.
        raise EngineError(f"the Ray run stopped after {finished} of {total} edits: {_root_cause(exc)}; the "
                          f"records written so far are kept: run the same command again to resume (Ray's logs, "
                          f"/tmp/ray/session_latest/logs on the head node, hold the workers' tracebacks)") from None
    finally:
        quiet.restore()


class _QuietRayData:
    """Ray Data's own console lines on the driver (an execution started, finished,
    or failed with a traceback) off while a run goes on: the run says its progress
    and, on a failure, one line (``_judge_into_shards``)."""

    def __init__(self):
        self.loggers = [logging.getLogger(name) for name in ("ray.data", "ray.llm")]
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.CRITICAL)

    def restore(self) -> None:
        for logger, level in zip(self.loggers, self.levels):
            logger.setLevel(level)


def _root_cause(exc: BaseException) -> str:
    """The worker's own exception under Ray's wrappers, in one line. Ray Data
    wraps a stage's exception in ``UserCodeException`` and ships it as a
    ``RayTaskError`` whose text holds the worker's traceback (the original
    exception object does not cross): its first ``Name: message`` line."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    for line in text.splitlines():
        match = re.match(r"([A-Za-z_][\w.]*): (.+)", line)
        if match and not match.group(1).startswith("ray."):
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2).strip()[:200]}"
    return describe(getattr(exc, "cause", None) or exc)
