"""Remote segments for real, all on this machine: a zarr written by ``vesuvius-pt convert`` served from a
loopback ``http.server`` and from a loopback s3 endpoint (moto in server mode), opened by URL, prefetched,
then opened and trained on again with the server stopped (from the chunk cache alone); the one-line
errors (unreachable host, 403, 404, not a zarr, a download that breaks off and resumes); the cache's cap.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from napari_vesuvius_pt.cli import main
from napari_vesuvius_pt.data import remote
from napari_vesuvius_pt.data.remote import ChunkCache, RemoteError, is_url, parse_size
from napari_vesuvius_pt.data.segment import open_segment
from napari_vesuvius_pt.data.synthetic import make_fragment, write_segment
from napari_vesuvius_pt.errors import ConfigError

SHAPE = (12, 96, 96)
CHUNKS = ("4", "32", "32")  # 3 x 3 x 3 = 27 volume chunks


# ---------------------------------------------------------------- servers on 127.0.0.1


class Handler(SimpleHTTPRequestHandler):
    """Serves a folder; counts GET requests; ``break_chunks_after`` sends half of every volume chunk
    after that many chunk requests and drops the connection (a download that breaks off)."""

    gets = 0
    chunk_gets = 0
    break_chunks_after: int | None = None

    def log_message(self, *args) -> None:
        pass

    def do_GET(self):
        cls = type(self)
        cls.gets += 1
        if "/volume/c/" in self.path:
            cls.chunk_gets += 1
            if cls.break_chunks_after is not None and cls.chunk_gets > cls.break_chunks_after:
                data = Path(self.translate_path(self.path)).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
        return super().do_GET()


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default listen backlog (5) drops concurrent connects (1 s SYN retries)


class HttpServer:
    def __init__(self, root: Path):
        handler = type("H", (Handler,), {"gets": 0, "chunk_gets": 0, "break_chunks_after": None})
        self.handler = handler
        self.server = Server(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """A folder to serve: ``frag.zarr`` (written by ``vesuvius-pt convert``), its source fragment, and a
    layers-folder segment ``seg``."""
    root = tmp_path_factory.mktemp("served")
    frag = write_segment(make_fragment(SHAPE, seed=4), root / "frag")
    assert main(["convert", str(frag), str(root / "frag.zarr"), "--chunks", *CHUNKS, "--quiet"]) == 0
    write_segment(make_fragment(SHAPE, seed=5), root / "seg", layout="layers")
    (root / "notzarr").mkdir()
    (root / "notzarr" / "readme.txt").write_text("not a segment")
    return root


@pytest.fixture
def http(served):
    server = HttpServer(served)
    yield server
    if server.thread.is_alive():
        server.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """Each test its own cache folder (the environment variable, as a user would set it)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(remote.CACHE_ENV, str(folder))
    monkeypatch.delenv(remote.CACHE_SIZE_ENV, raising=False)
    return folder


