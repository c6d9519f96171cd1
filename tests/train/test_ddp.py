"""Training under torch.distributed (DDP, gloo on CPU) with 2 processes: ranks stay in step, each rank
simulates its own batches, only rank 0 writes the bundle (issue 12)."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp


def _tiny_task():
    from napari_deeptrack.sim import DiskMask, Fluorescence, Particles, Pipeline, PointParticle
    from napari_deeptrack.tasks.base import Task

    pipe = Pipeline(
        image_shape=(32, 32),
        particles=[Particles(PointParticle(), count=2, intensity=400.0)],
        optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
        targets={"t": DiskMask(radius_px=3)},
    )
    return Task(name="ddp", kind="detection", description="test", pipeline=pipe, target="t",
                model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 4},
                loss={"type": "bce"}, postprocess={"activation": "sigmoid", "threshold": 0.5},
                training={"validation_size": 4, "batch_size": 2, "steps_per_epoch": 3,
                          "epochs": 1})  # fmt: skip


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    from napari_deeptrack.train.distributed import train_task_ddp

    res = train_task_ddp(_tiny_task(), os.path.join(folder, "bundle"), device="cpu", seed=3)
    sd = {k: v.numpy() for k, v in res.model.state_dict().items()}
    np.savez(os.path.join(folder, f"rank{rank}.npz"), **sd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_train_one_model_and_rank0_writes_the_bundle(tmp_path):
    from napari_deeptrack.io.bundle import load_bundle

    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert sorted(r0.files) == sorted(r1.files) and not any(k.startswith("module.") for k in r0.files)
    # each rank trains on its own simulated batches, yet the gradients are averaged over the ranks at
    # every step: the two replicas end bit-identical
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k])
    bundle = load_bundle(tmp_path / "bundle")  # written once, by rank 0, loadable without the wrapper
    for k, v in bundle.model.state_dict().items():
        np.testing.assert_allclose(v.numpy(), r0[k], rtol=1e-6, atol=1e-7)
