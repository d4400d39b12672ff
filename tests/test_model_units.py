"""DETR-style unit tests on tiny random tensors: no data needed."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amr.model import QDDETR, QDDETRConfig, build_criterion
from amr.model.matcher import HungarianMatcher
from amr.model.span_ops import cxw_to_xx, generalized_temporal_iou, paired_generalized_temporal_iou, xx_to_cxw


def _batch(b: int = 3, la: tuple = (12, 7, 9), lt: tuple = (5, 3, 6), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    aud = torch.zeros(b, max(la), 770)
    txt = torch.zeros(b, max(lt), 768)
    am = torch.zeros(b, max(la))
    tm = torch.zeros(b, max(lt))
    for i in range(b):
        aud[i, : la[i]] = torch.randn(la[i], 770, generator=g)
        txt[i, : lt[i]] = torch.randn(lt[i], 768, generator=g)
        am[i, : la[i]] = 1
        tm[i, : lt[i]] = 1
    return {"src_txt": txt, "src_txt_mask": tm, "src_aud": aud, "src_aud_mask": am}


def test_span_conversions_round_trip() -> None:
    x = torch.rand(50, 2).sort(-1).values
    torch.testing.assert_close(cxw_to_xx(xx_to_cxw(x)), x)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=8))
def test_giou_bounds_and_diagonal(pairs) -> None:
    a = torch.tensor([sorted(p) for p in pairs]) + torch.tensor([0.0, 1e-3])
    b = a.flip(0) * 0.7 + 0.1
    g = generalized_temporal_iou(a, b)
    assert (g <= 1 + 1e-6).all() and (g >= -1 - 1e-6).all()
    torch.testing.assert_close(paired_generalized_temporal_iou(a, b), torch.diagonal(g))
    torch.testing.assert_close(torch.diagonal(generalized_temporal_iou(a, a)), torch.ones(len(a)))


def test_matcher_batched_equals_per_sample_and_handles_empty() -> None:
    torch.manual_seed(0)
    matcher = HungarianMatcher()
    outputs = {"pred_logits": torch.randn(3, 10, 2), "pred_spans": torch.rand(3, 10, 2)}
    targets = {"span_labels": [{"spans": torch.rand(n, 2)} for n in (1, 4, 2)]}
    batched = matcher(outputs, targets)
    for i in range(3):
        single = matcher({k: v[i : i + 1] for k, v in outputs.items()}, {"span_labels": [targets["span_labels"][i]]})
        assert torch.equal(batched[i][0], single[0][0]) and torch.equal(batched[i][1], single[0][1])
        assert len(batched[i][0]) == len(targets["span_labels"][i]["spans"])
    empty = matcher(outputs, {"span_labels": [{"spans": torch.zeros(0, 2)}] * 3})
    assert all(len(r) == 0 for r, _ in empty)


def test_criterion_finite_with_zero_length_window_and_backprop() -> None:
    torch.manual_seed(0)
    model = QDDETR(QDDETRConfig(hidden_dim=32, nheads=4, dim_feedforward=64))
    batch = _batch()
    out = model(**batch)
    targets = {
        "span_labels": [
            {"spans": torch.tensor([[0.5, 0.0]])},
            {"spans": torch.tensor([[0.2, 0.1], [0.6, 0.3]])},
            {"spans": torch.tensor([[0.4, 0.2]])},
        ],
        "saliency_pos_labels": torch.tensor([[1, 1], [2, 3], [0, 1]]),
        "saliency_neg_labels": torch.tensor([[5, 6], [0, 5], [4, 7]]),
        "saliency_all_labels": (torch.rand(3, 12) > 0.5).float(),
    }
    crit = build_criterion()
    losses = crit(out, targets)
    total = crit.total(losses)
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert set(losses) >= {
        "loss_span",
        "loss_giou",
        "loss_label",
        "loss_saliency",
        "loss_span_0",
        "loss_giou_0",
        "loss_label_0",
    }


def test_per_sample_mask_is_batch_invariant_and_official_is_not() -> None:
    torch.manual_seed(0)
    batch = _batch()
    for mode, invariant in (("per_sample", True), ("official", False)):
        torch.manual_seed(1)
        model = QDDETR(QDDETRConfig(t2v_mask=mode)).eval()
        with torch.no_grad():
            full = model(**batch)
            diffs = []
            for i, (la, lt) in enumerate(zip((12, 7, 9), (5, 3, 6), strict=True)):
                one = model(
                    batch["src_txt"][i : i + 1, :lt],
                    batch["src_txt_mask"][i : i + 1, :lt],
                    batch["src_aud"][i : i + 1, :la],
                    batch["src_aud_mask"][i : i + 1, :la],
                )
                diffs.append((full["pred_spans"][i] - one["pred_spans"][0]).abs().max().item())
                diffs.append((full["saliency_scores"][i, :la] - one["saliency_scores"][0]).abs().max().item())
        assert (max(diffs) < 1e-5) == invariant, (mode, diffs)


def test_dropout_differs_between_positive_and_negative_pass() -> None:
    """In training the two passes draw their own dropout (as two official forward calls would):
    with a batch of one, rolled text is the same text, yet the two saliency rows differ."""
    torch.manual_seed(0)
    model = QDDETR().train()
    b = _batch(1, (8,), (4,))
    out = model(**b)
    assert not torch.allclose(out["saliency_scores"], out["saliency_scores_neg"])
    model.eval()
    with torch.no_grad():
        out = model(**b)
    torch.testing.assert_close(out["saliency_scores"], out["saliency_scores_neg"])


def test_fast_dropout_has_the_law_of_nn_dropout() -> None:
    from amr.model.dropout import Dropout

    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    drop = Dropout(0.1).train()
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.003
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # the gradient flows exactly through the kept units
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("p", [0.1, 0.37])
def test_fast_dropout_drop_rate_is_exact_including_the_lazy_ties(p: float) -> None:
    """The mask draws 8 bits per element and 24 more only where those tie with the threshold's
    top 8 bits. Keeping every tie, or dropping every tie, would move the keep rate by 0.6 / 256
    (p = 0.1) or 0.28 / 256 (p = 0.37): both far outside 5 standard errors at 16 M draws."""
    from amr.model.dropout import keep_mask

    n = 16_000_000
    torch.manual_seed(11)
    rate = keep_mask((n,), p).double().mean().item()
    assert abs(rate - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5


def test_fast_dropout_masks_follow_torch_seed_not_thread_count() -> None:
    from amr.model.dropout import keep_mask

    shape = (64, 62, 1024)
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(3)
        a = keep_mask(shape, 0.1)
        torch.set_num_threads(1)
        torch.manual_seed(3)
        b = keep_mask(shape, 0.1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)
    assert abs(a.mean().item() - 0.9) < 0.001
    assert not torch.equal(keep_mask(shape, 0.1), a)  # the next call draws afresh
    torch.manual_seed(4)
    assert not torch.equal(keep_mask(shape, 0.1), a)


def test_fast_prelu_matches_nn_prelu() -> None:
    from amr.model.prelu import PReLU

    torch.manual_seed(0)
    x = torch.randn(4, 50, 64)
    x[0, 0, :4] = 0.0  # at exactly 0 the slope is the weight, as torch's
    fast, ref = PReLU(), torch.nn.PReLU()
    with torch.no_grad():
        fast.weight.fill_(0.3)
        ref.weight.fill_(0.3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(x)
    ya, yb = fast(xa), ref(xb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    assert set(dict(fast.named_parameters())) == {"weight"}  # official state-dict name


def test_training_attention_path_equals_fused_attention() -> None:
    """The CPU training path (explicit product + fast dropout) is SDPA's computation: with the
    dropout draw keeping everything, outputs and gradients agree."""
    from amr.model import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, n, 64, requires_grad=True) for n in (7, 9, 9))
    blocked = torch.zeros(3, 1, 1, 9, dtype=torch.bool)
    blocked[1, ..., 6:] = True
    blocked[2, ..., 3:] = True
    ref = attention.attend(q, k, v, 8, blocked, 0.0)  # fused kernel
    gq = torch.autograd.grad(ref.sum(), q)[0]
    original = attention.fast_dropout
    attention.fast_dropout = lambda x, p, training: x  # keep every unit
    try:
        out = attention.attend(q, k, v, 8, blocked, 0.1)
        gq2 = torch.autograd.grad(out.sum(), q)[0]
    finally:
        attention.fast_dropout = original
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gq2, gq, rtol=1e-4, atol=1e-6)
    torch.manual_seed(1)
    dropped = attention.attend(q, k, v, 8, blocked, 0.5)
    assert not torch.allclose(dropped, ref)


def test_allocator_tuning_is_idempotent() -> None:
    from amr.runtime import tune_allocator

    first = tune_allocator()
    assert tune_allocator() == first
    for _ in range(2):  # large allocations (above glibc's default mmap threshold) still work
        x = torch.arange(10_000_000, dtype=torch.float64)
        assert x[-1].item() == 9_999_999 and x.sum().item() == 9_999_999 * 10_000_000 / 2
        del x


def test_fast_dropout_works_in_a_forked_child() -> None:
    """DataLoader workers and launchers fork: a child must draw masks (no OpenMP region there)."""
    import multiprocessing as mp

    from amr.model.dropout import keep_mask

    keep_mask((600_000,), 0.5)
    with mp.get_context("fork").Pool(1) as pool:
        mean = pool.apply_async(_child_keep_share).get(timeout=60)
    assert abs(mean - 0.7) < 0.01


def _child_keep_share() -> float:
    import numpy as np

    from amr.model.dropout import keep_mask

    return float(np.mean(keep_mask((600_000,), 0.3).numpy()))


def _cls_case():
    """One sample, three queries, query 1 matched to the GT window [0.2, 0.6] (normalised)."""
    import math

    logits = torch.tensor([[[0.3, -0.2], [1.1, 0.4], [-0.5, 0.9]]])
    spans = torch.tensor([[[0.5, 0.2], [0.45, 0.3], [0.7, 0.1]]])  # (center, width)
    outputs = {"pred_logits": logits, "pred_spans": spans}
    targets = {"span_labels": [{"spans": torch.tensor([[0.4, 0.4]])}]}
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    p = [1 / (1 + math.exp(-(a - b))) for a, b in logits[0].tolist()]  # foreground probability
    iou = (0.6 - 0.3) / (0.6 - 0.2)  # [0.3, 0.6] against [0.2, 0.6]: 0.3 / 0.4
    return outputs, targets, indices, p, iou, math


def test_varifocal_loss_by_hand() -> None:
    from amr.model import build_criterion

    outputs, targets, indices, p, q, math = _cls_case()
    crit = build_criterion(cls="varifocal")
    got = crit.loss_labels(outputs, targets, indices)["loss_label"].item()
    pos = -q * (q * math.log(p[1]) + (1 - q) * math.log(1 - p[1]))  # IoU-weighted BCE towards q
    neg = [-0.75 * p[i] ** 2 * math.log(1 - p[i]) for i in (0, 2)]  # alpha p^gamma BCE towards 0
    assert got == pytest.approx((pos + sum(neg)) / 3, rel=1e-6)


def test_focal_loss_by_hand_and_ce_stays_official() -> None:
    import torch.nn.functional as F

    from amr.model import build_criterion

    outputs, targets, indices, p, _, math = _cls_case()
    got = build_criterion(cls="focal").loss_labels(outputs, targets, indices)["loss_label"].item()
    pos = -0.25 * (1 - p[1]) ** 2 * math.log(p[1])
    neg = [-0.75 * p[i] ** 2 * math.log(1 - p[i]) for i in (0, 2)]
    assert got == pytest.approx((pos + sum(neg)) / 3, rel=1e-6)
    # the default is the official weighted cross-entropy, whatever the focal parameters say
    ce = build_criterion().loss_labels(outputs, targets, indices)["loss_label"]
    target = torch.tensor([[1, 0, 1]])
    ref = F.cross_entropy(outputs["pred_logits"].transpose(1, 2), target, torch.tensor([1.0, 0.1]), reduction="none")
    assert torch.equal(ce, ref.mean())
    with pytest.raises(ValueError, match="loss.cls must be one of"):
        build_criterion(cls="softmax")


def _rank_term_loop(sal: torch.Tensor, sal_neg: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official rank term: its loop over levels 1..top (reading the top level back)."""
    scores = torch.cat([sal, sal_neg], 1)
    labels = torch.cat([labels, torch.zeros_like(labels)], 1)
    mask2 = mask.repeat(1, 2)
    logits = (mask2 * scores + (1.0 - mask2) * -1e3) / 0.5
    logits = logits - logits.max(1, keepdim=True)[0]
    log_prob = logits - torch.log(logits.exp().sum(1, keepdim=True) + 1e-6)
    rank = sal.new_zeros(())
    for level in range(1, min(int(labels.max().item()), 11) + 1):
        pos = (labels >= level).to(sal.dtype)
        mean_log_prob_pos = (pos * log_prob * mask2).sum(1) / (pos.sum(1) + 1e-6)
        rank = rank + (-mean_log_prob_pos * (pos.sum(1) > 0)).mean()
    return rank / 12


