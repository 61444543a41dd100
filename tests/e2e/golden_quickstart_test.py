"""The headline behaviour of DoReMi on the built-in corpus: the quickstart's
weights (README's first command, the session's shared run) are the
recorded ones (see tests/unit/golden_test.py for how to update them)."""

import json

from helpers import check_golden


def test_quickstart_doremi_weights(quickstart_run):
  """README's first command (gin/quickstart.gin, one device, the session's
  shared run): the noise domain, which has nothing to learn, ends below 0.05
  and the averaged weights are the recorded ones."""
  wd, _, r = quickstart_run
  assert r.returncode == 0, r.stderr[-3000:]
  weights = json.loads((wd / "round_1" / "proxy" / "average_domain_weights.json").read_text())
  assert weights["noise"] < 0.05, weights
  check_golden("quickstart_weights", {d: [w] for d, w in weights.items()}, rtol=1e-4)
