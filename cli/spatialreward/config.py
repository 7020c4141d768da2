"""Judge configuration: shipped defaults <- user YAML (--config) <- flags.

``judge_hash`` fingerprints everything that determines the raw scores (model,
revision, dtype, prompts, decoding, pixel budget); ``config_hash`` adds the
aggregation, so it fingerprints the rewards too. Records carry both: resume
compares ``config_hash``, ``rescore`` keeps ``judge_hash`` and recomputes
``config_hash`` for its new aggregation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .constants import DEFAULT_MODEL, MAX_PIXELS, MIN_PIXELS
from .protocols import DEFAULT_PROTOCOL, get_protocol
from .t2i import T2IWeights
from .errors import ConfigError
from .numbers import is_number
from .resources import read_template

STRATEGIES = ("weighted_geometric", "min_geometric", "mean")
STRUCTURED_MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class Aggregation:
    strategy: str = "weighted_geometric"
    weights: tuple[float, float, float, float] = (0.6, 0.4, 0.5, 0.5)
    alpha: float = 0.8

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"aggregation.strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if len(self.weights) != 4 or any(not is_number(w) or w < 0 for w in self.weights):
            raise ConfigError(f"aggregation.weights must be four numbers >= 0, not {list(self.weights)!r}")
        if not is_number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"aggregation.alpha must be a number in [0, 1], not {self.alpha!r}")


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 4096
    temperature: float = 0.0
    top_p: float = 0.9
    top_k: int = 20
    passes: int = 1
    seed: int = 42
    structured: str = "auto"
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def validate(self) -> None:
        _check_int("generation.max_new_tokens", self.max_new_tokens, 1)
        _check_int("generation.top_k", self.top_k, 0)
        _check_int("generation.passes", self.passes, 1)
        _check_int("generation.seed", self.seed, 0)
        _check_int("generation.min_pixels", self.min_pixels, 1)
        _check_int("generation.max_pixels", self.max_pixels, 1)
        if self.min_pixels > self.max_pixels:
            raise ConfigError(f"generation.min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels})")
        if not is_number(self.temperature) or self.temperature < 0:
            raise ConfigError(f"generation.temperature must be a number >= 0, not {self.temperature!r}")
        if not is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"generation.top_p must be in (0, 1], not {self.top_p!r}")
        if self.structured not in STRUCTURED_MODES:
            raise ConfigError(f"generation.structured must be one of {', '.join(STRUCTURED_MODES)}, not {self.structured!r}")
        if self.passes > 1 and not self.sampling:
            raise ConfigError(
                f"passes = {self.passes} repeats the requests with sampling, but temperature is 0 (greedy) "
                "so every pass would be identical: set a temperature > 0 (e.g. --temperature 0.7)"
            )


@dataclass(frozen=True)
class JudgeConfig:
    model: str = DEFAULT_MODEL
    revision: str | None = None
    aggregation: Aggregation = field(default_factory=Aggregation)
    generation: Generation = field(default_factory=Generation)
    threshold: float = 0.5
    batch_size: int = 4
    protocol: str = DEFAULT_PROTOCOL
    # t2i-spatial's reward formula (spatialreward.t2i.t2i_reward_parts); unused by the edit protocols.
    t2i: T2IWeights = field(default_factory=T2IWeights)

    def validate(self) -> "JudgeConfig":
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("model must be a hub id or a local folder")
        get_protocol(self.protocol)
        self.aggregation.validate()
        self.generation.validate()
        if not is_number(self.threshold) or not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be a number in [0, 1], not {self.threshold!r}")
        _check_int("batch_size", self.batch_size, 1)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def judge_hash(self, *, dtype: str, prompts: str, model: str | None = None, grammar: int | None = None) -> str:
        """Fingerprint of what determines the raw scores. ``model`` is the
        backend's identity of the loaded weights (default: the configured name)."""
        payload = {
            "model": model or self.model,
            "revision": self.revision,
            "dtype": dtype,
            "prompts": prompts,
            "grammar": grammar,
            "generation": dataclasses.asdict(self.generation),
        }
        if self.protocol != DEFAULT_PROTOCOL:  # eval keeps the hash it always had
            payload["protocol"] = self.protocol
        return _digest(payload)


