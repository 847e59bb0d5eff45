"""Behaviour on real data from the GRU4REC_DATA folder (skipped when it is absent): training lowers the loss and
GRU4Rec beats popularity on recall@20 by a wide margin."""
import os

import pytest
from conftest import dataset

import gru4rec_kernels as g

DATA = str(dataset("rsc15_100k_sessionrec"))
TRAIN = os.path.join(DATA, "yoochoose-clicks-100k_train_full.txt.gz")
TEST = os.path.join(DATA, "yoochoose-clicks-100k_test.txt.gz")

pytestmark = pytest.mark.skipif(not os.path.exists(TRAIN), reason="rsc15_100k_sessionrec is absent (set GRU4REC_DATA)")


def test_rsc15_100k_two_epochs_beat_popularity():
    from gru4rec_kernels.baselines import POP
    train = g.SessionData.from_csv(TRAIN, sep="\t")
    test = g.SessionData.from_csv(TEST, sep="\t")
    cfg = g.TrainConfig(layers=[100], loss="cross-entropy", n_sample=2048, batch_size=32, n_epochs=2,
                        learning_rate=0.05)
    model = g.Trainer(cfg, backend="cpu", show_progress=False).fit(train)
    losses = [h["loss"] for h in model.history]
    assert losses[1] < losses[0]
    res = g.evaluate(model, test, cutoffs=(20,))
    pop = POP().fit(train).evaluate(test, cutoffs=(20,))
    print(f"rsc15_100k: GRU4Rec recall@20={res['recall'][20]:.4f} mrr@20={res['mrr'][20]:.4f}; "
          f"POP recall@20={pop['recall'][20]:.4f}; losses {losses}")
    assert res["recall"][20] > 3 * pop["recall"][20]
    assert res["recall"][20] > 0.3
