"""A training run's full state, saved after every epoch so that an interrupted run resumes exactly where it
was: model, best model so far, optimizer, scheduler, every RNG (python, numpy, torch, the loader's) and the
epoch bookkeeping. Tensors go to safetensors and the rest to JSON: nothing here is a pickle."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from reprotune.pipeline.atomic_io import atomic_output

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Everything besides tensors that an interrupted run needs to carry on exactly where it was."""

    fingerprint: str
    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -1.0  # the selection metric's (Schedule.metric)
    best_loss: float = (
        1e30  # breaks ties of the score, which a small validation set has often (no inf in JSON)
    )
    best_accuracy: float = -1.0  # the best epoch's, for the record
    history: list[dict] = field(default_factory=list)


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as safetensors-ready tensors plus JSON (no pickle anywhere)."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            elif value is not None:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save(
    path: Path,
    model: nn.Module,
    best_state: dict,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader_rng: torch.Generator,
    progress: Progress,
) -> None:
    optimizer_tensors, optimizer_meta = flatten_optimizer(optimizer.state_dict())
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()}
    tensors |= optimizer_tensors
    tensors |= {"rng.torch": torch.get_rng_state(), "rng.loader": loader_rng.get_state()}
    numpy_state = np.random.get_state()
    meta = {
        "progress": asdict(progress),
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict(),
        "rng.python": random.getstate(),
        "rng.numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    with atomic_output(path) as staging:
        staging.mkdir()
        save_file(tensors, staging / "state.safetensors")
        (staging / "state.json").write_text(json.dumps(meta), encoding="utf-8")


def load(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader_rng: torch.Generator,
    expected: str,
) -> tuple[Progress, dict] | None:
    """Restore a checkpoint made under fingerprint `expected` into the objects; return (progress,
    best_state), or None (nothing restored) when there is none or it was made under anything else."""
    if not (path / "state.json").is_file():
        return None
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    progress = Progress(**meta["progress"])
    if progress.fingerprint != expected:
        log.info("checkpoint in %s was made under other params or data: starting afresh", path)
        return None
    tensors = load_file(path / "state.safetensors")
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    best_state = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    loader_rng.set_state(tensors["rng.loader"])
    version, internal, gauss = meta["rng.python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = meta["rng.numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    log.info("resuming from %s after epoch %d", path, progress.epoch)
    return progress, best_state
