"""Options shared by several commands, as reusable decorators."""

from __future__ import annotations

import functools

import click

from ..config import STRATEGIES, STRUCTURED_MODES
from ..protocols import PROTOCOLS


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
    click.option("--protocol", type=click.Choice(sorted(PROTOCOLS)), default=None,
                 help="What the model is asked and how: eval (the evaluation scripts', default) or reward-server "
                      "(the released RL reward server's; its decoding defaults apply to the flags not given)."),
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

# Engine flags: (parameter, flag, backend option, backends it applies to).
ENGINE_FLAGS = (
    ("base_urls", "--base-url", "base_urls", ("openai",)),
    ("api_key_env", "--api-key-env", "api_key_env", ("openai",)),
    ("concurrency", "--concurrency", "concurrency", ("openai",)),
    ("request_timeout", "--request-timeout", "request_timeout", ("openai",)),
    ("served_model", "--served-model", "served_model", ("openai",)),
    ("structured_field", "--structured-field", "structured_field", ("openai",)),
    ("tensor_parallel_size", "--tensor-parallel-size", "tensor_parallel_size", ("vllm",)),
    ("gpu_memory_utilization", "--gpu-memory-utilization", "gpu_memory_utilization", ("vllm",)),
    ("max_model_len", "--max-model-len", "max_model_len", ("vllm",)),
)

engine_options = _compose(
    click.option("--base-url", "base_urls", multiple=True, metavar="URL",
                 help="--backend openai: an OpenAI-compatible server, e.g. http://gpu1:8000/v1 (repeat for several)."),
    click.option("--api-key-env", metavar="VAR", default=None,
                 help="--backend openai: environment variable holding the server's API key."),
    click.option("--concurrency", type=click.IntRange(min=1), default=None,
                 help="--backend openai: requests in flight [default 32]."),
    click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
                 help="--backend openai: seconds one request may take [default 300]."),
    click.option("--served-model", metavar="NAME", default=None,
                 help="--backend openai: model name to request [default: --model if served, else the one served]."),
    click.option("--structured-field", type=click.Choice(["vllm", "response_format"]), default=None,
                 help="--backend openai: how constrained requests carry their schema [default vllm]."),
    click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=None,
                 help="--backend vllm: GPUs per model [default 1]."),
    click.option("--gpu-memory-utilization", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
                 help="--backend vllm: share of GPU memory vLLM may take [default 0.9]."),
    click.option("--max-model-len", type=click.IntRange(min=1), default=None,
                 help="--backend vllm: context length [default: what the budget needs]."),
)


def backend_options(params: dict) -> dict:
    """The engine flags that were given, as backend load() options; a flag
    that does not apply to the chosen backend is a usage error (exit 2)."""
    backend = params.get("backend")
    options = {}
    for param, flag, key, backends in ENGINE_FLAGS:
        value = params.get(param)
        if value is None or value == ():
            continue
        if backend not in backends:
            only = " or ".join(f"--backend {b}" for b in backends)
            raise click.UsageError(f"{flag} does not apply to --backend {backend} (only to {only})")
        options[key] = list(value) if isinstance(value, tuple) else value
    return options


backend_option = click.option(
    "--backend", default="transformers", show_default=True,
    help="Model backend: transformers, openai (a server), vllm (in process), or a plugin.",
)

quiet_option = click.option("--quiet", "-q", is_flag=True, help="Print less: no progress bar, no summary table.")


def config_overrides(params: dict) -> dict:
    """Nested config overrides from the flags that were given."""
    tree: dict = {}
    for flag, key in (("model", "model"), ("revision", "revision"), ("threshold", "threshold"), ("batch_size", "batch_size"),
                      ("protocol", "protocol")):
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
    import os

    import transformers

    from ..judge import Judge

    # vLLM (--backend vllm) logs every engine step at INFO: only its warnings, unless asked.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    options = backend_options(params)
    if params["backend"] == "openai":
        # --model given (or set in the config file): a server that does not serve it is an error.
        from ..constants import DEFAULT_MODEL

        options["model_explicit"] = params.get("model") is not None or config.model != DEFAULT_MODEL
    judge = Judge.from_pretrained(config=config, device=params["device"], dtype=params["dtype"],
                                  backend=params["backend"], backend_options=options)
    # Closed however the command ends (Ctrl-C included): queued work fails, the batch
    # running finishes, no thread is left in native code at exit.
    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(judge.close)
    return judge


def judge_for_output(params: dict, config, output):
    """The Judge of a run writing ``output`` (judge -o, bench's scores.jsonl).
    Resuming a file that holds records, the model loads only once an edit is
    left to judge: the file is checked against the judge's hash first, which the
    backend says without loading (``identity``), so a finished run or another
    config's file answers in seconds. Otherwise ``load_judge``."""
    if output is not None and not params["overwrite"] and output.is_file() and output.stat().st_size:
        from ..judge import identity_before_load
        from ..runner import DeferredJudge

        identity = identity_before_load(config, backend=params["backend"], device=params["device"],
                                        dtype=params["dtype"], backend_options=backend_options(params))
        if identity is not None:
            return DeferredJudge(lambda: load_judge(params, config), config, identity)
    return load_judge(params, config)


# Everything a model-using command (judge, check, bench, serve) takes to build its Judge.
judge_options = _compose(config_option, model_options, generation_options, aggregation_options, backend_option,
                         engine_options)
