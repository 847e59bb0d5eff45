"""A short Trainer.fit on the cuda backend (the CUDA simulator here) equals the numpy backend's run."""
import numpy as np
import pytest

import gru4rec_kernels as g
from gru4rec_kernels.backends import cuda_usable
from gru4rec_kernels.synthetic import generate_clicks

pytestmark = pytest.mark.skipif(not cuda_usable()[0], reason="no GPU and no CUDA simulator")


@pytest.mark.parametrize("loss,act", [("cross-entropy", "linear"), ("bpr-max", "elu-1")])
def test_fit_history_equals_numpy_backend(loss, act):
    train = g.SessionData.from_pandas(generate_clicks(n_items=40, n_sessions=14, seed=5))
    cfg = g.TrainConfig(layers=[6], loss=loss, final_act=act, n_sample=5, batch_size=3, n_epochs=2,
                        sample_store_size=50, learning_rate=0.1, bpreg=0.5 if loss == "bpr-max" else 1.0)
    ref = g.Trainer(cfg, backend="numpy", show_progress=False).fit(train)
    sim = g.Trainer(cfg, backend="cuda", show_progress=False, chunk_steps=16).fit(train)
    np.testing.assert_allclose([h["loss"] for h in sim.history], [h["loss"] for h in ref.history], rtol=1e-4)
    for k in ref.params:
        np.testing.assert_allclose(sim.params[k], ref.params[k], atol=1e-4, err_msg=k)
