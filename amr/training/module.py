"""LightningModule: the official network, criterion, optimiser and evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from amr.inference.batch import predict_batch
from amr.inference.calibration import Calibrator
from amr.inference.decoders import DecodeConfig
from amr.metrics.retrieval import MONITOR, length_buckets, logged_names
from amr.metrics.torchmetric import MomentRetrievalMetric
from amr.model import build, criterion, network_inputs


def adamw(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, fused: bool = True
) -> torch.optim.AdamW:
    """The official AdamW, with torch's fused kernel (same update, one pass) where it exists and
    ``fused`` allows it. Mixed precision must pass ``fused=False``: Lightning refuses gradient
    clipping with a fused optimizer under its AMP plugins (bf16-mixed included)."""
    params = list(params)
    fused = fused and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params
    )
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


FULL_PRECISION = {"32-true", "32", "64-true", "64"}
LOSS_TERMS = ("loss_span", "loss_giou", "loss_label", "loss_saliency")  # logged per epoch beside the total


def final_terms(losses: dict[str, torch.Tensor]) -> list[str]:
    """The loss terms of the final decoder layer (every network's four, then its own, e.g. CG-DETR's
    alignment, distillation and orthogonality)."""
    own = [k for k in losses if k.startswith("loss_") and k not in LOSS_TERMS and not k.rsplit("_", 1)[-1].isdigit()]
    return [*LOSS_TERMS, *sorted(own)]


def optimisers(params: Iterable[torch.nn.Parameter], optim: dict[str, Any], precision: Any) -> dict[str, Any]:
    """The official optimiser set-up: AdamW (fused in full precision, see :func:`adamw`) and StepLR
    stepped once per epoch; with the official lr_drop 400 > epochs the rate stays constant."""
    opt = adamw(params, lr=optim["lr"], weight_decay=optim["weight_decay"], fused=str(precision) in FULL_PRECISION)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=optim["lr_drop"], gamma=optim.get("lr_gamma", 0.1))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def role_metric(dm: Any, role: str, device: torch.device) -> MomentRetrievalMetric:
    """The official metrics of a datamodule's split (and its GT-length buckets), on ``device``."""
    edges = dm.length_bucket_edges
    qids, windows = dm.ground_truth(role)
    return MomentRetrievalMetric(qids, windows, buckets=length_buckets(edges) if edges else None).to(device)


class MomentRetrievalModule(pl.LightningModule):
    """Trains QD-DETR with the official recipe: AdamW on all parameters, StepLR per epoch; gradient
    clipping (0.1) is the Trainer's. Validation and test use the official post-processing and
    metrics; ``predictions[role]`` keeps the last epoch's prediction lines."""

    def __init__(
        self,
        model: dict[str, Any],
        loss: dict[str, Any],
        optim: dict[str, Any],
        decode: dict[str, Any] | None = None,
        features: dict[str, Any] | None = None,
    ) -> None:
        """``features``: the feature set trained on (``name``, ``feat_dir``), kept in checkpoints."""
        super().__init__()
        self.save_hyperparameters()
        self.decode = DecodeConfig(**(decode or {}))  # how validation and test form moments
        self.calibrator: Calibrator | None = None  # re-scores validation and test moments when set
        self.model = build(model)[0]  # the network ``model["name"]`` names (QD-DETR without one)
        self.criterion = criterion(model, loss)
        self.metrics: dict[str, MomentRetrievalMetric] = {}
        self.predictions: dict[str, list[dict[str, Any]]] = {}
        self.results: dict[str, dict[str, Any]] = {}

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The network's outputs on a collated batch, in the input layout it declares."""
        return self.model(**network_inputs(self.model, batch))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        losses = self.criterion(out, batch["targets"])
        total = self.criterion.total(losses)
        bs = len(batch["index"])
        self.log("train/loss", total, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        for k in final_terms(losses):
            self.log(f"train/{k}", losses[k], on_step=False, on_epoch=True, batch_size=bs)
        return total

    def _metric(self, role: str) -> MomentRetrievalMetric:
        metric = role_metric(self.trainer.datamodule, role, self.device)  # type: ignore[attr-defined]
        self.metrics[role] = metric
        self.predictions[role] = []
        return metric

    def on_validation_epoch_start(self) -> None:
        self._metric("val")

    def on_test_epoch_start(self) -> None:
        self._metric("test")

    def _eval_step(self, role: str, batch: dict[str, Any]) -> None:
        pred = predict_batch(self.model, batch, decode=self.decode, calibrator=self.calibrator)
        if "targets" in batch:
            losses = self.criterion(pred.outputs, batch["targets"])
            self.log(
                f"{role}/loss",
                self.criterion.total(losses),
                on_epoch=True,
                batch_size=len(batch["index"]),
                sync_dist=True,
            )
        self.metrics[role].update(batch["index"].to(self.device), pred.rows(self.device))
        self.predictions[role].extend(pred.lines)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _eval_end(self, role: str) -> None:
        result = self.metrics[role].compute()
        if self.trainer.world_size > 1:  # every rank saw part of the queries: gather the lines
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, self.predictions[role])
            seen: dict[str, dict[str, Any]] = {}
            for lines in gathered:
                for line in lines:
                    seen.setdefault(line["qid"], line)
            self.predictions[role] = list(seen.values())
        self.results[role] = result
        if self.trainer.state.fn == TrainerFn.VALIDATING:
            return  # the best checkpoint's validation after fitting: written to files, not logged per epoch
        for name, value in logged_names(result["brief"]).items():  # and per GT-length bucket
            self.log(f"{role}/{name}", value, prog_bar=name in (MONITOR, "mAP"))

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self) -> Any:
        return optimisers(self.parameters(), self.hparams["optim"], self.trainer.precision)
