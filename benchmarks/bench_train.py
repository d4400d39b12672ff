"""Training step speed: forward (positive + rolled-text negative pass), criterion with Hungarian
matching, backward, grad-clip 0.1 and AdamW, median of 8 steps after 2 warm-ups, at batch 32."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from amr.model import build, network_inputs
from amr.model import criterion as build_criterion_of
from amr.model.matcher import SOLVERS, HungarianMatcher
from amr.runtime import tune_allocator
from amr.training.module import FULL_PRECISION, adamw
from benchmarks.common import median_time, peak_rss_mb, table, update_report

SHAPES = {"clotho_moment": (61, 61), "castella": (120, 300)}  # (min, max) audio frames per sample
PAIRED = {"clotho_moment": (6, 5), "castella": (3, 3)}  # CPU (rounds, block) beside the official code
NETWORKS = ("qd_detr", "moment_detr", "cg_detr")  # the model group's networks (their configs' defaults)


def make_batch(b: int, frames: tuple[int, int], device: str, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    la = torch.randint(frames[0], frames[1] + 1, (b,), generator=g)
    lt = torch.randint(8, 23, (b,), generator=g)
    aud = torch.zeros(b, int(la.max()), 770)
    txt = torch.zeros(b, int(lt.max()), 768)
    am = torch.zeros(b, int(la.max()))
    tm = torch.zeros(b, int(lt.max()))
    spans, pos, neg, sal = [], [], [], torch.zeros(b, int(la.max()))
    for i in range(b):
        n = int(la[i])
        x = torch.randn(n, 768, generator=g)
        aud[i, :n, :768] = x / x.norm(dim=-1, keepdim=True)
        aud[i, :n, 768] = torch.arange(n) / n
        aud[i, :n, 769] = torch.arange(n) / n + 1 / n
        txt[i, : lt[i]] = torch.randn(int(lt[i]), 768, generator=g)
        am[i, :n] = 1
        tm[i, : lt[i]] = 1
        k = int(torch.randint(1, 4, (1,), generator=g))
        st = torch.rand(k, generator=g) * 0.7
        w = torch.rand(k, generator=g) * 0.2 + 0.02
        spans.append({"spans": torch.stack([st + w / 2, w], 1)})
        s0, s1 = int(st[0] * n), max(int(st[0] * n) + 1, int((st[0] + w[0]) * n) - 1)
        sal[i, s0 : s1 + 1] = 1
        pos.append([s0, s1])
        neg.append([(s1 + 2) % n, (s1 + 3) % n])
    inputs = {"src_txt": txt, "src_txt_mask": tm, "src_aud": aud, "src_aud_mask": am}
    targets = {
        "span_labels": spans,
        "saliency_pos_labels": torch.tensor(pos),
        "saliency_neg_labels": torch.tensor(neg),
        "saliency_all_labels": sal,
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}
    targets = {
        k: (v.to(device) if torch.is_tensor(v) else [{"spans": s["spans"].to(device)} for s in v])
        for k, v in targets.items()
    }
    return inputs, targets


def matmul_peak_gflops(device: str, dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run() -> None:
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()

    return 2 * n**3 / median_time(run, repeat=10, warmup=2) / 1e9


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss: Callable[[], torch.Tensor],
    device: str,
    scaler: torch.amp.GradScaler | None = None,
) -> Callable[[], None]:
    """One timed training step: loss, backward (scaled for fp16), grad-clip 0.1, AdamW."""

    def step() -> None:
        value = loss()
        if scaler is not None:
            scaler.scale(value).backward()
            scaler.unscale_(opt)
        else:
            value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def autocast(device: str, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast context of a Lightning precision setting ("32-true", "bf16-mixed", "16-mixed")."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device, dtype=dtype)


def grad_scaler(precision: str) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler("cuda") if precision == "16-mixed" else None


def our_step(
    device: str,
    precision: str,
    shape: str,
    batch: int = 32,
    matcher: str = "scipy",
    compile_mode: str | None = None,
    network: str = "qd_detr",
) -> tuple[Callable[[], None], int]:
    """A timed step of amr's model (``model=network`` at its group's sizes) on a fixed batch (the
    network compiled in ``compile_mode`` when given, as ``compile=MODE`` does), and its FLOPs."""
    torch.manual_seed(0)
    settings = {"name": network}
    model = build(settings)[0].to(device).train()
    criterion = build_criterion_of(settings, {"matcher": matcher}).to(device)
    # as the LightningModule builds it: fused only at full precision
    opt = adamw(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=precision in FULL_PRECISION)
    inputs, targets = make_batch(batch, SHAPES[shape], device)
    collated = {"inputs": inputs, "targets": targets, "meta": [{"vid": f"v{i}"} for i in range(batch)]}
    cast = autocast(device, precision)

    def loss() -> torch.Tensor:
        with cast():  # the batch in the network's own layout, as the training module gives it
            return criterion.total(criterion(model(**network_inputs(model, collated)), targets))

    with FlopCounterMode(display=False) as fc:
        loss().backward()
    opt.zero_grad(set_to_none=True)
    if compile_mode:
        model.compile(mode=compile_mode, dynamic=False)
    return train_step(model, opt, loss, device, grad_scaler(precision)), fc.get_total_flops()


def official_step(
    src: str, shape: str, batch: int = 32, device: str = "cpu", precision: str = "32-true"
) -> Callable[[], None]:
    """A timed step of the official baseline's own code on the same batch, when a checkout of it
    is given (``AMR_OFFICIAL_SRC=.../dcase2026_task6_baseline/src``); nothing of it ships here.
    Built as the official ``train.py`` builds it (plain AdamW); mixed precision by autocast, as
    for ours."""
    import sys
    import types

    sys.path.insert(0, src)
    from qd_detr import build_model  # type: ignore[import-not-found]

    args = types.SimpleNamespace(
        device=device,
        hidden_dim=256,
        dropout=0.1,
        nheads=8,
        dim_feedforward=1024,
        enc_layers=2,
        dec_layers=2,
        position_embedding="sine",
        max_q_l=32,
        input_dropout=0.5,
        max_a_l=300,
        t_feat_dim=768,
        a_feat_dim=768,
        aux_loss=True,
        num_queries=10,
        span_loss_type="l1",
        n_input_proj=2,
        set_cost_span=10,
        set_cost_giou=1,
        set_cost_class=4,
        span_loss_coef=10,
        giou_loss_coef=1,
        label_loss_coef=4,
        lw_saliency=1,
        eos_coef=0.1,
        saliency_margin=0.2,
    )
    torch.manual_seed(0)
    model, criterion = build_model(args)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    inputs, targets = make_batch(batch, SHAPES[shape], device)
    cast = autocast(device, precision)

    def loss() -> torch.Tensor:
        with cast():
            losses = criterion(model(**inputs), targets)
            return sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)

    return train_step(model, opt, loss, device, grad_scaler(precision))


def paired_medians(a: Callable[[], None], b: Callable[[], None], rounds: int, block: int) -> tuple[float, float]:
    """Median step times of two steps measured in alternating blocks of ``block`` steps, the first
    step of each block untimed: machine drift hits both alike, and every timed step follows a step
    of its own model, as in training (strict one-one alternation makes each step start with the
    other model's memory in cache and heap, which is no training run's situation)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, acc in zip((a, b), times, strict=True):
            fn()
            for _ in range(block - 1):
                t = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def step_key(device: str, precision: str, shape: str) -> str:
    """Report key, e.g. ``cpu-fp32-clotho_moment-b32``."""
    return f"{device}-{'fp32' if precision == '32-true' else precision}-{shape}-b32"


