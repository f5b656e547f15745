#!/usr/bin/env bash
# Install and start a one-node local Slurm (munge + slurmctld + slurmd) on this machine, so the
# scripts in launch/slurm/ run for real (CPU ranks over gloo). Idempotent: a Slurm that already
# answers is left alone; a half-started one is completed.
#
#   sudo launch/local_slurm/start.sh          # exit 0: Slurm is up, `sbatch` works
#
# Exit codes: 0 ready; 3 skipped on purpose (not root, no apt-get, a foreign slurm.conf), with the
# reason on stderr; 1 an error (the reason and the daemon logs on stderr).
#
# Debian's slurm-wlm 22.05 + munge. The node gets this machine's real CPU count (`nproc`) and a bit
# less memory than it has; ProctrackType=proctrack/linuxproc and TaskPlugin=task/none need no cgroups,
# so this also works inside containers. Knobs (environment): LOCAL_SLURM_PARTITION (debug),
# LOCAL_SLURM_MEM_RESERVE_MB (memory kept back from Slurm, default 1024).
set -euo pipefail

SLURM_CONF=/etc/slurm/slurm.conf
MARKER="# written by megatron-emu3 launch/local_slurm/start.sh"
PARTITION=${LOCAL_SLURM_PARTITION:-debug}
MEM_RESERVE_MB=${LOCAL_SLURM_MEM_RESERVE_MB:-1024}
LOG_DIR=/var/log/slurm
CONFIG_CHANGED=0

say() { echo "local_slurm: $*" >&2; }
skip() { say "skipped: $*"; exit 3; }
die() { say "error: $*"; exit 1; }

slurm_answers() {
    command -v scontrol >/dev/null 2>&1 && timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"
}

node_ready() {
    # A node of ours (or of an existing Slurm) that accepts jobs: idle, mixed or allocated.
    local states
    states=$(timeout 10 sinfo -h -N -o "%t" 2>/dev/null || true)
    grep -Eq "^(idle|mix|alloc)" <<<"$states"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null || skip "Slurm is not installed and apt-get is missing (install slurm-wlm + munge by hand)"
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || skip "apt-get update failed (no package mirror reachable?)"
        apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || skip "apt-get install slurm-wlm munge failed"
    fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    # A stale pid/socket from a killed munged blocks a restart.
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munge does not answer (see /var/log/munge/munged.log)"
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys these: OMP_NUM_THREADS=1 would give 1
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    mem_mb=$((mem_mb > MEM_RESERVE_MB * 2 ? mem_mb - MEM_RESERVE_MB : mem_mb / 2))
    if [[ -f $SLURM_CONF ]] && ! grep -qF "$MARKER" "$SLURM_CONF"; then
        skip "$SLURM_CONF exists and was not written by this script; not touching a real cluster's config"
    fi
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
$MARKER
# One node, this machine: $cpus CPUs, ${mem_mb} MB for jobs.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again only after its credential expired (default 120 s): keep it short.
AuthInfo=cred_expire=10
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at pending jobs every second (a requeued job becomes eligible by time, not by an event; on one
# test node the scan costs nothing).
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
JobRequeue=1
# Finished jobs stay visible to scontrol for 10 minutes (tests read their start and end times).
MinJobAge=600
KillWait=15
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f $SLURM_CONF ]] && cmp -s "$tmp" "$SLURM_CONF"; then
        rm -f "$tmp"
    else
        CONFIG_CHANGED=1
        mv "$tmp" "$SLURM_CONF"
        chmod 0644 "$SLURM_CONF"
        say "wrote $SLURM_CONF (node $host: $cpus CPUs, $mem_mb MB)"
    fi
}

start_daemons() {
    if ((CONFIG_CHANGED)) && slurm_answers; then
        say "configuration changed: restarting slurmctld and slurmd (scontrol shutdown)"
        scontrol shutdown >/dev/null 2>&1 || true
        for _ in $(seq 100); do
            pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
            sleep 0.2
        done
    fi
    if ! pgrep -x slurmctld >/dev/null; then
        slurmctld || die "slurmctld did not start: $(tail -n 5 "$LOG_DIR/slurmctld.log" 2>/dev/null)"
    fi
    for _ in $(seq 50); do
        slurm_answers && break
        sleep 0.2
    done
    slurm_answers || die "slurmctld does not answer: $(tail -n 5 "$LOG_DIR/slurmctld.log" 2>/dev/null)"
    if ! pgrep -x slurmd >/dev/null; then
        slurmd || die "slurmd did not start: $(tail -n 5 "$LOG_DIR/slurmd.log" 2>/dev/null)"
    fi
    local host
    host=$(hostname -s)
    for i in $(seq 100); do
        node_ready && return 0
        # A node left DOWN/DRAIN by an earlier, killed slurmd comes back with RESUME.
        if ((i % 10 == 0)); then
            scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
        fi
        sleep 0.2
    done
    die "node $host is not ready: $(sinfo -N -l 2>&1 | tail -n 2); see $LOG_DIR/slurmd.log"
}

# Slurm is up and its config is not ours, or is ours and current: nothing to do.
up_to_date() {
    slurm_answers && node_ready || return 1
    grep -qF "$MARKER" "$SLURM_CONF" 2>/dev/null || return 0
    [[ $(id -u) -eq 0 ]] || return 0
    local before
    before=$(md5sum <"$SLURM_CONF")
    write_config
    [[ $(md5sum <"$SLURM_CONF") == "$before" ]]
}

main() {
    if up_to_date; then
        say "Slurm already running ($(sinfo -h -o '%P %D nodes %c CPUs' | head -n 1))"
        exit 0
    fi
    [[ $(id -u) -eq 0 ]] || skip "needs root to install and start Slurm (running as $(id -un))"
    install_packages
    start_munge
    write_config
    start_daemons
    say "Slurm ready ($(sinfo -h -o '%P %D nodes %c CPUs %m MB' | head -n 1))"
}

main "$@"
