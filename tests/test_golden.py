"""Refactors change no result: short runs of every loss x input mode on numpy and cpu equal the golden file.

Bit for bit on the host that wrote the file (SHA-256 of every final float32 parameter, exact epoch losses). On a
host with another CPU, whose vector units may round the cpu backend differently, the numpy runs stay exact and
the cpu runs are compared at float32 tolerance.
"""
import json

import golden
import numpy as np
import pytest

RECORD = json.loads(golden.GOLDEN.read_text())
SAME_HOST = RECORD["host_cpu"] == golden.host_cpu()


@pytest.fixture(scope="module")
def data():
    return golden._data()


@pytest.mark.parametrize("key", sorted(RECORD["runs"]))
def test_run_equals_golden(data, key):
    backend, loss, mode = key.split("/")
    want = RECORD["runs"][key]
    got = golden.run_one(data, loss, mode, backend)
    if backend == "numpy" or SAME_HOST:
        assert got["losses"] == want["losses"]
        assert got["params_sha256"] == want["params_sha256"]
    else:
        np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5)
        for k in want["params_sum"]:
            np.testing.assert_allclose(got["params_abs_sum"][k], want["params_abs_sum"][k], rtol=1e-4, err_msg=k)
