#!/bin/sh
# /init of the vmwatch lab guest (busybox sh). Built into the initramfs by
# `cargo xtask lab build` from xtask/src/lab/guest/init.sh.
#
# Kernel command line parameters (all optional):
#   vmwatch.scenario=NAME   guest side of a scenario (default: idle); see the table below
#   vmwatch.ip=ADDR/PREFIX  address of eth0 (e.g. 10.77.0.11/24)
#   vmwatch.gw=ADDR         default gateway
#   vmwatch.bench_gap=S     bench: seconds between rounds (the host switches monitors then)
#   vmwatch.bench_cpu=N     bench: stress-ng prime operations of the CPU job
#   vmwatch.bench_db=N      bench: SQLite transactions of the database job
#   vmwatch.phased=1        the scenario's guest side waits for the host's phase commands
#
# Console protocol (serial console, one line each, read by the host's VM runner):
#   VMWATCH-READY scenario=NAME          the scenario's guest side is running
#   VMWATCH-ERROR scenario=NAME: WHY     it could not be started (the guest keeps running)
#   VMWATCH-BENCH ...                    scenario bench: rounds and job times (see bench_loop)
#   VMWATCH-PHASE on|off done            phased boot: the guest side was started or stopped
#
# Phased boots (vmwatch.phased=1) read commands from the console, one per line:
#   VMWATCH-PHASE on    start the scenario's guest side (as an unphased boot does)
#   VMWATCH-PHASE off   stop it: every process it started, with their children

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
umask 022

log() { echo "vmwatch-init: $*"; }

# Value of a vmwatch.* parameter on the kernel command line ("" if absent).
param() {
    for word in $(cat /proc/cmdline); do
        case "$word" in
            "$1"=*) echo "${word#*=}"; return 0 ;;
        esac
    done
    return 1
}

