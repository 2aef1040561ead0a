#!/usr/bin/env bash
# make demo: tslink's main job on a local tailnet, end to end, on this machine.
# Installs what a fresh Debian machine lacks, builds and installs the plugin,
# starts tslink-devcontrol (a local control server) and a "laptop" (tailscaled
# in its own netns), creates a tslink network, runs three containers (one serving an app) and shows
# them on the tailnet. KEEP=1 leaves everything running.
set -euo pipefail
cd "$(dirname "$0")/.."

PLUGIN=${PLUGIN:-tslink:latest}
STATE=${STATE_DIR:-/var/lib/docker-plugins/tailscale}
NET=tslink-demo
IMAGE=tslink-demo-busybox:latest
LAB=10.238.0      # host <-> laptop veth
INET=10.239.0     # host <-> "internet" veth
WORK=/run/tslink-demo
CONTROL_PORT=${DEMO_CONTROL_PORT:-47400}  # fixed, so a persistent identity stays on "the same tailnet"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf '\n\033[31mDEMO FAILED: %s\033[0m\n' "$*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (it creates network namespaces and installs a Docker plugin)"

cleanup() {
  [ "${KEEP:-0}" = 1 ] && return
  step "cleaning up"
  # Every container on the demo network, also ones added while KEEP=1 ran
  # and stopped ones (which network inspect does not list).
  local ctrs
  ctrs=$(docker ps -aq --filter network="$NET" 2>/dev/null || true)
  docker rm -f tslink-demo-alpha tslink-demo-beta tslink-demo-gamma $ctrs >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  [ -f $WORK/laptop.pid ] && kill "$(cat $WORK/laptop.pid)" 2>/dev/null || true
  [ -f $WORK/control.pid ] && kill "$(cat $WORK/control.pid)" 2>/dev/null || true
  [ -f $WORK/httpd.pid ] && kill "$(cat $WORK/httpd.pid)" 2>/dev/null || true
  ip netns del tslink-demo-laptop 2>/dev/null || true
  ip netns del tslink-demo-inet 2>/dev/null || true
  ip link del tsdemo-lap 2>/dev/null || true
  ip link del tsdemo-inet 2>/dev/null || true
  rm -f "$STATE/keys/demo"
  rm -rf "$STATE/by-hostname/demo-alpha" "$STATE/by-hostname/demo-beta"
  if [ -f $WORK/dockerd.pid ]; then
    # The demo's own engine: also what was added to other tslink networks
    # meanwhile, before the plugin goes (a container left on a network of a
    # disabled plugin keeps its sandbox and links).
    local nets
    nets=$(docker network ls -q --filter driver="$PLUGIN" 2>/dev/null || true)
    for n in $nets; do
      ctrs=$(docker ps -aq --filter network="$n" 2>/dev/null || true)
      [ -z "$ctrs" ] || docker rm -f $ctrs >/dev/null 2>&1 || true
      docker network rm "$n" >/dev/null 2>&1 || true
    done
    docker plugin disable -f "$PLUGIN" >/dev/null 2>&1 || true
    local pid; pid=$(cat $WORK/dockerd.pid)
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  [ ! -f $WORK/dockerd.log ] || { cp $WORK/dockerd.log /tmp/tslink-demo-dockerd.log; echo "dockerd's log (the plugin's too) kept in /tmp/tslink-demo-dockerd.log"; }
  rm -rf $WORK
}
if [ "${1:-}" = clean ]; then KEEP=0; cleanup; exit 0; fi
trap cleanup EXIT
trap 'printf "\n\033[31mDEMO FAILED at: %s\033[0m\n" "$BASH_COMMAND"' ERR

step "installing what this machine lacks"
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v busybox >/dev/null || need+=(busybox-static)
command -v dockerd >/dev/null || need+=(docker.io)
command -v iptables >/dev/null || need+=(iptables)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v go >/dev/null || fail "Go is needed to build tslink (go.mod names the version)"
[ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }
# A dockerd that an earlier KEEP=1 demo started stays the demo's: keep its
# pid file, so that demo-clean still stops it.
demo_dockerd=""
if [ -f $WORK/dockerd.pid ] && kill -0 "$(cat $WORK/dockerd.pid)" 2>/dev/null; then demo_dockerd=$(cat $WORK/dockerd.pid); fi
rm -rf $WORK && mkdir -p $WORK
[ -z "$demo_dockerd" ] || echo "$demo_dockerd" >$WORK/dockerd.pid

step "making sure a Docker daemon runs"
if ! docker info >/dev/null 2>&1; then
  echo "no dockerd answering; starting one (log: $WORK/dockerd.log)"
  dockerd >$WORK/dockerd.log 2>&1 &
  echo $! >$WORK/dockerd.pid
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start; see $WORK/dockerd.log"
fi

step "building and installing the plugin ($PLUGIN)"
make -s plugin PLUGIN="$PLUGIN" STATE_DIR="$STATE"
make -s bin/tslink-devcontrol bin/tslink
(cd test/tools && go build -o ../../bin/ tailscale.com/cmd/tailscaled tailscale.com/cmd/tailscale)

