"""`amr submit`: the DCASE evaluation-set submission from a checkpoint and distributed features."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from amr.cli import main
from amr.data.synth import generate
from tests.conftest import PARITY, need_shared
from tests.helpers import CAPTIONS, GOOD, needs_msclap, random_checkpoint, run_amr


def test_submit_writes_one_line_per_query_without_scores(tmp_path) -> None:
    fixture = torch.load(need_shared(PARITY / "qd_detr_seed2023.pt"), weights_only=False)
    official = tmp_path / "best_checkpoint.pth"
    torch.save({"model": fixture["state_dict"]}, official)
    main(["convert-official", str(official), str(tmp_path / "official.ckpt")])

    syn = generate(tmp_path / "syn", "castella", seed=1, scale=0.03)
    root = tmp_path / "eval"
    (root / "data").mkdir(parents=True)
    lines = [json.loads(x) for x in syn.annotations("test").read_text().splitlines()]
    for x in lines:
        x.pop("relevant_windows")  # evaluation files carry no windows
    (root / "data" / "dcase2026_evaluation.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    shutil.copytree(syn.root / "features" / "castella", root / "features" / "dcase2026_evaluation")

    out = tmp_path / "submission.jsonl"
    main(
        [
            "submit",
            "--ckpt",
            str(tmp_path / "official.ckpt"),
            "--data-root",
            str(root),
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    sub = [json.loads(x) for x in out.read_text().splitlines()]
    assert [s["qid"] for s in sub] == [x["qid"] for x in lines]
    assert all(set(s) == {"qid", "query", "vid", "pred_relevant_windows"} for s in sub)
    assert all(
        len(s["pred_relevant_windows"]) == 10 and all(len(w) == 2 for w in s["pred_relevant_windows"]) for s in sub
    )
    scored = [json.loads(x) for x in out.with_suffix(".scores.jsonl").read_text().splitlines()]
    for s, p in zip(sub, scored, strict=True):
        scores = [w[2] for w in p["pred_relevant_windows"]]
        assert scores == sorted(scores, reverse=True)
        assert s["pred_relevant_windows"] == [w[:2] for w in p["pred_relevant_windows"]]

    # another decoder: moments from the saliency curve (at most 10, other windows than DETR's)
    seg = tmp_path / "segments.jsonl"
    argv = ["submit", "--ckpt", str(tmp_path / "official.ckpt"), "--data-root", str(root), "--out", str(seg)]
    main([*argv, "--cache-dir", str(tmp_path / "cache"), "--decode", "saliency", "--set", "threshold_k=0.25"])
    by_decoder = [json.loads(x) for x in seg.read_text().splitlines()]
    assert [s["qid"] for s in by_decoder] == [s["qid"] for s in sub]
    assert all(1 <= len(s["pred_relevant_windows"]) <= 10 for s in by_decoder) and by_decoder != sub

    # --feat-dir: the features folder read (the same features under another name give the same file)
    shutil.copytree(root / "features" / "dcase2026_evaluation", root / "features" / "renamed")
    moved = tmp_path / "moved.jsonl"
    argv = ["submit", "--ckpt", str(tmp_path / "official.ckpt"), "--data-root", str(root), "--out", str(moved)]
    main([*argv, "--cache-dir", str(tmp_path / "cache"), "--feat-dir", "renamed"])
    assert moved.read_text() == out.read_text()
    shutil.rmtree(root / "features" / "renamed")
    with pytest.raises(SystemExit):
        main(
            [*argv[:-1], str(tmp_path / "gone.jsonl"), "--cache-dir", str(tmp_path / "cache"), "--feat-dir", "renamed"]
        )
    assert not (tmp_path / "gone.jsonl").exists()

    # --calibrator PATH re-scores (and may re-rank) the windows; --no-calibrator ignores one beside the checkpoint
    from amr.inference.calibration import FEATURES, beside, fit
    from amr.inference.decoders import DecodeConfig

    x = np.random.default_rng(0).normal(size=(600, len(FEATURES)))
    cal = fit(x, x[:, 3] - x[:, 0] > 0.5, "logistic", DecodeConfig())  # a ranking unlike the model's own
    cal.save(tmp_path / "cal.json")
    calibrated = tmp_path / "calibrated.jsonl"
    main(
        [
            *argv[:-1],
            str(calibrated),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--calibrator",
            str(tmp_path / "cal.json"),
        ]
    )
    assert calibrated.with_suffix(".scores.jsonl").read_text() != out.with_suffix(".scores.jsonl").read_text()
    shutil.copy(tmp_path / "cal.json", beside(tmp_path / "official.ckpt"))
    ignored = tmp_path / "ignored.jsonl"
    main([*argv[:-1], str(ignored), "--cache-dir", str(tmp_path / "cache"), "--no-calibrator"])
    assert ignored.with_suffix(".scores.jsonl").read_text() == out.with_suffix(".scores.jsonl").read_text()


@needs_msclap
def test_submit_from_extracted_features(clap, audio_dir, tmp_path) -> None:
    root = tmp_path / "eval"
    feat = root / "features" / "dcase2026_evaluation"
    weights = str(clap / "clap_weights.pth")
    run_amr(
        ["extract-audio", "--audio-dir", str(audio_dir), "--out", str(feat), "--clap-weights", weights],
        clap,
        check=False,
    )
    rows = [
        {"qid": f"e{i}", "query": c, "vid": vid, "duration": GOOD[vid][0]}
        for i, (vid, c) in enumerate(zip(["a", "b", "long"], CAPTIONS.values(), strict=True))
    ]
    (root / "data").mkdir(parents=True)
    ann = root / "data" / "dcase2026_evaluation.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_amr(["extract-text", "--annotations", str(ann), "--out", str(feat), "--clap-weights", weights], clap)
    out = tmp_path / "submission.jsonl"
    ckpt = random_checkpoint(tmp_path / "m.ckpt")
    main(
        ["submit", "--ckpt", str(ckpt), "--data-root", str(root), "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    )
    sub = [json.loads(x) for x in out.read_text().splitlines()]
    assert [s["qid"] for s in sub] == ["e0", "e1", "e2"]
    assert all(
        len(s["pred_relevant_windows"]) == 10 and all(len(w) == 2 for w in s["pred_relevant_windows"]) for s in sub
    )
