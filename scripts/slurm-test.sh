#!/usr/bin/env bash
# The sharded run on a real Slurm cluster: a single-node cluster (Debian's slurm-wlm: slurmctld +
# slurmd, with munge) started on localhost in a temporary folder, Table 2 at the smoke preset
# submitted with `cargo xtask slurm --shards 4 --submit` (training job, evaluation array of 4,
# merge job, chained with afterok), one array task killed mid-way and resubmitted alone, the
# merge run again, `verify-results`, and the table compared with an unsharded run on the same
# checkpoints: the per-sample outcomes must be identical. Everything it started is stopped and
# its folder removed on exit (KEEP=1 keeps the folder).
#
# Needs slurm-wlm and munge (`apt-get install slurm-wlm munge`; `--install` does it) and runs
# the daemons as the current user (root in CI containers). Takes about 4 minutes on 2 cores (measured: 4 min 2 s, of which
# 112 s the sharded run); `.ci/run` runs it.
#
# Usage: scripts/slurm-test.sh [--install]   Env: SAMPLES (default 16), SHARDS (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
samples=${SAMPLES:-16}
shards=${SHARDS:-4}
if [ "${1:-}" = "--install" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi
for bin in slurmctld slurmd munged sbatch scontrol; do
  command -v "$bin" >/dev/null || {
    echo "slurm-test: $bin not found: apt-get install slurm-wlm munge (or run with --install)" >&2
    exit 2
  }
done

t=$(mktemp -d /tmp/eabs-slurm.XXXXXX)
pids=()
cleanup() {
  set +e
  for p in "$t/slurmd.pid" "$t/slurmctld.pid" "$t/munged.pid"; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null
  done
  sleep 1
  for p in "$t/slurmd.pid" "$t/slurmctld.pid" "$t/munged.pid"; do
    [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "slurm-test: kept $t"; else rm -rf "$t"; fi
}
trap cleanup EXIT
echo "slurm-test: cluster folder $t"

# munge, on its own socket and key.
mkdir -p "$t/munge" "$t/state" "$t/spool" "$t/log"
chmod 700 "$t/munge"
dd if=/dev/urandom of="$t/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$t/munge/munge.key"
munged --force --key-file="$t/munge/munge.key" --socket="$t/munge/munge.socket" \
  --pid-file="$t/munged.pid" --log-file="$t/log/munged.log" --seed-file="$t/munge/seed"

# A one-node cluster with this machine's cores, on ports of its own.
host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
cat > "$t/slurm.conf" <<EOF
ClusterName=eabs-test
SlurmctldHost=$host
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$t/munge/munge.socket
StateSaveLocation=$t/state
SlurmdSpoolDir=$t/spool
SlurmctldPidFile=$t/slurmctld.pid
SlurmdPidFile=$t/slurmd.pid
SlurmctldLogFile=$t/log/slurmctld.log
SlurmdLogFile=$t/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$t/slurm.conf"
slurmctld
slurmd
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && break
  sleep 1
done
sinfo -h -o %T | grep -q idle || { echo "slurm-test: node never came up"; tail "$t"/log/*; exit 1; }
echo "slurm-test: cluster up: $(sinfo -h -o '%P %D %c %T')"

cargo build --release -p xtask 2>&1 | tail -n 1
bin="$t/xtask"
cp target/release/xtask "$bin"

out="$t/sharded"
ck="$t/checkpoints"
started=$(date +%s)
"$bin" slurm table2 --preset smoke --samples "$samples" --shards "$shards" --gpus-per-task 0 \
  --cpus-per-task 1 --mem 3G --time 00:30:00 --train-time 00:30:00 --out "$out" \
  --checkpoints "$ck" --weights "$t/no-weights" --binary "$bin" --submit | tee "$t/submitted"
read -r _ train _ eval _ merge < <(tail -n 1 "$t/submitted")
state() { scontrol -o show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1 | cut -d= -f2; }
wait_for() { # job, states to wait for, seconds
  for _ in $(seq "$3"); do
    case " $2 " in *" $(state "$1") "*) return 0 ;; esac
    sleep 1
  done
  echo "slurm-test: job $1 is $(state "$1") after $3 s, not one of: $2" >&2
  return 1
}

# Kill array task 1 once it has journaled something but not finished, then resubmit it alone.
victim="${eval}_1"
shard_dir="$out/table2/smoke/shards/shard-1-of-$shards"
killed=0
for _ in $(seq 1200); do
  if [ -f "$shard_dir/shard.json" ]; then break; fi
  if [ -n "$(find "$shard_dir/journal" -name '*.jsonl' -size +0 2>/dev/null | grep -v stages | head -n 1)" ] \
    && [ -d "$shard_dir/journal/seed0/ABS" ]; then
    scancel "$victim"
    killed=1
    break
  fi
  sleep 0.5
done
[ "$killed" = 1 ] || { echo "slurm-test: array task 1 finished before it could be killed"; exit 1; }
echo "slurm-test: killed $victim mid-way ($(find "$shard_dir/journal" -name '*.jsonl' ! -name stages.jsonl | xargs cat | wc -l) records journaled)"
for i in $(seq 0 $((shards - 1))); do
  [ "$i" = 1 ] && continue
  wait_for "${eval}_$i" "COMPLETED FAILED CANCELLED TIMEOUT" 900
done
wait_for "$victim" "CANCELLED" 60
# The merge depended on the whole array: it can never run now.
scancel "$merge" 2>/dev/null || true
if "$bin" reproduce table2 --preset smoke --samples "$samples" --out "$out" --checkpoints "$ck" \
  --weights "$t/no-weights" --no-train --merge "$shards" >"$t/early-merge.log" 2>&1; then
  echo "slurm-test: a merge with a killed shard succeeded" >&2
  exit 1
fi
echo "slurm-test: merge refused while shard 1 was unfinished: $(grep -o 'shard 1/[0-9]* has not finished[^;]*' "$t/early-merge.log" | head -n 1)"
scripts="$out/slurm/table2-smoke"
resub=$(sbatch --parsable --array=1 "$scripts/eval.sbatch")
wait_for "${resub}_1" "COMPLETED FAILED CANCELLED TIMEOUT" 900
merge2=$(sbatch --parsable --dependency=afterok:"$resub" "$scripts/merge.sbatch")
wait_for "$merge2" "COMPLETED FAILED CANCELLED TIMEOUT" 900
finished=$(date +%s)

echo "slurm-test: jobs"
for j in "$train" "${eval}_0" "${eval}_1" "${eval}_2" "${eval}_3" "${resub}_1" "$merge" "$merge2"; do
  scontrol -o show job "$j" 2>/dev/null \
    | grep -o 'JobId=[^ ]*\|ArrayJobId=[^ ]*\|ArrayTaskId=[^ ]*\|JobName=[^ ]*\|JobState=[^ ]*\|RunTime=[^ ]*\|ExitCode=[^ ]*' \
    | tr '\n' ' '
  echo
done
for j in "$train" "${resub}_1" "$merge2"; do
  [ "$(state "$j")" = COMPLETED ] || { echo "slurm-test: job $j is $(state "$j")"; cat "$scripts"/logs/*.out | tail -n 40; exit 1; }
done
for i in 0 2 3; do
  [ "$i" -lt "$shards" ] || continue
  [ "$(state "${eval}_$i")" = COMPLETED ] || { echo "slurm-test: task $i is $(state "${eval}_$i")"; exit 1; }
done
echo "slurm-test: sharded run took $((finished - started)) s in all"

# Nothing lost or counted twice: every merged journal holds each sample once.
python3 - "$out/table2/smoke/journal/seed0" "$samples" <<'EOF'
import json, pathlib, sys
root, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
for f in sorted(root.glob("*/*.jsonl")):
    samples = [json.loads(l)["sample"] for l in f.open()]
    if len(samples) != len(set(samples)):
        sys.exit(f"{f}: a sample recorded twice")
    if not f.name.startswith("check-") and sorted(samples) != list(range(n)):
        sys.exit(f"{f}: samples {sorted(samples)} instead of 0..{n}")
print(f"slurm-test: {len(list(root.glob('*/*.jsonl')))} merged journals, each sample once")
EOF

# The unsharded run on the same checkpoints, then the comparison.
"$bin" reproduce table2 --preset smoke --samples "$samples" --out "$t/unsharded" \
  --checkpoints "$ck" --weights "$t/no-weights" --no-train >"$t/unsharded.log" 2>&1
"$bin" verify-results "$out/table2/smoke"
# Everything but the provenance (stage times, commits, invocations, the command line): the
# merge's stage log also holds the training job's stages.
strip() { grep -v -e ' s$' -e ' s (.* h)$' -e '^- command:' -e '(commit `' -e 'commits `' -e ' s (.*invocations' "$1"; }
cmp "$out/table2/smoke/outcomes.json" "$t/unsharded/table2/smoke/outcomes.json"
diff <(strip "$out/table2/smoke/table.md") <(strip "$t/unsharded/table2/smoke/table.md")
echo "slurm-test: PASS: the merged table of $shards shards equals the unsharded table (outcomes.json identical)"
