"""Judge configuration: defaults <- YAML <- overrides, validation, hashes (spatialreward.config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from spatialreward.config import (
    Aggregation,
    Generation,
    JudgeConfig,
    config_hash,
    load_config,
    with_overrides,
)
from spatialreward.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "templates" / "config.yaml"


def write_yaml(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -------------------------------------------------------------------


def test_defaults_equal_the_shipped_yaml():
    tree = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    config = load_config()
    assert config.model == tree["model"]
    assert config.revision == tree["revision"]
    assert config.threshold == tree["threshold"]
    assert config.batch_size == tree["batch_size"]
    assert config.aggregation.strategy == tree["aggregation"]["strategy"]
    assert list(config.aggregation.weights) == tree["aggregation"]["weights"]
    assert config.aggregation.alpha == tree["aggregation"]["alpha"]
    assert dataclasses.asdict(config.generation) == tree["generation"]


def test_defaults_equal_the_dataclass_defaults():
    assert load_config() == JudgeConfig()
    assert isinstance(load_config().aggregation.weights, tuple)


def test_published_defaults():
    config = load_config()
    assert config.model == "SpatialReward/SpatialReward-8B"
    assert config.aggregation == Aggregation("weighted_geometric", (0.6, 0.4, 0.5, 0.5), 0.8)
    assert config.generation.temperature == 0.0
    assert config.generation.passes == 1
    assert (config.generation.min_pixels, config.generation.max_pixels) == (3136, 589824)


# --- user YAML ----------------------------------------------------------------------


def test_user_yaml_overrides_a_subset(tmp_path):
    path = write_yaml(tmp_path, "aggregation:\n  alpha: 0.6\ngeneration:\n  max_new_tokens: 512\nthreshold: 0.7\n")
    config = load_config(path)
    assert config.aggregation.alpha == 0.6
    assert config.aggregation.weights == (0.6, 0.4, 0.5, 0.5)  # untouched sibling
    assert config.aggregation.strategy == "weighted_geometric"
    assert config.generation.max_new_tokens == 512
    assert config.generation.top_k == 20  # untouched sibling
    assert config.threshold == 0.7
    assert config.model == "SpatialReward/SpatialReward-8B"


def test_user_yaml_weights_become_tuple(tmp_path):
    config = load_config(write_yaml(tmp_path, "aggregation:\n  weights: [0.25, 0.25, 0.25, 0.25]\n"))
    assert config.aggregation.weights == (0.25, 0.25, 0.25, 0.25)


def test_empty_yaml_gives_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "# nothing\n")) == load_config()


def test_unknown_top_level_key_names_file_and_key(tmp_path):
    path = write_yaml(tmp_path, "threshold: 0.4\ntemprature: 0.7\n", name="mine.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "temprature" in message


def test_unknown_nested_key_names_file_and_dotted_key(tmp_path):
    path = write_yaml(tmp_path, "generation:\n  temprature: 0.7\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "generation.temprature" in message


def test_section_that_is_not_a_mapping(tmp_path):
    path = write_yaml(tmp_path, "generation: 5\n")
    with pytest.raises(ConfigError, match="generation"):
        load_config(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = write_yaml(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_invalid_yaml(tmp_path):
    path = write_yaml(tmp_path, "aggregation: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("aggregation:\n  alpha: 1.5\n", "alpha"),
        ("aggregation:\n  alpha: -0.1\n", "alpha"),
        ("aggregation:\n  weights: [0.5, 0.5, 0.5]\n", "weights"),
        ("aggregation:\n  weights: [0.5, 0.5, 0.5, -1]\n", "weights"),
        ("aggregation:\n  weights: [0.5, 0.5, 0.5, x]\n", "weights"),
        ("aggregation:\n  strategy: median\n", "strategy"),
        ("generation:\n  structured: x\n", "structured"),
        ("generation:\n  min_pixels: 1000000\n  max_pixels: 1000\n", "min_pixels"),
        ("generation:\n  passes: 2\n  temperature: 0\n", "temperature"),
        ("generation:\n  passes: 0\n", "passes"),
        ("generation:\n  temperature: -1\n", "temperature"),
        ("generation:\n  top_p: 0\n", "top_p"),
        ("generation:\n  max_new_tokens: 1.5\n", "max_new_tokens"),
        ("generation:\n  seed: true\n", "seed"),
        ("threshold: 1.5\n", "threshold"),
        ("threshold: .nan\n", "threshold"),
        ("batch_size: 0\n", "batch_size"),
        ("model: ''\n", "model"),
    ],
)
def test_invalid_values(tmp_path, text, needle):
    with pytest.raises(ConfigError) as info:
        load_config(write_yaml(tmp_path, text))
    assert needle in str(info.value)


def test_passes_with_sampling_is_valid(tmp_path):
    config = load_config(write_yaml(tmp_path, "generation:\n  passes: 3\n  temperature: 0.7\n"))
    assert config.generation.passes == 3
    assert config.generation.sampling is True
    assert load_config().generation.sampling is False


# --- overrides ----------------------------------------------------------------------


def test_overrides_beat_the_file(tmp_path):
    path = write_yaml(tmp_path, "threshold: 0.7\naggregation:\n  alpha: 0.6\n  strategy: mean\n")
    config = load_config(path, {"threshold": 0.3, "aggregation": {"alpha": 0.9}})
    assert config.threshold == 0.3
    assert config.aggregation.alpha == 0.9
    assert config.aggregation.strategy == "mean"  # from the file, not overridden


def test_overrides_without_file():
    config = load_config(None, {"generation": {"temperature": 0.5, "passes": 2}, "batch_size": 8})
    assert config.generation.temperature == 0.5
    assert config.generation.passes == 2
    assert config.batch_size == 8


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="bogus"):
        load_config(None, {"bogus": 1})


def test_invalid_override_value():
    with pytest.raises(ConfigError, match="alpha"):
        load_config(None, {"aggregation": {"alpha": 2}})


def test_with_overrides():
    base = load_config()
    changed = with_overrides(base, {"aggregation": {"strategy": "min_geometric", "weights": [1, 0, 0, 1]}, "threshold": 0.25})
    assert changed.aggregation.strategy == "min_geometric"
    assert changed.aggregation.weights == (1, 0, 0, 1)
    assert changed.threshold == 0.25
    assert changed.generation == base.generation
    assert changed.model == base.model
    # the original is untouched
    assert base.aggregation.strategy == "weighted_geometric"
    assert base.threshold == 0.5


def test_with_overrides_empty_is_identity():
    base = load_config(None, {"threshold": 0.9})
    assert with_overrides(base, {}) == base


def test_with_overrides_validates():
    with pytest.raises(ConfigError, match="alpha"):
        with_overrides(load_config(), {"aggregation": {"alpha": 1.5}})
    with pytest.raises(ConfigError, match="nope"):
        with_overrides(load_config(), {"generation": {"nope": 1}})


# --- hashes -------------------------------------------------------------------------


def jh(config: JudgeConfig, dtype="bfloat16", prompts="P1") -> str:
    return config.judge_hash(dtype=dtype, prompts=prompts)


def test_judge_hash_is_stable():
    assert jh(load_config()) == jh(load_config())
    assert len(jh(load_config())) == 16


def test_judge_hash_changes_with_prompts_generation_dtype_model():
    base = load_config()
    reference = jh(base)
    assert jh(base, prompts="P2") != reference
    assert jh(base, dtype="float32") != reference
    assert jh(with_overrides(base, {"generation": {"max_new_tokens": 100}})) != reference
    assert jh(with_overrides(base, {"generation": {"max_pixels": 100000}})) != reference
    assert jh(with_overrides(base, {"model": "other/model"})) != reference
    assert jh(with_overrides(base, {"revision": "abc123"})) != reference


def test_judge_hash_ignores_aggregation_threshold_batch_size():
    base = load_config()
    other = with_overrides(base, {"aggregation": {"alpha": 0.5}, "threshold": 0.9, "batch_size": 16})
    assert jh(other) == jh(base)


def test_config_hash_changes_with_aggregation_only():
    base = load_config()
    judge = jh(base)
    reference = config_hash(judge, base.aggregation)
    assert config_hash(judge, base.aggregation) == reference
    assert config_hash(judge, Aggregation(alpha=0.5)) != reference
    assert config_hash(judge, Aggregation(strategy="mean")) != reference
    assert config_hash(judge, Aggregation(weights=(0.5, 0.5, 0.5, 0.5))) != reference
    assert config_hash(jh(base, prompts="P2"), base.aggregation) != reference


def test_config_hash_ignores_threshold_and_batch_size():
    base = load_config()
    other = with_overrides(base, {"threshold": 0.9, "batch_size": 32})
    assert config_hash(jh(other), other.aggregation) == config_hash(jh(base), base.aggregation)


def test_config_hash_weights_list_or_tuple_same():
    judge = jh(load_config())
    assert config_hash(judge, Aggregation(weights=(0.6, 0.4, 0.5, 0.5))) == config_hash(
        judge, Aggregation(weights=[0.6, 0.4, 0.5, 0.5])
    )


def test_generation_default_dataclass():
    assert Generation().validate() is None
