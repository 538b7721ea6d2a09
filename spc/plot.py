"""A PNG control chart: centre line, 1/2/3σ zones, the points, each signal with its test number."""

from __future__ import annotations


def plot_chart(values: list[float], center: float, sigma: float, fired: dict[int, list[int]],
               out: str, *, title: str = "", k1_sigma: float = 3.0) -> None:
    """Write the chart of a series and the tests that fired on it to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, len(values) / 8.0)), 4.8), dpi=110)
    try:
        xs = list(range(len(values)))
        for k, shade in ((3, "#fde0dd"), (2, "#fff3cd"), (1, "#e2f0d9")):
            ax.axhspan(center - k * sigma, center + k * sigma, color=shade, zorder=0)
        ax.axhline(center, color="#2f5597", lw=1.2, label=f"CL {center:.4g}")
        for k in (1, 2):
            for sgn in (1, -1):
                ax.axhline(center + sgn * k * sigma, color="#999999", lw=0.6, ls=":")
        ucl, lcl = center + k1_sigma * sigma, center - k1_sigma * sigma
        ax.axhline(ucl, color="#c00000", lw=1.0, ls="--", label=f"UCL {ucl:.4g}")
        ax.axhline(lcl, color="#c00000", lw=1.0, ls="--", label=f"LCL {lcl:.4g}")
        ax.plot(xs, values, color="#404040", lw=0.8, marker="o", ms=3, zorder=3)
        by_point: dict[int, list[int]] = {}
        for test, idx in fired.items():
            for i in idx:
                by_point.setdefault(i, []).append(test)
        for i, tests in sorted(by_point.items()):
            ax.plot([i], [values[i]], marker="o", ms=6, color="#c00000", zorder=4)
            ax.annotate(",".join(str(t) for t in sorted(tests)), (i, values[i]),
                        textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7,
                        color="#c00000")
        span = max(abs(v - center) for v in values) if values else 0.0
        lim = max(span, (k1_sigma + 0.5) * sigma) * 1.1
        ax.set_ylim(center - lim, center + lim)
        ax.set_xlabel("point")
        ax.set_ylabel("value")
        ax.set_title(f"{title}  ({len(by_point)} points flagged; labels = test numbers)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.05, 1.0), fontsize=7, frameon=False)
        for k in (1, 2, 3):
            for sgn in (1, -1):
                ax.annotate(f"{'+' if sgn > 0 else '−'}{k}σ", (1.0, center + sgn * k * sigma),
                            xycoords=("axes fraction", "data"), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=6, color="#666666")
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
