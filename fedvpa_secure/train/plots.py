"""PNG plots written next to the JSON report: latent scatter per round and training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latent_grid(
    latents: Sequence[Sequence[Sequence[float]] | None],
    types: Sequence[int],
    type_names: Sequence[str],
    path: Path,
    max_panels: int = 8,
) -> Path | None:
    """PCA (fitted on the last round) of the eval users' posterior means at several rounds."""
    rounds = [i for i, lat in enumerate(latents) if lat]
    if not rounds:
        return None
    picks = sorted(
        {rounds[round(j)] for j in np.linspace(0, len(rounds) - 1, min(max_panels, len(rounds)))}
    )
    last = np.asarray(latents[rounds[-1]])
    mean = last.mean(0)
    _, _, vt = np.linalg.svd(last - mean, full_matrices=False)
    basis = vt[:2].T if vt.shape[0] >= 2 else np.eye(last.shape[1], 2)
    plt = _pyplot()
    cols = min(4, len(picks))
    rows = int(np.ceil(len(picks) / cols))
    # shared axes: separation that only per-panel autoscaling would show is not separation
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False, sharex=True, sharey=True
    )
    types_a = np.asarray(types)
    for ax, r in zip(axes.flat, picks, strict=False):
        xy = (np.asarray(latents[r]) - mean) @ basis
        for t, name in enumerate(type_names):
            sel = types_a == t
            ax.scatter(xy[sel, 0], xy[sel, 1], s=14, alpha=0.8, label=name)
        ax.set_title(f"round {r + 1}")
    for ax in list(axes.flat)[len(picks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("posterior means of unseen users (PCA)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(rounds: Sequence[dict], path: Path, title: str) -> Path:
    plt = _pyplot()
    x = [r["round"] for r in rounds]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(x, [r["loss"] for r in rounds], label="loss")
    ax1.plot(x, [r["bt"] for r in rounds], label="BT NLL")
    ax1.set_xlabel("round")
    ax1.legend()
    ax2.plot(x, [r["eval_accuracy"] for r in rounds], label="overall")
    ax2.plot(x, [r["eval_conflicting"] for r in rounds], label="conflicting")
    ax2.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax2.set_xlabel("round")
    ax2.set_ylabel("accuracy (unseen users)")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
