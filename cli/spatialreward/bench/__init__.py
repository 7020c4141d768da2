"""The published benchmark evaluations (``spatialreward bench``).

One module per benchmark (``mer_bench``, ``editreward_bench``, ``mmrb2``), each
with ``prepare`` (dataset rows -> samples to judge + units to score),
``evaluate`` (units + records -> metrics), ``primary`` (the figure ``--search``
ranks aggregations by) and ``markdown``. ``run`` holds what they share:
the output folder, reading records back, and the offline aggregation search.
"""

from __future__ import annotations

from . import editreward_bench, mer_bench, mmrb2

BENCHMARKS = {module.NAME: module for module in (mer_bench, editreward_bench, mmrb2)}
