"""The result of a training run: last and best epoch (+ test set and vote@N), the protocol in effect.

:func:`final_report` is what ``train()`` returns and writes to ``result.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clora3d.engine.callbacks import BEST_CKPT, load_checkpoint
from clora3d.engine.distributed import barrier
from clora3d.engine.tasks import fmt
from clora3d.errors import ConfigError

__all__ = ["final_report", "protocol", "scalars"]


def final_report(trainer: Any) -> dict[str, Any]:
    """``{"run_dir", "task", "selected_on", "protocol", "last", "best", "history"}`` of a finished run.

    With selection on ``val`` the test set is evaluated for the last and the best epoch's weights
    (read back from ``ckpt-best.pth``); ``eval.vote`` adds vote@N the same way. The model holds the
    last epoch's weights again afterwards.
    """
    cfg, split, task, model = trainer.cfg, trainer.select_split, trainer.task, trainer.model
    if not trainer.history:
        raise ConfigError(
            f"nothing to do: the run in {trainer.run_dir} already finished train.epochs={cfg['train']['epochs']}"
        )
    last_epoch = trainer.history[-1]["epoch"]
    evals = [h for h in trainer.history if split in h]
    last = {"epoch": last_epoch, **(evals[-1][split] if evals and evals[-1]["epoch"] == last_epoch else {})}
    best = dict(trainer.best) if trainer.best else {"epoch": None}
    task.finish_best(best, evals, split, trainer.log)
    vote, passes = cfg["eval"]["vote"], cfg["eval"]["vote_passes"]
    need_test = split == "val" and trainer.test_loader is not None
    if need_test or vote:
        last_state = {k: v.clone() for k, v in model.state_dict().items()}
        _final_evaluations(trainer, last, need_test, vote, passes)
        if best.get("epoch") is not None and cfg["train"]["save_best"]:
            barrier()
            model.load_state_dict(load_checkpoint(trainer.run_dir / BEST_CKPT)["model"])
            _final_evaluations(trainer, best, need_test, vote, passes)
            model.load_state_dict(last_state)
    key = task.select_key
    trainer.log.info(
        f"done. last epoch {last_epoch}: {key} = {fmt(last, key)}; best epoch "
        f"{best.get('epoch')} (selected on {split}): {key} = {fmt(best, key)}"
        + (f"; test: last {last['test'].get(key)}, best {best.get('test', {}).get(key)}" if "test" in last else "")
        + (
            f"; vote@{vote} (first pass): last {last.get(f'acc_vote@{vote}')}, best {best.get(f'acc_vote@{vote}')}"
            if vote
            else ""
        )
        + (
            f"; vote@{vote} best of {passes} passes (reference protocol"
            f"{'' if passes == 299 else ' with 299'}): last "
            f"{last.get(f'acc_vote@{vote}_max_of_{passes}')}, best "
            f"{best.get(f'acc_vote@{vote}_max_of_{passes}')}"
            if vote and passes > 1
            else ""
        )
    )
    return {
        "run_dir": str(trainer.run_dir),
        "task": task.name,
        "selected_on": split if task.selects else "last",
        "protocol": protocol(cfg, task, split),
        "last": last,
        "best": best,
        "history": trainer.history,
    }


def _final_evaluations(trainer: Any, into: dict[str, Any], need_test: bool, vote: int, passes: int) -> None:
    """The test set (when selection ran on val) and vote@N of the model as it is now."""
    if need_test:
        into["test"] = scalars(trainer._evaluate(trainer.test_loader))
    if vote:
        into.update(_vote_keys(trainer._evaluate(trainer.test_loader, vote=vote, vote_passes=passes)))


def protocol(cfg: Mapping[str, Any], task: Any, select_split: str) -> dict[str, Any]:
    """The protocol knobs in effect, labelled (reference value vs clora3d switch), for results."""
    fb = cfg["model"]["frozen_bn"]
    out: dict[str, Any] = {
        "frozen_bn": fb
        + (
            " (reference: frozen BN statistics drift)"
            if fb == "train"
            else " (strict: frozen BN statistics fixed; the references let them drift)"
        ),
        "grad_clip": cfg["train"]["grad_clip"],
    }
    out.update(task.protocol(select_split))
    return out


def _vote_keys(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k.startswith("acc_vote@")}


def scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Numeric entries (and the per-category table) of an evaluation result."""
    from clora3d.storage import to_plain

    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v) if isinstance(v, float) else int(v)
        elif k == "per_category" and isinstance(v, Mapping):
            out[k] = to_plain(v)
    return out
