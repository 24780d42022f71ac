"""Numba CPU kernels: small, typed, one job each, compiled once and cached.

Notation for the cost model: m items (rows), n users (columns), h hidden
width, d kernel dimension, nnz stored entries of the sparse matrix at hand.
Every kernel but conv_neighbours (set-up, which returns its map) writes
into output arrays the caller owns, and each is generic over float32/float64
(one compiled specialisation per dtype, cached on disk).

No kernel uses ``fastmath``: every floating-point operation is IEEE's, so
LLVM may compile a kernel however it likes (vector width, unrolling, the
CPU it tunes for) without changing one bit of what it computes. That is
what makes a run repeat bit for bit whether the kernels were just compiled
or loaded from Numba's cache (tests/test_repeatable.py): Numba links a
parallel loop's body into the calling kernel and optimises it a second time
there; a fresh process runs the first copy, a process that loaded the cache
the second, and under fastmath's reassociation the two had summed in
different orders on some CPUs. The sums that need SIMD to be fast (dot
products, sums of squares) are written with explicit vectors in a fixed
order instead (fixed_dot below), which is also the same order on every x86
CPU, so results do not depend on what the compiler was told about it.
The kernels whose products can underflow (the sparse products, pair_dot,
the local kernel and its gradient, the convolution and its gradient, the
output layer and the sigmoids) flush subnormals to zero in each iteration
of their parallel loop (below), as TensorFlow's CPU kernels do; the copies,
gathers and plain sums do not.

Everything the kernels call is in this file: Numba's on-disk cache notices
edits to a kernel's own file only, so a helper in another module could
change without the cached kernels being compiled again.
"""
import platform

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic


# ---------------------------------------------------------------- flush to zero
# Once the sigmoids saturate, products of small gradients and weights fall
# below float32's smallest normal number; x86 handles such subnormal operands
# and results in microcode, which made the sparse products 10-60x slower in
# the middle of a fit. Those kernels set FTZ and DAZ in the running thread's
# MXCSR for each iteration's work and restore the old value, so nothing outside the
# kernels (NumPy, the user's code) sees the change. On other processors both
# calls do nothing.

X86 = platform.machine().lower() in ("x86_64", "amd64")
FTZ_DAZ = 0x8040


def _mxcsr(builder, name, slot):
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.x86.sse.{name}")
    builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])


