"""What every study in this folder records: run it on a set number of torch threads, then
write ``data/results/cpu/<name>.json`` (meta + rows) and ``<name>.md`` with the command,
commit, hardware and minutes it took, so that each number quoted elsewhere has its source."""
import json
import platform
import sys
import time
from pathlib import Path

import torch

from icmlib.evaluation.results import cpu_model, git_commit

OUT = Path("data/results/cpu")


def header(title: str, meta, *about: str) -> list:
    """The first lines of a study's table: its title, command, commit, hardware, minutes
    and what it measured (``about``, one bullet each)."""
    return [f"# {title}", "", f"- command: `{meta['command']}` at commit `{meta['commit']}`",
            f"- hardware: {meta['hardware']}; {meta['minutes']:.1f} min",
            *[f"- {line}" for line in about], ""]


def run_study(name: str, command: str, threads: int, measure, markdown, extra_meta=None):
    """``rows = measure()``, then both files written and the table printed; returns rows.

    ``markdown(rows, meta)`` renders the table; ``extra_meta()`` adds to the meta."""
    torch.set_num_threads(threads)
    start = time.time()
    rows = measure()
    unit = "thread" if threads == 1 else "threads"
    meta = {"command": command, "commit": git_commit(),
            "hardware": f"{cpu_model()}, {platform.machine()}, {threads} torch {unit}",
            "minutes": (time.time() - start) / 60, **(extra_meta() if extra_meta else {})}
    (OUT / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (OUT / f"{name}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return rows


def task_and_args(argv, tasks, doc: str):
    """``(task, the other arguments)`` of a study's command line: ``--task NAME`` (one of
    ``tasks``; default detection) and whatever else it takes. ``-h`` prints ``doc`` and gives
    ``(None, [])``; an unknown task exits with a message."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(doc)
        return None, []
    task = "detection"
    if "--task" in args:
        at = args.index("--task")
        task = args[at + 1] if at + 1 < len(args) else ""
        del args[at:at + 2]
        if task not in tasks:
            sys.exit(f"--task takes one of {', '.join(tasks)}, got {task!r}")
    return task, args


def savings_lines(savings, against: str = "the MSE baseline",
                  where: str = "every curve covers", metric: str = "box mAP") -> list:
    """A table of :func:`icmlib.evaluation.oracle.oracle_savings` rows, under the sentence
    that says against which baseline and over which range of ``metric``."""
    lo, hi = savings[0]["range"]
    return [f"BD-rate against {against} at equal {metric} (negative: fewer bits), over the "
            f"lower half, the upper half and the whole of the {metric} range {where}, "
            f"{lo:.3f}–{hi:.3f}:", "",
            "| codec | lower half | upper half | whole range |", "|---|---|---|---|"] + [
        f"| {r['codec']} | " + " | ".join(saving_cells(r)) + " |" for r in savings]


def saving_cells(row) -> tuple:
    """A row of :func:`icmlib.evaluation.oracle.oracle_savings` as three table cells
    (lower half, upper half, whole range), or why there is no number."""
    if row["whole"] is None:
        return f"n/a ({row['note']})", "", ""
    return tuple(f"{row[k]:+.1f} %" for k in ("lower", "upper", "whole"))
