"""The fused sequence kernels' time loops on CUDA (CuPy), with no Python on the per-step data.

``models.sequence`` calls these when its arrays are CuPy arrays. A step is
two launches and nothing else:

* one cuBLAS GEMM called through CuPy's thin binding on raw device pointers
  (``h(t-1) @ W^T`` accumulated straight into the step's gate rows with
  beta = 1 in forward; ``dz(t) @ W`` in backward): no slicing, no
  temporary, no ``cupy.matmul`` argument processing;
* one raw CUDA kernel for the whole gate math of the step, handed the
  sequence buffers plus element offsets, so no view is built per step.

Nothing is copied between host and device inside the loop and nothing
synchronises (tests/test_gpu.py checks it with ``cupyx.allow_synchronize``).
The per-step Python cost is what remains of the launch overhead, a few
microseconds, instead of the ~100 us that CuPy views, ``matmul`` and
``ElementwiseKernel`` calls cost per step. The math is the same as the NumPy
kernels in ``models.kernels`` (both are tested against the decomposed cells).

Layout (row-major): gate blocks stacked along the last axis, LSTM
``[i, f, g, o]``, GRU ``[r, z, n]``. cuBLAS is column-major, so a row-major
``C (m x n) = A @ B`` is issued as ``C^T = B^T A^T``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward"]

_SOURCE = r"""
template <typename T> __device__ __forceinline__ T sigm(T v) { return T(1) / (T(1) + exp(-v)); }

// vanilla RNN: hs[t] holds U x + b + W h(t-1); apply the nonlinearity in place
template <typename T>
__global__ void rnn_fwd(T* hs, long long off, int n, int relu) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T v = hs[off + i];
    hs[off + i] = relu ? (v > T(0) ? v : T(0)) : tanh(v);
}

template <typename T>
__global__ void rnn_bwd(const T* grad, const T* carry, const T* hs, T* da, long long off, int n, int relu) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T h = hs[off + i], d = grad[off + i] + carry[i];
    da[off + i] = relu ? (h > T(0) ? d : T(0)) : d * (T(1) - h * h);
}

// LSTM step: gates[t] holds U x + b + W h(t-1) (pre-activations) and becomes [i, f, g, o]
template <typename T>
__global__ void lstm_fwd(T* gates, const T* c_prev, T* cs, T* tcs, T* out,
                         long long goff, long long poff, long long off, int n, int H) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long k = goff + (long long)(i / H) * 4 * H + (i % H);
    T ig = sigm(gates[k]), fg = sigm(gates[k + H]), gg = tanh(gates[k + 2 * H]), og = sigm(gates[k + 3 * H]);
    gates[k] = ig; gates[k + H] = fg; gates[k + 2 * H] = gg; gates[k + 3 * H] = og;
    T c = fg * c_prev[poff + i] + ig * gg;
    T t = tanh(c);
    cs[off + i] = c; tcs[off + i] = t; out[off + i] = og * t;
}

template <typename T>
__global__ void lstm_bwd(const T* gates, const T* tcs, const T* c_prev, const T* grad, const T* carry,
                         const T* dc_in, T* dz, T* dc_out, long long goff, long long poff, long long off,
                         int n, int H) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long k = goff + (long long)(i / H) * 4 * H + (i % H);
    T ig = gates[k], fg = gates[k + H], gg = gates[k + 2 * H], og = gates[k + 3 * H];
    T tc = tcs[off + i];
    T dh = grad[off + i] + carry[i];
    T dc = dc_in[i] + dh * og * (T(1) - tc * tc);
    dz[k] = dc * gg * ig * (T(1) - ig);
    dz[k + H] = dc * c_prev[poff + i] * fg * (T(1) - fg);
    dz[k + 2 * H] = dc * ig * (T(1) - gg * gg);
    dz[k + 3 * H] = dh * tc * og * (T(1) - og);
    dc_out[i] = dc * fg;
}

