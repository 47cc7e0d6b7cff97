#!/usr/bin/env bash
# Builds agentline, installs it with its default profile and starts it:
# as a systemd service where systemd runs, else in the background.
# Run from the repository root as root (or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo $0)" >&2
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
/usr/local/bin/agentline check-config --profile /etc/agentline/sip-profiles/default.toml

if [ -d /run/systemd/system ]; then
  install -m 0644 systemd/agentline.sysusers /usr/lib/sysusers.d/agentline.conf
  systemd-sysusers /usr/lib/sysusers.d/agentline.conf
  install -m 0644 systemd/agentline.service /etc/systemd/system/agentline.service
  systemctl daemon-reload
  systemctl enable --now agentline
  sleep 1
  systemctl --no-pager status agentline | head -5 || true
  echo
  echo "agentline is running. Softphone accounts 1000 and 1001; their passwords:"
  for u in 1000 1001; do
    printf '  %s: %s\n' "$u" "$(cat /var/lib/agentline/credentials/$u 2>/dev/null || echo '(see journalctl -u agentline)')"
  done
else
  # No systemd (a container): run in the background with the same files.
  install -d -m 0700 /var/lib/agentline
  STATE_DIRECTORY=/var/lib/agentline nohup /usr/local/bin/agentline run \
    --profile /etc/agentline/sip-profiles/default.toml >/var/log/agentline.log 2>&1 &
  sleep 1
  echo "agentline is running (pid $!), log in /var/log/agentline.log. Passwords:"
  for u in 1000 1001; do
    printf '  %s: %s\n' "$u" "$(cat /var/lib/agentline/credentials/$u 2>/dev/null || echo '(see the log)')"
  done
fi
echo "Health: curl -s 127.0.0.1:8080/health"
