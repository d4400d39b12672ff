"""Parity with lighthouse's Moment-DETR on fixed inputs (../shared/parity/lighthouse, hidden 32;
``AMR_LIGHTHOUSE_FIXTURES=DIR`` reads another folder produced the same way): eval outputs and
auxiliary outputs, Hungarian indices of every layer, every loss term and the weighted total,
gradients of the total, post-processed windows and saliency."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from amr.model.criterion import HingeSaliencyCriterion, official_weight_dict
from amr.model.matcher import HungarianMatcher
from amr.model.moment_detr import MomentDETR, MomentDETRConfig
from amr.model.postprocess import postprocess
from tests.conftest import PARITY, need_shared

FIXTURES = Path(os.environ.get("AMR_LIGHTHOUSE_FIXTURES", PARITY / "lighthouse"))


def _load(name: str) -> dict[str, torch.Tensor]:
    return torch.load(need_shared(FIXTURES / name), weights_only=True)


def _targets(io: dict[str, torch.Tensor]) -> dict:
    n = len({k.split(".")[2] for k in io if k.startswith("targets.span_labels.")})
    return {
        "span_labels": [{"spans": io[f"targets.span_labels.{b}.spans"]} for b in range(n)],
        **{k: io[f"targets.{k}"] for k in ("saliency_pos_labels", "saliency_neg_labels", "saliency_all_labels")},
    }


def _config(state: dict[str, torch.Tensor]) -> MomentDETRConfig:
    """Widths and depths from the weights (the fixture's are reduced); heads from the fixture's
    width as lighthouse's generator set them (hidden 32 -> 4 heads)."""
    d = state["query_embed.weight"].shape[1]
    layers = {int(k.split(".")[3]) for k in state if k.startswith("transformer.encoder.layers.")}
    dec = {int(k.split(".")[3]) for k in state if k.startswith("transformer.decoder.layers.")}
    return MomentDETRConfig(
        hidden_dim=d,
        nheads=4 if d == 32 else 8,
        enc_layers=len(layers),
        dec_layers=len(dec),
        num_queries=state["query_embed.weight"].shape[0],
        dim_feedforward=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
    )


@pytest.fixture(scope="module")
def moment_detr() -> tuple[MomentDETR, dict, dict, dict]:
    io, state = _load("moment_detr_io.pt"), _load("moment_detr_state_dict.pt")
    model = MomentDETR(_config(state))
    model.load_state_dict(state, strict=True)  # lighthouse's key names and shapes, every one
    model.eval()
    src_aud = torch.cat([io["input.src_vid"], io["input.src_aud"]], -1)  # the 2 time features first
    out = model(io["input.src_txt"], io["input.src_txt_mask"], src_aud, io["input.src_vid_mask"])
    return model, io, out, _load("moment_detr_grads.pt")


def test_moment_detr_outputs_match_lighthouse(moment_detr) -> None:
    _, io, out, _ = moment_detr
    for k in ("pred_logits", "pred_spans", "saliency_scores"):
        torch.testing.assert_close(out[k], io[f"out.{k}"], atol=1e-5, rtol=0)
    assert len(out["aux_outputs"]) == 1
    for k in ("pred_logits", "pred_spans"):
        torch.testing.assert_close(out["aux_outputs"][0][k], io[f"out.aux_outputs.0.{k}"], atol=1e-5, rtol=0)


def test_moment_detr_matching_losses_and_gradients_match_lighthouse(moment_detr) -> None:
    model, io, out, grads = moment_detr
    targets = _targets(io)
    matcher = HungarianMatcher(4.0, 10.0, 1.0)
    for layer, outputs in (("final", out), ("aux0", out["aux_outputs"][0])):
        for b, (pred, tgt) in enumerate(matcher(outputs, targets)):
            assert pred.tolist() == io[f"matcher.{layer}.{b}.pred_idx"].tolist()
            assert tgt.tolist() == io[f"matcher.{layer}.{b}.tgt_idx"].tolist()
    criterion = HingeSaliencyCriterion(matcher, official_weight_dict(dec_layers=model.cfg.dec_layers))
    assert criterion.weight_dict == {k[7:]: v.item() for k, v in io.items() if k.startswith("weight.")}
    losses = criterion(out, targets)
    assert set(losses) == {k[5:] for k in io if k.startswith("loss.")}
    for k, v in losses.items():
        ref = io[f"loss.{k}"]
        assert abs(v.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item())), k
    total = criterion.total(losses)
    torch.testing.assert_close(total, io["loss_total"], atol=1e-5, rtol=1e-5)
    model.zero_grad()
    total.backward()
    params = dict(model.named_parameters())
    largest = max(g.abs().max().item() for g in grads.values())
    for k, g in grads.items():
        assert params[k].grad is not None, k
        assert (params[k].grad - g).abs().max().item() <= 1e-4 * largest, k
    # the parameters lighthouse leaves without a gradient (the unused text position table) are ours too
    assert {k for k, p in params.items() if p.grad is None} == set(params) - set(grads)


def test_moment_detr_post_processing_matches_lighthouse(moment_detr) -> None:
    _, io, out, _ = moment_detr
    lengths = io["input.src_vid_mask"].sum(1).long().tolist()  # duration = frames (clip length 1 s)
    windows = postprocess(out, lengths, max_ts=150.0)  # lighthouse's clotho-moment clamp
    for b, n in enumerate(lengths):
        assert windows[b] == io[f"post.windows.{b}"].tolist()
        saliency = out["saliency_scores"][b, :n].detach().half().float()
        assert torch.equal(saliency, io[f"post.saliency.{b}"])
