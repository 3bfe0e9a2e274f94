#!/usr/bin/env bash
# Starts a cluster of three `exchange` nodes on this machine (loopback),
# each with its own data directory under ./cluster-data, and stops it.
#
#   deploy/cluster/local.sh          # build, start nodes 1-3, wait for a leader
#   deploy/cluster/local.sh stop     # SIGTERM every node
#
# Node N serves REST on 127.0.0.1:808N, WebSocket on 127.0.0.1:809N and
# Raft on 127.0.0.1:710N; logs go to cluster-data/nodeN.log. Order entry
# goes to the leader (`GET /health` shows `cluster.role` and
# `cluster.leader_api`); the others answer 421 with `X-Leader`. The admin
# token is `change-me-0123456789` unless EXCHANGE_ADMIN_TOKEN is set.
set -euo pipefail

cd "$(dirname "$0")/../.."
dir=${CLUSTER_DIR:-cluster-data}
token=${EXCHANGE_ADMIN_TOKEN:-change-me-0123456789}

if [[ "${1:-}" == stop ]]; then
    for n in 1 2 3; do
        if [[ -f "$dir/node$n.pid" ]]; then
            kill -TERM "$(cat "$dir/node$n.pid")" 2>/dev/null || true
            rm -f "$dir/node$n.pid"
        fi
    done
    echo "stopped"
    exit 0
fi

cargo build --release -p gateway --bin exchange
mkdir -p "$dir"
members='members = [
  { id = 1, raft = "127.0.0.1:7101", api = "127.0.0.1:8081" },
  { id = 2, raft = "127.0.0.1:7102", api = "127.0.0.1:8082" },
  { id = 3, raft = "127.0.0.1:7103", api = "127.0.0.1:8083" },
]'
for n in 1 2 3; do
    bootstrap=false
    [[ $n == 1 ]] && bootstrap=true
    cat > "$dir/node$n.toml" <<TOML
listen = "127.0.0.1:808$n"
ws_listen = "127.0.0.1:809$n"
data_dir = "$dir/node$n"
durability = "replicated"
admin_token = "$token"

[cluster]
node_id = $n
raft_listen = "127.0.0.1:710$n"
# Only node 1 forms the cluster, and only on its first start.
bootstrap = $bootstrap
$members
TOML
    target/release/exchange --config "$dir/node$n.toml" >"$dir/node$n.out" 2>"$dir/node$n.log" &
    echo $! > "$dir/node$n.pid"
done

for _ in $(seq 1 100); do
    for n in 1 2 3; do
        if curl -fsS "http://127.0.0.1:808$n/health" 2>/dev/null | grep -q '"role":"leader"'; then
            echo "cluster up: node $n leads (REST http://127.0.0.1:808$n); nodes 1-3 on ports 8081-8083"
            exit 0
        fi
    done
    sleep 0.1
done
echo "no leader after 10 s: see $dir/node*.log" >&2
exit 1
