"""Dispatch: the fab model as arrays, the numba dispatch scorer, policy config, track-in enforcement.

- `dispatch.model`: FabModel (builder, incremental updates, rework), from_smt2020, random_fab
- `dispatch.config`: Policy (presets fabd / fifo / cr, per-group overrides), load_policy
- `dispatch.scorer`: the kernels (score_all, score_tool, assign, candidate_key, ...), Dispatcher, warm
- `dispatch.reference`: the same policy in plain Python (tests and benchmark baseline)
- `dispatch.enforce`: check_track_in / track_in with reason codes
- `dispatch.sync`: apply equipment events to the model
- `dispatch.smt2020`: SMT2020 dataset parser
"""
