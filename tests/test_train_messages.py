"""Messages of the engine's runners go through stdlib logging (no prints, no log=print default)."""

from __future__ import annotations

import logging

from test_fewshot import FakeTrain, _cfg

from clora3d.engine.fewshot import run_fewshot


def test_fewshot_progress_goes_to_its_logger_not_stdout(tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="clora3d.engine.fewshot"):
        run_fewshot(_cfg(), tmp_path, ways=[5], shots=[10], folds=[0, 1], train_fn=FakeTrain())
    msgs = [r.getMessage() for r in caplog.records if r.name == "clora3d.engine.fewshot"]
    # one "training in" line and one result line per fold (FakeTrain: best = 90 + fold, epoch 3)
    assert sum("5way10shot fold" in m and "training in" in m for m in msgs) == 2
    assert any("best 91.00 (epoch 3), last 81.00" in m for m in msgs)
    assert capsys.readouterr().out == ""
    # a second call skips the finished folds and says so, still through the logger
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clora3d.engine.fewshot"):
        run_fewshot(_cfg(), tmp_path, ways=[5], shots=[10], folds=[0, 1], train_fn=FakeTrain())
    assert sum("done before" in r.getMessage() for r in caplog.records) == 2
    assert capsys.readouterr().out == ""
