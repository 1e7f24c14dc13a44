"""The wrapper every entry point's job runs in (``train``, ``evaluate``, ``predict``): when the job ends, also by an
exception, the loggers it built are finished.

Lightning finalizes its loggers when ``fit`` / ``test`` return or raise, but not a wandb run (``WandbLogger`` leaves
``wandb.finish`` to the caller), and not after a failure outside those calls (loading the best checkpoint, writing
metrics.json). A multirun runs its jobs in one process: a wandb run left open would swallow the next job's logs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any, TypeVar

log = logging.getLogger("clipdehaze")

T = TypeVar("T")

#: The loggers the running job has built (``None`` outside a task: nothing is tracked).
_job_loggers: ContextVar[list[Any] | None] = ContextVar("clipdehaze_job_loggers", default=None)


def track_loggers(loggers: Iterable[Any]) -> None:
    """Hand loggers to the running task, which finishes them when it ends (called by
    :func:`clipdehaze.build.build_trainer`). Outside a task the caller owns them."""
    job = _job_loggers.get()
    if job is not None:
        job.extend(loggers)


def task_wrapper(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` as one job: in ``finally`` every logger the job built is finished, with status ``failed`` (wandb:
    ``exit_code=1``) when ``fn`` raised, so a failed job's wandb run is closed and marked and its CSV / TensorBoard
    rows are on disk."""

    # ``wrapped`` takes ``fn``'s name and module: run as ``python -m clipdehaze.train`` that module is ``__main__``,
    # and the joblib launcher pickles it by value with the globals it names. It therefore names only functions of
    # this module (pickled by reference), never the ContextVar, which cannot be pickled.
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        loggers, token = _start_job()
        failed = True
        try:
            result = fn(*args, **kwargs)
            failed = False
            return result
        finally:
            _end_job(loggers, token, failed)

    return wrapped


def _start_job() -> tuple[list[Any], Any]:
    loggers: list[Any] = []
    return loggers, _job_loggers.set(loggers)


def _end_job(loggers: list[Any], token: Any, failed: bool) -> None:
    _job_loggers.reset(token)
    finish_loggers(loggers, failed=failed)


def finish_loggers(loggers: Iterable[Any], failed: bool = False) -> None:
    """``finalize`` each logger (CSV and TensorBoard write what they hold; Lightning may have done it already, a
    second time writes nothing new), then close the wandb run when one of them is a ``WandbLogger``. A logger that
    cannot be finished is reported, never raised: it must not hide the job's own error."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = list(loggers)
    for lg in loggers:
        try:
            lg.finalize("failed" if failed else "success")
        except Exception as e:  # noqa: BLE001 - see the docstring
            log.warning("could not finish the %s: %s", type(lg).__name__, e)
    if not any(isinstance(lg, WandbLogger) for lg in loggers):
        return
    import wandb

    if wandb.run is not None:
        try:
            wandb.finish(exit_code=1 if failed else 0)
        except Exception as e:  # noqa: BLE001 - see the docstring
            log.warning("could not finish the wandb run: %s", e)
