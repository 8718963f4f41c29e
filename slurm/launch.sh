#!/bin/bash
# The launcher every slurm/*.sbatch recipe execs: config check, one srun task per node running
# torchrun (c10d rendezvous on the allocation's first node), preemption and requeue, attempt limit.
#
#   sbatch slurm/ava_vit.sbatch [key=value ...]                 what users type (see the recipes)
#   sbatch slurm/train.sbatch CONFIG [key=value ...]            any jobs/configs/*.yaml
#   sbatch --array=0-2 slurm/ava_vit.sbatch trainer.seed=%a     one run per array task (see below)
#   IMGTRAIN_DRY_RUN=1 bash slurm/ava_vit.sbatch [key=value ...] print what would run, start nothing
#   bash slurm/launch.sh --config FILE [--recipe FILE] [--dry-run] [key=value ...]
#   bash slurm/launch.sh --pack KIND SRC OUT [pack options]     (slurm/pack_shards.sbatch)
#
# Arrays: `%a` in an override is replaced by the array task id (SLURM_ARRAY_TASK_ID), as in sbatch's
# --output patterns, so each task trains its own run (its own config hash, run id and directory);
# without %a every task would train the same run. A dry run shows task 0 (or $SLURM_ARRAY_TASK_ID).
# A task stopped by a signal requeues only itself.
#
# Everything runs from the repository root (this script's parent directory), so relative paths in
# the config and in overrides are relative to it. Under sbatch a recipe runs from a spool copy and
# finds the repository through $IMGTRAIN_HOME, else $SLURM_SUBMIT_DIR: submit from the repository
# root or set IMGTRAIN_HOME.
#
# Logs: the recipes write slurm/logs/<job name>-<job id>.out and .err under the submit directory
# (#SBATCH lines cannot expand variables; the directory is part of the repository, and SLURM does
# not create a missing one: the job would then fail without any log). Put them elsewhere with
# `sbatch --output=DIR/%x-%j.out --error=DIR/%x-%j.err ...`. Either way they are linked into
# <run dir>/logs/, and --open-mode=append keeps every attempt of a requeued job in one file.
#
# Environment:
#   IMGTRAIN_NPROC      processes per node; default: the GPUs allocated on the node
#                       (SLURM_GPUS_ON_NODE, else CUDA_VISIBLE_DEVICES), else 1 (CPU partitions)
#   IMGTRAIN_SIF        an Apptainer image (apptainer build imgtrain.sif Singularity.def): every
#                       Python step runs in `apptainer exec --nv --bind <repo>,<run root>,<data>,
#                       <weights> --env PYTHONPATH=<repo>` with the image's python and the repository's code; srun,
#                       scontrol and this script stay outside the container
#   IMGTRAIN_PYTHON     the Python to use (default <repo>/.venv/bin/python, else python3)
#   IMGTRAIN_DRY_RUN=1  same as --dry-run
#   IMGTRAIN_TRAIN_ENTRY  the training script, relative to the repository (default jobs/train.py; the
#                       tests run tests/hooked_train.py, which adds their stop and pause seams)
#   IMGTRAIN_PACK_ENTRY the packing script, relative to the repository (default: python -m shards; the
#                       tests run tests/hooked_pack.py, which adds their stall seam)
#   IMGTRAIN_RESEND_S   while the workers stop, the stop signal is sent again every this many
#                       seconds (default 10). A backstop: jobs/train.py keeps a signal from its
#                       first milliseconds on, but one that comes while the interpreter itself
#                       starts is lost (torchrun and its workers start with USR1 ignored)
#
# Signals (the recipes ask for --signal=B:USR1@<s> and --requeue):
#   USR1 (SLURM's warning before the time limit, or `scancel --signal=USR1 --batch <job>`):
#     forwarded to the workers (torchrun ignores it), which finish their step, write last.pt and
#     exit 75; then `scontrol requeue` (an array task: only that task) and the next attempt resumes.
#   TERM: forwarded the same way; then requeue only if the time limit was reached. A requeue by
#     SLURM itself (`scontrol requeue`, preemption) needs nothing more; `scancel` stays cancelled.
#     SLURM sends that TERM to the workers too, so they get TERM and then the forwarded USR1; their
#     stop is named after TERM (imgtrain/engine/signals.py: TERM outranks USR1, in whatever order).
# A run that is DONE exits 0 at once. A real failure is requeued until trainer.max_attempts attempts
# of this job failed; then FAILED holds the reason. Exit status: 0 done/requeued, 1 failed, 2 bad
# config or usage (never requeued).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$REPO/slurm/launch.sh

