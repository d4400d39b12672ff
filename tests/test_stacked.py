"""``stacked_runs=N``: N seeds trained as one stacked model match N runs trained alone."""

from __future__ import annotations

import copy
import csv
import json
import warnings
from pathlib import Path

import pytest
import torch

from amr.checkpoints import read
from amr.model import QDDETR, QDDETRConfig, build_criterion
from amr.training.stacked_module import StackedModule, clip_per_member, member_outputs, stack_inputs

LR = 1e-4  # the recipe's learning rate: AdamW moves a weight by at most about this per step


def _batch(gen: torch.Generator, b: int = 4, la: int = 24, lt: int = 10) -> dict:
    """A batch padded beyond its longest sample (as fixed_shapes pads), with uneven lengths."""
    aud_mask, txt_mask = torch.zeros(b, la), torch.zeros(b, lt)
    for i in range(b):
        aud_mask[i, : int(torch.randint(8, la - 2, (1,), generator=gen))] = 1
        txt_mask[i, : int(torch.randint(2, lt - 1, (1,), generator=gen))] = 1
    inputs = {
        "src_txt": torch.randn(b, lt, 768, generator=gen) * txt_mask[..., None],
        "src_txt_mask": txt_mask,
        "src_aud": torch.randn(b, la, 770, generator=gen) * aud_mask[..., None],
        "src_aud_mask": aud_mask,
    }
    spans = [{"spans": torch.tensor([[0.3 + 0.1 * i, 0.2]])} for i in range(b)]
    pos = torch.tensor([[1, 2]] * b)
    sal = torch.zeros(b, la)
    sal[:, 1:3] = 1
    targets = {
        "span_labels": spans,
        "saliency_pos_labels": pos,
        "saliency_neg_labels": pos + 4,
        "saliency_all_labels": sal,
    }
    return {"inputs": inputs, "targets": targets, "index": torch.arange(b)}


class _Member(torch.nn.Module):
    """What StackedModule reads of a member: ``model``, ``criterion``, ``decode``, ``hparams``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = QDDETR(QDDETRConfig()).train()
        self.criterion = build_criterion(dec_layers=2, aux_loss=True)


def _alone(member: _Member, batch: dict, step_seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(step_seed)  # what StepSeed does before a run's step
    out = member.model(**batch["inputs"])
    loss = member.criterion.total(member.criterion(out, batch["targets"]))
    loss.backward()
    grads = {k: p.grad.clone() for k, p in member.model.named_parameters() if p.grad is not None}
    return out["pred_spans"].detach(), grads


def test_one_stacked_step_gives_each_member_its_own_outputs_and_gradients() -> None:
    """Dropout on (member streams), the official T2V mask, uneven padding: each member's outputs
    equal its run alone within 1e-5, its gradients within 1e-5 of the largest gradient."""
    members = [_Member(s) for s in (3, 4, 5)]
    batches = [_batch(torch.Generator().manual_seed(10 + m)) for m in range(3)]
    alone = [_alone(copy.deepcopy(mb), b, 100 + m) for m, (mb, b) in enumerate(zip(members, batches, strict=True))]
    stacked = StackedModule(members, [3, 4, 5], on_best=lambda m, e: None, on_log=lambda m, v: None)  # type: ignore[arg-type]
    stacked.train()
    gens = [torch.Generator().manual_seed(100 + m) for m in range(3)]
    out = stacked.stacked_forward(stack_inputs(batches), gens)
    total = sum(
        stacked.criterion.total(stacked.criterion(member_outputs(out, m), b["targets"])) for m, b in enumerate(batches)
    )
    total.backward()
    for m, (spans, grads) in enumerate(alone):
        assert (out["pred_spans"][m] - spans).abs().max() < 1e-5
        scale = max(g.abs().max() for g in grads.values())
        for k, g in grads.items():
            assert (stacked.stacked[k.replace(".", "__")].grad[m] - g).abs().max() <= 1e-5 * scale, k
    # the members' streams differ: the same weights and batch drop differently per member
    same = [copy.deepcopy(members[0]) for _ in range(2)]
    twin = StackedModule(same, [3, 3], on_best=lambda m, e: None, on_log=lambda m, v: None)  # type: ignore[arg-type]
    twin.train()
    two = twin.stacked_forward(stack_inputs([batches[0]] * 2), gens[:2])["pred_spans"]
    assert (two[0] - two[1]).abs().max() > 1e-3


def test_clipping_is_per_member() -> None:
    """Each member's slice of the stacked gradients is clipped as clip_grad_norm_ clips a run."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.zeros(3, 5, 4, requires_grad=True), torch.zeros(3, 7, requires_grad=True)]
    for p, scale in zip(params, (1.0, 20.0), strict=True):
        p.grad = torch.randn(p.shape, generator=gen) * scale
    alone = []
    for m in range(3):
        ps = [torch.zeros(p.shape[1:], requires_grad=True) for p in params]
        for q, p in zip(ps, params, strict=True):
            q.grad = p.grad[m].clone() * (m + 0.05)  # members far apart: one is not clipped
        torch.nn.utils.clip_grad_norm_(ps, 5.0)
        alone.append([q.grad for q in ps])
    for m in range(3):
        for p in params:
            p.grad[m] *= m + 0.05
    clip_per_member(params, 5.0)
    for m in range(3):
        for p, g in zip(params, alone[m], strict=True):
            assert torch.allclose(p.grad[m], g, rtol=1e-6, atol=0)


