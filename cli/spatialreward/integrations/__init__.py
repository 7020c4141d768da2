"""Drop-in doors for the RL code people already run, each over ``spatialreward.client``:

- ``flow_factory``: Flow-Factory reward model classes (and ``serve``'s ``POST /compute`` for its remote models);
- ``flow_grpo``: a scorer for flow_grpo's ``multi_score``;
- ``verl_omni``: an ``async compute_score`` for verl-omni's reward manager.

None imports its trainer until it is used; the failure policy is ``spatialreward.policy``.
"""
