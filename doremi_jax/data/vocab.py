"""The vocabularies a corpus tokenizes with, without TensorFlow.

Training, packing and run_info need only ids: `vocab_size`, `eos_id`,
`pad_id`, `encode` / `decode` of Python strings and, for SentencePiece,
the model file. These classes give the ids seqio's vocabularies of the same
name give (`ByteVocabulary`: UTF-8 bytes + 3; `SentencePieceVocabulary`:
the model's own ids, read with the `sentencepiece` package;
`SyntheticVocabulary`: the synthetic corpus's 128 named ids), and their
class names are seqio's, which run_info records
(`rundir.describe_vocabulary`), so run directories and the reference/proxy
tokenizer check do not depend on which one a run used.

`seqio_vocabulary()` builds the equivalent seqio vocabulary (importing
seqio and TensorFlow) for the seqio Tasks, only when they are registered.
"""

from __future__ import annotations

import functools

from doremi_jax.data import synthetic

PAD_ID = 0


class Vocabulary:
  """Ids 0 (padding) and 1 (EOS) as seqio reserves them; `decode` stops
  after the first EOS, as seqio's does."""
  pad_id = PAD_ID
  eos_id = 1
  unk_id = None

  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  def encode(self, s) -> list:
    """The ids of the text `s` (str or UTF-8 bytes), without EOS."""
    raise NotImplementedError

  def decode_ids(self, ids: list) -> str:
    raise NotImplementedError

  def decode(self, ids) -> str:
    """The text of `ids` up through the first EOS (ids past the vocabulary
    read as UNK where there is one)."""
    ids = [int(i) for i in ids]
    if self.unk_id is not None:
      ids = [self.unk_id if i >= self.vocab_size else i for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id) + 1]
    return self.decode_ids(ids)

  def seqio_vocabulary(self):
    """The seqio vocabulary with these ids (built once; imports seqio)."""
    return _seqio_vocabulary(self)

  def make_seqio_vocabulary(self):
    raise NotImplementedError

  def __eq__(self, other):
    return type(other) is type(self) and other.key() == self.key()

  def __hash__(self):
    return hash((type(self).__name__, self.key()))

  def key(self) -> tuple:
    return ()


@functools.lru_cache(maxsize=None)
def _seqio_vocabulary(vocab: Vocabulary):
  return vocab.make_seqio_vocabulary()


def _text(s) -> str:
  return s.decode("utf-8") if isinstance(s, bytes) else s


class ByteVocabulary(Vocabulary):
  """UTF-8 bytes: id = byte + 3 (0 pad, 1 EOS, 2 UNK), 259 ids."""
  unk_id = 2
  OFFSET, BYTES = 3, 256

  @property
  def vocab_size(self) -> int:
    return self.OFFSET + self.BYTES

  def encode(self, s) -> list:
    return [b + self.OFFSET for b in _text(s).encode("utf-8")]

  def decode_ids(self, ids: list) -> str:
    kept = [i - self.OFFSET for i in ids if self.OFFSET <= i < self.vocab_size]
    return bytes(kept).decode("utf-8", errors="ignore")

  def make_seqio_vocabulary(self):
    import seqio
    return seqio.ByteVocabulary()


class SyntheticVocabulary(Vocabulary):
  """The synthetic corpus's ids, written as whitespace-separated token
  names (`synthetic.token_names`); no UNK, no extra ids."""

  def __init__(self):
    self.names = synthetic.token_names()
    self.ids = {n: i for i, n in enumerate(self.names)}

  @property
  def vocab_size(self) -> int:
    return synthetic.VOCAB_SIZE

  def encode(self, s) -> list:
    try:
      return [self.ids[t] for t in _text(s).split()]
    except KeyError as e:
      raise ValueError(f"{e.args[0]!r} is not a token of the synthetic vocabulary") from e

  def decode_ids(self, ids: list) -> str:
    return " ".join(self.names[i] for i in ids if i != synthetic.PAD)

  def make_seqio_vocabulary(self):
    from doremi_jax.data import seqio_vocab
    return seqio_vocab.SyntheticVocabulary()


class SentencePieceVocabulary(Vocabulary):
  """A SentencePiece model file's ids (as `python -m doremi_jax.tokenizer`
  trains them: pad 0, EOS 1, UNK 2). The model is loaded when first used;
  `sentencepiece_model_file` is the path as given."""

  def __init__(self, sentencepiece_model_file: str):
    self.sentencepiece_model_file = sentencepiece_model_file
    self._processor = None

  @property
  def processor(self):
    if self._processor is None:
      import sentencepiece
      from doremi_jax import files
      processor = sentencepiece.SentencePieceProcessor()
      processor.LoadFromSerializedProto(files.path(self.sentencepiece_model_file).read_bytes())
      self._processor = processor
    return self._processor

  @property
  def vocab_size(self) -> int:
    return int(self.processor.GetPieceSize())

  @property
  def eos_id(self) -> int:
    return int(self.processor.eos_id())

  @property
  def unk_id(self) -> int:
    return int(self.processor.unk_id())

  def encode(self, s) -> list:
    return list(self.processor.EncodeAsIds(_text(s)))

  def decode_ids(self, ids: list) -> str:
    return self.processor.DecodeIds(ids)

  def make_seqio_vocabulary(self):
    import seqio
    return seqio.SentencePieceVocabulary(self.sentencepiece_model_file)

  def key(self) -> tuple:
    return (self.sentencepiece_model_file,)

  def __getstate__(self):   # picklable (Beam workers): the model is loaded again
    return {"sentencepiece_model_file": self.sentencepiece_model_file, "_processor": None}
