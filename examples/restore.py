"""Case study 8 (beyond the paper): denoising + deconvolution of fluorescence images, with an ensemble.

An ensemble of U-Nets (preset ``restore``, different seeds) learns to map noisy NA 0.8 widefield images
to noise-free NA 1.4 images of the same simulated scenes. On a separate simulated test set it reports
SSIM, PSNR and NRMSE of the ensemble mean against the clean truth, and of the raw input and of a
Gaussian-smoothed input (classical baseline) against the same truth: the prediction must be closer to
the truth than the input is. The ensemble's per-pixel standard deviation is the uncertainty map; we
report how well it tracks the actual error (Pearson correlation over pixels).

    python examples/restore.py --quick      # a few minutes on 2 CPU cores
    python examples/restore.py              # full setting
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import Reporter, base_parser
from scipy import ndimage

from napari_deeptrack.analysis.metrics import image_metrics
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.train import normalize, train_task

CASE = "restore"
TEST_SEED = 20_240_001  # test scenes: a seed no training or validation stream uses


def _mean_metrics(preds: np.ndarray, truths: np.ndarray) -> dict[str, float]:
    rows = [image_metrics(p, t) for p, t in zip(preds, truths)]
    return {k: float(np.mean([r[k] for r in rows])) for k in ("ssim", "psnr_db", "nrmse", "pearson")}


def main(argv: list[str] | None = None) -> int:
    p = base_parser(CASE, __doc__.splitlines()[0])
    p.add_argument("--ensemble", type=int, default=3, help="number of models (>= 2 for an uncertainty map)")
    args = p.parse_args(argv)
    rep = Reporter(CASE, args)
    task = get_preset("restore")
    epochs, steps, n_test = (6, 20, 32) if args.quick else (40, 60, 128)
    task.training = {**task.training, "validation_size": 32 if args.quick else 64}

    models = []
    for k in range(args.ensemble):
        out = f"{args.out}/restore-{k}" if args.out else None
        res = train_task(
            task, out, epochs=epochs, steps_per_epoch=steps, seed=args.seed + k, device=args.device
        )
        models.append(res.model.eval())
        rep.emit(
            "training",
            model=k,
            epochs=len(res.history["epoch"]),
            steps_per_epoch=steps,
            final_train_loss=res.history["train_loss"][-1],
            best_val_loss=min(res.history["val_loss"]),
        )

    batch = task.pipeline(n_test, seed=TEST_SEED + args.seed)
    raw = batch.image[:, 0].numpy()
    truth = batch.targets[task.target][:, 0].numpy()
    x = normalize(batch.image, task.input_normalization)
    with torch.no_grad():
        preds = np.stack([m(x)[:, 0].numpy() for m in models])  # [K, N, H, W]
    mean, std = preds.mean(0), preds.std(0)
    smooth = np.stack([ndimage.gaussian_filter(r, 1.0) for r in raw])

    m_pred = _mean_metrics(mean, truth)
    m_raw = _mean_metrics(raw, truth)
    m_smooth = _mean_metrics(smooth, truth)
    singles = [_mean_metrics(pk, truth) for pk in preds]
    per_image_better = float(
        np.mean(
            [image_metrics(a, t)["nrmse"] < image_metrics(r, t)["nrmse"] for a, t, r in zip(mean, truth, raw)]
        )
    )
    err = np.abs(mean - truth)
    unc_corr = float(np.corrcoef(std.ravel(), err.ravel())[0, 1])
    # calibration by quantile: mean error where the ensemble disagrees most vs least (top / bottom 10 %)
    q_hi, q_lo = np.quantile(std, 0.9), np.quantile(std, 0.1)
    rep.emit(
        "test",
        n_test=n_test,
        ensemble=args.ensemble,
        prediction_vs_truth=m_pred,
        raw_input_vs_truth=m_raw,
        gaussian_smoothed_input_vs_truth=m_smooth,
        single_models_vs_truth=singles,
        fraction_images_prediction_closer_than_input=per_image_better,
        uncertainty_error_pearson=unc_corr,
        mean_abs_error_top10pct_uncertainty=float(err[std >= q_hi].mean()),
        mean_abs_error_bottom10pct_uncertainty=float(err[std <= q_lo].mean()),
    )
    rep.done(
        ssim=m_pred["ssim"],
        ssim_input=m_raw["ssim"],
        psnr_db=m_pred["psnr_db"],
        psnr_db_input=m_raw["psnr_db"],
        nrmse=m_pred["nrmse"],
        nrmse_input=m_raw["nrmse"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