log() { printf '[launch %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
err() { printf '[launch %s] error: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  local code=$1
  shift
  err "$*"
  exit "${code}"
}
quoted() { # a command line as one copy-pasteable string (quotes only where the shell needs them)
  local arg out="" q
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      q=$arg
    elif [[ $arg != *"'"* ]]; then
      q="'${arg}'"
    else
      printf -v q '%q' "$arg"
    fi
    out+="${out:+ }${q}"
  done
  printf '%s' "${out}"
}

usage() {
  sed -n '2,/^set -uo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
}

recipe_py() { # recipe_py help|resources|dry-run RECIPE [...]: imgtrain/recipe.py (standard library only,
  # so a recipe's --help works before the venv exists)
  PYTHONPATH="$REPO${PYTHONPATH:+:${PYTHONPATH}}" "$(python_bin)" -m imgtrain.recipe "$@"
}

recipe_help() { # `bash slurm/<recipe>.sbatch --help`: what the recipe runs, with which resources and knobs
  local -a args=(help "${RECIPE}")
  [ -n "${CONFIG}" ] && args+=(--config "${CONFIG}")
  [ "${MODE}" = pack ] && args+=(--pack)
  recipe_py "${args[@]}"
}

# ----------------------------------------------------------------------------- small helpers
# shellcheck disable=SC2317  # reached from the TERM trap
to_seconds() { # [D-]HH:MM:SS, MM:SS or SS -> seconds; anything else (UNLIMITED, INVALID) -> empty
  local t=$1 d=0 h=0 m=0 s=0
  if [[ $t =~ ^([0-9]+)-([0-9]+):([0-9]+):([0-9]+)$ ]]; then
    d=${BASH_REMATCH[1]} h=${BASH_REMATCH[2]} m=${BASH_REMATCH[3]} s=${BASH_REMATCH[4]}
  elif [[ $t =~ ^([0-9]+):([0-9]+):([0-9]+)$ ]]; then
    h=${BASH_REMATCH[1]} m=${BASH_REMATCH[2]} s=${BASH_REMATCH[3]}
  elif [[ $t =~ ^([0-9]+):([0-9]+)$ ]]; then
    m=${BASH_REMATCH[1]} s=${BASH_REMATCH[2]}
  elif [[ $t =~ ^([0-9]+)$ ]]; then
    s=${BASH_REMATCH[1]}
  else
    return 0
  fi
  echo $((10#$d * 86400 + 10#$h * 3600 + 10#$m * 60 + 10#$s))
}

job_info() { # this job's `scontrol show job -o` line (empty if scontrol cannot tell)
  scontrol show job -o "${SLURM_JOB_ID}" 2>/dev/null
  return 0
}

# shellcheck disable=SC2317  # reached from the TERM trap
field_of() { # field_of INFO NAME: a field of a `scontrol show job -o` line
  [[ " $1 " =~ [[:space:]]$2=([^[:space:]]*) ]] && printf '%s' "${BASH_REMATCH[1]}"
  return 0
}

job_field() { # job_field NAME: a field of `scontrol show job -o` for this job
  field_of "$(job_info)" "$1"
}

count_gpus() { # "4", "a100:4" or "gpu:a100:4" -> 4; a device list "0,1,2" -> 3 (SLURM's environment;
  # a recipe's #SBATCH lines are read by imgtrain/recipe.py, the same rule)
  local v=$1
  if [[ $v =~ ^([^:]*:)*([0-9]+)$ ]]; then
    echo "${BASH_REMATCH[2]}"
  elif [ -n "$v" ] && [ "$v" != NoDevFiles ]; then
    local -a ids
    IFS=, read -r -a ids <<<"$v"
    echo "${#ids[@]}"
  fi
}

python_bin() {
  if [ -n "${IMGTRAIN_PYTHON:-}" ]; then
    printf '%s' "${IMGTRAIN_PYTHON}"
  elif [ -x "$REPO/.venv/bin/python" ]; then
    printf '%s' "$REPO/.venv/bin/python"
  else
    printf '%s' python3
  fi
}

# PY: the command that starts Python (host, or inside the container with BINDS)
set_python() {
  if [ -n "${IMGTRAIN_SIF:-}" ]; then
    # PYTHONPATH: the repository's imgtrain, not the copy installed in the image
    PY=(apptainer exec --nv --bind "${BINDS}" --pwd "$REPO" --env "PYTHONPATH=$REPO" "${IMGTRAIN_SIF}" python)
  else
    PY=("$(python_bin)")
  fi
}

# BINDS for the container: the repository, the run root (created by the real run) and those of the
# other paths that exist (files are bound as files: a weights file must not bind its whole directory)
set_binds() { # set_binds RUN_ROOT PATH...
  local p seen=",$REPO,"
  BINDS=$REPO
  if [ -n "$1" ] && [[ $seen != *",$1,"* ]]; then
    BINDS+=",$1"
    seen+="$1,"
  fi
  shift
  for p in "$@"; do
    if [ -z "$p" ] || [ ! -e "$p" ]; then continue; fi
    [[ $seen == *",$p,"* ]] && continue
    seen+="$p,"
    BINDS+=",$p"
  done
}

# ----------------------------------------------------------------------------- signals
GOT_USR1=0
GOT_TERM=0
TERM_KIND=""   # slurm (SLURM requeues the job itself) | timelimit | cancel
REQUEUED=0
CHILD_PID=""   # srun (training) or the pack command's process group
CHILD_SIGNAL=USR1
FORWARDER=""
STOPPING="stopping the workers at their next step (they write last.pt)"

# shellcheck disable=SC2317  # reached from the signal traps
forward_stop() {
  [ -n "${CHILD_PID}" ] || return 0
  if [ "${CHILD_SIGNAL}" = TERM ]; then
    kill -TERM -- "-${CHILD_PID}" 2>/dev/null || kill -TERM "${CHILD_PID}" 2>/dev/null
  else
    # srun passes it to every process of the step: the workers act on it, torchrun ignores it
    kill -USR1 "${CHILD_PID}" 2>/dev/null
  fi
  if [ -z "${FORWARDER}" ] && [ "${CHILD_SIGNAL}" = USR1 ]; then
    # a worker whose interpreter was still starting had USR1 ignored (jobs/train.py catches it soon after)
    (
      while sleep "${IMGTRAIN_RESEND_S:-10}"; do
        kill -USR1 "${CHILD_PID}" 2>/dev/null || exit 0
      done
    ) &
    FORWARDER=$!
  fi
  return 0
}

# shellcheck disable=SC2317  # reached from the TERM trap
classify_term() { # why did SLURM send TERM? (asked at once, with one scontrol call: the job record
  # changes soon, and SLURM kills this script KillWait seconds after the TERM)
  local info restarts used limit
  info=$(job_info)
  restarts=$(field_of "${info}" Restarts)
  if [ -n "${restarts}" ] && [ "${restarts}" -gt "${SLURM_RESTART_COUNT:-0}" ]; then
    TERM_KIND=slurm
    return
  fi
  used=$(to_seconds "$(field_of "${info}" RunTime)")
  limit=$(to_seconds "$(field_of "${info}" TimeLimit)")
  if [ -n "${used}" ] && [ -n "${limit}" ] && [ $((used + 10)) -ge "${limit}" ]; then
    TERM_KIND=timelimit
  else
    TERM_KIND=cancel
  fi
}

# shellcheck disable=SC2317  # the signal traps
on_signal() {
  local sig=$1
  if [ "${REQUEUED}" = 1 ]; then
    exit 0 # the TERM that follows our own `scontrol requeue`
  fi
  if [ "$sig" = TERM ]; then
    [ "${GOT_TERM}" = 1 ] || classify_term
    GOT_TERM=1
  else
    GOT_USR1=1
  fi
  if [ -n "${CHILD_PID}" ]; then
    log "received SIG${sig}${TERM_KIND:+ (${TERM_KIND})}: ${STOPPING}"
    forward_stop
  else
    log "received SIG${sig}${TERM_KIND:+ (${TERM_KIND})} before the training step started"
  fi
}

stop_kind() { # none | requeue | slurm | cancel
  if [ "${GOT_TERM}" = 1 ]; then
    case ${TERM_KIND} in
      slurm) echo slurm ;;
      timelimit) echo requeue ;;
      *) echo cancel ;;
    esac
  elif [ "${GOT_USR1}" = 1 ]; then
    echo requeue
  else
    echo none
  fi
}

