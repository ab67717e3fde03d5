#!/usr/bin/env bash
# Cluster test of the DaemonSet on kind (needs Docker, kind and kubectl, so `cargo xtask test`
# does not run it; it validates the manifests below against the API's schemas and lints this
# script with shellcheck). Clients and servers sit on two different worker nodes, so every
# verdict is the work of two agents (the client's egress on one node, the server's ingress on
# the other). It checks:
#   1. the agent is ready on every node, unprivileged, with exactly BPF, NET_ADMIN and PERFMON
#      as its effective capabilities, no_new_privs and a seccomp filter;
#   2. NetworkPolicies: default deny ingress, an allow by podSelector and port, a
#      namespaceSelector allow, an egress deny; allowed and denied connections both ways;
#   3. drops in `enforcer flows` and in the flow log file, attributed to the isolating policy;
#   4. a ClusterIP Service whose backend is on the other node: a policy allowing the backend
#      by label (at its target port) allows the Service, one that does not, denies it;
#   5. cluster policies: with the ClusterNetworkPolicy CRD installed (network-policy-api
#      v0.2.0; the script does not install it), an Admin-tier Deny overrides the
#      NetworkPolicy that allows the client, and its drop names it; without the CRD, the step
#      is skipped and the agents (ready all the same) must have logged that it is missing;
#   6. the metrics Service answers;
#   7. an agent restart: with a long-running allowed connection and a loop of denied probes,
#      the server node's agent pod is deleted: the connection survives, every probe stays
#      denied throughout, the new agent adopts the pinned datapath and becomes ready.
#
# Uses the kind cluster $CLUSTER (default enforcer-test) and makes what is missing: the image
# enforcer:dev (docker build -f deploy/Containerfile; SKIP_BUILD=1 uses the one present), the
# cluster (from deploy/kind/cluster.yaml; deleted at the end unless KEEP_CLUSTER=1; a cluster
# that was there is kept), and loads the image. KEEP=1 keeps the test namespaces on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-enforcer-test}
AGNHOST=registry.k8s.io/e2e-test-images/agnhost:2.53
NS="np-$RANDOM"
FRIEND="$NS-friend"
STRANGER="$NS-stranger"
# Cluster-scoped: deleting the namespaces does not remove it (cleanup does).
CNP="$NS-deny-client-http"
CREATED_CLUSTER=0
WORK=$(mktemp -d)

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
step() { echo "=== $*"; }

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "--- failure: the agents" >&2
    kubectl -n enforcer-system get pods -o wide >&2 || true
    for pod in $(kubectl -n enforcer-system get pods -l app.kubernetes.io/name=enforcer -o name 2>/dev/null); do
      echo "--- logs of $pod" >&2
      kubectl -n enforcer-system logs "$pod" --tail=150 >&2 || true
    done
    kubectl -n enforcer-system describe daemonset enforcer >&2 || true
    echo "--- failure: the test's pods, policies and Services" >&2
    for ns in "$NS" "$FRIEND" "$STRANGER"; do
      kubectl -n "$ns" get pods,networkpolicies,services -o wide >&2 || true
    done
    kubectl get events -A --field-selector type=Warning >&2 || true
  fi
  if [ "$rc" -ne 0 ] && [ "${KEEP:-}" = 1 ]; then
    echo "KEEP=1: namespaces $NS $FRIEND $STRANGER kept; KUBECONFIG=$WORK/kubeconfig" >&2
    return
  fi
  kubectl delete clusternetworkpolicy "$CNP" --ignore-not-found >/dev/null 2>&1 || true
  kubectl delete namespace "$NS" "$FRIEND" "$STRANGER" --wait=false >/dev/null 2>&1 || true
  if [ "$CREATED_CLUSTER" = 1 ] && [ "${KEEP_CLUSTER:-}" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- helpers

# The Running, not terminating, agent pod on node $1 (empty if none).
agent_on() {
  kubectl -n enforcer-system get pods -l app.kubernetes.io/name=enforcer \
    --field-selector "spec.nodeName=$1,status.phase=Running" \
    -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}' |
    head -n 1
}

# `enforcer flows ARGS...` in the agent on node $1.
flows() {
  local node=$1
  shift
  kubectl -n enforcer-system exec "$(agent_on "$node")" -- /usr/local/bin/enforcer flows "$@"
}

ip_of() { kubectl -n "$1" get pod "$2" -o jsonpath='{.status.podIP}'; }

