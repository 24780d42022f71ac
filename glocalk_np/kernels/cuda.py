"""Numba CUDA kernels for the GPU engine (engines/cuda.py): the CPU kernels' sparse
work, the dense GEMMs and the small element-wise steps between them.

Notation as in kernels/cpu.py. Every kernel writes into caller-owned device
arrays, is generic over float32/float64 (compiled per argument types on first
launch), and strides over its outer dimension with the whole grid, so any
grid size is correct; only the block shapes below are fixed, and the
launchers in engines/cuda.py use them.

Importing this module imports numba.cuda; the package imports it only when
the CUDA engine is asked for. Under Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, read by numba.cuda at its first import) every thread
is a Python thread, so the blocks shrink to a few threads there: the kernels
are the same, and the sizes exercise the same strided and multi-block paths.
"""
import math
import os

from numba import cuda, float64

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

if SIMULATED:
    TPB, LANES, ENTRIES, TILE, CHUNK, MAX_BLOCKS = 4, 4, 2, 4, 4, 4
    GEMM_T, GEMM_R, GEMM_K, SPLIT_TARGET, SPLIT_MIN_STEPS = 2, 2, 4, 64, 1
else:
    TPB, LANES, ENTRIES, TILE, CHUNK, MAX_BLOCKS = 128, 32, 8, 32, 64, 8192
    GEMM_T, GEMM_R, GEMM_K, SPLIT_TARGET, SPLIT_MIN_STEPS = 16, 4, 16, 264, 8
# TPB: threads of a 1-D block. LANES x ENTRIES: an SDDMM block (lanes along h).
# TILE: side of a transpose tile. CHUNK: rows per thread in column_sums.
# GEMM: GEMM_T x GEMM_T threads, each a GEMM_R x GEMM_R block of C, so a block
# owns a GEMM_M x GEMM_M tile; GEMM_K is the inner step through shared memory.
# The inner dimension is split over up to SPLIT_TARGET / tiles blocks (at least
# SPLIT_MIN_STEPS steps each) when the tiles alone would leave SMs idle.
GEMM_M = GEMM_T * GEMM_R
TILE_PAD = TILE + 1


