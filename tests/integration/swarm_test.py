"""Stage `swarm`: the vmapped swarm step equals N separate single-model steps
(on the 8-device mesh and on one device), the swarm's loader gives each
member its own mixture's rows, a tiny swarm on the built-in corpus runs end
to end and resumes bitwise, and bad settings are refused before anything is
written."""

import json
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from doremi_jax import model as model_lib
from doremi_jax import steps
from doremi_jax.config import ConfigError
from doremi_jax.data import loader as loader_lib
from doremi_jax.data import weights as weights_lib
from doremi_jax.sharding import MeshConfig
from doremi_jax.state import TrainConfig, build_setup
from doremi_jax.swarm import program as swarm_lib

from helpers import run_stage, configure, stopped_run

MODEL = model_lib.ModelConfig(d_model=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64,
                              max_len=64)


def _batches(rng, m, b, length, k, n):
  return [{"targets": (t := rng.integers(0, 64, (m, b, length)).astype(np.int32)),
           "segment_ids": (t != 0).astype(np.int32),
           "domain_ids": rng.integers(0, k, (m, b)).astype(np.int32)} for _ in range(n)]


@pytest.mark.parametrize("devices, mesh", [(8, MeshConfig(data=4, fsdp=2)), (1, MeshConfig())])
def test_swarm_step_equals_separate_single_model_steps(devices, mesh):
  """On 8 devices the members are split 4 ways and each member 2 ways."""
  members, k, b, length = 4, 3, 8, 16
  cfg = TrainConfig(num_steps=10, global_batch_size=b, seq_len=length)
  seeds = [3, 1, 4, 1]
  setup = swarm_lib.swarm_setup(64, cfg, members, model_cfg=MODEL, mesh_cfg=mesh,
                                devices=jax.devices()[:devices])
  swarm = swarm_lib.swarm_program(setup, k, 1, length, seeds)
  state = swarm.init()
  assert state.params["embed"]["embedding"].sharding.spec[0] == "data"
  single = steps.lm_program(build_setup(64, cfg, model_cfg=MODEL, devices=jax.devices()[:1]),
                            k, 1, length)
  batches = _batches(np.random.default_rng(0), members, b, length, k, 2)
  singles = [single.init(s) for s in seeds]
  # member m starts where a single model with seed m starts, bit for bit
  for m, s in enumerate(singles):
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(s)):
      np.testing.assert_array_equal(np.asarray(x)[m], np.asarray(y))
  for batch in batches:
    state, metrics = swarm(state, swarm.global_batch(batch))
    for m in range(members):
      singles[m], one = single(singles[m], {key: v[m] for key, v in batch.items()})
      np.testing.assert_allclose(metrics["member_loss"][m], one["loss"], rtol=2e-6)
      np.testing.assert_allclose(metrics["member_domain_loss"][m], one["domain_loss"],
                                 rtol=2e-6)
      np.testing.assert_allclose(metrics["member_grad_norm"][m], one["grad_norm"], rtol=2e-5)
  for m, s in enumerate(singles):
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(s)):
      np.testing.assert_allclose(np.asarray(x)[m], np.asarray(y), rtol=1e-5, atol=1e-6)


def test_swarm_needs_members_divisible_by_the_member_axis():
  cfg = TrainConfig(num_steps=10, global_batch_size=8, seq_len=16)
  with pytest.raises(ConfigError, match="choose train_swarm.members divisible by 8"):
    swarm_lib.swarm_setup(64, cfg, 6, model_cfg=MODEL)
  setup = swarm_lib.swarm_setup(64, cfg, 6, model_cfg=MODEL, mesh_cfg=MeshConfig(data=2, fsdp=4))
  assert dict(setup.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_member_rows_are_each_members_own_mixture_draws():
  mixtures = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
  a = swarm_lib.SwarmAssignment(mixtures, [0, 0, 7])
  rows = a(5, 12)
  for m in range(3):
    np.testing.assert_array_equal(
        rows[4 * m:4 * m + 4],
        loader_lib.MixtureAssignment(mixtures[m], [0, 0, 7][m])(5, 4))
  assert set(rows[:4]) == {0} and set(rows[8:]) == {2}


SMALL = [
    "include 'gin/cpu.gin'", "run.stage = 'swarm'",
    "SEQ_LEN = 32", "STEPS = 12", "BATCH = 8",
    "TrainConfig.checkpoint_every = 6", "TrainConfig.log_every = 3",
    "TrainConfig.eval_examples_per_domain = 8", "TrainConfig.eval_batch_size = 8",
    "TrainConfig.tensorboard = False", "TrainConfig.async_checkpointing = False",
    "train_swarm.members = 6", "train_swarm.corners = ['sort']",
    "train_swarm.repetitions = 4", "train_swarm.candidates = 4000", "train_swarm.top_k = 32",
    "train_swarm.folds = 3",
]


def _swarm(workdir, *bindings, devices=2):
  return run_stage("swarm", workdir, SMALL + list(bindings), devices=devices)


@pytest.fixture(scope="module")
def tiny_swarm(tmp_path_factory):
  wd = tmp_path_factory.mktemp("swarm") / "run"
  return wd, _swarm(wd)


def test_swarm_stage_writes_fits_optimum_and_report(tiny_swarm):
  wd, result = tiny_swarm
  on_disk = json.loads((wd / "swarm.json").read_text())
  assert on_disk == json.loads(json.dumps(result))
  domains = on_disk["domains"]
  mixtures = np.array(on_disk["mixtures"])
  assert mixtures.shape == (6, 5)
  np.testing.assert_array_equal(mixtures[0], np.full(5, 0.2))          # uniform first
  np.testing.assert_array_equal(mixtures[1], np.eye(5)[domains.index("sort")])   # the corner
  # every member's losses are its final evaluation on the run's examples
  final = json.loads((wd / "eval.json").read_text())
  np.testing.assert_allclose(on_disk["losses"], final["members"], rtol=1e-12)
  losses = np.array(on_disk["losses"])
  assert losses.shape == (6, 5) and np.all(np.isfinite(losses))
  assert len({tuple(r) for r in np.round(losses, 6)}) == 6   # members differ
  for law in ("loglinear", "linear", "gbm"):
    r = on_disk["laws"][law]
    assert set(r["cross_validation"]) == set(domains) | {"average", "worst"}
    assert len(r["objective_cross_validation"]["predicted"]) == 6
    rho = r["cross_validation"]["average"]["spearman"]
    assert rho is None or -1 <= rho <= 1
    w = np.array([r["optimum"][d] for d in domains])
    assert abs(w.sum() - 1) < 1e-9 and np.all(w >= 0)
    caps = np.array([on_disk["caps"][d] for d in domains])
    assert np.all(w <= caps + 1e-9)
  assert on_disk["weights"] == on_disk["laws"]["loglinear"]["optimum"]
  # swarm_weights.json is a weights file Step 3 reads
  w = json.loads((wd / "swarm_weights.json").read_text())
  assert w == on_disk["weights"]
  from doremi_jax.data.registry import get_corpus
  configure(SMALL)
  np.testing.assert_allclose(
      weights_lib.resolve_weights(str(wd / "swarm_weights.json"), get_corpus()),
      [w[d] for d in domains], rtol=1e-12)
  info = json.loads((wd / "run_info.json").read_text())
  assert info["members"] == 6 and info["tokens_per_step"] == 6 * 8 * 32
  report = (wd / "swarm.md").read_text()
  assert "Cross-validated quality" in report and "loglinear optimum" in report
  assert (wd / "plots" / "swarm_fits.png").stat().st_size > 10_000
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert np.array(rows[-1]["member_domain_loss"]).shape == (6, 5)


def test_a_killed_swarm_resumes_then_stops_on_sigterm_and_resumes_bitwise(tiny_swarm,
                                                                           tmp_path):
  """Killed after checkpoint 6 (later checkpoints and results gone), then
  re-run with a SIGTERM at step 8: it resumes from 6 and stops with a
  checkpoint of step 8; the next re-run resumes from 8. The final state,
  metrics and swarm.json equal the uninterrupted run's, bit for bit."""
  wd, result = tiny_swarm
  copy = tmp_path / "run"
  shutil.copytree(wd, copy)
  for p in (copy / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > 6:
      shutil.rmtree(p)
  for name in ("complete.json", "eval.json", "swarm.json", "swarm_weights.json"):
    (copy / name).unlink()
  assert stopped_run(lambda: _swarm(copy, devices=2), 8).step == 8
  assert (copy / "checkpoints" / "8").is_dir() and not (copy / "swarm.json").exists()
  again = _swarm(copy, devices=2)
  a = ocp.StandardCheckpointer().restore(wd / "checkpoints" / "12" / "state")
  b = ocp.StandardCheckpointer().restore(copy / "checkpoints" / "12" / "state")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  rows = [[{k: v for k, v in json.loads(l).items() if k != "timestamp"}
           for l in (d / "metrics.jsonl").read_text().splitlines()] for d in (wd, copy)]
  assert rows[0] == rows[1]
  assert json.dumps(again) == json.dumps(result)


@pytest.mark.parametrize("binding, message", [
    ("train_swarm.members = 5", "train_swarm.members=5 is too few for 5 domains"),
    ("train_swarm.prior = {'noise': 1, 'repeat': -1, 'markov': 1, 'arithmetic': 1, 'sort': 1}",
     "negative"),
    ("train_swarm.prior = {'noise': 0, 'repeat': 0, 'markov': 0, 'arithmetic': 0, 'sort': 0}",
     "train_swarm.prior"),
    ("train_swarm.repetitions = 0.001", "caps sum to"),
    ("train_swarm.law = 'cubic'", "train_swarm.law='cubic'"),
    ("train_swarm.objective = ['wiki']", "each must be one of the corpus's domains"),
    ("train_swarm.corners = ['wiki']", "train_swarm.corners must list domain names"),
    ("train_swarm.members = 6", "choose train_swarm.members divisible by 4"),
    ("train_swarm.groups = 4", "train_swarm.groups=4 does not divide the 6 members"),
    ("train_swarm.groups = 0", "train_swarm.groups"),
    ("train_swarm.group = 3", "train_swarm.group=3: name a group 0..0"),
])
def test_bad_swarm_settings_fail_before_anything_is_written(tmp_path, binding, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    _swarm(tmp_path / "s", binding, devices=4)
  assert not (tmp_path / "s").exists()


def test_a_swarm_split_into_groups_trains_each_members_rows_and_fits_as_one_program(
    tiny_swarm, tmp_path):
  """`train_swarm.groups = 3`: three runs of 2 members each, every member
  drawing exactly the rows it draws in the one-program swarm (so its
  metrics and losses match to float rounding), and one fit over all six in
  the members' order. `group=1` alone trains only its run; the full call
  then trains the rest and fits; a re-run reads the fit."""
  wd, whole = tiny_swarm
  split = tmp_path / "split"
  assert _swarm(split, "train_swarm.groups = 3", "train_swarm.group = 1")["members"]
  assert sorted(p.name for p in split.iterdir() if p.name.startswith("group_")) == ["group_1"]
  assert not (split / "swarm.json").exists()
  result = _swarm(split, "train_swarm.groups = 3")
  assert result["groups"] == ["group_0", "group_1", "group_2"]
  assert result["mixtures"] == whole["mixtures"]
  np.testing.assert_allclose(result["losses"], whole["losses"], rtol=2e-5)
  whole_rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  for g in range(3):
    run = split / f"group_{g}"
    mix = json.loads((run / "swarm_mixtures.json").read_text())
    assert mix["members"] == [2 * g, 2 * g + 1]
    assert mix["mixtures"] == whole["mixtures"][2 * g:2 * g + 2]
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in whole_rows]
    for a, b in zip(rows, whole_rows):
      np.testing.assert_allclose(a["member_loss"], b["member_loss"][2 * g:2 * g + 2],
                                 rtol=2e-5)
    info = json.loads((run / "run_info.json").read_text())
    assert (info["members"], info["group"], info["tokens_per_step"]) == (2, g, 2 * 8 * 32)
  on_disk = json.loads((split / "swarm.json").read_text())
  assert on_disk == json.loads(json.dumps(result))
  assert set(on_disk["laws"]) == set(whole["laws"])
  for law in on_disk["laws"]:
    w = [on_disk["laws"][law]["optimum"][d] for d in on_disk["domains"]]
    assert abs(sum(w) - 1) < 1e-9
  info = json.loads((split / "run_info.json").read_text())
  assert (info["sampling"], info["groups"], info["flops_per_token"]) == ("groups", 3, 0.0)
  assert json.loads((split / "swarm_mixtures.json").read_text())["mixtures"] == \
      whole["mixtures"]
  assert (split / "complete.json").exists() and (split / "swarm.md").exists()
  assert not list(split.rglob("lock.json"))
  assert json.dumps(_swarm(split, "train_swarm.groups = 3")) == json.dumps(result)
  # group 2 killed after its checkpoint 6, before the fit: the re-run resumes
  # it and fits to the same numbers
  killed = tmp_path / "killed"
  shutil.copytree(split, killed)
  for p in (killed / "group_2" / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > 6:
      shutil.rmtree(p)
  for name in ("group_2/complete.json", "group_2/eval.json", "complete.json", "swarm.json",
               "swarm_weights.json"):
    (killed / name).unlink()
  again = _swarm(killed, "train_swarm.groups = 3")
  assert (killed / "group_2" / "run_info.resumed_at_6.json").exists()
  assert not list((killed / "group_1").glob("run_info.resumed_at_*"))
  assert json.dumps(again) == json.dumps(result)


def test_a_swarm_fits_and_aims_at_a_tasks_bpb(tmp_path):
  """Task targets: every member's `tune` BPB of the task is fitted like a
  domain's loss, and the objective may name it alone."""
  wd = tmp_path / "run"
  result = _swarm(wd, "STEPS = 6", "TrainConfig.checkpoint_every = 0",
                  "TrainConfig.eval_tasks = ['markov_next']",
                  "TrainConfig.eval_task_examples = 12",
                  "train_swarm.objective = ['markov_next']")
  assert result["objective_terms"] == {"markov_next/bpb": 1.0}
  final = json.loads((wd / "eval.json").read_text())
  measured = [m["markov_next"]["bpb"] for m in final["member_tasks"]]
  assert all(m["markov_next"]["questions"] == 12 for m in final["member_tasks"])
  np.testing.assert_allclose(result["targets"]["markov_next/bpb"], measured, rtol=1e-12)
  assert len({round(x, 9) for x in measured}) > 1          # each member's own parameters
  np.testing.assert_allclose(result["best_member"]["objective"], min(measured), rtol=1e-12)
  for law in ("loglinear", "linear", "gbm"):
    assert "markov_next/bpb" in result["laws"][law]["cross_validation"]
  assert "markov_next/bpb" in (wd / "swarm.md").read_text()
