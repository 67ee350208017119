#!/usr/bin/env bash
# A one-node Slurm "cluster" on localhost, for CI and for trying the job scripts.
# Debian 12, run as root; needs neither systemd nor cgroups.
#
#   bash deploy/slurm/local-cluster.sh up     # install if missing, configure, start, wait for an idle node
#   bash deploy/slurm/local-cluster.sh down   # cancel every job, stop the daemons, wipe Slurm's state
#
# It overwrites /etc/slurm/slurm.conf: never run it on a machine that is part of a real cluster.
# The settings were checked on the CI machine (see the team's infra notes); the ones that
# matter beyond the minimum:
#   AuthInfo=cred_expire=5 + SchedulerParameters=bf_interval=1,sched_interval=2
#       a requeued job starts again after ~7 s instead of ~130 s (it waits cred_expire+1 s
#       and then for a scheduler pass);
#   RealMemory and the CPU layout come from `slurmd -C`, because a node that claims more
#       memory than slurmd detects is drained ("Low RealMemory").
set -euo pipefail

STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
CONF=/etc/slurm/slurm.conf

gone_within() { # PID SECONDS: true once PID has exited
    local pid=$1 ticks=$(($2 * 10))
    while kill -0 "$pid" 2>/dev/null && [ "$ticks" -gt 0 ]; do
        sleep 0.1
        ticks=$((ticks - 1))
    done
    ! kill -0 "$pid" 2>/dev/null
}

stop_daemon() { # PIDFILE: TERM, then KILL if it lingers
    local pidfile=$1 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        if ! gone_within "$pid" 15; then
            kill -KILL "$pid" 2>/dev/null || true
            gone_within "$pid" 5 || true
        fi
    fi
    rm -f "$pidfile"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

install_packages() {
    local tool missing=0
    for tool in slurmctld slurmd sbatch munged; do
        command -v "$tool" >/dev/null 2>&1 || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: 8 packages instead of 43. Without systemd (and with Debian's
    # policy-rc.d) the packages do not start their services, so we start them below.
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --force --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0600 /etc/munge/munge.key
    fi
    # /run/munge is normally made by systemd's tmpfiles.
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 0755 /run/munge
    munge_works && return 0 # already running (a second `up`)
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge_works && return 0
        sleep 0.1
    done
    echo "munged did not start" >&2
    return 1
}

write_conf() {
    local hardware
    # "NodeName=host CPUs=.. Boards=.. ... RealMemory=.." -> everything after the name
    hardware=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
    mkdir -p "$(dirname "$CONF")" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
    cat >"$CONF" <<CONF
ClusterName=valbench-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=localhost NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
    install_packages
    start_munge
    write_conf
    # A second `up` restarts the Slurm daemons on the fresh config and empty state.
    stop_daemon /run/slurmd.pid
    stop_daemon /run/slurmctld.pid
    rm -rf "${STATE_DIR:?}"/* "${SPOOL_DIR:?}"/*
    slurmctld            # both daemonize and write their pid files
    slurmd -N localhost  # -N: the node is "localhost" whatever this machine's hostname is
    for _ in $(seq 300); do
        if [ "$(sinfo -h -n localhost -o %t 2>/dev/null)" = idle ]; then
            sinfo
            return 0
        fi
        sleep 0.1
    done
    echo "the Slurm node did not become idle within 30 s" >&2
    sinfo -R >&2 || true
    tail -n 30 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    return 1
}

down() {
    if [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
        # With proctrack/linuxproc, stopping slurmd leaves running jobs alive: end them first.
        scancel --full --signal=KILL --user=root 2>/dev/null || true
        scancel --user=root 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    stop_daemon /run/slurmd.pid &
    stop_daemon /run/slurmctld.pid & # it also ends its helper, slurmscriptd
    wait
    stop_daemon /run/munge/munged.pid
    rm -rf "${STATE_DIR:?}"/* "${SPOOL_DIR:?}"/*
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *)
        echo "usage: $0 up|down" >&2
        exit 2
        ;;
esac
