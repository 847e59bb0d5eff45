"""What the distributed tests share between pytest (the one-process runs) and tests/mpi_worker.py (the ranks):
the data, the configs, and backends that record every step, so that one run gives per-step losses, the
schedule each rank fed its backend, and the backend's own (float64) parameters and Adagrad state."""
from __future__ import annotations

import functools

import numpy as np
from steps import RUN_CASES, make_cfg

from gru4rec_kernels.data import SessionData

N_ITEMS = 17
N_EPOCHS = 3  # 3 epochs of the uneven data at 8 lanes: >= 50 steps, two epoch boundaries


def uneven_data(seed: int = 0, n_sessions: int = 30) -> SessionData:
    """Sessions of 2..9 events over 17 items (lanes finish at different steps; ids repeat across lanes)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 10, n_sessions)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(0, N_ITEMS, offsets[-1]).astype(np.int32)
    items[:N_ITEMS] = np.arange(N_ITEMS)  # every item has support (logq, samples)
    return SessionData(np.arange(N_ITEMS), items, offsets, np.arange(n_sessions), np.arange(offsets[-1], dtype=float))


# the equivalence cases: every loss and input mode (tests/steps.py), and "tail": 2 lanes on 2 ranks, so that in
# each epoch's tail one rank has no active lane
CASES = {**{k: dict(batch_size=8, **v) for k, v in RUN_CASES.items()},
         "tail": dict(batch_size=2, loss="bpr-max", mode="constrained", dropout_p_hidden=0.3, momentum=0.2)}


def case_cfg(case: str):
    return make_cfg(n_sample=5, sample_store_size=64, n_epochs=N_EPOCHS, **CASES[case])


class Recording:
    """Mixin over a backend class: records the steps it runs (one process: ``train_chunk``; a rank:
    ``grad_step`` / ``apply_grad_buffer``). The last instance made is ``Recording.last``."""

    last = None

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.losses, self.X, self.Y, self.active = [], [], [], []
        Recording.last = self

    def train_chunk(self, inputs, targets, active, reset, samples, step0):
        losses = super().train_chunk(inputs, targets, active, reset, samples, step0)
        self.losses.extend(losses.tolist())
        for t in range(inputs.shape[0]):
            self.X.append(np.array(inputs[t]))
            self.Y.append(np.concatenate([targets[t], samples[t]]))
            self.active.append(np.array(active[t]))
        return losses

    def grad_step(self, X, Y, active, reset, step, row0, col_active, buf):
        self.X.append(np.array(X))
        self.Y.append(np.array(Y))
        self.active.append(np.array(active))
        super().grad_step(X, Y, active, reset, step, row0, col_active, buf)

    def apply_grad_buffer(self, buf, X_global, Y):
        loss = super().apply_grad_buffer(buf, X_global, Y)
        self.losses.append(loss)
        return loss

    def record(self) -> dict:
        """The run as flat arrays (np.savez-able): losses, X, Y, active per step, params and Adagrad state."""
        out = {"losses": np.array(self.losses), "X": np.array(self.X), "Y": np.array(self.Y),
               "active": np.array(self.active)}
        out.update({f"param.{k}": v for k, v in self.get_params().items()})
        for s, d in self.get_opt_state().items():
            out.update({f"{s}.{k}": v for k, v in d.items()})
        return out


@functools.cache
def recording_class(backend: str):
    from gru4rec_kernels.backends import backend_class
    base = backend_class(backend)
    return type(f"Recording{base.__name__}", (Recording, base), {})


def recording_factory(backend: str, dtype: str):
    """What ``trainer.backend_class`` returns in the tests: the recording backend in ``dtype`` (numpy: any float
    dtype; the fast backends compute in float32)."""
    cls = recording_class(backend)
    if backend == "numpy":
        return functools.partial(cls, dtype=np.dtype(dtype))
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"the {backend} backend computes in float32")
    return cls


def fit_recorded(cfg, data, backend: str, dtype: str, comm=None, **fit_kw) -> dict:
    """Trainer(cfg, backend, comm).fit(data) with the recording backend; returns its record."""
    import gru4rec_kernels.trainer as tr
    orig = tr.backend_class
    tr.backend_class = lambda name: recording_factory(backend, dtype)
    try:
        kw = {} if comm is None else {"comm": comm}
        tr.Trainer(cfg, backend=backend, show_progress=False, **kw).fit(data, **fit_kw)
    finally:
        tr.backend_class = orig
    return Recording.last.record()
