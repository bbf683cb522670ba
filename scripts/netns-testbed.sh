#!/usr/bin/env bash
# A testbed of K hosts on one machine, built from Linux network namespaces.
#
#   netns-testbed.sh up K [--prefix P] [--subnet A.B.C]   create hosts <P>h1 .. <P>hK
#   netns-testbed.sh down [--prefix P]                    remove everything named <P>… (idempotent)
#   netns-testbed.sh status [--prefix P]                  show the hosts, addresses and processes
#
# Layout (defaults: P=nepi, subnet 10.77.0):
#
#   root namespace:  bridge <P>br, address A.B.C.1/24 (run Redis bound to it)
#                    veth <P>v<k>  (root side of host k's link, a port of <P>br)
#   namespace <P>hk: eth0 = the other end of <P>v<k>, address A.B.C.(10+k)/24,
#                    lo up, default route via A.B.C.1
#
# Run a host's worker inside its namespace, with its own hostname:
#
#   ip netns exec <P>h1 unshare --uts sh -c \
#     'hostname h1 && exec nepi-dist worker --host h1 --redis-url redis://A.B.C.1:PORT/0'
#
# Traffic stays inside this machine: hosts reach each other through the bridge, and the
# root namespace's own addresses (Redis) directly.  Nothing is NATed, and a policy-routing
# rule (`ip rule … iif <P>br prohibit`, removed by `down`) refuses to route anything that
# comes in from the bridge to any other network, even where ip_forward is on.
#
# Firewalls: with br_netfilter loaded (bridge-nf-call-iptables = 1), frames crossing the
# bridge go through iptables' FORWARD chain, and a host with a DROP policy there (e.g. one
# running Docker) would drop traffic between the namespaces.  When `iptables` is present
# and FORWARD would not accept, `up` inserts one ACCEPT rule for this bridge only (tagged
# with the comment nepi-testbed:<P>), and `down` deletes exactly that rule; global settings
# (sysctls, policies, other rules) are never changed.  An nftables ruleset that drops
# forwarded or input traffic is not adjusted: `status` warns, and you must allow <P>br.
#
# Needs root, iproute2 and util-linux (unshare).  Interface names stay within Linux's
# 15 characters: the prefix is 1-10 of [a-z0-9], and K at most 240.
set -Eeuo pipefail

prog=$(basename "$0")
usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "$prog: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
cmd=$1; shift
count=""
if [ "$cmd" = up ]; then
  [ $# -ge 1 ] || usage
  count=$1; shift
fi
prefix=nepi
subnet=10.77.0
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
    --subnet) [ $# -ge 2 ] || usage; subnet=$2; shift 2 ;;
    -h|--help) usage ;;
    *) die "unknown argument: $1" ;;
  esac
done