step "a local tailnet: tslink-devcontrol on $LAB.1, the laptop on $LAB.2, the internet on $INET.2"
ip netns add tslink-demo-laptop
ip link add tsdemo-lap type veth peer name eth0 netns tslink-demo-laptop
ip addr add $LAB.1/24 dev tsdemo-lap && ip link set tsdemo-lap up
ip -n tslink-demo-laptop addr add $LAB.2/24 dev eth0
ip -n tslink-demo-laptop link set eth0 up && ip -n tslink-demo-laptop link set lo up
ip netns add tslink-demo-inet
ip link add tsdemo-inet type veth peer name eth0 netns tslink-demo-inet
ip addr add $INET.1/24 dev tsdemo-inet && ip link set tsdemo-inet up
ip -n tslink-demo-inet addr add $INET.2/24 dev eth0
ip -n tslink-demo-inet link set eth0 up
ip -n tslink-demo-inet route add default via $INET.1
mkdir -p $WORK/www && echo "hello from the internet" >$WORK/www/index.html
ip netns exec tslink-demo-inet busybox httpd -f -p 80 -h $WORK/www &
echo $! >$WORK/httpd.pid

KEY="tskey-auth-demo$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
umask 077
printf '%s\n' "$KEY" >$WORK/authkey
mkdir -p "$STATE/keys" && cp $WORK/authkey "$STATE/keys/demo"
umask 022
bin/tslink-devcontrol -listen $LAB.1 -port "$CONTROL_PORT" -authkey-file $WORK/authkey >$WORK/control.log 2>&1 &
echo $! >$WORK/control.pid
for _ in $(seq 50); do grep -q "control URL" $WORK/control.log && break; sleep 0.1; done
CONTROL=$(sed -n 's/^control URL: //p' $WORK/control.log)
[ -n "$CONTROL" ] || fail "tslink-devcontrol did not start: $(cat $WORK/control.log)"
echo "control server: $CONTROL"

TS="$PWD/bin/tailscale --socket=$WORK/laptop.sock"
TS_NO_LOGS_NO_SUPPORT=true ip netns exec tslink-demo-laptop bin/tailscaled --state=$WORK/laptop.state \
  --socket=$WORK/laptop.sock --statedir=$WORK/laptop --tun=tailscale0 --port=0 --no-logs-no-support >$WORK/laptop.log 2>&1 &
echo $! >$WORK/laptop.pid
for _ in $(seq 50); do [ -S $WORK/laptop.sock ] && break; sleep 0.1; done
$TS up --login-server="$CONTROL" --auth-key="file:$WORK/authkey" --hostname=laptop --accept-dns=false --netfilter-mode=off --timeout=30s
LAPTOP_IP=$($TS ip -4)
echo "laptop: laptop $LAPTOP_IP"

step "a test image (busybox, made locally with docker import)"
if ! docker image inspect $IMAGE >/dev/null 2>&1; then
  rm -rf $WORK/img && mkdir -p $WORK/img/bin $WORK/img/www $WORK/img/etc
  cp "$(command -v busybox)" $WORK/img/bin/busybox
  for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox $WORK/img/bin/$a; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > $WORK/img/etc/passwd
  printf 'root:x:0:\nnogroup:x:65534:\n' > $WORK/img/etc/group
  tar -C $WORK/img -c . | docker import -c 'ENV PATH=/bin' - $IMAGE >/dev/null
fi

# The local control server speaks plain http on a lab address, which the
# plugin accepts only with ts.insecure-control=true.
step "docker network create -d $PLUGIN --opt ts.authkey-file=demo --opt ts.controlurl=$CONTROL --opt ts.insecure-control=true $NET"
docker network create -d "$PLUGIN" --opt ts.authkey-file=demo --opt ts.controlurl="$CONTROL" --opt ts.insecure-control=true $NET >/dev/null

step "two containers, each its own tailnet node"
for c in alpha beta; do
  docker run -d --name tslink-demo-$c --network $NET --label ts.hostname=demo-$c $IMAGE \
    sh -c "echo 'hello from $c' >/www/index.html; exec httpd -f -p 8080 -h /www" >/dev/null
done
step "a served app: httpd on gamma's localhost only, served on tailnet port 80 (ts.serve.80=http:8080)"
docker run -d --name tslink-demo-gamma --network $NET --label ts.hostname=demo-gamma --label ts.serve.80=http:8080 $IMAGE \
  sh -c "echo 'hello from gamma, served' >/www/index.html; exec httpd -f -p 127.0.0.1:8080 -h /www" >/dev/null