def bench_step(
    device: str,
    precision: str,
    shape: str,
    batch: int = 32,
    steps: int = 8,
    matcher: str = "scipy",
    network: str = "qd_detr",
) -> dict:
    step, flops = our_step(device, precision, shape, batch, matcher, network=network)
    t = median_time(step, repeat=steps, warmup=2)
    return {"median_s": t, "flops": flops, "gflops_per_s": flops / t / 1e9}


def bench_matching(device: str, batch: int = 32, repeat: int = 20) -> dict[str, float]:
    """Seconds per assignment of a batch (10 queries, 1-5 windows per sample), per solver, the
    cost matrix and the result's use on the device included."""
    g = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(batch, 10, 2, generator=g),
        "pred_spans": torch.rand(batch, 10, 2, generator=g),
    }
    outputs = {k: v.to(device) for k, v in outputs.items()}
    sizes = torch.randint(1, 6, (batch,), generator=g).tolist()
    targets = {"span_labels": [{"spans": torch.rand(n, 2, generator=g).to(device)} for n in sizes]}
    out = {}
    for solver in SOLVERS:
        matcher = HungarianMatcher(solver=solver)

        def run(m: HungarianMatcher = matcher) -> None:
            rows = torch.cat([r.to(device) for r, _ in m(outputs, targets)])
            if device == "cuda":
                torch.cuda.synchronize()
            assert len(rows) == sum(sizes)

        out[solver] = median_time(run, repeat=repeat, warmup=3)
    return out


def _beside_official(src: str, device: str, res: dict, rows: list) -> None:
    """The official code's step beside ours on the same batches, in alternating blocks."""
    # the official code beside ours, one step of each in turn
    precision = "32-true" if device == "cpu" else "bf16-mixed"
    for shape in SHAPES:
        rounds, block = PAIRED[shape] if device == "cpu" else (5, 11)
        steps = rounds * (block - 1)
        ours, official = paired_medians(
            our_step(device, precision, shape)[0],
            official_step(src, shape, device=device, precision=precision),
            rounds,
            block,
        )
        tag = step_key(device, precision, shape)
        res[f"official-{tag}"] = {
            "median_s": official,
            "ours_median_s_same_run": ours,
            "ours_over_official": ours / official,
            "steps": steps,
        }
        rows.append(
            [
                f"official {tag}, in blocks beside ours, {steps} steps each",
                f"{official:.4f}",
                "",
                "",
                f"ours {ours:.4f} s = {ours / official:.2f}x",
            ]
        )


