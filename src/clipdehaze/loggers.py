"""A CSV logger that keeps a run's history across ``resume=auto``.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts in a non-empty folder, so a resumed
run (or a requeued SLURM job) lost every row logged before the interruption. ``ResumableCSVLogger`` appends
instead; :meth:`ResumableCSVLogger.keep_until` drops the rows logged after the step the resume checkpoint was
saved at, which the resumed run logs again.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Instead of deleting the earlier metrics.csv, adopt its header: new rows are appended below it, and a new
        # column makes Lightning rewrite the file with the wider header (keeping every row).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def keep_until(self, step: int) -> int:
        """Drop the rows whose ``step`` is after ``step``; returns how many were dropped."""
        if not self._fs.isfile(self.metrics_file_path):
            return 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or float(r["step"]) <= step]
        if len(kept) == len(rows):
            return 0
        tmp = self.metrics_file_path + ".tmp"
        with self._fs.open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.metrics_file_path)
        return len(rows) - len(kept)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` (same arguments) that appends to an existing ``metrics.csv`` instead of deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def keep_until(self, step: int) -> int:
        """Before resuming from a checkpoint saved at global step ``step``: forget the rows logged after it."""
        return self.experiment.keep_until(step)