@intrinsic
def flush_denormals(typingctx):
    """Turn on FTZ and DAZ in this thread; returns the previous MXCSR."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        if not X86:
            return ir.Constant(i32, 0)
        slot = cgutils.alloca_once(builder, i32)
        _mxcsr(builder, "stmxcsr", slot)
        old = builder.load(slot)
        builder.store(builder.or_(old, ir.Constant(i32, FTZ_DAZ)), slot)
        _mxcsr(builder, "ldmxcsr", slot)
        return old
    return types.uint32(), codegen


@intrinsic
def restore_fpenv(typingctx, old):
    """Put back the MXCSR that flush_denormals returned."""
    def codegen(context, builder, signature, args):
        if X86:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            _mxcsr(builder, "ldmxcsr", slot)
        return context.get_dummy_value()
    return types.void(types.uint32), codegen


# ---------------------------------------------------------------- fixed-order sums
# The loop vectoriser vectorises a sum only if it may reassociate it, and then
# the order is whatever the compiler chose. These intrinsics write the vector
# code themselves, in plain IEEE operations. Term k of a length-n sum goes to
# lane k % 8 of accumulator (k // 8) % 2 while whole blocks of 16 last, then a
# remaining whole group of 8 to accumulator 0, and the last n % 8 terms to the
# top lanes of accumulator 1, read as the last 8 terms with the ones already
# counted set to zero (below 8 terms in all, they are added one by one at the
# end instead). The accumulators are added, and the lanes halved pairwise
# (l + l+4, then +2, then +1). Vectors of 8 (two SSE or one AVX register of
# float32) are legalised to what the CPU has lane for lane, and no
# multiply-add is fused, so every x86-64 CPU computes the same bits. Several
# dots with one left operand (fixed_dots4) share its loads and keep eight
# accumulators busy; each is summed in the same order. Cost: n per sum.

LANES, CHAINS = 8, 2


def _float_vectors(arrays):
    """The dtype of same-dtype, 1-D, C-contiguous float arrays, else None."""
    first = arrays[0]
    ok = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
             and a.dtype == first.dtype for a in arrays)
    return first.dtype if ok and first.dtype in (types.float32, types.float64) else None


def _sums_codegen(widen):
    """Code for fixed-order sums over the length of the first array a: of
    a[k] alone (one array), or of a[k] * b[k] for each further array b,
    returned as one value or a tuple; in the arrays' float type or, with
    ``widen``, each term widened to double first."""
    def codegen(context, builder, signature, args):
        arrays = [context.make_array(t)(context, builder, v)
                  for t, v in zip(signature.args, args)]
        elem = context.get_value_type(signature.args[0].dtype)
        acc = ir.DoubleType() if widen else elem
        intp, i32 = context.get_value_type(types.intp), ir.IntType(32)
        align = elem.get_abi_size(context.target_data)

        def const(value):
            return ir.Constant(intp, value)

        def load(array, k, vector):
            """array[k:k+8] as a vector or array[k], widened if asked."""
            ptr = builder.gep(array.data, [k], inbounds=True)
            if vector:
                value = builder.load(builder.bitcast(ptr, ir.VectorType(elem, LANES).as_pointer()),
                                     align=align)
            else:
                value = builder.load(ptr)
            return builder.fpext(value, ir.VectorType(acc, LANES) if vector else acc) \
                if widen else value

        def terms(k, vector):
            """Each sum's terms at k (a vector of 8 or a scalar)."""
            a = load(arrays[0], k, vector)
            return [a] if len(arrays) == 1 else [builder.fmul(a, load(b, k, vector))
                                                 for b in arrays[1:]]

        def add_to(slots, values):
            for slot, value in zip(slots, values):
                builder.store(builder.fadd(builder.load(slot), value), slot)

        n = cgutils.unpack_tuple(builder, arrays[0].shape, 1)[0]
        sums = max(1, len(arrays) - 1)
        zero = ir.Constant(ir.VectorType(acc, LANES), [ir.Constant(acc, 0.0)] * LANES)
        chains = [[cgutils.alloca_once_value(builder, zero) for _ in range(sums)]
                  for _ in range(CHAINS)]
        block = LANES * CHAINS
        k_block = builder.mul(builder.udiv(n, const(block)), const(block))
        k_group = builder.mul(builder.udiv(n, const(LANES)), const(LANES))
        with cgutils.for_range_slice(builder, const(0), k_block, const(block), intp) as (k, _):
            for c in range(CHAINS):
                add_to(chains[c], terms(builder.add(k, const(c * LANES)), True))
        with builder.if_then(builder.icmp_unsigned(">", k_group, k_block)):
            add_to(chains[0], terms(k_block, True))
        scalar_from = cgutils.alloca_once_value(builder, k_group)
        partial = builder.and_(builder.icmp_unsigned(">", n, k_group),
                               builder.icmp_unsigned(">=", n, const(LANES)))
        with builder.if_then(partial):
            counted = builder.trunc(builder.sub(const(LANES), builder.sub(n, k_group)), i32)
            fresh = builder.icmp_unsigned(">=", ir.Constant(ir.VectorType(i32, LANES),
                                                            list(range(LANES))),
                                          _splat(builder, counted, LANES))
            add_to(chains[1], [builder.select(fresh, t, zero)
                               for t in terms(builder.sub(n, const(LANES)), True)])
            builder.store(n, scalar_from)
        totals = []
        for s in range(sums):
            v = builder.fadd(builder.load(chains[0][s]), builder.load(chains[1][s]))
            while v.type.count > 1:
                half = v.type.count // 2
                lanes = ir.VectorType(i32, half)
                v = builder.fadd(
                    builder.shuffle_vector(v, v, ir.Constant(lanes, list(range(half)))),
                    builder.shuffle_vector(v, v, ir.Constant(lanes, list(range(half, 2 * half)))))
            totals.append(cgutils.alloca_once_value(
                builder, builder.extract_element(v, ir.Constant(i32, 0))))
        with cgutils.for_range_slice(builder, builder.load(scalar_from), n, const(1),
                                     intp) as (k, _):
            add_to(totals, terms(k, False))
        values = [builder.load(t) for t in totals]
        return values[0] if len(values) == 1 else \
            context.make_tuple(builder, signature.return_type, values)
    return codegen


