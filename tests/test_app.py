"""The review app, headless (streamlit.testing.v1.AppTest) over factory-made run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from run_factory import make_hostile_run, make_run
from streamlit.testing.v1 import AppTest

from dermlow import metrics
from dermlow.rundir import files, reader, review_store

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")
VIEWS = ["Runs", "Compare classes", "Per-class", "Weights over training", "Lesion galleries", "Case", "Review"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two seeds of one setup, and a run with flipped labels and the optional weight-log columns."""
    base = tmp_path_factory.mktemp("app")
    make_run(base / "cmp", "seed0", seed=0, epochs=6)
    make_run(base / "cmp", "seed1", seed=1, epochs=6)
    make_run(base, "flipped", seed=2, epochs=6, flip_frac=0.1, extra_columns=True)
    return base


def app(path, monkeypatch) -> AppTest:
    monkeypatch.setenv("DERMLOW_RUNS", str(path))
    return AppTest.from_file(APP, default_timeout=60).run()


def show(at: AppTest, view: str) -> AppTest:
    return at.sidebar.radio(key="view").set_value(view).run()


def assert_clean(at: AppTest, view: str) -> None:
    assert not at.exception, (view, [e.value for e in at.exception])
    assert not at.error, (view, [e.value for e in at.error])


def test_every_view_renders_for_each_run(root, monkeypatch):
    at = app(root, monkeypatch)
    for run_dir in reader.find_runs(root):
        show(at, "Per-class").sidebar.selectbox(key="run").set_value(str(run_dir)).run()
        for view in VIEWS:
            show(at, view)
            assert_clean(at, view)
            if view not in ("Runs", "Compare classes"):  # the views comparing runs have no run box
                assert at.sidebar.selectbox(key="run").value == str(run_dir)


def test_every_view_renders_for_a_run_still_training(tmp_path, monkeypatch):
    at = app(make_run(tmp_path, epochs=6, written_epochs=2), monkeypatch)
    for view in VIEWS:
        show(at, view)
        assert_clean(at, view)
    assert "epoch 2 of 6, still training" in at.sidebar.caption[-1].value


def test_runs_table_pools_the_seeds_of_one_setup(root, monkeypatch):
    at = app(root / "cmp", monkeypatch)
    table = at.dataframe[0].value
    assert len(table) == 1 and table["runs"].iloc[0] == 2
    assert table["method"].iloc[0] == "CE + LOW" and table["lambda"].iloc[0] == "1"
    each = [reader.load_run(root / "cmp" / s).metrics for s in ("seed0", "seed1")]
    bacc = [m.loc[m["val_bacc"].idxmax(), "test_bacc"] * 100 for m in each]
    mean, std = pd.Series(bacc).mean(), pd.Series(bacc).std()
    assert table["BAcc"].iloc[0] == f"{mean:.1f} ± {std:.1f}"


def _charts(at: AppTest) -> list[tuple[dict, pd.DataFrame]]:
    """(Vega-Lite spec, plotted data) of every Altair chart on the page, in page order."""
    out = []
    for element in at.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        data = {d.name: pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in element.proto.datasets}
        name = (spec.get("data") or (spec.get("layer") or [{}])[0].get("data") or {}).get("name")  # a layer: its first
        out.append((spec, data[name] if name in data else pd.DataFrame()))
    return out


@pytest.mark.parametrize("split", ["test", "val"])
def test_per_class_view_shows_the_metrics_of_the_saved_predictions(root, monkeypatch, split):
    run_dir = root / "flipped"
    at = show(app(run_dir, monkeypatch), "Per-class")
    at.radio(key="per_class_split").set_value(split).run()
    assert_clean(at, f"per-class {split}")
    codes = reader.load_run(run_dir).codes
    saved = pd.read_csv(run_dir / (files.PREDICTIONS if split == "test" else files.PREDICTIONS_VAL))
    manifest = pd.read_csv(run_dir / files.MANIFEST).set_index("image_id")
    y, probs = manifest.loc[saved["image"], "label"].to_numpy(), saved[codes].to_numpy()
    table = at.dataframe[0].value
    assert table["class"].iloc[0] == "MEL — Melanoma" and len(table) == len(codes)
    expected = metrics.per_class_report(y, probs, codes)
    for column in ("precision", "recall", "f1", "auc", "support"):
        np.testing.assert_allclose(table[column].to_numpy(float), expected[column].to_numpy(float), err_msg=column)
    # One cell against a count by hand: recall of NV = NV images predicted NV / NV images.
    nv = y == codes.index("NV")
    assert table["recall"].iloc[1] == pytest.approx((probs[nv].argmax(1) == codes.index("NV")).mean())
    assert table["support"].tolist() == np.bincount(y, minlength=len(codes)).tolist()
    overall = metrics.classification_metrics(y, probs)
    shown = {m.label: m.value for m in at.metric}
    assert shown == {label: f"{overall[key] * 100:.1f} %" for key, label in
                     (("acc", "Acc"), ("bacc", "BAcc"), ("mauc", "mAUC"), ("mf1", "mF1"))}
    assert shown["BAcc"] != shown["Acc"]  # imbalanced classes: a mix-up of the two would show


