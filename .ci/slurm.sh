#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the SLURM tests (tests/test_slurm.py).
#   .ci/slurm.sh start   install Debian's slurm-wlm and munge if missing, write the configuration,
#                        start munged, slurmctld and slurmd (no systemd), wait until the node is idle
#   .ci/slurm.sh stop    stop the daemons that `start` started, by the PIDs it recorded
# Without packages (no network) `start` says so and returns 0: the tests then skip, naming why.
# When the daemons do not come up, `start` stops whatever it started and returns 1.
set -euo pipefail

STATE_DIR=${MRCTPREP_SLURM_STATE:-/tmp/mrctprep-slurm}
CONF=/etc/slurm/slurm.conf

log() { echo "slurm.sh: $*" >&2; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return 0
    log "installing slurmctld slurmd slurm-client munge"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends slurmctld slurmd slurm-client munge) >"$STATE_DIR/apt.log" 2>&1
}

write_config() {
    # The machine's CPUs and memory (less 1 GiB for the system and the daemons).
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024) - 1024}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE_DIR/spool/ctld" "$STATE_DIR/spool/d"
    cat >"$CONF" <<EOF
# written by mrctprep's .ci/slurm.sh: one node, localhost, no cgroups
ClusterName=mrctprep-ci
SlurmctldHost=localhost
SlurmUser=$(id -un)
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/spool/ctld
SlurmdSpoolDir=$STATE_DIR/spool/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DependencyParameters=kill_invalid_depend
ReturnToService=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
    # A GPU the scheduler can hand out (no device behind it): jobs asking for one are accepted
    # and routed as on a real cluster, so the tests can check where model nodes go.
    echo "NodeName=localhost Name=gpu File=/dev/null" >/etc/slurm/gres.conf
    echo "$cpus CPUs, $mem_mb MB"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged is already running: using it"
        return 0
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
    [ -s /etc/munge/munge.key ] || (mungekey --create && chown munge:munge /etc/munge/munge.key)
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
}

wait_until_idle() {
    local _
    for _ in $(seq 1 60); do
        [ "$(sinfo -h -N -n localhost -o %t 2>/dev/null | sort -u)" = idle ] && return 0
        sleep 0.5
    done
    return 1
}

start() {
    local started sizes
    mkdir -p "$STATE_DIR"
    if ! install_packages; then
        log "slurm-wlm/munge could not be installed (see $STATE_DIR/apt.log): SLURM tests skip"
        return 0
    fi
    stop  # what an earlier start left running
    started=$(date +%s.%N)
    sizes=$(write_config)
    # Whatever fails from here on, the daemons already started are stopped again.
    trap 'failed_start' EXIT
    start_munge
    slurmctld -c
    slurmd -N localhost
    wait_until_idle
    trap - EXIT
    log "node localhost idle ($sizes) $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $started}") s after start"
}

failed_start() {
    log "the cluster did not come up; its logs:"
    sinfo -N -l >&2 || true
    tail -n 20 "$STATE_DIR/slurmctld.log" "$STATE_DIR/slurmd.log" >&2 || true
    stop
    exit 1
}

stop() {
    local name pid _
    for name in slurmd slurmctld munged; do
        [ -s "$STATE_DIR/$name.pid" ] || continue
        pid=$(cat "$STATE_DIR/$name.pid")
        # only if that PID is still the daemon (a stale file's PID may belong to another process)
        if [ "$(ps -p "$pid" -o comm= 2>/dev/null)" = "$name" ]; then
            kill "$pid"
            for _ in $(seq 1 50); do ps -p "$pid" >/dev/null || break; sleep 0.2; done
            log "stopped $name ($pid)"
        fi
        rm -f "$STATE_DIR/$name.pid"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
