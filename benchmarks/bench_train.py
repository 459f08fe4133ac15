"""Training step time per preset: the codec alone (MSE) and the codec + each task network.

    .venv/bin/python benchmarks/bench_train.py [--presets ci cpu] [--steps 6] [--threads 1 2]

Runs the real training loop (``icmlib.training.train_codec``: data, forward, loss, backward,
clipping, both optimizers) for a few steps per configuration, drops the first two
(warm-up), and reports the median wall-clock and CPU (process) seconds per step. The task
networks are built *untrained* (``build_task_network``) so the benchmark does not first
train them for minutes; their training-mode cost does not depend on their weights (fixed
proposal and RoI sample counts).

Writes ``data/benchmarks/train_<device>.json`` and ``.md`` with the command, commit, CPU,
date and the machine's load average: on a shared machine the wall time is inflated by
other processes, while the CPU seconds of a one-thread run are what the step itself costs.
The estimate for a whole run is ``steps × seconds per step``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from icmlib.evaluation.results import cpu_model, git_commit

ROOT = Path(__file__).resolve().parents[1]


def bench_one(preset_name: str, task, threads: int, steps: int) -> dict:
    import icmlib.tasks as tasks
    from icmlib.presets import get_preset
    from icmlib.training import train_codec

    torch.set_num_threads(threads)
    preset = get_preset(preset_name, val_every=10 ** 9, checkpoint_every=10 ** 9,
                        train_threads=threads)
    real_task_network = tasks.task_network
    tasks.task_network = lambda t, p=None, **kw: tasks.build_task_network(t, p)
    cpu_marks = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cpu_marks.append(time.process_time())
            result = train_codec(preset, task=task, strategy="fixed" if task else "mse",
                                 steps=steps, out_dir=tmp, progress=False,
                                 on_step=lambda s, row: cpu_marks.append(time.process_time()))
    finally:
        tasks.task_network = real_task_network
    rows = result["logs"]["train"]
    wall = [r["seconds"] for r in rows][2:]
    cpu = [b - a for a, b in zip(cpu_marks, cpu_marks[1:])][2:]
    batch = (preset.icm_batch_size or preset.batch_size) if task else preset.batch_size
    crop = (preset.icm_crop_size or preset.crop_size) if task else preset.crop_size
    run_steps = preset.icm_steps if task else preset.codec_steps
    wall_s, cpu_s = statistics.median(wall), statistics.median(cpu)
    return {"preset": preset_name, "what": f"codec + {task}" if task else "codec alone (MSE)",
            "threads": threads, "batch": batch, "crop": crop, "measured_steps": len(wall),
            "wall_s_per_step": round(wall_s, 4), "cpu_s_per_step": round(cpu_s, 4),
            "preset_steps": run_steps,
            "run_minutes_wall": round(run_steps * wall_s / 60, 1),
            "run_minutes_cpu": round(run_steps * cpu_s / 60, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["ci", "cpu"])
    parser.add_argument("--tasks", nargs="+", default=["none", "detection", "instance", "semantic"])
    parser.add_argument("--steps", type=int, default=7, help="steps per configuration (first 2 dropped)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--out", default=str(ROOT / "data" / "benchmarks"))
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    load_before = os.getloadavg()
    results = []
    for preset in args.presets:
        for task in args.tasks:
            for threads in args.threads:
                r = bench_one(preset, None if task == "none" else task, threads, args.steps)
                print(json.dumps(r), flush=True)
                results.append(r)
    load_after = os.getloadavg()
    info = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "commit": git_commit(ROOT),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else cpu_model(),
        "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "note": ("Median over the measured steps of the real training loop. The machine was "
                 "shared with other jobs (see load averages): wall times are inflated by them; "
                 "cpu_s_per_step of a 1-thread run is the step's own cost, i.e. about the wall "
                 "time on an idle core. run_minutes = preset steps x seconds per step."),
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train_{device}.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = [f"# Training step time ({device})", "",
             f"- command: `{info['command']}`", f"- commit: {info['commit']}",
             f"- date: {info['date']}", f"- device: {info['device']} ({info['cores']} cores), "
             f"torch {info['torch']}",
             f"- load average before/after: {info['load_average_before']} / {info['load_average_after']}",
             f"- {info['note']}", "",
             "| preset | what | threads | batch×crop | wall s/step | CPU s/step | preset steps "
             "| run min (wall) | run min (CPU) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['preset']} | {r['what']} | {r['threads']} | {r['batch']}×{r['crop']}² | "
                     f"{r['wall_s_per_step']:.3f} | {r['cpu_s_per_step']:.3f} | {r['preset_steps']} | "
                     f"{r['run_minutes_wall']} | {r['run_minutes_cpu']} |")
    (out / f"train_{device}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / f'train_{device}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
