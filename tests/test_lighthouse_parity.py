"""Parity with lighthouse's Moment-DETR and CG-DETR on fixed inputs (../shared/parity/lighthouse,
hidden 32; ``AMR_LIGHTHOUSE_FIXTURES=DIR`` reads another folder produced the same way).

Moment-DETR: eval outputs and auxiliary outputs, Hungarian indices of every layer, every loss
term and the weighted total, gradients of the total, post-processed windows and saliency.
CG-DETR: the inference call (lighthouse's predictor path) and its post-processing; the training
call with negative pairs, and with a duplicated recording id (a false negative): every output,
matcher indices, every loss term and the total, gradients of the total."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from amr.model.cg_criterion import CGDETRCriterion, cg_weight_dict
from amr.model.cg_detr import CGDETR, CGDETRConfig
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


def _cg_config(state: dict[str, torch.Tensor]) -> CGDETRConfig:
    """Depths and counts from the weights; heads as for Moment-DETR."""
    d = state["query_embed.weight"].shape[0], state["global_rep_token"].shape[1]

    def layers(prefix: str) -> int:
        return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})

    return CGDETRConfig(
        hidden_dim=d[1],
        nheads=4 if d[1] == 32 else 8,
        num_queries=d[0],
        enc_layers=layers("transformer.encoder.layers."),
        dec_layers=layers("transformer.decoder.layers."),
        t2v_layers=layers("transformer.t2v_encoder.layers."),
        moment_layers=layers("transformer.mcls_encoder.layers."),
        dummy_layers=layers("txtproj_encoder.layers."),
        sent_layers=layers("scls_encoder.layers."),
        num_dummies=state["dummy_rep_token"].shape[0],
        total_prompts=state["global_rep_token"].shape[0],
        dim_feedforward=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
    )


@pytest.fixture(scope="module")
def cg_detr() -> tuple[CGDETR, dict]:
    io, state = _load("cg_detr_io.pt"), _load("cg_detr_state_dict.pt")
    model = CGDETR(_cg_config(state))
    model.load_state_dict(state, strict=True)  # 285 tensors: lighthouse's names and shapes
    model.eval()
    return model, io


def _cg_run(model: CGDETR, io: dict, **kwargs) -> dict:
    src_aud = torch.cat([io["input.src_vid"], io["input.src_aud"]], -1)
    return model(io["input.src_txt"], io["input.src_txt_mask"], src_aud, io["input.src_vid_mask"], **kwargs)


def _same_outputs(out: dict, io: dict, prefix: str) -> None:
    """Every output lighthouse stored under ``prefix`` (the ones it returns as None are not stored:
    ours are None or absent too)."""
    stored = {k[len(prefix) :] for k in io if k.startswith(prefix) and ".aux_outputs." not in f".{k}"}
    assert stored <= set(out)
    for k in stored:
        ref = io[prefix + k]
        if ref.dtype == torch.bool:
            assert out[k].tolist() == ref.tolist(), k
        else:
            torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0, msg=k)
    for i, aux in enumerate(out["aux_outputs"]):
        for k in ("pred_logits", "pred_spans"):
            torch.testing.assert_close(aux[k], io[f"{prefix}aux_outputs.{i}.{k}"], atol=1e-5, rtol=0)


def test_cg_detr_inference_matches_lighthouse(cg_detr) -> None:
    """lighthouse's predictor call (``vid=None, targets=None``, eval mode): every output it returns,
    the auxiliary layers, and the post-processed windows and saliency."""
    model, io = cg_detr
    with torch.no_grad():
        out = _cg_run(model, io)
    _same_outputs(out, io, "infer_out.")
    assert out.get("saliency_scores_neg") is None and "memory_moment" not in out
    lengths = io["input.src_vid_mask"].sum(1).long().tolist()
    windows = postprocess(out, lengths, max_ts=150.0)
    for b, n in enumerate(lengths):
        assert windows[b] == io[f"infer_post.windows.{b}"].tolist()
        assert torch.equal(out["saliency_scores"][b, :n].half().float(), io[f"infer_post.saliency.{b}"])


@pytest.mark.parametrize(("scenario", "vids"), [("", ["vidA", "vidB", "vidC"]), ("dup_", ["vidA", "vidB", "vidA"])])
def test_cg_detr_training_path_losses_and_gradients_match_lighthouse(cg_detr, scenario, vids) -> None:
    """The training call (negative pairs; with ``dup_`` sample 2's negative is its own recording,
    so the false-negative branch of the saliency loss runs): outputs, matching of every layer,
    every loss term and the weighted total; and the gradients of the total."""
    model, io = cg_detr
    targets = {**_targets(io), "relevant_clips": io["targets.relevant_clips"]}
    model.zero_grad()
    out = _cg_run(model, io, vid=vids, targets=targets)
    _same_outputs(out, io, f"{scenario}out.")
    matcher = HungarianMatcher(4.0, 10.0, 1.0)
    layers = [("final", out), *((f"aux{i}", aux) for i, aux in enumerate(out["aux_outputs"]))]
    for layer, outputs in layers:
        for b, (pred, tgt) in enumerate(matcher(outputs, targets)):
            assert pred.tolist() == io[f"{scenario}matcher.{layer}.{b}.pred_idx"].tolist()
            assert tgt.tolist() == io[f"{scenario}matcher.{layer}.{b}.tgt_idx"].tolist()
    criterion = CGDETRCriterion(matcher, cg_weight_dict(dec_layers=model.cfg.dec_layers))
    prefix = f"{scenario}weight."
    assert criterion.weight_dict == {k[len(prefix) :]: v.item() for k, v in io.items() if k.startswith(prefix)}
    losses = criterion(out, targets)
    prefix = f"{scenario}loss."
    assert set(losses) == {k[len(prefix) :] for k in io if k.startswith(prefix)}
    for k, v in losses.items():
        ref = io[prefix + k].item()
        assert abs(v.item() - ref) <= 1e-5 * max(1.0, abs(ref)), k
    total = criterion.total(losses)
    torch.testing.assert_close(total, io[f"{scenario}loss_total"], atol=1e-5, rtol=1e-5)
    if scenario:  # the gradients are stored for the first scenario
        return
    total.backward()
    grads = _load("cg_detr_grads.pt")
    params = dict(model.named_parameters())
    largest = max(g.abs().max().item() for g in grads.values())
    for k, g in grads.items():
        assert params[k].grad is not None, k
        assert (params[k].grad - g).abs().max().item() <= 1e-4 * largest, k
    assert {k for k, p in params.items() if p.grad is None} == set(params) - set(grads)  # the unused modules