wait_child() { # wait for CHILD_PID through trapped signals; sets CHILD_RC
  while kill -0 "${CHILD_PID}" 2>/dev/null; do
    wait "${CHILD_PID}"
  done
  wait "${CHILD_PID}"
  CHILD_RC=$?
  if [ -n "${FORWARDER}" ]; then
    kill "${FORWARDER}" 2>/dev/null
    wait "${FORWARDER}" 2>/dev/null
    FORWARDER=""
  fi
  CHILD_PID=""
}

requeue_self() { # requeue_self TARGET WHY: what `python -m imgtrain.launch decide/target` named (scontrol
  # runs here, outside the container; the decision and the target are imgtrain/launch.py's)
  local target=$1
  command -v scontrol >/dev/null 2>&1 \
    || die 1 "scontrol is not on PATH on $(hostname), so job ${target} cannot requeue itself; the checkpoint is" \
             "saved: submit the same command again to resume"
  log "requeue ${target} (scontrol requeue): $2"
  REQUEUED=1
  if ! scontrol requeue "${target}"; then
    REQUEUED=0
    die 1 "scontrol requeue ${target} failed (was the job submitted with --requeue?); submit the same command again to resume"
  fi
  exit 0
}

# ----------------------------------------------------------------------------- per node (srun task)
main_node() {
  # One srun task per node: torchrun with USR1 ignored (Python would die of it) so that only the
  # workers, which install their own handler, act on it.
  local got="" rc host
  host=$(hostname)
  trap 'got=${got:-USR1}' USR1
  trap 'got=${got:-TERM}' TERM
  log "node ${host}: $(quoted "$@")"
  (
    trap '' USR1
    exec "$@"
  ) &
  CHILD_PID=$!
  while kill -0 "${CHILD_PID}" 2>/dev/null; do
    wait "${CHILD_PID}"
  done
  wait "${CHILD_PID}"
  rc=$?
  if [ "${rc}" != 0 ] && [ -n "${got}" ]; then
    # torchrun reports the workers' exit 75 as a failure (1): that must not make srun
    # (--kill-on-bad-exit) kill the other nodes while rank 0 is still writing; run.json tells
    log "node ${host}: torchrun exited ${rc} after SIG${got} (the workers stopped); reporting 0 to srun"
    exit 0
  fi
  log "node ${host}: torchrun exited ${rc}"
  exit "${rc}"
}

