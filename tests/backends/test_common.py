"""The plumbing every backend shares (ltexec.backends.common): checks, the buffer pool, the LSTM cache."""

import numpy as np
import pytest

from ltexec.backends.common import BufferPool, LstmCache, check_array, check_ids

# ------------------------------------------------------------------ checks


def test_check_array_accepts_a_matching_array_and_returns_its_shape():
    assert check_array("x", np.zeros((2, 3), np.float32), (2, 3), np.float32, np.ndarray) == (2, 3)
    assert check_array("x", np.zeros((2, 3), np.float32), (None, 3), np.float32, np.ndarray) == (2, 3)
    assert check_array("x", np.zeros(4, np.float32), None, np.float32, np.ndarray) == (4,)


@pytest.mark.parametrize("array, shape, error, message", [
    ([[0.0] * 3] * 2, (2, 3), TypeError, "x must be a numpy.ndarray, got builtins.list"),
    (np.zeros((2, 3), np.float64), (2, 3), TypeError, "x must have dtype float32, got float64"),
    (np.zeros((3, 2), np.float32), (2, 3), ValueError, r"x has shape \(3, 2\), expected \(2, 3\)$"),
    (np.zeros((3, 2), np.float32), (None, 3), ValueError, r"x has shape \(3, 2\), expected \(any, 3\)$"),
    (np.zeros(3, np.float32), (2,), ValueError, r"x has shape \(3,\), expected \(2,\)$"),
    (np.zeros((2, 3, 1), np.float32), (2, 3), ValueError, "x has shape"),
    (np.zeros((2, 0), np.float32), (2, None), ValueError, r"x must not be empty, got shape \(2, 0\)"),
    (np.zeros((3, 2), np.float32).T, (2, 3), ValueError, "C-contiguous"),
    (np.zeros((2, 6), np.float32)[:, ::2], (2, 3), ValueError, "C-contiguous"),
])
def test_check_array_rejects(array, shape, error, message):
    with pytest.raises(error, match=message):
        check_array("x", array, shape, np.float32, np.ndarray)


def test_check_ids_names_the_id_outside_the_vocabulary():
    assert check_ids("y", np.array([[0, 4]]), 5, (1, 2), np.ndarray) == (1, 2)
    with pytest.raises(ValueError, match=r"y holds ids outside \[0, 5\): 7$"):
        check_ids("y", np.array([[0, 7, 5]]), 5, (None, None), np.ndarray)
    with pytest.raises(ValueError, match=r"y holds ids outside \[0, 5\): -2$"):
        check_ids("y", np.array([[-2, 7]]), 5, (None, None), np.ndarray)
    with pytest.raises(TypeError, match="y must have dtype int64, got int32"):
        check_ids("y", np.array([[0]], np.int32), 5, (None, None), np.ndarray)


# ------------------------------------------------------------------ buffers

def test_buffer_pool_hands_out_only_unheld_buffers():
    pool = BufferPool(np.empty)
    first = pool.take((3, 4), np.float32)
    first_address = first.ctypes.data
    second = pool.take((3, 4), np.float32)
    assert second.ctypes.data != first_address                      # first is still held
    view = first[1:]
    del first
    assert pool.take((3, 4), np.float32).ctypes.data != first_address   # held through a view
    del view
    free = pool.take((3, 4), np.float32)
    assert free.ctypes.data == first_address                            # free again
    free_id = id(free)
    del free
    assert id(pool.take((3, 4), np.float32)) == free_id                  # the same array, once dropped
    assert pool.take((3, 4), np.float64).dtype == np.float64
    assert pool.take((4, 3), np.float32).shape == (4, 3)
    assert BufferPool().take((2,), np.float32).flags.c_contiguous       # NumPy's empty by default


def test_buffer_pool_sees_cupy_views():
    """CuPy views hold their base as NumPy's do (checked on unowned memory: no device needed)."""
    cupy = pytest.importorskip("cupy")
    memory = cupy.cuda.memory

    def allocate(shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        allocate.address += nbytes
        chunk = memory.UnownedMemory(allocate.address, nbytes, None, device_id=0)
        return cupy.ndarray(shape, dtype, memptr=memory.MemoryPointer(chunk, 0))

    allocate.address = 1 << 32
    pool = BufferPool(allocate)
    first = pool.take((3, 4), np.float32)
    address = first.data.ptr
    view = first[1:].reshape(-1)
    del first
    assert pool.take((3, 4), np.float32).data.ptr != address
    del view
    assert pool.take((3, 4), np.float32).data.ptr == address


# ------------------------------------------------------------ LSTM cache

def test_lstm_cache_checks_its_owner_and_is_used_once():
    T, B, D, H = 3, 2, 4, 5
    cache = LstmCache(np.zeros((T, B, D)), np.zeros((D, 4 * H)), np.zeros((H, 4 * H)), np.zeros((T, B, 4 * H)),
                      np.zeros((T + 1, B, H)), np.zeros((T + 1, B, H)))
    assert LstmCache.check(cache, "SomeBackend") == (T, B, D, H)
    with pytest.raises(TypeError, match=r"cache must come from SomeBackend.lstm_forward\(training=True\), got tuple"):
        LstmCache.check((1, 2), "SomeBackend")
    cache.used = True
    with pytest.raises(ValueError, match="already used by lstm_backward"):
        LstmCache.check(cache, "SomeBackend")