@pytest.mark.parametrize("top", [1, 3, 11])
def test_saliency_rank_term_needs_no_top_level_from_the_device(top: int) -> None:
    """All 11 levels at once equal the official loop to the batch's top level (exactly for binary labels)."""
    g = torch.Generator().manual_seed(top)
    b, la = 6, 40
    sal, sal_neg = torch.randn(b, la, generator=g), torch.randn(b, la, generator=g)
    mask = (torch.arange(la)[None] < torch.randint(10, la + 1, (b, 1), generator=g)).float()
    labels = torch.randint(0, top + 1, (b, la), generator=g).float() * mask
    outputs = {"saliency_scores": sal, "saliency_scores_neg": sal_neg, "audio_mask": mask}
    pos = torch.zeros(b, 2, dtype=torch.long)
    targets = {"saliency_all_labels": labels, "saliency_pos_labels": pos, "saliency_neg_labels": pos}
    crit = build_criterion()
    got = crit.loss_saliency(outputs, targets)["loss_saliency"]
    hinge = (crit.saliency_margin + sal.gather(1, pos) - sal.gather(1, pos)).clamp(min=0).sum() / (b * 2) * 2
    neg_pair = (torch.nn.functional.softplus(sal_neg) * mask).sum(1).mean()
    want = hinge + _rank_term_loop(sal, sal_neg, labels, mask) + neg_pair
    if top == 1:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
