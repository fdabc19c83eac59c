#!/usr/bin/env bash
# Real SLURM check: a one-node SLURM cluster on this host (Debian's slurm-wlm), the smoke study
# submitted through the project's SLURM profile, then checks that every job ran as a SLURM job.
#
#   tests/cluster/slurm_smoke.sh [--clean]     # as root; installs munge + slurm if missing
#
# What it touches outside a temp dir: Debian packages (munge slurmctld slurmd slurm-client),
# /etc/slurm/slurm.conf (only one this script wrote earlier, never someone else's) and
# /etc/munge/munge.key (created only if absent). Daemons run from pid files under $STATE and are
# stopped on exit, whatever the outcome. Re-running is safe: the last run's daemons are stopped
# and the cluster starts with empty state.
#   --clean   remove the project copy and the daemon logs after a passing run (kept by default)
# Environment: SEGKD_VENV (default <repo>/.venv), SLURM_SMOKE_STATE (default /tmp/segkd-slurm).
set -euo pipefail

PROG=slurm_smoke.sh
die() { echo "$PROG: error: $*" >&2; exit 2; }
log() { echo "[$PROG] $*"; }

CLEAN=0
for arg in "$@"; do
    case $arg in
        --clean) CLEAN=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (usage: $PROG [--clean])" ;;
    esac
done
[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages, writes /etc/slurm/slurm.conf and starts slurm daemons)"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${SEGKD_VENV:-$REPO/.venv}
STATE=${SLURM_SMOKE_STATE:-/tmp/segkd-slurm}   # fixed path: a re-run finds the last run's pid files
[[ $STATE == /?*/?* ]] || die "SLURM_SMOKE_STATE must be an absolute path below a top-level directory (got '$STATE')"
CONF=/etc/slurm/slurm.conf
MARK="# Written by segkd tests/cluster/slurm_smoke.sh; it rewrites this file on every run."
STUDY=studies/smoke.yaml
EXPECTED_STUDENT_RUNS=12   # 2 seeds x 2 folds x (kd, freq, baseline)
[[ -x $VENV/bin/snakemake ]] || die "no snakemake in $VENV (make the venv first, or set SEGKD_VENV)"

# --- 1. packages ----------------------------------------------------------------------------------
PKGS=(munge slurmctld slurmd slurm-client)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Retry after an update only if the package lists are stale.
    apt-get -y -qq install --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get -qq update && apt-get -y -qq install --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# --- helpers: our daemons are the ones named by our pid files -----------------------------------------
