"""Parity with the official baseline's outputs on fixed inputs (../shared/parity/qd_detr_seed2023.pt)."""

from __future__ import annotations

import pytest
import torch

from amr.checkpoints import load_official as from_official
from amr.model import QDDETR, build_criterion, count_parameters, postprocess
from tests.conftest import PARITY, need_shared

OUT_KEYS = ("pred_logits", "pred_spans", "saliency_scores", "saliency_scores_neg")


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(need_shared(PARITY / "qd_detr_seed2023.pt"), weights_only=False)


def _run(model: QDDETR, inputs: dict) -> dict:
    with torch.no_grad():
        return model(inputs["src_txt"], inputs["src_txt_mask"], inputs["src_aud"], inputs["src_aud_mask"])


def test_parameter_count_matches_official() -> None:
    assert count_parameters(QDDETR()) == 7_123_237


def test_state_dict_names_and_shapes_match_official(fixture) -> None:
    mine = QDDETR().state_dict()
    assert {k: tuple(v.shape) for k, v in mine.items()} == {k: tuple(v.shape) for k, v in fixture["state_dict"].items()}


def test_batched_outputs_official_mask(fixture) -> None:
    out = _run(from_official(fixture["state_dict"], t2v_mask="official"), fixture["inputs"])
    ref = fixture["batched"]
    for k in OUT_KEYS:
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["aux_outputs"][0]["pred_logits"], ref["aux_pred_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["aux_outputs"][0]["pred_spans"], ref["aux_pred_spans"], atol=1e-5, rtol=0)


def test_per_sample_mask_gives_single_sample_outputs(fixture) -> None:
    out = _run(from_official(fixture["state_dict"], t2v_mask="per_sample"), fixture["inputs"])
    la = fixture["inputs"]["src_aud_mask"].sum(1).long()
    for i, single in enumerate(fixture["single"]):
        for k in ("pred_logits", "pred_spans", "saliency_scores"):
            got = out[k][i : i + 1, : la[i]] if k == "saliency_scores" else out[k][i : i + 1]
            torch.testing.assert_close(got, single[k], atol=1e-5, rtol=0)


def test_official_mask_really_depends_on_the_batch(fixture) -> None:
    """The quirk is real on these inputs: the official mask and per-sample mask disagree."""
    a = _run(from_official(fixture["state_dict"], t2v_mask="official"), fixture["inputs"])
    b = _run(from_official(fixture["state_dict"], t2v_mask="per_sample"), fixture["inputs"])
    assert (a["saliency_scores"] - b["saliency_scores"]).abs().max() > 1e-3


@pytest.mark.parametrize("matcher", ["scipy", "enumerate"])
def test_loss_terms_match_official(fixture, matcher: str) -> None:
    out = _run(from_official(fixture["state_dict"]), fixture["inputs"])
    criterion = build_criterion(matcher=matcher)
    losses = criterion(out, fixture["targets"])
    for k, v in fixture["losses"].items():
        assert float(losses[k]) == pytest.approx(v, rel=1e-5, abs=1e-7), k
    assert criterion.weight_dict == fixture["weight_dict"]
    assert float(criterion.total(losses)) == pytest.approx(fixture["loss_weighted_total"], rel=1e-5)


def test_postprocessing_matches_official_exactly(fixture) -> None:
    model = from_official(fixture["state_dict"])
    out = _run(model, fixture["inputs"])
    assert postprocess(out, fixture["durations"]) == fixture["postprocessed_batched"]
    inputs = fixture["inputs"]
    la = inputs["src_aud_mask"].sum(1).long()
    lt = inputs["src_txt_mask"].sum(1).long()
    for i, expected in enumerate(fixture["postprocessed_single"]):
        one = {k: v[i : i + 1, : (la if "aud" in k else lt)[i]] for k, v in inputs.items()}
        assert postprocess(_run(model, one), [fixture["durations"][i]]) == [expected]


def test_from_official_accepts_a_pth_file_and_rejects_a_wrong_one(fixture, tmp_path) -> None:
    path = tmp_path / "best_checkpoint.pth"
    torch.save({"model": fixture["state_dict"], "epoch": 3}, path)
    model = from_official(path)
    assert not model.training
    bad = dict(fixture["state_dict"])
    bad.pop("class_embed.bias")
    with pytest.raises(ValueError, match="missing \\(first: class_embed.bias\\)"):
        from_official(bad)


def test_converted_official_checkpoint_gives_the_same_outputs(fixture, tmp_path) -> None:
    from amr.cli import main
    from amr.training.module import MomentRetrievalModule

    src = tmp_path / "best_checkpoint.pth"
    torch.save({"model": fixture["state_dict"]}, src)
    out = tmp_path / "official.ckpt"
    main(["convert-official", str(src), str(out)])
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["t2v_mask"] == "official"
    module = MomentRetrievalModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    got = _run(module.model.eval(), fixture["inputs"])
    for k in OUT_KEYS:
        torch.testing.assert_close(got[k], fixture["batched"][k], atol=1e-5, rtol=0)
    with pytest.raises(SystemExit):  # never overwrites
        main(["convert-official", str(src), str(out)])