def blocks(work, per_block=TPB):
    """Grid size for ``work`` items, ``per_block`` to a block, capped (grid-stride)."""
    return max(1, min(MAX_BLOCKS, -(-work // per_block)))


# ----- element-wise --------------------------------------------------------
@cuda.jit
def fill(x, value):
    """x[:] = value (1-D). Cost: size."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] = value


@cuda.jit
def cast(src, dst):
    """dst = src converted to dst's dtype (1-D, same size): the flat optimiser
    vector in and out. Cost: size."""
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit
def gather(src, perm, dst):
    """dst[i] = src[perm[i]]: values of a pattern into its CSC order. Cost: size."""
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = src[perm[i]]


@cuda.jit
def bias_sigmoid(Z, b):
    """Z = sigmoid(Z + b), b broadcast over rows. Cost: size."""
    h = Z.shape[1]
    one = Z.dtype.type(1)
    for f in range(cuda.grid(1), Z.size, cuda.gridsize(1)):
        i, k = f // h, f % h
        Z[i, k] = one / (one + math.exp(-(Z[i, k] + b[k])))


@cuda.jit
def sigmoid_backward(dH, H):
    """dH *= H (1 - H) on flat views: dloss/dH into dloss/d(pre-activation).
    Cost: size."""
    one = dH.dtype.type(1)
    for i in range(cuda.grid(1), dH.size, cuda.gridsize(1)):
        y = H[i]
        dH[i] *= y * (one - y)


@cuda.jit
def relu_backward(d, pre):
    """d = 0 where pre <= 0: through the ReLU of the convolution. Cost: size."""
    zero = d.dtype.type(0)
    for i in range(cuda.grid(1), d.size, cuda.gridsize(1)):
        if pre[i] <= zero:
            d[i] = zero


@cuda.jit
def add_bias(out, cols, b):
    """out[e] += b[cols[e]]: the output layer's bias at sampled entries. Cost: size."""
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[e] += b[cols[e]]


@cuda.jit
def subtract(out, y):
    """out -= y (1-D). Cost: size."""
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[e] -= y[e]


@cuda.jit
def outer(a, b, alpha, out):
    """out = alpha a b^T for vectors a, b. Cost: size."""
    n = out.shape[1]
    for f in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        i, j = f // n, f % n
        out[i, j] = alpha * a[i] * b[j]


@cuda.jit
def add_rows(M, v):
    """M[i, :] += v for every row i. Cost: size."""
    n = M.shape[1]
    for f in range(cuda.grid(1), M.size, cuda.gridsize(1)):
        i, j = f // n, f % n
        M[i, j] += v[j]


# ----- reductions ------------------------------------------------------------
@cuda.jit(device=True)
def _block_add(value, alpha, acc, slot):
    """acc[slot] += alpha * the sum of ``value`` over the block's TPB threads:
    a shared-memory tree, then one atomic add (float64)."""
    part = cuda.shared.array(TPB, dtype=float64)
    t = cuda.threadIdx.x
    part[t] = value
    cuda.syncthreads()
    step = TPB // 2
    while step > 0:
        if t < step:
            part[t] += part[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        cuda.atomic.add(acc, slot, alpha * part[0])


@cuda.jit
def sum_squares(x, alpha, acc):
    """acc[0] += alpha * sum(x^2) in float64 (1-D x): per-thread sums over a
    grid stride, then _block_add. Cost: size."""
    s = 0.0
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = float(x[i])
        s += v * v
    _block_add(s, alpha, acc, 0)


@cuda.jit
def column_sums(A, alpha, out):
    """out[k] += alpha * sum_i A[i, k] (2-D A; float64 partial sums): the grid's
    x runs over columns (coalesced rows), its y over chunks of CHUNK rows whose
    sums are added atomically. Cost: size."""
    rows, cols = A.shape
    k0, c0 = cuda.grid(2)
    dk, dc = cuda.gridsize(2)
    for k in range(k0, cols, dk):
        for start in range(c0 * CHUNK, rows, dc * CHUNK):
            s = 0.0
            for i in range(start, min(start + CHUNK, rows)):
                s += A[i, k]
            cuda.atomic.add(out, k, alpha * s)


@cuda.jit
def segment_sums(indptr, data, out):
    """out[i] += sum of data[indptr[i]:indptr[i+1]]: the output bias gradient
    from the residual in CSC order, one thread per column. Cost: nnz."""
    zero = out.dtype.type(0)
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        s = zero
        for e in range(indptr[i], indptr[i + 1]):
            s += data[e]
        out[i] += s


# ----- sparse products -------------------------------------------------------
@cuda.jit
def spmm(indptr, indices, data, B, out, accumulate):
    """out (+)= X @ B for CSR X: one block per row of out, its threads over the
    h columns, so each row of B is read coalesced. On X's CSC arrays (and its
    values in CSC order) this is X^T @ B. Cost: nnz * h."""
    h = B.shape[1]
    zero = out.dtype.type(0)
    for i in range(cuda.blockIdx.x, indptr.size - 1, cuda.gridDim.x):
        start, end = indptr[i], indptr[i + 1]
        for k in range(cuda.threadIdx.x, h, cuda.blockDim.x):
            s = out[i, k] if accumulate else zero
            for e in range(start, end):
                s += data[e] * B[indices[e], k]
            out[i, k] = s


@cuda.jit
def sddmm(rows, cols, A, B, out):
    """out[e] = A[rows[e]] . B[cols[e]] (SDDMM at a pattern's entries, or
    predictions at arbitrary pairs): threadIdx.y picks one of ENTRIES entries,
    the LANES threads along x stride over h (coalesced rows) and add up their
    partial sums in shared memory. Cost: len(out) * h."""
    part = cuda.shared.array((ENTRIES, LANES), dtype=out.dtype)
    lane, slot = cuda.threadIdx.x, cuda.threadIdx.y
    h = A.shape[1]
    zero = out.dtype.type(0)
    for base in range(cuda.blockIdx.x * ENTRIES, out.size, cuda.gridDim.x * ENTRIES):
        e = base + slot
        s = zero
        if e < out.size:
            a, b = rows[e], cols[e]
            for k in range(lane, h, LANES):
                s += A[a, k] * B[b, k]
        part[slot, lane] = s
        cuda.syncthreads()
        step = LANES // 2
        while step > 0:
            if lane < step:
                part[slot, lane] += part[slot, lane + step]
            cuda.syncthreads()
            step //= 2
        if lane == 0 and e < out.size:
            out[e] = part[slot, 0]
        cuda.syncthreads()


# ----- dense products --------------------------------------------------------
@cuda.jit(device=True, inline=True)
def _stage_tile(S, X, k_major, f, o0, n_outer, k0, k_hi, zero):
    """Element f of a GEMM_K x GEMM_M shared tile S[kk, oo] = X at (outer
    o0 + oo, inner k0 + kk), zero outside; X is stored [inner, outer] when
    ``k_major``, else [outer, inner]. f walks X's contiguous axis, so
    neighbouring threads read neighbouring addresses."""
    if k_major:
        kk, oo = f // GEMM_M, f % GEMM_M
    else:
        oo, kk = f // GEMM_K, f % GEMM_K
    o, k = o0 + oo, k0 + kk
    v = zero
    if o < n_outer and k < k_hi:
        v = X[k, o] if k_major else X[o, k]
    S[kk, oo] = v


@cuda.jit
def gemm(A, B, C, trans_a, trans_b, alpha, accumulate):
    """C (+)= alpha op(A) op(B), op(X) = X^T where asked. A block of
    GEMM_T x GEMM_T threads owns a GEMM_M x GEMM_M tile of C, each thread a
    GEMM_R x GEMM_R block of it in registers, and walks the inner dimension
    GEMM_K at a time through shared memory (tiles loaded along the contiguous
    axis of A and B). With gridDim.z > 1 each block takes one slice of the
    inner dimension and adds its part atomically (split-K: the caller zeroes
    C unless accumulating). Cost: 2 M N K flops, M N K (2 / GEMM_M) loads from
    global memory."""
    As = cuda.shared.array((GEMM_K, GEMM_M), dtype=C.dtype)
    Bs = cuda.shared.array((GEMM_K, GEMM_M), dtype=C.dtype)
    acc = cuda.local.array((GEMM_R, GEMM_R), dtype=C.dtype)
    M, N = C.shape
    depth = A.shape[0] if trans_a else A.shape[1]
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * GEMM_T + tx
    i0, j0 = cuda.blockIdx.y * GEMM_M, cuda.blockIdx.x * GEMM_M
    per = -(-depth // cuda.gridDim.z)
    k_lo = cuda.blockIdx.z * per
    k_hi = min(k_lo + per, depth)
    zero = C.dtype.type(0)
    for r in range(GEMM_R):
        for c in range(GEMM_R):
            acc[r, c] = zero
    for k0 in range(k_lo, k_hi, GEMM_K):
        for f in range(tid, GEMM_K * GEMM_M, GEMM_T * GEMM_T):
            _stage_tile(As, A, trans_a, f, i0, M, k0, k_hi, zero)
            _stage_tile(Bs, B, not trans_b, f, j0, N, k0, k_hi, zero)
        cuda.syncthreads()
        for kk in range(GEMM_K):
            for r in range(GEMM_R):
                a = As[kk, ty + r * GEMM_T]
                for c in range(GEMM_R):
                    acc[r, c] += a * Bs[kk, tx + c * GEMM_T]
        cuda.syncthreads()
    split = cuda.gridDim.z > 1
    for r in range(GEMM_R):
        i = i0 + ty + r * GEMM_T
        for c in range(GEMM_R):
            j = j0 + tx + c * GEMM_T
            if i < M and j < N:
                v = alpha * acc[r, c]
                if split:
                    cuda.atomic.add(C, (i, j), v)
                elif accumulate:
                    C[i, j] += v
                else:
                    C[i, j] = v


@cuda.jit
def transpose(A, out):
    """out = A^T through a TILE x TILE shared tile (padded against bank
    conflicts), so that both the read and the write are coalesced. Cost: size."""
    tile = cuda.shared.array((TILE, TILE_PAD), dtype=A.dtype)
    rows, cols = A.shape
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    i0, j0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    if i0 + ty < rows and j0 + tx < cols:
        tile[ty, tx] = A[i0 + ty, j0 + tx]
    cuda.syncthreads()
    if j0 + ty < cols and i0 + tx < rows:
        out[j0 + ty, i0 + tx] = tile[tx, ty]


# ----- local kernel ----------------------------------------------------------
@cuda.jit
def local_kernel(W, U, V, K, Weff):
    """K = max(0, 1 - |U_i - V_j|^2) and Weff = W * K, one thread per (i, j),
    consecutive threads along j. Cost: n_in * n_out * (3d + 2)."""
    n_out = W.shape[1]
    d = U.shape[1]
    one, zero = W.dtype.type(1), W.dtype.type(0)
    for f in range(cuda.grid(1), W.size, cuda.gridsize(1)):
        i, j = f // n_out, f % n_out
        dist = zero
        for t in range(d):
            diff = U[i, t] - V[j, t]
            dist += diff * diff
        k = max(one - dist, zero)
        K[i, j] = k
        Weff[i, j] = W[i, j] * k


@cuda.jit
def local_kernel_grad(dWeff, W, K, lambda_2, lambda_s, dW, dD):
    """As cpu.local_kernel_grad, on flat (1-D) views: dW = dWeff * K + lambda_2 W,
    dD = -(dWeff * W + lambda_s K) where K > 0, else 0. Cost: n_in * n_out * 5."""
    zero = W.dtype.type(0)
    for f in range(cuda.grid(1), W.size, cuda.gridsize(1)):
        k = K[f]
        g = dWeff[f]
        w = W[f]
        dW[f] = g * k + lambda_2 * w
        dD[f] = -(g * w + lambda_s * k) if k > zero else zero


@cuda.jit
def with_ones(P, P1):
    """P1 = [P | 1], so that one GEMM D @ [P | 1] gives D @ P and D's row sums
    together (see position_grad). Cost: rows * (d + 1)."""
    d = P.shape[1]
    one = P1.dtype.type(1)
    for f in range(cuda.grid(1), P1.size, cuda.gridsize(1)):
        i, t = f // (d + 1), f % (d + 1)
        P1[i, t] = P[i, t] if t < d else one


@cuda.jit
def position_grad(P, T, out):
    """out = 2 (P * T[:, d] - T[:, :d]) with T = D @ [Q | 1]: dU from
    dD = dloss/d|U_i - V_j|^2 (P = U, Q = V), or dV with D = dD^T. Cost: rows * d."""
    d = P.shape[1]
    two = out.dtype.type(2)
    for f in range(cuda.grid(1), P.size, cuda.gridsize(1)):
        i, t = f // d, f % d
        out[i, t] = two * (P[i, t] * T[i, d] - T[i, t])


# ----- global convolution ----------------------------------------------------
@cuda.jit
def conv_forward(rnbr, data, g, pre, x):
    """pre[s] = sum_c g[c] R[e] over the ratings e = rnbr[s, c] >= 0 feeding the
    neighbourhood entry s (rnbr inverts cpu.conv_neighbours' map), and
    x = relu(pre): one thread per output entry, no atomics. Cost: |S| * gk^2."""
    cells = rnbr.shape[1]
    zero = pre.dtype.type(0)
    for s in range(cuda.grid(1), pre.size, cuda.gridsize(1)):
        acc = zero
        for c in range(cells):
            e = rnbr[s, c]
            if e >= 0:
                acc += g[c] * data[e]
        pre[s] = acc
        x[s] = max(acc, zero)


@cuda.jit
def conv_kernel_grad(indptr, data, nbr, dpre, partial):
    """partial[p, c] = sum over the ratings e of row p of R[e] * dpre[nbr[e, c]]
    (float64), one thread per (row, cell); column_sums then gives dG.
    Cost: nnz * gk^2."""
    cells = nbr.shape[1]
    for f in range(cuda.grid(1), partial.size, cuda.gridsize(1)):
        p, c = f // cells, f % cells
        s = 0.0
        for e in range(indptr[p], indptr[p + 1]):
            t = nbr[e, c]
            if t >= 0:
                s += data[e] * dpre[t]
        partial[p, c] = s


# ----- L-BFGS-B's vectors on the device (engines.cuda.CudaVectors) ------------
@cuda.jit
def dot(a, b, acc, slot):
    """acc[slot] += a . b in float64. Cost: 2 size."""
    s = 0.0
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        s += a[i] * b[i]
    _block_add(s, 1.0, acc, slot)


@cuda.jit
def squared_distance(a, b, acc):
    """acc[0] += |a - b|^2. Cost: 2 size."""
    s = 0.0
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        s += (a[i] - b[i]) * (a[i] - b[i])
    _block_add(s, 1.0, acc, 0)


@cuda.jit
def abs_max(a, acc):
    """acc[1] = max(acc[1], max_i |a_i|) (acc[1] starts at 0). Cost: size."""
    m = 0.0
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        m = max(m, abs(a[i]))
    cuda.atomic.max(acc, 1, m)


@cuda.jit
def scale(src, alpha, dst):
    """dst = alpha src. Cost: 2 size."""
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = alpha * src[i]


@cuda.jit
def axpy(alpha, x, y):
    """y += alpha x. Cost: 3 size."""
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i] += alpha * x[i]


@cuda.jit
def trial_point(t, stp, d, x, first, changed):
    """x = t + stp d; changed[0] = 1 where x differs from the point evaluated
    last (t for the first trial of a line search, else x's old value)."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = t[i] + stp * d[i]
        if v != (t[i] if first else x[i]):
            changed[0] = 1
        x[i] = v


@cuda.jit
def store_pair(g, r, stp, d, s, y):
    """s = stp d (d itself when stp is 1), y = g - r. Cost: 5 size."""
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        s[i] = d[i] if stp == 1.0 else stp * d[i]
        y[i] = g[i] - r[i]
