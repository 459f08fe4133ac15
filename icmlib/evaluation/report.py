"""The reproduction's files: ``summary.md``, the BD-rate tables, the figures, the bit maps.

Everything is written from a results dict (:func:`write_outputs`), so the files can be
made again from a committed ``results.json`` without evaluating anything; only the bit
maps (:func:`write_bit_maps`) need the codecs themselves. Figures are drawn on
``matplotlib.figure.Figure`` objects, not pyplot: writing files neither changes the
caller's backend nor leaves figures open.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from icmlib.evaluation import plots
from icmlib.evaluation.bitmaps import FOLLOWED_OBJECTS, plot_bit_maps
from icmlib.evaluation.results import REPRO_TASKS, TASK_METRIC, describe_device, mse_name
from icmlib.evaluation.summary import (object_share_table, paper_table, saving_by_accuracy,
                                       summarize)
from icmlib.evaluation.tables import dataframe_to_markdown, overhead_table

TIMING_LABELS = {
    "task_networks_s": "task networks (this run; 0 when loaded from the cache)",
    "codec_training_s": "codec training (this run; 0 when loaded from the cache)",
    "codec_training_logged_s": "codec training when the codecs were trained (their logs)",
    "evaluation_s": "evaluation (this run)",
    "total_s": "total (this run)",
}


def summary_markdown(results: Dict[str, Any]) -> str:
    """``summary.md``: provenance, headline BD-rates, better-than-uncompressed, timings."""
    s = results["extra"].get("summary") or summarize(results)
    lines = [f"# Reproduction: preset `{results['preset'].get('name')}`", "",
             f"- command: `{results['command']}`",
             f"- commit: `{results['commit']}`",
             f"- device: {describe_device(results['device'])}",
             f"- date: {results['created']}, icmlib {results['icmlib_version']}",
             f"- dataset: {results['dataset'].get('name')} / {results['dataset'].get('split')}, "
             f"{results['dataset'].get('num_images')} images; bpp = {results['bpp_averaging']}",
             ""]
    skipped = results["extra"].get("skipped_anchors") or {}
    if skipped:
        lines += ["Skipped anchors:", ""] + [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    lines += ["## BD-rate (PCHIP; negative = fewer bits for the same task accuracy)", "",
              f"What the rates count, the same for every codec: "
              f"{results.get('rate_rule') or RATE_RULE_OLD}.", "",
              dataframe_to_markdown(_flat(paper_table(results))), "",
              "Paper (Le et al. 2021, vs VVC): detection −37.87 %, instance segmentation "
              "−32.90 %.", ""] + overhead_lines(results)
    if s.get("mse_vs_anchors_psnr"):
        lines += ["## The learned baseline against the anchors, for the eye", "",
                  "ICM codecs are fine-tuned from the MSE codecs of their rates (the baseline "
                  "before its last stage on whole images, when the preset has one), so they "
                  "start about where it stands. BD-rate of the MSE baseline against each "
                  "anchor at equal PSNR (negative: the learned codec needs fewer bits):",
                  ""] + [f"- vs {a}: {v}" for a, v in s["mse_vs_anchors_psnr"].items()] + [""]
        eq = s.get("mse_vs_anchors_equal_psnr")
        if eq:
            lines += [f"At the MSE baseline's highest rate ({eq['bpp']:.3f} bpp, "
                      f"{eq['quality']:.2f} dB), the bits each anchor needs for the same PSNR:",
                      ""] + [f"- {a}: " + (f"{v:.3f} bpp ({eq['bpp'] / v:.1f}x fewer)"
                                           if isinstance(v, float) else v)
                             for a, v in eq["anchors"].items()] + [""]
    for task, t in s["tasks"].items():
        lines.append(f"## {task} ({t['metric']}; uncompressed: {_fmt(t['reference'])})")
        lines.append("")
        for name, v in t["icm"].items():
            anchor, value = v["vs_best_traditional"]
            vs_trad = (f"{value:+.1f} % vs {anchor} (the traditional anchor it saves least "
                       f"against)" if anchor else "no BD-rate against any traditional anchor "
                       "(see the table for why)")
            vs_mse = ", ".join(f"{(f'{x:+.1f} %' if isinstance(x, float) else x)} vs {m}"
                               for m, x in v["vs_mse"].items())
            lines.append(f"- {name}: {vs_trad}; {vs_mse}")
        better = t["better_than_uncompressed"]
        if better:
            lines.append(f"- decoded images beat the uncompressed originals at "
                         f"{len(better)} point(s):")
            for b in better:
                lines.append(f"  - {b['codec']} at setting {b['setting']} "
                             f"({b['bpp']:.3f} bpp): {b['value']:.4f} vs {b['reference']:.4f} "
                             f"({b['gain']:+.4f})")
        else:
            lines.append("- no codec point gives higher accuracy than the uncompressed "
                         "originals")
        lines.append("")
    saving = saving_by_accuracy(results)
    if len(saving):
        lines += ["## Where along the curves ICM saves against the MSE baseline", "",
                  "BD-rate against the MSE baseline over the lower and the upper half of the "
                  "task-accuracy range both curves cover, and over the whole range (the "
                  "table's number): the same interpolation, split where the saving lies.", "",
                  dataframe_to_markdown(_flat(saving)), ""]
    shares = object_share_table(results)
    if shares:
        area = np.mean([r["object_area_share"] for r in shares])
        lines += ["## Where the bits go", "",
                  f"Share of the main stream's bits spent inside objects (objects cover "
                  f"{area:.0%} of the test images). ×MSE: that share over the MSE baseline's "
                  f"at the same rate point (the same λ); ×MSE at equal bpp: over the MSE "
                  f"baseline's share interpolated at the same bpp (— outside its range of "
                  f"rates). A codec's share depends on its rate, and an ICM codec codes at "
                  f"fewer bits than the MSE baseline at the same λ: only the second ratio "
                  f"compares codecs that spend the same number of bits."
                  + _followed_objects(results), "",
                  "| codec | rate point | bpp | bits inside objects | ×MSE | ×MSE at equal bpp |",
                  "|---|---|---|---|---|---|"]
        lines += [_share_row(r) for r in shares] + [""]
    timings = results["extra"].get("timings", {})
    if timings:
        lines += ["## Run time (wall clock)", ""] + [
            f"- {TIMING_LABELS.get(k, k)}: {v / 60:.1f} min" for k, v in timings.items()]
        workers = results["extra"].get("evaluation_workers")
        if workers:
            lines.append(f"- the evaluation ran in {workers} process(es) side by side "
                         f"(icmlib.evaluation.jobs)")
    return "\n".join(lines) + "\n"


#: what ``bpp`` counted in a results file written before the rate split
RATE_RULE_OLD = ("whole files (this results file predates the split of coded bits and "
                 "overheads; both tables below count whole files)")


def overhead_lines(results: Dict[str, Any]) -> List[str]:
    """Summary lines: the BD-rate table on whole files, and what each codec's files carry
    beside the coded bits (mean bytes per image)."""
    lines = ["### The same table on whole files", "",
             "Each codec's complete file (`.icm` container, JFIF, RIFF, HEIF boxes, the 4-byte "
             "size prefix of the video anchors): what a reader sees containers cost at this "
             "image size.", "",
             dataframe_to_markdown(_flat(paper_table(results, rate="bpp_file"))), ""]
    table = overhead_table(results)
    if not table.empty:
        lines += ["### What the files carry beside the coded bits", "",
                  "Mean bytes per image (headers are counted, being part of the coded "
                  "stream; container, metadata and size prefix are not), and at each "
                  "codec's lowest rate point the share of the file the rule leaves out.",
                  "", dataframe_to_markdown(_formatted(table)), ""]
    return lines


def _formatted(table):
    """:func:`icmlib.evaluation.tables.overhead_table` as text: bytes whole, bpp to 3 places, shares
    in per cent."""
    text = table.astype(object)
    for col in table.columns:
        fmt = "{:.1%}" if col == "not counted" else ("{:.3f}" if "bpp" in col else "{:.0f}")
        text[col] = ["" if v != v else fmt.format(v) for v in table[col]]
    return text


def _followed_objects(results: Dict[str, Any]) -> str:
    share = results["extra"].get(FOLLOWED_OBJECTS)
    if share is None:
        return ""
    return (f" A codec whose bits in each 16×16 block followed the objects' coverage would "
            f"spend {share:.0%} of them inside objects (the yardstick of "
            f"`object_share_if_bits_followed_objects`).")


def _share_row(r: Dict[str, Any]) -> str:
    ratio = "" if r["vs_mse"] is None else f"{r['vs_mse']:.2f}"
    equal = "—" if r["vs_mse_equal_bpp"] is None else f"{r['vs_mse_equal_bpp']:.2f}"
    return (f"| {r['codec']} | {r['setting']} | {r['bpp']:.3f} | {r['object_bit_share']:.1%} "
            f"| {ratio} | {equal} |")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _flat(df):
    """A (task, codec) MultiIndex flattened to "task: codec" for markdown and CSV."""
    if df.empty:
        return df
    df = df.copy()
    df.index = [f"{t}: {c}" for t, c in df.index]
    df.index.name = "codec (task)"
    return df


def write_outputs(results: Dict[str, Any], out: Union[str, Path]) -> Dict[str, Path]:
    """Figures, tables and summary of a results dict into ``out`` (from the file alone)."""
    # Figure objects, not pyplot: writing files must not change the caller's backend or
    # leave figures open (a notebook calling this still shows its own figures inline)
    from matplotlib.figure import Figure

    def subplots(ncols=1, figsize=(7, 4.8)):
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(1, ncols)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: Dict[str, Path] = {}
    for task in results.get("tasks", REPRO_TASKS):
        fig, ax = subplots()
        plots.plot_rd_curves(results, TASK_METRIC[task], ax=ax, task=task)
        fig.tight_layout()
        files[f"rd_{task}"] = out / f"rd_{task}.png"
        fig.savefig(files[f"rd_{task}"], dpi=120)
        if any(r.get("task") == task for r in results["extra"].get("training", [])):
            fig, axes = subplots(4, figsize=(18, 4))
            plots.plot_weighting_comparison(results, task, axes=axes)
            fig.tight_layout()
            files[f"weighting_{task}"] = out / f"weighting_{task}.png"
            fig.savefig(files[f"weighting_{task}"], dpi=110)
    fig, ax = subplots()
    plots.plot_rd_curves(results, "psnr", ax=ax, reference=False)
    fig.tight_layout()
    files["rd_psnr"] = out / "rd_psnr.png"
    fig.savefig(files["rd_psnr"], dpi=120)
    if object_share_table(results):
        fig, ax = subplots()
        plots.plot_object_shares(results, ax=ax)
        fig.tight_layout()
        files["object_shares"] = out / "object_shares.png"
        fig.savefig(files["object_shares"], dpi=120)
    for suffix, rate in (("", "bpp"), ("_file", "bpp_file")):
        table = _flat(paper_table(results, rate=rate))
        files[f"bd_rate{suffix}_md"] = out / f"bd_rate{suffix}.md"
        files[f"bd_rate{suffix}_md"].write_text(dataframe_to_markdown(table))
        files[f"bd_rate{suffix}_csv"] = out / f"bd_rate{suffix}.csv"
        table.to_csv(files[f"bd_rate{suffix}_csv"])
    files["summary"] = out / "summary.md"
    files["summary"].write_text(summary_markdown(results))
    return files


def write_bit_maps(learned: Dict[str, Dict[int, Any]], dataset, path: Path,
                   rate_index: Optional[int] = None,
                   images: Sequence[int] = (0, 1, 2)) -> Optional[Path]:
    """``bitmaps.png``: the MSE baseline's and the ICM codecs' (dynamic weighting) bit maps
    on the same test images, at one rate point (default: the second lowest they all have;
    the MSE baseline's own lowest points have no ICM codec to compare with)."""
    from matplotlib.figure import Figure

    shown = {name: by_rate for name, by_rate in learned.items()
             if name == mse_name() or "dynamic" in name}
    if rate_index is None:
        common = sorted(set.intersection(*(set(r) for r in shown.values()))) if shown else []
        rate_index = common[min(1, len(common) - 1)] if common else -1
    chosen = {name: by_rate[rate_index] for name, by_rate in shown.items() if rate_index in by_rate}
    if len(chosen) < 2:
        return None
    images = [i for i in images if i < len(dataset)]
    fig = Figure(figsize=(3 * (1 + len(chosen)), 3 * len(images)))
    axes = fig.subplots(len(images), 1 + len(chosen), squeeze=False)
    plot_bit_maps(chosen, dataset, images, axes=axes)
    fig.suptitle(f"Where the bits go: estimated bits of ŷ per 16×16 block, rate point "
                 f"{rate_index}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
