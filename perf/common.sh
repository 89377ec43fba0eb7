# Helpers shared by the benchmark scripts (sourced, not run).

# Waits (up to QUIET_WAIT seconds, default 300) until the CPUs are at least 90% idle
# over a second: other work on this machine would take cores from both ends. Busy
# pollers that belong to the measurement must be stopped (SIGSTOP) or asleep first.
wait_quiet() {
    local end=$((SECONDS + ${QUIET_WAIT:-300})) a b
    while ((SECONDS < end)); do
        read -ra a < /proc/stat
        sleep 1
        read -ra b < /proc/stat
        python3 -c 'import sys
a = list(map(int, sys.argv[1].split())); b = list(map(int, sys.argv[2].split()))
d = [y - x for x, y in zip(a, b)]
sys.exit(0 if d[3] * 100 >= 90 * max(1, sum(d[:8])) else 1)' "${a[*]:1}" "${b[*]:1}" && return
    done
    echo "bench: the machine stayed busy for ${QUIET_WAIT:-300}s; measuring anyway" >&2
}

# Run delay (ns runnable but off-CPU, from schedstat) of the threads of process $1
# whose name matches the pattern $2 (default: reactor threads, LightPool's
# "reactor-N" and SPDK's "reactor_N").
thread_delay() {
    local t s=0 pat=${2:-^reactor[-_]}
    for t in /proc/$1/task/*; do
        [[ $(cat "$t/comm" 2> /dev/null) =~ $pat ]] || continue
        s=$((s + $(awk '{print $2}' "$t/schedstat" 2> /dev/null || echo 0)))
    done
    echo $s
}

# Waits until 127.0.0.1:$1 accepts connections; prints $3 and exits if process $2
# dies first.
wait_port() {
    for _ in $(seq 300); do
        (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return
        kill -0 "$2" 2> /dev/null || { cat "$3" >&2; exit 1; }
        sleep 0.1
    done
    echo "bench: nothing listens on port $1 after 30 s" >&2
    exit 1
}
