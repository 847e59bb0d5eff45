"""numba.cuda kernels of GRU4Rec v2 (and its p-RNN), one module per family (installed as ``gru4rec_kernels.kernels``).

    gru           GRU gates forward / backward (fused elementwise around the GEMMs), hidden reset, dropout
    scores_loss   the five losses and dZ from the score GEMM's output, each row in chunks over several blocks
    adagrad       dense Adagrad over the flat buffer, sparse row Adagrad with duplicate coalescing, clipping
    embedding     row gathers (with input dropout) and atomic scatter-adds
    evaluate      all-item rank counts after the score GEMM
    gemm          tiled float32 SGEMM (A B, A B^T, A^T B; accumulate; deterministic split-K; several products per
                  launch): every matrix product of the step, bias column sums included, so that the whole step
                  can be captured in a CUDA graph (CuPy refuses cuBLAS calls while capturing)
    step          the device step counter that lets one CUDA graph replay over a chunk of the schedule, and the
                  step's first gathers (hidden reset, input embedding, Wy[Y]) in the same launch
    features      a p-RNN's sparse (CSR) item-feature input: the weighted row gather-sum and its gradient slots
    subnets       a p-RNN's subnet blocks of the output layer: the scaled concatenation of the top states, and
                  the split of its gradient
    common        device functions (Philox, activations, block reductions), block-size defaults, checks

Each family module exposes ``KERNELS = {name: (python function, [signature, ...])}`` and one ``launch_*``
function per kernel. Importing this package imports nothing; the modules import ``numba.cuda`` but compile
nothing until a kernel is first launched (``common.get_kernel``).
"""
FAMILIES = ("gru", "scores_loss", "adagrad", "embedding", "evaluate", "gemm", "step", "features", "subnets")
