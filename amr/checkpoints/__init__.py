"""Every checkpoint amr reads or writes, in one place.

These kinds come in:

- **amr checkpoints**, in Lightning's format: ``state_dict`` (the training module's keys:
  ``model.*`` for the network, ``criterion.*`` for its buffers) and ``hyper_parameters``
  (``model``, its ``name`` the network, ``loss``, ``optim``). Training writes them (``best.ckpt`` holds weights only,
  ``last.ckpt`` adds the optimiser and loop state for resuming); ``amr export`` and
  ``amr convert-official`` write the weights-only form.
- **official baseline** ``.pth`` files: ``{"model": state_dict, ...}`` or a bare state dict.
- **MS-CLAP 2023** weights: the same two layouts, keys possibly prefixed by ``module.``.
- **lighthouse** checkpoints (Moment-DETR, CG-DETR): :mod:`amr.checkpoints.lighthouse`.

Everything is read with ``torch.load(weights_only=True)``: a file that needs more than tensors
and plain containers to unpickle is refused, never executed. Every load is strict: the missing,
unexpected and mis-shaped keys are named in one line.
"""

from __future__ import annotations

import importlib.metadata
import pickle
import pickletools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from amr.data.features import Encoder
from amr.errors import InputError, os_error_behind
from amr.io import atomic_open
from amr.model import QDDETR, QDDETRConfig, build
from amr.model.registry import DEFAULT as DEFAULT_MODEL

STATE = "state_dict"
HPARAMS = "hyper_parameters"


def read(path: str | Path, allow: Sequence[tuple[type, str]] = ()) -> Any:
    """The unpickled object of a checkpoint file, tensors on the CPU; code inside is refused.
    ``allow``: (stand-in class, the class name the file gives) pairs torch's weights-only
    unpickler may build beside tensors and plain containers."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # a zip (torch.save) or a pickle
        raise InputError("not a checkpoint: not a file torch.save writes", path)
    if not head.startswith(b"PK") and not _legacy_torch(path):
        raise InputError(f"not a checkpoint: a plain pickle that {_pickle_names(path)}; amr never unpickles one", path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allow)):
            warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols says nothing about the file
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(e))
        what = f"it names {found.group(1)}" if found else "it holds objects that are not weights"
        raise InputError(f"refused to load: {what}, and unpickling it could run code", path) from None
    except Exception as e:  # truncated, not a torch file, ...
        raise InputError(f"unreadable checkpoint ({type(e).__name__})", path) from None


_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _legacy_torch(path: Path) -> bool:
    """Whether a pickle file opens as torch.save's legacy (pre-zip) format: its magic number first."""
    with path.open("rb") as f:
        return f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


def _pickle_names(path: Path) -> str:
    """What a pickle would import when unpickled, read from its opcodes without running any."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with path.open("rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
    except Exception:
        return "cannot be read to its end"
    if not names:
        return "holds plain data only"
    return "names " + ", ".join(dict.fromkeys(names))


def state_dict(obj: Any, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a bare state dict or of ``{"model": state_dict, ...}``, ``module.`` prefixes
    (from data-parallel training) removed."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"not a {what} checkpoint (expected a state dict, or a dict with key 'model')", path)
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    path: str | Path,
    what: str,
    ignore: re.Pattern[str] | None = None,
) -> list[str]:
    """Load every weight of ``module`` from ``state`` or fail naming the missing, unexpected and
    mis-shaped keys. Unexpected keys matching ``ignore`` (derived buffers that other library
    versions save) are skipped and returned."""
    own = module.state_dict()
    unexpected = [k for k in state if k not in own]
    ignored = [k for k in unexpected if ignore is not None and ignore.search(k)]
    problems = {
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in unexpected if k not in ignored],
        "shape mismatch": [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ],
    }
    parts = [f"{len(keys)} {name} (first: {', '.join(keys[:3])})" for name, keys in problems.items() if keys]
    if parts:
        raise InputError(f"weights do not fit {what}: " + "; ".join(parts), path)
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return ignored


def read_amr(path: str | Path) -> dict[str, Any]:
    """An amr checkpoint's dict; an official ``.pth`` gets a hint to convert it first."""
    ckpt = read(path)
    if not isinstance(ckpt, dict) or STATE not in ckpt or HPARAMS not in ckpt:
        model = ckpt.get("model") if isinstance(ckpt, dict) else None
        official = isinstance(model, dict) and "saliency_proj1.weight" in model
        hint = " (an official QD-DETR checkpoint: run `amr convert-official` first)" if official else ""
        raise InputError(f"not an amr checkpoint: no '{STATE}'/'{HPARAMS}'{hint}", path)
    return ckpt


