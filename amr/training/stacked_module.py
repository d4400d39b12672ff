"""Several runs of one system trained as one stacked model (``stacked_runs=N``).

Member m is the run of seed ``seed + m``: its own initial weights, data order and per-epoch draws
(its own datamodule), dropout stream (:func:`amr.model.dropout.member_streams`, seeded per step
as a run alone seeds it), optimiser state (AdamW is elementwise, so one AdamW over the stacked
parameters is N AdamWs), gradient clipping (per member, below), best checkpoint and metrics. The
network runs once per step for all members: ``torch.func.vmap`` over the parameters stacked by
``torch.func.stack_module_state``, on the members' batches stacked along a new first axis (so
every batch of a split must have one shape: ``fixed_shapes=true``). The criterion runs per member.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from amr.checkpoints import write_weights
from amr.inference.batch import predict_batch
from amr.metrics.retrieval import MONITOR_LOGGED, logged_names
from amr.metrics.torchmetric import MomentRetrievalMetric
from amr.model.dropout import member_streams
from amr.runtime import step_seed
from amr.training.module import LOSS_TERMS, MomentRetrievalModule, optimisers, role_metric

TRAIN_TERMS = ("loss", *LOSS_TERMS)  # logged per epoch, as a run alone logs them


class _Samplers:
    """The members' samplers behind one ``set_epoch`` (how Lightning tells a loader the epoch)."""

    def __init__(self, samplers: Sequence[Any]) -> None:
        self.samplers = list(samplers)

    def set_epoch(self, epoch: int) -> None:
        for s in self.samplers:
            s.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.samplers[0])


class ZipLoader:
    """Step i yields ``[member 0's batch i, ..., member N-1's batch i]``."""

    def __init__(self, loaders: Sequence[Any]) -> None:
        self.loaders = list(loaders)
        self.sampler = _Samplers([lo.sampler for lo in self.loaders])
        self.batch_sampler = None  # read by Lightning, as for a DataLoader

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        return (list(batches) for batches in zip(*self.loaders, strict=True))


