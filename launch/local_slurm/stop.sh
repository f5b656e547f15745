#!/usr/bin/env bash
# Stop the local Slurm started by start.sh (slurmctld and slurmd through `scontrol shutdown`, then
# munged by its pid file). Queued and running jobs are lost. Leaves a Slurm it did not configure alone.
#
#   launch/local_slurm/stop.sh
set -euo pipefail
MARKER="# written by megatron-emu3 launch/local_slurm/start.sh"
if ! grep -qF "$MARKER" /etc/slurm/slurm.conf 2>/dev/null; then
    echo "local_slurm: /etc/slurm/slurm.conf is not ours (or missing); not stopping anything" >&2
    exit 0
fi
[[ $(id -u) -eq 0 ]] || { echo "local_slurm: needs root" >&2; exit 3; }
scontrol shutdown >/dev/null 2>&1 || true
for _ in $(seq 100); do
    pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
    sleep 0.2
done
if [[ -s /run/munge/munged.pid ]]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
fi
echo "local_slurm: stopped" >&2
