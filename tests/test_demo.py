"""``amr demo``, started as a user starts it (a tiny checkpoint, the tiny random MS-CLAP, two finished
runs, the synthetic data root) and driven as a user drives it: a real headless Chromium clicks
through both tabs (Debian's chromium package; the test is skipped without it), and
``gradio_client`` calls the page's API, including a path-traversal attempt through a form field."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from amr.cli import main
from amr.testing.tiny_clap import offline_env
from amr.training.run import train
from tests.helpers import debug_config, random_checkpoint

CHROMIUM = Path(os.environ.get("AMR_CHROMIUM", "/usr/bin/chromium"))
SHOTS = Path(os.environ.get("AMR_DEMO_SHOTS", "")) if os.environ.get("AMR_DEMO_SHOTS") else None
CHROMIUM_FLAGS = [  # a closed network: no background fetches, no sandbox as root
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def world(tmp_path_factory, clap) -> dict[str, Path]:
    """A trained run and one decoded again (two systems), its data root, a random checkpoint."""
    root = tmp_path_factory.mktemp("demo")
    cfg = debug_config(root, "runs/castella_only", "experiment=castella_only", "train.max_epochs=1", logger="none")
    train(cfg)
    (root / "runs" / "castella_only" / ".hydra").mkdir()
    OmegaConf.save(cfg, root / "runs" / "castella_only" / ".hydra" / "config.yaml")  # as Hydra keeps it
    main(["decode", str(root / "runs" / "castella_only"), "--decode", "saliency", "--out", str(root / "runs" / "sal")])
    return {
        "root": root,
        "runs": root / "runs",
        "data": Path(cfg.data.root),
        "ckpt": random_checkpoint(root / "tiny.ckpt"),
    }


@pytest.fixture(scope="module")
def server(world, clap) -> Iterator[str]:
    """``amr demo`` on a free local port, until the module's tests end."""
    port = _free_port()
    argv = [sys.executable, "-m", "amr.cli", "demo", "--ckpt", str(world["ckpt"]), "--runs", str(world["runs"])]
    argv += ["--data-root", str(world["data"]), "--clap-weights", str(clap / "clap_weights.pth"), "--port", str(port)]
    env = {**os.environ, **offline_env(clap), "GRADIO_ANALYTICS_ENABLED": "False", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"amr demo did not start: {proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    out = proc.communicate(timeout=30)[0]
    folder = Path(out.split("audio go to ", 1)[1].split(" (removed", 1)[0])
    assert folder.name.startswith("amr-demo-") and not folder.exists()  # its own folder, removed at the end


@pytest.fixture(scope="module")
def browser(server) -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield b
        b.close()


def _shot(page, name: str, tmp_path: Path) -> Path:
    path = (SHOTS or tmp_path) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


def _table(page, elem: str) -> list[list[str]]:
    """The cells of a Gradio table, row by row (its cells are marked ``cell-ROW-COLUMN``)."""
    script = """(sel) => { const rows = {};
        for (const c of document.querySelectorAll(sel + ' [data-testid^="cell-"]')) {
            const [, r, k] = c.dataset.testid.split('-'); (rows[r] ||= [])[+k] = c.innerText.trim(); }
        return Object.keys(rows).sort((a, b) => a - b).map((r) => rows[r]); }"""
    return page.evaluate(script, f"#{elem}")


def _pick(page, elem: str, text: str) -> None:
    """Choose the option holding ``text`` of a Gradio dropdown."""
    page.click(f"#{elem} input")
    page.fill(f"#{elem} input", text)
    page.locator("ul[role=listbox] li", has_text=text).first.click()


def test_ask_tab_in_a_browser(server, browser, audio_dir, tmp_path) -> None:
    """The checkpoints of ``--ckpt`` and ``--runs`` are offered; upload a recording, ask, see the
    ranked windows and scores and a player per window; a silent file is a message on the page; a
    recording of a ``--data-root`` split shows its query's ground truth."""
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(server)
    page.click("#ckpt input")  # --ckpt by its file name, --runs by each run's folder
    offered = page.locator("ul[role=listbox] li").all_inner_texts()
    assert {"tiny.ckpt", "runs/castella_only"} <= {o.replace("✓", "").strip() for o in offered}  # ✓: the chosen one
    page.keyboard.press("Escape")
    page.set_input_files("#audio input[type=file]", str(audio_dir / "long.wav"))
    page.wait_for_selector("#audio audio, #audio .waveform-container, #audio button", timeout=30_000)
    page.fill("#query textarea", "a dog barks")
    page.click("#ask")
    page.wait_for_selector("#ask-status :text('moments')", timeout=120_000)
    status = page.inner_text("#ask-status")
    assert "5 moments" in status and "decode=detr" in status and "msclap2023 features" in status
    rows = _table(page, "moments")
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(0 <= float(r[1]) < float(r[2]) <= 7 and 0 < float(r[3]) <= 1 for r in rows)
    assert [float(r[3]) for r in rows] == sorted((float(r[3]) for r in rows), reverse=True)
    assert page.get_by_text("moment 5", exact=True).is_visible()  # a player per moment
    _shot(page, "ask", tmp_path)

    page.click("#audio button[aria-label='Clear']")
    page.set_input_files("#audio input[type=file]", str(audio_dir / "silent.wav"))
    page.click("#ask")
    page.wait_for_selector("#ask-status :text('Error')", timeout=60_000)
    assert "silent audio" in page.inner_text("#ask-status")

    page.click("#audio button[aria-label='Clear']")
    _pick(page, "picked", "test ·")
    assert page.input_value("#query textarea")  # the split's query fills the box
    page.click("#ask")
    page.wait_for_selector("#ask-status :text('GT [')", timeout=60_000)
    assert not page.get_by_text("moment 1", exact=True).is_visible()  # features only: no audio to play
    _shot(page, "ask_split", tmp_path)


def test_compare_tab_in_a_browser(server, browser, tmp_path) -> None:
    """Both systems' top windows for one test query, with scores, IoUs and the GT."""
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(server)
    page.get_by_role("tab", name="Compare").click()
    _pick(page, "qid", ":")
    page.wait_for_selector("#compare-status :text('GT [')", timeout=60_000)
    rows = _table(page, "windows")
    systems = {r[0] for r in rows}
    assert len(systems) == 2 and any("decode=saliency" in name for name in systems)
    assert all(0 <= float(r[5]) <= 1 for r in rows) and len(rows) >= 4  # IoUs; up to 3 windows per system
    _shot(page, "compare", tmp_path)


def test_the_api_answers_and_refuses_paths_outside_its_tables(server, world, audio_dir) -> None:
    """``gradio_client``: the ask endpoint ranks windows; a checkpoint or recording named by a path
    (``../..``) is refused and nothing of that file comes back."""
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    status, _, table, *_ = client.predict(
        world["ckpt"].name, handle_file(str(audio_dir / "long.wav")), None, "a dog barks", 3, api_name="/ask"
    )
    assert status.startswith("3 moments")
    assert [r[0] for r in table["data"]] == [1, 2, 3]
    for ckpt, picked in [("../../../../etc/passwd", None), (world["ckpt"].name, "../../../../etc/passwd")]:
        try:
            out = client.predict(ckpt, None, picked, "a dog barks", 3, api_name="/ask")
        except Exception as e:  # noqa: BLE001 - Gradio may refuse a value outside the choices itself
            out = (str(e),)
        assert "root:" not in str(out)
        assert "not one of" in str(out[0]) or "Error" in str(out[0]) or "not in the list of choices" in str(out[0])


def test_host_and_port_are_where_the_page_is_served(world, monkeypatch) -> None:
    """``--host`` and ``--port`` reach the server's launch (default: 127.0.0.1, this machine only)."""
    import amr.demo.page as page

    seen = []
    monkeypatch.setattr(page, "serve", lambda cfg: seen.append((cfg.host, cfg.port)))
    main(["demo", "--ckpt", str(world["ckpt"])])
    main(["demo", "--ckpt", str(world["ckpt"]), "--host", "127.0.0.2", "--port", "8123"])
    assert seen == [("127.0.0.1", 7860), ("127.0.0.2", 8123)]


def test_bad_input_is_a_line_on_the_page(world, clap, audio_dir, tmp_path) -> None:
    """Each handler answers bad input with one line in its status: an empty query, an unreadable
    file, a checkpoint of another feature set, a run folder without predictions."""
    from amr.demo.page import DemoConfig, Page

    other = random_checkpoint(tmp_path / "wide.ckpt", aud_dim=1024)
    obj = torch.load(other, weights_only=True)
    obj["hyper_parameters"]["features"] = {
        "name": "castella",
        "feat_dir": "castella",
        "encoder": {"name": "custom", "audio": "custom", "text": "custom_text", "audio_dim": 1024, "text_dim": 768},
    }
    torch.save(obj, other)
    cfg = DemoConfig([world["ckpt"], other], [], world["data"], str(clap / "clap_weights.pth"), "cpu")
    page = Page(cfg, tmp_path)
    picked = next(iter(page.recordings))

    def status(*args) -> str:
        return page.ask(*args, progress=lambda *a, **k: None)[0]

    assert status("tiny.ckpt", None, picked, "   ", 3).startswith("**Error:** query: the query is empty")
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    assert "**Error:**" in status("tiny.ckpt", str(junk), None, "a dog barks", 3)
    assert "the checkpoint reads custom features; this recording has none" in status("wide.ckpt", None, picked, "x", 3)
    outside = shutil.copy(audio_dir / "long.wav", Path(tempfile.mkdtemp()) / "long.wav")
    assert "audio is read only from this page's uploads" in status("tiny.ckpt", outside, None, "x", 3)

    shutil.copytree(world["runs"] / "castella_only", tmp_path / "runs" / "bare")
    (tmp_path / "runs" / "bare" / "predictions" / "test_preds.jsonl").unlink()
    broken = Page(DemoConfig([world["ckpt"]], [tmp_path / "runs"]), tmp_path)
    message = broken.compare("any", 3)[0]
    assert message.startswith("**Error:**") and "has no predictions/test_preds.jsonl" in message