def stack_inputs(batches: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
    """The members' network inputs as (N, B, ...) tensors; they must share one shape."""
    first = batches[0]["inputs"]
    for b in batches[1:]:
        for k, v in b["inputs"].items():
            if v.shape != first[k].shape:
                raise ValueError(
                    f"stacked members' batches differ in shape ({k}: {tuple(first[k].shape)} vs {tuple(v.shape)}); "
                    "stacked runs need fixed_shapes=true"
                )
    return {k: torch.stack([b["inputs"][k] for b in batches]) for k in first}


def member_outputs(out: Any, m: int) -> Any:
    """Member m's slice of vmapped outputs (tensors, lists and dicts of them)."""
    if isinstance(out, Tensor):
        return out[m]
    if isinstance(out, dict):
        return {k: member_outputs(v, m) for k, v in out.items()}
    return [member_outputs(v, m) for v in out]


def clip_per_member(params: Sequence[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` applied to each member's slice of the stacked gradients
    on its own (one norm per member over all its parameters). Returns the (N,) norms before."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (P, N)
    total = torch.linalg.vector_norm(norms, dim=0)  # (N,)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))
    return total


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot hold dots


class StackedModule(pl.LightningModule):
    """N :class:`MomentRetrievalModule` members trained as one. ``on_best(m, epoch)`` is called
    when member m's validation ``monitor`` improves (strictly, as the single run's checkpoint callback saves);
    ``on_log(m, values)`` with its epoch's train loss and its validation figures."""

    def __init__(
        self,
        members: Sequence[MomentRetrievalModule],
        seeds: Sequence[int],
        on_best: Callable[[int, int], None],
        on_log: Callable[[int, dict[str, float]], None],
        monitor: str = MONITOR_LOGGED,
    ) -> None:
        super().__init__()
        self.members = list(members)  # not submodules: their weights live in `stacked`
        self.seeds = list(seeds)
        self.on_best, self.on_log, self.monitor = on_best, on_log, monitor
        params, buffers = stack_module_state([m.model for m in members])  # type: ignore[arg-type]
        self.stacked = nn.ParameterDict({_key(k): nn.Parameter(v) for k, v in params.items()})
        self.names = list(params)
        for k, v in buffers.items():
            self.register_buffer(_key(k), v)
        self.buffer_names = list(buffers)
        self._base = [copy.deepcopy(members[0].model).to("meta")]  # the structure vmap calls
        self.criterion = members[0].criterion
        self.best: list[float] = [float("-inf")] * len(members)
        self.train_loss: list[list[Tensor]] = [[] for _ in members]
        self.item_counts: list[list[int]] = [[] for _ in members]
        self.history: list[list[tuple[int, dict[str, float]]]] = [[] for _ in members]  # (step, values)
        self.metrics: list[MomentRetrievalMetric] = []

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:
            raise ValueError("stacked_runs trains in one process on one device (set trainer.devices=1)")

    def _state(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        params = {k: self.stacked[_key(k)] for k in self.names}
        buffers = {k: getattr(self, _key(k)) for k in self.buffer_names}
        return params, buffers

    def stacked_forward(self, inputs: dict[str, Tensor], generators: list[torch.Generator]) -> dict[str, Any]:
        """inputs: (N, B, ...) -> the network's outputs with a leading member axis."""
        base = self._base[0]
        base.train(self.training)

        def one(params: dict[str, Tensor], buffers: dict[str, Tensor], x: dict[str, Tensor]) -> dict[str, Any]:
            return functional_call(base, (params, buffers), (), x)

        with member_streams(generators):
            return vmap(one)(*self._state(), inputs)

    def training_step(self, batches: list[dict[str, Any]], batch_idx: int) -> Tensor:
        gens = [
            torch.Generator(device=self.device).manual_seed(step_seed(s, self.current_epoch, batch_idx))
            for s in self.seeds
        ]
        out = self.stacked_forward(stack_inputs(batches), gens)
        totals = []
        for m, batch in enumerate(batches):
            losses = self.criterion(member_outputs(out, m), batch["targets"])
            totals.append(self.criterion.total(losses))
            terms = torch.stack([totals[-1], *(losses[k] for k in TRAIN_TERMS[1:])]).detach()
            self.train_loss[m].append(terms * len(batch["index"]))
            self.item_counts[m].append(len(batch["index"]))
        total = torch.stack(totals).sum()
        bs = len(batches[0]["index"])
        self.log("train/loss", total / len(batches), prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        return total

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        if gradient_clip_val:
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError("stacked runs clip gradients by norm only (gradient_clip_algorithm=norm)")
            clip_per_member(list(self.stacked.values()), float(gradient_clip_val))

    def configure_optimizers(self) -> Any:
        return optimisers(self.stacked.values(), self.members[0].hparams["optim"], self.trainer.precision)

    @torch.no_grad()
    def sync_members(self) -> None:
        """Copy each member's slice of the stacked weights into its own module."""
        for m, member in enumerate(self.members):
            member.to(self.device)
            state = dict(member.model.named_parameters())
            for k in self.names:
                state[k].copy_(self.stacked[_key(k)][m])

    def on_validation_epoch_start(self) -> None:
        self.sync_members()
        dm = self.trainer.datamodule  # type: ignore[attr-defined]
        self.metrics = [role_metric(dm, "val", self.device) for _ in self.members]
        self.val_loss: list[Tensor | float] = [0.0] * len(self.members)
        self.val_items = [0] * len(self.members)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for m, (member, metric) in enumerate(zip(self.members, self.metrics, strict=True)):
            member.model.eval()
            pred = predict_batch(member.model, batch, decode=member.decode)
            metric.update(batch["index"].to(self.device), pred.rows(self.device))
            if "targets" in batch:
                total = self.criterion.total(self.criterion(pred.outputs, batch["targets"]))
                self.val_loss[m] += total.detach() * len(batch["index"])
                self.val_items[m] += len(batch["index"])

    def on_validation_epoch_end(self) -> None:
        sanity = self.trainer.sanity_checking
        for m, metric in enumerate(self.metrics):
            values = {f"val/{k}": float(v) for k, v in logged_names(metric.compute()["brief"]).items()}
            if self.val_items[m]:
                values["val/loss"] = float(self.val_loss[m]) / self.val_items[m]
            if sanity:
                continue
            self._log_member(m, values)
            # compared in float32, as the single run's checkpoint callback compares the logged value
            score = float(torch.tensor(values[self.monitor], dtype=torch.float32))
            if score > self.best[m]:
                self.best[m] = score
                self.on_best(m, self.current_epoch)

    def on_train_epoch_end(self) -> None:
        for m, losses in enumerate(self.train_loss):  # the epoch mean over items, as Lightning's
            if losses:  # (loss, its terms) summed over items, then divided by the items
                mean = (torch.stack(losses).sum(0) / sum(self.item_counts[m])).tolist()
                self._log_member(m, {f"train/{k}": v for k, v in zip(TRAIN_TERMS, mean, strict=True)})
        self.train_loss = [[] for _ in self.members]
        self.item_counts = [[] for _ in self.members]

    def _log_member(self, m: int, values: dict[str, float]) -> None:
        values = {**values, "epoch": self.current_epoch}  # as Lightning adds it to logged rows
        self.history[m].append((max(self.global_step - 1, 0), values))  # the step Lightning's rows carry
        self.on_log(m, values)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stacked"] = {"best": list(self.best), "history": self.history}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("stacked", {})
        self.best = list(state.get("best", self.best))
        self.history = state.get("history", self.history)


class StackedDataModule(pl.LightningDataModule):
    """The members' datamodules as one: zipped training batches; validation is member 0's (the
    validation batches hold no random draw, so they are every member's)."""

    def __init__(self, members: Sequence[Any]) -> None:
        super().__init__()
        self.members = list(members)
        self.length_bucket_edges = self.members[0].length_bucket_edges

    def setup(self, stage: str | None = None) -> None:
        for dm in self.members:
            dm.trainer = self.trainer
            dm.load()

    def train_dataloader(self) -> ZipLoader:
        return ZipLoader([dm.train_dataloader() for dm in self.members])

    def val_dataloader(self) -> Any:
        return self.members[0].val_dataloader()

    def ground_truth(self, role: str) -> tuple[list[str], list[list[list[float]]]]:
        return self.members[0].ground_truth(role)


def write_member_weights(member: MomentRetrievalModule, path: Path) -> Path:
    """Member weights as an ordinary run's weights-only checkpoint, replacing the one at ``path``
    (written beside it first, then renamed over it)."""
    nxt = path.with_name(path.stem + ".next.ckpt")
    nxt.unlink(missing_ok=True)  # a left-over of a killed write
    write_weights(nxt, member.state_dict(), dict(member.hparams))
    os.replace(nxt, path)
    return path
