"""The interactive explorer: pick codecs and rates, see what the task network sees.

``Explorer`` codes one validation image with any codec behind the anchors' interface
(``icmlib.evaluation.anchors.Codec``: Pillow/ffmpeg anchors and our learned codecs through
``LearnedCodec``), runs the frozen task network on the decoded image and shows the
predictions with bpp (from the real bytes), PSNR and the image's COCO mAP. Two codecs
are shown side by side; "match rate" picks, for the right-hand codec, the setting whose
bpp on this image is closest to the left one's, so they are compared at equal rate.

The computation (``Explorer.point``, ``Explorer.closest_setting``, ``Explorer.figure``)
is plain Python and tested; ``Explorer.widget()`` only wires it to ipywidgets.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from icmlib.evaluation import Codec, pil_to_tensor, to_pil
from icmlib.data import draw_annotations
from icmlib.metrics import bpp, coco_map, predictions_to_coco, psnr
from icmlib.tasks import FrozenTask

#: predictions below this score are not drawn (all of them count for mAP)
DRAW_SCORE = 0.5


class Explorer:
    """Compare codecs on single images through the eyes of a frozen task network.

    Args:
        codecs: ``{name: Codec}``; each codec's ``qualities`` are its selectable settings.
        dataset: a ``CocoDataset`` (its ``coco`` ground truth gives the per-image mAP).
        task: ``"detection"`` or ``"instance"``.
        network: the task network (a torchvision detector); wrapped in ``FrozenTask``.
    """

    def __init__(self, codecs: Mapping[str, Codec], dataset, task: str, network: torch.nn.Module):
        if not codecs:
            raise ValueError("Explorer needs at least one codec")
        if task not in ("detection", "instance"):
            raise ValueError(f"the explorer shows detection or instance segmentation, not {task!r}")
        self.codecs = dict(codecs)
        self.dataset = dataset
        self.task = task
        self.frozen = network if isinstance(network, FrozenTask) else FrozenTask(network, task)
        self._cache: Dict[Tuple[str, Any, int], Dict[str, Any]] = {}

    # ---- computation -------------------------------------------------------------------
    def point(self, codec_name: str, setting, index: int = 0) -> Dict[str, Any]:
        """Code image ``index`` with ``codec_name`` at ``setting``; predictions and metrics."""
        key = (codec_name, setting, index)
        if key not in self._cache:
            image, target = self.dataset[index]
            if codec_name == "original":
                decoded, nbytes = image, None
            else:
                codec = self.codecs[codec_name]
                data, pil = codec.roundtrip(to_pil(image), setting)
                decoded, nbytes = pil_to_tensor(pil), len(data)
            pred = self.frozen.predict(decoded.unsqueeze(0))[0]
            self._cache[key] = {
                "image": decoded, "target": target, "predictions": pred,
                "bytes": nbytes,
                "bpp": None if nbytes is None else bpp(nbytes, image.shape[-2], image.shape[-1]),
                "psnr": None if nbytes is None else float(psnr(decoded, image)),
                "map": self._image_map(pred, int(target["image_id"])),
            }
        return self._cache[key]

    def _image_map(self, prediction, image_id: int) -> float:
        iou = "segm" if self.task == "instance" else "bbox"
        results = predictions_to_coco([prediction], [image_id])
        return float(coco_map(self.dataset.coco, results, iou_type=iou, image_ids=[image_id])["map"])

    def closest_setting(self, codec_name: str, target_bpp: float, index: int = 0):
        """The setting of ``codec_name`` whose bpp on image ``index`` is closest to ``target_bpp``."""
        settings = self.codecs[codec_name].qualities
        return min(settings, key=lambda s: abs(self.point(codec_name, s, index)["bpp"] - target_bpp))

    # ---- display -----------------------------------------------------------------------
    def _caption(self, name: str, setting, p: Mapping[str, Any]) -> str:
        metric = "mask mAP" if self.task == "instance" else "box mAP"
        if p["bpp"] is None:
            return f"original\n{metric} {p['map']:.3f}"
        return (f"{name} @ {setting}\n{p['bpp']:.3f} bpp · {p['psnr']:.1f} dB · "
                f"{metric} {p['map']:.3f}")

    def draw(self, ax, codec_name: str, setting, index: int = 0):
        p = self.point(codec_name, setting, index)
        pred = p["predictions"]
        keep = pred["scores"] >= DRAW_SCORE
        shown = {k: v[keep] for k, v in pred.items() if torch.is_tensor(v) and len(v) == len(keep)}
        draw_annotations(ax, p["image"], shown, scores=shown.get("scores"),
                         title=self._caption(codec_name, setting, p), title_size=13)
        return p

    def figure(self, left: Tuple[str, Any], right: Optional[Tuple[str, Any]] = None,
               index: int = 0, with_original: bool = True):
        """A matplotlib figure: (original,) left codec, right codec, with predictions."""
        import matplotlib.pyplot as plt

        panels = ([("original", None)] if with_original else []) + [left] + ([right] if right else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0), squeeze=False)
        for ax, (name, setting) in zip(axes[0], panels):
            self.draw(ax, name, setting, index)
        fig.tight_layout()
        return fig

    def widget(self, left: Optional[str] = None, right: Optional[str] = None):
        """The ipywidgets view: image index, two codecs with their settings, "match rate"."""
        import ipywidgets as W
        import matplotlib.pyplot as plt
        from IPython.display import display

        names = list(self.codecs)
        left = left or names[0]
        right = right or names[-1]
        image = W.IntSlider(value=0, min=0, max=len(self.dataset) - 1, description="image")
        codec_l = W.Dropdown(options=names, value=left, description="left")
        codec_r = W.Dropdown(options=names, value=right, description="right")
        set_l = W.SelectionSlider(options=list(self.codecs[left].qualities), description="setting")
        set_r = W.SelectionSlider(options=list(self.codecs[right].qualities), description="setting")
        match = W.Checkbox(value=True, description="match the right codec's rate to the left")
        out = W.Output()
        busy = []

        def refresh(*_):
            if busy:  # our own changes to the sliders below fire refresh again
                return
            busy.append(True)
            try:
                update()
            finally:
                busy.clear()

        def update():
            for dd, sl in ((codec_l, set_l), (codec_r, set_r)):
                options = list(self.codecs[dd.value].qualities)
                if list(sl.options) != options:
                    sl.options = options
            if match.value:
                target = self.point(codec_l.value, set_l.value, image.value)["bpp"]
                set_r.value = self.closest_setting(codec_r.value, target, image.value)
            with out:
                out.clear_output(wait=True)
                fig = self.figure((codec_l.value, set_l.value), (codec_r.value, set_r.value),
                                  image.value)
                display(fig)
                plt.close(fig)

        for w in (image, codec_l, codec_r, set_l, set_r, match):
            w.observe(refresh, names="value")
        refresh()
        return W.VBox([image, W.HBox([W.VBox([codec_l, set_l]), W.VBox([codec_r, set_r])]), match, out])