// GRU step: gates[t] holds U x + b and becomes [r, z, n]; zh = W h(t-1)
template <typename T>
__global__ void gru_fwd(T* gates, const T* zh, const T* b_hn, const T* h_prev, T* hns, T* hs,
                        long long goff, long long poff, long long off, int n, int H) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int j = i % H;
    long long k = goff + (long long)(i / H) * 3 * H + j;
    long long q = (long long)(i / H) * 3 * H + j;
    T r = sigm(gates[k] + zh[q]), z = sigm(gates[k + H] + zh[q + H]);
    T hn = zh[q + 2 * H] + b_hn[j];
    T nn = tanh(gates[k + 2 * H] + r * hn);
    gates[k] = r; gates[k + H] = z; gates[k + 2 * H] = nn;
    hns[off + i] = hn;
    hs[off + i] = nn + z * (h_prev[poff + i] - nn);
}

template <typename T>
__global__ void gru_bwd(const T* gates, const T* hns, const T* h_prev, const T* grad, const T* carry,
                        const T* direct_in, T* gx, T* ghh, T* direct_out,
                        long long goff, long long poff, long long off, int n, int H) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long k = goff + (long long)(i / H) * 3 * H + (i % H);
    T r = gates[k], z = gates[k + H], nn = gates[k + 2 * H];
    T dh = grad[off + i] + carry[i] + direct_in[i];
    T dn = dh * (T(1) - z) * (T(1) - nn * nn);
    T dzp = dh * (h_prev[poff + i] - nn) * z * (T(1) - z);
    T dr = dn * hns[off + i] * r * (T(1) - r);
    gx[k] = dr; gx[k + H] = dzp; gx[k + 2 * H] = dn;
    ghh[k] = dr; ghh[k + H] = dzp; ghh[k + 2 * H] = dn * r;
    direct_out[i] = dh * z;
}

// ---- small layers: the step's matrix product inside the same kernel -------------
// Block (JT units j) x (KS slices of the dot products), one batch row b = blockIdx.y.
// Forward: unit j needs G/H dot products of h(t-1)[b, :] (in shared memory) with
// the columns j, H + j, ... of WT = W^T (H, G), read coalesced along j. Each of
// the KS thread rows sums every KS-th term; thread row 0 adds the KS partial sums
// and does the unit's gate math. Backward first forms carry[b, j] =
// sum_g dnext[b, g] W[g, j] the same way (the previous launch wrote dnext, the
// pre-activation grads of the step after this one).
#define JT 32
#define KS 8

template <typename T>
__device__ __forceinline__ void load_row(T* row, const T* src, int len) {
    for (int k = threadIdx.y * JT + threadIdx.x; k < len; k += JT * KS) row[k] = src[k];
    __syncthreads();
}

template <typename T, int NG>
__device__ __forceinline__ void partial_dots(const T* row, const T* M, int K, long long ld, int H, int j,
                                             bool valid, T (*part)[4][JT]) {
    T acc[NG];
    #pragma unroll
    for (int g = 0; g < NG; ++g) acc[g] = T(0);
    if (valid) {
        for (int k = threadIdx.y; k < K; k += KS) {
            const T r = row[k];
            const T* m = M + (long long)k * ld + j;
            #pragma unroll
            for (int g = 0; g < NG; ++g) acc[g] += r * m[(long long)g * H];
        }
    }
    #pragma unroll
    for (int g = 0; g < NG; ++g) part[threadIdx.y][g][threadIdx.x] = acc[g];
    __syncthreads();
}

template <typename T>
__device__ __forceinline__ T total(T (*part)[4][JT], int g) {
    T s = T(0);
    #pragma unroll
    for (int y = 0; y < KS; ++y) s += part[y][g][threadIdx.x];
    return s;
}

template <typename T>
__global__ void rnn_fwd_small(T* hs, const T* WT, const T* h_prev, long long off, long long hoff,
                              int B, int H, int relu) {
    extern __shared__ unsigned char smem[];
    __shared__ T part[KS][4][JT];
    T* row = (T*)smem;
    int b = blockIdx.y, j = blockIdx.x * JT + threadIdx.x;
    bool valid = j < H;
    load_row(row, h_prev + hoff + (long long)b * H, H);
    partial_dots<T, 1>(row, WT, H, H, H, j, valid, part);
    if (!valid || threadIdx.y != 0) return;
    long long q = off + (long long)b * H + j;
    T v = hs[q] + total(part, 0);
    hs[q] = relu ? (v > T(0) ? v : T(0)) : tanh(v);
}

