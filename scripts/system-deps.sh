#!/usr/bin/env bash
# System packages the Linux-resource tests use: an sshd to log into, and the tools the
# ready-made RMs run (ping, traceroute, tcpdump, iperf3, nc, gcc, mtr, nping, and python3 for
# the UDP tunnel's forwarder), and systemd-analyze, which checks deploy/systemd/.  Installs
# only what is missing; needs root (or passwordless sudo) and Debian's apt-get.
set -euo pipefail
need=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ping >/dev/null || need+=(iputils-ping)
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v traceroute >/dev/null || need+=(traceroute)
command -v tcpdump >/dev/null || [ -x /usr/bin/tcpdump ] || [ -x /usr/sbin/tcpdump ] || need+=(tcpdump)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v mtr >/dev/null || need+=(mtr-tiny)
command -v nping >/dev/null || need+=(nmap)
command -v python3 >/dev/null || need+=(python3)
command -v gcc >/dev/null || need+=(gcc)
command -v ip >/dev/null || need+=(iproute2)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
}
echo "installed: ${need[*]}"