# verdict NS POD HOST:PORT: "allowed"; "denied" when the connection timed out (dropped); or
# what else happened (REFUSED: the SYN reached the pod, so nothing dropped it).
verdict() {
  local out
  if out=$(kubectl -n "$1" exec "$2" -c http -- /agnhost connect "$3" --timeout=3s 2>&1); then
    echo allowed
  elif [[ $out == TIMEOUT* ]]; then
    echo denied
  else
    echo "failed (${out//$'\n'/ })"
  fi
}

# expect allowed|denied NS POD HOST:PORT WHY: waits (30 tries) for the policies to be applied,
# then checks once more that the verdict holds.
expect() {
  local want=$1 ns=$2 pod=$3 to=$4 why=$5 got=""
  for _ in $(seq 1 30); do
    got=$(verdict "$ns" "$pod" "$to")
    [ "$got" = "$want" ] && break
    sleep 1
  done
  [ "$got" = "$want" ] || fail "$why: $ns/$pod -> $to is $got, expected $want"
  got=$(verdict "$ns" "$pod" "$to")
  [ "$got" = "$want" ] || fail "$why: $ns/$pod -> $to was $want, then $got"
  echo "ok   $want  $ns/$pod -> $to  ($why)"
}

# test_pod NS NAME APP NODE: agnhost serving HTTP on 80 and 8080 and a TCP sink on 9000 (what
# it receives is in `kubectl logs NAME -c sink`), labelled app=APP, on NODE.
test_pod() {
  kubectl -n "$1" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $2
  labels: {app: $3}
spec:
  nodeName: $4
  terminationGracePeriodSeconds: 1
  containers:
  - {name: http, image: $AGNHOST, args: [netexec, --http-port=80, --udp-port=8081]}
  - {name: alt, image: $AGNHOST, args: [netexec, --http-port=8080, --udp-port=8082]}
  - {name: sink, image: $AGNHOST, command: [nc, -lk, "9000"]}
YAML
}

# The last line number the server's sink received from the streamer.
sink_ticks() { kubectl -n "$NS" logs server -c sink | awk '/^tick /{n=$2} END{print n+0}'; }

# --- cluster, image, agent

if [ "${SKIP_BUILD:-}" != 1 ]; then
  docker build -f deploy/Containerfile -t enforcer:dev .
fi
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config deploy/kind/cluster.yaml --wait 180s
  CREATED_CLUSTER=1
fi
kind get kubeconfig --name "$CLUSTER" >"$WORK/kubeconfig"
export KUBECONFIG="$WORK/kubeconfig"
kind load docker-image enforcer:dev --name "$CLUSTER"

step "1. the agent on every node"
EXISTED=0
kubectl -n enforcer-system get daemonset enforcer >/dev/null 2>&1 && EXISTED=1
kubectl apply -k deploy/
# A cluster kept from an earlier run: start the agents again on the image just loaded.
[ "$EXISTED" = 1 ] && kubectl -n enforcer-system rollout restart daemonset/enforcer
kubectl -n enforcer-system rollout status daemonset/enforcer --timeout=180s ||
  fail "the agent did not become ready on every node"
NODES=$(kubectl get nodes --no-headers | wc -l)
READY=$(kubectl -n enforcer-system get daemonset enforcer -o jsonpath='{.status.numberReady}')
[ "$READY" = "$NODES" ] || fail "$READY agents ready on $NODES nodes"
[ "$(kubectl get namespace enforcer-system -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')" = privileged ] ||
  fail "enforcer-system has no pod-security enforce=privileged label"
read -r W1 W2 _ < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' \
  -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}')
[ -n "${W2:-}" ] || fail "the test needs two worker nodes (deploy/kind/cluster.yaml)"
echo "servers on $W1, clients on $W2; $READY agents ready"

# The agent's process on a node (kind's nodes are containers named after them): exactly the
# three capabilities (CAP_NET_ADMIN = bit 12, CAP_PERFMON = 38, CAP_BPF = 39), no_new_privs,
# a seccomp filter.
CID=$(docker exec "$W1" crictl ps --name '^agent$' --label io.kubernetes.pod.namespace=enforcer-system -q | head -n 1)
[ -n "$CID" ] || fail "no agent container on $W1 (crictl ps)"
APID=$(docker exec "$W1" crictl inspect --output go-template --template '{{.info.pid}}' "$CID")
docker exec "$W1" cat "/proc/$APID/status" >"$WORK/agent-status"
for want in $'CapEff:\t000000c000001000' $'CapBnd:\t000000c000001000' $'NoNewPrivs:\t1' $'Seccomp:\t2'; do
  grep -qx "$want" "$WORK/agent-status" ||
    fail "the agent on $W1 runs with $(grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' "$WORK/agent-status" | tr '\n\t' '  '), expected ${want//$'\t'/ }"
