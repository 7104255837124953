"""The PNG of a selection: latency against φ per resolution group, with the budget line.

Filled markers are measured, hollow ones predicted by the fit; the choice is a star. The
latency axis is logarithmic because B0 to B7 spans about two decades.
"""

from __future__ import annotations

from pathlib import Path

from edgeeff.io import atomic_path


def plot_selection(selection, path: str | Path, title: str) -> Path:
    """Write the plot of `selection` to `path` (PNG) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib import ticker

    settings = selection.settings
    metric = settings.metric
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    # One line per family and resolution group, so Lite and B models are not joined.
    groups: dict[tuple[str, str], list] = {}
    for candidate in selection.candidates:
        if candidate.latency(metric) is not None:
            groups.setdefault((candidate.variant.family, candidate.group), []).append(candidate)

    for index, ((family, group), members) in enumerate(groups.items()):
        members.sort(key=lambda c: (c.variant.phi, c.resolution))
        color = f"C{index % 10}"
        label = f"{family}, {'native resolution' if group == 'native' else group}"
        phis = [c.variant.phi for c in members]
        axes.plot(phis, [c.latency(metric) for c in members], color=color, linewidth=1, alpha=0.6, label=label)
        measured = [c for c in members if c.measured is not None]
        predicted = [c for c in members if c.measured is None]
        axes.scatter([c.variant.phi for c in measured], [c.latency(metric) for c in measured], color=color, zorder=3)
        axes.scatter([c.variant.phi for c in predicted], [c.latency(metric) for c in predicted], facecolors="none",
                     edgecolors=color, zorder=3)
        for candidate in members:
            axes.annotate(f"{candidate.name}\n{candidate.resolution}px", (candidate.variant.phi,
                          candidate.latency(metric)), textcoords="offset points", xytext=(4, -14), fontsize=6)

    axes.axhline(settings.budget_ms, color="red", linestyle="--", linewidth=1,
                 label=f"budget {settings.budget_ms:g} ms ({metric})")
    choice = selection.decision.choice
    if choice is not None:
        axes.scatter([choice.variant.phi], [choice.latency(metric)], marker="*", s=220, color="gold",
                     edgecolors="black", zorder=4, label=f"choice: {choice.label}")
    # Legend entries for the marker styles, drawn off the data.
    axes.scatter([], [], color="gray", label="measured")
    axes.scatter([], [], facecolors="none", edgecolors="gray", label="predicted")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ticker.ScalarFormatter())
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel("φ (compound scaling coefficient)")
    axes.set_ylabel(f"{metric} latency (ms)")
    axes.set_title(title, fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
