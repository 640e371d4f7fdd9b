"""`silo-agent` refuses bad options before it reads any data or loads a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from silo_agent.__main__ import main


def test_negative_thread_count_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data", str(tmp_path / "absent"), "--coordinator", "127.0.0.1:1"]
    args += ["--model", str(tmp_path / "absent"), "--threads", "-1"]
    args += ["--cert", "a.pem", "--key", "a.key", "--ca", "ca.pem"]
    with pytest.raises(SystemExit) as ended:
        main(args)
    assert ended.value.code == 2
    assert capsys.readouterr().err == "silo-agent: --threads must be 0 or more, not -1\n"
