"""spatialreward: score instruction-guided image edits with SpatialReward-8B.

    from spatialreward import Judge
    judge = Judge.from_pretrained()            # SpatialReward/SpatialReward-8B
    result = judge.score("src.png", "edited.png", "Remove the dog")
    result.reward.reward, result.scores, result.to_record()
"""

__version__ = "0.1.0"

__all__ = ["Judge", "JudgeResult", "Sample", "load_config", "__version__"]


def __getattr__(name):  # lazy: `import spatialreward` must not import torch
    if name in ("Judge", "JudgeResult"):
        from . import judge

        return getattr(judge, name)
    if name == "Sample":
        from .sample import Sample

        return Sample
    if name == "load_config":
        from .config import load_config

        return load_config
    raise AttributeError(f"module 'spatialreward' has no attribute {name!r}")
