"""The dispatch policy of a simulation run: the daemon's policy, compiled for the fab's families.

Every dispatch decision in the simulation calls `dispatch.scorer.candidate_key`
and `dispatch.scorer.block_code` (the kernels the daemon's scorer runs) with
the `PolicyArrays` built here from `dispatch.config` presets ("fifo", "cr":
PySCFabSim's hierarchical dispatchers; "fabd": the default policy; "deliver":
fabd with due-date triage) or from a
policy file, so the simulation never carries its own copy of a policy.
"""

from __future__ import annotations

from pathlib import Path

from dispatch.config import PRESETS, Policy, PolicyArrays, compile_policy, load_policy

PRESET_NAMES = tuple(PRESETS)


class _Groups:
    """The part of a fab model that `compile_policy` reads: tool-group names (= families)."""

    def __init__(self, names: list[str]) -> None:
        self.group_ids = list(names)
        self.group_index = {n: i for i, n in enumerate(names)}
        self.n_groups = len(names)


def resolve(policy: str | Path | Policy) -> Policy:
    """Return a Policy for a preset name, a policy file (TOML) or a Policy."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str) and policy in PRESET_NAMES:
        return Policy(preset=policy)
    return load_policy(Path(policy))


def compile_for(policy: str | Path | Policy, family_names: list[str]) -> PolicyArrays:
    """Compile a policy into the per-family arrays the simulation kernel reads."""
    return compile_policy(resolve(policy), _Groups(family_names))