# ----------------------------------------------------------------------------- resources
resources() { # NNODES NPROC CPUS OMP HEAD PORT JOB (placeholders in a dry run outside SLURM)
  local gpus
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    JOB=${SLURM_JOB_ID}
    NNODES=${SLURM_NNODES:-1}
    CPUS=${SLURM_CPUS_PER_TASK:-1}
    gpus=$(count_gpus "${SLURM_GPUS_ON_NODE:-}")
    [ -n "${gpus}" ] && [ "${gpus}" != 0 ] || gpus=$(count_gpus "${CUDA_VISIBLE_DEVICES:-}")
    HEAD=""
    command -v scontrol >/dev/null 2>&1 && HEAD=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | head -n 1)
    HEAD=${HEAD:-${SLURMD_NODENAME:-$(hostname)}}
    PORT=$((20000 + SLURM_JOB_ID % 20000))
    SOURCE_NODES="SLURM_NNODES"
    SOURCE_NPROC="the GPUs allocated on the node"
  else
    JOB=JOB_ID
    recipe_kv
    NNODES=${KV_nodes:-1}
    CPUS=${KV_cpus_per_task:-1}
    gpus=${KV_gpus}
    HEAD=FIRST_NODE
    PORT=PORT
    SOURCE_NODES="#SBATCH --nodes in ${RECIPE:-no recipe}; sbatch --nodes=N overrides it"
    SOURCE_NPROC="#SBATCH --gpus-per-node in ${RECIPE:-no recipe}"
  fi
  if [ -n "${IMGTRAIN_NPROC:-}" ]; then
    [[ ${IMGTRAIN_NPROC} =~ ^[1-9][0-9]*$ ]] || die 2 "IMGTRAIN_NPROC must be a positive integer, got '${IMGTRAIN_NPROC}'"
    NPROC=${IMGTRAIN_NPROC}
    SOURCE_NPROC="IMGTRAIN_NPROC"
  elif [ -n "${gpus}" ] && [ "${gpus}" != 0 ]; then
    NPROC=${gpus}
  else
    NPROC=1
    SOURCE_NPROC="no GPUs: IMGTRAIN_NPROC sets it on CPU partitions"
  fi
  OMP=$((CPUS / NPROC))
  [ "${OMP}" -ge 1 ] || OMP=1
}

