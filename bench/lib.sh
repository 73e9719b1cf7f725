# Shared by the bench/ scripts (sourced): starting alohook and reading its address, fresh
# PostgreSQL databases, JSON reports, and the line that describes the machine.
# Expects: $work (a scratch dir), a pids array, $database (a PostgreSQL URL, or empty).

# start NAME COMMAND...: runs it, waits for its "listening on http://ADDR" line (START_SECONDS,
# default 20); sets addr, last_pid.
start() {
  local name=$1; shift
  "$@" > "$work/$name.out" 2> "$work/$name.err" &
  last_pid=$!
  pids+=("$last_pid")
  for _ in $(seq 1 $(( ${START_SECONDS:-20} * 20 ))); do
    addr=$(sed -n 's/.*listening on http:\/\/\(.*\)$/\1/p' "$work/$name.out" | head -n1)
    [ -n "$addr" ] && return 0
    kill -0 "$last_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "$name did not start:" >&2; cat "$work/$name.err" >&2; exit 1
}

# json FILE EXPRESSION: the expression evaluated over the JSON object in FILE.
json() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, r))" "$1" "$2"; }

# fresh_database NAME: creates it on the server of $database and prints its URL.
fresh_database() {
  psql -q "$database" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1" \
    -c "CREATE DATABASE $1" >/dev/null
  python3 -c "import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path='/' + sys.argv[2])))" "$database" "$1"
}

# fsync_latency: what one 4 KiB write + fdatasync costs on the data dir's disk (p50 and p99 of
# 500). Every commit waits for one: machines with a slower disk give slower commits.
fsync_latency() {
  python3 -c "
import os, sys, time
path = os.path.join(sys.argv[1], 'fsync-probe')
fd = os.open(path, os.O_WRONLY | os.O_CREAT)
times = []
for i in range(500):
    t = time.perf_counter(); os.pwrite(fd, b'x' * 4096, i * 4096); os.fdatasync(fd)
    times.append(time.perf_counter() - t)
os.close(fd); os.unlink(path); times.sort()
print(f'fsync p50 {times[250] * 1e3:.2f} ms, p99 {times[495] * 1e3:.2f} ms')" "$work"
}

# machine_line: cores, memory, CPU, kernel, fsync latency.
machine_line() {
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1), $(uname -sr), $(fsync_latency)"
}
