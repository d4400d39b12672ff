"""Stacked runs and compiled steps: the training step of N stacked members (``stacked_runs=N``:
one vmapped forward, per-member losses, one backward, per-member clipping, one AdamW) beside N
steps of one run, and (on CUDA) the one-run step with the network compiled, with and without
CUDA graphs (``compile=default`` / ``compile=reduce-overhead``). Batch 32, loss.matcher=enumerate
(nothing read back in the step), median after warm-up.

    python -m benchmarks.bench_stacked [--device cuda] [--members 1 2 4 8] [--shape castella] [--compile]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from amr.runtime import tune_allocator
from amr.training.module import FULL_PRECISION, MomentRetrievalModule, adamw
from amr.training.stacked_module import StackedModule, clip_per_member, member_outputs
from benchmarks.bench_train import SHAPES, autocast, make_batch, our_step, step_key, table1_hours
from benchmarks.common import median_time, table, update_report


def _members(n: int, device: str, matcher: str) -> list[MomentRetrievalModule]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(MomentRetrievalModule(model={}, loss={"matcher": matcher}, optim={}).to(device))
    return out


def stacked_step(device: str, precision: str, shape: str, n: int, batch: int = 32) -> Callable[[], None]:
    """One training step of n stacked members, each on its own copy of a batch."""
    members = _members(n, device, "enumerate")
    stacked = StackedModule(members, list(range(n)), on_best=lambda m, e: None, on_log=lambda m, v: None)
    stacked.to(device).train()
    opt = adamw(stacked.stacked.values(), lr=1e-4, weight_decay=1e-4, fused=precision in FULL_PRECISION)
    inputs, targets = make_batch(batch, SHAPES[shape], device)
    stacked_inputs = {k: v.expand(n, *v.shape).contiguous() for k, v in inputs.items()}
    cast = autocast(device, precision)
    crit = stacked.criterion.to(device)

    def step() -> None:
        gens = [torch.Generator(device=device).manual_seed(m) for m in range(n)]
        with cast():
            out = stacked.stacked_forward(stacked_inputs, gens)
            loss = torch.stack([crit.total(crit(member_outputs(out, m), targets)) for m in range(n)]).sum()
        loss.backward()
        clip_per_member(list(stacked.stacked.values()), 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def compiled_step(device: str, precision: str, shape: str, mode: str) -> Callable[[], None]:
    """The one-run step (bench_train's) with the network compiled in ``mode``."""
    step, _ = our_step(device, precision, shape, matcher="enumerate", compile_mode=mode)
    return step


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--members", type=int, nargs="+", default=None, help="default: 2 (cpu); 1 2 4 8 (cuda)")
    ap.add_argument("--shape", nargs="+", default=None, choices=list(SHAPES), help="default: clotho_moment (cpu); both")
    ap.add_argument("--precision", nargs="+", default=None, help="default: 32-true (cpu); 32-true bf16-mixed (cuda)")
    ap.add_argument("--compile", action="store_true", help="also the compiled one-run step (minutes on a CPU)")
    args = ap.parse_args(argv)
    tune_allocator()
    device = args.device
    precisions = args.precision or (["32-true"] if device == "cpu" else ["32-true", "bf16-mixed"])
    repeat = 5 if device == "cpu" else 30
    members = args.members or ([2] if device == "cpu" else [1, 2, 4, 8])
    shapes = args.shape or (["clotho_moment"] if device == "cpu" else list(SHAPES))
    res: dict = {}
    rows = []
    for precision in precisions:
        for shape in shapes:
            tag = step_key(device, precision, shape) + "-enumerate"
            one = median_time(our_step(device, precision, shape, matcher="enumerate")[0], repeat=repeat, warmup=2)
            res[tag] = {"median_s": one}
            rows.append([tag + ", one run", f"{one:.4f}", f"{one:.4f}", "1.00x"])
            for n in members:
                t = median_time(stacked_step(device, precision, shape, n), repeat=repeat, warmup=2)
                res[f"{tag}-stacked{n}"] = {"median_s": t, "per_run_s": t / n, "speedup_over_alone": n * one / t}
                rows.append([f"{tag}, {n} stacked", f"{t:.4f}", f"{t / n:.4f}", f"{n * one / t:.2f}x"])
            if args.compile:
                for mode in ("default", "reduce-overhead"):
                    t = median_time(compiled_step(device, precision, shape, mode), repeat=repeat, warmup=5)
                    res[f"{tag}-compile-{mode}"] = {"median_s": t, "speedup_over_eager": one / t}
                    rows.append([f"{tag}, compile={mode}", f"{t:.4f}", f"{t:.4f}", f"{one / t:.2f}x"])
    if set(shapes) == set(SHAPES):  # the seed's Table 1 grid at each stacking, from per-run step times
        for precision in precisions:
            tags = [step_key(device, precision, s) + "-enumerate" for s in SHAPES]
            for n in members:
                hours = table1_hours(*(res[f"{t}-stacked{n}"]["per_run_s"] for t in tags))
                res[f"table1_hours-{precision}-stacked{n}"] = hours
                print(f"Table 1 grid estimate, {device} {precision}, {n} stacked: {hours:.1f} h")
    print(table(rows, ["step", "median s", "s per run", "runs per s vs one run"]))
    if device == "cuda":
        res["cuda_device"] = torch.cuda.get_device_name()
    update_report("stacked_step", res)
    return res


if __name__ == "__main__":
    main()
