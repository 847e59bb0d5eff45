"""The Numba CPU backend: GRU4Rec v2 training and evaluation steps (docs/design.md section 2) in Numba kernels.

It computes exactly ``reference.train_step`` (forward in the three input modes, scores, the five losses with
the reference's negatives mask, backward, global-norm clipping, dense and sparse Adagrad with momentum) and
``reference.hidden_step`` + ``score_all`` + ``rank_counts`` for evaluation, in float32, over its own arrays.
One kernel family per module, mirroring ``gru4rec_kernels/kernels`` (the CUDA twins carry the same names):

    gemm.py          the GEMM micro-kernel (LLVM IR), its tile loops, batched products
    mathf.py         exp / sigmoid / tanh, final_act / final_act_grad
    gru.py           input gathers with dropout, gru_fwd (rz / out), gru_bwd (cz / r), the inference steps
    scores_loss.py   scores, row_loss, score_grads
    adagrad.py       sumsq / clip_scale / scale, adagrad_dense, sparse_adagrad
    evaluate.py      eval_fwd, rank_counts
    step.py          step_grads + apply_grads (a step's two halves), train_chunk_steps: T whole steps per call
    buffers.py       the named argument structures (Params, Grads, OptState, Workspace, Hyper, Chunk)
    backend.py       CpuBackend

Determinism: every output element is written by one loop iteration whose arithmetic does not depend on the
thread that runs it (fixed tiles, fixed chunks); there are no atomics; sums across iterations are split into
fixed chunks added in a fixed order. Results are bit-identical from run to run and for any thread count.
``fastmath`` is limited to reassociation / contraction in the GEMMs and plain sums and to ``arcp``/``afn`` in
the Adagrad updates; the loss and activation code keeps IEEE semantics (inf, nan).
"""
from .backend import CpuBackend

__all__ = ["CpuBackend"]
