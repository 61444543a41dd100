"""Tokenising requests the way the field's evaluators do.

Every sequence the model reads starts with the document-start input 0 (as
in training, `loss.model_inputs`), so a context may be empty: the first
continuation token is then predicted from the start of a document alone.
`encode_pair` tokenises the joined string and splits it where the
context's own tokens end, so the continuation's tokens are exactly the
joined string's tail (a tokenizer may merge across the boundary), and a
context's trailing whitespace moves to the continuation, as
lm-evaluation-harness does.
"""

from __future__ import annotations


def encode_pair(vocabulary, context: str, continuation: str) -> tuple:
  """(context ids, continuation ids) of one request (see the module
  docstring). The continuation keeps at least one token."""
  stripped = context.rstrip()
  continuation = context[len(stripped):] + continuation
  whole = list(vocabulary.encode(stripped + continuation))
  n_context = len(vocabulary.encode(stripped)) if stripped else 0
  n_context = min(n_context, len(whole) - 1)
  return whole[:n_context], whole[n_context:]
