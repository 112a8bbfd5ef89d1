"""A training spec: a small character-level language model on Shakespeare's sonnets.

The text (public domain) ships in ``examples/data/sonnets.txt``; upload it with the spec::

    cd examples && pilot train train_charlm.py --file data/sonnets.txt \\
        --workers 4 --inner-steps 50 --rounds 20

The last 10 % of the text is held out for ``evaluate``; the rest is cut into one
contiguous piece per shard, and each batch is random windows of that piece. The model is a
one-layer GRU over character embeddings (about 70 k parameters).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

# where the text may lie, relative to this file: beside it, in data/ (``--file data/...``
# run from examples/) or under examples/data/ (``--file examples/data/...`` from the root)
TEXT_NAMES = ("sonnets.txt", "data/sonnets.txt", "examples/data/sonnets.txt")
HELD_OUT = 0.1  # fraction of the text, from its end, kept for evaluate()
SEQUENCE = 64  # characters per training window
EMBEDDING = 32  # width of the character embedding
HIDDEN = 128  # GRU state size


def _read_text() -> str:
    for name in TEXT_NAMES:
        path = Path(__file__).parent / name
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise FileNotFoundError(f"the training text was not found (looked for {TEXT_NAMES})")


TEXT = _read_text()
VOCABULARY = sorted(set(TEXT))
CODES = torch.tensor([VOCABULARY.index(ch) for ch in TEXT], dtype=torch.long)
CUT = int(len(CODES) * (1 - HELD_OUT))
TRAIN, TEST = CODES[:CUT], CODES[CUT:]


class CharModel(torch.nn.Module):
    """Embedding -> GRU -> logits over the vocabulary, for every position."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(len(VOCABULARY), EMBEDDING)
        self.rnn = torch.nn.GRU(EMBEDDING, HIDDEN, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, len(VOCABULARY))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(self.embed(codes))
        return self.head(states)


def build_model() -> torch.nn.Module:
    return CharModel()


def shard_batches(shard: int, num_shards: int, batch_size: int,
                  seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch: enough random windows of this shard's piece to cover it about once."""
    piece = len(TRAIN) // num_shards
    start = shard * piece
    text = TRAIN[start:start + piece + SEQUENCE]  # windows may run into the next piece
    starts_available = len(text) - SEQUENCE - 1
    batches = max(1, starts_available // (SEQUENCE * batch_size))
    generator = torch.Generator().manual_seed(seed * 1_000 + shard)
    for _ in range(batches):
        offsets = torch.randint(0, starts_available + 1, (batch_size,), generator=generator)
        windows = torch.stack([text[o:o + SEQUENCE + 1] for o in offsets.tolist()])
        yield windows[:, :-1], windows[:, 1:]


def compute_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    logits = model(inputs)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1))


def evaluate(model: torch.nn.Module) -> dict[str, float]:
    """Cross-entropy per character (and bits per character) on the held-out text."""
    count = (len(TEST) - 1) // SEQUENCE
    windows = TEST[:count * SEQUENCE + 1]
    inputs = windows[:-1].reshape(count, SEQUENCE)
    targets = windows[1:].reshape(count, SEQUENCE)
    model.eval()
    with torch.no_grad():
        loss = float(compute_loss(model, (inputs, targets)))
    return {"loss": loss, "bits_per_char": loss / math.log(2)}
