"""Movies (DeepTrack's ``Sequence``): particles that diffuse, drift, blink and bleach over frames.

A :class:`Movie` wraps a :class:`~napari_deeptrack.sim.pipeline.Pipeline`: the pipeline samples the
first frame's scene; the movie moves every particle frame by frame, then renders *all* frames of all
movies in one batch through the optics and applies the pipeline's transforms and targets.

Representation (flattened frames)
---------------------------------
``movie(B)`` returns a :class:`SimBatch` with

- ``image`` ``[B, T, C, H, W]`` and every target ``[B, T, ...]``;
- ``scene``: one :class:`~napari_deeptrack.sim.scene.Scene` with batch dimension ``B * T``, movie
  major (row ``b * T + t`` is frame t of movie b), so everything that works on a scene (optics,
  targets, augmentations, ``to_records``) works on movies unchanged. Extra fields:

  * ``attributes["movie"]`` [B*T] int64 and ``attributes["frame"]`` [B*T] int64;
  * ``attributes["track_id"]`` [B*T, N] int64: the particle's slot index (the same in every frame of
    a movie), -1 for empty slots;
  * ``attributes["visible"]`` [B*T, N] bool: the emitter is on (not blinked off) and not bleached;
  * ``attributes["diffusion_um2_s"]`` [B*T, N]: the particle's diffusion coefficient.

  ``present`` is ``track exists & visible & centre in the frame``: what the camera can see, so
  renderers and targets only show visible particles. Positions are kept for every existing track in
  every frame (also while invisible or outside the frame), so ground-truth tracks stay continuous;
  :func:`movie_truth_table` lists them.

Motion: Brownian steps with per-axis standard deviation ``sqrt(2 D dt)`` (``D`` in um^2/s, converted
to pixels with ``pixel_size_um``; z steps in um when ``z_diffusion``), plus a constant drift.
Blinking: a two-state Markov chain per particle with mean on time ``blink_on_s`` and mean off time
``blink_off_s``; the first frame is drawn from the stationary distribution. Bleaching: each particle
bleaches irreversibly after an exponential time with rate ``bleach_rate_per_s``, so the expected
fraction still emitting at frame t is ``exp(-rate * t * dt)``.

The pipeline's ``min_distance_px`` applies to the first frame only (particles then move freely).
Geometric augmentations in ``pipeline.transforms`` use one map per movie (see
:mod:`~napari_deeptrack.sim.augment`); other transforms see the frames as independent images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .params import ParamLike, check_range, sample
from .pipeline import Pipeline, SimBatch, make_generator
from .scene import Scene
from .serialize import register
from .targets import in_frame

__all__ = ["Movie", "movie_truth_table"]


def _repeat_frames(t: torch.Tensor, n_frames: int) -> torch.Tensor:
    """[B, ...] -> [B * T, ...], each movie's row repeated for its T frames (movie major)."""
    return t.repeat_interleave(n_frames, dim=0)


