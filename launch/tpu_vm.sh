#!/usr/bin/env bash
# Run doremi_jax on a GCP Cloud TPU VM slice (single- or multi-host).
#
#   launch/tpu_vm.sh COMMAND --project P --zone Z --name N [options] [-- GIN ARGS]
#
# Commands:
#   create    create the TPU VM (on-demand, --spot, or --queued resources)
#   setup     copy this checkout to every worker and `pip install .[tpu]` there
#   run       start `python -m doremi_jax.main --gin_file G --workdir W` on all
#             workers (in the background; output in ~/doremi_run.log on each)
#   logs      tail the log of worker 0 (or --worker K)
#   status    print the TPU VM's state
#   stop      stop the TPU VM (keeps its disk)
#   delete    delete the TPU VM (and its queued resource)
#   babysit   keep a run alive: recreate a preempted VM, set it up, and re-run
#             the same command, which resumes from the last checkpoint in the
#             (gs://) run directory; exits when the run wrote its completion
#             marker, or after --max-restarts recreations
#
# Options:
#   --project P            GCP project (required)
#   --zone Z               zone, e.g. us-east5-a (required)
#   --name N               TPU VM name (required); N1,N2,... runs the command on
#                          each slice (a study's workers: `run` starts the same
#                          command on every slice and they share its runs)
#   --accelerator-type T   e.g. v4-8, v5litepod-16, v5p-64 (create, babysit)
#   --runtime-version V    TPU software version, e.g. v2-alpha-tpuv5 (create, babysit)
#   --spot                 spot capacity (create, babysit)
#   --queued               create through queued resources (create, babysit)
#   --gin-file F           gin file, relative to the checkout (run, babysit)
#   --workdir W            run directory, gs://bucket/path for multi-host (run, babysit)
#   --worker K             worker for `logs` (default 0)
#   --poll-seconds S       babysit: seconds between checks (default 300)
#   --max-restarts R       babysit: give up after R recreations (default 20)
#   --dry-run              print every command instead of running it
#   -- ARGS                anything after -- is passed to doremi_jax.main
#                          (e.g. --gin.TrainConfig.num_steps=1000)
#
# Example:
#   launch/tpu_vm.sh create  --project my-proj --zone us-east5-a --name doremi \
#       --accelerator-type v5p-64 --runtime-version v2-alpha-tpuv5 --spot
#   launch/tpu_vm.sh setup   --project my-proj --zone us-east5-a --name doremi
#   launch/tpu_vm.sh run     --project my-proj --zone us-east5-a --name doremi \
#       --gin-file gin/pod/doremi_280m_8b.gin --workdir gs://my-bucket/doremi/run1

set -euo pipefail

usage() {
  sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  echo "error: $*" >&2
  exit 2
}

COMMAND="${1:-}"
if [[ -z "$COMMAND" || "$COMMAND" == "-h" || "$COMMAND" == "--help" ]]; then
  usage
  exit 0
fi
shift

PROJECT="" ZONE="" NAME="" ACCELERATOR="" RUNTIME="" SPOT=0 QUEUED=0
GIN_FILE="" WORKDIR="" WORKER=0 POLL=300 MAX_RESTARTS=20 DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --accelerator-type) ACCELERATOR="${2:?--accelerator-type needs a value}"; shift 2 ;;
    --runtime-version) RUNTIME="${2:?--runtime-version needs a value}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --gin-file) GIN_FILE="${2:?--gin-file needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --worker) WORKER="${2:?--worker needs a value}"; shift 2 ;;
    --poll-seconds) POLL="${2:?--poll-seconds needs a value}"; shift 2 ;;
    --max-restarts) MAX_RESTARTS="${2:?--max-restarts needs a value}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option '$1' (see launch/tpu_vm.sh --help)" ;;
  esac
done

[[ -n "$PROJECT" ]] || die "--project is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$NAME" ]] || die "--name is required"

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="doremi_jax"
LOG_FILE="doremi_run.log"
STATUS_FILE="doremi_run.status"
GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--project="$PROJECT" --zone="$ZONE")

# Runs a command, or prints it (shell-quoted) with --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

need() {
  local value="$1" flag="$2"
  [[ -n "$value" ]] || die "$COMMAND needs $flag"
}

cmd_create() {
  need "$ACCELERATOR" --accelerator-type
  need "$RUNTIME" --runtime-version
  local capacity=()
  [[ "$SPOT" == 1 ]] && capacity=(--spot)
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources create "$NAME-qr" "${WHERE[@]}" \
      --node-id="$NAME" --accelerator-type="$ACCELERATOR" \
      --runtime-version="$RUNTIME" "${capacity[@]}"
    echo "queued resource $NAME-qr requested; 'status' shows when $NAME is READY" >&2
  else
    run "${GCLOUD_TPU[@]}" create "$NAME" "${WHERE[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${capacity[@]}"
  fi
}

cmd_setup() {
  local tarball
  tarball="$(mktemp -d)/doremi_jax.tar.gz"
  run tar -czf "$tarball" -C "$REPO_DIR" --exclude=.git --exclude=runs --exclude=.venv \
    --exclude='*.egg-info' .
  run "${GCLOUD_TPU[@]}" scp "$tarball" "$NAME:doremi_jax.tar.gz" "${WHERE[@]}" --worker=all
  run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command \
    "set -e; rm -rf ~/$REMOTE_DIR; mkdir -p ~/$REMOTE_DIR; tar -xzf ~/doremi_jax.tar.gz -C ~/$REMOTE_DIR; cd ~/$REMOTE_DIR; python3 -m pip install --upgrade pip; python3 -m pip install -e '.[tpu]'"
}

