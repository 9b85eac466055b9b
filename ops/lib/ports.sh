# Loopback ports for scripts, the same way the tests take them (crates/testkit/src/ports.rs):
# outside the kernel's ephemeral range, so no outgoing connection is given one, and locked
# (flock) in $TMPDIR/chatctl-test-ports/PORT.lock for as long as the calling shell runs, so no
# test or other script takes one meanwhile. Source it, then:
#
#   reserve_port; port=$RESERVED_PORT
#
# (not `port=$(reserve_port)`: the lock is an open descriptor of the calling shell, and a
# command substitution's subshell would drop it on exit).

ports_lock_dir=${TMPDIR:-/tmp}/chatctl-test-ports

ports_usable_range() { # prints "LOW HIGH"
  local low high
  read -r low high < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { low=32768; high=60999; }
  if (( low >= 11000 )); then
    echo "10000 $((low - 1))"
  elif (( high <= 64535 )); then
    echo "$((high + 1)) 65535"
  else
    echo "1024 $((low - 1))"
  fi
}

# Sets RESERVED_PORT to a free port this shell now holds.
reserve_port() {
  local low high span start step port fd
  read -r low high < <(ports_usable_range)
  span=$((high - low + 1))
  start=${ports_next:-$((low + $$ % span))}
  mkdir -p -m 1777 "$ports_lock_dir" 2>/dev/null || true
  for ((step = 0; step < span; step++)); do
    port=$((low + (start - low + step) % span))
    # In braces: `exec` keeps its redirections, and a bare `2>/dev/null` on it would silence
    # the calling script's stderr for good.
    { exec {fd}<>"$ports_lock_dir/$port.lock"; } 2>/dev/null || exec {fd}<"$ports_lock_dir/$port.lock" || continue
    if flock -n "$fd" && ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      ports_next=$((port == high ? low : port + 1))
      RESERVED_PORT=$port
      return 0
    fi
    exec {fd}>&-
  done
  echo "no free loopback port in $low-$high (locks in $ports_lock_dir)" >&2
  return 1
}
