"""Results as Markdown tables (mean ± std over seeds, the paper's layout) and PNG plots."""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Metric keys are '<source>/<metric>': a task (hateful_memes, crisismmd) or a Med-VQA data set
# (vqa_rad, slake; 'vqa' for questions without a source), each with its paper's metric first.
PRIMARY = {
    "hateful_memes": "auc",
    "crisismmd": "macro_f1",
    "crisismmd_agreed": "macro_f1",
    "vqa_rad": "overall",
    "slake": "overall",
    "vqa": "overall",
}
_SLAKE_LANGUAGES = {"en": "SLAKE: English questions only", "all": "SLAKE: every language"}


def ordered_metrics(found: set[str]) -> list[str]:
    """Metric keys by source (in PRIMARY's order), the source's primary metric first; counts
    (unjudged answers) are left out."""
    sources = sorted(
        {m.split("/")[0] for m in found},
        key=lambda s: (list(PRIMARY).index(s) if s in PRIMARY else len(PRIMARY), s),
    )
    ordered = []
    for source in sources:
        mine = sorted(m for m in found if m.split("/")[0] == source)
        primary = f"{source}/{PRIMARY.get(source, '')}"
        ordered += [m for m in mine if m == primary] + [m for m in mine if m != primary]
    return [m for m in ordered if not m.endswith("/unjudged")]


def _note(metric: str, rows: list[dict[str, Any]]) -> str:
    if not metric.startswith("slake/"):
        return ""
    languages = sorted({str(r.get("slake_languages", "en")) for r in rows})
    return "; " + " / ".join(_SLAKE_LANGUAGES.get(x, x) for x in languages)


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
        f"### {dataset}: {metric} (x100, mean ± std over seeds{_note(metric, rows)})",
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
    """Per data set: methods x scenarios for each metric, source by source (VQA-RAD and SLAKE
    apart), each source's primary metric first; then bytes moved per round."""
    lines: list[str] = []
    for dataset in sorted({r["dataset"] for r in results}):
        rows = [r for r in results if r["dataset"] == dataset]
        for metric in ordered_metrics({m for r in rows for m in r["metrics"]}):
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


def per_seed_tables(results: list[dict[str, Any]]) -> str:
    """Per data set and source: each cell's value per seed (x100, seeds in order), so that a
    mean ± std can be read with the values behind it."""
    lines: list[str] = []
    for dataset in sorted({r["dataset"] for r in results}):
        rows = [r for r in results if r["dataset"] == dataset]
        found = {m for r in rows for m in r["metrics"]}
        for metric in (m for m in ordered_metrics(found) if m.split("/")[1] == _primary(m)):
            scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
            lines += [
                f"### {dataset}: {metric} per seed (x100, seeds in order{_note(metric, rows)})",
                "",
                "| method | " + " | ".join(scenarios) + " |",
                "|---|" + "---|" * len(scenarios),
            ]
            for method in dict.fromkeys(r["method"] for r in rows):
                cells = []
                for scenario in scenarios:
                    mine = sorted(
                        (r["seed"], r["metrics"][metric])
                        for r in rows
                        if r["method"] == method and r["scenario"] == scenario
                        if metric in r["metrics"]
                    )
                    cells.append(" / ".join(f"{100 * v:.1f}" for _, v in mine) or "n/a")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _primary(metric: str) -> str:
    return PRIMARY.get(metric.split("/")[0], "")


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
        found = {m for r in rows for x in r["rounds"] for m in x["evaluation"]}
        metric = (ordered_metrics(found) or ["(no evaluation)"])[0]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="A grid's tables (mean ± std, then per seed) and plots from results.jsonl.",
    )
    parser.add_argument("results", type=Path, help="a grid's results.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    parser.add_argument("--plots", type=Path, help="a folder for the per-round figures")
    args = parser.parse_args(argv)
    text = args.results.read_text(encoding="utf-8")
    results = [json.loads(line) for line in text.splitlines() if line.strip()]
    args.out.write_text(tables(results) + "\n" + per_seed_tables(results), encoding="utf-8")
    if args.plots is not None:
        plots(results, args.plots)


if __name__ == "__main__":
    main()