recipe_kv() { # the recipe's #SBATCH resources -> KV_nodes, KV_cpus_per_task, KV_gpus
  [ -n "${RECIPE}" ] && [ -r "${RECIPE}" ] || return 0
  read_kv "$(recipe_py resources "${RECIPE}")"
}

ARRAY_NOTE=""
expand_array_task() { # %a in OVERRIDES -> the array task id (task 0 in a dry run outside SLURM)
  local i pattern=%a task=${SLURM_ARRAY_TASK_ID:-}
  for i in "${!OVERRIDES[@]}"; do
    [[ ${OVERRIDES[i]} == *"${pattern}"* ]] || continue
    if [ -z "${task}" ]; then
      [ "${DRY_RUN}" = 1 ] \
        || die 2 "override '${OVERRIDES[i]}' holds %a (the array task id) but job ${SLURM_JOB_ID:-?} is not an array task: submit it with sbatch --array=..."
      task=0
    fi
    OVERRIDES[i]=${OVERRIDES[i]//"${pattern}"/${task}}
    ARRAY_NOTE="%a -> ${task} (SLURM_ARRAY_TASK_ID=${SLURM_ARRAY_TASK_ID:-unset, so task 0 is shown}); sbatch --array=0-N runs one run per task"
  done
}

# what `python -m imgtrain.launch paths/check` and `python -m imgtrain.recipe resources` print
KV_nodes="" KV_cpus_per_task="" KV_gpus=""
KV_run_id="" KV_run_dir="" KV_status="" KV_attempts=0 KV_max_attempts=5 KV_data_path="" KV_output_root=""
KV_pretrained_path=""
read_kv() { # read_kv TEXT: key=value lines -> KV_<key> variables
  local line key
  while IFS= read -r line; do
    [[ $line == *=* ]] || continue
    key=${line%%=*}
    [[ $key =~ ^[a-z_]+$ ]] || continue
    printf -v "KV_${key}" '%s' "${line#*=}"
  done <<<"$1"
}

# ----------------------------------------------------------------------------- training job
main_train() {
  local out rc
  cd "$REPO" || die 2 "cannot cd to ${REPO}"
  [ -n "${CONFIG}" ] || die 2 "no --config given"
  [ -f "${CONFIG}" ] || die 2 "config ${CONFIG} not found (relative paths are relative to the repository root ${REPO})"
  expand_array_task
  if [ "${DRY_RUN}" != 1 ]; then
    [ -n "${SLURM_JOB_ID:-}" ] || die 2 "not inside a SLURM job: submit the recipe with sbatch, or set IMGTRAIN_DRY_RUN=1 to see what would run"
    command -v srun >/dev/null 2>&1 || die 2 "srun is not on PATH on $(hostname)"
    trap 'on_signal USR1' USR1
    trap 'on_signal TERM' TERM
  fi
  resources
  local err_log="" out_log=""
  if [ "${DRY_RUN}" != 1 ]; then
    out_log=$(job_field StdOut)
    err_log=$(job_field StdErr)
    log "job ${JOB} (${SLURM_ARRAY_JOB_ID:+array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}, }restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-$(hostname)}: ${NNODES} node(s) x ${NPROC} process(es), ${CPUS} CPUs per node; config ${CONFIG}; repository ${REPO}"
  fi

  # where the run reads and writes: the container binds them (resolved inside the image itself)
  BINDS=$REPO
  if [ -n "${IMGTRAIN_SIF:-}" ] && [ "${DRY_RUN}" != 1 ]; then
    command -v apptainer >/dev/null 2>&1 || die 2 "IMGTRAIN_SIF is set but apptainer is not on PATH on $(hostname)"
    [ -f "${IMGTRAIN_SIF}" ] || die 2 "IMGTRAIN_SIF=${IMGTRAIN_SIF}: no such image"
    out=$(apptainer exec --bind "$REPO" --pwd "$REPO" --env "PYTHONPATH=$REPO" "${IMGTRAIN_SIF}" python -m imgtrain.launch paths --config "${CONFIG}" "${OVERRIDES[@]}") \
      || die 2 "config error (above); not starting, not requeueing"
    read_kv "${out}"
    mkdir -p "${KV_output_root}" || die 2 "cannot create the run root ${KV_output_root}"
    set_binds "${KV_output_root}" "${KV_data_path}" "${KV_pretrained_path}"
  fi
  set_python

  # the check: config keys and types, data set, model name, weights file, DONE/FAILED
  local -a check=("${PY[@]}")
  [ "${DRY_RUN}" = 1 ] && check=("$(python_bin)")
  check+=(-m imgtrain.launch check --config "${CONFIG}" "${OVERRIDES[@]}")
  if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    check+=(--skip-preflight) # the data, model and weights passed when the job first started
  fi
  [ -n "${out_log}" ] && check+=(--link-log "${out_log}")
  [ -n "${err_log}" ] && [ "${err_log}" != "${out_log}" ] && check+=(--link-log "${err_log}")
  out=$("${check[@]}")
  rc=$?
  read_kv "${out}"
  case ${rc} in
    0) ;;
    2) die 2 "config check failed (above): not starting, not requeueing" ;;
    10) log "run ${KV_run_id:-?} is DONE (${KV_run_dir:-?}): nothing to do"; exit 0 ;;
    11) err "run ${KV_run_id:-?} is FAILED and this job has no attempts left: see ${KV_run_dir:-?}/FAILED"; exit 1 ;;
    *) die 1 "the check itself failed (exit ${rc}, above)" ;;
  esac
  if [ -n "${IMGTRAIN_SIF:-}" ] && [ "${DRY_RUN}" = 1 ]; then
    set_binds "${KV_output_root}" "${KV_data_path}" "${KV_pretrained_path}"
    set_python
  fi

  local -a torchrun=("${PY[@]}" -m torch.distributed.run --nnodes="${NNODES}" --nproc_per_node="${NPROC}"
    --rdzv_backend=c10d --rdzv_endpoint="${HEAD}:${PORT}" --rdzv_id="${JOB}" --max_restarts=0
    "$REPO/${IMGTRAIN_TRAIN_ENTRY:-jobs/train.py}" --config "${CONFIG}" "${OVERRIDES[@]}")
  local -a step=(srun --nodes="${NNODES}" --ntasks="${NNODES}" --ntasks-per-node=1 --kill-on-bad-exit=1
    --cpus-per-task="${CPUS}" bash "${SELF}" --node "${torchrun[@]}")

  if [ "${DRY_RUN}" = 1 ]; then
    # the report: imgtrain/recipe.py (what this script found, and the srun line it built)
    recipe_py dry-run "${RECIPE}" "repo=${REPO}" "config=${CONFIG}" "run_id=${KV_run_id}" "status=${KV_status}" \
      "attempts=${KV_attempts}" "max_attempts=${KV_max_attempts}" "run_dir=${KV_run_dir}" "array_note=${ARRAY_NOTE}" \
      "data=${KV_data_path}" "nodes=${NNODES}" "source_nodes=${SOURCE_NODES}" "nproc=${NPROC}" \
      "source_nproc=${SOURCE_NPROC}" "omp=${OMP}" "cpus=${CPUS}" "head=${HEAD}" "port=${PORT}" "job=${JOB}" \
      "sif=${IMGTRAIN_SIF:-}" "binds=${BINDS}" --overrides "${OVERRIDES[@]}" -- "${step[@]}"
    exit $?
  fi

  export OMP_NUM_THREADS=${OMP}
  export PYTHONUNBUFFERED=1
  log "run ${KV_run_id} (${KV_status}, ${KV_attempts} attempt(s) so far) -> ${KV_run_dir}"
  if [ "${GOT_TERM}" = 0 ]; then
    log "start: $(quoted "${step[@]}")"
    "${step[@]}" &
    CHILD_PID=$!
    if [ "${GOT_USR1}" = 1 ]; then
      # USR1 came during the check: train anyway and stop after the first step, so that every
      # attempt makes progress (a time limit shorter than the --signal offset cannot loop forever)
      forward_stop
    fi
    wait_child
    log "training step exited ${CHILD_RC}"
  else
    CHILD_RC=0 # TERM during the check: the job is going away, start nothing
  fi

  local decision kind target
  kind=$(stop_kind)
  decision=$("${PY[@]}" -m imgtrain.launch decide --run-dir "${KV_run_dir}" --job-id "${SLURM_JOB_ID}" \
    --attempts-before "${KV_attempts}" --exit "${CHILD_RC}" --stop "${kind}" \
    --max-attempts "${KV_max_attempts}" --err-log "${err_log}" --world-size $((NNODES * NPROC)))
  rc=$?
  [ "${rc}" = 0 ] || die 1 "deciding what to do after the step failed (exit ${rc}, above)"
  read -r decision target <<<"${decision}"
  case ${decision} in
    done) log "run ${KV_run_id} is DONE"; exit 0 ;;
    requeue) requeue_self "${target}" "the next attempt resumes from last.pt" ;;
    retry) requeue_self "${target}" "after a failed attempt (trainer.max_attempts=${KV_max_attempts} failed attempts per job)" ;;
    failed)
      err "run ${KV_run_id} FAILED (trainer.max_attempts=${KV_max_attempts}): see ${KV_run_dir}/FAILED"
      exit 1 ;;
    slurm) log "SLURM requeues this job itself; the next attempt resumes from last.pt"; exit 0 ;;
    cancelled) log "cancelled: last.pt is written; submit the same command again to resume"; exit 0 ;;
    *) die 1 "unexpected decision '${decision}'" ;;
  esac
}

