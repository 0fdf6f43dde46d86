"""RunLogger: messages go through stdlib logging (they were printed) and, time-stamped, to log.txt;
JSON run files are strict JSON through storage.to_plain."""

from __future__ import annotations

import json
import logging
import re

import torch

from clora3d.engine.logging import RunLogger


def test_info_logs_and_appends_to_log_txt(tmp_path, caplog, capsys):
    run = RunLogger(tmp_path / "run", tensorboard=False)
    with caplog.at_level(logging.INFO, logger="clora3d.engine.logging"):
        run.info("epoch 0: acc = 25.0\nsecond line")
    run.close()
    assert capsys.readouterr().out == ""
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("clora3d.engine.logging", logging.INFO, "epoch 0: acc = 25.0\nsecond line")
    ]
    lines = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert len(lines) == 2
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert re.fullmatch(stamp + "epoch 0: acc = 25.0", lines[0]) and re.fullmatch(stamp + "second line", lines[1])


def test_disabled_rank_logs_and_writes_nothing(tmp_path, caplog):
    run = RunLogger(tmp_path / "other", enabled=False, tensorboard=False)
    with caplog.at_level(logging.DEBUG):
        run.info("hello")
        run.write_json("result.json", {"a": 1})
    assert not caplog.records and not (tmp_path / "other").exists()


def test_json_files_are_strict_json(tmp_path):
    run = RunLogger(tmp_path / "run", tensorboard=False)
    run.write_json("result.json", {"acc": torch.tensor(float("nan")), "path": tmp_path, "n": (1, 2)})
    run.write_history([{"epoch": 0, "loss": float("inf")}])
    run.close()
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == {
        "acc": "nan",
        "path": str(tmp_path),
        "n": [1, 2],
    }
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"epoch": 0, "loss": "inf"}\n'