@dataclass(frozen=True)
class Checkpoint:
    """An amr checkpoint, read once: its weights, the config it was trained with, the feature set it
    was trained on and the decoder it was validated with."""

    path: Path
    state: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> Checkpoint:
        ckpt = read_amr(path)
        return cls(Path(path), ckpt[STATE], ckpt[HPARAMS])

    def model(self, encoder: Encoder | None = None) -> nn.Module:
        """The network built from the stored config (the network it names), in eval mode;
        ``encoder``: whose features it will be given (refused before any data is read when it was
        trained on other features)."""
        try:
            model, cfg = build(self.model_settings)
        except (TypeError, ValueError, KeyError) as e:
            raise InputError(f"checkpoint holds an unknown model config ({e})", self.path) from None
        if encoder is not None:
            self.check_encoder(cfg, encoder)
        state = {k.removeprefix("model."): v for k, v in self.state.items() if not k.startswith("criterion.")}
        load_strict(model, state, self.path, "the checkpoint's model config")
        return model.eval()

    def check_encoder(self, cfg: Any, encoder: Encoder) -> None:
        """One line when the network's widths or the encoder it was trained on differ from ``encoder``."""
        if (cfg.aud_dim, cfg.txt_dim) != (encoder.audio_dim, encoder.text_dim):
            raise InputError(
                f"the model expects {cfg.aud_dim}-d audio and {cfg.txt_dim}-d text features; "
                f"{encoder.name} features are {encoder.audio_dim}-d audio and {encoder.text_dim}-d text",
                self.path,
            )
        if self.encoder.name != encoder.name:
            raise InputError(
                f"trained on {self.encoder.name} features, given {encoder.name} features "
                f"(features={self.encoder.name} reads the ones it was trained on)",
                self.path,
            )

    def check_network(self, name: str, how: str) -> None:
        """One line when the checkpoint holds another network than ``name`` (``how``: what gave it)."""
        own = self.model_settings["name"]
        if own != name:
            raise InputError(
                f"{how}: a {own} checkpoint, and this run trains {name} (model={own} trains its network)", self.path
            )

    @property
    def model_settings(self) -> dict[str, Any]:
        """The network's settings, ``name`` included (QD-DETR for checkpoints that predate the
        record: amr trained no other network then)."""
        return {"name": DEFAULT_MODEL, **self.hyper_parameters["model"]}

    @property
    def encoder(self) -> Encoder:
        """The encoder whose features it was trained on (MS-CLAP 2023 for checkpoints that predate
        the record: amr read no other features then)."""
        return Encoder.of((self.features or {}).get("encoder"))

    @property
    def features(self) -> dict[str, Any] | None:
        """The feature set it was trained on (``name``, ``feat_dir``, ``encoder``; None: older checkpoints)."""
        features = self.hyper_parameters.get("features")
        return dict(features) if features else None

    @property
    def decode(self) -> dict[str, Any] | None:
        """The ``decode`` settings it was validated with (None: older checkpoints, the official decoding)."""
        decode = self.hyper_parameters.get("decode")
        return dict(decode) if decode else None


def load_model(path: str | Path, encoder: Encoder | None = None) -> nn.Module:
    """The network of an amr checkpoint (:meth:`Checkpoint.model`)."""
    return Checkpoint.read(path).model(encoder)


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Initialise a training module from an amr checkpoint's weights (no optimiser, no epoch)."""
    load_strict(module, read_amr(path)[STATE], path, "this run's model config")


