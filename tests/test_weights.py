"""cmdbench.weights: lookup, checksums and the download path against an HTTP server on loopback."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import pytest

from cmdbench import weights
from cmdbench.cli import main as cli_main

PAYLOAD = os.urandom(300_000)  # the "weight file" the server hands out
OTHER = os.urandom(300_000)  # a different file of the same size (wrong checksum)
NAME = "test_file"
FILENAME = "test_file.bin"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /good (PAYLOAD), /other (OTHER), /short (announces more bytes than it sends),
    /slow (PAYLOAD in two halves; between them waits for the client's .part file and records what
    the cache directory holds). Anything else: 404."""

    server_version = "loopback-test"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server API)
        self.server.requests.append(self.path)
        if self.path == "/good":
            self._send(PAYLOAD)
        elif self.path == "/other":
            self._send(OTHER)
        elif self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.close_connection = True
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            half = len(PAYLOAD) // 2
            self.wfile.write(PAYLOAD[:half])
            self.wfile.flush()
            cache = self.server.watch_dir
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not list(cache.glob("*.part")):
                time.sleep(0.01)
            self.server.mid_download = sorted(p.name for p in cache.iterdir())
            self.wfile.write(PAYLOAD[half:])
        else:
            self.send_error(404, "Not Found")

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []
    httpd.watch_dir = tmp_path / "cache"
    httpd.mid_download = None
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory and no override for the test entry."""
    d = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(d))
    monkeypatch.delenv(weights.override_env_var(NAME), raising=False)
    return d


def _register(monkeypatch, urls, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD)):
    wf = weights.WeightFile(
        name=NAME, filename=FILENAME, description="test payload", urls=tuple(urls), sha256=sha256,
        sha256_source="computed by the test", size=size, licence="test",
    )
    monkeypatch.setitem(weights.KNOWN, NAME, wf)
    return wf


def test_fetch_downloads_verifies_and_shows_progress(server, cache, monkeypatch, capsys):
    _register(monkeypatch, [f"{server.base}/good"])
    dest = weights.fetch(NAME, progress=True)
    assert dest == cache / FILENAME
    assert dest.read_bytes() == PAYLOAD
    assert list(cache.glob("*.part")) == []
    err = capsys.readouterr().err
    assert FILENAME in err and "100%" in err  # tqdm bar reached the announced length
    assert weights.verify(NAME).status == "ok"
    assert weights.require(NAME) == dest


def test_fetch_writes_to_part_file_then_renames(server, cache, monkeypatch):
    _register(monkeypatch, [f"{server.base}/slow"])
    weights.fetch(NAME, progress=False)
    mid = server.mid_download
    assert mid is not None and len(mid) == 1 and mid[0].startswith(FILENAME) and mid[0].endswith(".part")
    assert FILENAME not in mid  # the destination did not exist while bytes were still arriving
    assert (cache / FILENAME).read_bytes() == PAYLOAD


def test_wrong_checksum_is_an_error_and_leaves_no_file(server, cache, monkeypatch):
    _register(monkeypatch, [f"{server.base}/other"])
    with pytest.raises(weights.DownloadError) as info:
        weights.fetch(NAME, progress=False)
    msg = str(info.value)
    assert f"{server.base}/other" in msg and hashlib.sha256(OTHER).hexdigest() in msg
    assert list(cache.iterdir()) == []


def test_truncated_download_is_an_error_and_leaves_no_file(server, cache, monkeypatch):
    _register(monkeypatch, [f"{server.base}/short"])
    with pytest.raises(weights.DownloadError, match="/short"):
        weights.fetch(NAME, progress=False)
    assert list(cache.iterdir()) == []


def test_404_tries_the_next_url(server, cache, monkeypatch):
    _register(monkeypatch, [f"{server.base}/gone", f"{server.base}/good"])
    dest = weights.fetch(NAME, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["/gone", "/good"]


def test_all_urls_failing_lists_each(server, cache, monkeypatch):
    _register(monkeypatch, [f"{server.base}/gone", f"{server.base}/also-gone"])
    with pytest.raises(weights.DownloadError) as info:
        weights.fetch(NAME, progress=False)
    msg = str(info.value)
    assert "/gone: HTTP 404" in msg and "/also-gone: HTTP 404" in msg
    assert str(cache / FILENAME) in msg


def test_url_override_is_used_instead_of_known_urls(server, cache, monkeypatch):
    _register(monkeypatch, [f"{server.base}/gone"])
    weights.fetch(NAME, [f"{server.base}/good"], progress=False)
    assert server.requests == ["/good"]


def test_valid_file_is_not_downloaded_again_but_corrupt_one_is(server, cache, monkeypatch):
    _register(monkeypatch, [f"{server.base}/good"])
    weights.fetch(NAME, progress=False)
    weights.fetch(NAME, progress=False)
    assert server.requests == ["/good"]
    (cache / FILENAME).write_bytes(OTHER)
    weights.fetch(NAME, progress=False)
    assert server.requests == ["/good", "/good"]
    assert (cache / FILENAME).read_bytes() == PAYLOAD


def test_missing_file_error_says_where_and_how(cache, monkeypatch):
    wf = _register(monkeypatch, ["http://127.0.0.1:9/never"])
    with pytest.raises(weights.MissingWeightsError) as info:
        weights.require(NAME)
    msg = str(info.value)
    assert NAME in msg and FILENAME in msg
    assert str(cache / FILENAME) in msg  # where it was looked for / where to put it
    assert f"cmdbench weights fetch {NAME}" in msg
    assert wf.urls[0] in msg
    assert weights.override_env_var(NAME) in msg
    assert isinstance(info.value, FileNotFoundError)  # the CLI prints it without a traceback


def test_corrupt_file_error_names_file_expected_and_got(cache, monkeypatch):
    wf = _register(monkeypatch, [])
    cache.mkdir()
    (cache / FILENAME).write_bytes(OTHER)
    with pytest.raises(weights.CorruptWeightsError) as info:
        weights.require(NAME)
    msg = str(info.value)
    assert str(cache / FILENAME) in msg
    assert wf.sha256 in msg and hashlib.sha256(OTHER).hexdigest() in msg


def test_size_mismatch_is_reported_before_hashing(cache, monkeypatch):
    _register(monkeypatch, [])
    cache.mkdir()
    (cache / FILENAME).write_bytes(PAYLOAD[:10])
    with pytest.raises(weights.CorruptWeightsError, match=f"10 bytes; expected {len(PAYLOAD)}"):
        weights.verify(NAME)


def test_unknown_checksum_needs_trust(server, cache, monkeypatch, capsys):
    _register(monkeypatch, [f"{server.base}/good"], sha256=None, size=None)
    dest = weights.fetch(NAME, progress=False)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert digest in capsys.readouterr().out
    with pytest.raises(weights.CorruptWeightsError) as info:
        weights.require(NAME)
    assert digest in str(info.value) and "--trust" in str(info.value)
    assert weights.trust(NAME) == digest
    assert weights.verify(NAME).status == "trusted"
    assert weights.require(NAME) == dest
    dest.write_bytes(OTHER)  # a different file under the same name is not trusted
    with pytest.raises(weights.CorruptWeightsError):
        weights.require(NAME)


def test_env_override_is_the_only_place_looked(cache, tmp_path, monkeypatch):
    _register(monkeypatch, [])
    local = tmp_path / "elsewhere.bin"
    local.write_bytes(PAYLOAD)
    monkeypatch.setenv(weights.override_env_var(NAME), str(local))
    assert weights.override_env_var(NAME) == "CMDBENCH_WEIGHTS_TEST_FILE"
    assert weights.path(NAME) == local
    assert weights.require(NAME) == local
    local.unlink()
    with pytest.raises(weights.MissingWeightsError, match=str(local)):
        weights.require(NAME)


def test_sha256_file_matches_hashlib_and_notices_changes(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(PAYLOAD)
    assert weights.sha256_file(f) == hashlib.sha256(PAYLOAD).hexdigest()
    f.write_bytes(OTHER + b"!")  # new size and mtime -> a fresh hash, not the cached one
    assert weights.sha256_file(f) == hashlib.sha256(OTHER + b"!").hexdigest()


def test_unknown_name_lists_known_names():
    with pytest.raises(weights.UnknownWeightsError, match="clip_vit_b32"):
        weights.path("clip-vit-b32")


def test_known_table_is_well_formed():
    assert {"i3d_pretrained_400", "i3d_torchscript", "clip_vit_b32"} <= set(weights.KNOWN)
    for name, wf in weights.KNOWN.items():
        assert wf.name == name and wf.urls and wf.licence and wf.sha256_source
        assert wf.sha256 is None or (len(wf.sha256) == 64 and int(wf.sha256, 16) >= 0)
    clip_wf = weights.KNOWN["clip_vit_b32"]
    assert clip_wf.sha256 in clip_wf.urls[0]  # clip embeds the sha256 in the URL path


def test_clip_url_and_hash_match_clip_anytorch():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip.clip as clip_module
    url = clip_module._MODELS["ViT-B/32"]
    assert weights.KNOWN["clip_vit_b32"].urls[0] == url
    assert weights.KNOWN["clip_vit_b32"].sha256 == url.split("/")[-2]
    assert weights.KNOWN["clip_vit_b32"].filename == os.path.basename(url)


def test_cli_fetch_verify_path_list(server, cache, monkeypatch, capsys):
    _register(monkeypatch, [f"{server.base}/good"])
    assert cli_main(["weights", "verify", NAME]) == 1
    assert f"cmdbench weights fetch {NAME}" in capsys.readouterr().err
    assert cli_main(["weights", "fetch", NAME, "--no-progress"]) == 0
    assert cli_main(["weights", "verify", NAME]) == 0
    assert "ok" in capsys.readouterr().out
    assert cli_main(["weights", "path", NAME]) == 0
    assert capsys.readouterr().out.strip() == str(cache / FILENAME)
    assert cli_main(["weights", "list", NAME, "--check"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "present" in out and "ok" in out and f"{server.base}/good" in out
    assert cli_main(["weights", "list", "no-such-file"]) == 1


@pytest.mark.weights
def test_real_clip_file_if_present():
    """The real ViT-B/32 file, when present in the cache (or ~/.cache/clip), has the published sha256."""
    p = weights.path("clip_vit_b32")
    if not Path(p).is_file():
        pytest.skip(f"CLIP ViT-B/32 weights not present at {p}; run `cmdbench weights fetch clip_vit_b32`")
    assert weights.verify("clip_vit_b32").status in {"ok", "trusted"}
