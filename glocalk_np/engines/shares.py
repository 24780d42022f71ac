"""One share of the users (network.py's "Shares"): the CPU operations on a
block of users' columns of R, their part of the parameters, and how the
parameters and gradients of the whole split into shares and come back.

A share of users lo..hi-1 holds those columns of R, numbered from 0, for
every product with the ratings, and for the convolution the same rows with
the gk // 2 users on either side (the halo: data, copied once). Its
convolution is computed on the halo's neighbourhood pattern, and only the
entries in its own columns feed its second pass, so each output entry
belongs to exactly one share. An engine over shares supplies ``reduce``
(the sum of an array over the shares, the same result on each) and makes
one share the leader.
"""
import numpy as np
import scipy.sparse as sp

from ..params import user_axes
from ..sparse import Pattern
from .cpu import CpuOps, _blocks


def share_params(params, lo, hi):
    """The arrays a share of users lo..hi-1 holds: copies of its users'
    slices, the replicated arrays themselves."""
    axes = user_axes(params)
    return {k: (np.take(v, np.arange(lo, hi), axis=axes[k]) if k in axes else v)
            for k, v in params.items()}


def gather_grads(parts, bounds, template):
    """One gradient dict like ``template`` from each share's: user slices
    put in place, replicated arrays from share 0 (every share holds them
    alike). ``bounds``: the shares' (lo, hi)."""
    axes = user_axes(template)
    out = {}
    for k, v in parts[0].items():
        if k not in axes:
            out[k] = v
            continue
        whole = np.empty(np.shape(template[k]), dtype=v.dtype)
        for part, (lo, hi) in zip(parts, bounds):
            index = [slice(None)] * whole.ndim
            index[axes[k]] = slice(lo, hi)
            whole[tuple(index)] = part[k]
        out[k] = whole
    return out


def even_bounds(n_users, shares):
    """(lo, hi) of ``shares`` blocks of users as even as they come."""
    edges = np.linspace(0, n_users, shares + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def ring(R, lo, hi, halo):
    """(the columns of the items x users CSR matrix ``R`` a share of users
    lo..hi-1 holds: its own and ``halo`` users on either side, and where
    its own begin in them)."""
    left, right = max(0, lo - halo), min(R.shape[1], hi + halo)
    X = sp.csr_matrix(R)[:, left:right].tocsr()
    X.sort_indices()
    return X, lo - left


class ShareOps(CpuOps):
    """network.Operations for a share of ``n_own`` users of ``n_users``:
    ``ring`` holds their columns of R from column ``offset`` on, and the
    halo around them (see ring; CSR, ratings > 0); ``reduce(name, a)`` sums
    over the shares. Means over users divide by all n_users."""

    def __init__(self, ring, offset, n_own, n_users, reduce, leader, dtype, lambda_2, lambda_s,
                 dot_scale):
        own = ring[:, offset:offset + n_own].tocsr()
        own.sort_indices()
        super().__init__(Pattern.from_csr(own), own.data.astype(dtype), lambda_2, lambda_s,
                         dot_scale)
        self.conv_R, self.conv_values = Pattern.from_csr(ring), ring.data.astype(dtype)
        self.offset, self.n_users = offset, n_users
        self.leader, self._reduce = leader, reduce

    def reduce(self, name, a):
        return self._reduce(name, a)

    def second_input(self, S, pre):
        """The kept entries in this share's own columns, numbered from 0:
        the halo's are another share's."""
        lo, n = self.offset, self.R.shape[1]
        cols = S.indices
        fed = np.where((cols >= lo) & (cols < lo + n), pre, 0)
        X, x, x_csc, pos = S.positive(fed, self.empty, _blocks(S.shape[0]))
        X = Pattern(X.indptr, X.indices - lo, X.rows, X.csc_indptr[lo:lo + n + 1],
                    X.csc_rows, X.csc_perm, (S.shape[0], n))
        return X, x, x_csc, pos
