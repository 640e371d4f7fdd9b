"""The committed stubs are exactly what `make proto` generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "shared/wire/v1/federation.proto"


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(ROOT / "proto" / PROTO),
        ],
        check=True,
    )
    generated = sorted((tmp_path / "shared/wire/v1").glob("federation_pb2*"))
    assert [p.name for p in generated] == [
        "federation_pb2.py",
        "federation_pb2.pyi",
        "federation_pb2_grpc.py",
    ]
    for path in generated:
        committed = ROOT / "shared/wire/v1" / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run make proto"


def test_stubs_import_without_edits() -> None:
    from shared.wire.v1 import federation_pb2, federation_pb2_grpc

    assert federation_pb2.DESCRIPTOR.package == "fedmllm.v1"
    assert hasattr(federation_pb2_grpc, "SiloStub") and hasattr(federation_pb2_grpc, "AdminStub")
