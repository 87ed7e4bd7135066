"""fetch against a local HTTP server on 127.0.0.1 (with Range support and deliberate disconnects)."""

import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dermlow.data.demo import make_demo
from dermlow.data.fetch import FILES, download, fetch, safe_unpack
from dermlow.data.isic import load_manifest
from dermlow.errors import UserError


class Server:
    """Serves `files` (path -> bytes); records (method, path, Range) of every request."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        self.drops: dict[str, int] = {}  # path -> how many GETs send only half the body, then hang up
        self.ignore_range = False
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.serve(body=False)

            def do_GET(self):
                self.serve(body=True)

            def serve(self, body: bool):
                path, byte_range = self.path.lstrip("/"), self.headers.get("Range")
                state.requests.append((self.command, path, byte_range))
                if path not in state.files:
                    self.send_error(404)
                    return
                data, start = state.files[path], 0
                if byte_range and not state.ignore_range:
                    start = int(byte_range.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if body and state.drops.get(path, 0) > 0:
                    state.drops[path] -= 1
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.close_connection = True
                elif body:
                    self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def gets(self, path: str) -> list:
        return [r for r in self.requests if r[0] == "GET" and r[1] == path]


def zip_folder(root: Path, folder: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted((root / folder).rglob("*")):
            zf.write(p, p.relative_to(root).as_posix())
    return buf.getvalue()


def only_licence(folder: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{folder}/LICENSE.txt", "CC BY-NC 4.0\n")
    return buf.getvalue()


@pytest.fixture
def server(tmp_path):
    demo = make_demo(tmp_path / "demo", year=2018, n_images=60, size=(32, 24))
    files = {}
    for remote in FILES[2018]:
        name = remote.rsplit("/", 1)[-1]
        stem = name.removesuffix(".zip")
        if name.endswith(".csv"):
            files[remote] = (demo / name).read_bytes()
        elif "Training" in name:
            files[remote] = zip_folder(demo, stem)
        else:
            files[remote] = only_licence(stem)
    srv = Server(files)
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_fetch_resumes_verifies_and_unpacks(server, tmp_path):
    big = "2018/ISIC2018_Task3_Training_Input.zip"
    server.drops[big] = 1
    out = fetch(2018, tmp_path / "isic2018", base_url=server.url, progress=True)
    gets = server.gets(big)
    half = len(server.files[big]) // 2
    assert [g[2] for g in gets] == [None, f"bytes={half}-"]  # resumed where the broken transfer stopped
    assert (out / "archives" / "ISIC2018_Task3_Training_Input.zip").read_bytes() == server.files[big]
    assert not list(out.rglob("*.part"))
    manifest, _, skipped = load_manifest(out, dataset="isic2018")
    assert len(manifest) == 60 and skipped == [] and manifest["lesion_id"].ne("").all()
    assert (out / "ISIC2018_Task3_Test_Input" / "LICENSE.txt").is_file()
    server.requests.clear()
    fetch(2018, out, base_url=server.url, progress=False)  # everything complete: no downloads
    assert [r for r in server.requests if r[0] == "GET"] == []


def test_resume_from_part_file_of_an_earlier_run(server, tmp_path):
    remote = "2018/ISIC2018_Task3_Training_LesionGroupings.csv"
    data = server.files[remote]
    (tmp_path / "x.csv.part").write_bytes(data[:100])
    download(server.url + remote, tmp_path / "x.csv", progress=False)
    assert server.gets(remote) == [("GET", remote, "bytes=100-")]
    assert (tmp_path / "x.csv").read_bytes() == data


def test_server_ignoring_range_restarts(server, tmp_path):
    remote = "2018/ISIC2018_Task3_Training_LesionGroupings.csv"
    server.ignore_range = True
    (tmp_path / "x.csv.part").write_bytes(b"garbage that must not stay" * 3)
    download(server.url + remote, tmp_path / "x.csv", progress=False)
    assert (tmp_path / "x.csv").read_bytes() == server.files[remote]


def test_wrong_size_on_disk_is_downloaded_again(server, tmp_path):
    remote = "2018/ISIC2018_Task3_Training_LesionGroupings.csv"
    (tmp_path / "x.csv").write_bytes(b"short")
    download(server.url + remote, tmp_path / "x.csv", progress=False)
    assert (tmp_path / "x.csv").read_bytes() == server.files[remote]


def test_persistent_disconnects_give_user_error(server, tmp_path):
    remote = "2018/ISIC2018_Task3_Training_LesionGroupings.csv"
    server.drops[remote] = 100
    with pytest.raises(UserError, match=r"LesionGroupings\.csv: the download stopped at \d+ of \d+ bytes.*again"):
        download(server.url + remote, tmp_path / "x.csv", progress=False, retries=2)
    assert len(server.gets(remote)) == 3 and (tmp_path / "x.csv.part").exists()


def test_not_found_and_no_connection(server, tmp_path):
    with pytest.raises(UserError, match=r"/2018/nothing\.zip: the server answered HTTP 404.*run the same command"):
        download(server.url + "2018/nothing.zip", tmp_path / "n.zip", progress=False)
    dead = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = dead.server_address[1]
    dead.server_close()  # nothing listens there now
    with pytest.raises(UserError, match=rf"127\.0\.0\.1:{port}/a\.csv: the connection failed"):
        download(f"http://127.0.0.1:{port}/a.csv", tmp_path / "a.csv", progress=False)


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt", "C:/evil.txt"])
def test_unpack_refuses_path_traversal(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/fine.txt", "fine")
        zf.writestr(member, "evil")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="would be written outside"):
        safe_unpack(archive, out)
    assert not (tmp_path / "evil.txt").exists()


def test_unknown_year_and_official_names():
    with pytest.raises(UserError, match="choose one of 2018, 2017"):
        fetch(2019, "/nonexistent", progress=False)
    assert len(FILES[2018]) == 7 and len(FILES[2017]) == 6
    assert "2017/ISIC-2017_Test_v2_Data.zip" in FILES[2017]
