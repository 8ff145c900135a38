#!/usr/bin/env bash
# Starts a single-node Slurm cluster on this machine (as root), for `pipe run --executor slurm`
# and tests/slurm.rs: Debian's slurm-wlm and munge, slurmctld + slurmd + munged, no accounting,
# no cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), so it also runs inside
# a container. Idempotent: a cluster this script started and that still answers is left as is.
#
#   scripts/slurm-up.sh            install if needed, write the config, start the daemons
#   scripts/slurm-up.sh --stop     stop the daemons this script started
#
# Exit status: 0 when `sinfo` shows the node idle; 1 with the reason (and the daemons' log
# tails) otherwise. Every step has a time limit, so a hung apt or daemon fails, never hangs.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# Written by pipe's scripts/slurm-up.sh"
LOGDIR=/var/log/slurm
APT_TIMEOUT=${SLURM_UP_APT_TIMEOUT:-900}

say() { echo "slurm-up: $*"; }
die() {
    say "FAILED: $*" >&2
    for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" /var/log/munge/munged.log; do
        if [ -s "$f" ]; then
            echo "--- last lines of $f" >&2
            tail -n 20 "$f" >&2
        fi
    done
    exit 1
}

# Waits up to $1 seconds for the command in the remaining arguments to succeed (each try is
# itself limited to 5 s, so a daemon that accepts but never answers cannot stretch the wait).
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until timeout 5 "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

# Stops the Slurm daemons by their pid files (only those this script's config names).
stop_slurm() {
    for d in slurmd slurmctld; do
        if [ -s "/run/$d.pid" ]; then
            kill "$(cat "/run/$d.pid")" 2>/dev/null || true
        fi
    done
}

if [ "${1:-}" = "--stop" ]; then
    stop_slurm
    if [ -s /run/munge/munged.pid ]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    fi
    say "stopped"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

IDLE="sinfo --noheader --format=%T | grep -Eq '^(idle|mixed|allocated)'"
node_idle() { timeout 5 sh -c "$IDLE" 2>/dev/null; }

if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF" && node_idle; then
    say "already up: $(sinfo --noheader --format='%P %D %T %c' | head -n1)"
    exit 0
fi

# 1. Packages. --no-install-recommends keeps out the plugin -dev packages slurm-wlm recommends.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (apt, up to ${APT_TIMEOUT}s)"
    export DEBIAN_FRONTEND=noninteractive
    timeout "$APT_TIMEOUT" apt-get update -q >/tmp/slurm-up-apt.log 2>&1 \
        || { tail -n 20 /tmp/slurm-up-apt.log >&2; die "apt-get update failed or timed out"; }
    timeout "$APT_TIMEOUT" apt-get install -y -q --no-install-recommends slurm-wlm munge \
        >>/tmp/slurm-up-apt.log 2>&1 \
        || { tail -n 20 /tmp/slurm-up-apt.log >&2; die "apt-get install slurm-wlm munge failed or timed out"; }
fi
say "$(slurmd -V 2>/dev/null || echo 'slurm installed')"

# 2. Munge: a key (the package usually makes one), then the daemon as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged || die "munged did not start"
    wait_for 10 sh -c 'munge -n | unmunge' || die "munge does not answer"
fi

# 3. The configuration: this machine is the controller and the only node. `slurmd -C` reports
# the node's real CPUs and memory, so the config matches the machine.
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to overwrite it"
fi
host=$(hostname -s)
node_line=$(slurmd -C | grep '^NodeName=' | sed -e 's/ UpTime=.*//')
[ -n "$node_line" ] || die "slurmd -C printed no node description"
mkdir -p /etc/slurm "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd
cat >"$CONF" <<CONF
$MARK for a single-node test cluster.
ClusterName=pipe
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay visible to squeue (as COMPLETED, FAILED, ...) for MinJobAge seconds.
MinJobAge=300
# scancel: SIGTERM, then SIGKILL after KillWait seconds.
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

# 4. The daemons (they fork into the background and write their pid files).
stop_slurm
sleep 1
slurmctld || die "slurmctld did not start"
wait_for 30 scontrol ping || die "slurmctld does not answer scontrol ping"
slurmd || die "slurmd did not start"
if ! wait_for 60 sh -c "$IDLE"; then
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    wait_for 30 sh -c "$IDLE" || die "the node did not become idle: $(sinfo --noheader -N --format='%N %T %E' 2>&1)"
fi
say "up: $(sinfo --noheader --format='partition %P, %D node(s), %T, %c CPUs')"
