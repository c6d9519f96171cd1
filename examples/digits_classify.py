"""Case study 1 (DeepTrack 2.0 paper, IV.1): digit classification with a dense network.

scikit-learn's bundled 8x8 digits stand in for MNIST (no download). Training streams augmented
(affine + elastic) digits of the ``train`` split; the checkpoint is chosen on the ``val`` split; the
accuracy and confusion matrix are measured once on the held-out ``test`` split (25 %, stratified).

    python examples/digits_classify.py --quick      # ~1 min on 2 CPU cores
    python examples/digits_classify.py              # full setting
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import Reporter, base_parser

from napari_deeptrack.analysis.metrics import classification_metrics
from napari_deeptrack.tasks import get_preset
from napari_deeptrack.tasks.presets_digits import load_digit_split
from napari_deeptrack.train import ValidationSet

CASE = "digits_classify"


def main(argv: list[str] | None = None) -> int:
    p = base_parser(CASE, __doc__.splitlines()[0])
    args = p.parse_args(argv)
    rep = Reporter(CASE, args)
    task = get_preset("digits-classify")
    epochs, steps = (25, 50) if args.quick else (100, 100)

    xv, yv = load_digit_split("val")
    val = ValidationSet(torch.as_tensor(xv)[:, None], torch.as_tensor(yv))
    out = f"{args.out}/digits-classify" if args.out else None
    res = rep.train(task, out, args, epochs, steps, validation=val)

    xt, yt = load_digit_split("test")
    with torch.no_grad():
        logits = res.model(torch.as_tensor(xt)[:, None])
    pred = logits.argmax(1).numpy()
    m = classification_metrics(pred, yt, n_classes=10)
    cm = np.asarray(m["confusion_matrix"])
    off = cm.copy()
    np.fill_diagonal(off, 0)
    top = np.dstack(np.unravel_index(np.argsort(off.ravel())[::-1][:3], off.shape))[0]
    rep.emit(
        "test",
        n_test=len(yt),
        accuracy=m["accuracy"],
        confusion_matrix=cm,
        top_confusions=[{"true": int(i), "pred": int(j), "n": int(off[i, j])} for i, j in top if off[i, j]],
    )
    rep.done(accuracy=m["accuracy"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
