"""Which items a user would pick: an item-to-item model of who rated what
in the training matrix (its pattern, not its values), the half of
recommend's default order that GLocal-K cannot give (docs/model.md §13).

GLocal-K predicts how a user would rate an item if they rated it. A top-N
list must also ask whether they would pick it at all: ranked by predicted
rating alone, obscure items with a few high ratings fill the lists
(Cremonesi et al. 2010). The pick model scores that second question.

EASE (Steck 2019) where the catalogue allows: with X the users x items 0/1
matrix of the training pattern, B = argmin |X - X B|^2 + lambda |B|^2 with
diag(B) = 0, in closed form P = (X^T X + lambda I)^-1, B = I - P / diag(P)
(each column j divided by P[j, j]). A user who picked the items S gets item
j the score sum over i in S of B[i, j]: row i of B is what picking i
suggests. Cost: m^3 / 3 flops for the Cholesky factor and 2 m^3 / 3 for
the inverse (about 30 s at 10,000 items on 2 cores), 8 m^2 bytes for the
Gram matrix, inverted in place.

Past EASE_MAX_ITEMS items the m x m Gram matrix is too large (8 GB at
32,000 items), and item-kNN takes its place: the cosine of two items'
binary columns, computed one block of rows at a time (a few times
BLOCK_BYTES of memory; time the sum over users of their rating count
squared, plus m^2 for the dense blocks each row's largest are kept from:
bench/pick_cost.py measured 2.5 s at 10,001 items, 15 s at 30,000 and 207 s
at 100,000 on 2 busy cores).

EASE's penalty lambda is chosen by how well it predicts held-out picks:
a HELD_OUT share of the training pattern is set aside at random, each of
PENALTIES is fitted on the rest, and the one whose top-10 lists of the
held-out users (SEARCH_USERS at most) score the highest NDCG is kept (the
best penalty ran from 25 to 1,000 over bench/topn.py's five files). The
search runs on the SEARCH_ITEMS most-rated items at most, so that it costs
len(PENALTIES) inversions of at most that size (about 20 s on 2 cores).

Either way each item keeps its NEIGHBOURS largest weights (by size), so
the fitted model is a sparse m x m matrix of at most m NEIGHBOURS entries
(8 m NEIGHBOURS bytes in a model file), and a user's scores cost their
rating count times NEIGHBOURS.
"""
import hashlib
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

PENALTIES = (10.0, 25.0, 60.0, 150.0, 400.0, 1000.0, 2500.0)   # EASE's lambdas tried
HELD_OUT = 0.1               # share of the training pattern the penalty is chosen on
SEARCH_ITEMS = 4_000         # the most-rated items the search runs on
SEARCH_USERS = 2_000         # held-out users whose lists score a penalty
TOP = 10                     # list length the penalty is scored at
EASE_MAX_ITEMS = 10_000      # EASE up to here (0.8 GB, ~30 s); item-kNN beyond
NEIGHBOURS = 500             # weights kept per item (bench/topn.py: 200 costs NDCG)
BLOCK_BYTES = 2**26          # float64 rows of m weights handled at once (64 MiB)
MIXES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)   # the predicted rating's weights tried (fit)
MIX = 0.5                    # ... and the one a fit without validation ratings takes
                             # (bench/topn.py: the best fixed mix over four files)
METHODS = ("ease", "cosine")
_LAST = {}                   # fit's last model, by its inputs (see fit)