ip_of() { docker exec "tslink-demo-$1" ip -4 -o addr show dev tailscale0 | awk '{print $4}' | cut -d/ -f1; }
ALPHA=$(ip_of alpha); BETA=$(ip_of beta); GAMMA=$(ip_of gamma)
printf '  %-12s %s\n' demo-alpha "$ALPHA" demo-beta "$BETA" demo-gamma "$GAMMA"
get() { printf 'GET / HTTP/1.0\r\n\r\n' | "$@" 2>/dev/null | tail -1; }

step "checks"
ok=0; bad=0
check() { # description, expected substring, command...
  local what=$1 want=$2; shift 2
  local out=""; for _ in 1 2 3 4 5; do out=$("$@" || true); [[ "$out" == *"$want"* ]] && break; sleep 1; done
  if [[ "$out" == *"$want"* ]]; then printf '  \033[32mok\033[0m   %s\n' "$what"; ok=$((ok+1))
  else printf '  \033[31mFAIL\033[0m %s (got %q)\n' "$what" "$out"; bad=$((bad+1)); fi
}
check "alpha -> beta over the tailnet ($BETA)" "hello from beta" get docker exec -i tslink-demo-alpha nc -w 5 "$BETA" 8080
check "beta -> alpha over the tailnet ($ALPHA)" "hello from alpha" get docker exec -i tslink-demo-beta nc -w 5 "$ALPHA" 8080
check "laptop -> alpha over the tailnet" "hello from alpha" get ip netns exec tslink-demo-laptop busybox nc -w 5 "$ALPHA" 8080
check "laptop -> beta over the tailnet" "hello from beta" get ip netns exec tslink-demo-laptop busybox nc -w 5 "$BETA" 8080
check "laptop's tailscale status lists demo-alpha and demo-beta" "demo-beta" sh -c "$TS status | grep demo-alpha && $TS status | grep demo-beta"
check "alpha resolves the laptop by MagicDNS name (no --dns flag)" "$LAPTOP_IP" docker exec tslink-demo-alpha nslookup laptop
check "alpha resolves demo-beta.tailnet.test" "$BETA" docker exec tslink-demo-alpha nslookup demo-beta.tailnet.test
check "laptop -> gamma's localhost-only app through Serve" "hello from gamma, served" sh -c "(printf 'GET / HTTP/1.0\r\nHost: demo-gamma\r\n\r\n'; sleep 2) | ip netns exec tslink-demo-laptop busybox nc -w 5 $GAMMA 80 | tail -1"
check "alpha -> the internet through Docker's NAT" "hello from the internet" get docker exec -i tslink-demo-alpha nc -w 5 $INET.2 80
check "alpha pings the laptop ($LAPTOP_IP)" "1 packets received" docker exec tslink-demo-alpha ping -c 1 -W 3 "$LAPTOP_IP"

if [ "$bad" = 0 ]; then
  printf '\n\033[32mSUCCESS: %d checks passed. demo-alpha (%s), demo-beta (%s) and demo-gamma (%s) are tailnet nodes, reach each other, the laptop and the internet, resolve MagicDNS names, and gamma serves its localhost app on the tailnet.\033[0m\n' "$ok" "$ALPHA" "$BETA" "$GAMMA"
else
  printf '\n\033[31mDEMO FAILED: %d of %d checks failed. Logs: %s/by-hostname/*/debug.log\033[0m\n' "$bad" $((ok+bad)) "$STATE"
  exit 1
fi
if [ "${KEEP:-0}" = 1 ]; then
  cat <<MSG

KEEP=1: everything keeps running. Try:
  # a shell in a container (then: ip addr show tailscale0; nslookup laptop):
  docker exec -it tslink-demo-alpha sh
  # the laptop's view of the tailnet (the local control server deletes an
  # ephemeral node when its container goes; it keeps nothing across its own
  # restart: a restarted control server is a new tailnet with new addresses):
  $TS status
  # the laptop and the demo image have busybox: busybox ping, nslookup, nc
  # (the image's busybox wget does not work; use nc as below):
  ip netns exec tslink-demo-laptop busybox ping -c 1 $ALPHA
  ip netns exec tslink-demo-laptop busybox nslookup demo-gamma 100.100.100.100
  (printf 'GET / HTTP/1.0\r\nHost: demo-gamma\r\n\r\n'; sleep 2) | ip netns exec tslink-demo-laptop busybox nc $GAMMA 80
  docker exec tslink-demo-alpha sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc $BETA 8080"
  # control's view of the tailnet, then the plugin's:
  curl -s $CONTROL/tslink/nodes
  $PWD/bin/tslink status
  # a node's log, and the plugin's own (if the demo started dockerd):
  grep -a tslink: $STATE/by-hostname/demo-alpha/debug.log
  grep plugin= $WORK/dockerd.log
  # SSH into a container (README "SSH"); the laptop logged in first, so its login is user-1@…:
  docker run -d --name shell --network $NET --label ts.ssh=user-1@fake-control.example.net $IMAGE sleep 1d
  ip netns exec tslink-demo-laptop ssh root@<shell's 100.x address>   # needs an OpenSSH client on the host
Clean up with: make demo-clean
MSG
fi
