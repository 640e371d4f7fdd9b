"""PNG figures of a partition, like the paper's Figs. 3, 5 and 8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_KINDS = (("image+text", "image+text"), ("image_only", "image only"), ("text_only", "text only"))


def _stacked(ax: Any, names: list[str], series: dict[str, list[int]]) -> None:
    bottom = [0] * len(names)
    for label, values in series.items():
        ax.bar(names, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize="small")


def write_plots(summary: dict[str, Any], directory: Path) -> list[Path]:
    """Per-client sample counts by modality type, and per-client label histograms."""
    directory.mkdir(parents=True, exist_ok=True)
    clients = summary["clients"]
    names = list(clients)
    title = f"{'+'.join(summary['datasets'])}, {summary['spec']['scenario']}"
    written = []
    figure, ax = plt.subplots(figsize=(8, 4))
    _stacked(ax, names, {label: [clients[c][key] for c in names] for key, label in _KINDS})
    ax.set(title=f"{title}: samples per client by modality", ylabel="samples")
    figure.tight_layout()
    written.append(directory / "modalities.png")
    figure.savefig(written[-1], dpi=100)
    plt.close(figure)
    labels = sorted({label for c in names for label in clients[c]["labels"]})
    figure, ax = plt.subplots(figsize=(8, 4))
    _stacked(
        ax, names, {label: [clients[c]["labels"].get(label, 0) for c in names] for label in labels}
    )
    ax.set(title=f"{title}: labels per client", ylabel="samples")
    figure.tight_layout()
    written.append(directory / "labels.png")
    figure.savefig(written[-1], dpi=100)
    plt.close(figure)
    return written
