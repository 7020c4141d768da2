"""The reward server behind ``spatialreward serve`` (laid out like vLLM's OpenAI server).

- ``protocol``: the request and response models, validated at the edge;
- ``serving``: the logic over one ``Judge`` (images, samples, ordering, back-pressure, results);
- ``metrics``: Prometheus text counters and histograms;
- ``api_router``: the thin FastAPI routes, the body-size and token checks.

FastAPI and uvicorn are the optional extra ``serve``: ``pip install "spatialreward[serve]"``.
"""
