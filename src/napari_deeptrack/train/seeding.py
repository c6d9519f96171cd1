"""Seeds, devices and deterministic mode.

Every random stream in training is derived from the user's seed with :func:`derive_seed`, which mixes
integer keys through :class:`numpy.random.SeedSequence` (well separated streams, no correlations
between neighbouring seeds). Training batch ``k`` uses ``derive_seed(seed, TRAIN_STREAM, k)``, the
validation set ``derive_seed(seed, VALIDATION_STREAM)``, so the validation images never coincide
with training images and the training data do not depend on the number of worker processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch

__all__ = [
    "TRAIN_STREAM",
    "VALIDATION_STREAM",
    "deterministic_mode",
    "derive_seed",
    "make_generator",
    "resolve_device",
]

TRAIN_STREAM = 0
VALIDATION_STREAM = 1
INIT_STREAM = 2


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from non-negative integer ``keys`` (e.g. ``(seed, stream, step)``)."""
    for k in keys:
        if int(k) < 0:
            raise ValueError(f"seed keys must be >= 0, got {keys}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; ``cpu`` / ``cuda`` / ``cuda:1`` / ``mps`` are checked.

    Raises
    ------
    ValueError
        A device that is not available here (the message says which ones are).
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = (device or "auto").lower()
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if has_mps else [])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu"))
    base = name.split(":")[0]
    if base not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {device!r}")
    if base not in available:
        raise ValueError(f"device {device!r} is not available on this machine; available: {available}")
    return torch.device(name)


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Use deterministic algorithms (and no cuDNN autotuning) inside the block, then restore."""
    if not enabled:
        yield
        return
    prev_alg = torch.are_deterministic_algorithms_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    prev_det = torch.backends.cudnn.deterministic
    prev_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_alg)
        torch.backends.cudnn.benchmark = prev_bench
        torch.backends.cudnn.deterministic = prev_det
        if prev_env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