def _splat(builder, value, count):
    """A vector of ``count`` copies of the scalar ``value``."""
    i32 = ir.IntType(32)
    one = builder.insert_element(ir.Constant(ir.VectorType(value.type, count), None), value,
                                 ir.Constant(i32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, count), [0] * count))


@intrinsic
def fixed_dot(typingctx, a, b):
    """a . b for 1-D C-contiguous arrays of one float dtype, in that dtype,
    in the fixed order above (a's length)."""
    dtype = _float_vectors((a, b))
    if dtype is not None:
        return dtype(a, b), _sums_codegen(widen=False)


@intrinsic
def fixed_dots4(typingctx, a, b0, b1, b2, b3):
    """(a . b0, a . b1, a . b2, a . b3), each exactly as fixed_dot sums it."""
    dtype = _float_vectors((a, b0, b1, b2, b3))
    if dtype is not None:
        return types.UniTuple(dtype, 4)(a, b0, b1, b2, b3), _sums_codegen(widen=False)


@intrinsic
def fixed_dot_f64(typingctx, a, b):
    """fixed_dot with every element widened to float64 before the product."""
    if _float_vectors((a, b)) is not None:
        return types.float64(a, b), _sums_codegen(widen=True)


@intrinsic
def fixed_sum(typingctx, a):
    """The sum of a 1-D C-contiguous float array, in its dtype, in the fixed
    order above."""
    dtype = _float_vectors((a,))
    if dtype is not None:
        return dtype(a), _sums_codegen(widen=False)


# ---------------------------------------------------------------- kernels


@njit(cache=True, inline="always")
def _row_axpy(row, B, indices, data, start, end):
    """row += sum_e data[e] * B[indices[e]] over entries start..end. Four
    entries are folded per sweep of ``row``, so it is loaded and stored once
    per four rows of B (1.4x faster than one at a time at ML-1M's size)."""
    h = row.size
    e = start
    while e + 4 <= end:
        v0, v1, v2, v3 = data[e], data[e + 1], data[e + 2], data[e + 3]
        b0, b1, b2, b3 = B[indices[e]], B[indices[e + 1]], B[indices[e + 2]], B[indices[e + 3]]
        for k in range(h):
            row[k] += v0 * b0[k] + v1 * b1[k] + v2 * b2[k] + v3 * b3[k]
        e += 4
    for e in range(e, end):
        v0, b0 = data[e], B[indices[e]]
        for k in range(h):
            row[k] += v0 * b0[k]


@njit(cache=True, inline="always")
def _row_dots(a, B, indices, start, end, out):
    """out[e] = a . B[indices[e]] over entries start..end, four entries to
    each load of ``a`` (fixed_dots4: the same sums as fixed_dot's)."""
    e = start
    while e + 4 <= end:
        out[e], out[e + 1], out[e + 2], out[e + 3] = fixed_dots4(
            a, B[indices[e]], B[indices[e + 1]], B[indices[e + 2]], B[indices[e + 3]])
        e += 4
    for e in range(e, end):
        out[e] = fixed_dot(a, B[indices[e]])


