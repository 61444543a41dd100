"""The synthetic vocabulary as a seqio vocabulary, for the seqio Tasks of
the synthetic corpus (imported only when they are registered: it imports
seqio and TensorFlow). Its ids, and its class name (what run_info records), are
`vocab.SyntheticVocabulary`'s."""

from __future__ import annotations

import seqio
import tensorflow as tf

from doremi_jax.data import synthetic


class SyntheticVocabulary(seqio.Vocabulary):
  """Maps whitespace-separated token names to ids and back.

  Id 0 is padding and id 1 is EOS, as seqio expects; there are no extra ids.
  """

  def __init__(self):
    self._names = synthetic.token_names()
    self._ids = {n: i for i, n in enumerate(self._names)}
    super().__init__(extra_ids=0)

  @property
  def eos_id(self):
    return synthetic.EOS

  @property
  def unk_id(self):
    return None

  @property
  def _base_vocab_size(self):
    return synthetic.VOCAB_SIZE

  def _encode(self, s):
    try:
      return [self._ids[t] for t in s.split()]
    except KeyError as e:
      raise ValueError(f"{e.args[0]!r} is not a token of the synthetic vocabulary") from e

  def _decode(self, ids):
    return " ".join(self._names[i] for i in ids if i not in (synthetic.PAD,))

  def _encode_tf(self, s):
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(self._names), tf.range(len(self._names), dtype=tf.int32)), -1)
    return table.lookup(tf.strings.split(s))

  def _decode_tf(self, ids):
    names = tf.gather(tf.constant(self._names), ids)
    return tf.strings.reduce_join(names, axis=-1, separator=" ")

  def __eq__(self, other):
    return isinstance(other, SyntheticVocabulary)

  def __hash__(self):
    return hash("SyntheticVocabulary")
