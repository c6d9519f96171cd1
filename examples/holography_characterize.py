"""Case study 3 (DeepTrack 2.0 paper, IV.3): radius and refractive index from the complex field.

A CNN (preset ``holography-characterize``) learns the radius and refractive index of a sub-micron
sphere from its off-axis holographic field (real and imaginary channels, random coma), trained only on
simulation. Test: two simulated populations of polystyrene-like spheres (n = 1.59; radii 0.23 and
0.4 um, 4 % size spread), each particle observed along a track of frames with a new defocus, position
jitter, aberration and noise per frame; predictions are averaged along each track, as in the paper.

    python examples/holography_characterize.py --quick
    python examples/holography_characterize.py
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import Reporter, base_parser

from napari_deeptrack.sim import Normal
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.tasks.presets_holography import characterize_pipeline
from napari_deeptrack.train import train_task

CASE = "holography_characterize"
POPULATIONS = [{"radius_um": 0.23, "n": 1.59}, {"radius_um": 0.40, "n": 1.59}]


def main(argv: list[str] | None = None) -> int:
    p = base_parser(CASE, __doc__.splitlines()[0])
    args = p.parse_args(argv)
    rep = Reporter(CASE, args)
    task = get_preset("holography-characterize")
    epochs, steps, n_tracks, n_frames = (10, 30, 12, 8) if args.quick else (60, 100, 40, 20)
    if args.quick:  # batches of 16 and 128 validation crops (CI budget; the preset: 32 and 256)
        task.training = {**task.training, "batch_size": 16, "validation_size": 128}
    out = f"{args.out}/holography-characterize" if args.out else None
    res = train_task(task, out, epochs=epochs, steps_per_epoch=steps, seed=args.seed, device=args.device)
    model = res.model.eval()
    tgt = task.pipeline.targets[task.target]
    with torch.no_grad():
        pv = tgt.unscale(model(res.validation.images))
    tv = tgt.unscale(res.validation.targets)
    rep.emit(
        "training",
        epochs=len(res.history["epoch"]),
        steps_per_epoch=steps,
        best_val_loss=min(res.history["val_loss"]),
        val_mae_radius_um=float((pv[:, 0] - tv[:, 0]).abs().mean()),
        val_mae_n=float((pv[:, 1] - tv[:, 1]).abs().mean()),
    )

    g = torch.Generator().manual_seed(10_000 + args.seed)
    tracks = []
    for k, pop in enumerate(POPULATIONS):
        radii = pop["radius_um"] * (1 + 0.04 * torch.randn(n_tracks, generator=g))
        for i, r in enumerate(radii.tolist()):
            pipe = characterize_pipeline(
                radius_um=r, refractive_index=pop["n"], z_um=Normal(0.0, 0.25, -0.5, 0.5)
            )
            b = pipe(n_frames, seed=int(1e6 * (k + 1) + 1000 * args.seed + i))
            with torch.no_grad():
                est = tgt.unscale(model(b.image)).numpy()
            tracks.append({"population": k, "radius_um": r, "n": pop["n"], "frames": est})
    per_frame = np.concatenate([t["frames"] for t in tracks])
    truth_f = np.concatenate([[[t["radius_um"], t["n"]]] * n_frames for t in tracks])
    mean = np.array([t["frames"].mean(0) for t in tracks])
    truth = np.array([[t["radius_um"], t["n"]] for t in tracks])
    pop = np.array([t["population"] for t in tracks])
    # separation: assign each track to the nearer population centre (in units of the spread)
    centres = np.array([mean[pop == k].mean(0) for k in range(len(POPULATIONS))])
    spread = np.array([mean[pop == k].std(0) for k in range(len(POPULATIONS))]).mean(0)
    d = (((mean[:, None, :] - centres[None]) / spread) ** 2).sum(-1)
    accuracy = float((d.argmin(1) == pop).mean())
    gap = float(abs(centres[1, 0] - centres[0, 0]) / (mean[pop == 0, 0].std() + mean[pop == 1, 0].std()) * 2)
    rep.emit(
        "tracks",
        n_tracks=len(tracks),
        frames_per_track=n_frames,
        per_frame_mae_radius_um=float(np.abs(per_frame[:, 0] - truth_f[:, 0]).mean()),
        per_frame_mae_n=float(np.abs(per_frame[:, 1] - truth_f[:, 1]).mean()),
        track_mean_mae_radius_um=float(np.abs(mean[:, 0] - truth[:, 0]).mean()),
        track_mean_mae_n=float(np.abs(mean[:, 1] - truth[:, 1]).mean()),
        population_centres=[{"radius_um": c[0], "n": c[1]} for c in centres],
        population_truth=POPULATIONS,
        separation_accuracy=accuracy,
        radius_gap_over_mean_std=gap,
    )
    rep.done(
        separation_accuracy=accuracy, track_mean_mae_radius_um=float(np.abs(mean[:, 0] - truth[:, 0]).mean())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
