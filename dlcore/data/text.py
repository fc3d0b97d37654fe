"""Tagged sentences and vocabularies for the LSTM tagger (SPEC 2.7.1)."""
from __future__ import annotations

import numpy as np

UNK = "<unk>"

# The tag set and sentences of SPEC 2.7.1.
TAG_TO_IX = {"DET": 0, "NN": 1, "V": 2}
# SPEC's training sentences (PyTorch's tutorial). "cat", "fish" and "They" are unknown to them.
SPEC_TRAINING_DATA = [
    ("The dog ate the apple".split(), ["DET", "NN", "V", "DET", "NN"]),
    ("Everybody read that book".split(), ["NN", "V", "DET", "NN"]),
]
# The sentences the seed actually trained on, reconstructed from its printed vocabulary
# indices (The=0 cat=1 ate=2 the=3 fish=4 They=5): the first is the sentence it printed
# after training, the second must hold "They" (index 5) and the words after it.
BOOK_TRAINING_DATA = [
    ("The cat ate the fish".split(), ["DET", "NN", "V", "DET", "NN"]),
    ("They read that book".split(), ["NN", "V", "DET", "NN"]),
]
TRAINING_SETS = {"book": BOOK_TRAINING_DATA, "spec": SPEC_TRAINING_DATA}
TEST_SENTENCES = ["The cat ate the fish".split(), "They ate the fish".split()]
SEED_PREDICTIONS = {"The cat ate the fish": [0, 1, 2, 0, 1], "They ate the fish": [1, 2, 0, 1]}


class Vocab:
  """Word -> index, with index 0 reserved for unknown words."""

  def __init__(self, sentences):
    self.itos = [UNK]
    for sent in sentences:
      for w in sent:
        if w not in self.itos:
          self.itos.append(w)
    self.stoi = {w: i for i, w in enumerate(self.itos)}

  def __len__(self):
    return len(self.itos)

  def encode(self, words) -> np.ndarray:
    return np.array([self.stoi.get(w, 0) for w in words], dtype=np.int32)

  def unknown(self, words) -> list[str]:
    return [w for w in words if w not in self.stoi]


def read_tagged(path: str):
  """A corpus file: one sentence per line, tokens `word/TAG` (e.g. `The/DET dog/NN`)."""
  data = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      toks = line.split()
      if not toks:
        continue
      bad = [t for t in toks if "/" not in t]
      if bad:
        raise ValueError(f"{path}:{lineno}: tokens must be word/TAG, got {bad[:3]}")
      words, tags = zip(*(t.rsplit("/", 1) for t in toks))
      data.append((list(words), list(tags)))
  if not data:
    raise ValueError(f"{path}: no sentences")
  return data
