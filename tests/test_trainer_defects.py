"""Trainer defects, each pinned by the test that showed it."""
import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels.backends.numpy import NumpyBackend
from gru4rec_kernels.synthetic import generate_clicks


def test_nan_parameter_after_an_epoch_is_training_diverged(monkeypatch):
    # _check_finite was a staticmethod that read `self`: a NaN parameter raised NameError instead.
    train = g.SessionData.from_pandas(generate_clicks(n_items=60, n_sessions=120, seed=3))
    cfg = g.TrainConfig(layers=[4], n_sample=0, batch_size=8, n_epochs=1)
    real = NumpyBackend.get_params

    def nan_params(self):
        params = real(self)
        params["By"] = np.full_like(params["By"], np.nan)
        return params

    monkeypatch.setattr(NumpyBackend, "get_params", nan_params)
    t = g.Trainer(cfg, backend="numpy", show_progress=False)
    with pytest.raises(g.TrainingDivergedError,
                       match=r"parameter 'By' became NaN/Inf by the end of epoch 1 .*last good checkpoint: None"):
        t.fit(train)
