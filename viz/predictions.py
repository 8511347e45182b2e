from __future__ import annotations

from matplotlib.figure import Figure

from .render import new_figure


def predictions_figure(top: list[tuple[str, float]]) -> Figure:
    """Horizontal bars of the top-k classes, best on top, probabilities printed."""
    labels = [name for name, _ in top][::-1]
    probs = [p for _, p in top][::-1]
    fig = new_figure(5, 0.45 * len(top) + 0.8)
    ax = fig.add_subplot()
    bars = ax.barh(labels, probs, color="#4c72b0")
    ax.bar_label(bars, [f"{p:.1%}" for p in probs], padding=3, fontsize=9)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("probability")
    ax.spines[["top", "right"]].set_visible(False)
    return fig
