"""data/results/cpu/icm_steps.md: both ICM codecs (3000 vs 6000 steps) measured on the same 64 validation images."""
import json, torch
from icmlib.presets import get_preset
from icmlib.data import dataset_for
from icmlib.tasks import FrozenTask, task_network
from icmlib.training import codec_run, codec_at_rate
from icmlib.training.validation import validate_codec
torch.set_num_threads(1)
p = get_preset("cpu")
val = dataset_for(p, "val", train=False)
frozen = FrozenTask(task_network("detection", p, progress=False), "detection")
out = {}
for steps in (3000, 6000):
    ckpt = codec_run(p.replace(icm_steps=steps), "detection", "dynamic", "all", progress=False)
    for r in range(4):
        net = codec_at_rate(ckpt, r)
        m = validate_codec(net, val, 64, frozen, "detection")
        out[f"{steps}/{r}"] = {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}
        print(steps, r, {k: round(out[f'{steps}/{r}'][k], 4) for k in ('bpp', 'psnr', 'task_bbox_map') if k in out[f'{steps}/{r}']}, flush=True)
json.dump(out, open("data/results/cpu/icm_steps_raw.json", "w"), indent=1)