def info_json(capsys, *argv) -> dict:
    assert main(["info", *argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def one_line_error(capsys, argv, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def cached_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


# ---------------------------------------------------------------- https


def test_url_detection_and_sizes():
    assert is_url("https://dl.ash2txt.org/a.zarr") and is_url("s3://bucket/x.zarr") and is_url("http://h/x")
    assert not is_url("/data/x.zarr") and not is_url(Path("/data")) and not is_url("https:/collapsed")
    assert parse_size("20G") == 20 * 2**30 and parse_size("500M") == 500 * 2**20 and parse_size("4096") == 4096
    with pytest.raises(ConfigError, match="cache size"):
        parse_size("lots")


def test_http_zarr_opens_prefetches_and_trains_offline(served, http, cache, capsys, tmp_path):
    url = f"{http.url}/frag.zarr"
    local = open_segment(served / "frag.zarr")

    info = info_json(capsys, url)
    assert info["path"] == url and info["format"] == "zarr" and info["shape"] == list(SHAPE)
    assert info["has_mask"] and info["has_inklabels"] and info["storage"].startswith("remote zarr (http)")
    seg = open_segment(url)
    assert np.array_equal(seg.mask, local.mask) and np.array_equal(seg.inklabels, local.inklabels)
    assert np.array_equal(seg.read_tile(2, 10, 20, 8, 40), local.read_tile(2, 10, 20, 8, 40))

    # prefetch: every chunk inside the mask (the synthetic mask touches all 3 x 3 columns), all layers
    assert main(["prefetch", url, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("prefetched 27 chunk(s)"), out
    assert main(["prefetch", url, "--quiet"]) == 0
    assert "0 fetched from the server" in capsys.readouterr().out  # a rerun downloads nothing

    # a second read of the same chunks never touches the network
    before = http.handler.gets
    again = open_segment(url)
    assert np.array_equal(again.volume[:], local.volume[:])
    assert http.handler.gets == before

    http.stop()  # offline from here on
    info = info_json(capsys, url)
    assert info["shape"] == list(SHAPE) and info["has_inklabels"]
    offline = open_segment(url)
    assert np.array_equal(offline.volume[:], local.volume[:])
    assert np.array_equal(offline.inklabels, local.inklabels)
    # a Segment sent to a DataLoader worker re-opens its source there, through the same cache
    source = pickle.loads(pickle.dumps(offline.volume.source))
    assert np.array_equal(source.read(range(4), slice(0, 96), slice(0, 96)), local.volume[0:4])

    run = tmp_path / "run"
    assert main(["pretrain", "--segments", url, "--out", str(run), "--epochs", "1", "--width", "0.125",
                 "--tile", "8x32x32", "--stride", "8", "--batch-size", "2", "--steps-per-epoch", "2",
                 "--quiet", "--json"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and (run / "last.pt").is_file()


def test_prefetch_region_and_layers_fetches_exactly_those_chunks(served, http, cache, capsys, tmp_path):
    url = f"{http.url}/frag.zarr"
    region = tmp_path / "region.json"
    region.write_text(json.dumps({"polygons": [[[0, 0], [0, 40], [40, 40], [40, 0]]]}))
    assert main(["prefetch", url, "--region", str(region), "--layers", "4:8", "--cache", str(cache), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("prefetched 4 chunk(s)")  # z chunk 1, rows and columns 0..1
    chunks = sorted(p.relative_to(cache).parts[1:] for p in cached_files(cache) if "c" in p.parts and "volume" in p.parts)
    assert chunks == [("volume", "c", "1", y, x) for y in "01" for x in "01"]

    http.stop()
    local = open_segment(served / "frag.zarr")
    seg = open_segment(url, z_range=(4, 8))  # opens offline: metadata, mask and labels came with the prefetch
    assert np.array_equal(seg.read_tile(0, 0, 0, 4, 64), local.read_tile(4, 0, 0, 4, 64))
    with pytest.raises(RemoteError, match="cannot reach"):  # a chunk that was not prefetched
        seg.read_tile(0, 64, 64, 4, 32)

    one_line_error(capsys, ["prefetch", url, "--layers", "8:4"], "--layers")
    one_line_error(capsys, ["prefetch", str(served / "frag.zarr")], "not an https:// or s3:// URL")


def test_ome_zarr_by_url_with_its_levels_and_a_leading_axis(served, http, cache):
    import shutil

    import zarr

    vol = np.random.default_rng(2).integers(0, 255, (6, 64, 64), dtype=np.uint8)  # masked uint8, as served
    group = zarr.open_group(str(served / "ome.zarr"), mode="w")
    group.create_array("0", shape=(1, *vol.shape), chunks=(1, 2, 32, 32), dtype=vol.dtype)[0] = vol
    group.create_array("1", shape=(1, 6, 32, 32), chunks=(1, 2, 32, 32), dtype=vol.dtype)[0] = vol[:, ::2, ::2]
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}],
                                   "axes": [{"name": n} for n in "czyx"]}]
    try:
        seg = open_segment(f"{http.url}/ome.zarr", z_range=(1, 5), reverse=True)
        assert seg.fmt == "ome-zarr" and seg.shape == (4, 64, 64) and seg.path == f"{http.url}/ome.zarr"
        assert np.array_equal(seg.volume[:], vol[1:5][::-1])
        assert len(seg.levels) == 2 and np.array_equal(seg.levels[1][0], vol[4, ::2, ::2])
        plan = remote.plan_prefetch(f"{http.url}/ome.zarr", layers=(2, 4))
        assert sorted(plan.keys) == sorted(f"0/c/0/1/{y}/{x}" for y in "01" for x in "01")  # z chunk 1, axis c
    finally:
        shutil.rmtree(served / "ome.zarr")


def test_layers_folder_over_https_opens_and_reopens_offline(served, http, cache, capsys):
    url = f"{http.url}/seg"
    local = open_segment(served / "seg")
    seg = open_segment(url)
    assert seg.fmt == "layers-folder" and seg.shape == SHAPE
    assert np.array_equal(seg.volume[:], local.volume[:]) and np.array_equal(seg.inklabels, local.inklabels)
    http.stop()
    info = info_json(capsys, url)
    assert info["format"] == "layers-folder" and info["has_mask"] and "downloaded from" in info["storage"]


def test_convert_a_url_into_a_local_zarr(served, http, cache, capsys, tmp_path):
    out = tmp_path / "copy.zarr"
    assert main(["convert", f"{http.url}/frag.zarr", str(out), "--quiet"]) == 0
    capsys.readouterr()
    info = info_json(capsys, str(out))
    assert info["converted_from"] == f"{http.url}/frag.zarr" and info["has_inklabels"]
    assert np.array_equal(open_segment(out).volume[:], open_segment(served / "frag.zarr").volume[:])


def test_user_errors_are_one_line(served, http, cache, capsys):
    one_line_error(capsys, ["info", f"http://127.0.0.1:{free_port()}/x.zarr"], "cannot reach 127.0.0.1")
    one_line_error(capsys, ["info", f"{http.url}/missing.zarr"], "not found (404)")
    one_line_error(capsys, ["info", f"{http.url}/notzarr"], "is not a zarr")
    one_line_error(capsys, ["info", f"{http.url}/frag.zarr", "--cache-size", "lots"], "cache size")


def test_a_zarr_uploaded_after_a_404_opens(served, http, cache, capsys):
    import shutil

    url = f"{http.url}/late.zarr"
    one_line_error(capsys, ["info", url], "not found (404)")
    shutil.copytree(served / "frag.zarr", served / "late.zarr")
    try:
        assert info_json(capsys, url)["shape"] == list(SHAPE)  # the remembered absence was asked about again
    finally:
        shutil.rmtree(served / "late.zarr")


def test_interrupted_download_resumes_without_corrupt_chunks(served, http, cache, capsys):
    url = f"{http.url}/frag.zarr"
    http.handler.break_chunks_after = 10
    one_line_error(capsys, ["prefetch", url, "--jobs", "1", "--quiet"], "interrupted", "run the same command again")
    kept = [p for p in cached_files(cache) if "volume" in p.parts and "c" in p.parts and ".absent" not in p.parts]
    assert len(kept) == 10
    assert not [p for p in cached_files(cache) if remote.TMP_MARK in p.name]
    entry = kept[0].parents[len(kept[0].relative_to(cache).parts) - 2]
    for p in kept:  # every cached chunk is whole: byte for byte the served file
        assert p.read_bytes() == (served / "frag.zarr" / p.relative_to(entry)).read_bytes()

    http.handler.break_chunks_after = None
    assert main(["prefetch", url, "--jobs", "1", "--quiet"]) == 0
    assert "17 fetched from the server" in capsys.readouterr().out
    http.stop()
    assert np.array_equal(open_segment(url).volume[:], open_segment(served / "frag.zarr").volume[:])


# ---------------------------------------------------------------- s3 (moto in server mode)


@pytest.fixture
def s3(served, monkeypatch):
    """A loopback s3 endpoint with a public-read bucket ``scrolls`` holding ``seg/frag.zarr`` and a private one."""
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(remote.S3_ENDPOINT_ENV, raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="scrolls")
    for p in sorted((served / "frag.zarr").rglob("*")):
        if p.is_file():
            key = "seg/frag.zarr/" + p.relative_to(served / "frag.zarr").as_posix()
            client.upload_file(str(p), "scrolls", key, ExtraArgs={"ACL": "public-read"})
    client.create_bucket(Bucket="private")
    client.put_object(Bucket="private", Key="x.zarr/zarr.json", Body=b"{}")
    state = {"running": True}

    def stop():
        if state["running"]:
            server.stop()
            state["running"] = False

    yield endpoint, stop
    stop()


def test_s3_zarr_opens_anonymously_prefetches_and_reopens_offline(served, s3, cache, capsys):
    endpoint, stop = s3
    url = "s3://scrolls/seg/frag.zarr"
    local = open_segment(served / "frag.zarr")
    info = info_json(capsys, url, "--s3-endpoint", endpoint)
    assert info["shape"] == list(SHAPE) and info["storage"].startswith("remote zarr (s3)") and info["has_mask"]
    assert main(["prefetch", url, "--s3-endpoint", endpoint, "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("prefetched 27 chunk(s)")

    one_line_error(capsys, ["info", "s3://private/x.zarr", "--s3-endpoint", endpoint], "denied (403)")
    one_line_error(capsys, ["info", "s3://scrolls/seg/missing.zarr", "--s3-endpoint", endpoint], "not found (404)")

    stop()
    seg = open_segment(url)  # the endpoint is remembered from --s3-endpoint (the environment), the server is gone
    assert np.array_equal(seg.volume[:], local.volume[:]) and np.array_equal(seg.inklabels, local.inklabels)


# ---------------------------------------------------------------- the cache's cap


def test_cache_evicts_least_recently_used_past_its_cap(tmp_path):
    cache = ChunkCache(tmp_path / "c", max_bytes=10_000)
    folder = cache.entry("https://example.invalid/a.zarr")
    for i in range(3):
        cache.store(folder, f"c/{i}", bytes(3000))
        os.utime(folder / "c" / str(i), (1000 + i, 1000 + i))  # used in order 0, 1, 2
    assert cache.lookup(folder, "c/0") == bytes(3000)  # 0 is now the most recently used
    cache.store(folder, "c/3", bytes(3000))  # 12 000 > 10 000: the least recently used go, to <= 9 000
    left = sorted(p.name for p in (folder / "c").iterdir())
    assert left == ["0", "2", "3"]
    assert cache.size() <= 10_000
    cache.store(folder, "missing", None)
    assert cache.lookup(folder, "missing") is False and cache.lookup(folder, "never-asked") is None


def test_cache_size_option_caps_a_real_prefetch(served, http, cache, capsys):
    url = f"{http.url}/frag.zarr"
    assert main(["prefetch", url, "--cache-size", "20K", "--quiet"]) == 0
    capsys.readouterr()
    total = sum(p.stat().st_size for p in cached_files(cache))
    assert 0 < total <= 20 * 1024


# ---------------------------------------------------------------- the Segments widget


def test_segments_widget_cache_field_and_a_url(make_napari_viewer, qtbot, served, http, tmp_path, monkeypatch):
    from napari_vesuvius_pt.ui import settings

    monkeypatch.setenv(settings.ENV_VAR, str(tmp_path / "widgets.json"))
    monkeypatch.delenv(remote.CACHE_ENV, raising=False)
    monkeypatch.delenv(remote.CACHE_SIZE_ENV, raising=False)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-vesuvius-pt", "Segments")
    folder = tmp_path / "widget-cache"
    widget.cache.set_text(str(folder))
    widget.cache_size.setText("1G")
    assert os.environ[remote.CACHE_ENV] == str(folder) and os.environ[remote.CACHE_SIZE_ENV] == "1G"
    widget.cache_size.setText("lots")
    assert "cache size" in widget.status.text()
    widget.cache_size.setText("")
    assert remote.CACHE_SIZE_ENV not in os.environ  # cleared: back to the default

    url = f"{http.url}/frag.zarr"
    widget.path.set_text(url)
    qtbot.waitUntil(lambda: widget.preview_is_current, timeout=30_000)
    assert "ink labels" in widget.info.text()
    widget.load_button.click()
    qtbot.waitUntil(lambda: not widget.busy and widget.status.text().startswith("Loaded"), timeout=30_000)
    assert [s.path for s in widget.registry] == [url]
    assert cached_files(folder)  # the chunks went to the folder the field names


def test_every_command_that_takes_a_segment_has_the_cache_options():
    from napari_vesuvius_pt.cli import SEGMENT_COMMANDS, build_parser

    for name in SEGMENT_COMMANDS:
        parser = build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        options = {o for a in sub._actions for o in a.option_strings}
        assert {"--cache", "--cache-size", "--s3-endpoint"} <= options, name
