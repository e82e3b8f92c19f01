"""The README's fine-tuning example, run as written (with the digits as data)."""

from __future__ import annotations

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def test_fine_tuning_with_a_frozen_layer_as_in_the_readme():
    gc.manual_seed(0)
    X, Y = gc.data.load_digits()
    X, Xv, Y, Yv = X[:1200], X[1200:], Y[:1200], Y[1200:]
    x = gc.input("x", shape=("batch", 64))
    y = gc.input("y", shape=("batch",), dtype="int64")
    pretrained = MLP().state_dict()

    model = MLP()
    model.load_state_dict(pretrained)
    model.fc1.requires_grad_(False)
    logits = model(x)
    trainer = gc.Trainer(nn.CrossEntropyLoss()(logits, y), gc.optim.SGD(model.parameters(), lr=0.1), [x, y])
    sched = gc.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=3, gamma=0.5)
    evaluate = gc.compile([x], {"logits": model.eval()(x)})
    accuracies, lrs = [(evaluate.run({"x": Xv})["logits"].argmax(1) == Yv).mean()], []
    for epoch in range(6):
        trainer.fit(gc.data.DataLoader(X, Y, batch_size=64, shuffle=True, seed=epoch), epochs=1, progress=False)
        lrs.append(trainer.optimizer.lr)
        sched.step()
        accuracies.append((evaluate.run({"x": Xv})["logits"].argmax(1) == Yv).mean())

    np.testing.assert_array_equal(model.fc1.weight.data, pretrained["fc1.weight"])  # frozen: untouched
    assert not np.array_equal(model.fc2.weight.data, pretrained["fc2.weight"])
    assert lrs == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05]
    assert accuracies[0] < 0.3 and accuracies[-1] > 0.75  # random features, trained head: the program followed
