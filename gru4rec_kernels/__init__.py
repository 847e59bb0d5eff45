"""gru4rec-kernels: GRU4Rec v2 session-based recommendation on hand-written kernels.

numba.cuda kernels on CuPy arrays for the GPU, a Numba parallel backend for the CPU, and a readable numpy
reference that is the oracle for both. ``import gru4rec_kernels`` never imports cupy or numba.cuda.
"""
from ._cache import lock_numba_cache, refresh_numba_cache

refresh_numba_cache()  # before any jitted module loads a cache entry
lock_numba_cache()

from .baselines import POP, SPOP, ItemKNN
from .config import TrainConfig
from .data import SessionData
from .evaluate import evaluate
from .model import Model, ModelFileError, UnknownItemError
from .preprocess import validation_split
from .serving import SessionRecommender
from .trainer import Trainer, TrainingDivergedError

__version__ = "0.1.0"

__all__ = ["TrainConfig", "SessionData", "Trainer", "TrainingDivergedError", "Model", "ModelFileError",
           "UnknownItemError", "evaluate", "validation_split", "SessionRecommender", "POP", "SPOP", "ItemKNN",
           "__version__"]
