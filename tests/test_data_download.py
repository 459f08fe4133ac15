"""Tests of icmlib.data's downloads against a real HTTP server on 127.0.0.1 (no internet):
an interrupted transfer resumes with a Range request for the remaining bytes, a file whose
size or checksum is wrong is refused and deleted, offline gives one clear message; and
download_coco and hub_checkpoint on top of that."""
import hashlib
import http.server
import io
import re
import socket
import threading
import urllib.request
import zipfile

import pytest

from icmlib.data import (COCO_CHECKSUMS, COCO_URLS, ChecksumError, DownloadError, download_coco,
                         download_file, hub_checkpoint)


class FileServer:
    """Serves ``files`` (path -> bytes) on 127.0.0.1, honouring ``Range: bytes=N-`` (unless
    ``ranges`` is False), and records each request as ``(path, Range header or None)``.
    ``cuts[path]`` lists byte counts: the next transfers of ``path`` promise the whole rest
    in their headers but stop after that many bytes of body and close the connection."""

    def __init__(self):
        self.files, self.cuts, self.requests, self.ranges = {}, {}, [], True
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _handler(server):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                asked = self.headers.get("Range")
                server.requests.append((self.path, asked))
                data = server.files.get(self.path)
                if data is None:
                    return self.send_error(404)
                start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if (
                    asked and server.ranges) else 0
                if start >= len(data) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cuts.get(self.path):
                    body = body[:server.cuts[self.path].pop(0)]
                    self.close_connection = True
                self.wfile.write(body)

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # never through a proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s = FileServer()
    yield s
    s.close()


@pytest.fixture
def offline_url():
    """A URL on 127.0.0.1 where nothing listens: connections are refused, as offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


PAYLOAD = bytes(range(256)) * 1200  # 307,200 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ---- download_file ---------------------------------------------------------------------
def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.cuts["/big.bin"] = [100_000]
    dest = download_file(f"{server.url}/big.bin", tmp_path / "big.bin", sha256=SHA,
                         progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=100000-")], \
        "the second request asks for the remaining bytes only"
    assert not (tmp_path / "big.bin.part").exists()


def test_a_part_file_left_by_an_earlier_run_is_resumed(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.cuts["/big.bin"] = [50_000]  # and this run is interrupted once more
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD[:120_000])
    download_file(f"{server.url}/big.bin", tmp_path / "big.bin", sha256=SHA, progress=False)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == ["bytes=120000-", "bytes=170000-"]
    # a .part that already holds every byte: the server has nothing left to send (416)
    (tmp_path / "again.bin.part").write_bytes(PAYLOAD)
    server.files["/again.bin"] = PAYLOAD
    download_file(f"{server.url}/again.bin", tmp_path / "again.bin", sha256=SHA, progress=False)
    assert (tmp_path / "again.bin").read_bytes() == PAYLOAD


def test_a_server_without_ranges_makes_it_start_afresh(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.ranges = False
    (tmp_path / "big.bin.part").write_bytes(b"stale bytes of another file")
    download_file(f"{server.url}/big.bin", tmp_path / "big.bin", sha256=SHA, progress=False)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("check", [dict(sha256="0" * 64), dict(md5="0" * 32),
                                   dict(size=len(PAYLOAD) + 1),
                                   dict(sha256=SHA[:8] + ("1" if SHA[8] == "0" else "0"))])
def test_a_wrong_checksum_or_size_is_refused_and_deleted(server, tmp_path, check):
    server.files["/big.bin"] = PAYLOAD
    with pytest.raises(ChecksumError, match="damaged download"):
        download_file(f"{server.url}/big.bin", tmp_path / "big.bin", progress=False, **check)
    assert not list(tmp_path.iterdir()), "neither the file nor its .part is kept"


def test_a_resumed_file_is_checked_as_a_whole(server, tmp_path):
    """A .part whose first bytes are not the server's: resuming completes it, the checksum
    finds it wrong, and it is deleted (the next try then starts afresh and succeeds)."""
    server.files["/big.bin"] = PAYLOAD
    (tmp_path / "big.bin.part").write_bytes(b"\0" * 1000)
    url, dest = f"{server.url}/big.bin", tmp_path / "big.bin"
    with pytest.raises(ChecksumError):
        download_file(url, dest, sha256=SHA, progress=False)
    assert not dest.exists() and not (tmp_path / "big.bin.part").exists()
    assert download_file(url, dest, md5=hashlib.md5(PAYLOAD).hexdigest(),
                         progress=False).read_bytes() == PAYLOAD


def test_offline_gives_one_message_saying_what_to_download_and_where(offline_url, tmp_path):
    url, dest = f"{offline_url}/weights.pth", tmp_path / "sub" / "weights.pth"
    with pytest.raises(DownloadError) as e:
        download_file(url, dest, progress=False)
    msg = str(e.value)
    assert url in msg and str(dest) in msg and "Without network" in msg
    assert isinstance(e.value, OSError)
    assert not list(dest.parent.iterdir()), "no empty .part is left behind"
    # bytes an earlier run got are kept, and the message says so
    (tmp_path / "sub" / "weights.pth.part").write_bytes(b"x" * 10)
    with pytest.raises(DownloadError, match="10 bytes downloaded so far are kept"):
        download_file(url, dest, progress=False)


def test_errors_that_resuming_cannot_fix_stop_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{server.url}/missing.bin", tmp_path / "m.bin", progress=False)
    server.files["/stuck.bin"] = PAYLOAD
    server.cuts["/stuck.bin"] = [1000, 0, 0]  # the second try brings no bytes: give up
    with pytest.raises(DownloadError, match="1000 bytes downloaded so far"):
        download_file(f"{server.url}/stuck.bin", tmp_path / "s.bin", progress=False)
    assert len(server.requests) == 3


# ---- on top: pretrained weights and COCO 2017 -----------------------------------------
def test_hub_checkpoint_with_its_own_timeout_and_the_hash_in_its_name(server, tmp_path,
                                                                     monkeypatch):
    """Pretrained weights land in torch's hub cache; the download times out on its own
    (socket's process-wide default untouched) and a file whose sha256 does not match the
    prefix in its name is refused and removed, as torch.hub does."""
    prefix = SHA[:8]
    server.files[f"/net-{prefix}.pth"] = PAYLOAD
    server.files["/other-deadbeef.pth"] = PAYLOAD
    calls, real_urlopen = [], urllib.request.urlopen

    def recording_urlopen(request, *args, timeout=None, **kwargs):
        calls.append((timeout, socket.getdefaulttimeout()))
        return real_urlopen(request, *args, timeout=timeout, **kwargs)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", recording_urlopen)
    good = hub_checkpoint(f"{server.url}/net-{prefix}.pth")
    assert good == tmp_path / "hub" / "checkpoints" / f"net-{prefix}.pth"
    assert good.read_bytes() == PAYLOAD and calls == [(60, None)]
    assert hub_checkpoint(f"{server.url}/net-{prefix}.pth") == good  # cached: no request
    assert len(server.requests) == 1
    with pytest.raises(OSError, match="damaged download"):
        hub_checkpoint(f"{server.url}/other-deadbeef.pth")
    assert not (good.parent / "other-deadbeef.pth").exists()


def _zip(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return buf.getvalue()


@pytest.fixture
def coco_server(server, monkeypatch):
    """COCO's three zips (tiny stand-ins) on the local server, with their checksums."""
    zips = {"val2017": _zip({"val2017/000000000001.jpg": b"jpeg" * 5000}),
            "annotations": _zip({"annotations/instances_val2017.json": b"{}",
                                 "annotations/captions_val2017.json": b"{}"})}
    for name, data in zips.items():
        path = "/" + COCO_URLS[name].split("/", 3)[3]
        server.files[path] = data
        monkeypatch.setitem(COCO_URLS, name, server.url + path)
        monkeypatch.setitem(COCO_CHECKSUMS, name, (len(data), hashlib.md5(data).hexdigest()))
    return server


def test_download_coco_resumes_checks_and_unpacks(coco_server, tmp_path):
    coco_server.cuts["/zips/val2017.zip"] = [3000]
    image_dir, ann_file = download_coco(tmp_path, "val")
    assert (image_dir / "000000000001.jpg").read_bytes() == b"jpeg" * 5000
    assert ann_file.read_text() == "{}"
    assert not (tmp_path / "annotations" / "captions_val2017.json").exists()
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob("*.part"))
    assert ("/zips/val2017.zip", "bytes=3000-") in coco_server.requests
    n = len(coco_server.requests)
    assert download_coco(tmp_path, "val2017") == (image_dir, ann_file)
    assert len(coco_server.requests) == n, "what is unpacked is not downloaded again"