template <typename T>
__global__ void rnn_bwd_small(const T* grad, const T* W, const T* hs, T* da, long long off, long long noff,
                              int has_next, int B, int H, int relu) {
    extern __shared__ unsigned char smem[];
    __shared__ T part[KS][4][JT];
    T* row = (T*)smem;
    int b = blockIdx.y, j = blockIdx.x * JT + threadIdx.x;
    bool valid = j < H;
    if (has_next) {
        load_row(row, da + noff + (long long)b * H, H);
        partial_dots<T, 1>(row, W, H, H, H, j, valid, part);
    }
    if (!valid || threadIdx.y != 0) return;
    T carry = has_next ? total(part, 0) : T(0);
    long long q = off + (long long)b * H + j;
    T h = hs[q], d = grad[q] + carry;
    da[q] = relu ? (h > T(0) ? d : T(0)) : d * (T(1) - h * h);
}

template <typename T>
__global__ void lstm_fwd_small(T* gates, const T* WT, const T* h_prev, const T* c_prev, T* cs, T* tcs, T* out,
                               long long goff, long long hoff, long long poff, long long off, int B, int H) {
    extern __shared__ unsigned char smem[];
    __shared__ T part[KS][4][JT];
    T* row = (T*)smem;
    int b = blockIdx.y, j = blockIdx.x * JT + threadIdx.x;
    bool valid = j < H;
    const int G = 4 * H;
    load_row(row, h_prev + hoff + (long long)b * H, H);
    partial_dots<T, 4>(row, WT, H, G, H, j, valid, part);
    if (!valid || threadIdx.y != 0) return;
    long long k0 = goff + (long long)b * G + j;
    T ig = sigm(gates[k0] + total(part, 0)), fg = sigm(gates[k0 + H] + total(part, 1));
    T gg = tanh(gates[k0 + 2 * H] + total(part, 2)), og = sigm(gates[k0 + 3 * H] + total(part, 3));
    gates[k0] = ig; gates[k0 + H] = fg; gates[k0 + 2 * H] = gg; gates[k0 + 3 * H] = og;
    long long q = (long long)b * H + j;
    T c = fg * c_prev[poff + q] + ig * gg;
    T t = tanh(c);
    cs[off + q] = c; tcs[off + q] = t; out[off + q] = og * t;
}

template <typename T>
__global__ void lstm_bwd_small(const T* gates, const T* tcs, const T* c_prev, const T* grad, const T* W,
                               const T* dc_in, T* dz, T* dc_out, long long goff, long long noff, int has_next,
                               long long poff, long long off, int B, int H) {
    extern __shared__ unsigned char smem[];
    __shared__ T part[KS][4][JT];
    T* row = (T*)smem;
    const int G = 4 * H;
    int b = blockIdx.y, j = blockIdx.x * JT + threadIdx.x;
    bool valid = j < H;
    if (has_next) {
        load_row(row, dz + noff + (long long)b * G, G);
        partial_dots<T, 1>(row, W, G, H, H, j, valid, part);
    }
    if (!valid || threadIdx.y != 0) return;
    T carry = has_next ? total(part, 0) : T(0);
    long long k0 = goff + (long long)b * G + j, q = (long long)b * H + j;
    T ig = gates[k0], fg = gates[k0 + H], gg = gates[k0 + 2 * H], og = gates[k0 + 3 * H];
    T tc = tcs[off + q];
    T dh = grad[off + q] + carry;
    T dc = dc_in[q] + dh * og * (T(1) - tc * tc);
    dz[k0] = dc * gg * ig * (T(1) - ig);
    dz[k0 + H] = dc * c_prev[poff + q] * fg * (T(1) - fg);
    dz[k0 + 2 * H] = dc * ig * (T(1) - gg * gg);
    dz[k0 + 3 * H] = dh * tc * og * (T(1) - og);
    dc_out[q] = dc * fg;
}