@dataclass
class PickModel:
    """The fitted pick model: ``weights`` (CSR, m x m, float32), row i the
    weights picking item i gives the others; ``method`` ('ease' or
    'cosine'), its ``penalty`` (EASE's lambda; None for cosine), and
    ``mix``, the weight of the standardised predicted rating added to the
    standardised pick score in recommend's default order (ranking.py)."""
    weights: sp.csr_matrix
    method: str
    penalty: object
    mix: float = MIX

    def scores(self, pattern):
        """The pick scores (m x b, float64) of the users whose training
        patterns are the columns of ``pattern`` (m x b, sparse 0/1):
        weights^T @ pattern, as (pattern^T @ weights)^T so that no
        transposed copy of the weights is made. Cost: NEIGHBOURS per rating
        of those users."""
        S = sp.csr_matrix(pattern.T) @ self.weights
        return S.toarray().T.astype(np.float64)

    def similar(self, item):
        """The weights picking item position ``item`` gives every item (m,)."""
        W = self.weights
        row = np.zeros(W.shape[1])
        lo, hi = W.indptr[item], W.indptr[item + 1]
        row[W.indices[lo:hi]] = W.data[lo:hi]
        return row

    def grown(self, old_rows, n_items):
        """The same model over ``n_items`` items, old item k now at
        ``old_rows[k]`` (update's new items: no weights, given or received)."""
        W = self.weights.tocoo()
        W = sp.csr_matrix((W.data, (old_rows[W.row], old_rows[W.col])),
                          shape=(n_items, n_items))
        return PickModel(W, self.method, self.penalty, self.mix)


def fit(R, penalty=None, seed=0, neighbours=NEIGHBOURS, max_items=EASE_MAX_ITEMS):
    """The pick model of the training matrix ``R`` (items x users, sparse;
    every stored entry is a pick, whatever its value): EASE with
    ``penalty`` (None: chosen, see the module; ``seed`` draws the held-out
    picks) up to ``max_items`` items, item-kNN beyond, ``neighbours``
    weights kept per item. The last model fitted is kept and handed out
    again (a copy, its weights shared) for the same inputs: tune fits many
    networks on one training pattern."""
    pattern = binary(R)
    key = (R.shape, hashlib.sha256(pattern.indptr.tobytes() + pattern.indices.tobytes())
           .digest(), penalty, seed, neighbours, max_items)
    if key not in _LAST:
        if R.shape[0] > max_items:
            model = PickModel(_cosine(pattern, neighbours), "cosine", None)
        else:
            penalty = choose_penalty(pattern, seed) if penalty is None else penalty
            model = PickModel(_keep_largest(_ease(_gram(pattern), penalty), neighbours),
                              "ease", float(penalty))
        _LAST.clear()
        _LAST[key] = model
    return replace(_LAST[key])


def choose_penalty(pattern, seed=0):
    """The penalty of PENALTIES whose EASE, fitted on the 0/1 items x users
    ``pattern`` less a random HELD_OUT share of its entries (drawn with
    ``seed``), lists the held-out entries best (NDCG at TOP), on the
    SEARCH_ITEMS most-rated items and SEARCH_USERS held-out users at most;
    ties to the smaller. The first penalty if nothing is held out."""
    from . import metrics
    rng = np.random.default_rng(seed)
    counts = np.diff(pattern.indptr)
    items = np.sort(np.argsort(-counts, kind="stable")[:SEARCH_ITEMS])
    coo = pattern[items].tocoo()
    held = rng.random(coo.nnz) < HELD_OUT
    users = np.unique(coo.col[held])
    if users.size > SEARCH_USERS:
        users = np.sort(rng.choice(users, SEARCH_USERS, replace=False))
    if not users.size:
        return PENALTIES[0]
    shape = (items.size, pattern.shape[1])
    kept = sp.csr_matrix((np.ones(np.count_nonzero(~held)), (coo.row[~held], coo.col[~held])),
                         shape=shape)
    asked = kept[:, users].T.tocsr()                          # users x items
    truth = sp.csr_matrix((np.ones(np.count_nonzero(held)), (coo.col[held], coo.row[held])),
                          shape=shape[::-1])[users]
    relevant = [truth.indices[truth.indptr[k]:truth.indptr[k + 1]] for k in range(users.size)]
    G = _gram(kept)
    scores = []
    for penalty in PENALTIES:
        S = np.asarray(asked @ _ease(G.copy(), penalty))
        S[np.repeat(np.arange(users.size), np.diff(asked.indptr)), asked.indices] = -np.inf
        top = np.argpartition(-S, TOP - 1, axis=1)[:, :TOP] if S.shape[1] > TOP else \
            np.broadcast_to(np.arange(S.shape[1]), (users.size, S.shape[1]))
        order = np.argsort(-np.take_along_axis(S, top, axis=1), axis=1, kind="stable")
        lists = np.take_along_axis(top, order, axis=1)
        scores.append(metrics.top_n(list(lists), relevant, TOP)[f"ndcg@{TOP}"])
    return PENALTIES[int(np.argmax(scores))]