fail() {
    echo "VMWATCH-ERROR scenario=$SCENARIO: $*"
    # Keep the VM up: the host decides what to do (and can read the console).
    while :; do sleep 3600; done
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname vmwatch-guest

SCENARIO=$(param vmwatch.scenario)
SCENARIO=${SCENARIO:-idle}

# Kernel modules, dependencies first (the list is written at build time).
KVER=$(uname -r)
while read -r mod || [ -n "$mod" ]; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$KVER/$mod" || log "insmod $mod failed"
done < /etc/vmwatch/modules

# Network: eth0 exists only when the VM has a NIC.
ip link set lo up
IP=$(param vmwatch.ip)
GW=$(param vmwatch.gw)
if ip link show eth0 >/dev/null 2>&1; then
    ip link set eth0 up
    if [ -n "$IP" ]; then
        ip addr add "$IP" dev eth0
        [ -z "$GW" ] || ip route add default via "$GW"
        log "eth0 $IP gateway ${GW:-none}"
    fi
else
    log "no network interface"
fi

# The data disk (virtio-blk, ext4, made by the build): mounted when present.
if [ -b /dev/vda ]; then
    mkdir -p /mnt/data
    mount -t ext4 /dev/vda /mnt/data || log "could not mount /dev/vda"
fi

# The web server runs in every scenario (normal load and attacks target it).
httpd -p 80 -h /www -c /etc/httpd.conf
i=0
until wget -q -O /dev/null http://127.0.0.1/ 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || fail "the web server does not answer on port 80"
    usleep 100000
done

# Sessions the scenario's guest side started (their leaders' PIDs): setsid in a
# shell without job control does not fork, so $! leads the new session and its
# process group, which `VMWATCH-PHASE off` signals as a whole.
SCENARIO_GROUPS=""

# Starts a command in the background, in its own session, detached from the
# console's input, with its output on the console.
start() { setsid "$@" </dev/null & SCENARIO_GROUPS="$SCENARIO_GROUPS $!"; }

# Like start, with the output discarded (attack tools are chatty, and every
# console character is slow under TCG).
quiet() { setsid "$@" </dev/null >/dev/null 2>&1 & SCENARIO_GROUPS="$SCENARIO_GROUPS $!"; }

# Runs a command again and again (each run ends by itself), output discarded.
quiet_loop() {
    setsid sh -c 'while :; do "$@"; sleep 1; done' quiet_loop "$@" </dev/null >/dev/null 2>&1 &
    SCENARIO_GROUPS="$SCENARIO_GROUPS $!"
}

# Stops what the scenario's guest side started: TERM to each process group,
# KILL to what is left after a second.
stop_groups() {
    for g in $SCENARIO_GROUPS; do kill -TERM -- "-$g" 2>/dev/null; done
    sleep 1
    for g in $SCENARIO_GROUPS; do kill -KILL -- "-$g" 2>/dev/null; done
    SCENARIO_GROUPS=""
}

# Monotonic guest time in ns: /proc/timer_list ("now at N nsecs"), else
# /proc/uptime (10 ms steps). busybox date has no %N.
now_ns() {
    if [ -r /proc/timer_list ]; then
        awk '/^now at/ { print $3; exit }' /proc/timer_list
    else
        awk '{ printf "%.0f\n", $1 * 1000000000 }' /proc/uptime
    fi
}

# `cargo xtask bench overhead` (Fig. 6): a fixed CPU job (stress-ng primes, as
# the paper's sysbench prime test) and a fixed database job (SQLite
# transactions, each committed with fsync through virtio-blk), timed with the
# guest's clock, round after round. Between rounds the guest sleeps
# vmwatch.bench_gap seconds: the host switches the monitor then, and checks
# that it was ready before the round's start line.
bench_loop() {
    gap=$(param vmwatch.bench_gap) || gap=4
    cpu_ops=$(param vmwatch.bench_cpu) || cpu_ops=400
    db_tx=$(param vmwatch.bench_db) || db_tx=200
    db=/mnt/data/bench.db
    awk -v n="$db_tx" 'BEGIN { for (i = 0; i < n; i++) printf "BEGIN; INSERT INTO t(k, v) VALUES (%d, randomblob(256)); UPDATE c SET n = n + 1; COMMIT;\n", i }' >/tmp/bench-tx.sql
    sqlite3 "$db" 'CREATE TABLE IF NOT EXISTS t(k INTEGER, v BLOB); CREATE TABLE IF NOT EXISTS c(n INTEGER); INSERT INTO c VALUES (0);' ||
        { echo "VMWATCH-BENCH error: sqlite3 failed"; return 1; }
    round=0
    while :; do
        sqlite3 "$db" 'DELETE FROM t;' && sync
        echo "VMWATCH-BENCH wait round=$round"
        sleep "$gap"
        echo "VMWATCH-BENCH start round=$round"
        for job in cpu db; do
            t0=$(now_ns)
            case $job in
                cpu) stress-ng --cpu 1 --cpu-method prime --cpu-ops "$cpu_ops" --quiet >/dev/null 2>&1 ;;
                db) sqlite3 "$db" </tmp/bench-tx.sql >/dev/null 2>&1 ;;
            esac
            status=$?
            t1=$(now_ns)
            echo "VMWATCH-BENCH result round=$round job=$job ns=$((t1 - t0)) status=$status"
        done
        round=$((round + 1))
    done
}

# The -source attacks and stress-net aim at the host side of the lab network.
GWIP=${GW:-}
need_gw() {
    [ -n "$GWIP" ] || fail "scenario $SCENARIO needs the lab network (vmwatch.gw=)"
    ip link show eth0 >/dev/null 2>&1 || fail "scenario $SCENARIO needs a NIC"
}
ADMIN_USER=admin

