"""The ``icm`` command. Each subcommand's parser and handler live side by side below;
the work itself is done by the icmlib module named in each handler."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


class CLIError(Exception):
    """An error a user can fix; printed without a traceback, exit status 2."""


def _preset_from(args):
    """The preset named by ``--preset`` (or the default), with a clear error for a bad name."""
    from icmlib.presets import get_preset

    try:
        return get_preset(args.preset)
    except ValueError as e:
        raise CLIError(str(e)) from None


# ---- encode / decode / info ------------------------------------------------------------
def _add_preset_option(parser) -> None:
    """The ``--preset`` option every training or evaluating command shares."""
    parser.add_argument("--preset", default=None,
                        help="ci (seconds), cpu (toy world, minutes) or gpu (COCO); default: "
                             "$ICM_PRESET, else gpu when CUDA is available, else cpu")


def _add_codec_commands(sub) -> None:
    model_help = ("codec checkpoint to use (a file written by icmlib.codec.model.save_codec, e.g. by "
                  "'icm train', or one of icmlib/weights/shipped/), or zoo:NAME:QUALITY for a "
                  "CompressAI codec pretrained on natural photos (zoo:mbt2018-mean:3, "
                  "zoo:bmshj2018-hyperprior:4; downloaded once into torch's hub cache); "
                  "default: the codec shipped with icmlib, the reproduction's MSE baseline, "
                  "trained on the synthetic world")
    p = sub.add_parser(
        "encode", help="compress an image (PNG, JPEG, ...) into an .icm file",
        description="Compress an image into an .icm file and print its real bits per pixel "
                    "next to the codec's likelihood estimate.")
    p.add_argument("image", help="input image (PNG, JPEG, any size; gray/RGBA converted)")
    p.add_argument("output", help="the .icm file to write")
    p.add_argument("--model", metavar="CKPT", help=model_help)
    p.add_argument("--quality", metavar="Q", type=int, default=None,
                   help="rate point of a variable-rate codec, 1 (fewest bits) to its number of "
                        "rate points (the default codec: 1-4, default 3; another variable-rate "
                        "checkpoint: default its highest). Decoding finds it in the file")
    p.set_defaults(func=_encode_command)

    p = sub.add_parser(
        "decode", help="decode an .icm file into a PNG",
        description="Decode an .icm file with the codec that wrote it and save a PNG.")
    p.add_argument("input", help="the .icm file")
    p.add_argument("output", help="the PNG to write")
    p.add_argument("--model", metavar="CKPT", help=model_help + "; must be the encoding codec "
                                                               "(its quality is found in the file)")
    p.set_defaults(func=_decode_command)

    p = sub.add_parser(
        "info", help="show what is inside an .icm file",
        description="Print an .icm file's header, streams and bits per pixel (no model "
                    "needed; with --model, also say whether that codec can decode it).")
    p.add_argument("input", help="the .icm file")
    p.add_argument("--model", metavar="CKPT", help="also check this codec (a checkpoint or "
                                                   "zoo:NAME:QUALITY) against the file")
    p.set_defaults(func=_info_command)


def _codec_for_cli(model, quality=None, file_fingerprint=None):
    """``--model``'s codec at ``quality``, or, given a file's fingerprint, at the rate point
    that wrote the file; a zoo codec's weights are downloaded once, unless ``$ICM_OFFLINE``
    is set (then a missing file is named, with where to put it)."""
    from icmlib.codec import ModelError, decoder_for, resolve_codec
    from icmlib.data import hub_download

    try:
        if file_fingerprint is not None:
            return decoder_for(model, file_fingerprint, download=hub_download())
        return resolve_codec(model, download=hub_download(), quality=quality)
    except ModelError as e:
        raise CLIError(str(e)) from None


def _image_for_cli(path):
    """Load an image; conversions (gray, RGBA, ...) are reported, non-images are refused."""
    import warnings

    from icmlib.data import load_image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            image = load_image(path)
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(str(e)) from None
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"note: {w.message}", file=sys.stderr)
    return image


def _read_icm_for_cli(path):
    from icmlib.codec import BitstreamError, read_icm

    try:
        return read_icm(path)
    except (FileNotFoundError, BitstreamError) as e:
        raise CLIError(str(e)) from None


def _encode_command(args) -> int:
    import torch

    from icmlib.codec import (compress_image, describe_codec, header_size, likelihood_bits, pack,
                              run_codec, write_icm)

    image = _image_for_cli(args.image)
    net = _codec_for_cli(args.model, args.quality)
    print(f"codec: {describe_codec(net)}")
    try:
        data = pack(compress_image(net, image))
    except ValueError as e:
        raise CLIError(str(e)) from None
    try:
        write_icm(args.output, data)
    except OSError as e:
        raise CLIError(f"cannot write {args.output}: {e}") from None
    with torch.no_grad():
        estimate = likelihood_bits(run_codec(net, image[None])["likelihoods"]).item()
    h, w = image.shape[-2:]
    pixels = h * w
    print(f"{args.image}: {w}×{h} pixels -> {args.output}: {len(data)} bytes")
    print(f"  bpp (file)       {8 * len(data) / pixels:.4f}   real bytes × 8 / pixels, "
          f"{header_size(2)}-byte header included")
    print(f"  bpp (likelihood) {estimate / pixels:.4f}   the codec's estimate −Σlog2 p of "
          f"both streams")
    return 0


def _decode_command(args) -> int:
    from pathlib import Path

    from icmlib.codec import BitstreamError, decompress_file
    from icmlib.data import save_image

    if Path(args.output).suffix.lower() != ".png":
        raise CLIError(f"icm decode writes a PNG (lossless, so the decoded pixels are kept "
                       f"exactly); name the output *.png, not {args.output}")
    f = _read_icm_for_cli(args.input)
    net = _codec_for_cli(args.model, file_fingerprint=f.fingerprint)
    try:
        image = decompress_file(net, f)
    except BitstreamError as e:
        raise CLIError(f"{args.input}: {e}") from None
    try:
        save_image(image, args.output)
    except OSError as e:
        raise CLIError(f"cannot write {args.output}: {e}") from None
    print(f"{args.input} -> {args.output}: {f.width}×{f.height} pixels")
    return 0


def _info_command(args) -> int:
    from icmlib.codec import AtRate, fingerprint, header_size, stream_names
    from icmlib.codec.bitstream import VERSION

    f = _read_icm_for_cli(args.input)
    zh, zw = f.latent_shape
    print(f"file               {args.input}")
    print(f"size               {f.size_bytes()} bytes ({header_size(len(f.streams))} of header)")
    print(f"image              {f.width}×{f.height} pixels "
          f"(padded by {f.padding[1]} columns, {f.padding[0]} rows)")
    print(f"latents            ŷ {4 * zh}×{4 * zw}, ẑ {zh}×{zw}")
    print(f"format version     {f.version}")
    print(f"model fingerprint  {f.fingerprint.hex()}")
    for name, s in zip(stream_names(len(f.streams)), f.streams):
        print(f"{name:<18} {len(s)} bytes ({8 * len(s) / f.pixels:.4f} bpp)")
    print(f"bpp                {f.bpp():.4f}   file bytes × 8 / pixels")
    if args.model:
        net = _codec_for_cli(args.model, file_fingerprint=f.fingerprint)
        ours = fingerprint(net).hex()
        if ours != f.fingerprint.hex():
            verdict = "is a different model: it cannot decode this file"
        elif f.version != VERSION:
            verdict = (f"wrote this file, in format version {f.version}: encode the image "
                       f"again to decode it with this icmlib (version {VERSION})")
        else:
            verdict = "can decode this file" + (f" (quality {net.rate + 1})"
                                                 if isinstance(net, AtRate) else "")
        print(f"--model            {ours}: {verdict}")
    return 0


# ---- train-task ------------------------------------------------------------------------
def _add_train_task_command(sub) -> None:
    p = sub.add_parser(
        "train-task", help="train (or load) the task network for a machine task",
        description="Train the small task network of a machine task on the preset's "
                    "synthetic world, or load it from the train-or-load cache, and print its "
                    "accuracy on the validation images (COCO bbox mAP, segm mAP for Mask "
                    "R-CNN, mIoU for semantic segmentation). On the gpu preset the detectors "
                    "are torchvision's COCO-pretrained models: they are loaded, not trained.")
    p.add_argument("--task", required=True, choices=["detection", "instance", "semantic"],
                   help="detection: Faster R-CNN; instance: Mask R-CNN; semantic: U-Net")
    _add_preset_option(p)
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: the preset's task_steps / task_semantic_steps)")
    p.add_argument("--force", action="store_true",
                   help="train again even if a checkpoint for this configuration is cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_task_command)


def _train_task_command(args) -> int:
    from icmlib import tasks

    preset = _preset_from(args)
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be a positive number of training steps, got {args.steps}")
    try:
        model = tasks.task_network(args.task, preset, force=args.force, steps=args.steps,
                                   progress=not args.quiet)
    except (tasks.PretrainedWeightsUnavailable, FileNotFoundError, FloatingPointError,
            ValueError) as e:
        raise CLIError(str(e)) from None
    info = model.task_info
    print(f"task: {args.task} ({type(model).__name__}), preset: {preset.name}")
    if info["pretrained"]:
        print("weights: torchvision COCO-pretrained (torch hub cache); nothing to train")
        return 0
    metrics = info["metrics"]
    rows = [("bbox mAP@[.5:.95]", "bbox_map"), ("bbox mAP@.5", "bbox_map50"),
            ("segm mAP@[.5:.95]", "segm_map"), ("segm mAP@.5", "segm_map50"),
            ("mIoU", "miou"), ("pixel accuracy", "pixel_accuracy")]
    print("validation accuracy (uncompressed images):")
    for label, key in rows:
        if key in metrics:
            print(f"  {label:<18} {metrics[key]:.3f}")
    if "train_seconds" in metrics:
        print(f"training: {metrics['train_seconds']:.0f} s wall "
              f"({metrics.get('train_cpu_seconds', float('nan')):.0f} s CPU), "
              f"{metrics.get('steps_per_second', 0):.2f} steps/s")
    print(f"checkpoint: {info['checkpoint']}")
    return 0


# ---- train -----------------------------------------------------------------------------
def _add_train_command(sub) -> None:
    p = sub.add_parser(
        "train", help="train one codec (MSE baseline or ICM for a frozen task network)",
        description="Train one codec at one rate point. The MSE (human-vision) baseline: "
                    "'icm train --strategy mse --rate 2'. An ICM codec: 'icm train --task "
                    "detection --strategy dynamic --rate 2'. Writes checkpoint.pt (resumable), "
                    "codec.pt (for icm encode/decode), train_log.csv (every loss term and "
                    "weight, every step) and val_log.csv (real bpp, PSNR, task metric) to --out. "
                    "Multi-GPU: 'torchrun --nproc_per_node N -m icmlib.cli train ...'.")
    _add_preset_option(p)
    p.add_argument("--task", default=None, choices=("detection", "instance", "semantic"),
                   help="the frozen task network an ICM codec serves (Faster R-CNN, Mask R-CNN "
                        "or U-Net); omit for the MSE baseline")
    p.add_argument("--strategy", default="mse", choices=("mse", "fixed", "dynamic", "auto"),
                   help="loss weighting: mse = human-vision baseline (no task); fixed = constant "
                        "ICM weights; dynamic = the paper's schedule (MSE first, then the task "
                        "takes over); auto = each distortion term divided by its running size. "
                        "Default: mse")
    p.add_argument("--rate", default="0",
                   help="rate point: an index into the preset's rd_lambdas (0 = lowest rate), "
                        "or the value λ itself (e.g. 0.0067) in L = R + λ·(255²·MSE + ...); "
                        "or a variable-rate codec: 'all' (every rd_lambdas point), 'low' "
                        "(low_rd_lambdas), 'mse-low' or 'mse-mid' (mse_low_rd_lambdas, "
                        "mse_mid_rd_lambdas: MSE only). "
                        "Default: 0")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: the preset's codec_steps for MSE, icm_steps "
                        "for ICM)")
    p.add_argument("--out", default=None,
                   help="output folder (default: a folder under $ICM_CACHE/runs named by the "
                        "configuration)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoint.pt (same settings required): model, "
                        "optimizers, scheduler, weighting state and random state")
    p.add_argument("--init-from", default=None, metavar="CODEC.pt",
                   help="start from this codec checkpoint instead of random weights (e.g. the "
                        "MSE codec at the same rate, to fine-tune an ICM codec)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from icmlib.presets import get_preset
    from icmlib.training import TrainingDiverged, resolve_rate, train_codec

    try:
        preset = get_preset(args.preset)
        rate, _ = resolve_rate(preset, args.rate)
        if rate is None:
            rate = float(args.rate)
        result = train_codec(preset, task=args.task, strategy=args.strategy, rate_index=rate,
                             steps=args.steps, out_dir=args.out, resume=args.resume,
                             progress=not args.no_progress, init_from=args.init_from,
                             seed=args.seed, command="icm " + " ".join(sys.argv[1:]))
    except (ValueError, FileNotFoundError, TrainingDiverged) as e:
        raise CLIError(str(e)) from None
    from pathlib import Path

    run = Path(result["run_dir"])
    val = result["logs"]["val"][-1] if result["logs"]["val"] else {}
    summary = ", ".join(f"{k} {val[k]:.4g}" for k in ("bpp", "bpp_estimate", "psnr", "task_score")
                        if k in val)
    print(f"codec: {run / 'codec.pt'}" + (f"  ({summary})" if summary else ""))
    print(f"logs:  {run / 'train_log.csv'}, {run / 'val_log.csv'}")
    return 0


# ---- evaluate / reproduce --------------------------------------------------------------
def _add_evaluate_commands(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="measure codecs on the test images: bpp, PSNR, task mAP",
        description="Encode the preset's test images (the split no recipe was chosen on) "
                    "with each codec to real bytes, "
                    "decode them, and measure bpp, PSNR, MS-SSIM and the frozen task networks' "
                    "accuracy (COCO mAP); the uncompressed reference too. Writes a results "
                    "JSON (schema: icmlib.evaluation.results) that 'icm evaluate --plot' and the book draw.")
    _add_preset_option(p)
    p.add_argument("--anchor", action="append", default=[], metavar="NAME",
                   help="a traditional anchor (jpeg, jpeg2000, webp, avif, hevc, av1, vvc); "
                        "repeatable")
    p.add_argument("--model", action="append", default=[], metavar="CKPT",
                   help="a codec checkpoint (icmlib format, or a file of the shipped set); "
                        "repeat it, one per rate point, to make one learned codec's curve (a "
                        "variable-rate checkpoint gives all its rate points)")
    p.add_argument("--name", default="learned", help="name of the learned codec (--model)")
    p.add_argument("--qualities", nargs="+", type=float, metavar="Q",
                   help="anchor settings to use (default: each anchor's own list)")
    p.add_argument("--tasks", nargs="+", default=["detection", "instance"],
                   choices=["detection", "instance", "semantic"])
    p.add_argument("--images", type=int, help="evaluate on the first N test images "
                                              "(default: preset.eval_images)")
    p.add_argument("--out", default="results.json",
                   help="results JSON to write; codecs are added to it if it exists and was "
                        "made on the same images (default: results.json)")
    p.add_argument("--plot", action="store_true", help="also write RD figures next to the JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)

    r = sub.add_parser(
        "reproduce", help="the paper's experiment: train/load, evaluate, BD-rate table, figures",
        description="Load the shipped (or train the missing) task networks, MSE baseline and "
                    "ICM codecs (each weighting strategy of the preset) at every rate point, "
                    "evaluate them and "
                    "every available anchor, and write results.json, RD figures, the BD-rate "
                    "table (markdown + csv), the loss-weighting comparison and summary.md. "
                    "Resumable: a second run reuses everything the first trained and evaluated.")
    _add_preset_option(r)
    r.add_argument("--out", help="output folder (default: data/results/<preset>/)")
    r.add_argument("--force-evaluation", action="store_true",
                   help="evaluate again even when a cached evaluation exists")
    r.add_argument("--retrain", action="store_true",
                   help="ignore the shipped checkpoints and retrain every task network and "
                        "codec with the same recipe (prints how long that took when the "
                        "shipped set was trained; the same as ICM_RETRAIN=1)")
    r.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes that evaluate codecs side by side (default: one per CPU "
                        "core on the CPU, one on a GPU); the numbers do not depend on it")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_reproduce)


def _cmd_evaluate(args) -> int:
    import sys as _sys
    from pathlib import Path

    preset = _preset_from(args)
    if not args.anchor and not args.model:
        raise CLIError("nothing to evaluate: give --anchor NAME and/or --model CKPT")
    if args.images is not None and args.images < 1:
        raise CLIError(f"--images must be at least 1, got {args.images}")
    from icmlib.codec import at_quality, load_codec, qualities
    from icmlib.data import dataset_for
    from icmlib.evaluation import (EvaluationError, ResultsError, dataset_info, evaluate_codec,
                                   learned_codec, load_results, make_anchor, new_results,
                                   reference_accuracy, save_results, subset, task_networks)

    codecs = []
    for name in args.anchor:
        try:
            anchor = make_anchor(name)
        except ValueError as e:
            raise CLIError(str(e)) from None
        ok, why = anchor.available()
        if not ok:
            print(f"icm evaluate: skipping anchor {name}: {why}", file=_sys.stderr)
            continue
        settings = list(anchor.qualities)
        if args.qualities:
            settings = [int(q) if float(q).is_integer() and isinstance(settings[0], int) else q
                        for q in args.qualities]
        codecs.append((anchor, settings, "anchor"))
    if args.model:
        nets = []
        for path in args.model:
            try:
                net = load_codec(path)
            except (FileNotFoundError, ValueError) as e:
                raise CLIError(str(e)) from None
            # a variable-rate checkpoint is a codec of its every rate point
            nets += [at_quality(net, q) for q in qualities(net)] or [net]
        learned = learned_codec(nets, args.name, preset)
        codecs.append((learned, list(learned.qualities), "learned"))
    if not codecs:
        raise CLIError("none of the requested codecs can run here (see the messages above)")
    progress = not args.quiet
    dataset = subset(dataset_for(preset, split="test"), args.images or preset.eval_images)
    out = Path(args.out)
    results = None
    if out.exists():
        try:
            results = load_results(out)
        except ResultsError as e:
            raise CLIError(f"{out} exists but is not a results file ({e}); choose another --out")
        # image_ids lists at most the first 1000 ids: the count tells 2000 from 5000 images
        here = dataset_info(dataset)
        if any(results["dataset"].get(k) != here[k] for k in ("image_ids", "num_images",
                                                               "annotations")):
            raise CLIError(f"{out} was measured on other images; choose another --out")
    try:
        networks = task_networks(args.tasks, preset)
        if results is None:
            reference = reference_accuracy(args.tasks, dataset, preset=preset, networks=networks)
            results = new_results(preset=preset, dataset=dataset_info(dataset), tasks=args.tasks,
                                  reference=reference,
                                  command=_evaluate_command(args, preset))
        for codec, settings, kind in codecs:
            entry = evaluate_codec(codec, settings, dataset, args.tasks, preset=preset,
                                   networks=networks, progress=progress, kind=kind,
                                   group="traditional" if kind == "anchor" else "learned")
            results["codecs"] = [c for c in results["codecs"] if c["name"] != entry["name"]]
            results["codecs"].append(entry)
            for p in entry["points"]:
                accs = ", ".join(f"{k}={p[k]:.4f}" for k in
                                 ("bbox_map", "segm_map", "miou") if p.get(k) is not None)
                psnr = f"{p['psnr']:.2f} dB" if p.get("psnr") is not None else "n/a"
                print(f"{entry['name']:>12} @ {p['setting']!s:>6}: {p['bpp']:.4f} bpp, "
                      f"PSNR {psnr}, {accs}")
    except (EvaluationError, ValueError) as e:
        raise CLIError(str(e)) from None
    save_results(results, out)
    print(f"wrote {out}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from icmlib.evaluation import TASK_METRIC, plots
        for metric in [TASK_METRIC[t] for t in args.tasks] + ["psnr"]:
            fig, ax = plt.subplots(figsize=(7, 4.8))
            plots.plot_rd_curves(results, metric, ax=ax, reference=metric != "psnr")
            fig.tight_layout()
            png = out.with_name(f"{out.stem}_{metric}.png")
            fig.savefig(png, dpi=120)
            plt.close(fig)
            print(f"wrote {png}")
    return 0


def _evaluate_command(args, preset) -> str:
    """The ``icm evaluate`` command line that reproduces this evaluation."""
    parts = ["icm evaluate", f"--preset {preset.name}"]
    parts += [f"--anchor {a}" for a in args.anchor] + [f"--model {m}" for m in args.model]
    if args.model:
        parts.append(f"--name {args.name!r}")
    if args.qualities:
        parts.append("--qualities " + " ".join(f"{q:g}" for q in args.qualities))
    parts.append("--tasks " + " ".join(args.tasks))
    if args.images:
        parts.append(f"--images {args.images}")
    parts.append(f"--out {args.out}")
    return " ".join(parts)


def _cmd_reproduce(args) -> int:
    preset = _preset_from(args)
    from icmlib.codec.pretrained import ModelError
    from icmlib.data.coco2017 import DatasetNotFoundError
    from icmlib.evaluation import ReproductionError, reproduce
    from icmlib.tasks.networks import PretrainedWeightsUnavailable

    command = (f"icm reproduce --preset {preset.name}" + (f" --out {args.out}" if args.out else "")
               + (" --retrain" if args.retrain else ""))
    try:
        reproduce(preset, args.out, progress=not args.quiet, command=command,
                  force_evaluation=args.force_evaluation, retrain=args.retrain,
                  workers=args.workers)
    except (ReproductionError, ModelError, PretrainedWeightsUnavailable,
            DatasetNotFoundError) as e:  # what is missing offline: one line, no traceback
        raise CLIError(str(e)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icm",
        description="Image Coding for Machines: compress images for a frozen vision network. "
                    "Run 'icm COMMAND --help' for each command's options.")
    from icmlib import __version__
    parser.add_argument("--version", action="version", version=f"icm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_codec_commands(sub)
    _add_train_task_command(sub)
    _add_train_command(sub)
    _add_evaluate_commands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"icm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