[[ $prefix =~ ^[a-z0-9]{1,10}$ ]] || die "prefix must be 1-10 characters of [a-z0-9], not '$prefix'"
if [ "$cmd" = up ]; then
  [[ $count =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] && [ "$count" -le 240 ] \
    || die "K must be an integer from 1 to 240, not '$count'"
  [[ $subnet =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] \
    || die "subnet must be three octets like 10.77.0, not '$subnet'"
  for o in "${BASH_REMATCH[@]:1}"; do
    [ "$o" -le 255 ] || die "subnet octet $o is above 255"
  done
fi
[ "$(id -u)" = 0 ] || die "needs root (ip netns, veth, bridge)"
command -v ip >/dev/null || die "needs iproute2 (ip)"

bridge="${prefix}br"
comment="nepi-testbed:${prefix}"

# The namespaces, veths and bridge of this prefix only (exact name patterns).
namespaces() { ip netns list | awk '{print $1}' | grep -E "^${prefix}h[0-9]+$" | sort -V || true; }
veths() { ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${prefix}v[0-9]+$" || true; }
have_bridge() { ip link show dev "$bridge" >/dev/null 2>&1; }

forward_blocked() {
  # True when bridged frames go through iptables and FORWARD would not accept them.
  [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)" = 1 ] || return 1
  command -v iptables >/dev/null || return 1
  local policy
  policy=$(iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}')
  [ -n "$policy" ] || return 1
  [ "$policy" != ACCEPT ] || [ "$(iptables -S FORWARD | grep -c -- '^-A')" -gt 0 ]
}

firewall_rule_present() {
  command -v iptables >/dev/null || return 1
  local rules
  rules=$(iptables -S FORWARD 2>/dev/null || true)
  [[ $rules == *"--comment ${comment} "* || $rules == *"--comment \"${comment}\" "* ]]
}

routing_rule_present() {
  local rules
  rules=$(ip rule show)
  [[ $rules =~ iif\ ${bridge}\ (\[detached\]\ )?prohibit ]]
}

down() {
  local ns pids v
  for ns in $(namespaces); do
    # Whatever still runs in the host (its worker, its applications) goes with it;
    # a namespace with processes left in it would outlive `ip netns del`.
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
  for v in $(veths); do ip link del "$v" 2>/dev/null || true; done
  while routing_rule_present; do
    ip rule del iif "$bridge" prohibit 2>/dev/null || break
  done
  if have_bridge; then ip link del "$bridge"; fi
  if firewall_rule_present; then
    iptables -D FORWARD -i "$bridge" -o "$bridge" -m comment --comment "$comment" -j ACCEPT 2>/dev/null || true
  fi
}

up() {
  [ -z "$(namespaces)" ] && ! have_bridge || die "a testbed with prefix '$prefix' exists: run '$prog down --prefix $prefix'"
  local used
  used=$(ip -4 -o addr show)
  if [[ $used == *" ${subnet}."[0-9]*/* ]]; then
    die "subnet $subnet.0/24 is already used on this machine: choose another with --subnet"
  fi
  trap 'down; exit 1' ERR
  ip link add "$bridge" type bridge stp_state 0 forward_delay 0
  ip addr add "${subnet}.1/24" dev "$bridge"
  ip link set "$bridge" up
  # Anything the hosts send beyond the bridge's subnet is refused, not routed out.
  ip rule add iif "$bridge" priority 100 prohibit
  if forward_blocked; then
    iptables -I FORWARD 1 -i "$bridge" -o "$bridge" -m comment --comment "$comment" -j ACCEPT
    echo "$prog: iptables FORWARD does not accept bridged traffic: added an ACCEPT rule for $bridge" >&2
  fi
  local k ns v
  for k in $(seq 1 "$count"); do
    ns="${prefix}h${k}"
    v="${prefix}v${k}"
    ip netns add "$ns"
    ip link add "$v" type veth peer name eth0 netns "$ns"
    ip link set "$v" master "$bridge"
    ip link set "$v" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "${subnet}.$((10 + k))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "${subnet}.1"
  done
  trap - ERR
  echo "testbed '$prefix': $count host(s) ${prefix}h1..${prefix}h${count} on $bridge, ${subnet}.1/24"
}

status() {
  local ns addr pids
  if have_bridge; then
    echo "bridge $bridge: $(ip -4 -o addr show dev "$bridge" | awk '{print $4}') $(ip -br link show dev "$bridge" | awk '{print $2}')"
  else
    echo "bridge $bridge: absent"
  fi
  for ns in $(namespaces); do
    addr=$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    echo "host $ns: eth0 ${addr:-none}; processes: ${pids:-none}"
  done
  if forward_blocked && ! firewall_rule_present; then
    echo "warning: iptables FORWARD may drop traffic across $bridge" >&2
  fi
  local ruleset
  ruleset=$(command -v nft >/dev/null && nft list ruleset 2>/dev/null || true)
  if [[ $ruleset =~ hook\ (forward|input)[^\;]*\;[^\;]*policy\ drop ]]; then
    echo "warning: an nftables chain drops forwarded or input traffic by default: allow $bridge" >&2
  fi
  echo "$(namespaces | wc -l) host(s) with prefix '$prefix'"
}

case $cmd in
  up) up ;;
  down) down ;;
  status) status ;;
  *) usage ;;
esac