# Guest side of each scenario. Host-side parts (client load, attacks at the VM)
# are started by `cargo xtask lab`; here is only what runs inside the guest.
scenario_start() {
case "$SCENARIO" in
    idle | web)
        # The web server only: `idle` has no client load, `web` gets it from the host.
        ;;
    stress-mem)
        start stress-ng --vm 1 --vm-bytes 128M --quiet
        ;;
    stress-io)
        # Workers calling sync() in a loop (what stress --io does).
        start stress-ng --io 1 --quiet
        ;;
    stress-hdd)
        grep -q ' /mnt/data ' /proc/mounts || fail "stress-hdd needs the data disk (/dev/vda)"
        start stress-ng --hdd 1 --hdd-bytes 16M --temp-path /mnt/data --quiet
        ;;
    web-peak)
        # The web server only; the (higher) client load comes from the host.
        ;;
    stress-net)
        need_gw
        # Adaptive flood ping: the next request as soon as the reply arrives.
        quiet ping -A -q -s 1024 "$GWIP"
        ;;
    synflood-target | bruteforce-target | slowhttp-target | portscan-target)
        # The attack comes from the host side (and the web load with it).
        ;;
    synflood-source)
        need_gw
        # SYN flood at about 1000 packets/s on the host side's web server.
        quiet hping3 -q -S -p 80 -i u1000 "$GWIP"
        ;;
    bruteforce-source)
        need_gw
        quiet_loop ncrack --user "$ADMIN_USER" -P /usr/share/ncrack/default.pwd \
            -m http:path=/admin/ "http://$GWIP"
        ;;
    slowhttp-source)
        need_gw
        quiet_loop slowhttptest -H -c 200 -r 20 -i 10 -x 24 -l 600 -u "http://$GWIP/"
        ;;
    portscan-source)
        need_gw
        quiet_loop nmap -sS -n -Pn -T4 -p 1-65535 "$GWIP"
        ;;
    bench)
        grep -q ' /mnt/data ' /proc/mounts || fail "bench needs the data disk (/dev/vda)"
        bench_loop </dev/null &
        ;;
    bench-steady)
        # Fig. 5: a light, steady load (a small synced write and a short CPU
        # burst every 0.1 s), so probes fire without saturating the host.
        grep -q ' /mnt/data ' /proc/mounts || fail "bench-steady needs the data disk (/dev/vda)"
        setsid sh -c 'while :; do dd if=/dev/zero of=/mnt/data/steady bs=4k count=4 conv=fsync; i=0; while [ $i -lt 300 ]; do i=$((i + 1)); done; usleep 100000; done' </dev/null >/dev/null 2>&1 &
        ;;
    *)
        fail "unknown scenario"
        ;;
esac
}

PHASED=$(param vmwatch.phased)
if [ "$PHASED" = 1 ]; then
    case "$SCENARIO" in
        bench | bench-steady) fail "scenario $SCENARIO cannot be phased" ;;
    esac
    # Commands must not come back as console output.
    stty -echo 2>/dev/null
else
    scenario_start
fi

echo "VMWATCH-READY scenario=$SCENARIO"

# vmwatch.debug=1: a report of the guest's state after the readiness line.
if [ "$(param vmwatch.debug)" = 1 ]; then
    sleep 2
    echo "--- debug: modules"; lsmod
    echo "--- debug: mounts"; cat /proc/mounts
    echo "--- debug: processes"; ps
    echo "--- debug: memory"; free -m
    for url in / /cgi-bin/search?q=tools /cgi-bin/item?id=42 /cgi-bin/order?id=7\&qty=2 /cgi-bin/report /static/large.html; do
        echo "--- debug: GET $url: $(wget -q -O - "http://127.0.0.1$url" | wc -c) bytes"
    done
    wget -q -O /dev/null http://127.0.0.1/admin/ && echo "--- debug: /admin/ WITHOUT auth: open (wrong)" || echo "--- debug: /admin/ without auth: refused"
    wget -q -O - "http://admin:$(sed -n "s#^/admin:admin:##p" /etc/httpd.conf)@127.0.0.1/admin/" >/dev/null && echo "--- debug: /admin/ with auth: ok"
    for t in nmap hping3 ncrack stress-ng; do
        echo "--- debug: $t: $($t --version 2>&1 | grep -m 1 .)"
    done
    echo "--- debug: slowhttptest: $(slowhttptest -h 2>&1 | grep -m 1 version)"
    echo "--- debug: end"
fi

# Phased: the host switches the guest side on and off through the console
# (init's stdin).
if [ "$PHASED" = 1 ]; then
    ON=0
    while :; do
        if ! read -r word arg; then
            sleep 1
            continue
        fi
        [ "$word" = VMWATCH-PHASE ] || continue
        case "$arg" in
            on) [ "$ON" = 1 ] || scenario_start; ON=1 ;;
            off) stop_groups; ON=0 ;;
            *) echo "VMWATCH-ERROR scenario=$SCENARIO: unknown phase command: $arg"; continue ;;
        esac
        echo "VMWATCH-PHASE $arg done"
    done
fi

# PID 1 must not exit.
while :; do sleep 3600; done
