"""Training under torch.distributed (DDP, gloo on CPU) with 2 processes: ranks stay in step, each rank
simulates its own batches, only rank 0 writes the bundle (issue 12)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

_RANK_SCRIPT = """
import os
import numpy as np
import torch
from napari_deeptrack.sim import DiskMask, Fluorescence, Particles, Pipeline, PointParticle
from napari_deeptrack.tasks.base import Task
from napari_deeptrack.train.distributed import distributed_rank, train_task_ddp

torch.set_num_threads(1)
pipe = Pipeline(
    image_shape=(32, 32),
    particles=[Particles(PointParticle(), count=2, intensity=400.0)],
    optics=Fluorescence(NA=1.2, wavelength_um=0.6, pixel_size_um=0.1),
    targets={"t": DiskMask(radius_px=3)},
)
task = Task(name="ddp", kind="detection", description="test", pipeline=pipe, target="t",
            model={"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 4},
            loss={"type": "bce"}, postprocess={"activation": "sigmoid", "threshold": 0.5},
            training={"validation_size": 4, "batch_size": 2, "steps_per_epoch": 3, "epochs": 1})
folder = os.environ["DDP_TEST_FOLDER"]
res = train_task_ddp(task, os.path.join(folder, "bundle"), device="cpu", seed=3)
sd = {k: v.numpy() for k, v in res.model.state_dict().items()}
np.savez(os.path.join(folder, f"rank{distributed_rank()}.npz"), **sd)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_train_one_model_and_rank0_writes_the_bundle(tmp_path):
    from napari_deeptrack.io.bundle import load_bundle

    # launched the way a user launches it: torchrun runs the script once per rank (no pickling of
    # test code into the children, which cannot import the tests package)
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = dict(os.environ, DDP_TEST_FOLDER=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
         "127.0.0.1", "--master_port", str(_free_port()), str(script)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert sorted(r0.files) == sorted(r1.files) and not any(k.startswith("module.") for k in r0.files)
    # each rank trains on its own simulated batches, yet the gradients are averaged over the ranks at
    # every step: the two replicas end bit-identical
    for k in r0.files:
        np.testing.assert_array_equal(r0[k], r1[k])
    bundle = load_bundle(tmp_path / "bundle")  # written once, by rank 0, loadable without the wrapper
    for k, v in bundle.model.state_dict().items():
        np.testing.assert_allclose(v.numpy(), r0[k], rtol=1e-6, atol=1e-7)