def test_weights_view_plots_the_class_means_of_the_weight_log(root, monkeypatch):
    run_dir = root / "flipped"
    at = show(app(run_dir, monkeypatch), "Weights over training")
    assert_clean(at, "weights")
    log = pd.read_parquet(run_dir / files.WEIGHTS, columns=["epoch", "label", "weight"])
    means = log.groupby(["epoch", "label"])["weight"].mean()
    (class_spec, curves), (_, quantiles), (_, histogram) = _charts(at)
    assert (class_spec.get("layer") or [class_spec])[0]["encoding"]["y"]["field"] == "weight"
    plotted = curves.set_index(["epoch", "label"])["weight"].sort_index()
    assert plotted.index.equals(means.index) and log["epoch"].nunique() == 6
    np.testing.assert_allclose(plotted.to_numpy(), means.to_numpy(), rtol=1e-6)
    assert set(curves.loc[curves["label"] == 0, "class"]) == {"MEL — Melanoma"}
    np.testing.assert_allclose(quantiles.set_index("epoch")["median"].to_numpy(),
                               log.groupby("epoch")["weight"].median().to_numpy(), rtol=1e-6)
    last = log.loc[log["epoch"] == 6, "weight"].to_numpy()
    assert histogram["images"].sum() == len(last)
    assert any(c.value.startswith(f"Weights of epoch 6: {len(last)} images, mean {last.mean():.3f},") for c in at.caption)


def _gallery_ids(at: AppTest, section: str) -> list[str]:
    prefix = f"open-{section}-"
    return [b.key[len(prefix):] for b in at.button if b.key and b.key.startswith(prefix)]


def test_galleries_hold_the_expected_images_in_order(root, monkeypatch):
    run_dir = root / "flipped"
    at = show(app(run_dir, monkeypatch), "Lesion galleries")
    summary = reader.weight_summary(run_dir)
    assert _gallery_ids(at, "lowest") == list(reader.ranked_by_weight(summary, 12)["image_id"])
    assert _gallery_ids(at, "highest") == list(reader.ranked_by_weight(summary, 12, highest=True)["image_id"])
    at.selectbox(key="gallery_class").set_value(1).run()
    at.number_input(key="gallery_n").set_value(5).run()
    assert_clean(at, "galleries, class 1")
    assert _gallery_ids(at, "highest") == list(reader.ranked_by_weight(summary, 5, label=1, highest=True)["image_id"])
    assert "NV — Melanocytic nevus" in at.subheader[0].value


def test_open_a_case_then_decide_on_it(root, monkeypatch):
    run_dir = root / "flipped"
    at = show(app(run_dir, monkeypatch), "Lesion galleries")
    target = _gallery_ids(at, "highest")[0]
    at.button(key=f"open-highest-{target}").click().run()
    assert at.sidebar.radio(key="view").value == "Case"
    assert at.selectbox(key="case_select").value == target
    assert_clean(at, "case")
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    at.text_input(key=f"note-{target}").input("pigment network looks like a nevus").run()
    at.button(key="decide-exclude").click().run()
    saved = review_store.read_history(run_dir, "isic2018")
    assert saved[["image_id", "reviewer", "decision", "reason", "note"]].values.tolist() == [
        [target, "Dr Ada", "exclude", "image quality", "pigment network looks like a nevus"]]
    show(at, "Review")
    assert_clean(at, "review")
    (run_dir / review_store.DB_NAME).unlink()


