"""Shared matplotlib helpers: object-oriented API, one consistent look.

Figures are `matplotlib.figure.Figure` objects, never pyplot's: they need no backend (savefig
picks the PNG canvas itself), so importing dlscope never calls `matplotlib.use` and leaves a
notebook's backend as the user set it.
"""

from __future__ import annotations

from matplotlib.figure import Figure


def figure(ncols: int = 1, width: float = 5.2, height: float = 3.6, sharex: bool = False):
    """A Figure (not registered with pyplot, so nothing leaks) and its axes."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, sharex=sharex)
    return fig, axes


def finish(ax, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, which="both")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
