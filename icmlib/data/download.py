"""Downloads that check what they got and pick up where they stopped.

COCO 2017 is 19 GB and pretrained weights are hundreds of MB: a dropped connection must not
mean starting again, and a damaged or substituted file must never be unpacked or loaded.
:func:`download_file` streams into ``<file>.part``; when a transfer breaks off it asks the
server for the remaining bytes only (an HTTP ``Range`` request), in the same call or in a
later one, and starts afresh only where the server does not serve ranges. The finished file
is checked -- its size, and its sha256 or md5 where one is known -- before it is renamed
into place; a file that fails the check is deleted, never used. Offline, the error says
what to download and where to put it by hand.

Each network operation times out after :data:`TIMEOUT` seconds, for these downloads only:
``socket``'s process-wide default, which every other connection of the process uses, is
left alone.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Tuple, Union
from urllib.parse import urlparse

import torch

PathLike = Union[str, os.PathLike]

#: set to 1 and nothing is downloaded: a missing file is named, with where to put it
OFFLINE_ENV = "ICM_OFFLINE"

#: seconds each network operation (connecting, each read) may take
TIMEOUT = 60
#: how many times one call resumes a transfer that broke off (each try must bring bytes)
MAX_RESUMES = 20
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed (no network, a server error, a transfer that broke off for good);
    the message says what to download and where to put it by hand."""


class ChecksumError(DownloadError):
    """A downloaded file is not the one expected (its size or checksum differs); it was
    deleted, never used."""


class _Interrupted(OSError):
    """A transfer that stopped before its end: worth resuming."""


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _content_range(value: str) -> Tuple[int, Optional[int]]:
    """``(first byte, total size or None)`` of a ``Content-Range`` header."""
    m = re.fullmatch(r"bytes\s+(\d+|\*)(?:-\d+)?/(\d+|\*)", value.strip())
    if not m:
        raise _Interrupted(f"the server sent an unreadable Content-Range {value!r}")
    start = 0 if m.group(1) == "*" else int(m.group(1))
    return start, None if m.group(2) == "*" else int(m.group(2))