@register
@dataclass
class Movie:
    """Time series of a pipeline's scenes. See the module docstring for the representation.

    Parameters
    ----------
    pipeline : Pipeline
        Samples the first frame (populations, optics, transforms, targets).
    n_frames : int
        Frames per movie (T >= 1).
    frame_interval_s : float
        Time between frames in seconds (> 0).
    diffusion_um2_s : float or Distribution
        Diffusion coefficient in um^2/s, sampled per particle (>= 0).
    pixel_size_um : float or None
        Sample-plane pixel size; None takes it from ``pipeline.optics`` (``pixel_size_um``, or
        ``camera_pixel_um / magnification``).
    drift_um_s : (vy, vx)
        Drift velocity in um/s along y and x, numbers or Distributions sampled per movie.
    blink_on_s, blink_off_s : float or None
        Mean on and off times in seconds; None (either) disables blinking.
    bleach_rate_per_s : float
        Photobleaching rate per second (0: no bleaching).
    z_diffusion : bool
        Whether z diffuses too (same D).
    """

    pipeline: Pipeline
    n_frames: int = 10
    frame_interval_s: float = 0.1
    diffusion_um2_s: ParamLike = 0.1
    pixel_size_um: float | None = None
    drift_um_s: list[ParamLike] = field(default_factory=lambda: [0.0, 0.0])
    blink_on_s: float | None = None
    blink_off_s: float | None = None
    bleach_rate_per_s: float = 0.0
    z_diffusion: bool = False

    def __post_init__(self):
        check_range("n_frames", self.n_frames, 1, None)
        check_range("frame_interval_s", self.frame_interval_s, 0.0, None, low_inclusive=False)
        check_range("diffusion_um2_s", self.diffusion_um2_s, 0.0, None)
        if self.pixel_size_um is not None:
            check_range("pixel_size_um", self.pixel_size_um, 0.0, None, low_inclusive=False)
        if isinstance(self.drift_um_s, tuple):
            self.drift_um_s = list(self.drift_um_s)
        if len(self.drift_um_s) != 2:
            raise ValueError(f"drift_um_s must be (vy, vx) in um/s, got {self.drift_um_s!r}")
        for name in ("blink_on_s", "blink_off_s"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 0.0, None, low_inclusive=False)
        check_range("bleach_rate_per_s", self.bleach_rate_per_s, 0.0, None)

    # -------------------------------------------------------------- helpers
    def resolved_pixel_size_um(self) -> float:
        """The pixel size used to convert um to px."""
        if self.pixel_size_um is not None:
            return float(self.pixel_size_um)
        px = self.pipeline.optics.sample_pixel_um
        if px is None:
            raise ValueError("pixel_size_um must be given (the optics does not define one)")
        return float(px)

    # -------------------------------------------------------------- ground truth
    def sample_scene(self, batch_size: int, generator: torch.Generator) -> Scene:
        """Sample ``batch_size`` movies of ground truth as one scene of ``batch_size * n_frames`` frames."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        g = generator
        b, t_n = int(batch_size), int(self.n_frames)
        dt = float(self.frame_interval_s)
        px = self.resolved_pixel_size_um()
        first = self.pipeline.sample_scene(b, g)
        n = first.n_max
        dev = first.device

        diff = sample(self.diffusion_um2_s, (b, n), g).float().clamp_min(0.0)
        step_um = torch.sqrt(2.0 * diff * dt)  # [B, N], per-axis std per frame
        drift = torch.stack([sample(v, (b,), g).float() for v in self.drift_um_s], dim=-1)  # [B, 2] um/s
        steps = torch.randn(b, t_n - 1, n, 2, generator=g, device=dev) * (step_um / px)[:, None, :, None]
        steps = steps + (drift * dt / px)[:, None, None, :]
        yx0 = first.position[..., :2]
        zero = torch.zeros(b, 1, n, 2, device=dev)
        yx = torch.cat([zero, torch.cumsum(steps, dim=1)], dim=1) + yx0[:, None]
        z = first.position[..., 2][:, None, :].expand(b, t_n, n)
        if self.z_diffusion:
            dz = torch.randn(b, t_n - 1, n, generator=g, device=dev) * step_um[:, None, :]
            z = z + torch.cat([torch.zeros(b, 1, n, device=dev), torch.cumsum(dz, dim=1)], dim=1)

        visible = self._photophysics(b, t_n, n, g, dev)  # [B, T, N]
        exists = first.present[:, None, :].expand(b, t_n, n)
        position = torch.cat([yx, z[..., None]], dim=-1)  # [B, T, N, 3]
        present = exists & visible & in_frame(yx, first.image_shape)

        slot = torch.arange(n, device=dev)[None, :].expand(b, n)
        track_id = torch.where(first.present, slot, torch.full((b, n), -1, device=dev))
        frame = torch.arange(t_n, device=dev).repeat(b)
        movie = torch.arange(b, device=dev).repeat_interleave(t_n)
        attributes = {k: _repeat_frames(v, t_n) for k, v in first.attributes.items()}
        attributes.update(
            movie=movie,
            frame=frame,
            track_id=_repeat_frames(track_id, t_n),
            visible=visible.reshape(b * t_n, n),
            diffusion_um2_s=_repeat_frames(diff, t_n),
        )
        image_params = {k: _repeat_frames(v, t_n) for k, v in first.image_params.items()}
        image_params.update(drift_y_um_s=_repeat_frames(drift[:, 0], t_n),
                            drift_x_um_s=_repeat_frames(drift[:, 1], t_n))
        return replace(
            first.map_tensors(lambda v: _repeat_frames(v, t_n)),
            position=position.reshape(b * t_n, n, 3),
            present=present.reshape(b * t_n, n),
            attributes=attributes,
            image_params=image_params,
        )

    def _photophysics(self, b: int, t_n: int, n: int, g: torch.Generator, dev) -> torch.Tensor:
        """On & not-yet-bleached state of every particle in every frame, [B, T, N] bool."""
        dt = float(self.frame_interval_s)
        on = torch.ones(b, t_n, n, dtype=torch.bool, device=dev)
        if self.blink_on_s is not None and self.blink_off_s is not None:
            t_on, t_off = float(self.blink_on_s), float(self.blink_off_s)
            p_off = 1.0 - math.exp(-dt / t_on)  # on -> off per frame
            p_on = 1.0 - math.exp(-dt / t_off)  # off -> on per frame
            u = torch.rand(b, t_n, n, generator=g, device=dev)
            state = u[:, 0] < t_on / (t_on + t_off)
            states = [state]
            for k in range(1, t_n):  # loop over frames only (a Markov chain), vectorised over particles
                state = torch.where(state, u[:, k] >= p_off, u[:, k] < p_on)
                states.append(state)
            on = torch.stack(states, dim=1)
        if self.bleach_rate_per_s > 0:
            u = torch.rand(b, n, generator=g, device=dev).clamp_min(1e-12)
            t_bleach = -torch.log(u) / float(self.bleach_rate_per_s)
            times = torch.arange(t_n, device=dev, dtype=torch.float32) * dt
            on = on & (times[None, :, None] < t_bleach[:, None, :])
        return on

    # -------------------------------------------------------------- images
    def __call__(
        self,
        batch_size: int,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SimBatch:
        """Simulate ``batch_size`` movies: image [B, T, C, H, W], scene of B*T frames, targets [B, T, ...]."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from .budget import check_render  # memory estimate before allocating (never an OOM kill)

        check_render(
            self.pipeline, int(batch_size) * int(self.n_frames), what=f"simulation of {self.n_frames} frames"
        )
        generator = make_generator(seed, generator, device)
        # all B*T frames go through the pipeline's optics, targets and transforms in one batch
        batch = self.pipeline.image_scene(self.sample_scene(batch_size, generator), generator)
        b, t_n = int(batch_size), int(self.n_frames)
        return SimBatch(
            image=batch.image.reshape(b, t_n, *batch.image.shape[1:]),
            scene=batch.scene,
            targets={k: v.reshape(b, t_n, *v.shape[1:]) for k, v in batch.targets.items()},
        )


