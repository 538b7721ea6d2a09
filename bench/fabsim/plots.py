"""PNG plots of a simulation: cycle time distribution per lot type, WIP over time."""

from __future__ import annotations

from pathlib import Path

from bench.fabsim.run import SimResult


def write(folder: Path, dataset: str, policy: str, results: list[SimResult]) -> list[Path]:
    """Write the plots for `results` (all seeds pooled) into `folder`; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{dataset}_{Path(str(policy)).stem}"
    paths = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in results[0].by_lot_type:
        cts = [x for r in results for x in r.by_lot_type[name].cycle_times_days]
        if cts:
            ax.hist(cts, bins=60, histtype="step", label=f"{name} (n={len(cts)})")
    ax.set_xlabel("cycle time (days)")
    ax.set_ylabel("lots")
    ax.set_title(f"{dataset}: cycle time per lot type, policy {policy}")
    ax.legend()
    p = folder / f"{tag}_cycle_time.png"
    fig.tight_layout()
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, r in enumerate(results):
        ax.plot(range(len(r.wip_by_day)), r.wip_by_day, lw=1, label=f"run {k + 1}")
    ax.set_xlabel("day")
    ax.set_ylabel("lots in the fab")
    ax.set_title(f"{dataset}: WIP over time, policy {policy}")
    ax.legend()
    p = folder / f"{tag}_wip.png"
    fig.tight_layout()
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths
