"""bench/ladder.py's summary from two finished ladders laid out on disk:
the seconds inside runs summed per part, the grid's extra runs (those the
halving directory lacks), and the FLOPs and choices read from study.json."""

import json
import os
import sys

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import ladder  # noqa: E402


def _run(root, rel, seconds):
  d = root / rel
  d.mkdir(parents=True)
  (d / "complete.json").write_text(json.dumps({"seconds": seconds}))


def _study(root, choice, compute=None):
  root.mkdir(parents=True, exist_ok=True)
  (root / "study.json").write_text(json.dumps({
      "rungs": [{"name": "tiny"}, {"name": "big"}], "choice": {"arm": choice},
      "schedule": {"compute": compute or {}, "stopped_at": {"b": "tiny"}}}))


def test_summary_sums_each_part_and_the_grids_extra_runs(tmp_path):
  h, g = tmp_path / "h", tmp_path / "g"
  _study(h, "a", {"main_run_flops": 3.0, "grid_main_run_flops": 4.0, "fraction_of_grid": 0.75})
  _study(g, "a")
  for root in (h, g):
    _run(root, "doremi/seed_0/round_1/reference", 2.0)
    _run(root, "swarm/seed_0/group_0", 5.0)
    _run(root, "rungs/tiny/arms/a/seed_0", 1.0)
    _run(root, "rungs/tiny/arms/b/seed_0", 1.5)
    _run(root, "rungs/big/arms/a/seed_0", 4.0)
    (root / "complete.json").write_text(json.dumps({"seconds": 99.0}))   # not a run's
  _run(g, "rungs/big/arms/b/seed_0", 6.0)
  r = ladder.summarise(h, g, (10.0, 7.0), "given")
  assert r["rungs"] == ["tiny", "big"]
  assert r["halving"]["parts"] == {"methods": {"runs": 2, "seconds": 7.0},
                                   "tiny": {"runs": 2, "seconds": 2.5},
                                   "big": {"runs": 1, "seconds": 4.0}}
  assert r["halving"]["run_seconds"] == 13.5 and r["grid"]["run_seconds"] == 19.5
  assert r["grid"]["run_seconds_extra"] == 6.0 and r["grid"]["wall_s_from_scratch"] == 17.0
  assert (r["halving"]["main_run_flops"], r["grid"]["main_run_flops"]) == (3.0, 4.0)
  assert r["halving"]["choice"] == {"arm": "a"} and r["halving"]["stopped_at"] == {"b": "tiny"}
  header, rows = ladder.table(r)
  assert len(rows) == 2 and rows[0][2] == "10" and rows[1][2] == "17"
  assert ladder.summarise(h, g, (None, None), "not measured")["grid"]["wall_s_from_scratch"] \
      is None