def movie_truth_table(batch: SimBatch | Scene) -> list[dict[str, float | int | bool]]:
    """Ground-truth tracks: one row per existing particle and frame.

    Columns: ``movie``, ``frame``, ``track_id``, ``y``, ``x`` (px), ``z_um``, ``visible`` (on and
    not bleached), ``present`` (visible and in the frame). Rows are sorted by movie, frame, track.
    """
    scene = batch.scene if isinstance(batch, SimBatch) else batch
    for key in ("movie", "frame", "track_id"):
        if key not in scene.attributes:
            raise ValueError(f"not a movie scene: attributes[{key!r}] is missing (use Movie to simulate)")
    track = scene.attributes["track_id"]
    r, n = torch.nonzero(track >= 0, as_tuple=True)
    pos = scene.position[r, n].detach().cpu()
    visible = scene.attributes.get("visible", scene.present)
    cols = {
        "movie": scene.attributes["movie"][r].cpu().tolist(),
        "frame": scene.attributes["frame"][r].cpu().tolist(),
        "track_id": track[r, n].cpu().tolist(),
        "y": pos[:, 0].tolist(),
        "x": pos[:, 1].tolist(),
        "z_um": pos[:, 2].tolist(),
        "visible": visible[r, n].cpu().tolist(),
        "present": scene.present[r, n].cpu().tolist(),
    }
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]