done
echo "ok   agent on $W1: CapEff = BPF, NET_ADMIN, PERFMON; no_new_privs; seccomp filter"

# --- test pods: the server on W1, every client on W2

kubectl create namespace "$NS" >/dev/null
kubectl create namespace "$FRIEND" >/dev/null
kubectl create namespace "$STRANGER" >/dev/null
kubectl label namespace "$FRIEND" enforcer-test/peer=friend >/dev/null
test_pod "$NS" server server "$W1"
test_pod "$NS" client client "$W2"
test_pod "$NS" other other "$W2"
test_pod "$FRIEND" peer peer "$W2"
test_pod "$STRANGER" peer peer "$W2"
for ns in "$NS" "$FRIEND" "$STRANGER"; do
  kubectl -n "$ns" wait --for=condition=Ready pods --all --timeout=180s >/dev/null ||
    fail "the test pods in $ns did not become ready"
done
SIP=$(ip_of "$NS" server)
CIP=$(ip_of "$NS" client)

step "2. NetworkPolicies across nodes"
expect allowed "$NS" client "$SIP:80" "no policy yet"
expect allowed "$NS" server "$CIP:80" "no policy yet, the other way"

kubectl -n "$NS" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress}
spec: {podSelector: {}, policyTypes: [Ingress]}
YAML
expect denied "$NS" client "$SIP:80" "default deny ingress"
expect denied "$NS" server "$CIP:80" "default deny ingress, the other way"
expect denied "$FRIEND" peer "$SIP:80" "default deny ingress, from another namespace"

step "3. the drop in enforcer flows and in the flow log, on the server's node"
DROPS=$(flows "$W1" --verdict dropped --to-pod "$NS/server" --last 20 --output jsonl)
grep -q '"reason":"policy_denied"' <<<"$DROPS" ||
  fail "no policy drop into $NS/server in enforcer flows on $W1: $DROPS"
grep -q "\"$NS/default-deny-ingress\"" <<<"$DROPS" ||
  fail "the drop does not name $NS/default-deny-ingress: $DROPS"
LOGGED=$(flows "$W1" --file /var/log/enforcer/flows.jsonl --verdict dropped --to-pod "$NS/server" --output jsonl)
grep -q "\"$NS/default-deny-ingress\"" <<<"$LOGGED" ||
  fail "no drop into $NS/server naming $NS/default-deny-ingress in $W1's flow log file: $LOGGED"
echo "ok   drops attributed to $NS/default-deny-ingress (socket and flow log)"

# An allow by podSelector and port: the client, on 80 only; the other way, the server on 80.
kubectl -n "$NS" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-http}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-server-http}
spec:
  podSelector: {matchLabels: {app: client}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: 80}]
YAML
expect allowed "$NS" client "$SIP:80" "podSelector + port allow"
expect denied "$NS" client "$SIP:8080" "a port the allow does not list"
expect denied "$NS" other "$SIP:80" "a pod the allow does not select"
expect allowed "$NS" server "$CIP:80" "podSelector + port allow, the other way"
expect denied "$NS" server "$CIP:8080" "a port the allow does not list, the other way"

# A namespaceSelector allow: every pod of the namespaces labelled peer=friend, any port.
kubectl -n "$NS" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-friends}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {enforcer-test/peer: friend}}}]
YAML
expect allowed "$FRIEND" peer "$SIP:80" "namespaceSelector allow"
expect allowed "$FRIEND" peer "$SIP:8080" "namespaceSelector allow, every port"
expect denied "$STRANGER" peer "$SIP:80" "a namespace the selector does not match"

# An egress deny on the client: judged on the client's node, whatever the server allows;
# replies to connections the client accepts still leave it.
kubectl -n "$NS" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress-deny}
spec: {podSelector: {matchLabels: {app: client}}, policyTypes: [Egress]}
YAML
expect denied "$NS" client "$SIP:80" "egress deny (the server's ingress allows it)"
expect allowed "$NS" server "$CIP:80" "egress deny: replies of an allowed connection"
EGRESS=$(flows "$W2" --verdict dropped --from-pod "$NS/client" --direction egress --last 20 --output jsonl)
grep -q "\"$NS/client-egress-deny\"" <<<"$EGRESS" ||
  fail "no egress drop of $NS/client naming $NS/client-egress-deny in enforcer flows on $W2: $EGRESS"