def test_padding_beyond_the_batch_leaves_outputs_and_losses_unchanged() -> None:
    """fixed_shapes pads every batch to the split's longest recording and caption: with the
    official (batch-dependent) T2V mask, outputs at valid positions and the loss stay the same."""
    torch.manual_seed(0)
    model = QDDETR(QDDETRConfig()).eval()
    crit = build_criterion(dec_layers=2, aux_loss=True)
    batch = _batch(torch.Generator().manual_seed(1), la=24, lt=10)
    la = int(batch["inputs"]["src_aud_mask"].sum(1).max())
    lt = int(batch["inputs"]["src_txt_mask"].sum(1).max())
    tight = {
        "src_txt": batch["inputs"]["src_txt"][:, :lt],
        "src_txt_mask": batch["inputs"]["src_txt_mask"][:, :lt],
        "src_aud": batch["inputs"]["src_aud"][:, :la],
        "src_aud_mask": batch["inputs"]["src_aud_mask"][:, :la],
    }
    assert la < 24 and lt < 10  # the batch is padded beyond its maximum
    with torch.no_grad():
        wide, narrow = model(**batch["inputs"]), model(**tight)
        targets = dict(batch["targets"], saliency_all_labels=batch["targets"]["saliency_all_labels"][:, :la])
        loss_wide = crit.total(crit(wide, batch["targets"]))
        loss_narrow = crit.total(crit(narrow, targets))
    for k in ("pred_logits", "pred_spans"):
        assert torch.allclose(wide[k], narrow[k], atol=1e-5), k
    valid = tight["src_aud_mask"].bool()
    assert torch.allclose(wide["saliency_scores"][:, :la][valid], narrow["saliency_scores"][valid], atol=1e-5)
    assert torch.allclose(loss_wide, loss_narrow, rtol=1e-5)


def _rows(path: Path) -> list[dict[str, float]]:
    """A CSV log's rows, only the columns with a value."""
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in read(path)["state_dict"].items() if k.startswith("model.")}


