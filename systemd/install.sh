#!/usr/bin/env bash
# Builds agentline, installs it with its default profile and starts it:
# as a systemd service where systemd runs, else in the background.
# Run from the repository root as root (`./systemd/install.sh` in a root
# shell; minimal images have no sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (in a root shell: $0)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y build-essential pkg-config libopus-dev curl ca-certificates

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] || curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

cargo build --release --locked
install -m 0755 target/release/agentline /usr/local/bin/agentline
install -d /etc/agentline/sip-profiles /etc/agentline/certs /usr/local/share/doc/agentline
if [ ! -f /etc/agentline/sip-profiles/default.toml ]; then
  install -m 0644 sip-profiles/default.toml /etc/agentline/sip-profiles/default.toml
fi
install -m 0644 README.md /usr/local/share/doc/agentline/README.md

PROFILE=/etc/agentline/sip-profiles/default.toml
/usr/local/bin/agentline check-config --profile "$PROFILE"
# The API address from the profile's [api] listen (default 127.0.0.1:8080);
# a wildcard address is asked on loopback.
API=$(awk '/^\[/{a=($0 ~ /^\[api\]/)} a && /^listen *=/{gsub(/^[^"]*"|".*$/, ""); print; exit}' "$PROFILE")
API=${API:-127.0.0.1:8080}
API=${API/#0.0.0.0:/127.0.0.1:}
API=${API/#\[::\]:/[::1]:}

# Up to 20 s for GET /health to answer 200 while `alive` (a command) holds.
wait_healthy() {
  local alive=$1
  for _ in $(seq 1 80); do
    if ! $alive; then return 1; fi
    if curl -fsS --max-time 1 "http://$API/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  return 1
}

print_passwords() {
  for u in 1000 1001; do
    printf '  %s: %s\n' "$u" "$(cat /var/lib/agentline/credentials/$u 2>/dev/null || echo "($1)")"
  done
}

if [ -d /run/systemd/system ]; then
  install -m 0644 systemd/agentline.sysusers /usr/lib/sysusers.d/agentline.conf
  systemd-sysusers /usr/lib/sysusers.d/agentline.conf
  install -m 0644 systemd/agentline.service /etc/systemd/system/agentline.service
  systemctl daemon-reload
  systemctl enable agentline
  # restart, not `enable --now`: an upgrade must run the new binary.
  systemctl restart agentline
  unit_active() { systemctl is-active --quiet agentline; }
  if ! wait_healthy unit_active; then
    echo "install.sh: agentline did not start (no answer on http://$API/health):" >&2
    systemctl --no-pager status agentline >&2 || true
    journalctl -u agentline -n 20 --no-pager >&2 || true
    exit 1
  fi
  systemctl --no-pager status agentline | head -5 || true
  echo
  echo "agentline is running. Softphone accounts 1000 and 1001; their passwords:"
  print_passwords "see journalctl -u agentline"
else
  # No systemd (a container): run in the background with the same files.
  install -d -m 0700 /var/lib/agentline
  PIDFILE=/run/agentline.pid
  LOG=/var/log/agentline.log
  # Stop the instance a previous run started (its pid file, else that exact
  # binary running this profile), so the new one gets the ports; SIGTERM
  # drains calls (up to sip.shutdown_grace_s, 30 s by default).
  old=""
  if [ -f "$PIDFILE" ] && grep -qa /usr/local/bin/agentline "/proc/$(cat "$PIDFILE")/cmdline" 2>/dev/null; then
    old=$(cat "$PIDFILE")
  else
    old=$(pgrep -f "^/usr/local/bin/agentline run --profile $PROFILE" || true)
  fi
  for pid in $old; do
    echo "stopping the running agentline (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $old; do
    for _ in $(seq 1 180); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "install.sh: agentline (pid $pid) did not stop in 45 s; stop it and run again" >&2
      exit 1
    fi
  done
  # Append: the earlier starts' lines (and their generated passwords) stay.
  echo "---- install.sh start $(date -u +%Y-%m-%dT%H:%M:%SZ) ----" >>"$LOG"
  STATE_DIRECTORY=/var/lib/agentline nohup /usr/local/bin/agentline run \
    --profile "$PROFILE" >>"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  proc_alive() { kill -0 "$pid" 2>/dev/null; }
  if ! wait_healthy proc_alive; then
    echo "install.sh: agentline did not start (no answer on http://$API/health); the end of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    kill -TERM "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    exit 1
  fi
  echo "agentline is running (pid $pid), log in $LOG. Passwords:"
  print_passwords "see the log"
fi
echo "Health: curl -s $API/health"
