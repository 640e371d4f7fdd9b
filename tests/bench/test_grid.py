"""`fedmllm-bench`: a 3-cell grid end to end (Zero-shot in process; FedAvg and FedAdam as two
runs of one set of real coordinator and silo-agent processes), its report, and resuming; the
medical setting with VQA-RAD and SLAKE scored apart through the coordinator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.config import BenchConfigError, load_config
from bench.runner import main


def test_small_grid_runs_reports_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
out: {tmp_path / "out"}
datasets:
  - {{name: hateful_memes, train: 48, test: 16}}
scenarios:
  - {{scenario: hybrid, keep_prob: 0.6, label: hybrid-60}}
methods: [zero_shot, {{name: fedavg, label: FedAvg}}, {{name: fedadam, label: FedAdam, eta: 0.01}}]
seeds: [0]
clients: 2
silos_per_round: 2
rounds: 2
batch_size: 8
format_steps: 2
""")
    main(["--config", str(config)])
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in lines] == ["zero_shot", "FedAvg", "FedAdam"]
    zero, fedavg, fedadam = lines
    assert set(zero["metrics"]) == {"hateful_memes/accuracy", "hateful_memes/auc"}
    assert zero["rounds"] == []
    assert [r["round"] for r in fedavg["rounds"]] == [1, 2]
    assert set(fedavg["metrics"]) == {"hateful_memes/accuracy", "hateful_memes/auc"}
    assert all(r["bytes_sent"] > 0 and r["update_norm"] > 0 for r in fedavg["rounds"])
    assert fedadam["metrics"] and fedadam["rounds"][-1]["round"] == 2
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 1  # one set of processes
    report = (tmp_path / "out" / "results.md").read_text()
    assert "| FedAvg |" in report and "| zero_shot |" in report and "hybrid-60" in report
    assert (tmp_path / "out" / "plots" / "hateful_memes-hybrid-60.png").stat().st_size > 0
    capsys.readouterr()
    main(["--config", str(config)])  # resumes: nothing left to run
    assert capsys.readouterr().out.count("done earlier") == 3
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 3


def test_zero_shot_runs_once_per_test_split_and_a_scenario_may_run_fewer_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
out: {tmp_path / "out"}
datasets:
  - {{name: hateful_memes, train: 24, test: 8}}
scenarios:
  - {{scenario: aligned, alpha: 1.0, label: aligned, seeds: [0]}}
  - {{scenario: hybrid, keep_prob: 0.6, seeds: [1, 2]}}
methods: [zero_shot]
seeds: [0, 1, 2]
clients: 2
format_steps: 2
base_layers: 3
""")
    main(["--config", str(config)])
    capsys.readouterr()
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["scenario"], r["seed"]) for r in lines] == [
        ("aligned", 0),
        ("hybrid-keep_prob0.6", 1),
        ("hybrid-keep_prob0.6", 2),
    ]
    # the test split is the same in every partition: evaluated once, the same numbers thrice
    assert len({r["zero_shot_test_digest"] for r in lines}) == 1
    assert all(r["metrics"] == lines[0]["metrics"] for r in lines)
    model = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert model["text_config"]["num_hidden_layers"] == 3


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(
        "datasets: [hateful_memes]\nscenarios: [sideways]\nmethods: [fedavg]\nseeds: [0]\n"
    )
    with pytest.raises(BenchConfigError, match="unknown scenario"):
        load_config(config)
    config.write_text(
        "datasets: [hateful_memes]\nscenarios: [aligned]\nmethods: [fedavg]\nseeds: [0]\nround: 3\n"
    )
    with pytest.raises(BenchConfigError, match="unknown key"):
        load_config(config)
    config.write_text(
        "datasets: [slake]\nscenarios: [aligned]\nmethods: [zero_shot, local]\nseeds: [0]\n"
    )
    with pytest.raises(BenchConfigError, match=r"slake has no training split.*\(not local\)"):
        load_config(config)
    config.write_text(
        "datasets: [{name: med, parts: [vqa_rad, mednli]}]\nscenarios: [cross]\n"
        "methods: [zero_shot]\nseeds: [0]\n"
    )
    with pytest.raises(BenchConfigError, match="unknown data set 'mednli'"):
        load_config(config)
    config.write_text(
        "datasets: [slake]\nscenarios: [cross]\nmethods: [zero_shot]\nseeds: [0]\n"
        "slake_languages: zh\n"
    )
    with pytest.raises(BenchConfigError, match="slake_languages must be one of en, all"):
        load_config(config)
    config.write_text(
        "datasets: [hateful_memes]\nscenarios: [{scenario: cross, seeds: 0}]\n"
        "methods: [zero_shot]\nseeds: [0]\n"
    )
    with pytest.raises(BenchConfigError, match="seeds must be a list of integers"):
        load_config(config)


def test_medical_grid_scores_vqa_rad_and_slake_apart(tmp_path: Path) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
out: {tmp_path / "out"}
datasets:
  - name: medical
    parts:
      - {{name: vqa_rad, train: 16, test: 8}}
      - {{name: medalpaca, train: 16}}
      - {{name: slake, test: 8}}
scenarios: [{{scenario: cross, image_text_ratio: "1:1", label: cross}}]
methods: [zero_shot, {{name: fedavg, label: FedAvg}}]
seeds: [0]
clients: 2
silos_per_round: 2
rounds: 1
format_steps: 2
slake_languages: all
""")
    main(["--config", str(config)])
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    per_source = {f"{s}/{m}" for s in ("vqa_rad", "slake") for m in ("open", "closed", "overall")}
    for line in lines:  # Zero-shot scored in process; FedAvg by the coordinator's eval round
        assert per_source <= set(line["metrics"]), line["metrics"]
        assert line["slake_languages"] == "all" and "|slake_languages=all|" in line["key"]
    assert per_source <= set(lines[1]["rounds"][-1]["evaluation"])
    report = (tmp_path / "out" / "results.md").read_text()
    vqa_rad = report.index("### medical: vqa_rad/overall")
    slake = report.index("### medical: slake/overall (x100, mean ± std over seeds; SLAKE: every")
    assert vqa_rad < slake and "unjudged" not in report
