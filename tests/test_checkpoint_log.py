"""load_pretrained's report goes through stdlib logging (it printed before); ``log=None`` stays silent
and a callable (the former ``log=print`` style) still works for one release, with a DeprecationWarning."""

from __future__ import annotations

import logging

import pytest
import torch

from clora3d.models import PointTransformer, load_pretrained


def _pair():
    torch.manual_seed(0)
    src = PointTransformer.from_preset("tiny", cls_dim=5)
    dst = PointTransformer.from_preset("tiny", cls_dim=5)
    return src, dst


def test_report_is_logged_not_printed(caplog, capsys):
    src, dst = _pair()
    with caplog.at_level(logging.INFO, logger="clora3d.models.checkpoint"):
        report = load_pretrained(dst, {"base_model": src.state_dict()})
    assert capsys.readouterr().out == ""
    records = [r for r in caplog.records if r.name == "clora3d.models.checkpoint"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert records[0].getMessage() == report.format()
    assert records[0].getMessage().startswith("checkpoint: <in-memory state>  (layout: fine-tune / raw")


def test_log_none_is_silent_and_callable_is_deprecated(caplog):
    src, dst = _pair()
    with caplog.at_level(logging.DEBUG):
        load_pretrained(dst, {"base_model": src.state_dict()}, log=None)
    assert not [r for r in caplog.records if r.name == "clora3d.models.checkpoint"]
    got: list[str] = []
    with pytest.warns(DeprecationWarning, match="log=callable"):
        report = load_pretrained(dst, {"base_model": src.state_dict()}, log=got.append)
    assert got == [report.format()]
    with pytest.raises(ValueError, match="log must be 'logging', None or a callable"):
        load_pretrained(dst, {"base_model": src.state_dict()}, log="print")
