"""Figures written by the CLI (matplotlib, the ``plots`` extra; no screen needed)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from sdeplug.extras import require
from sdeplug.files import write_atomically

require("matplotlib", "writing pictures ([output] plot = true; set it to false to skip them)").use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> None:
    """Write a figure whole or not at all, in the format its file name ends with."""
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))


def _finish(fig, path: str | Path) -> Path:
    """Lay the figure out, write it (atomically) and free it."""
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


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
    return _finish(fig, path)


def image_grid(
    images: Tensor, path: str | Path, title: str = "", ncols: int = 10, value_range: tuple[float, float] = (-1.0, 1.0)
) -> Path:
    """A grid of single-channel (or RGB) images (batch, C, H, W), clipped to value_range."""
    imgs = images.detach().cpu().float().clamp(*value_range)
    lo, hi = value_range
    imgs = (imgs - lo) / (hi - lo)
    n = imgs.shape[0]
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.8, nrows * 0.8 + (0.4 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = imgs[i]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray_r" if value_range == (-1.0, 1.0) else "gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
    if title:
        fig.suptitle(title, fontsize=9)
    return _finish(fig, path)


def loss_curve(history: Tensor, path: str | Path, title: str = "training loss", window: int = 50) -> Path:
    """The per-step loss and its running mean over ``window`` steps."""
    values = history.detach().cpu().float()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(values.numpy(), lw=0.5, alpha=0.4, label="per step")
    if len(values) >= window:
        smooth = values.unfold(0, window, 1).mean(1)
        ax.plot(range(window - 1, len(values)), smooth.numpy(), lw=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return _finish(fig, path)


def _plain_log_axis(axis, values: list[float] | None = None) -> None:
    """A log axis labelled with plain numbers: at ``values`` when given (the budgets), else at
    1, 2 and 5 times the powers of ten; no minor labels, so no two labels run into each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if values:
        axis.set_ticks(sorted(set(values)))
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _spread(means: list[float], stds: list[float], log: bool) -> list[list[float]]:
    """Error bars of one standard deviation, the lower one stopped at zero (at half the mean on
    a log axis): a metric that cannot be negative is not drawn as if it could."""
    lower = [min(s, m / 2) if log else min(s, max(m, 0.0)) for m, s in zip(means, stds)]
    return [lower, list(stds)]


def sweep_plot(rows: list[dict], metrics: list[str], real: dict, path: str | Path, title: str = "") -> Path:
    """Each metric (mean and std over seeds) against score evaluations and against seconds,
    a line per sampler (one legend for the figure), with the real data's value dashed for scale."""
    fig, axes = plt.subplots(len(metrics), 2, figsize=(10, 2.8 * len(metrics) + 0.6), squeeze=False)
    labels = list(dict.fromkeys(row["label"] for row in rows))
    budgets = [row.get("budget", row["nfe"]) for row in rows]  # the sweep's budgets: a sampler may spend one less
    for i, metric in enumerate(metrics):
        means = [row["metrics"][metric]["mean"] for row in rows]
        log = all(m > 0 for m in means) and max(means) > 4 * min(means)
        for j, (x_key, x_label) in enumerate((("nfe", "score evaluations per sample"), ("seconds", "seconds"))):
            ax = axes[i][j]
            for label in labels:
                mine = [row for row in rows if row["label"] == label]
                mean = [row["metrics"][metric]["mean"] for row in mine]
                ax.errorbar(
                    [row[x_key] for row in mine],
                    mean,
                    yerr=_spread(mean, [row["metrics"][metric]["std"] for row in mine], log),
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=label,
                )
            if metric in real:
                ax.axhline(real[metric], color="grey", ls="--", lw=1, label="real data")
            ax.set_xscale("log")
            _plain_log_axis(ax.xaxis, budgets if x_key == "nfe" else None)
            if log:
                ax.set_yscale("log")
                _plain_log_axis(ax.yaxis)
            ax.set_xlabel(x_label)
            ax.set_ylabel(metric)
    handles, names = axes[0][0].get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda k: names[k] == "real data")  # samplers first
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
    fig.legend(
        [handles[k] for k in order],
        [names[k] for k in order],
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.3 / height),
        ncol=min(len(names), 5),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def weight_sweep_plot(rows: list[dict], metrics: list[str], real: dict, path: str | Path, title: str = "") -> Path:
    """Each metric (mean and std over seeds) against the guidance weight w, the real data's
    value dashed for scale: FID's U-curve, recall falling and accuracy rising with w."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    weights = [row["weight"] for row in rows]
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.errorbar(
            weights,
            [row["metrics"][metric]["mean"] for row in rows],
            yerr=[row["metrics"][metric]["std"] for row in rows],
            marker="o",
            ms=3,
            capsize=2,
        )
        if metric in real:
            ax.axhline(real[metric], color="grey", ls="--", lw=1, label="real data")
            ax.legend(fontsize=7)
        ax.set_xlabel("guidance weight w")
        ax.set_ylabel(metric)
    fig.suptitle(title, fontsize=9)
    return _finish(fig, path)
