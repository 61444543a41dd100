"""Packing with document boundaries: the packer, index shuffling, and a
model that never attends or predicts across documents."""

import collections

import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax import attention as attention_lib
from doremi_jax import loss as loss_lib
from doremi_jax.data import packing
from doremi_jax.data import shuffling


def _docs(n, seed=0, longest=40):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(2, 50, size=rng.integers(1, longest))) + [1] for _ in range(n)]


def _segments(targets, seg):
  """The pieces of one packed row, in order."""
  return [tuple(targets[seg == j]) for j in range(1, seg.max() + 1)]


@pytest.mark.parametrize("seq_len,open_rows", [(16, 1), (16, 8), (64, 4)])
def test_packer_places_every_piece_once(seq_len, open_rows):
  docs = _docs(300)
  rows = list(packing.pack_documents(docs, seq_len, open_rows))
  expected = collections.Counter(
      tuple(d[lo:lo + seq_len]) for d in docs for lo in range(0, len(d), seq_len))
  got = collections.Counter()
  for targets, seg in rows:
    assert targets.shape == seg.shape == (seq_len,)
    used = np.count_nonzero(seg)
    # Segments 1..n fill a prefix, in order; the rest is padding (0).
    assert (seg[:used] > 0).all() and (seg[used:] == 0).all() and (targets[used:] == 0).all()
    assert (np.diff(seg[:used]) >= 0).all() and (np.diff(seg[:used]) <= 1).all()
    assert seg[0] == 1
    got.update(_segments(targets, seg))
  assert got == expected
  tokens = sum(len(d) for d in docs)
  assert len(rows) >= -(-tokens // seq_len)
  if open_rows > 1:   # first fit over several open rows wastes little
    assert tokens / (len(rows) * seq_len) > 0.85


def test_segment_positions_restart_per_document():
  seg = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  want = np.array([[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
  np.testing.assert_array_equal(np.asarray(loss_lib.segment_positions(jnp.asarray(seg))), want)


def test_model_inputs_restart_at_each_document():
  targets = jnp.array([[5, 6, 1, 7, 8, 1, 0, 0]])
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]])
  inputs, positions, mask = loss_lib.model_inputs({"targets": targets, "segment_ids": seg})
  np.testing.assert_array_equal(np.asarray(inputs), [[0, 5, 6, 0, 7, 8, 0, 0]])
  np.testing.assert_array_equal(np.asarray(positions), [[0, 1, 2, 0, 1, 2, 0, 1]])
  np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1, 1, 1, 1, 0, 0]])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 100, 1000, 4097])
def test_feistel_is_a_permutation(n):
  for keys in ([1, 2, 3, 4], shuffling.epoch_keys(7, 2, 3)):
    p = shuffling.feistel_permute(np.arange(n), n, keys)
    assert sorted(p.tolist()) == list(range(n))


def test_shuffled_rows_visit_every_row_once_per_epoch():
  n = 37
  rows = shuffling.shuffled_rows(np.arange(3 * n), n, seed=5, domain=1)
  for e in range(3):
    assert sorted(rows[e * n:(e + 1) * n].tolist()) == list(range(n))
  assert rows[:n].tolist() != rows[n:2 * n].tolist()          # a new order each epoch
  assert rows.tolist() != shuffling.shuffled_rows(np.arange(3 * n), n, 6, 1).tolist()
  # Any position's row is found on its own (what lets a host read only its rows).
  some = np.array([3, 50, 100])
  np.testing.assert_array_equal(shuffling.shuffled_rows(some, n, 5, 1), rows[some])


def _reference_attention(q, k, v, seg):
  """NumPy: softmax over keys j <= i of the query's own segment."""
  b, length, h, d = q.shape
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
  allowed = (np.tril(np.ones((length, length), bool))[None] &
             (seg[:, :, None] == seg[:, None, :]))[:, None]
  s = np.where(allowed, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


@pytest.mark.parametrize("length", [24, 128])   # 128: four query blocks
def test_attention_mask_never_crosses_documents(length):
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, length, 2, 8)).astype(np.float32) for _ in range(3))
  docs = [[1] * (length // 3) + [2] * (length // 3) + [3] * (length - 2 * (length // 3)),
          [1] * (length - 5) + [0] * 5]
  seg = np.array(docs, np.int32)
  got = attention_lib.xla_attention(*(jnp.asarray(x) for x in (q, k, v)), jnp.asarray(seg))
  np.testing.assert_allclose(np.asarray(got), _reference_attention(q, k, v, seg), atol=2e-5)


def test_packed_losses_equal_each_document_alone(tiny_model):
  """The loss of every token of a packed row equals its loss with its
  document alone in a row: nothing crosses a document boundary."""
  model, params = tiny_model
  docs = [[5, 9, 12, 3, 1], [7, 7, 8, 30, 31, 2, 1], [40, 41, 1]]
  length = 20
  targets = np.zeros((1, length), np.int32)
  seg = np.zeros((1, length), np.int32)
  at = 0
  for j, d in enumerate(docs, 1):
    targets[0, at:at + len(d)], seg[0, at:at + len(d)] = d, j
    at += len(d)
  packed, mask = loss_lib.per_token_loss(model, params, {"targets": jnp.asarray(targets),
                                                         "segment_ids": jnp.asarray(seg)})
  packed, mask = np.asarray(packed), np.asarray(mask)
  assert mask.sum() == at and (packed[0, at:] == 0).all()
  at = 0
  for d in docs:
    alone = np.zeros((1, length), np.int32)
    alone[0, :len(d)] = d
    want, _ = loss_lib.per_token_loss(model, params, loss_lib.unpacked(jnp.asarray(alone)))
    np.testing.assert_allclose(packed[0, at:at + len(d)], np.asarray(want)[0, :len(d)],
                               rtol=1e-5, atol=1e-5)
    at += len(d)
  # Without the segment ids the second document would see the first.
  crossing, _ = loss_lib.per_token_loss(model, params, loss_lib.unpacked(jnp.asarray(targets)))
  assert np.abs(np.asarray(crossing)[0, 5:12] - packed[0, 5:12]).max() > 1e-3


def test_records_round_trip():
  rows = list(packing.pack_documents(_docs(40), 32))
  for dtype in (np.uint16, np.int32):
    recs = [packing.encode_row(t, s, dtype) for t, s in rows]
    t, s = packing.decode_rows(recs, 32, dtype)
    np.testing.assert_array_equal(t, np.stack([r[0] for r in rows]))
    np.testing.assert_array_equal(s, np.stack([r[1] for r in rows]))
  with pytest.raises(Exception, match="another sequence length"):
    packing.decode_rows(recs, 16, np.int32)