def config_hash(judge_hash: str, aggregation: Aggregation, t2i: "T2IWeights | None" = None) -> str:
    """Fingerprint of what determines the rewards: raw-score setup + aggregation
    (t2i-spatial: + its reward formula's weights)."""
    payload = {"judge": judge_hash, "aggregation": dataclasses.asdict(aggregation)}
    if t2i is not None:
        payload["t2i"] = dataclasses.asdict(t2i)
    return _digest(payload)


def _digest(payload: dict) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, not {value!r}")


def _default_tree() -> dict:
    return yaml.safe_load(read_template("config.yaml"))


def _merge(base: dict, override: dict, origin: str, prefix: str = "") -> dict:
    merged = dict(base)
    for key, value in override.items():
        path = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(f"{prefix}{k}" for k in base))
            raise ConfigError(f"{origin}: unknown config key {path!r} (known: {known})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {path!r} must be a mapping")
            merged[key] = _merge(base[key], value, origin, prefix=f"{path}.")
        else:
            merged[key] = value
    return merged


def _from_tree(tree: dict) -> JudgeConfig:
    agg = dict(tree["aggregation"])
    agg["weights"] = tuple(agg["weights"]) if isinstance(agg["weights"], list) else agg["weights"]
    return JudgeConfig(
        model=tree["model"],
        revision=tree["revision"],
        aggregation=Aggregation(**agg),
        generation=Generation(**tree["generation"]),
        threshold=tree["threshold"],
        batch_size=tree["batch_size"],
        protocol=tree.get("protocol", DEFAULT_PROTOCOL),
        t2i=_t2i_weights(tree.get("t2i") or {}),
    )


def _t2i_weights(values) -> T2IWeights:
    if not isinstance(values, dict):
        raise ConfigError("t2i must be a mapping of model, geometry, spatial_exponent, missing_box_fails")
    unknown = set(values) - {f.name for f in dataclasses.fields(T2IWeights)}
    if unknown:
        raise ConfigError(f"t2i: unknown keys {sorted(unknown)}")
    return T2IWeights(**values)


def with_overrides(config: JudgeConfig, overrides: dict) -> JudgeConfig:
    """``config`` with ``overrides`` (nested config keys) applied and validated."""
    tree = config.to_dict()
    tree["aggregation"]["weights"] = list(tree["aggregation"]["weights"])
    if "protocol" in overrides and overrides["protocol"] != tree["protocol"]:
        tree = _protocol_defaults(tree, overrides["protocol"], overrides)
    try:
        return _from_tree(_merge(tree, overrides, "overrides")).validate()
    except TypeError as exc:
        raise ConfigError(f"invalid config: {exc}") from None


def _protocol_defaults(tree: dict, name, *given: dict) -> dict:
    """``tree`` with the protocol's published decoding and pixel defaults, for the
    generation keys that no config file or flag set."""
    if not isinstance(name, str):
        raise ConfigError(f"protocol must be a name, not {name!r}")
    protocol = get_protocol(name)
    explicit = {key for source in given for key in (source.get("generation") or {})}
    generation = dict(tree["generation"])
    generation.update({k: v for k, v in protocol.generation.items() if k not in explicit})
    tree = {**tree, "generation": generation}
    if protocol.model and not any("model" in source for source in given) and tree["model"] == DEFAULT_MODEL:
        tree["model"] = protocol.model  # e.g. t2i-spatial: a Qwen-VL instruct model, not SpatialReward-8B
    return tree


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> JudgeConfig:
    """Defaults from ``templates/config.yaml``, then the YAML file at ``path``,
    then ``overrides`` (a nested dict of the same shape, e.g. from flags)."""
    tree = _default_tree()
    user = None
    if path is not None:
        path = Path(path)
        try:
            user = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
        if user is not None:
            if not isinstance(user, dict):
                raise ConfigError(f"{path}: a config file must be a YAML mapping")
            tree = _merge(tree, user, str(path))
    if overrides:
        tree = _merge(tree, overrides, "command line")
    if tree.get("protocol", DEFAULT_PROTOCOL) != DEFAULT_PROTOCOL:
        tree = _protocol_defaults(tree, tree["protocol"], user or {}, overrides or {})
    try:
        return _from_tree(tree).validate()
    except TypeError as exc:  # e.g. weights not a list
        raise ConfigError(f"invalid config: {exc}") from None
