"""COCO 2017 on disk: where it lives, how to get it, and what it is checked against.

The ``gpu`` preset trains and evaluates on COCO 2017, as the paper does. It is looked for in
``$ICM_COCO_ROOT`` (else ``$ICM_CACHE/coco``) in COCO's own layout: ``train2017/``,
``val2017/`` and ``annotations/instances_*.json``. :func:`download_coco` fills that folder
from COCO's servers, resuming an interrupted download and checking each zip against the
size and md5 sum COCO's files are published with (:data:`COCO_CHECKSUMS`) before unpacking
it; unpacking checks every member's CRC too.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Optional, Tuple, Union

from icmlib.cache import cache_dir
from icmlib.data.download import DownloadError, download_file

PathLike = Union[str, os.PathLike]

#: the environment variable naming the folder COCO 2017 is in (see :func:`coco_root`)
COCO_ROOT_ENV = "ICM_COCO_ROOT"
#: COCO 2017's files on COCO's servers: images of each split, and the annotations of both
COCO_URLS = {
    "train2017": "http://images.cocodataset.org/zips/train2017.zip",
    "val2017": "http://images.cocodataset.org/zips/val2017.zip",
    "annotations": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
}
#: ``(bytes, md5)`` of each file of :data:`COCO_URLS`, as published for COCO 2017 (the sums
#: the detection toolkits, COCO's mirrors and its download scripts check)
COCO_CHECKSUMS = {
    "train2017": (19336861798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val2017": (815585330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "annotations": (252907541, "f4bbac642086de4f52a3fdda2de5fa2c"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset the preset asks for is not on disk; the message says how to get it."""


def coco_root(root: Optional[PathLike] = None) -> Path:
    """Where COCO 2017 lives: ``root``, else ``$ICM_COCO_ROOT``, else ``$ICM_CACHE/coco``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(COCO_ROOT_ENV)
    return Path(env) if env else cache_dir() / "coco"


def _coco_split_name(split: str) -> str:
    # COCO's test2017 has no public annotations: like the paper, report on val2017 (the
    # gpu preset chooses nothing on it: its recipe comes from the cpu study)
    names = {"train": "train2017", "val": "val2017", "test": "val2017",
             "train2017": "train2017", "val2017": "val2017"}
    if split not in names:
        raise ValueError(f"unknown COCO split {split!r}; use 'train', 'val' or 'test' "
                         f"(train2017 / val2017 / val2017)")
    return names[split]


def _coco_paths(root: Path, split: str) -> Tuple[Path, Path]:
    return root / split, root / "annotations" / f"instances_{split}.json"


def _by_hand(root: Path, split: str) -> str:
    """What to do without network, for :func:`download_coco`'s error."""
    image_dir, ann_file = _coco_paths(root, split)
    urls = "\n  ".join(COCO_URLS[n] for n in (split, "annotations"))
    return (f"download these files elsewhere:\n  {urls}\n"
            f"and unzip them into {root}, so that it holds {image_dir}/*.jpg and {ann_file} "
            f"(or put the zip files in {root} and run download_coco again, or set "
            f"${COCO_ROOT_ENV} to a folder laid out like that).")


def _unzip(zip_path: Path, root: Path, name: str) -> None:
    """Unpack COCO's ``zip_path`` into ``root`` (of the annotations, only the instance
    files). Every member's CRC is checked: a damaged zip is deleted, with a clear error."""
    from tqdm.auto import tqdm

    try:
        with zipfile.ZipFile(zip_path) as z:
            members = z.namelist()
            if name == "annotations":
                members = [m for m in members if m.endswith(("instances_train2017.json",
                                                              "instances_val2017.json"))]
            for m in tqdm(members, desc=f"unzip {zip_path.name}", unit="file",
                          mininterval=1.0):
                z.extract(m, root)
    except zipfile.BadZipFile as e:
        zip_path.unlink()
        raise DownloadError(f"{zip_path} was not a complete zip file ({e}; deleted it): "
                            f"run download_coco again") from None


def download_coco(root: Optional[PathLike] = None, split: str = "val2017", *,
                  keep_zips: bool = False) -> Tuple[Path, Path]:
    """Download and unpack COCO 2017 ``split`` (``"val2017"``: 5k images, 0.8 GB;
    ``"train2017"``: 118k images, 18 GB) and its annotations into ``root`` (default
    :func:`coco_root`). Returns ``(image_dir, ann_file)``.

    Parts already unpacked, and zip files already in ``root``, are not downloaded again;
    an interrupted download resumes where it stopped. Each zip is checked against
    :data:`COCO_CHECKSUMS` (a mismatch raises :class:`~icmlib.data.download.ChecksumError`
    and deletes it). Without network it raises a
    :class:`~icmlib.data.download.DownloadError` that names the URLs and where to put the
    files by hand.
    """
    split = _coco_split_name(split)
    root = coco_root(root)
    root.mkdir(parents=True, exist_ok=True)
    image_dir, ann_file = _coco_paths(root, split)
    wanted = []
    if not (image_dir.is_dir() and any(image_dir.iterdir())):
        wanted.append(split)
    if not ann_file.is_file():
        wanted.append("annotations")
    for name in wanted:
        url = COCO_URLS[name]
        zip_path = root / Path(url).name
        if not zip_path.is_file():
            size, md5 = COCO_CHECKSUMS[name]
            download_file(url, zip_path, size=size, md5=md5, desc=f"COCO {name}",
                          instead=_by_hand(root, split))
        _unzip(zip_path, root, name)
        if not keep_zips:
            zip_path.unlink()
    return image_dir, ann_file
