"""Training on several processes or devices with ``torch.distributed`` (DistributedDataParallel).

Run the ordinary command under ``torchrun``::

    torchrun --nproc_per_node 2 -m napari_deeptrack.cli train particles-2d --out bundle.zip

``torchrun`` sets ``RANK`` / ``WORLD_SIZE``; :func:`train_task_ddp` then joins the process group
(NCCL on GPUs, gloo on CPU), wraps the model in ``DistributedDataParallel`` (gradients averaged over
the ranks at every step, so the effective batch is ``WORLD_SIZE x batch_size``), lets every rank
simulate its own seeded training batches (seed derived from the rank) while all ranks share one
validation set, and lets only rank 0 write the bundle (once, at the end, with the best weights).
Everything else is :func:`~napari_deeptrack.train.api.train_task`. A time budget (``max_seconds``)
is refused: ranks that stop at different steps would wait for each other forever.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

__all__ = ["distributed_rank", "distributed_world_size", "train_task_ddp"]

#: Seed stream of the training batches of rank ``r`` (:func:`~.seeding.derive_seed`).
RANK_STREAM = 7100


def distributed_world_size() -> int:
    """Processes in the job (``WORLD_SIZE`` set by ``torchrun``; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def distributed_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


class _DDP(DistributedDataParallel):
    """DistributedDataParallel whose state dict is the wrapped model's (bundles and checkpoints
    hold the plain model's weights, loadable without the wrapper)."""

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        return self.module.load_state_dict(state_dict, strict=strict, **kwargs)


def train_task_ddp(task, out=None, **kwargs):
    """:func:`~napari_deeptrack.train.api.train_task` on every rank of a ``torchrun`` job (see the
    module docstring). Returns rank 0's result on rank 0 and the others' (with ``bundle_path`` set to
    what rank 0 wrote) elsewhere."""
    import torch.distributed as dist

    from ..nn import build_model
    from .api import train_task
    from .data import OnlineDataset, make_validation_set
    from .seeding import INIT_STREAM, derive_seed, resolve_device

    if kwargs.get("max_seconds") is not None:
        raise ValueError("--max-minutes cannot be used with torchrun: ranks must run the same steps")
    for name in ("model", "train_data", "validation", "init"):
        if kwargs.get(name) is not None:
            raise ValueError(f"distributed training builds its own {name}; do not pass {name}=")
    rank, world = distributed_rank(), distributed_world_size()
    device = resolve_device(kwargs.pop("device", "auto"))
    if str(device).startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    try:
        s = task.training_settings(
            epochs=kwargs.get("epochs"),
            steps_per_epoch=kwargs.get("steps_per_epoch"),
            batch_size=kwargs.get("batch_size"),
            seed=kwargs.get("seed"),
        )
        seed = int(s["seed"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, INIT_STREAM))
            model = build_model(task.model).to(device)
        ddp = _DDP(model, device_ids=[int(str(device).split(":")[1])] if ":" in str(device) else None)
        validation = make_validation_set(  # the same on every rank: the same checkpoint decisions
            task.pipeline, task.target, int(s["validation_size"]), seed, task.input_normalization
        )
        train_data = OnlineDataset(
            task.pipeline,
            task.target,
            batch_size=int(s["batch_size"]),
            steps_per_epoch=int(s["steps_per_epoch"]),
            epochs=int(s["epochs"]),
            seed=derive_seed(seed, RANK_STREAM + rank),
            normalization=task.input_normalization,
            replay_max_uses=int(s["replay_max_uses"]),
            replay_capacity=int(s["replay_capacity"]),
        )
        if rank != 0:
            kwargs["callbacks"] = []
        result = train_task(
            task, None, model=ddp, train_data=train_data, validation=validation, device=str(device), **kwargs
        )
        result.model = result.model.module  # the best weights, without the wrapper
        result.settings["world_size"] = world
        h = result.history
        if out is not None and rank == 0 and "best_epoch" in h:
            from ..io.bundle import save_bundle

            i = h["epoch"].index(h["best_epoch"])
            best = {k: v[i] for k, v in h.items() if isinstance(v, list) and len(v) == len(h["epoch"])}
            best.pop("epoch", None)
            save_bundle(out, result.model, task, h, seed=seed, training=result.settings, metrics=best)
        dist.barrier()  # the bundle is written before any rank returns
        if out is not None and "best_epoch" in h:
            result.bundle_path = Path(out)
        return result
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()
