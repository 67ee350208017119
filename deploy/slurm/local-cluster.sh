#!/usr/bin/env bash
# A private one-node Slurm "cluster" on localhost, for the tests and for trying the job scripts.
# Everything it writes is under DIR: munge's key, socket, pid and log; slurm.conf with its
# state, spool, log and pid paths; it listens on two free ports. Nothing under /etc, /var or
# /run is touched, so it can run beside a machine's own Slurm (it never reads /etc/slurm).
# Debian 12 as root (slurmd starts jobs); needs neither systemd nor cgroups.
#
#   bash deploy/slurm/local-cluster.sh up DIR     # start munged, slurmctld, slurmd; wait for an idle node
#   export SLURM_CONF=DIR/slurm.conf              # then sbatch, squeue, scancel... use this cluster
#   bash deploy/slurm/local-cluster.sh down DIR   # cancel every job, stop the three daemons
#
# It installs nothing: it needs Debian's slurmctld, slurmd, slurm-client and munge
# (`apt-get install --no-install-recommends slurmctld slurmd slurm-client munge`; .ci/run
# does that). The settings were checked on the CI machine (see the team's infra notes,
# "Private cluster for tests"); the ones that matter beyond the minimum:
#   AuthInfo=socket=DIR/munge.sock   both daemons and every client talk to this munged;
#   AuthInfo cred_expire=5 + SchedulerParameters=bf_interval=1,sched_interval=2
#       a requeued job starts again after ~7 s instead of ~130 s (it waits cred_expire+1 s
#       and then for a scheduler pass);
#   RealMemory and the CPU layout come from `slurmd -C`, because a node that claims more
#       memory than slurmd detects is drained ("Low RealMemory").
set -euo pipefail

usage() {
    echo "usage: $0 up|down DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
ACTION=$1
DIR=$2
[ -n "$DIR" ] || usage
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
export SLURM_CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge.sock

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

check_tools() {
    local tool missing=()
    for tool in slurmctld slurmd sbatch sinfo scancel munged mungekey munge unmunge; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "missing: ${missing[*]}; install Debian's slurmctld slurmd slurm-client munge" >&2
        exit 3
    fi
}

munge_works() { munge -S "$MUNGE_SOCKET" -n 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munge() {
    munge_works && return 0 # already running (a second `up`)
    if [ ! -s "$DIR/munge.key" ]; then
        mungekey --create --force --keyfile="$DIR/munge.key"
        chmod 0600 "$DIR/munge.key"
    fi
    # --force: munged refuses to run as root without it.
    munged --force --key-file="$DIR/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed"
    for _ in $(seq 50); do
        munge_works && return 0
        sleep 0.1
    done
    echo "munged did not start; its log:" >&2
    tail -n 20 "$DIR/munged.log" >&2 || true
    return 1
}

free_ports() { # two distinct free TCP ports on this machine
    python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
'
}

write_conf() {
    local hardware ctld_port slurmd_port
    # "NodeName=host CPUs=.. Boards=.. ... RealMemory=.." -> everything after the name
    hardware=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
    read -r ctld_port slurmd_port < <(free_ports)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$SLURM_CONF" <<CONF
ClusterName=valbench-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
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
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
NodeName=localhost NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
    check_tools
    chmod 0755 "$DIR" # munged and slurmd check who may write where their files live
    start_munge
    # A second `up` restarts the Slurm daemons on a fresh config (new ports) and empty state.
    stop_daemon "$DIR/slurmd.pid"
    stop_daemon "$DIR/slurmctld.pid"
    write_conf
    rm -rf "${DIR:?}/state"/* "${DIR:?}/spool"/*
    slurmctld            # both read SLURM_CONF, daemonize and write their pid files
    slurmd -N localhost  # -N: the node is "localhost" whatever this machine's hostname is
    for _ in $(seq 300); do
        if [ "$(sinfo -h -n localhost -o %t 2>/dev/null)" = idle ]; then
            sinfo
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.1
    done
    echo "the Slurm node did not become idle within 30 s" >&2
    sinfo -R >&2 || true
    tail -n 30 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    return 1
}

down() {
    if [ -s "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
        # With proctrack/linuxproc, stopping slurmd leaves running jobs alive: end them first.
        scancel --full --signal=KILL --user=root 2>/dev/null || true
        scancel --user=root 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    stop_daemon "$DIR/slurmd.pid" &
    stop_daemon "$DIR/slurmctld.pid" & # it also ends its helper, slurmscriptd
    wait
    stop_daemon "$DIR/munged.pid"
}

case "$ACTION" in
    up) up ;;
    down) down ;;
    *) usage ;;
esac
