"""From vectors to pictures and numbers: projections, cosine similarities, neighbours, agreement.

Every view works on unit-length vectors, so the scatter, the heatmap and the neighbours all
show the same geometry: cosine similarity. Projections: PCA (the default; deterministic),
t-SNE (van der Maaten & Hinton, 2008), UMAP (McInnes et al., 2018), and "anchors": x is the
position along the line from one anchor word to another (0 at the first, 1 at the second),
y (and z) the main directions of what is left over.

    >>> import numpy as np
    >>> from wordsworlds.explore.projection import project
    >>> vectors = np.random.default_rng(0).normal(size=(6, 10)).astype("float32")
    >>> coords, notice, axes = project(vectors, "pca", dimensions=2)
    >>> coords.shape, notice, axes
    ((6, 2), None, ('PC 1', 'PC 2'))
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from scipy.stats import kendalltau, rankdata, spearmanr
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

PROJECTIONS = ("pca", "tsne", "umap", "anchors")
MIN_POINTS = {"tsne": 5, "umap": 8}  # below this, neither has a neighbourhood to preserve
NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP", "anchors": "custom axes"}
SEED = 0


def one_thread(fn):
    """Run BLAS/OpenMP single-threaded: at explorer sizes (<= 500 points) threads only add
    overhead, and on a busy CPU their spin-waiting is ruinous (measured on 2 busy cores, 100
    points: PCA 3.1 s -> 0.014 s, t-SNE 35 s -> 0.22 s)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(1):
            return fn(*args, **kwargs)

    return wrapper


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


@one_thread
def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    normed = unit(vectors)
    return np.clip(normed @ normed.T, -1.0, 1.0)


def _pad(coords: np.ndarray, dimensions: int) -> np.ndarray:
    """PCA of n points has at most n - 1 useful directions; fill the rest with zeros."""
    if coords.shape[1] < dimensions:
        coords = np.hstack([coords, np.zeros((coords.shape[0], dimensions - coords.shape[1]))])
    return coords


def pca(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    components = min(dimensions, vectors.shape[0], vectors.shape[1])
    # svd_solver="full" and sklearn's sign convention (svd_flip) make the result deterministic.
    return _pad(PCA(n_components=components, svd_solver="full").fit_transform(vectors), dimensions)


def tsne(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    perplexity = min(30.0, (len(vectors) - 1) / 3)  # perplexity must stay below the number of points
    return TSNE(n_components=dimensions, perplexity=perplexity, init="pca", random_state=SEED).fit_transform(vectors)


def umap(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    import umap as umap_learn  # imported late: numba compiles it on first use (seconds)

    reducer = umap_learn.UMAP(n_components=dimensions, n_neighbors=min(15, len(vectors) - 1), init="pca",
                              random_state=SEED)  # a seed makes UMAP single-threaded, and repeatable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state" is expected
        return reducer.fit_transform(vectors)


def anchor_axes(vectors: np.ndarray, start: np.ndarray, end: np.ndarray, dimensions: int) -> np.ndarray | None:
    """x: where each point falls along start -> end (0 at start, 1 at end); y, z: PCA of the rest.

    None when the two anchors have the same vector (nothing to measure along).
    """
    start, end = unit(start[None])[0], unit(end[None])[0]
    direction = end - start
    length2 = float(direction @ direction)
    if length2 < 1e-12:
        return None
    offsets = vectors - start
    x = offsets @ direction / length2
    residual = offsets - np.outer(x, direction)
    return np.hstack([x[:, None], pca(residual, dimensions - 1)])


@one_thread
def project(vectors: np.ndarray, method: str = "pca", dimensions: int = 2, anchors: tuple | None = None):
    """(coordinates, notice or None, axis titles). Too few points for t-SNE/UMAP: PCA, with a notice."""
    vectors = unit(vectors)
    count = len(vectors)
    pcs = tuple(f"PC {i + 1}" for i in range(dimensions))
    if method in MIN_POINTS and count < MIN_POINTS[method]:
        notice = f"{NAMES[method]} needs at least {MIN_POINTS[method]} words, got {count}: showing PCA"
        return pca(vectors, dimensions), notice, pcs
    if method == "tsne":
        return tsne(vectors, dimensions), None, tuple(f"t-SNE {i + 1}" for i in range(dimensions))
    if method == "umap":
        return umap(vectors, dimensions), None, tuple(f"UMAP {i + 1}" for i in range(dimensions))
    if method == "anchors":
        (start_word, start), (end_word, end) = anchors
        coords = anchor_axes(vectors, start, end, dimensions)
        if coords is None:
            return pca(vectors, dimensions), f"'{start_word}' and '{end_word}' have the same vector here: showing PCA", pcs
        rest = tuple(f"rest, PC {i + 1}" for i in range(dimensions - 1))
        return coords, None, (f"{start_word} → {end_word}",) + rest
    return pca(vectors, dimensions), None, pcs


def neighbours(similarity: np.ndarray, words: list[str], index: int, k: int = 5) -> list[tuple[str, float]]:
    """The k words most similar to words[index] (itself excluded), best first."""
    order = [j for j in np.argsort(-similarity[index], kind="stable") if j != index]
    return [(words[j], float(similarity[index, j])) for j in order[:k]]


@one_thread
def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """How far two spaces agree on which pairs of words are close.

    spearman: rank correlation of the pairwise similarities (1: same order, 0: unrelated);
    flipped: the share of pairs-of-pairs whose order flips, (1 - Kendall's tau) / 2.
    """
    upper = np.triu_indices(len(a), 1)
    x, y = a[upper], b[upper]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"spearman": None, "flipped": None, "pairs": len(x)}  # undefined: too few pairs, or all equal
    tau = kendalltau(x, y).statistic
    return {"spearman": float(spearmanr(x, y).statistic), "flipped": float((1 - tau) / 2), "pairs": len(x)}


@one_thread
def rank_shifts(a: np.ndarray, b: np.ndarray, words: list[str], k: int = 5) -> list[dict]:
    """The word pairs whose closeness rank moves most between two spaces (1 = the closest pair)."""
    upper = np.triu_indices(len(a), 1)
    x, y = a[upper], b[upper]
    rank_a, rank_b = rankdata(-x, method="min"), rankdata(-y, method="min")
    shift = np.abs(rank_a - rank_b)
    rows = []
    for p in np.argsort(-shift, kind="stable")[:k]:
        i, j = upper[0][p], upper[1][p]
        rows.append({"pair": f"{words[i]} · {words[j]}", "cos_a": float(x[p]), "rank_a": int(rank_a[p]),
                     "cos_b": float(y[p]), "rank_b": int(rank_b[p]), "of": len(x)})
    return rows