def binary(R):
    """The 0/1 pattern of a sparse matrix's stored entries (CSR, float64)."""
    R = sp.csr_matrix(R)
    return sp.csr_matrix((np.ones(R.nnz), R.indices, R.indptr), shape=R.shape)


def _gram(pattern):
    """The dense items x items co-occurrence counts pattern pattern^T."""
    return (pattern @ pattern.T).toarray()


def _ease(G, penalty):
    """EASE's B (m x m, float64, zero diagonal) from the Gram matrix ``G``
    (C-ordered, overwritten), through the Cholesky inverse of
    G + penalty I in place: LAPACK works on G^T, the same symmetric matrix
    in the Fortran order it needs (G itself it would copy), and its lower
    triangle is G's upper."""
    import scipy.linalg        # here: a model that only answers never needs it
    G[np.diag_indices_from(G)] += penalty
    lapack = scipy.linalg.lapack
    factor, info = lapack.dpotrf(G.T, lower=True, overwrite_a=True, clean=False)
    inverse, info2 = lapack.dpotri(factor, lower=True, overwrite_c=True)
    if info or info2:           # X^T X + lambda I is positive definite for lambda > 0
        raise ValueError(f"EASE: the Gram matrix is not positive definite (penalty {penalty})")
    P = inverse.T                             # G's memory again, C-ordered
    _mirror_upper(P)                          # dpotri fills one triangle only
    diag = np.diag(P).copy()
    P /= -diag                                # B = I - P / diag(P), columnwise
    np.fill_diagonal(P, 0.0)
    return P


def _block_rows(m):
    """Rows of m float64 values that fill BLOCK_BYTES (at least 1)."""
    return max(1, BLOCK_BYTES // (8 * m))


def _mirror_upper(P):
    """Copy the upper triangle of the square ``P`` onto its lower one, in
    place, a block of rows at a time (no m x m index arrays)."""
    rows = _block_rows(P.shape[0])
    for lo in range(0, P.shape[0], rows):
        hi = min(lo + rows, P.shape[0])
        P[lo:hi, :lo] = P[:lo, lo:hi].T
        block = P[lo:hi, lo:hi]
        lower = np.tril_indices(hi - lo, -1)
        block[lower] = block.T[lower]


def _cosine(pattern, neighbours):
    """Item-kNN weights: the cosine of two items' 0/1 user columns, each row's
    ``neighbours`` largest kept, a block of rows at a time (CSR, float32)."""
    counts = np.diff(pattern.indptr).astype(np.float64)
    norms = np.sqrt(np.maximum(counts, 1.0))
    columns = pattern.T.tocsr()               # once, not once per block
    blocks, rows = [], _block_rows(pattern.shape[0])
    for lo in range(0, pattern.shape[0], rows):
        hi = min(lo + rows, pattern.shape[0])
        S = (pattern[lo:hi] @ columns).toarray()
        S /= norms[lo:hi, None] * norms[None, :]
        S[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        blocks.append(_keep_largest(S, neighbours))
    return sp.vstack(blocks, format="csr")


def _keep_largest(B, neighbours):
    """CSR float32 of the dense rows ``B`` with each row's ``neighbours``
    entries of largest size kept, zeros dropped."""
    m, n = B.shape
    k = min(neighbours, n)
    rows, step = [], _block_rows(n)
    for lo in range(0, m, step):            # argpartition's int64 index per block only
        block = np.abs(B[lo:lo + step])
        keep = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n else \
            np.broadcast_to(np.arange(n), block.shape)
        keep = np.sort(keep, axis=1)
        values = np.take_along_axis(B[lo:lo + step], keep, axis=1)
        rows.append(sp.csr_matrix((values.ravel().astype(np.float32), keep.ravel(),
                                   np.arange(0, values.size + 1, k)), shape=(values.shape[0], n)))
    W = sp.vstack(rows, format="csr")
    W.eliminate_zeros()
    return W
