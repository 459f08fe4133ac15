"""The traditional anchors by name, and which of them can run on this machine."""
from __future__ import annotations

import sys
from typing import Callable, Dict, Iterable, List, Optional

from icmlib.evaluation.anchors.base import Codec
from icmlib.evaluation.anchors.ffmpeg import AV1, HEVC
from icmlib.evaluation.anchors.pillow import AVIF, JPEG, JPEG2000, WebP
from icmlib.evaluation.anchors.vvc import VVC

#: The traditional anchors by name, in the order tables list them.
ANCHORS: Dict[str, Callable[..., Codec]] = {
    "jpeg": JPEG, "jpeg2000": JPEG2000, "webp": WebP, "avif": AVIF,
    "hevc": HEVC, "av1": AV1, "vvc": VVC,
}


def make_anchor(name: str, **kwargs) -> Codec:
    """A traditional anchor by name (``ANCHORS``); keyword arguments go to its constructor."""
    try:
        factory = ANCHORS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown anchor {name!r}; choose from {list(ANCHORS)}") from None
    return factory(**kwargs)


def available_anchors(names: Optional[Iterable[str]] = None, verbose: bool = True,
                      file=None) -> List[Codec]:
    """The anchors that can run on this machine (all of ``ANCHORS`` by default). Each one
    that cannot is skipped with a line saying why and how to install it."""
    out = []
    for name in (list(ANCHORS) if names is None else list(names)):
        codec = make_anchor(name)
        ok, why = codec.available()
        if ok:
            out.append(codec)
        elif verbose:
            print(f"skipping anchor {name}: {why}", file=file or sys.stderr)
    return out