# ----------------------------------------------------------------------------- shard packing
main_pack() {
  # python -m shards pack KIND SRC OUT [options]; resumable, so a stop just requeues
  local -a args=("$@")
  [ "${#args[@]}" -ge 3 ] || die 2 "usage: sbatch slurm/pack_shards.sbatch KIND SRC OUT [pack options]"
  cd "$REPO" || die 2 "cannot cd to ${REPO}"
  local arg has_workers=0 src=${args[1]} dst=${args[2]}
  for arg in "${args[@]}"; do
    [[ $arg == --workers || $arg == --workers=* ]] && has_workers=1
  done
  if [ "${has_workers}" = 0 ]; then
    [ -n "${SLURM_CPUS_PER_TASK:-}" ] || recipe_kv
    args+=(--workers "${SLURM_CPUS_PER_TASK:-${KV_cpus_per_task:-1}}")
  fi
  BINDS=$REPO
  if [ -n "${IMGTRAIN_SIF:-}" ]; then
    set_binds "$(realpath -m "${dst}")" "$(realpath -m "${src}")"
    [ "${DRY_RUN}" = 1 ] || mkdir -p "${dst}" || die 2 "cannot create ${dst}"
  fi
  set_python
  local -a cmd=("${PY[@]}" -m shards pack "${args[@]}")
  [ -z "${IMGTRAIN_PACK_ENTRY:-}" ] || cmd=("${PY[@]}" "$REPO/${IMGTRAIN_PACK_ENTRY}" pack "${args[@]}")
  if [ "${DRY_RUN}" = 1 ]; then
    echo "imgtrain pack, dry run: nothing is started"
    echo "  $(quoted "${cmd[@]}")"
    exit 0
  fi
  [ -n "${SLURM_JOB_ID:-}" ] || die 2 "not inside a SLURM job: submit with sbatch (or run the command above yourself)"
  trap 'on_signal USR1' USR1
  trap 'on_signal TERM' TERM
  CHILD_SIGNAL=TERM # the packer stops on TERM; its own process group takes its workers along
  STOPPING="stopping the packer (finished shards are kept; a partial one is written again)"
  log "job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}): $(quoted "${cmd[@]}")"
  setsid "${cmd[@]}" &
  CHILD_PID=$!
  wait_child
  case $(stop_kind) in
    requeue) requeue_self "$("${PY[@]}" -m imgtrain.launch target)" "packing resumes where it stopped" ;;
    slurm) log "SLURM requeues this job itself; packing resumes"; exit 0 ;;
    cancel) log "cancelled; the same command resumes the packing"; exit 0 ;;
    *) log "pack exited ${CHILD_RC}"; exit "${CHILD_RC}" ;;
  esac
}

