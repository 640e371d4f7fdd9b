"""`fedmllm-bench --trust-remote-code`: the baselines load a model that ships its own code, and
the federation's coordinator is started from an adapter made with that code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.data.synthetic_data import tokenizer_corpus
from bench.federated import FederationProcesses
from bench.runner import main
from shared.adapter import load_adapter_directory
from silo_agent.model import load_silo_model
from tests.silo_agent.remote_code_model import write_remote_code_model


@pytest.fixture(scope="module")
def remote_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_remote_code_model(
        tmp_path_factory.mktemp("bench-remote") / "minicpmv", corpus=tokenizer_corpus()
    )


def test_baselines_run_on_a_remote_code_model(remote_model: Path, tmp_path: Path) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(f"""
out: {tmp_path / "out"}
model: {remote_model}
datasets:
  - {{name: hateful_memes, train: 16, test: 8}}
scenarios:
  - {{scenario: aligned, alpha: 5.0, label: aligned}}
methods: [zero_shot, local]
seeds: [0]
clients: 2
local_baseline_epochs: 1
batch_size: 8
""")
    with pytest.raises(SystemExit, match="--trust-remote-code"):
        main(["--config", str(config)])
    main(["--config", str(config), "--trust-remote-code"])
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in lines] == ["zero_shot", "local"]
    assert all(set(r["metrics"]) == {"hateful_memes/accuracy", "hateful_memes/auc"} for r in lines)


def test_the_coordinator_starts_from_an_adapter_made_with_the_models_code(
    remote_model: Path, tmp_path: Path
) -> None:
    processes = FederationProcesses(
        workdir=tmp_path / "run",
        model=remote_model,
        certs=tmp_path / "certs",
        client_dirs=[],
        test_dir=tmp_path,
        trust_remote_code=True,
    )
    flag, adapter = processes._coordinator_args()
    assert flag == "--adapter"
    lora, state = load_adapter_directory(Path(adapter))
    silo = load_silo_model(remote_model, device="cpu", trust_remote_code=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(t.shape) for k, t in silo.adapter_layout.items()
    }
    assert lora.r == silo.lora.r and lora.target_modules == silo.lora.target_modules
