

def test_packed_nbytes_matches_the_packed_frame() -> None:
    import numpy as np

    from fedkit.compression.frame import pack_arrays, packed_nbytes

    arrays = [np.zeros((3, 4), np.float64), np.ones(5, np.int8), np.array(1.0, np.float32),
              np.zeros((0, 2), np.float16)]
    assert packed_nbytes(arrays) == len(pack_arrays(arrays))
    as32 = [a.astype(np.float32) for a in arrays]
    assert packed_nbytes(arrays, itemsize=4) == len(pack_arrays(as32))