echo "ok   the egress drop is reported on the client's node"
kubectl -n "$NS" delete networkpolicy client-egress-deny >/dev/null
expect allowed "$NS" client "$SIP:80" "egress deny removed"

step "4. a Service whose backend is on the other node"
# The Service's port is 8080 (target port 80): policies match the backend and its target port.
kubectl -n "$NS" apply -f - <<YAML
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: server}
  ports: [{port: 8080, targetPort: 80, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-server}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: 80}]
YAML
VIP=$(kubectl -n "$NS" get service web -o jsonpath='{.spec.clusterIP}')
expect allowed "$NS" client "$VIP:8080" "the Service: egress and ingress allow its backend"
expect denied "$NS" client "$SIP:8080" "the pod's own 8080 (egress allows only 80)"
SFLOWS=$(flows "$W2" --from-pod "$NS/client" --last 50 --output jsonl)
grep -q "\"service\":{\"name\":\"$NS/web\"" <<<"$SFLOWS" ||
  fail "no flow of $NS/client names the Service $NS/web on $W2: $SFLOWS"
echo "ok   the client's node names the Service in its flows"
kubectl -n "$NS" delete networkpolicy allow-client-http >/dev/null
expect denied "$NS" client "$VIP:8080" "the Service: the backend's ingress no longer allows the client"
kubectl -n "$NS" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-http}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}, {port: 9000}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-server}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: 8080}]
YAML
expect denied "$NS" client "$VIP:8080" "the Service: egress allows the Service port, not the target port"
kubectl -n "$NS" delete networkpolicy client-to-server >/dev/null
expect allowed "$NS" client "$VIP:8080" "the Service: only the backend's ingress left, which allows it"

step "5. cluster policies (network-policy-api)"
if kubectl get crd clusternetworkpolicies.policy.networking.k8s.io >/dev/null 2>&1; then
  # Only allow-client-http decides the client's port 80 now (allowed): an Admin-tier Deny of
  # it from the client overrides that allow; the friends' namespace stays allowed. (Not a
  # <<YAML heredoc: the offline validator has no schema for a custom resource.)
  kubectl apply -f - <<CNP
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: $CNP}
spec:
  tier: Admin
  priority: 10
  subject:
    pods:
      namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: $NS}}
      podSelector: {matchLabels: {app: server}}
  ingress:
  - name: no-http-from-client
    action: Deny
    from:
    - pods:
        namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: $NS}}
        podSelector: {matchLabels: {app: client}}
    protocols:
    - tcp: {destinationPort: {number: 80}}
CNP
  expect denied "$NS" client "$SIP:80" "an Admin Deny overrides the NetworkPolicy allow"
  expect allowed "$FRIEND" peer "$SIP:80" "a peer the Admin Deny does not match"
  CDROPS=$(flows "$W1" --verdict dropped --to-pod "$NS/server" --last 20 --output jsonl)
  grep -q "\"ClusterNetworkPolicy/$CNP\"" <<<"$CDROPS" ||
    fail "the drop into $NS/server does not name ClusterNetworkPolicy/$CNP: $CDROPS"
  echo "ok   the drop names ClusterNetworkPolicy/$CNP"
  kubectl delete clusternetworkpolicy "$CNP" >/dev/null
  expect allowed "$NS" client "$SIP:80" "the ClusterNetworkPolicy deleted"
else
  for node in "$W1" "$W2"; do
    ALOG=$(kubectl -n enforcer-system logs "$(agent_on "$node")" | sed 's/\x1b\[[0-9;]*m//g')
    grep -q 'ClusterNetworkPolicy CRD not installed; watching for it' <<<"$ALOG" ||
      fail "the agent on $node did not log that the ClusterNetworkPolicy CRD is missing"
  done
  echo "skip the ClusterNetworkPolicy CRD is not installed (deploy/README.md says how); the agents run without it"
fi

step "6. the metrics Service"
METRICS=$(kubectl get --raw "/api/v1/namespaces/enforcer-system/services/enforcer-metrics:metrics/proxy/metrics") ||
  fail "the metrics Service enforcer-system/enforcer-metrics does not answer"
grep -q '^enforcer_policies' <<<"$METRICS" || fail "no enforcer_policies in the agents' metrics"
echo "ok   metrics through the enforcer-metrics Service"

