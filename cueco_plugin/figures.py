"""Pictures of an evaluation: a 2-D embedding of the features coloured by class and by cluster,
and a gallery of sample images from the largest clusters (matplotlib, PNG)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch


def embedding_method(requested: str = "auto") -> str:
    """``"umap"`` where ``umap-learn`` is importable (or asked for), else ``"tsne"``."""
    if requested not in ("auto", "umap", "tsne"):
        raise ValueError(f"embedding must be 'auto', 'umap' or 'tsne', got {requested!r}")
    if requested == "auto":
        return "umap" if importlib.util.find_spec("umap") is not None else "tsne"
    if requested == "umap" and importlib.util.find_spec("umap") is None:
        raise ValueError("embedding 'umap' needs umap-learn: pip install 'cueco-plugin[umap]'")
    return requested


def embed_2d(features: torch.Tensor, method: str, seed: int = 0) -> np.ndarray:
    """(N, 2) embedding of (N, F) features, L2-normalised first (cosine geometry)."""
    x = torch.nn.functional.normalize(features.float(), dim=1).numpy()
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, metric="euclidean", random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    # one OpenMP thread: on 2 cores scikit-learn's Barnes-Hut gradient took 26 s for 200 points
    # with 2 threads and 0.5 s with one (3000 points: 17 s with one)
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(x)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_embedding(
    xy: np.ndarray,
    labels: np.ndarray,
    clusters: np.ndarray,
    class_names: list[str],
    path: Path,
    titles: tuple[str, str] = ("by class", "by cluster"),
) -> Path:
    """Two scatter panels of the (N, 2) points ``xy``: coloured by class (with a legend) and by
    cluster."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), dpi=90)
    class_cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c, name in enumerate(class_names):
        members = labels == c
        if members.any():
            axes[0].scatter(*xy[members].T, s=5, color=class_cmap(c % class_cmap.N), label=name)
    if len(class_names) <= 20:
        axes[0].legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    used = np.unique(clusters)
    rank = np.searchsorted(used, clusters)  # distinct colours for the clusters in use
    axes[1].scatter(*xy.T, s=5, c=rank, cmap="gist_rainbow", vmin=0, vmax=max(len(used) - 1, 1))
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gallery(
    images: Any,
    labels: np.ndarray,
    clusters: np.ndarray,
    class_names: list[str],
    path: Path,
    num_clusters: int = 8,
    per_cluster: int = 8,
    seed: int = 0,
) -> Path:
    """One row per cluster (the ``num_clusters`` largest): ``per_cluster`` random members, the
    row titled with the cluster's size and majority class. ``images.raw(i)`` gives (H, W, 3)
    uint8 image ``i``."""
    plt = _pyplot()
    ids, sizes = np.unique(clusters, return_counts=True)
    order = np.argsort(-sizes, kind="stable")[:num_clusters]
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(
        len(order),
        per_cluster,
        figsize=(per_cluster * 0.9, len(order) * 1.05),
        dpi=90,
        squeeze=False,
    )
    for row, index in enumerate(order):
        members = np.flatnonzero(clusters == ids[index])
        shown = rng.choice(members, size=min(per_cluster, len(members)), replace=False)
        majority = np.bincount(labels[members], minlength=len(class_names)).argmax()
        share = float((labels[members] == majority).mean())
        axes[row, 0].set_title(
            f"cluster {ids[index]}: {sizes[index]} images, {share:.0%} {class_names[majority]}",
            fontsize=8,
            loc="left",
        )
        for col in range(per_cluster):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(shown):
                ax.imshow(images.raw(int(shown[col])))
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01, wspace=0.04, hspace=0.3)
    fig.savefig(path)
    plt.close(fig)
    return path
