"""`amr submit`: the DCASE evaluation-set submission from a checkpoint and distributed features."""

from __future__ import annotations

import json
import shutil

import torch

from amr.cli import main
from amr.data.synth import generate
from tests.conftest import PARITY, need_shared


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