step "7. restart of the agent on $W1 under traffic"
# Only the server's ingress decides now (allow-client-http: ports 80 and 9000), on $W1.
kubectl -n "$NS" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: streamer
  labels: {app: client}
spec:
  nodeName: $W2
  restartPolicy: Never
  containers:
  - name: stream
    image: $AGNHOST
    # One TCP connection for the whole test, a numbered line every 0.5 s into the sink.
    command: [/bin/sh, -c, 'i=0; while :; do i=\$((i+1)); echo "tick \$i"; sleep 0.5; done | nc $SIP 9000']
---
apiVersion: v1
kind: Pod
metadata:
  name: prober
  labels: {app: client}
spec:
  nodeName: $W2
  restartPolicy: Never
  containers:
  - name: probe
    image: $AGNHOST
    # A new connection to the denied port 8080 every 0.5 s; a line for each, saying how it ended.
    command: [/bin/sh, -c, 'while :; do if r=\$(/agnhost connect $SIP:8080 --timeout=1s 2>&1); then echo LEAK; else echo "denied \$r"; fi; sleep 0.5; done']
YAML
kubectl -n "$NS" wait --for=condition=Ready pod/streamer pod/prober --timeout=120s >/dev/null
for _ in $(seq 1 60); do
  [ "$(sink_ticks)" -ge 3 ] && [ "$(kubectl -n "$NS" logs prober | grep -c '^denied TIMEOUT$')" -ge 3 ] && break
  sleep 1
done
[ "$(sink_ticks)" -ge 3 ] || fail "the streamer's connection to $NS/server:9000 carries nothing"
PROBES_BEFORE=$(kubectl -n "$NS" logs prober | wc -l)
OLD=$(agent_on "$W1")
echo "deleting $OLD (sink at tick $(sink_ticks), $PROBES_BEFORE probes so far)"
kubectl -n enforcer-system delete pod "$OLD" --wait=true >/dev/null
NEW=""
for _ in $(seq 1 90); do
  NEW=$(agent_on "$W1")
  if [ -n "$NEW" ] && [ "$NEW" != "$OLD" ] &&
    [ "$(kubectl -n enforcer-system get pod "$NEW" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; then
    break
  fi
  NEW=""
  sleep 2
done
[ -n "$NEW" ] || fail "no new agent became ready on $W1 within 180 s of deleting $OLD"
kubectl -n enforcer-system logs "$NEW" | sed 's/\x1b\[[0-9;]*m//g' | grep -q 'datapath loaded.*revision=[1-9]' ||
  fail "the new agent $NEW did not adopt the pinned datapath (no 'datapath loaded ... revision>0' in its log)"
TICKS=$(sink_ticks)
sleep 3
[ "$(kubectl -n "$NS" get pod streamer -o jsonpath='{.status.phase}')" = Running ] ||
  fail "the long-running connection did not survive the restart (streamer: $(kubectl -n "$NS" get pod streamer -o jsonpath='{.status.phase}'))"
[ "$(kubectl -n "$NS" logs server -c sink | grep -c '^tick 1$')" = 1 ] ||
  fail "the sink saw more than one connection from the streamer"
[ "$(sink_ticks)" -gt "$TICKS" ] || fail "the long-running connection stalled after the restart (sink at tick $TICKS)"
kubectl -n "$NS" logs prober >"$WORK/probes"
if grep -q LEAK "$WORK/probes"; then
  fail "a probe to the denied port connected: $(grep -c LEAK "$WORK/probes") of $(wc -l <"$WORK/probes")"
fi
tail -n +"$((PROBES_BEFORE + 1))" "$WORK/probes" >"$WORK/probes-during"
[ "$(wc -l <"$WORK/probes-during")" -ge 3 ] || fail "too few probes during the restart: $(cat "$WORK/probes-during")"
if grep -vqx 'denied TIMEOUT' "$WORK/probes-during"; then
  fail "a probe during the restart was not dropped: $(grep -vx 'denied TIMEOUT' "$WORK/probes-during" | sort | uniq -c)"
fi
echo "ok   $NEW ready; the connection survived (sink at tick $(sink_ticks)); $(wc -l <"$WORK/probes-during") probes during the restart, every one dropped"
kubectl -n enforcer-system rollout status daemonset/enforcer --timeout=60s >/dev/null ||
  fail "the agents are not all ready after the restart"

echo "PASS: kind cluster test (policies across nodes, Service, flows, cluster policies, metrics, agent restart)"