def load_official(source: str | Path | dict[str, Any], t2v_mask: str = "official", **config: Any) -> QDDETR:
    """The baseline network with official weights (an official ``.pth`` or a state dict), eval mode.

    ``t2v_mask="official"`` reproduces the official batched outputs bit for bit; ``per_sample``
    makes each sample's output independent of its batch.
    """
    where = source if isinstance(source, (str, Path)) else "<state dict>"
    obj = read(source) if isinstance(source, (str, Path)) else source
    model = QDDETR(QDDETRConfig(t2v_mask=t2v_mask, **config))
    load_strict(model, state_dict(obj, where, "QD-DETR"), where, "the baseline network")
    return model.eval()


def read_clap_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The MS-CLAP 2023 state dict of a weights file."""
    return state_dict(read(path), path, "MS-CLAP")


def write_weights(path: str | Path, state: dict[str, torch.Tensor], hyper_parameters: dict[str, Any]) -> Path:
    """A weights-only amr checkpoint (atomic; never over an existing file). Lightning, ``init_from``,
    ``amr predict`` and ``amr submit`` all read it."""
    path = Path(path)
    if path.exists():
        raise InputError("output exists; refusing to overwrite", path)
    obj = {
        STATE: {k: v.detach().cpu() for k, v in state.items()},
        HPARAMS: hyper_parameters,
        "pytorch-lightning_version": importlib.metadata.version("pytorch-lightning"),
    }
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, through :func:`amr.io.atomic_open` (temporary file in the same
    folder, fsync, rename): a full disk or a kill mid-write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        try:
            with atomic_open(path, "wb") as f:
                torch.save(checkpoint, f)
        except Exception as e:
            if (cause := os_error_behind(e)) is None:
                raise
            kept = "the previous one is kept; resume with ckpt_path=last" if Path(path).is_file() else "nothing kept"
            message = f"{cause.strerror or type(cause).__name__} while saving this checkpoint ({kept})"
            raise OSError(cause.errno, message, str(path)) from e


def export(src: str | Path, out: str | Path) -> Path:
    """The weights and config of a training checkpoint (``last.ckpt`` included), without optimiser,
    scheduler, loop or callback state: for sharing, and about a third of the size."""
    ckpt = Checkpoint.read(src)
    ckpt.model()  # refuse weights that do not fit their own config before writing anything
    return write_weights(out, ckpt.state, ckpt.hyper_parameters)


def adopt(last: str | Path, folder: str | Path, ckpt: dict[str, Any] | None = None) -> Path:
    """Resume another folder's run in ``folder``: its ``last.ckpt`` (with the checkpoint callbacks'
    paths moved to ``folder``) and the best checkpoint it names, copied into ``folder``, so that the
    resumed run selects its best epoch as the uninterrupted run would and the source folder is
    only read. ``ckpt``: its contents when already read. Returns the copied ``last.ckpt``."""
    last, folder = Path(last), Path(folder)
    ckpt = read(last) if ckpt is None else ckpt
    src, dst = str(last.parent), str(folder)
    moved: dict[str, Path] = {}

    def move(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(src + "/"):
            moved[value] = Path(dst + value[len(src) :])
            return str(moved[value])
        if isinstance(value, str) and value == src:
            return dst
        if isinstance(value, dict):
            return {move(k): move(v) for k, v in value.items()}
        return value

    ckpt["callbacks"] = {k: move(v) for k, v in ckpt.get("callbacks", {}).items()}
    folder.mkdir(parents=True, exist_ok=True)
    for old, new in moved.items():
        if Path(old).is_file() and Path(old).name != last.name:
            with atomic_open(new, "wb") as f:
                f.write(Path(old).read_bytes())
    with atomic_open(folder / last.name, "wb") as f:
        torch.save(ckpt, f)
    return folder / last.name