# The command line run on every worker.
# The run, in the background; when it ends its exit status is written to
# ~/doremi_run.status (0: finished, 75: stopped on SIGTERM/Ctrl-C with a
# checkpoint, 2: bad input, other: a failure), which `babysit` reads.
remote_main() {
  local args=(python3 -m doremi_jax.main --gin_file "$GIN_FILE" --workdir "$WORKDIR")
  args+=("${EXTRA[@]}")
  local quoted
  quoted="$(printf ' %q' "${args[@]}")"
  # shellcheck disable=SC2016  # $@ and $? are the remote shell's
  echo "cd ~/$REMOTE_DIR && rm -f ~/$STATUS_FILE && nohup sh -c '\"\$@\"; echo \$? > ~/$STATUS_FILE' doremi${quoted} > ~/$LOG_FILE 2>&1 &"
}

cmd_run() {
  need "$GIN_FILE" --gin-file
  need "$WORKDIR" --workdir
  [[ -f "$REPO_DIR/$GIN_FILE" || "$DRY_RUN" == 1 ]] || die "gin file $GIN_FILE not found in $REPO_DIR"
  run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$(remote_main)"
}

cmd_logs() {
  run "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker="$WORKER" --command \
    "tail -n 200 -F ~/$LOG_FILE"
}

cmd_status() {
  run "${GCLOUD_TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)'
}

cmd_stop() {
  run "${GCLOUD_TPU[@]}" stop "$NAME" "${WHERE[@]}"
}

cmd_delete() {
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$NAME-qr" "${WHERE[@]}" --force --quiet
  else
    run "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
  fi
}

# The run has finished when its completion marker is in the run directory:
# pipeline.json with status "complete" (pipeline), complete.json (one stage).
run_finished() {
  if gcloud storage cat "$WORKDIR/pipeline.json" 2>/dev/null | grep -q '"status": "complete"'; then
    return 0
  fi
  gcloud storage ls "$WORKDIR/complete.json" >/dev/null 2>&1
}

# The exit status of the last run on worker 0 ("" while it runs, or when
# no run was started on this VM).
run_status() {
  "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 --command \
    "cat ~/$STATUS_FILE 2>/dev/null || true" 2>/dev/null | tr -d '[:space:]'
}

vm_state() {
  "${GCLOUD_TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || echo MISSING
}

cmd_babysit() {
  need "$ACCELERATOR" --accelerator-type
  need "$RUNTIME" --runtime-version
  need "$GIN_FILE" --gin-file
  need "$WORKDIR" --workdir
  [[ "$WORKDIR" == gs://* ]] || die "babysit needs a gs:// --workdir: a recreated VM starts with an empty disk"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# babysit: every ${POLL}s, if the run has not finished and the VM is READY but" \
      "the run exited 75 (stopped on SIGTERM with a checkpoint), run it again:"
    cmd_run
    echo "# and if the VM is PREEMPTED, TERMINATED or missing (at most $MAX_RESTARTS times):"
    cmd_delete
    cmd_create
    cmd_setup
    cmd_run
    return 0
  fi
  local restarts=0 state status
  while true; do
    if run_finished; then
      echo "$(date -u +%FT%TZ) run in $WORKDIR has finished" >&2
      return 0
    fi
    state="$(vm_state)"
    case "$state" in
      READY)
        status="$(run_status)"
        case "$status" in
          "" | 0) ;;
          75)
            echo "$(date -u +%FT%TZ) the run stopped with a checkpoint (exit 75); re-running" >&2
            cmd_run
            ;;
          *) die "the run exited with status $status: see \`$0 logs\`; fix it, then babysit again" ;;
        esac
        ;;
      CREATING | STARTING | RESTARTING | REPAIRING) ;;
      *)
        if [[ "$restarts" -ge "$MAX_RESTARTS" ]]; then
          die "the VM is $state and $MAX_RESTARTS restarts are used up"
        fi
        restarts=$((restarts + 1))
        echo "$(date -u +%FT%TZ) VM is $state; recreating (restart $restarts of $MAX_RESTARTS)" >&2
        cmd_delete || true
        cmd_create
        until [[ "$(vm_state)" == READY ]]; do sleep 30; done
        cmd_setup
        cmd_run
        ;;
    esac
    sleep "$POLL"
  done
}

# --name A,B,C: the command on each slice in turn (a study's workers: `run`
# starts the same command on every slice, and they share its runs).
IFS=, read -ra SLICES <<< "$NAME"
if [[ "$COMMAND" == "babysit" && "${#SLICES[@]}" -gt 1 ]]; then
  die "babysit keeps one slice alive; start one babysit per slice (--name ${SLICES[0]}, ...)"
fi
for NAME in "${SLICES[@]}"; do
  [[ -n "$NAME" ]] || die "--name lists an empty slice name: '${SLICES[*]}'"
  case "$COMMAND" in
    create) cmd_create ;;
    setup) cmd_setup ;;
    run) cmd_run ;;
    logs) cmd_logs ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
    delete) cmd_delete ;;
    babysit) cmd_babysit ;;
    *) die "unknown command '$COMMAND'; one of: create setup run logs status stop delete babysit" ;;
  esac
done
