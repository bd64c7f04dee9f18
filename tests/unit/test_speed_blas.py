"""The speed layer process runs its small stacked solves on one BLAS thread (docs/speed.md: where the time goes)."""

from threadpoolctl import threadpool_info

from speed_layer.service import one_blas_thread


def test_one_blas_thread_limits_every_blas_library_to_one_thread():
    limits = one_blas_thread()
    try:
        blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert blas and all(lib["num_threads"] == 1 for lib in blas)
    finally:
        limits.restore_original_limits()