def table1_hours(pretrain_step_s: float, finetune_step_s: float) -> float:
    """Training hours of the seed's Table 1 grid from step times (validation and data excluded): 3
    systems x 3 seeds; per seed 2 pre-trainings (the baseline's; System 1 and 2 share theirs) of 100
    epochs at batch 32 on Clotho-Moment (32,694 queries) and 3 fine-tunings of 200 epochs at batch
    16 on CASTELLA (2,182 queries). The CASTELLA step is timed at batch 32: an upper bound."""
    pre = 2 * 3 * 100 * math.ceil(32_694 / 32) * pretrain_step_s
    fine = 3 * 3 * 200 * math.ceil(2_182 / 16) * finetune_step_s
    return (pre + fine) / 3600


def _table1(res: dict, device: str, precisions: list[str]) -> dict[str, float]:
    out = {}
    for precision in precisions:
        for suffix in ("", "-enumerate"):
            cm, cas = (res[step_key(device, precision, s) + suffix]["median_s"] for s in SHAPES)
            out[f"{precision}{suffix or '-scipy'}"] = hours = table1_hours(cm, cas)
            print(f"Table 1 grid estimate, {device} {precision}, matcher {suffix[1:] or 'scipy'}: {hours:.1f} h")
    return out


def main(argv: list[str] | None = None) -> dict:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", action="append", choices=["cpu", "cuda"], help="default: cpu, and cuda if present")
    args = ap.parse_args(argv)
    tune_allocator()  # as amr-train does; the official code, measured in this process, gets it too
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    src = os.environ.get("AMR_OFFICIAL_SRC")
    res: dict = {}
    rows = []
    peak = {}
    for device in devices:
        peak[device] = (
            matmul_peak_gflops("cpu") if device == "cpu" else matmul_peak_gflops(device, torch.bfloat16, n=8192)
        )
        precisions = ["32-true"] if device == "cpu" else ["32-true", "bf16-mixed", "16-mixed"]
        for precision in precisions:
            for shape in SHAPES:
                key = step_key(device, precision, shape)
                r = bench_step(device, precision, shape, steps=8 if device == "cpu" else 30)
                r["share_of_matmul_peak"] = r["gflops_per_s"] / peak[device]
                res[key] = r
                rows.append(
                    [
                        key,
                        f"{r['median_s']:.4f}",
                        f"{r['flops'] / 1e9:.1f}",
                        f"{r['gflops_per_s']:.1f}",
                        f"{100 * r['share_of_matmul_peak']:.0f}%",
                    ]
                )
        for network in NETWORKS[1:]:  # the other networks' steps at full precision
            for shape in SHAPES:
                key = f"{step_key(device, '32-true', shape)}-{network}"
                r = res[key] = bench_step(device, "32-true", shape, steps=8 if device == "cpu" else 30, network=network)
                rows.append([key, f"{r['median_s']:.4f}", f"{r['flops'] / 1e9:.1f}", f"{r['gflops_per_s']:.1f}", ""])
        if device == "cuda":  # the exact on-device matcher in the step
            for precision in precisions:
                for shape in SHAPES:
                    key = step_key(device, precision, shape) + "-enumerate"
                    r = res[key] = bench_step(device, precision, shape, steps=30, matcher="enumerate")
                    rows.append(
                        [key, f"{r['median_s']:.4f}", f"{r['flops'] / 1e9:.1f}", f"{r['gflops_per_s']:.1f}", ""]
                    )
            res["table1_hours"] = _table1(res, device, precisions)
        for solver, t in bench_matching(device).items():
            res[f"{device}-matching-{solver}-b32"] = {"median_s": t}
            rows.append([f"{device} matching only, {solver}, batch 32 x 1-5 windows", f"{t:.4f}", "", "", ""])
        if src:
            _beside_official(src, device, res, rows)
    res["peak_rss_mb"] = peak_rss_mb()
    if "cuda" in devices:
        res["cuda_device"] = torch.cuda.get_device_name()
        res["cuda_peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("matmul peak (2048^2): " + ", ".join(f"{d} {p:.1f} GFLOP/s" for d, p in peak.items()))
    print(table(rows, ["step", "median s", "GFLOP", "GFLOP/s", "of peak"]))
    update_report("train_step", res)
    update_report("machine", {"matmul_peak_gflops": peak})
    return res


if __name__ == "__main__":
    main()
