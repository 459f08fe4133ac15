"""The convergence study: how many steps does a codec need in this world?

Training budgets should come from measurement, not habit. The study reads the validation
logs of the reproduction's own training runs (real bytes on validation images, every
``val_every`` steps; the test split is never looked at) and tabulates and plots them:

* the **base MSE codec** (one rate point, from scratch): bpp and PSNR against steps;
* the **variable-rate MSE codec** fine-tuned from it: the same at every rate point;
* one **ICM codec** (detection, the paper's dynamic weighting): bpp and the detector's
  mAP on the decoded validation images against steps, at every rate point.

``python -m icmlib.evaluation.convergence --preset cpu`` trains what is missing (train-or-load, the
same recipe and cache as the book) and writes ``data/results/<preset>/convergence.json``
(with command, commit and hardware), ``convergence.md`` and ``convergence.png``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from icmlib.presets import Preset, get_preset

#: (name, task, strategy) of the runs the study follows
STUDY_TASK, STUDY_STRATEGY = "detection", "dynamic"


def study_runs(preset: Preset, progress: bool = True) -> Dict[str, Dict[str, Any]]:
    """The checkpoint dicts (with logs) of the runs the study reads, trained if missing."""
    from icmlib.training import codec_run

    base = preset.replace(variable_rate=False)
    runs = {"MSE base (one rate, from scratch)":
            codec_run(base, None, "mse", max(preset.codec_base_rate, 0), progress=progress)}
    if preset.variable_rate:
        runs["MSE (variable rate)"] = codec_run(preset, None, "mse", 0, progress=progress)
    runs[f"ICM {STUDY_STRATEGY} ({STUDY_TASK})"] = codec_run(
        preset, STUDY_TASK, STUDY_STRATEGY, 0 if preset.variable_rate else preset.codec_base_rate,
        progress=progress)
    return runs


def convergence_rows(runs: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (run, rate point, validation): step, bpp, PSNR, task score."""
    rows = []
    for name, ckpt in runs.items():
        meta = ckpt.get("meta", {})
        lambdas = meta.get("rate")
        for v in ckpt.get("logs", {}).get("val", []):
            r = v.get("rate_index")
            r = meta.get("rate_index") if r is None or (isinstance(r, float) and math.isnan(r)) else int(r)
            lam = lambdas[r] if isinstance(lambdas, list) else lambdas
            rows.append({"run": name, "rate_index": r, "lambda": lam, "step": int(v["step"]),
                         "bpp": v.get("bpp"), "psnr": v.get("psnr"),
                         "task_score": v.get("task_score"), "steps": meta.get("steps")})
    return rows


def plot_convergence(rows: List[Dict[str, Any]], axes=None):
    """PSNR and bpp of the MSE runs, and mAP and bpp of the ICM run, against steps."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(15, 4))
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["run"], row["lambda"]), []).append(row)
    for (run, lam), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        rs = sorted(rs, key=lambda r: r["step"])
        steps = [r["step"] for r in rs]
        label = f"{run}, λ={lam:g}"
        if rs[0]["task_score"] is None or not _finite(rs[0]["task_score"]):
            axes[0].plot(steps, [r["psnr"] for r in rs], marker=".", label=label)
        else:
            axes[1].plot(steps, [r["task_score"] for r in rs], marker=".", label=label)
        axes[2].plot(steps, [r["bpp"] for r in rs], marker=".", label=label)
    titles = ("MSE codecs: PSNR on validation images (dB)",
              "ICM codec: detector mAP on decoded validation images", "real bpp (both streams)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    return axes


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def convergence_markdown(rows: List[Dict[str, Any]], provenance: Dict[str, Any]) -> str:
    lines = ["# Convergence study", "",
             f"- command: `{provenance['command']}`", f"- commit: `{provenance['commit']}`",
             f"- hardware: {provenance['hardware']}", "",
             "Validation images only (the test split chose nothing). Real bytes.", ""]
    for run in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == run]
        lines += [f"## {run}", "", "| step | λ | bpp | PSNR (dB) | task score |",
                  "|---|---|---|---|---|"]
        for r in sorted(rs, key=lambda r: (r["step"], r["lambda"] or 0)):
            score = f"{r['task_score']:.4f}" if _finite(r["task_score"]) else ""
            lines.append(f"| {r['step']} | {r['lambda']:g} | {r['bpp']:.4f} | "
                         f"{r['psnr']:.2f} | {score} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_convergence(preset: Union[Preset, str, None] = None,
                      out: Union[str, Path, None] = None, *, command: Optional[str] = None,
                      progress: bool = True) -> Dict[str, Path]:
    """Run (or load) the study's runs and write ``convergence.{json,md,png}`` into ``out``."""
    from matplotlib.figure import Figure

    from icmlib.evaluation.results import cpu_model, git_commit

    preset = get_preset(preset)
    out = Path(out) if out is not None else Path("data") / "results" / preset.name
    out.mkdir(parents=True, exist_ok=True)
    rows = convergence_rows(study_runs(preset, progress))
    provenance = {"command": command or f"python -m icmlib.evaluation.convergence --preset {preset.name}",
                  "commit": git_commit(), "hardware": cpu_model(), "preset": preset.name}
    files = {"json": out / "convergence.json", "md": out / "convergence.md",
             "png": out / "convergence.png"}
    files["json"].write_text(json.dumps({**provenance, "rows": rows}, indent=1) + "\n")
    files["md"].write_text(convergence_markdown(rows, provenance))
    fig = Figure(figsize=(16, 4.2))
    plot_convergence(rows, fig.subplots(1, 3))
    fig.tight_layout()
    fig.savefig(files["png"], dpi=110)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m icmlib.evaluation.convergence",
        description="The convergence study: bpp, PSNR and task mAP against training steps "
                    "for the reproduction's MSE and ICM codecs (trains what is missing).")
    parser.add_argument("--preset", default=None, help="ci, cpu or gpu (default: $ICM_PRESET)")
    parser.add_argument("--out", default=None, help="folder (default: data/results/<preset>/)")
    args = parser.parse_args(argv)
    files = write_convergence(args.preset, args.out)
    print("\n".join(f"wrote {p}" for p in files.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
