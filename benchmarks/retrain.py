"""A staged retrain of the reproduction's codecs: a recipe change that takes hours on 2 cores.

Trains, one at a time, every codec the reproduction of the changed recipe loads that neither
the shipped set nor the staging folder holds yet, and stages each as it completes
(``python -m icmlib.ship --into``), so a session that ends mid-way loses at most the codec
in training (its resumable checkpoint stays in ``$ICM_CACHE``) and the next session, on any
machine, goes on from the staged files. The book keeps reading the shipped set meanwhile;
once nothing is missing, give the preset the recipe and ``python -m icmlib.ship --promote``.

    ICM_CACHE=.cache/book python benchmarks/retrain.py --replace icm_steps=6000 [--dry-run]

(the 6000-step ICM codecs of ``benchmarks/icm_steps_study.py`` were staged this way).

The MSE baseline's codecs come first (minutes each), then the ICM codecs, detection first.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from icmlib.cache import config_key
from icmlib.evaluation import git_commit
from icmlib.presets import get_preset
from icmlib.ship import preset_override, reproduction_checkpoints, ship_from_cache
from icmlib.shipped import SHIPPED_DIR, entry_name, read_manifest
from icmlib.training import baseline_run, codec_run

STAGED = SHIPPED_DIR.parent / "next"


def plan(preset):
    """``[(label, config, train)]``: every codec the reproduction loads
    (:func:`icmlib.ship.reproduction_checkpoints`, baselines first)."""
    items = []
    for kind, config in reproduction_checkpoints(preset):
        if kind != "codec":
            continue  # the task networks: trained by `icm train-task`, not here
        task, strategy, rate = config["task"], config["strategy"], config["rate_index"]
        if task is None:
            items.append((f"MSE baseline {rate}", config,
                          lambda r=rate: baseline_run(preset, r, progress=False)))
        else:
            items.append((f"ICM {task} {strategy} {rate}", config,
                          lambda t=task, s=strategy, r=rate: codec_run(preset, t, s, r, progress=False)))
    return items


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--replace", action="append", default=[], metavar="FIELD=VALUE",
                        help="the recipe change, as for python -m icmlib.ship (repeatable)")
    parser.add_argument("--into", type=Path, default=STAGED, help=f"staging folder ({STAGED})")
    parser.add_argument("--dry-run", action="store_true", help="list what is missing, train nothing")
    parser.add_argument("--only", metavar="TEXT", action="append", default=[],
                        help="train only the codecs whose label holds TEXT, e.g. "
                             "'detection dynamic low' (repeatable)")
    args = parser.parse_args(argv)
    preset = get_preset(args.preset).replace(**dict(map(preset_override, args.replace)))
    held = set(read_manifest()["entries"]) | set(read_manifest(args.into)["entries"])
    todo = [(label, train) for label, config, train in plan(preset)
            if entry_name("codec", config_key(config)) not in held
            and (not args.only or any(text in label for text in args.only))]
    print(f"{len(todo)} codec(s) to train: " + "; ".join(label for label, _ in todo))
    if args.dry_run:
        return 0
    for label, train in todo:
        t0 = time.time()
        train()
        ship_from_cache(preset, git_commit(), directory=args.into, skip_shipped=True)
        print(f"{time.strftime('%H:%M:%S')} {label}: trained and staged in "
              f"{(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
