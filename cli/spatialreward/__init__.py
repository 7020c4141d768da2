"""spatialreward: score instruction-guided image edits with SpatialReward-8B."""

__version__ = "0.1.0"
