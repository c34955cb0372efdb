"""Would a packed GEMM (weights packed once per sequence) beat OpenBLAS on a recurrent step here?

PyTorch's CPU LSTM packs its recurrent weights once per sequence (oneDNN);
OpenBLAS, under NumPy, re-packs them at every step's product. MKL has a
public packed GEMM (``cblas_sgemm_pack`` / ``cblas_sgemm_compute``). This
times one step's recurrent product of workloads B and E, feature-major as
the kernels run it (W (4H, H) @ h^T (H, B)), three ways in one run: NumPy
(OpenBLAS), MKL's plain sgemm and MKL's packed compute. Ratios are to NumPy.

    pip install mkl intel-openmp         # not a dependency of tinygraph
    python benchmarks/mkl_packed_gemm.py [--mkl-lib DIR]

Without MKL it says so and exits.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import sys
import time

import numpy as np

from _timing import best_of

ROW_MAJOR, NO_TRANS, A_MATRIX, PACKED = 101, 111, 161, 151
SHAPES = {"B": (1024, 256, 32), "E": (4096, 1024, 64)}  # (4H, H, batch)


def load_mkl(directory=None):
    """libmkl_rt via ctypes (with Intel's OpenMP runtime first), or None."""
    dirs = [directory] if directory else [os.path.join(sys.prefix, "lib")]
    for d in dirs:
        for omp in glob.glob(os.path.join(d, "libiomp5.so")):
            ctypes.CDLL(omp, mode=ctypes.RTLD_GLOBAL)
        for lib in sorted(glob.glob(os.path.join(d, "libmkl_rt.so*"))):
            mkl = ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            mkl.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
            return mkl
    return None


def _ptr(a):
    return ctypes.c_void_p(a.ctypes.data)


def compare(mkl, key, repeat):
    """(numpy ms, mkl ms, mkl packed ms, max error of the packed result) for one step's product."""
    M, K, N = SHAPES[key]
    rng = np.random.default_rng(0)
    W = rng.standard_normal((M, K)).astype(np.float32)
    hT = rng.standard_normal((K, N)).astype(np.float32)
    out = np.empty((M, N), np.float32)
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def plain():
        mkl.cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, one, _ptr(W), K, _ptr(hT), N, zero, _ptr(out), N)

    size = mkl.cblas_sgemm_pack_get_size(A_MATRIX, M, N, K)
    storage = np.empty(size + 4096, np.uint8)  # page-aligned inside
    packed_at = ctypes.c_void_p(storage.ctypes.data + (-storage.ctypes.data % 4096))
    mkl.cblas_sgemm_pack(ROW_MAJOR, A_MATRIX, NO_TRANS, M, N, K, one, _ptr(W), K, packed_at)  # once

    def packed():
        mkl.cblas_sgemm_compute(ROW_MAJOR, PACKED, NO_TRANS, M, N, K, packed_at, K, _ptr(hT), N, zero, _ptr(out), N)

    # wall time: both libraries spread a product over their threads
    times = [best_of(f, repeat=repeat, clock=time.perf_counter) * 1e3
             for f in (lambda: np.dot(W, hT, out), plain, packed)]
    packed()
    return (*times, float(np.abs(out - W @ hT).max()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mkl-lib", help="folder holding libmkl_rt.so (default: this Python's lib/)")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args(argv)
    mkl = load_mkl(args.mkl_lib)
    if mkl is None:
        print("MKL not found (pip install mkl intel-openmp, or --mkl-lib DIR): nothing to compare")
        return
    for key in SHAPES:
        M, K, N = SHAPES[key]
        t_np, t_mkl, t_packed, err = compare(mkl, key, args.repeat)
        gflop = 2 * M * K * N / 1e9
        print(f"{key}: W ({M}x{K}) @ h^T ({K}x{N}): numpy/OpenBLAS {t_np:.3f} ms ({gflop / t_np * 1e3:.0f} GFLOP/s, "
              f"baseline), MKL {t_mkl:.3f} ms ({t_mkl / t_np:.2f}x), MKL packed {t_packed:.3f} ms "
              f"({t_packed / t_np:.2f}x), packed max error {err:.1e}")


if __name__ == "__main__":
    main()