def _request(url: str, have: int):
    """Ask for ``url`` from byte ``have`` on. Returns ``(response, first byte sent, total
    size or None)``; ``response`` is ``None`` when nothing is left after byte ``have``."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise
        # "range not satisfiable": the .part already holds every byte (or more)
        total = _content_range(e.headers.get("Content-Range", "bytes */*"))[1]
        e.close()
        return None, have, total
    if response.status == 206:
        start, total = _content_range(response.headers.get("Content-Range", ""))
    else:  # 200: the whole file (a server that does not serve ranges)
        length = response.headers.get("Content-Length")
        start, total = 0, int(length) if length else None
    return response, start, total


def _transfer(url: str, part: Path, desc: str, progress: bool) -> Optional[int]:
    """One request: append what the server sends to ``part``, asking only for the bytes
    after those it already holds. Returns the file's total size where the server said it;
    raises :class:`_Interrupted` when the transfer stopped short."""
    from tqdm.auto import tqdm

    have = _size(part)
    response, start, total = _request(url, have)
    if response is None:
        return total
    with response:
        if start not in (0, have):  # not the bytes asked for: start afresh next time
            part.unlink()
            raise _Interrupted(f"the server sent bytes from {start} on, where {have} "
                               f"were asked for")
        with open(part, "ab" if start else "wb") as f, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True,
                     unit_divisor=1024, desc=desc, disable=not progress) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except http.client.IncompleteRead as e:
                    f.write(e.partial)
                    raise _Interrupted(str(e)) from None
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    got = _size(part)
    if total is not None and got < total:
        raise _Interrupted(f"the transfer stopped after {got} of {total} bytes")
    return total


def _fetch(url: str, part: Path, desc: str, progress: bool, instead: str) -> Optional[int]:
    """:func:`_transfer` until ``part`` holds the whole file, resuming a transfer that
    broke off while each try brings bytes; else a :class:`DownloadError` that says
    ``instead`` (what to do by hand)."""
    for _ in range(MAX_RESUMES + 1):
        before = _size(part)
        try:
            return _transfer(url, part, desc, progress)
        except urllib.error.HTTPError as e:  # 404, 403, 500: resuming does not help
            error: Exception = e
            break
        except (OSError, http.client.HTTPException) as e:  # no network, timeouts, resets
            error = e
            if _size(part) <= before:
                break
    if part.exists() and not _size(part):
        part.unlink()
    kept = _size(part)
    resume = (f"The {kept} bytes downloaded so far are kept in {part}: run again to "
              f"resume.\n" if kept else "")
    raise DownloadError(f"could not download {url} ({type(error).__name__}: {error}).\n"
                        f"{resume}Without network, {instead}") from None


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _verify(part: Path, url: str, size: Optional[int], sha256: Optional[str],
            md5: Optional[str]) -> None:
    """Delete ``part`` and raise :class:`ChecksumError` unless it has ``size`` bytes and
    the checksums given (a checksum may be a prefix of the hex digest)."""
    got = _size(part)
    problem = f"{got} bytes where {size} were expected" if size is not None and got != size else ""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected and not problem:
            digest = _digest(part, algorithm)
            if not digest.startswith(expected.lower()):
                problem = f"{algorithm} {digest[:16]}... where {expected[:16]}... was expected"
    if problem:
        part.unlink()
        raise ChecksumError(f"{url} was downloaded, but it is not the file expected: {problem}"
                            f" -- a damaged download (deleted it; run again to download it "
                            f"afresh)")


def download_file(url: str, dest: PathLike, *, size: Optional[int] = None,
                  sha256: Optional[str] = None, md5: Optional[str] = None,
                  desc: Optional[str] = None, progress: bool = True,
                  instead: Optional[str] = None) -> Path:
    """Download ``url`` to ``dest``, verified, resuming what an earlier try left.

    The bytes go to ``<dest>.part`` (a transfer that breaks off is resumed with a ``Range``
    request, up to :data:`MAX_RESUMES` times in this call, and from where it stopped in a
    later call), then are checked against ``size`` (else the size the server announced),
    ``sha256`` and ``md5`` -- a checksum may be a prefix of the hex digest, as torch hub
    file names carry -- and only then renamed to ``dest``. Returns ``dest``.

    Raises :class:`ChecksumError` (the file is deleted) when the check fails, and
    :class:`DownloadError` when the server cannot be reached or the transfer does not
    finish; its message ends with ``instead`` (what to do by hand; default: download
    ``url`` elsewhere and put it at ``dest``). Both are ``OSError``.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if instead is None:
        instead = f"download {url} on a machine with network access and put it at {dest}"
    total = _fetch(url, part, desc or dest.name, progress, instead)
    _verify(part, url, size if size is not None else total, sha256, md5)
    os.replace(part, dest)
    return dest


def downloads_off() -> bool:
    """Whether ``$ICM_OFFLINE`` forbids downloads (set, and not ``0``)."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def hub_download():
    """:func:`hub_checkpoint`, or ``None`` when downloads are off (:func:`downloads_off`):
    the ``download`` argument of the loaders that fetch pretrained weights."""
    return None if downloads_off() else hub_checkpoint


def hub_checkpoint(url: str) -> Path:
    """``url``'s file in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded
    if missing, where torchvision's and CompressAI's pretrained weights then load from.

    Unlike ``torch.hub``'s own download it times out and resumes (see :func:`download_file`);
    like it, it checks the sha256 prefix that the file's name carries
    (``name-<sha256 prefix>.pth``). Failures raise ``OSError`` (:class:`DownloadError`,
    :class:`ChecksumError`).
    """
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if file.is_file():
        return file
    expected = re.search(r"-([a-f0-9]+)\.", file.name)
    return download_file(url, file, sha256=expected.group(1) if expected else None)
