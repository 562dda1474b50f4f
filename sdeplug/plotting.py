"""Figures written by the CLI (matplotlib, no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def scatter_2d(samples: Tensor, reference: Tensor | None, path: str | Path, title: str = "") -> Path:
    """Side-by-side scatter plots of 2-D reference data and samples, on shared axes."""
    panels = [("samples", samples)] if reference is None else [("data", reference), ("samples", samples)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), sharex=True, sharey=True, squeeze=False)
    for ax, (label, points) in zip(axes[0], panels):
        pts = points.detach().reshape(points.shape[0], -1).cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color="tab:blue" if label == "data" else "tab:orange")
        ax.set_title(label)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