def test_a_folder_that_is_not_a_run(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    at = app(tmp_path, monkeypatch)
    assert not at.exception and "holds no runs" in at.error[0].value


def test_a_truncated_weight_log_is_reported_not_a_crash(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, epochs=3)
    data = (run_dir / files.WEIGHTS).read_bytes()
    (run_dir / files.WEIGHTS).write_bytes(data[:100])
    at = app(run_dir, monkeypatch)
    assert not at.exception and not at.error  # the runs table needs no weight log
    for view in ["Weights over training", "Lesion galleries", "Case"]:
        show(at, view)
        assert not at.exception and "truncated or damaged" in at.error[0].value, view


def test_a_deleted_image_shows_a_message(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, epochs=3)
    summary = reader.weight_summary(run_dir)
    first = reader.ranked_by_weight(summary, 1, highest=True).iloc[0]
    reader.load_run(run_dir).image_path(first["path"]).unlink()
    at = show(app(run_dir, monkeypatch), "Lesion galleries")
    assert not at.exception and any("Image not found" in c.value for c in at.caption)
    at.button(key=f"open-highest-{first['image_id']}").click().run()
    assert not at.exception and "Image not found" in at.error[0].value


def test_a_run_without_any_epoch_yet(tmp_path, monkeypatch):
    at = app(make_run(tmp_path, written_epochs=0), monkeypatch)
    for view in VIEWS:
        show(at, view)
        assert_clean(at, view)
        if view != "Runs":
            assert any("first epoch" in i.value for i in at.info), view


def test_serve_command_and_checks(root, tmp_path):
    from dermlow.cli import serve
    from dermlow.errors import UserError

    cmd = serve.streamlit_command(root, host="0.0.0.0", port=9000)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == APP
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0" and cmd[cmd.index("--server.port") + 1] == "9000"
    assert cmd[cmd.index("--server.headless") + 1] == "true" and cmd[-2:] == ["--runs", str(root.resolve())]
    with pytest.raises(UserError, match="does not exist"):
        serve.serve(tmp_path / "nope")
    with pytest.raises(UserError, match="--port"):
        serve.serve(root, port=70000)


HOSTILE = "![x](http://127.0.0.1:9/leak.png) [click](http://127.0.0.1:9/link) :red[big] $x$"


def _rendered_markdown(at: AppTest) -> list[str]:
    elements = [*at.markdown, *at.caption, *at.subheader, *at.header, *at.error, *at.info,
                *at.sidebar.markdown, *at.sidebar.caption]
    return [e.value for e in elements]


def test_strings_from_run_files_render_as_plain_text(tmp_path, monkeypatch):
    run_dir, image_id = make_hostile_run(tmp_path, "hostile", text=HOSTILE)
    at = show(app(run_dir, monkeypatch), "Lesion galleries")
    at.button(key=f"open-highest-{image_id}").click().run()
    assert_clean(at, "case")
    seen = []
    for view in VIEWS:
        show(at, view)
        assert not at.exception, view
        seen += _rendered_markdown(at)
    hostile = [v for v in seen if "leak" in v or "click" in v]
    assert len(hostile) >= 5  # id, class, run name and lesion were all shown...
    for value in hostile:  # ...and none as Markdown syntax: no image, link, colour or math
        assert "![" not in value and "](" not in value and ":red[" not in value and "$x$" not in value, value
        assert "\\!\\[x\\]\\(http\\:\\/\\/127\\.0\\.0\\.1\\:9\\/leak\\.png\\)" in value, value


def test_markdown_escaping_shows_the_text_literally():
    import sys

    sys.path.insert(0, str(Path(APP).parent))
    from review_text import md

    assert md("![a](http://h/x.png)") == "\\!\\[a\\]\\(http\\:\\/\\/h\\/x\\.png\\)"
    assert md("a\nb\r\tc") == "a b  c" and md("ISIC_0024306") == "ISIC\\_0024306" and md(3) == "3"


def test_the_runs_folder_box_stays_inside_the_started_folder(root, monkeypatch):
    at = app(root, monkeypatch)
    for outside in ("/", "..", str(root.parent), "cmp/../../"):
        at.sidebar.text_input(key="root").input(outside).run()
        assert not at.exception and "is not inside" in at.error[0].value, outside
        assert not at.sidebar.selectbox and not at.dataframe
    at.sidebar.text_input(key="root").input("cmp").run()
    assert_clean(at, "cmp")
    assert at.dataframe[0].value["runs"].iloc[0] == 2


def test_find_runs_has_a_depth_limit(tmp_path):
    deep = tmp_path / "a" / "b" / "c" / "d" / "e"
    make_run(deep, "far", epochs=1, images=False)
    make_run(tmp_path / "a", "near", epochs=1, images=False)
    assert reader.find_runs(tmp_path) == [tmp_path / "a" / "near"]
    assert len(reader.find_runs(tmp_path, max_depth=10)) == 2


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the Streamlit child")
def test_sigterm_to_dermlow_app_stops_streamlit_too(root):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"}
    proc = subprocess.Popen([sys.executable, "-m", "dermlow", "app", str(root / "cmp"), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, up = time.monotonic() + 60, False
        while not up and time.monotonic() < deadline and proc.poll() is None:
            try:
                up = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200
            except OSError:
                time.sleep(0.3)
        assert up, "the app did not come up"
        children = _children(proc.pid)
        assert len(children) == 1
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        time.sleep(0.5)
        assert not Path(f"/proc/{children[0]}").exists()  # the Streamlit server is gone too (and reaped)
        assert code == 128 + signal.SIGTERM
    finally:
        for pid in [proc.pid, *children] if "children" in locals() else [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