def test_download_coco_refuses_a_zip_that_is_not_cocos(coco_server, tmp_path, monkeypatch):
    size, md5 = COCO_CHECKSUMS["val2017"]
    monkeypatch.setitem(COCO_CHECKSUMS, "val2017", (size, "0" * 32))
    with pytest.raises(ChecksumError, match="md5"):
        download_coco(tmp_path, "val2017")
    assert not list(tmp_path.glob("*.zip*")) and not (tmp_path / "val2017").exists()
    # a zip put in place by hand that is damaged: deleted, with a clear error
    (tmp_path / "val2017.zip").write_bytes(b"PK not really a zip")
    with pytest.raises(DownloadError, match="not a complete zip file"):
        download_coco(tmp_path, "val2017")
    assert not (tmp_path / "val2017.zip").exists()


def test_download_coco_offline_says_what_to_download_and_where(offline_url, tmp_path,
                                                               monkeypatch):
    for name in COCO_URLS:
        monkeypatch.setitem(COCO_URLS, name, f"{offline_url}/{name}.zip")
    with pytest.raises(DownloadError) as e:
        download_coco(tmp_path, "val2017")
    msg = str(e.value)
    assert COCO_URLS["val2017"] in msg and COCO_URLS["annotations"] in msg
    assert str(tmp_path) in msg and "instances_val2017.json" in msg
    assert not list(tmp_path.glob("*.part")), "no half-downloaded file is left behind"
    with pytest.raises(ValueError, match="split"):
        download_coco(tmp_path, "test2015")


def test_icm_offline_turns_every_download_off(monkeypatch):
    """One switch for every loader of pretrained weights (the CLI's --model, the zoo
    anchors, the gpu preset's zoo codec): set and not 0 means no download."""
    from icmlib.data.download import downloads_off, hub_checkpoint, hub_download

    monkeypatch.delenv("ICM_OFFLINE", raising=False)
    assert not downloads_off() and hub_download() is hub_checkpoint
    for value, off in (("", False), ("0", False), ("1", True), ("yes", True)):
        monkeypatch.setenv("ICM_OFFLINE", value)
        assert downloads_off() is off and (hub_download() is None) is off
