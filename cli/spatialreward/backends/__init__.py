"""Model backends: turn chat requests into answer texts.

A backend implements ``Backend`` (see ``base.py``). Built in: ``transformers``
(in process, the default), ``openai`` (any OpenAI-compatible chat server: vLLM,
SGLang, LMDeploy) and ``vllm`` (vLLM in process, ``pip install
'spatialreward[vllm]'``). Others register under the ``spatialreward.backends``
entry-point group; all are chosen with ``--backend``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import ConfigError
from .base import Answer, Backend, batch_limit, concurrency_of

BUILTIN = {
    "transformers": "spatialreward.backends.transformers_backend:TransformersBackend",
    "openai": "spatialreward.backends.openai_backend:OpenAIBackend",
    "vllm": "spatialreward.backends.vllm_backend:VLLMBackend",
}


def backend_class(name: str):
    """The backend class registered as ``name``."""
    target = BUILTIN.get(name)
    if target is None:
        for ep in entry_points(group="spatialreward.backends"):
            if ep.name == name:
                return ep.load()
        known = sorted(set(BUILTIN) | {ep.name for ep in entry_points(group="spatialreward.backends")})
        raise ConfigError(f"unknown backend {name!r} (available: {', '.join(known)})")
    module, _, attr = target.partition(":")
    from importlib import import_module

    return getattr(import_module(module), attr)


__all__ = ["Answer", "Backend", "backend_class", "batch_limit", "concurrency_of"]
