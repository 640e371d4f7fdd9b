"""What `status` and `--follow` print of a round and of a run in progress: rejections,
reselections, failures, clipped and left-out silos, evaluations, why the run waits, each
silo's progress and the ETA; silo-provided text printed sanitised."""

from __future__ import annotations

import time

from coordinator.admin_view import round_line, silo_table, status_text
from shared.wire.v1 import federation_pb2 as pb


def test_a_round_says_what_went_wrong_and_what_was_measured() -> None:
    summary = pb.RoundSummary(
        round=3,
        selected=["a", "b", "c", "d"],
        contributed=["a", "b"],
        mean_train_loss=1.5,
        bytes_sent=2_000_000,
        bytes_received=1_500,
        seconds=42.0,
        rejected=2,
        reselections=["attempt 1: 1 of 2 updates by the deadline (c late)"],
        failures={"d": "out_of_memory: CUDA out of memory\x1b[31m"},
        clipped=["b"],
        excluded=["a"],
        evaluation={"auc": 0.7123, "accuracy": 0.65},
        evaluated_by=["eval-site"],
    )
    assert round_line(summary, 25) == (
        "round 3/25  silos 2/4 (a, b)  mean train loss 1.5000  moved 2.0 MB down / 1.5 kB up  "
        "42.0 s  2 update(s) rejected  "
        "reselected 1x (attempt 1: 1 of 2 updates by the deadline (c late))  "
        "d failed (out_of_memory: CUDA out of memory?[31m)  clipped b  left out a  "
        "eval accuracy 0.6500, auc 0.7123 by eval-site"
    )


def test_a_running_run_says_why_it_waits_how_far_each_silo_is_and_when_it_ends() -> None:
    status = pb.RunStatus(
        run_id="run-1",
        state=pb.RUN_STATE_RUNNING,
        phase=pb.ROUND_PHASE_TRAINING,
        spec=pb.RunSpec(rounds=10),
        completed_rounds=4,
        waiting_reason="round 5: 1 of 2 silos connected; waiting for 1 more",
        round_progress=[
            pb.SiloProgress(silo_id="a", stage="uploaded", seconds=61),
            pb.SiloProgress(silo_id="b", stage="downloaded", seconds=3),
        ],
        eta_s=1500,
    )
    assert status_text(status).splitlines() == [
        "run run-1: running, phase training, 4/10 rounds",
        "waiting: round 5: 1 of 2 silos connected; waiting for 1 more",
        "round 5: a uploaded (61 s), b downloaded (3 s)",
        "estimated time to the end of the run: 25 min",
    ]


def test_list_silos_notes_revocations_and_certificates_about_to_expire() -> None:
    expiry = time.time() + 5 * 86_400
    table = silo_table(
        [
            pb.SiloInfo(silo_id="a", connected=True, num_train_samples=10, state="idle"),
            pb.SiloInfo(silo_id="b", revoked=True, revoked_reason="stolen"),
            pb.SiloInfo(silo_id="c", certificate_not_after=expiry, notes=["straggler"]),
        ]
    ).splitlines()
    assert table[1].split() == ["a", "yes", "10", "0.0s", "idle"]
    assert table[3].split(maxsplit=1) == ["note:", "revoked: stolen"]
    assert table[5:] == [
        f"{'':<20} note: straggler",
        f"{'':<20} note: certificate expires "
        f"{time.strftime('%Y-%m-%d', time.localtime(expiry))}: renew it (fedmllm-certs renew)",
    ]
