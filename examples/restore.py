"""Case study 8 (beyond the paper): denoising + deconvolution of fluorescence images, with an ensemble.

An ensemble of U-Nets (preset ``restore``, different seeds) learns to map noisy NA 0.8 widefield images
to noise-free NA 1.4 images of the same simulated scenes. On a separate simulated test set it reports
SSIM, PSNR and NRMSE of the ensemble mean against the clean truth, of the raw input against the same
truth, of the prediction against the raw input (how far the network moved away from the data), and of
classical baselines: Gaussian smoothing (plain, and with the background subtracted) and Richardson-Lucy
deconvolution with the true PSF (each with its parameter chosen on separate tuning scenes, i.e. at
its best). The prediction must be closer to the truth than the input is, on (nearly) every image.
The ensemble's per-pixel standard deviation is the uncertainty map; we report how well it tracks
the actual error.

    python examples/restore.py --quick      # about a minute on 2 CPU cores
    python examples/restore.py              # full setting
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import Reporter, base_parser
from scipy import ndimage

from napari_deeptrack.analysis.metrics import image_metrics
from napari_deeptrack.sim import Particles, PointParticle
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.train import train_task

CASE = "restore"
TEST_SEED = 20_240_001  # test scenes: a seed no training or validation stream uses
TUNE_SEED = 20_240_002  # scenes on which the classical baselines' parameters are chosen
METRICS = ("ssim", "psnr_db", "nrmse", "pearson")
GAUSS_SIGMAS_PX = (0.5, 0.75, 1.0, 1.5, 2.0)
RL_ITERATIONS = (3, 5, 10, 20, 40)


def _metric_rows(preds: np.ndarray, truths: np.ndarray) -> list[dict[str, float]]:
    return [image_metrics(p, t) for p, t in zip(preds, truths)]


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def _input_psf(task, size: int = 25) -> np.ndarray:
    """The input microscope's PSF (one in-focus point, noise-free), normalised to sum 1."""
    one = task.pipeline.with_(
        image_shape=(size, size),
        particles=[Particles(PointParticle(), count=1, y_px=size // 2, x_px=size // 2, intensity=1.0)],
        transforms=[],
    )
    psf = one(1, seed=0).image[0, 0].numpy().astype(np.float64)
    return psf / psf.sum()


def _gaussian(raw: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(r, sigma) for r in raw])


def _gaussian_bg(raw: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing, then the background (image median) subtracted and negatives set to 0."""
    s = _gaussian(raw, sigma)
    return np.clip(s - np.median(s, axis=(-2, -1), keepdims=True), 0, None)


def _richardson_lucy(raw: np.ndarray, psf: np.ndarray, n_iter: int) -> np.ndarray:
    """Classical deconvolution of background-subtracted images (background = image median)."""
    from skimage.restoration import richardson_lucy

    out = []
    for r in raw:
        x = np.clip(r - np.median(r), 0, None)
        scale = max(float(x.max()), 1e-12)
        out.append(richardson_lucy(x / scale, psf, num_iter=n_iter, clip=False) * scale)
    return np.stack(out)


def _best(fn, params, raw, truth) -> tuple[float, float]:
    """Parameter with the highest mean SSIM on tuning scenes, and that SSIM."""
    scores = [_mean(_metric_rows(fn(raw, p), truth))["ssim"] for p in params]
    i = int(np.argmax(scores))
    return params[i], scores[i]


def main(argv: list[str] | None = None) -> int:
    p = base_parser(CASE, __doc__.splitlines()[0])
    p.add_argument("--ensemble", type=int, default=3, help="number of models (>= 2 for an uncertainty map)")
    p.add_argument("--epochs", type=int, default=None, help="override epochs per model")
    p.add_argument("--steps", type=int, default=None, help="override steps per epoch")
    p.add_argument("--n-test", type=int, default=None, help="override the number of test images")
    args = p.parse_args(argv)
    if args.ensemble < 1:
        p.error("--ensemble must be >= 1")
    rep = Reporter(CASE, args)
    task = get_preset("restore")
    # quick: 200 steps of 16 images per model on 48 x 48 crops (the U-Net is fully convolutional;
    # tests are on 64 x 64 images); full: the preset's 30 x 50 steps on 64 x 64 images
    epochs, steps, n_test, train_px = (8, 25, 32, 48) if args.quick else (30, 50, 128, 64)
    epochs = args.epochs or epochs
    steps = args.steps or steps
    n_test = args.n_test or n_test
    train = task.edited({"pipeline.image_shape": [train_px, train_px]})
    train.training = {**train.training, "validation_size": 32 if args.quick else 64}

    models = []
    for k in range(args.ensemble):
        out = f"{args.out}/restore-{k}" if args.out else None
        res = train_task(
            train, out, epochs=epochs, steps_per_epoch=steps, seed=args.seed + k, device=args.device
        )
        models.append(res.model.eval())
        rep.emit(
            "training",
            model=k,
            epochs=len(res.history["epoch"]),
            steps_per_epoch=steps,
            image_px=train_px,
            final_train_loss=res.history["train_loss"][-1],
            best_val_loss=min(res.history["val_loss"]),
        )

    batch = task.pipeline(n_test, seed=TEST_SEED + args.seed)
    x = batch.image  # percentile-normalised input (the pipeline's last transform, as at inference)
    raw = x[:, 0].numpy()
    truth = batch.targets[task.target][:, 0].numpy()
    with torch.no_grad():
        preds = np.stack([m(x)[:, 0].numpy() for m in models])  # [K, N, H, W]
    mean, std = preds.mean(0), preds.std(0)

    tune = task.pipeline(16, seed=TUNE_SEED + args.seed)
    t_raw, t_truth = tune.image[:, 0].numpy(), tune.targets[task.target][:, 0].numpy()
    psf = _input_psf(task)
    sigma, _ = _best(_gaussian, GAUSS_SIGMAS_PX, t_raw, t_truth)
    sigma_bg, _ = _best(_gaussian_bg, GAUSS_SIGMAS_PX, t_raw, t_truth)
    n_rl, _ = _best(lambda r, n: _richardson_lucy(r, psf, n), RL_ITERATIONS, t_raw, t_truth)
    smooth, rl = _gaussian(raw, sigma), _richardson_lucy(raw, psf, n_rl)
    smooth_bg = _gaussian_bg(raw, sigma_bg)

    r_pred, r_raw = _metric_rows(mean, truth), _metric_rows(raw, truth)
    r_smooth, r_rl = _metric_rows(smooth, truth), _metric_rows(rl, truth)
    m_pred, m_raw, m_smooth, m_rl = _mean(r_pred), _mean(r_raw), _mean(r_smooth), _mean(r_rl)
    m_smooth_bg = _mean(_metric_rows(smooth_bg, truth))

    def frac(a, b, key):
        sign = -1 if key == "nrmse" else 1
        return float(np.mean([sign * (u[key] - v[key]) > 0 for u, v in zip(a, b)]))

    better_than_input = {k: frac(r_pred, r_raw, k) for k in ("ssim", "psnr_db", "nrmse")}
    better_than_gauss = {k: frac(r_pred, r_smooth, k) for k in ("ssim", "psnr_db", "nrmse")}
    err = np.abs(mean - truth)
    unc_corr = float(np.corrcoef(std.ravel(), err.ravel())[0, 1]) if len(models) > 1 else float("nan")
    q_hi, q_lo = np.quantile(std, 0.9), np.quantile(std, 0.1)
    rep.emit(
        "test",
        n_test=n_test,
        ensemble=len(models),
        prediction_vs_truth=m_pred,
        raw_input_vs_truth=m_raw,
        prediction_vs_raw_input=_mean(_metric_rows(mean, raw)),
        gaussian_smoothed_input_vs_truth={**m_smooth, "sigma_px": sigma},
        gaussian_background_subtracted_vs_truth={**m_smooth_bg, "sigma_px": sigma_bg},
        richardson_lucy_vs_truth={**m_rl, "iterations": n_rl},
        single_models_vs_truth=[_mean(_metric_rows(pk, truth)) for pk in preds],
        fraction_images_prediction_better_than_input=better_than_input,
        fraction_images_prediction_better_than_gaussian=better_than_gauss,
        uncertainty_error_pearson=unc_corr,
        mean_abs_error_top10pct_uncertainty=float(err[std >= q_hi].mean()),
        mean_abs_error_bottom10pct_uncertainty=float(err[std <= q_lo].mean()),
    )
    rep.done(
        ssim=m_pred["ssim"],
        ssim_input=m_raw["ssim"],
        ssim_gaussian=m_smooth["ssim"],
        ssim_gaussian_background_subtracted=m_smooth_bg["ssim"],
        ssim_richardson_lucy=m_rl["ssim"],
        psnr_db=m_pred["psnr_db"],
        psnr_db_input=m_raw["psnr_db"],
        psnr_db_gaussian=m_smooth["psnr_db"],
        psnr_db_gaussian_background_subtracted=m_smooth_bg["psnr_db"],
        psnr_db_richardson_lucy=m_rl["psnr_db"],
        nrmse=m_pred["nrmse"],
        nrmse_input=m_raw["nrmse"],
        fraction_better_than_input_ssim=better_than_input["ssim"],
        fraction_better_than_input_psnr=better_than_input["psnr_db"],
        uncertainty_error_pearson=unc_corr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
