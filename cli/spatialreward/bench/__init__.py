"""The published benchmark evaluations (``spatialreward bench``).

One module per benchmark (``mer_bench``, ``editreward_bench``, ``mmrb2``; and the
text-to-image ones on a local JSONL file, ``spatial_pairs`` and
``geneval_position``, sharing ``t2i_common``), each
with ``prepare`` (dataset rows -> samples to judge + units to score),
``evaluate`` (units + records -> metrics), ``primary`` (the figure ``--search``
ranks aggregations by) and ``markdown``. ``run`` holds what they share:
the output folder, reading records back, and the offline aggregation search.
"""

from __future__ import annotations

from . import editreward_bench, geneval_position, mer_bench, mmrb2, spatial_pairs

BENCHMARKS = {module.NAME: module for module in (mer_bench, editreward_bench, mmrb2, spatial_pairs,
                                                 geneval_position)}
