"""Back-translation through the real Marian / CTranslate2 code paths, on tiny local random models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amr.augment.backtranslate import DecodeOptions, TranslationCache, backtranslate
from amr.data.synth import CONCEPTS, TEMPLATES, _World
from amr.errors import InputError
from amr.testing.tiny_marian import build_tiny_marian

pytest.importorskip("sentencepiece")


def _captions(n: int) -> list[str]:
    import numpy as np

    world = _World(0)
    rng = np.random.default_rng(0)
    return [world.caption(CONCEPTS[i % len(CONCEPTS)], rng, i % 4) + f" {i}" for i in range(n)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("marian")
    corpus = _captions(300) + [t.format(s="dog", a="barks", m="loudly") for t in TEMPLATES]
    build_tiny_marian(root / "opus-mt-en-de", "en", "de", corpus, seed=1)
    build_tiny_marian(root / "opus-mt-de-en", "de", "en", corpus, seed=2)
    return root


def _annotations(path: Path, n: int) -> Path:
    rows = [{"qid": f"q{i}", "query": c, "vid": "v", "duration": 60} for i, c in enumerate(_captions(n))]
    rows.append({"qid": "dup", "query": rows[0]["query"], "vid": "v", "duration": 60})  # a repeated caption
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("backend", ["transformers", "ctranslate2"])
def test_both_backends_write_one_line_per_query(models, tmp_path, backend) -> None:
    pytest.importorskip("ctranslate2") if backend == "ctranslate2" else None
    queries = [{"qid": f"q{i}", "query": c} for i, c in enumerate(_captions(20))]

    def run():
        opts = DecodeOptions(max_new_tokens=12, batch_size=8)
        return backtranslate(queries, ["de"], backend, str(models / "opus-mt-{src}-{tgt}"), tmp_path / "cache", opts)

    rows, report = run()
    assert [r["qid"] for r in rows] == [q["qid"] for q in queries]
    assert report.versions + report.dropped_identical == 20
    assert all(v["pivot"] == "de" and v["text"] for r in rows for v in r["versions"])
    # a second run translates nothing: everything comes from the cache
    cache = TranslationCache(tmp_path / "cache" / f"{backend}-cache.jsonl")
    n_cached = len(cache.entries)
    rows2, _ = run()
    assert rows2 == rows
    assert len(TranslationCache(tmp_path / "cache" / f"{backend}-cache.jsonl").entries) == n_cached


def test_backends_agree_on_most_outputs(models, tmp_path) -> None:
    pytest.importorskip("ctranslate2")
    queries = [{"qid": f"q{i}", "query": c} for i, c in enumerate(_captions(24))]
    opts = DecodeOptions(max_new_tokens=12, batch_size=8)
    a, _ = backtranslate(queries, ["de"], "transformers", str(models / "opus-mt-{src}-{tgt}"), tmp_path / "a", opts)
    b, _ = backtranslate(queries, ["de"], "ctranslate2", str(models / "opus-mt-{src}-{tgt}"), tmp_path / "b", opts)
    same = sum(x["versions"] == y["versions"] for x, y in zip(a, b, strict=True))
    assert same >= len(queries) // 2  # int8 may flip a few greedy choices on random weights


def test_offline_hub_name_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="not a local folder \\(without network only local model folders work"):
        backtranslate([{"qid": "a", "query": "a dog barks"}], ["de"], "transformers", cache_dir=tmp_path)


def test_truncated_cache_line_is_ignored(tmp_path, caplog) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"model": "m", "src": "a", "out": "b"}) + "\n" + '{"model": "m", "src": "x", "ou')
    cache = TranslationCache(path)
    assert cache.entries == {("m", "a"): "b"}
    assert "truncated" in caplog.text
    cache.add("m", [("x", "y")])
    assert TranslationCache(path).entries == {("m", "a"): "b", ("m", "x"): "y"}


def test_killed_run_resumes_without_loss_or_duplicates(models, tmp_path) -> None:
    ann = _annotations(tmp_path / "ann.jsonl", 200)
    out = tmp_path / "paraphrases.jsonl"
    cache = tmp_path / "cache"
    cmd = [
        sys.executable,
        "-m",
        "amr.cli",
        "backtranslate",
        str(ann),
        "--pivots",
        "de",
        "--model-template",
        str(models / "opus-mt-{src}-{tgt}"),
        "--backend",
        "transformers",
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--batch-size",
        "8",
        "--max-new-tokens",
        "24",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache_file = cache / "transformers-cache.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if cache_file.is_file() and cache_file.read_text().count("\n") >= 24:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert not out.exists()  # the output only appears, whole, at the end
    partial = cache_file.read_text().count("\n")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["qid"] for r in rows] == [f"q{i}" for i in range(200)] + ["dup"]
    entries = [json.loads(line) for line in cache_file.read_text().splitlines() if line.strip()]
    keys = [(e["model"], e["src"]) for e in entries]
    assert len(keys) == len(set(keys))  # nothing translated twice
    assert len(keys) > partial  # the rerun finished what was missing


def test_a_model_that_is_neither_local_nor_served_fails_at_once(tmp_path, monkeypatch, capsys) -> None:
    from amr.cli import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ann = tmp_path / "ann.jsonl"
    ann.write_text('{"qid": "1", "query": "a dog barks", "vid": "v", "duration": 10}\n')
    with pytest.raises(SystemExit):
        main(
            ["backtranslate", str(ann), "--model-template", "nomodel/opus-mt-{src}-{tgt}", "--out", str(tmp_path / "o")]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model-template: translation model 'nomodel/opus-mt-en-de'")
    assert not (tmp_path / "o").exists()
