"""A body the import's repetition guard set aside as a placeholder can be kept for training
(issue 12): `train --keep BODY` / TrainConfig.keep_labels reach the import both where a run
is checked (TrainingService.start) and where it is built (the worker)."""

from __future__ import annotations

import pytest

from core.errors import ExportInvalid
from core.training.config import TrainConfig

CATCHPHRASE = "sounds good mate"


def _export(path):
    # One exchange a day (a day apart, each is its own training example). Ann answers with
    # the catchphrase, which both say often enough for the guard to take it for a label,
    # and on the last day with words of her own (the held-out reply).
    lines = []
    for day in range(1, 9):
        last = day == 8
        lines.append(f"{day:02d}/04/2022, 10:00 - Bob: what about the boat, part {day}")
        lines.append(f"{day:02d}/04/2022, 10:01 - Ann: " + ("that's all I know, part 8" if last else CATCHPHRASE))
        if day <= 3:
            lines.append(f"{day:02d}/04/2022, 10:02 - Bob: {CATCHPHRASE}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_kept_label_is_trained_on(service, tmp_path, monkeypatch):
    export = _export(tmp_path / "chat.txt")
    assert TrainConfig(keep_labels=CATCHPHRASE).keep_labels == [CATCHPHRASE]
    with pytest.raises(ExportInvalid, match="replies"):  # the catchphrase set aside: too few replies
        service.start(export, "Ann", persona_name="Ann", consent=True, config={"max_steps": 1})
    monkeypatch.setattr(service, "_spawn", lambda run_id: None)  # the worker is not what is tested here
    run_id = service.start(export, "Ann", persona_name="Ann", consent=True, config={"max_steps": 1, "keep_labels": [CATCHPHRASE]})
    assert service.store.training.get(run_id)["config"]["train"]["keep_labels"] == [CATCHPHRASE]


def test_train_keep_reaches_the_config():
    from app import build_parser
    from core.training.cli import _config

    args = build_parser().parse_args(["train", "chat.txt", "--speaker", "Ann", "--persona", "Ann", "--keep", CATCHPHRASE, "--keep", "ok"])
    assert _config(args)["keep_labels"] == [CATCHPHRASE, "ok"]
