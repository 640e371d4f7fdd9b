"""Results as Markdown tables (mean ± std over seeds, the paper's layout) and PNG plots."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PRIMARY = {
    "hateful_memes": "hateful_memes/auc",
    "crisismmd": "crisismmd/macro_f1",
    "vqa_rad": "vqa/overall",
    "medalpaca": "vqa/overall",
    "slake": "vqa/overall",
}


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    scaled = [100 * v for v in values]
    if len(scaled) == 1:
        return f"{scaled[0]:.2f}"
    return f"{statistics.mean(scaled):.2f} ± {statistics.stdev(scaled):.2f}"


def _metric_table(rows: list[dict[str, Any]], dataset: str, metric: str) -> list[str]:
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    lines = [
        f"### {dataset}: {metric} (x100, mean ± std over seeds)",
        "",
        "| method | " + " | ".join(scenarios) + " |",
        "|---|" + "---:|" * len(scenarios),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = [
            _cell(
                [
                    r["metrics"][metric]
                    for r in rows
                    if r["method"] == method and r["scenario"] == s and metric in r["metrics"]
                ]
            )
            for s in scenarios
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def tables(results: list[dict[str, Any]]) -> str:
    """Per data set: methods x scenarios for each metric (the primary one first), then bytes
    moved per round."""
    lines: list[str] = []
    for dataset in sorted({r["dataset"] for r in results}):
        rows = [r for r in results if r["dataset"] == dataset]
        found = sorted({m for r in rows for m in r["metrics"]})
        primary = [PRIMARY[dataset]] if PRIMARY[dataset] in found else []
        for metric in primary + [m for m in found if m not in primary]:
            lines += _metric_table(rows, dataset, metric)
        federated = [r for r in rows if r.get("rounds")]
        if federated:
            lines += [
                f"Communication per round ({dataset}, mean over cells):",
                "",
                "| method | MB down | MB up |",
                "|---|---:|---:|",
            ]
            for method in dict.fromkeys(r["method"] for r in federated):
                mine = [x for r in federated if r["method"] == method for x in r["rounds"]]
                down = statistics.mean(x["bytes_sent"] for x in mine) / 1e6
                up = statistics.mean(x["bytes_received"] for x in mine) / 1e6
                lines.append(f"| {method} | {down:.3f} | {up:.3f} |")
        lines.append("")
    return "\n".join(lines)


def plots(results: list[dict[str, Any]], directory: Path) -> list[Path]:
    """Loss, update norm and evaluation metric per round, one figure per data set x scenario."""
    directory.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.get("rounds"):
            groups[(r["dataset"], r["scenario"])].append(r)
    written = []
    for (dataset, scenario), rows in sorted(groups.items()):
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        metric = PRIMARY[dataset]
        for method in dict.fromkeys(r["method"] for r in rows):
            first = next(r for r in rows if r["method"] == method)  # the first seed
            rounds = [x["round"] for x in first["rounds"]]
            axes[0].plot(rounds, [x["train_loss"] for x in first["rounds"]], label=method)
            axes[1].plot(rounds, [x["update_norm"] for x in first["rounds"]], label=method)
            evaluated = [
                (x["round"], x["evaluation"][metric])
                for x in first["rounds"]
                if metric in x["evaluation"]
            ]
            if evaluated:
                axes[2].plot(*zip(*evaluated, strict=True), marker="o", label=method)
        for ax, title in zip(axes, ("train loss", "update norm", metric), strict=True):
            ax.set(title=title, xlabel="round")
        axes[0].legend(fontsize="small")
        figure.suptitle(f"{dataset}, {scenario}")
        figure.tight_layout()
        path = directory / f"{dataset}-{scenario}.png".replace("/", "_")
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written
