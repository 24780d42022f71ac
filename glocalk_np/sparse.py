"""A CSR sparsity pattern together with the index arrays the kernels need.

The training matrix's pattern never changes during a fit, so its entry
coordinates and its CSC order (for products with the transpose) are built
once. The global convolution's output lives on the gk x gk neighbourhood of the
observed entries (``neighbourhood``); of that, only the entries the ReLU
keeps are fed to the network (``positive``).
"""
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .kernels import cpu


@dataclass(frozen=True)
class Pattern:
    """Positions of the stored entries of an m x n matrix, in CSR order.

    Values live in separate arrays of length nnz, in this same order, so one
    pattern serves the ratings, the residuals and the convolution output.
    """
    indptr: np.ndarray      # m + 1, CSR row pointers
    indices: np.ndarray     # nnz, column of each entry
    rows: np.ndarray        # nnz, row of each entry
    csc_indptr: np.ndarray  # n + 1, column pointers of the transpose walk
    csc_rows: np.ndarray    # nnz, row of each entry in CSC order
    csc_perm: np.ndarray    # nnz, CSR position of each entry in CSC order
    shape: tuple

    @classmethod
    def from_coords(cls, rows, cols, shape):
        """Pattern of entries given in CSR order (rows ascending, then cols)."""
        m, n = shape
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
        perm = np.lexsort((rows, cols))  # by column, then row
        csc_indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=n), out=csc_indptr[1:])
        return cls(indptr, cols, rows, csc_indptr, rows[perm], perm, (m, n))

    @classmethod
    def from_csr(cls, X):
        X = sp.csr_matrix(X)
        X.sort_indices()
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        return cls.from_coords(rows, X.indices, X.shape)

    @property
    def nnz(self):
        return self.indices.size

    def positive(self, values, empty=None, blocks=8):
        """The entries where ``values`` (in CSR order) are > 0: their pattern X,
        their values in X's CSR order (x) and in its CSC order (x_csc), and
        pos, each entry's position in X (-1 where dropped).
        ``empty(name, shape, dtype)`` supplies the arrays (an engine's kept
        buffers); fresh ones by default. The rows are worked in ``blocks``
        (a few per thread). Cost: two sweeps over nnz and one over the kept
        entries, no sorting: both orders carry over."""
        if empty is None:
            def empty(name, shape, dtype):
                return np.empty(shape, dtype)
        (m, n), index, real = self.shape, np.int64, values.dtype
        bounds = np.linspace(0, m, min(blocks, m) + 1).astype(np.int64)
        indptr = empty("pos.indptr", (m + 1,), index)
        indptr[0] = 0
        cpu.count_positive_rows(self.indptr, values, indptr)
        np.cumsum(indptr, out=indptr)
        count = int(indptr[-1])
        pos = empty("pos.pos", (self.nnz,), index)
        if count == self.nnz:              # nothing dropped (e.g. every weight of G > 0)
            x_csc = empty("pos.x_csc", (count,), real)
            cpu.gather(values, self.csc_perm, x_csc)
            cpu.iota(pos)
            return self, values, x_csc, pos
        indices, rows = (empty(f"pos.{name}", (count,), index) for name in ("indices", "rows"))
        x = empty("pos.x", (count,), real)
        col_counts = empty("pos.col_counts", (bounds.size - 1, n), index)
        cpu.compact_rows(self.indptr, self.indices, values, bounds, indptr, indices, rows, x,
                         pos, col_counts)
        csc_indptr = empty("pos.csc_indptr", (n + 1,), index)
        csc_indptr[0] = 0
        np.cumsum(col_counts.sum(axis=0), out=csc_indptr[1:])
        # block b's entries of column j follow those of the blocks above it
        starts = np.cumsum(col_counts, axis=0) - col_counts + csc_indptr[:-1]
        csc_rows, perm = (empty(f"pos.{name}", (count,), index) for name in ("csc_rows", "perm"))
        x_csc = empty("pos.x_csc", (count,), real)
        cpu.csr_to_csc(indptr, indices, x, bounds, starts, csc_rows, perm, x_csc)
        X = Pattern(indptr, indices, rows, csc_indptr, csc_rows, perm, self.shape)
        return X, x, x_csc, pos

    def neighbourhood(self, gk):
        """Pattern of every position within gk // 2 rows and columns of a
        stored entry: where a gk x gk 'SAME' convolution of X can be non-zero.
        It is the pattern of band_m @ X @ band_n with 0/1 band matrices."""
        m, n = self.shape

        def band(k):
            r = min(gk // 2, k - 1)   # a kernel wider than the matrix reaches k - 1 away
            return sp.diags([np.ones(k)] * (2 * r + 1), list(range(-r, r + 1)),
                            shape=(k, k), format="csr")

        X = sp.csr_matrix((np.ones(self.nnz), self.indices, self.indptr), shape=self.shape)
        S = (band(m) @ X @ band(n)).tocsr()
        S.sort_indices()
        return Pattern.from_csr(S)
