"""A training spec: a small classifier on scikit-learn's bundled digits data set.

8x8 images of handwritten digits (1,797 of them, shipped inside scikit-learn, so nothing is
downloaded). A fixed 20 % is held out for ``evaluate``; the rest is dealt round-robin into
shards. Run it across workers with::

    pilot train examples/train_digits.py --workers 4 --inner-steps 50 --rounds 20
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from sklearn.datasets import load_digits

HELD_OUT = 0.2  # fraction of the data kept for evaluate()
SPLIT_SEED = 0  # the held-out split is the same for every run and worker
HIDDEN = 64  # hidden units of the classifier


def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixels are 0..16
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    cut = int(len(labels) * (1 - HELD_OUT))
    train, test = order[:cut], order[cut:]
    return images[train], labels[train], images[test], labels[test]


TRAIN_X, TRAIN_Y, TEST_X, TEST_Y = _load()


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, 10),
    )


def shard_batches(shard: int, num_shards: int, batch_size: int,
                  seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of this shard's examples, shuffled by ``seed``, in batches."""
    indexes = torch.arange(shard, len(TRAIN_Y), num_shards)
    order = indexes[torch.randperm(len(indexes), generator=torch.Generator().manual_seed(seed))]
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        yield TRAIN_X[chosen], TRAIN_Y[chosen]


def compute_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images, labels = batch
    return torch.nn.functional.cross_entropy(model(images), labels)


def evaluate(model: torch.nn.Module) -> dict[str, float]:
    """Cross-entropy and accuracy on the held-out images."""
    model.eval()
    with torch.no_grad():
        logits = model(TEST_X)
        loss = torch.nn.functional.cross_entropy(logits, TEST_Y)
        accuracy = (logits.argmax(dim=1) == TEST_Y).float().mean()
    return {"loss": float(loss), "accuracy": float(accuracy)}