pid_alive() {  # pid_alive PIDFILE NAME: the pid in PIDFILE runs NAME
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}
stop_daemon() {  # stop_daemon PIDFILE NAME: TERM, wait up to 15 s, then KILL
    local pidfile=$1 name=$2 pid i
    if pid_alive "$pidfile" "$name"; then
        pid=$(<"$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}
stop_cluster() {
    # Jobs still queued or running (a failed run) would outlive slurmd: cancel them first. Every job
    # in this cluster is this script's: it starts with empty state.
    if pid_alive "$STATE/slurmctld.pid" slurmctld; then
        local ids
        ids=$(squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null || true)
        [[ -n $ids ]] && { log "cancelling unfinished jobs: $(echo $ids)"; scancel $ids || true; sleep 2; }
    fi
    stop_daemon "$STATE/slurmd.pid" slurmd
    stop_daemon "$STATE/slurmctld.pid" slurmctld
    stop_daemon "$STATE/munge/munged.pid" munged   # absent when a system munged was reused
    # With a slurm.conf naming a controller that is gone, every SLURM client command waits ~9 s for it,
    # and the executor plugin runs some (squeue, scontrol) whenever Snakemake starts, also without
    # `--executor slurm`: set ours aside, so the host's other snakemake runs stay as fast as before.
    if [[ -e $CONF ]] && [[ $(head -n1 "$CONF") == "$MARK" ]]; then mv "$CONF" "$CONF.segkd-test"; fi
}

# --- 2. a copy of the working tree (tracked + untracked-but-not-ignored files, uncommitted edits included)
WORK=$(mktemp -d /tmp/segkd-slurm-run.XXXXXX)
(cd "$REPO" && git ls-files -z -co --exclude-standard \
    | while IFS= read -r -d '' f; do if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi; done \
    | tar --null -cf - -T -) | tar -xf - -C "$WORK"
log "project copy: $WORK"
# The working tree may be mid-edit: import every segkd module of the copy first, so that a broken
# tree fails here in seconds, named as such, not as failed SLURM jobs minutes later.
(cd "$WORK" && PYTHONPATH="$WORK/src" "$VENV/bin/python" -c '
import importlib, pkgutil, segkd
for m in pkgutil.walk_packages(segkd.__path__, "segkd."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
') || { echo "$PROG: error: the copy of $REPO does not import (a working tree mid-edit?); nothing submitted. Copy kept: $WORK" >&2; exit 1; }

# --- 3. the one-node cluster ------------------------------------------------------------------------
stop_cluster   # the last run's daemons, if it was interrupted
for d in slurmctld slurmd; do
    other=$(pgrep -x "$d" || true)
    [[ -z $other ]] || die "a $d this script did not start is running (pid $(echo $other)); stop it first"
done
if [[ -e $CONF ]] && [[ $(head -n1 "$CONF") != "$MARK" ]]; then
    die "$CONF exists and was not written by this script; refusing to replace a real cluster's config"
fi

rm -rf "$STATE/ctld" "$STATE/spool" "$STATE"/*.log   # empty state: job ids start at 1, squeue shows this run only
mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/munge"
chmod 755 "$STATE"

# munge: the key Debian's package created, else a new one; reuse a munged that already answers
# (systemd's, on a real host), else start our own as the munge user.
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running: reusing it (and leaving it running)"
else
    install -d -o munge -g munge -m 755 /run/munge
    chown munge:munge "$STATE/munge"
    chmod 700 "$STATE/munge"
    runuser -u munge -- /usr/sbin/munged --pid-file="$STATE/munge/munged.pid" \
        --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed"
    for ((i = 0; i < 20; i++)); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || die "munged did not come up; see $STATE/munge/munged.log"
fi

# The node exactly as slurmd sees it (CPUs, sockets, RealMemory), so slurmctld does not drain it.
NODE=$(hostname -s)
NODE_LINE=$(slurmd -C | head -n1)
[[ $NODE_LINE == "NodeName=$NODE "* ]] || die "slurmd -C reports '$NODE_LINE', not node $NODE"
mkdir -p /etc/slurm
cat >"$CONF" <<EOF
$MARK
# A one-node test cluster on localhost. Files under $STATE.
ClusterName=segkd-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (a container may not delegate them): processes tracked by /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: the snakemake plugin reads job states with squeue, so finished jobs must stay
# visible to it; MinJobAge keeps them in slurmctld for a day.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=86400
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
# No mail on a test node (an unset MailProg is logged as an error).
MailProg=/bin/true
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

trap stop_cluster EXIT   # from here on, whatever happens, our daemons stop
slurmctld   # daemonizes; writes SlurmctldPidFile
slurmd
for ((i = 0; i < 60; i++)); do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 1
done
[[ $state == idle ]] || die "node $NODE is '${state:-not reported}', not idle, after 60 s; see $STATE/slurmctld.log and $STATE/slurmd.log"
log "cluster up: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | head -n1)"

# --- 4. the smoke study through the SLURM profile, with the one-node overlay -----------------------
# PYTHONPATH: jobs import the copy's segkd, not the editable install's (the live checkout). sbatch
# passes the environment on (--export=ALL), so jobs see PATH and PYTHONPATH as set here.
SMK_LOG=$WORK/snakemake.log
START=$(date +%s)
set +e
(cd "$WORK" && env -u SNAKEMAKE_PROFILE -u MLFLOW_TRACKING_URI \
    PATH="$VENV/bin:$PATH" PYTHONPATH="$WORK/src" \
    snakemake --profile workflow/profiles/slurm --profile workflow/profiles/slurm-test \
        --configfile "$STUDY") >"$SMK_LOG" 2>&1
RC=$?
set -e
WALL=$(($(date +%s) - START))

# --- 5. checks ----------------------------------------------------------------------------------------
FAIL=0
check() { if eval "$2"; then log "ok: $1"; else log "FAILED: $1"; FAIL=1; fi; }

check "snakemake exit status 0 (got $RC)" '[[ $RC -eq 0 ]]'
for f in results/report.md results/summary.json; do check "$f exists" "[[ -s \$WORK/$f ]]"; done

STUDENT_RUNS=$("$VENV/bin/python" -c '
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=f"sqlite:///{sys.argv[1]}/mlflow.db")
exp = client.get_experiment_by_name("smoke")
print(0 if exp is None else len(client.search_runs([exp.experiment_id], "tags.role = '"'student'"'", max_results=1000)))
' "$WORK" || echo 0)
check "MLflow experiment 'smoke' has $EXPECTED_STUDENT_RUNS student runs (got $STUDENT_RUNS)" \
    '[[ $STUDENT_RUNS -eq $EXPECTED_STUDENT_RUNS ]]'

# The plugin logs "SLURM run ID: <uuid>" (the job name of every job it submits) and, per job,
# "Job <n> has been submitted with SLURM jobid <id>". Each non-local job is printed as "rule <name>:".
RUN_ID=$(sed -n 's/.*SLURM run ID: \([^ ]*\).*/\1/p' "$SMK_LOG" | head -n1)
mapfile -t SUBMITTED < <(sed -n 's/.*has been submitted with SLURM jobid \([0-9_]*\).*/\1/p' "$SMK_LOG")
REMOTE_JOBS=$(grep -c '^rule ' "$SMK_LOG" || true)
check "every non-local job was submitted to SLURM (${#SUBMITTED[@]} submitted, $REMOTE_JOBS non-local jobs)" \
    '[[ ${#SUBMITTED[@]} -gt 0 && ${#SUBMITTED[@]} -eq $REMOTE_JOBS ]]'
COMPLETED=0
for id in "${SUBMITTED[@]}"; do
    st=$(scontrol show job -o "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
    if [[ $st == COMPLETED ]]; then COMPLETED=$((COMPLETED + 1)); else log "SLURM job $id: ${st:-unknown}"; fi
done
check "every submitted SLURM job is COMPLETED ($COMPLETED of ${#SUBMITTED[@]})" \
    '[[ $COMPLETED -eq ${#SUBMITTED[@]} ]]'
SQUEUE_COMPLETED=$(squeue -h --states=all --name "${RUN_ID:-none}" -o %T | grep -c '^COMPLETED$' || true)
check "squeue --states=all lists $SQUEUE_COMPLETED COMPLETED jobs named $RUN_ID" \
    '[[ $SQUEUE_COMPLETED -eq ${#SUBMITTED[@]} ]]'

echo
echo "== SLURM smoke run summary =="
echo "  SLURM run ID:        ${RUN_ID:-none}"
echo "  jobs submitted:      ${#SUBMITTED[@]} (SLURM ids ${SUBMITTED[*]:-none})"
echo "  jobs COMPLETED:      $COMPLETED"
echo "  by rule:             $(grep '^rule ' "$SMK_LOG" | sort | uniq -c | awk '{printf "%s %s ", $3, $1}' | tr -d :)"
echo "  snakemake:           exit $RC, $(grep -o '[0-9]* of [0-9]* steps ([0-9]*%) done' "$SMK_LOG" | tail -n1)"
echo "  wall time:           ${WALL} s"
echo "  MLflow student runs: $STUDENT_RUNS"
echo "  report:              $WORK/results/report.md, $WORK/results/summary.json"
echo "  logs:                $SMK_LOG, $WORK/.snakemake/slurm_logs/, $STATE/*.log"

# --- 6. teardown: the EXIT trap stops the daemons; --clean also removes the files -----------------
if ((CLEAN && !FAIL)); then   # a failed run keeps its files for inspection
    stop_cluster; trap - EXIT
    rm -rf "$WORK" "$STATE"
    log "--clean: removed $WORK and $STATE"
fi
if ((FAIL)); then echo "$PROG: FAILED (see $SMK_LOG)" >&2; exit 1; fi
echo "$PROG: PASSED"
