"""Case study 7 (paper IV.7): a pix2pix GAN learns real nuclei from their masks, then joins the simulator.

1. Train the ``mask-to-image`` pix2pix (U-Net generator with a residual bottleneck, PatchGAN
   discriminator, adversarial + 0.8 x L1 loss as in the paper) on 8 of the 10 real BBBC039 images
   (``shared/data/bbbc039_dev``, never copied): semantic masks from the instance labels (+ per-image
   Gaussian noise, std 0-0.1) -> images scaled to [-1, 1]; random crops, flips and rotations.
2. Test on the 2 held-out images (whole 520 x 696 images): SSIM / PSNR of the generated images against
   the real ones (both in [-1, 1], data range 2), and of a trivial baseline that paints every mask
   class (background, nucleus interior, nucleus boundary) with its mean training intensity.
3. Use the generator inside a simulation: a ``Pipeline`` of ``CellBody`` nuclei (the ``cells-count``
   scenes) with :class:`GeneratorOptics` makes realistic-looking images with exact ground truth. We
   compare their intensity statistics with a real image (``analysis.calibrate.compare_statistics``,
   all images percentile-normalised as a network sees them) against the plain fluorescence
   simulation of the same scenes, and save a PNG panel.

    python examples/mask_to_image.py --quick --out runs/m2i   # minutes on 2 CPU cores
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _bbbc039 import load_bbbc039
from _common import Reporter, base_parser

from napari_deeptrack.analysis.calibrate import compare_statistics
from napari_deeptrack.analysis.metrics import image_metrics
from napari_deeptrack.sim import GeneratorOptics, normalize_images, semantic_mask, to_signed
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.tasks.presets_cells import cells_pipeline
from napari_deeptrack.train import train_task
from napari_deeptrack.train.data import RealPairCrops, ValidationSet

CASE = "mask-to-image"
HELD_OUT = 2  # the last two images (by counts.csv order) are never trained on


def _signed_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    m = image_metrics(pred, truth, normalize=False, data_range=2.0)
    return {k: m[k] for k in ("ssim", "psnr_db", "nrmse", "pearson")}


def _panel(rows: list[np.ndarray], path: Path) -> None:
    from skimage.io import imsave

    tiles = []
    for r in rows:
        lo, hi = np.percentile(r, [1, 99.8])
        tiles.append(np.clip((r - lo) / max(hi - lo, 1e-9), 0, 1))
    sep = np.ones((tiles[0].shape[0], 4))
    img = np.concatenate([t for pair in zip(tiles, [sep] * len(tiles)) for t in pair][:-1], axis=1)
    imsave(path, (img * 255).astype(np.uint8), check_contrast=False)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(CASE, __doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="BBBC039 development folder")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="batches per epoch")
    p.add_argument("--crop", type=int, default=None, help="training crop size (px)")
    args = p.parse_args(argv)
    rep = Reporter(CASE, args)
    epochs, steps, crop = (12, 16, 64) if args.quick else (100, 16, 128)
    epochs, steps, crop = args.epochs or epochs, args.steps or steps, args.crop or crop

    names, images, labels, _ = load_bbbc039(args.data)
    tr_img, te_img = images[:-HELD_OUT], images[-HELD_OUT:]
    lo, hi = (float(v) for v in np.percentile(tr_img, [0.1, 99.9]))
    masks = semantic_mask(torch.as_tensor(labels)[:, None])
    signed = to_signed(torch.as_tensor(images)[:, None], lo, hi)
    tr_m, te_m, tr_y, te_y = masks[:-HELD_OUT], masks[-HELD_OUT:], signed[:-HELD_OUT], signed[-HELD_OUT:]

    task = get_preset(CASE)
    task.postprocess = {**task.postprocess, "output_low": lo, "output_high": hi}
    task.description += f" Trained on {len(tr_img)} real BBBC039 images; grey {lo:.0f} -> -1, {hi:.0f} -> +1."
    data = RealPairCrops(tr_m, tr_y, crop_px=crop, batch_size=8, steps=epochs * steps, seed=args.seed)
    # checkpoint selection on fixed crops of the training images (the held-out images stay unseen)
    vx, vy = next(iter(RealPairCrops(tr_m, tr_y, crop_px=crop, batch_size=16, steps=1, seed=args.seed + 999)))
    val = ValidationSet(vx, vy)
    out = Path(args.out) / "mask-to-image" if args.out else Path(tempfile.mkdtemp()) / "mask-to-image"
    res = train_task(
        task, out, epochs=epochs, steps_per_epoch=steps, seed=args.seed, device=args.device,
        train_data=data, validation=val,
    )  # fmt: skip
    gen = res.model.generator.eval()
    rep.emit(
        "training",
        train_images=names[:-HELD_OUT],
        held_out_images=names[-HELD_OUT:],
        epochs=len(res.history["epoch"]),
        steps_per_epoch=steps,
        crop_px=crop,
        grey_low=lo,
        grey_high=hi,
        final_generator_loss=res.history["train_loss"][-1],
        best_val_l1=min(res.history["val_loss"]),
        bundle=str(out),
    )

    # ---- held-out test: generated vs real, and the class-mean baseline
    g = torch.Generator().manual_seed(args.seed + 7)
    x = te_m + 0.05 * torch.randn(te_m.shape, generator=g)  # mid-range mask noise
    with torch.no_grad():
        fake = gen(x)[:, 0].numpy()
    real = te_y[:, 0].numpy()
    cls_means = {c: float(tr_y[tr_m == c].mean()) for c in (-1.0, 0.0, 1.0)}
    base = np.select([te_m[:, 0].numpy() == c for c in cls_means], list(cls_means.values()))
    gan_rows = [_signed_metrics(f, r) for f, r in zip(fake, real)]
    base_rows = [_signed_metrics(b, r) for b, r in zip(base, real)]
    mean = lambda rows: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}  # noqa: E731
    m_gan, m_base = mean(gan_rows), mean(base_rows)
    rep.emit(
        "test",
        images=names[-HELD_OUT:],
        generated_vs_real=m_gan,
        class_mean_baseline_vs_real=m_base,
        per_image_generated=gan_rows,
        per_image_baseline=base_rows,
        class_means_signed=list(cls_means.values()),
    )

    # ---- the generator as a simulation feature: CellBody scenes through GeneratorOptics
    n_sim, size = 8, 128
    plain = cells_pipeline((size, size))
    gan_pipe = plain.with_(optics=GeneratorOptics(bundle_path=str(out)), transforms=[])
    sim_gan = gan_pipe(n_sim, seed=args.seed + 11)
    sim_plain = plain(n_sim, seed=args.seed + 11)  # same scenes (the scene is drawn first)
    same_scenes = bool(torch.equal(sim_gan.scene.position, sim_plain.scene.position))
    real_crops = torch.as_tensor(te_img[:, :256, :256])[:, None]
    norm = {"mode": "percentile", "low": 1.0, "high": 99.8}
    real_n = normalize_images(real_crops, **norm)[:, 0].numpy()
    cmp = {
        "generator_pipeline": compare_statistics(
            normalize_images(sim_gan.image, **norm)[:, 0].numpy(), real_n
        ),
        "plain_fluorescence": compare_statistics(
            normalize_images(sim_plain.image, **norm)[:, 0].numpy(), real_n
        ),
    }
    summary = {k: {c: v[c] for c in ("distance", "histogram", "noise", "spot_width")} for k, v in cmp.items()}
    png = out.parent / "mask_to_image_panel.png"
    inst = sim_gan.scene
    _panel(
        [
            semantic_mask(torch.as_tensor(labels[-1:, :size, :size])[:, None])[0, 0].numpy(),
            fake[-1, :size, :size],
            real[-1, :size, :size],
            sim_gan.image[0, 0].numpy(),
            sim_plain.image[0, 0].numpy(),
        ],
        png,
    )
    rep.emit(
        "simulation",
        n_images=n_sim,
        image_px=size,
        same_scenes=same_scenes,
        nuclei_per_image=inst.present.sum(1).tolist(),
        generated_grey_range=[float(sim_gan.image.min()), float(sim_gan.image.max())],
        vs_real_percentile_normalised=summary,
        panel_png=str(png),
        panel="real mask | generated from it | real image | GeneratorOptics simulation | plain simulation",
    )
    rep.done(
        ssim=m_gan["ssim"],
        psnr_db=m_gan["psnr_db"],
        ssim_baseline=m_base["ssim"],
        psnr_db_baseline=m_base["psnr_db"],
        stats_distance_generator=summary["generator_pipeline"]["distance"],
        stats_distance_plain=summary["plain_fluorescence"]["distance"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