@pytest.mark.parametrize("steps", [1])
def test_stacked_runs_match_runs_alone(tmp_path, steps: int) -> None:
    """Two seeds stacked vs each trained alone (same config): after one step the weights agree
    (relative L2 distance <= 5e-3 of the step's change, fewer than 0.1 % of the weights apart by
    more than 1e-6, none by more than 2 x lr: AdamW's first step moves every weight by about lr
    whatever its gradient's size, so weights whose gradient is zero up to rounding move by +-lr
    either way); a two-stage debug=fast run (two epochs each) gives the same pre-training cache
    keys and test metrics; the members are ordinary run folders."""
    from tests.helpers import run_python

    common = ["-m", "amr.training.run", "debug=fast", "fixed_shapes=true", f"paths.root={tmp_path}"]
    one_step = ["pretrain=none", "train.max_epochs=1", "+trainer.limit_train_batches=1"]
    # two stages, each run with its own pre-training cache: the stacked pre-training is compared too
    two_stage = ["experiment=system1"]
    runs = {}
    for name, extra in {
        "stacked": ["stacked_runs=2", "seed=7"],
        "alone7": ["seed=7"],
        "alone8": ["seed=8"],
        "init": ["stacked_runs=2", "seed=7", "train.max_epochs=0"],  # the members' initial weights
    }.items():
        for variant, more in (("step", one_step), ("fast", two_stage)):
            if name.startswith("init") and variant == "fast":
                continue
            run = tmp_path / f"{name}_{variant}"
            if name.startswith("init"):
                more = ["pretrain=none"]
            args = [*common, *extra, *more, f"hydra.run.dir={run}", f"paths.pretrain_cache={tmp_path}/cache_{name}"]
            run_python(args, tmp_path)
            runs[name, variant] = run
    stacked = read(runs["stacked", "step"] / "checkpoints" / "last.ckpt")["state_dict"]
    for m, seed in enumerate((7, 8)):
        alone = _weights(runs[f"alone{seed}", "step"] / "checkpoints" / "last.ckpt")
        init = _weights(runs["init", "step"] / f"seed={seed}" / "checkpoints" / "best.ckpt")
        dist = moved = 0.0
        apart = total = 0
        for k, w in alone.items():
            d = stacked["stacked." + k[len("model.") :].replace(".", "__")][m] - w
            dist += float(d.double().square().sum())
            moved += float((w - init[k]).double().square().sum())
            apart += int((d.abs() > 1e-6).sum())
            total += d.numel()
            assert d.abs().max() <= 2 * LR, k
        assert dist**0.5 <= 5e-3 * moved**0.5
        assert apart <= 1e-3 * total
        member = runs["stacked", "fast"] / f"seed={seed}"
        same = json.loads((member / "test_metrics.json").read_text())
        assert same == json.loads((runs[f"alone{seed}", "fast"] / "test_metrics.json").read_text())
        key = json.loads((runs[f"alone{seed}", "fast"] / "pretrain.json").read_text())["key"]
        assert json.loads((member / "pretrain.json").read_text())["key"] == key
        assert (tmp_path / "cache_stacked" / key / "best.ckpt").is_file()  # the stacked pre-training, cached
        info = json.loads((member / "run.json").read_text())
        assert info["seed"] == seed and f"seed={seed}" in info["overrides"]
        assert not any(o.startswith("stacked_runs") for o in info["overrides"])
        assert (member / "checkpoints" / "best.ckpt").is_file()
        assert (member / "predictions" / "test_preds.jsonl").is_file()
        alone_rows = _rows(runs[f"alone{seed}", "fast"] / "logs" / "finetune" / "metrics.csv")
        member_rows = _rows(member / "logs" / "finetune" / "metrics.csv")
        assert [sorted(r) for r in member_rows] == [sorted(r) for r in alone_rows]  # the same columns per row
        assert "best/test/R1@0.7" in alone_rows[-1] and "epoch" in alone_rows[-1]  # the best figures' row
        assert [(r["epoch"], r["step"]) for r in member_rows] == [(r["epoch"], r["step"]) for r in alone_rows]
        assert member_rows[1]["train/loss"] == pytest.approx(alone_rows[1]["train/loss"], rel=1e-5)


def test_the_training_loss_traces_to_one_graph() -> None:
    """With loss.matcher=enumerate, the network in training mode and the criterion trace into one
    graph without a break (no read-back, no data-dependent shape): what compile=reduce-overhead
    needs to capture the step in CUDA graphs. The CPU-only shortcuts step aside while compiling."""
    torch.manual_seed(0)
    model = QDDETR(QDDETRConfig()).train()
    crit = build_criterion(dec_layers=2, aux_loss=True, matcher="enumerate")
    batch = _batch(torch.Generator().manual_seed(0))

    def step(inputs: dict, targets: dict) -> torch.Tensor:
        return crit.total(crit(model(**inputs), targets))

    with warnings.catch_warnings():  # dynamo notes the assignment table's cache (a constant)
        warnings.simplefilter("ignore", UserWarning)
        explained = torch._dynamo.explain(step)(batch["inputs"], batch["targets"])
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
def test_a_compiled_run_trains_and_keeps_parameter_names(tmp_path) -> None:
    """compile=default (inductor, minutes on a CPU): a debug=fast run trains, and its checkpoint
    reads as any run's (Module.compile keeps the parameter names)."""
    from amr.checkpoints import load_model
    from tests.helpers import run_python

    run = tmp_path / "compiled"
    args = ["-m", "amr.training.run", "debug=fast", "pretrain=none", "fixed_shapes=true", "compile=default"]
    run_python([*args, f"paths.root={tmp_path}", f"hydra.run.dir={run}"], tmp_path)
    assert json.loads((run / "test_metrics.json").read_text())
    load_model(run / "checkpoints" / "best.ckpt")  # strict names and shapes