# ----------------------------------------------------------------------------- arguments
CONFIG=""
RECIPE=""
DRY_RUN=${IMGTRAIN_DRY_RUN:-0}
[ "${DRY_RUN}" = 1 ] || DRY_RUN=0
MODE=train
HELP=0
OVERRIDES=()
while [ "$#" -gt 0 ]; do
  case $1 in
    --node) MODE=node; shift; break ;;
    --pack) MODE=pack; shift; break ;;
    --config) [ "$#" -ge 2 ] || die 2 "--config needs a file"; CONFIG=$2; shift 2 ;;
    --config=*) CONFIG=${1#--config=}; shift ;;
    --recipe) [ "$#" -ge 2 ] || die 2 "--recipe needs a file"; RECIPE=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) HELP=1; shift ;;
    --) shift; OVERRIDES+=("$@"); break ;;
    -*) die 2 "unknown option $1 (overrides are key=value; see bash slurm/launch.sh --help)" ;;
    *) OVERRIDES+=("$1"); shift ;;
  esac
done

if [ "${MODE}" = pack ] && [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
  HELP=1 # slurm/pack_shards.sbatch --help
fi
if [ "${HELP}" = 1 ] && [ "${MODE}" != node ]; then
  if [ -n "${RECIPE}" ] && [ -r "${RECIPE}" ]; then recipe_help; else usage; fi
  exit 0
fi

case ${MODE} in
  node) main_node "$@" ;;
  pack) main_pack "$@" ;;
  *) main_train ;;
esac
