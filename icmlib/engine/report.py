"""One reporter for a training run: CSV logs, TensorBoard (when installed) and a progress bar.

Every run writes the same things in the same places, whatever it trains:

* **CSV logs** in the run's folder, one file per kind of row (``train_log.csv`` every
  step, ``val_log.csv`` every validation), read back by :func:`read_log` for the book's
  plots. A resumed run keeps the rows up to its checkpoint's step and drops the rest: a
  killed run may have logged steps that the resumed run will now do again.
* **TensorBoard** scalars, if ``tensorboard`` is installed, in ``<folder>/tensorboard``.
* **a tqdm bar** with the latest values. Lines said during the run (a validation's
  result) go under the bar in a terminal; in a notebook, where the bar is a widget and a
  chapter page should show a summary rather than a log, the last one is printed once, at
  the end.

Only the main process of a distributed run reports; on the others the reporter is mute.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = ["Reporter", "CSVLog", "read_log"]


def read_log(path: Union[str, Path]) -> List[Dict[str, float]]:
    """A CSV log written by the trainer, as a list of dicts of floats (empty cells → NaN)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else float("nan")) for k, v in r.items()})
    return rows


def _fmt(v):
    if isinstance(v, float):
        return repr(v)  # full precision, so resumed and uninterrupted logs compare exactly
    return v


class CSVLog:
    """Append rows to a CSV; the columns are fixed by the first row (or the existing header).

    ``keep_until=None`` starts a new file; a step number keeps the existing rows up to
    that step (resume).
    """

    def __init__(self, path: Path, keep_until: Optional[int] = None):
        self.path = Path(path)
        self.fields: Optional[List[str]] = None
        if keep_until is None:
            if self.path.exists():
                self.path.unlink()
        elif self.path.exists():
            self._truncate(keep_until)
        self._file = None

    def _truncate(self, keep_until: int) -> None:
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            self.fields = list(reader.fieldnames or [])
            kept = [r for r in reader if r.get("step") and float(r["step"]) <= keep_until]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, self.path)

    def write(self, row: Mapping[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            self._file = open(self.path, "w", newline="")
            csv.DictWriter(self._file, fieldnames=self.fields).writeheader()
        if self._file is None:
            self._file = open(self.path, "a", newline="")
        w = csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore")
        w.writerow({k: _fmt(row.get(k, "")) for k in self.fields})
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _tensorboard(folder: Path, start: int):
    try:  # TensorBoard when installed
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(folder / "tensorboard"), purge_step=start)
    except Exception:
        return None


def bar_is_a_widget(bar) -> bool:
    """True for tqdm's notebook (ipywidgets) bar: there, lines written under the bar pile
    up into a long log on the chapter's page, so they are summed up instead."""
    return type(bar).__module__.startswith("tqdm.notebook")


def duration(seconds: float) -> str:
    """``12.3 s`` or ``4.5 min``."""
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class Reporter:
    """CSV logs in ``folder`` (``logs``: name → file name), TensorBoard, and a bar.

    Args:
        folder: the run's folder (``None``: no files, no TensorBoard).
        logs: ``{"train": "train_log.csv", ...}``, the CSV files :meth:`log` writes.
        resume_at: a resumed run's first step (keeps the logs' rows up to it), or
            ``None`` for a fresh run (the logs start empty).
        total, desc: the bar's length and label; ``progress=False``: no bar.
        active: ``False`` on the processes that must stay silent (DDP ranks > 0).
        bar_options: more keywords for ``tqdm`` (``unit``, ``leave``...).
    """

    def __init__(self, folder: Optional[Path] = None, logs: Mapping[str, str] = (), *,
                 resume_at: Optional[int] = None, total: Optional[int] = None, desc: str = "",
                 progress: bool = True, active: bool = True, **bar_options):
        start = resume_at or 0
        self.desc, self.start, self.t_start = desc, start, time.time()
        self.logs: Dict[str, CSVLog] = {}
        self.writer = None
        self.bar = None
        self.last_said: List[str] = []
        self.steps_done = 0
        if not active:
            return
        if folder is not None:
            self.logs = {name: CSVLog(Path(folder) / file, keep_until=resume_at)
                         for name, file in dict(logs).items()}
            self.writer = _tensorboard(Path(folder), start)
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=start, desc=desc, **bar_options)

    def log(self, name: str, row: Mapping[str, Any]) -> None:
        """Append ``row`` to the CSV log ``name``."""
        if name in self.logs:
            self.logs[name].write(row)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """TensorBoard scalars ``<prefix>/<key>`` at ``step`` (the key ``step`` left out)."""
        if self.writer is not None:
            for k, v in values.items():
                if k != "step":
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def advance(self, postfix: Optional[Mapping[str, str]] = None, n: int = 1) -> None:
        """Move the bar ``n`` steps on and show ``postfix`` beside it."""
        if self.bar is not None:
            self.bar.update(n)
            if postfix is not None:
                self.bar.set_postfix(postfix, refresh=False)

    def say(self, line: str) -> None:
        """A line under the bar in a terminal; in a notebook the last one is kept for the
        summary :meth:`close` prints."""
        if self.bar is None:
            return
        if bar_is_a_widget(self.bar):
            self.last_said[:] = [line]
        else:
            self.bar.write(line)

    def close(self) -> None:
        """Close the bar and the files (call it in a ``finally``)."""
        if self.bar is not None:
            self.steps_done = self.bar.n - self.start
            self.bar.close()
            self.bar = None
        for log in self.logs.values():
            log.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def summary(self, label: str) -> None:
        """In a notebook, after a run that went to its end: one line
        ``[icmlib] trained <what>: N steps in <time>; <label>, <the last line said>``
        (``<what>``: the bar's label, without a leading "train")."""
        if self.last_said:
            what = self.desc[len("train "):] if self.desc.startswith("train ") else self.desc
            print(f"[icmlib] trained {what}: {self.steps_done} steps in "
                  f"{duration(time.time() - self.t_start)}; {label}, {self.last_said[0]}")