template <typename T>
__global__ void gru_fwd_small(T* gates, const T* WT, const T* b_hn, const T* h_prev, T* hns, T* hs,
                              long long goff, long long poff, long long off, int B, int H) {
    extern __shared__ unsigned char smem[];
    __shared__ T part[KS][4][JT];
    T* row = (T*)smem;
    int b = blockIdx.y, j = blockIdx.x * JT + threadIdx.x;
    bool valid = j < H;
    const int G = 3 * H;
    load_row(row, h_prev + poff + (long long)b * H, H);
    partial_dots<T, 3>(row, WT, H, G, H, j, valid, part);
    if (!valid || threadIdx.y != 0) return;
    long long k0 = goff + (long long)b * G + j, q = (long long)b * H + j;
    T hn = b_hn[j] + total(part, 2);
    T r = sigm(gates[k0] + total(part, 0)), z = sigm(gates[k0 + H] + total(part, 1));
    T nn = tanh(gates[k0 + 2 * H] + r * hn);
    gates[k0] = r; gates[k0 + H] = z; gates[k0 + 2 * H] = nn;
    hns[off + q] = hn;
    hs[off + q] = nn + z * (row[j] - nn);
}

template <typename T>
__global__ void gru_bwd_small(const T* gates, const T* hns, const T* h_prev, const T* grad, const T* W,
                              const T* direct_in, T* gx, T* ghh, T* direct_out, long long goff, long long noff,
                              int has_next, long long poff, long long off, int B, int H) {
    extern __shared__ unsigned char smem[];
    __shared__ T part[KS][4][JT];
    T* row = (T*)smem;
    const int G = 3 * H;
    int b = blockIdx.y, j = blockIdx.x * JT + threadIdx.x;
    bool valid = j < H;
    if (has_next) {
        load_row(row, ghh + noff + (long long)b * G, G);
        partial_dots<T, 1>(row, W, G, H, H, j, valid, part);
    }
    if (!valid || threadIdx.y != 0) return;
    T carry = has_next ? total(part, 0) : T(0);
    long long k0 = goff + (long long)b * G + j, q = (long long)b * H + j;
    T r = gates[k0], z = gates[k0 + H], nn = gates[k0 + 2 * H];
    T dh = grad[off + q] + carry + direct_in[q];
    T dn = dh * (T(1) - z) * (T(1) - nn * nn);
    T dzp = dh * (h_prev[poff + q] - nn) * z * (T(1) - z);
    T dr = dn * hns[off + q] * r * (T(1) - r);
    gx[k0] = dr; gx[k0 + H] = dzp; gx[k0 + 2 * H] = dn;
    ghh[k0] = dr; ghh[k0 + H] = dzp; ghh[k0 + 2 * H] = dn * r;
    direct_out[q] = dh * z;
}
"""

_NAMES = ("rnn_fwd", "rnn_bwd", "lstm_fwd", "lstm_bwd", "gru_fwd", "gru_bwd",
          "rnn_fwd_small", "rnn_bwd_small", "lstm_fwd_small", "lstm_bwd_small", "gru_fwd_small", "gru_bwd_small")
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_MODULE = [None]
_BLOCK = 256
_SMALL_BLOCK = (32, 8)  # (JT, KS) in the CUDA source: units per block x slices of each dot product
# Layers with B * G * H at most this many multiply-adds per step run each step as ONE
# kernel that does its own small matrix product (the "_small" kernels): there the
# cost is launches, not FLOPs. Larger layers use cuBLAS plus the elementwise kernel.
SMALL_STEP_LIMIT = 1 << 24


def _is_small(B, G, H, itemsize):
    return B * G * H <= SMALL_STEP_LIMIT and G * itemsize <= 32 * 1024  # the shared row must fit


def _launch_small(kernel, B, H, shared_elems, itemsize, args):
    grid = ((H + _SMALL_BLOCK[0] - 1) // _SMALL_BLOCK[0], B)
    kernel(grid, _SMALL_BLOCK, args, shared_mem=shared_elems * itemsize)


def _kernel(name, dtype):
    """A compiled kernel for ``dtype`` (compiled once per process, for both float types)."""
    import cupy as cp
    if _MODULE[0] is None:
        expressions = [f"{n}<{t}>" for n in _NAMES for t in ("float", "double")]
        _MODULE[0] = cp.RawModule(code=_SOURCE, options=("-std=c++14",), name_expressions=expressions)
    ctype = _CTYPES.get(np.dtype(dtype))
    if ctype is None:
        raise TypeError(f"fused CUDA kernels support float32 and float64, got {dtype}")
    return _MODULE[0].get_function(f"{name}<{ctype}>")


def _launch(kernel, n, args):
    kernel(((n + _BLOCK - 1) // _BLOCK,), (_BLOCK,), args)


class _Gemm:
    """Row-major ``C (m x n) [+]= A (m x k) @ B`` on raw pointers through cuBLAS.

    ``b_transposed``: B is stored as (n x k) row-major (a weight ``W`` used as
    ``W^T``). Leading dimensions are the rows' lengths; operands are contiguous.
    """

    def __init__(self, dtype):
        import cupy as cp
        try:
            from cupy_backends.cuda.libs import cublas
        except ImportError:  # older CuPy
            from cupy.cuda import cublas
        self.cublas = cublas
        self.handle = cp.cuda.device.get_cublas_handle()
        cublas.setPointerMode(self.handle, cublas.CUBLAS_POINTER_MODE_HOST)
        self.call = cublas.sgemm if np.dtype(dtype) == np.float32 else cublas.dgemm
        # host scalars for alpha/beta, kept alive with this object; their addresses
        # are read once (``.ctypes`` builds an object on every access)
        self.scalars = (np.ones((), dtype=dtype), np.zeros((), dtype=dtype))
        self.one, self.zero = (s.ctypes.data for s in self.scalars)
        self.op_n, self.op_t = cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T

    def __call__(self, c_ptr, a_ptr, b_ptr, m, n, k, b_transposed, accumulate):
        # column-major view: C^T (n x m) = op(B)^T (n x k) @ A^T (k x m)
        if b_transposed:
            self.call(self.handle, self.op_t, self.op_n, n, m, k, self.one, b_ptr, k,
                      a_ptr, k, self.one if accumulate else self.zero, c_ptr, n)
        else:
            self.call(self.handle, self.op_n, self.op_n, n, m, k, self.one, b_ptr, n,
                      a_ptr, k, self.one if accumulate else self.zero, c_ptr, n)


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _contiguous(*arrays):
    import cupy as cp
    return [cp.ascontiguousarray(a) for a in arrays]


# -- vanilla RNN ------------------------------------------------------------------

def rnn_forward(hs, h0, W, relu, reverse):
    """In place: ``hs`` (T, B, H) holds U x + b; becomes the hidden states."""
    T, B, H = hs.shape
    h0, W = _contiguous(h0, W)
    n, size = B * H, hs.itemsize
    if _is_small(B, H, H, size):
        import cupy as cp
        kern, WT = _kernel("rnn_fwd_small", hs.dtype), cp.ascontiguousarray(W.T)
        prev, hoff = h0, 0
        for t in _steps(T, reverse):
            _launch_small(kern, B, H, H, size, (hs, WT, prev, np.int64(t * n), np.int64(hoff), np.int32(B),
                                                np.int32(H), np.int32(relu)))
            prev, hoff = hs, t * n
        return
    gemm, kern = _Gemm(hs.dtype), _kernel("rnn_fwd", hs.dtype)
    base, prev = hs.data.ptr, h0.data.ptr
    for t in _steps(T, reverse):
        gemm(base + t * n * size, prev, W.data.ptr, B, H, H, b_transposed=True, accumulate=True)
        _launch(kern, n, (hs, np.int64(t * n), np.int32(n), np.int32(relu)))
        prev = base + t * n * size


def rnn_backward(grad, hs, W, relu, reverse):
    """(dA (T, B, H): grads of the pre-activations, carry: grad of h0)."""
    import cupy as cp
    T, B, H = hs.shape
    grad, W = _contiguous(grad, W)
    n, size = B * H, hs.itemsize
    dA = cp.empty_like(hs)
    if _is_small(B, H, H, size):
        kern, last = _kernel("rnn_bwd_small", hs.dtype), None
        for t in _steps(T, not reverse):
            _launch_small(kern, B, H, H, size, (grad, W, hs, dA, np.int64(t * n), np.int64((last or 0) * n),
                                                np.int32(last is not None), np.int32(B), np.int32(H),
                                                np.int32(relu)))
            last = t
        return dA, dA[last] @ W
    gemm, kern = _Gemm(hs.dtype), _kernel("rnn_bwd", hs.dtype)
    carry = cp.zeros((B, H), dtype=hs.dtype)
    for t in _steps(T, not reverse):
        _launch(kern, n, (grad, carry, hs, dA, np.int64(t * n), np.int32(n), np.int32(relu)))
        gemm(carry.data.ptr, dA.data.ptr + t * n * size, W.data.ptr, B, H, H, b_transposed=False,
             accumulate=False)
    return dA, carry


# -- LSTM -------------------------------------------------------------------------

def lstm_forward(gates, h0, c0, W, out, cs, tcs, reverse):
    """In place: ``gates`` (T, B, 4H) holds U x + b; fills out[:T], cs, tcs and out[T] = c_n."""
    T, B, G = gates.shape
    H = G // 4
    h0, c0, W = _contiguous(h0, c0, W)
    n, size = B * H, gates.itemsize
    if _is_small(B, G, H, size):
        import cupy as cp
        kern, WT = _kernel("lstm_fwd_small", gates.dtype), cp.ascontiguousarray(W.T)
        prev_h, prev_c, poff = h0, c0, 0
        for t in _steps(T, reverse):
            _launch_small(kern, B, H, H, size, (gates, WT, prev_h, prev_c, cs, tcs, out, np.int64(t * B * G),
                                                np.int64(poff), np.int64(poff), np.int64(t * n), np.int32(B),
                                                np.int32(H)))
            prev_h, prev_c, poff = out, cs, t * n
    else:
        gemm, kern = _Gemm(gates.dtype), _kernel("lstm_fwd", gates.dtype)
        prev_h, prev_c, poff = h0.data.ptr, c0, 0
        for t in _steps(T, reverse):
            gemm(gates.data.ptr + t * B * G * size, prev_h, W.data.ptr, B, G, H, b_transposed=True,
                 accumulate=True)
            _launch(kern, n, (gates, prev_c, cs, tcs, out, np.int64(t * B * G), np.int64(poff), np.int64(t * n),
                              np.int32(n), np.int32(H)))
            prev_h, prev_c, poff = out.data.ptr + t * n * size, cs, t * n
    out[T] = cs[0 if reverse else T - 1]


def lstm_backward(grad, gates, cs, tcs, c0, W, reverse):
    """(dZ (T, B, 4H), carry: grad of h0, dc: grad of c0) by one sweep back through time."""
    import cupy as cp
    T, B, G = gates.shape
    H = G // 4
    grad, c0, W = _contiguous(grad, c0, W)
    n, size = B * H, gates.itemsize
    dZ = cp.empty_like(gates)
    dc, dc_next = cp.array(grad[T]), cp.empty((B, H), dtype=gates.dtype)  # grad of the final c seeds dc
    small = _is_small(B, G, H, size)
    if small:
        kern, last = _kernel("lstm_bwd_small", gates.dtype), None
    else:
        gemm, kern = _Gemm(gates.dtype), _kernel("lstm_bwd", gates.dtype)
        carry = cp.zeros((B, H), dtype=gates.dtype)
    for t in _steps(T, not reverse):
        first = t == (T - 1 if reverse else 0)   # this step started from c0
        prev_c, poff = (c0, 0) if first else (cs, (t + 1 if reverse else t - 1) * n)
        if small:
            _launch_small(kern, B, H, G, size, (gates, tcs, prev_c, grad, W, dc, dZ, dc_next, np.int64(t * B * G),
                                                np.int64((last or 0) * B * G), np.int32(last is not None),
                                                np.int64(poff), np.int64(t * n), np.int32(B), np.int32(H)))
            last = t
        else:
            _launch(kern, n, (gates, tcs, prev_c, grad, carry, dc, dZ, dc_next, np.int64(t * B * G),
                              np.int64(poff), np.int64(t * n), np.int32(n), np.int32(H)))
            gemm(carry.data.ptr, dZ.data.ptr + t * B * G * size, W.data.ptr, B, H, G, b_transposed=False,
                 accumulate=False)
        dc, dc_next = dc_next, dc
    if small:
        carry = dZ[last] @ W
    return dZ, carry, dc


# -- GRU --------------------------------------------------------------------------

def gru_forward(gates, h0, W, b_hn, hs, hns, reverse):
    """In place: ``gates`` (T, B, 3H) holds U x + b; fills hs and hns (W_n h + b_hn)."""
    import cupy as cp
    T, B, G = gates.shape
    H = G // 3
    h0, W, b_hn = _contiguous(h0, W, b_hn)
    n, size = B * H, gates.itemsize
    if _is_small(B, G, H, size):
        kern, WT = _kernel("gru_fwd_small", gates.dtype), cp.ascontiguousarray(W.T)
        prev, poff = h0, 0
        for t in _steps(T, reverse):
            _launch_small(kern, B, H, H, size, (gates, WT, b_hn, prev, hns, hs, np.int64(t * B * G),
                                                np.int64(poff), np.int64(t * n), np.int32(B), np.int32(H)))
            prev, poff = hs, t * n
        return
    gemm, kern = _Gemm(gates.dtype), _kernel("gru_fwd", gates.dtype)
    zh = cp.empty((B, G), dtype=gates.dtype)
    prev, poff, prev_ptr = h0, 0, h0.data.ptr
    for t in _steps(T, reverse):
        gemm(zh.data.ptr, prev_ptr, W.data.ptr, B, G, H, b_transposed=True, accumulate=False)
        _launch(kern, n, (gates, zh, b_hn, prev, hns, hs, np.int64(t * B * G), np.int64(poff), np.int64(t * n),
                          np.int32(n), np.int32(H)))
        prev, poff, prev_ptr = hs, t * n, hs.data.ptr + t * n * size


def gru_backward(grad, gates, hns, hs, h0, W, reverse):
    """(dGX, dGH (T, B, 3H): input- and recurrent-side grads, dh0) by one sweep back through time."""
    import cupy as cp
    T, B, G = gates.shape
    H = G // 3
    grad, h0, W = _contiguous(grad, h0, W)
    n, size = B * H, gates.itemsize
    dGX, dGH = cp.empty_like(gates), cp.empty_like(gates)
    direct, direct_next = cp.zeros((B, H), dtype=gates.dtype), cp.empty((B, H), dtype=gates.dtype)
    small = _is_small(B, G, H, size)
    if small:
        kern, last = _kernel("gru_bwd_small", gates.dtype), None
    else:
        gemm, kern = _Gemm(gates.dtype), _kernel("gru_bwd", gates.dtype)
        carry = cp.zeros((B, H), dtype=gates.dtype)
    for t in _steps(T, not reverse):
        first = t == (T - 1 if reverse else 0)
        prev, poff = (h0, 0) if first else (hs, (t + 1 if reverse else t - 1) * n)
        if small:
            _launch_small(kern, B, H, G, size, (gates, hns, prev, grad, W, direct, dGX, dGH, direct_next,
                                                np.int64(t * B * G), np.int64((last or 0) * B * G),
                                                np.int32(last is not None), np.int64(poff), np.int64(t * n),
                                                np.int32(B), np.int32(H)))
            last = t
        else:
            _launch(kern, n, (gates, hns, prev, grad, carry, direct, dGX, dGH, direct_next, np.int64(t * B * G),
                              np.int64(poff), np.int64(t * n), np.int32(n), np.int32(H)))
            gemm(carry.data.ptr, dGH.data.ptr + t * B * G * size, W.data.ptr, B, H, G, b_transposed=False,
                 accumulate=False)
        direct, direct_next = direct_next, direct
    if small:
        carry = dGH[last] @ W
    return dGX, dGH, carry + direct
