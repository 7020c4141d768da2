"""Options shared by several commands, as reusable decorators."""

from __future__ import annotations

import functools

import click

from ..config import STRATEGIES, STRUCTURED_MODES


def _weights(ctx, param, value):
    if value is None:
        return None
    try:
        weights = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter("expected four numbers: W1,W2,W3,W4") from None
    if len(weights) != 4:
        raise click.BadParameter("expected four numbers: W1,W2,W3,W4")
    return weights


def _compose(*decorators):
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="YAML config file (keys as in the shipped templates/config.yaml).",
)

aggregation_options = _compose(
    click.option("--aggregation", type=click.Choice(STRATEGIES), default=None, help="Aggregation strategy."),
    click.option("--weights", callback=_weights, default=None, metavar="W1,W2,W3,W4",
                 help="weighted_geometric weights: success, over-editing, naturalness, artifacts."),
    click.option("--alpha", type=float, default=None, help="weighted_geometric SC exponent (PQ gets 1-alpha)."),
    click.option("--threshold", type=float, default=None, help="Per-edit pass threshold on the reward [default 0.5]."),
)

model_options = _compose(
    click.option("--model", default=None, help="Hub id or local folder [default SpatialReward/SpatialReward-8B]."),
    click.option("--revision", default=None, help="Model revision (branch, tag or commit)."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--dtype", type=click.Choice(["auto", "bfloat16", "float16", "float32"]), default="auto",
                 show_default=True, help="auto: bfloat16 on GPU, float32 on CPU."),
)

generation_options = _compose(
    click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Samples per generate() call [default 4]."),
    click.option("--passes", type=click.IntRange(min=1), default=None, help="Repeat SC and PQ with sampling; average the scores."),
    click.option("--temperature", type=click.FloatRange(min=0), default=None, help="0 = greedy (published) [default 0]."),
    click.option("--seed", type=click.IntRange(min=0), default=None, help="Sampling seed [default 42]."),
    click.option("--structured", type=click.Choice(STRUCTURED_MODES), default=None,
                 help="JSON-schema constrained decoding: auto (repair failures only), always, off [default auto]."),
    click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="[default 4096]"),
    click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Per-image pixel budget [default 589824]."),
    click.option("--min-pixels", type=click.IntRange(min=1), default=None, help="[default 3136]"),
)

quiet_option = click.option("--quiet", "-q", is_flag=True, help="Print less: no progress bar, no summary table.")


def config_overrides(params: dict) -> dict:
    """Nested config overrides from the flags that were given."""
    tree: dict = {}
    for flag, key in (("model", "model"), ("revision", "revision"), ("threshold", "threshold"), ("batch_size", "batch_size")):
        if params.get(flag) is not None:
            tree[key] = params[flag]
    agg = {k: params[f] for f, k in (("aggregation", "strategy"), ("weights", "weights"), ("alpha", "alpha"))
           if params.get(f) is not None}
    if agg:
        tree["aggregation"] = agg
    gen = {k: params[k] for k in ("passes", "temperature", "seed", "structured", "max_new_tokens", "max_pixels", "min_pixels")
           if params.get(k) is not None}
    if gen:
        tree["generation"] = gen
    return tree


def pass_params(func):
    """Hand the command all its parameters as one dict."""

    @functools.wraps(func)
    def wrapper(**params):
        return func(params)

    return wrapper


def load_judge(params: dict, config):
    """The Judge for a model-using command (judge, check), with transformers'
    own progress bars and advice silenced: they are noise in a CLI. Says on
    stderr what it loads (loading takes a while) unless ``--quiet``."""
    if not params.get("quiet"):
        revision = f"@{config.revision}" if config.revision else ""
        click.echo(f"loading model {config.model}{revision} (backend {params['backend']}) ...", err=True)
    import transformers

    from ..judge import Judge

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return Judge.from_pretrained(config=config, device=params["device"], dtype=params["dtype"],
                                 backend=params["backend"])