@njit(parallel=True, cache=True)
def spmm(indptr, indices, data, B, out, accumulate):
    """out = X @ B, or out += X @ B when ``accumulate``, for CSR X (rows
    indptr/indices/data). Cost: nnz * h. Also serves X^T @ B when given X's
    CSC arrays (see Pattern)."""
    for i in prange(indptr.size - 1):
        fpenv = flush_denormals()
        if not accumulate:
            out[i, :] = 0
        _row_axpy(out[i], B, indices, data, indptr[i], indptr[i + 1])
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def sddmm(indptr, indices, A, B, out):
    """out[e] = A[i] . B[indices[e]] for each stored entry e = (i, j) of a CSR
    pattern. Cost: nnz * h."""
    for i in prange(indptr.size - 1):
        fpenv = flush_denormals()
        _row_dots(A[i], B, indices, indptr[i], indptr[i + 1], out)
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def gather(x, idx, out):
    """out[t] = x[idx[t]]: values into another order (NumPy's take is
    serial). Cost: len(idx)."""
    for t in prange(idx.size):
        out[t] = x[idx[t]]


@njit(parallel=True, cache=True)
def column_sums(indptr, indices, x, partial):
    """partial[b, j] = the float64 sum of x over the entries in column j of
    the b-th block of rows (the caller sums the blocks; NumPy's bincount
    is serial). Cost: nnz + blocks * n."""
    m, blocks = indptr.size - 1, partial.shape[0]
    for b in prange(blocks):
        acc = partial[b]
        acc[:] = 0
        for i in range((b * m) // blocks, ((b + 1) * m) // blocks):
            for e in range(indptr[i], indptr[i + 1]):
                acc[indices[e]] += x[e]


@njit(parallel=True, cache=True)
def iota(out):
    """out[t] = t. Cost: size."""
    for t in prange(out.size):
        out[t] = t


@njit(parallel=True, cache=True)
def copy_cast(src, dst):
    """dst[:] = src in dst's dtype: the flat parameter and gradient vectors
    (NumPy's casting copy is serial). Cost: size."""
    for t in prange(src.size):
        dst[t] = src[t]


@njit(parallel=True, cache=True)
def pair_dot(rows, cols, A, B, out):
    """out[e] = A[rows[e]] . B[cols[e]] for arbitrary pairs (predictions).
    Cost: len(rows) * h."""
    for e in prange(rows.size):
        fpenv = flush_denormals()
        out[e] = fixed_dot(A[rows[e]], B[cols[e]])
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def local_kernel(W, U, VT, K, Weff, sq_sums):
    """K = max(0, 1 - |U_i - V_j|^2), Weff = W * K, and per row i the float64
    sums of K^2 and W^2 into sq_sums[i, 0:2]. VT is V transposed (d x n_out)
    so the inner loop runs over contiguous j. Cost: n_in * n_out * (3d + 4)."""
    n_in, n_out = W.shape
    d = U.shape[1]
    one = W.dtype.type(1)
    zero = W.dtype.type(0)
    for i in prange(n_in):
        fpenv = flush_denormals()
        dist = np.zeros(n_out, dtype=W.dtype)
        for t in range(d):
            u = U[i, t]
            vt = VT[t]
            for j in range(n_out):
                diff = u - vt[j]
                dist[j] += diff * diff
        for j in range(n_out):
            k = max(one - dist[j], zero)
            K[i, j] = k
            Weff[i, j] = W[i, j] * k
        sq_sums[i, 0] = fixed_dot_f64(K[i], K[i])
        sq_sums[i, 1] = fixed_dot_f64(W[i], W[i])
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def local_kernel_grad(dWeff, W, K, U, VT, lambda_2, lambda_s, dW, dU, partial):
    """Chain rule through Weff = W * K with the layer's regulariser:
    dW = dWeff * K + lambda_2 W; dD = dloss/d(|U_i - V_j|^2)
    = -(dWeff * W + lambda_s K) where K > 0, else 0 (TF's max(0, .) sends no
    gradient through the clipped side); row by row while dD[i] is in L1,
    dU_i = 2 (U_i sum_j dD_ij - sum_j dD_ij V_j), and for dV the float64
    column sums over each block of rows of dD_ij U_it into partial[blk, t]
    and of dD_ij into partial[blk, d] (the caller sums the blocks). dD is
    never stored: a whole n_in x n_out array written and read twice cost
    more than the products. Cost: n_in * n_out * (5 + 4d)."""
    n_in, n_out = W.shape
    d = U.shape[1]
    zero = W.dtype.type(0)
    blocks = partial.shape[0]
    for blk in prange(blocks):
        fpenv = flush_denormals()
        acc = partial[blk]
        acc[:] = 0
        row = np.empty(n_out, dtype=W.dtype)
        for i in range((blk * n_in) // blocks, ((blk + 1) * n_in) // blocks):
            for j in range(n_out):
                k = K[i, j]
                g = dWeff[i, j]
                w = W[i, j]
                dW[i, j] = g * k + lambda_2 * w
                row[j] = -(g * w + lambda_s * k) if k > 0 else zero
            total = fixed_sum(row)
            for t in range(d):
                u = U[i, t]
                dU[i, t] = 2 * (u * total - fixed_dot(row, VT[t]))
                col = acc[t]
                for j in range(n_out):
                    col[j] += row[j] * u
            col = acc[d]
            for j in range(n_out):
                col[j] += row[j]
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def conv_neighbours(indptr, indices, n_cols, s_indptr, s_indices, gk):
    """For each stored entry e = (p, q) of R and each kernel cell (a, b), the
    position in the support pattern S of the output entry it feeds,
    (p - a + r, q - b + r) with r = gk // 2, or -1 outside the matrix.
    One-time set-up per training matrix. Cost: nnz * gk^2 * log(row length)."""
    m = indptr.size - 1
    r = gk // 2
    nbr = np.full((indices.size, gk * gk), -1, dtype=np.int64)
    for p in prange(m):
        for e in range(indptr[p], indptr[p + 1]):
            q = indices[e]
            for a in range(gk):
                i = p - a + r
                if i < 0 or i >= m:
                    continue
                lo, hi = s_indptr[i], s_indptr[i + 1]
                for b in range(gk):
                    j = q - b + r
                    if j < 0 or j >= n_cols:
                        continue
                    nbr[e, a * gk + b] = lo + np.searchsorted(s_indices[lo:hi], j)
    return nbr


@njit(parallel=True, cache=True)
def conv_forward(indptr, data, nbr, s_indptr, G, out):
    """Cross-correlation of R with the gk x gk kernel G ('SAME', zero padding),
    evaluated on the support pattern S: out[s] = sum_{a,b} G[a, b] R[i+a-r, j+b-r].
    Each thread owns one output row i and gathers from input rows i-r..i+r,
    so no two threads write the same place. Cost: nnz * gk^2."""
    gk = G.shape[0]
    r = gk // 2
    m = indptr.size - 1
    for i in prange(m):
        fpenv = flush_denormals()
        out[s_indptr[i]:s_indptr[i + 1]] = 0
        for a in range(gk):
            p = i + a - r
            if p < 0 or p >= m:
                continue
            for e in range(indptr[p], indptr[p + 1]):
                v = data[e]
                for b in range(gk):
                    s = nbr[e, a * gk + b]
                    if s >= 0:
                        out[s] += G[a, b] * v
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def conv_kernel_grad(indptr, data, nbr, pos, dx, row_partial):
    """Per input row p, the float64 partial sums of dG[a, b] =
    sum_e R_e * dx[pos[nbr[e, a gk + b]]] (the caller sums the rows): dx is
    dloss/d(the kept outputs), pos maps an output entry to its place in dx,
    -1 where the ReLU dropped it (its gradient is 0). Cost: nnz * gk^2."""
    m = indptr.size - 1
    cells = nbr.shape[1]
    for p in prange(m):
        fpenv = flush_denormals()
        acc = row_partial[p]
        acc[:] = 0
        for e in range(indptr[p], indptr[p + 1]):
            v = data[e]
            for c in range(cells):
                s = nbr[e, c]
                if s >= 0 and pos[s] >= 0:
                    acc[c] += v * dx[pos[s]]
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def count_positive_rows(indptr, values, counts):
    """counts[i + 1] = how many of row i's values are > 0. Cost: nnz."""
    for i in prange(indptr.size - 1):
        c = 0
        for e in range(indptr[i], indptr[i + 1]):
            c += values[e] > 0
        counts[i + 1] = c


@njit(parallel=True, cache=True)
def compact_rows(indptr, indices, values, bounds, new_indptr, new_indices, new_rows, x, pos,
                 col_counts):
    """The CSR arrays of the entries with values > 0 (new_indptr given),
    their values x, pos (each entry's position in them, -1 where dropped),
    and col_counts[b, j]: how many kept entries of the rows
    bounds[b]..bounds[b+1] lie in column j. Cost: nnz, one sweep."""
    for b in prange(bounds.size - 1):
        counts = col_counts[b]
        counts[:] = 0
        for i in range(bounds[b], bounds[b + 1]):
            c = new_indptr[i]
            for e in range(indptr[i], indptr[i + 1]):
                v = values[e]
                if v > 0:
                    j = indices[e]
                    pos[e] = c
                    new_indices[c] = j
                    new_rows[c] = i
                    x[c] = v
                    counts[j] += 1
                    c += 1
                else:
                    pos[e] = -1


@njit(parallel=True, cache=True)
def csr_to_csc(indptr, indices, x, bounds, starts, csc_rows, perm, x_csc):
    """The CSC order of a CSR matrix: each block of rows bounds[b]..bounds[b+1]
    writes its entries of column j from starts[b, j] on (consumed as a
    cursor), rows ascending within a column. Cost: nnz, scattered writes
    to n places per block."""
    for b in prange(bounds.size - 1):
        cursor = starts[b]
        for i in range(bounds[b], bounds[b + 1]):
            for c in range(indptr[i], indptr[i + 1]):
                t = cursor[indices[c]]
                cursor[indices[c]] = t + 1
                csc_rows[t] = i
                perm[t] = c
                x_csc[t] = x[c]


@njit(parallel=True, cache=True)
def output_layer(indptr, indices, target, H, WT, b, resid, dH, sq_sums):
    """The output layer at the observed entries, forward and first backward
    product fused per item row i: resid[e] = H[i] . WT[j] + b[j] - target[e]
    (SDDMM) and sq_sums[i] its float64 sum of squares, then dH[i] =
    sum_e resid[e] WT[j] (SpMM) while the row's WT rows are still in cache.
    Cost: 2 nnz * h."""
    for i in prange(indptr.size - 1):
        fpenv = flush_denormals()
        start, end = indptr[i], indptr[i + 1]
        _row_dots(H[i], WT, indices, start, end, resid)
        sq = 0.0
        for e in range(start, end):
            r = resid[e] + b[indices[e]] - target[e]
            resid[e] = r
            sq += float(r) * float(r)
        sq_sums[i] = sq
        dH[i, :] = 0
        _row_axpy(dH[i], WT, indices, resid, start, end)
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def bias_sigmoid(Z, b):
    """Z = sigmoid(Z + b) in place, row-parallel; for z < 0 it is written
    exp(z) / (1 + exp(z)) so nothing overflows. Cost: m * h."""
    one = Z.dtype.type(1)
    for i in prange(Z.shape[0]):
        fpenv = flush_denormals()
        row = Z[i]
        for k in range(row.size):
            z = row[k] + b[k]
            if z >= 0:
                row[k] = one / (one + np.exp(-z))
            else:
                t = np.exp(z)
                row[k] = t / (one + t)
        restore_fpenv(fpenv)


# exp for float32 in a form LLVM vectorises (libm's expf is a scalar call, about
# 3 ns per entry here): Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a
# degree-7 polynomial for e^r (Cephes' expf coefficients, about 1 ulp), and
# 2^n built in the exponent bits. Arguments are clamped at -87 (e^-87 is
# float32's smallest normal range; sigmoid's tail below that is ~1e-38).
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_P = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                       4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_EXP_LOW = np.float32(-87.0)


@njit(parallel=True, cache=True)
def bias_sigmoid_f32(Z, b):
    """bias_sigmoid for float32 with the vectorised exp above: per row, one
    pass for z = Z + b and e^-|z| (mantissa and exponent bits apart), one for
    sigmoid = (1 if z >= 0 else e^-|z|) / (1 + e^-|z|). Agrees with the libm
    version to float32 rounding; 15x faster at ML-1M's size. No fastmath:
    reassociation would undo the two-constant reduction. Cost: m * h."""
    h = Z.shape[1]
    one, half = np.float32(1), np.float32(0.5)
    p0, p1, p2, p3, p4, p5 = _EXP_P
    for i in prange(Z.shape[0]):
        fpenv = flush_denormals()
        row = Z[i]
        mant = np.empty(h, dtype=np.float32)
        bits = np.empty(h, dtype=np.int32)
        for k in range(h):
            z = row[k] + b[k]
            row[k] = z
            t = max(-abs(z), _EXP_LOW)
            n = np.floor(t * _LOG2E + half)
            r = (t - n * _LN2_HI) - n * _LN2_LO
            mant[k] = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + one
            bits[k] = (np.int32(n) + 127) << 23
        scale = bits.view(np.float32)
        for k in range(h):
            e = mant[k] * scale[k]
            row[k] = (one if row[k] >= 0 else e) / (one + e)
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def sigmoid_backward(dH, H, dZ, row_partial):
    """dZ = dH * H * (1 - H) (the sigmoid's chain rule) and, per block of
    rows, the column sums of dZ into row_partial (the caller sums them: the
    bias gradient).
    Cost: m * h."""
    m, h = H.shape
    blocks = row_partial.shape[0]
    for blk in prange(blocks):
        fpenv = flush_denormals()
        acc = row_partial[blk]
        acc[:] = 0
        for i in range(blk * m // blocks, (blk + 1) * m // blocks):
            for k in range(h):
                g = dH[i, k] * H[i, k] * (1 - H[i, k])
                dZ[i, k] = g
                acc[k] += g
        restore_fpenv(fpenv)


@njit(parallel=True, cache=True)
def transpose(A, out):
    """out = A.T for a C-contiguous A, in bands of 64 rows per task and 8 x 8
    blocks whose loops have constant trip counts, so LLVM unrolls them into
    vector shuffles (2x faster than a plain 32 x 32 tile; NumPy's strided
    copy of a 500 x 6040 float32 matrix took 35 ms, this ~3). Edge blocks go
    element by element. Cost: 2 * size moves."""
    rows, cols = A.shape
    band = 64
    for t in prange((rows + band - 1) // band):
        i0 = t * band
        i1 = min(i0 + band, rows)
        for j0 in range(0, cols, band):
            j1 = min(j0 + band, cols)
            for ib in range(i0, i1, 8):
                for jb in range(j0, j1, 8):
                    if ib + 8 <= i1 and jb + 8 <= j1:
                        for b in range(8):
                            for a in range(8):
                                out[jb + b, ib + a] = A[ib + a, jb + b]
                    else:
                        for i in range(ib, min(ib + 8, i1)):
                            for j in range(jb, min(jb + 8, j1)):
                                out[j, i] = A[i, j]
