#!/usr/bin/env bash
# Cluster test (needs Docker and kind; not run by `cargo xtask test`): builds the image, creates
# a kind cluster, deploys the agent, and checks that a default-deny policy blocks a connection
# that worked before, and that the flow log reports it; then that a client whose egress only
# allows the server pods on their port reaches them through their Service (judged on the
# backend, with kube-proxy running), and that its node's flows name the Service. KEEP=1 keeps
# the cluster on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${CLUSTER:-enforcer-test}
NS="np-$RANDOM"

cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "--- failure: agent state" >&2
    kubectl -n enforcer-system logs -l app.kubernetes.io/name=enforcer --tail=100 >&2 || true
    kubectl -n "$NS" get pods -o wide >&2 || true
  fi
  if [ $rc -ne 0 ] && [ "${KEEP:-}" = 1 ]; then return; fi
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  [ "${KEEP_CLUSTER:-}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cargo build --release -p enforcer-agent
docker build -f deploy/Containerfile -t enforcer:dev .
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config deploy/kind/cluster.yaml
kind load docker-image enforcer:dev --name "$CLUSTER"
kubectl apply -f deploy/rbac.yaml -f deploy/daemonset.yaml
kubectl -n enforcer-system rollout status ds/enforcer --timeout=120s

kubectl create namespace "$NS"
kubectl -n "$NS" run server --image=registry.k8s.io/e2e-test-images/agnhost:2.53 --labels=app=server -- netexec --http-port=80
kubectl -n "$NS" run client --image=registry.k8s.io/e2e-test-images/agnhost:2.53 --labels=app=client -- pause
kubectl -n "$NS" wait --for=condition=Ready pod/server pod/client --timeout=120s
IP=$(kubectl -n "$NS" get pod server -o jsonpath='{.status.podIP}')

probe() { kubectl -n "$NS" exec client -- /agnhost connect "$IP:80" --timeout=3s >/dev/null 2>&1; }
probe || { echo "FAIL: client cannot reach server before any policy" >&2; exit 1; }

kubectl -n "$NS" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all-ingress}
spec: {podSelector: {}, policyTypes: [Ingress]}
YAML
for i in $(seq 1 20); do probe || break; sleep 1; done
if probe; then echo "FAIL: connection still allowed under default deny" >&2; exit 1; fi

# The agent on the server's node reports the drop, attributed to the isolating policy.
NODE=$(kubectl -n "$NS" get pod server -o jsonpath='{.spec.nodeName}')
AGENT=$(kubectl -n enforcer-system get pod -l app.kubernetes.io/name=enforcer \
  --field-selector "spec.nodeName=$NODE" -o jsonpath='{.items[0].metadata.name}')
FLOWS=$(kubectl -n enforcer-system exec "$AGENT" -- /usr/local/bin/enforcer flows \
  --verdict dropped --to-pod "$NS/server" --last 5 --output jsonl)
echo "$FLOWS" | grep -q '"reason":"policy_denied"' \
  || { echo "FAIL: no policy drop into $NS/server in enforcer flows: $FLOWS" >&2; exit 1; }
echo "$FLOWS" | grep -q "\"$NS/deny-all-ingress\"" \
  || { echo "FAIL: the drop does not name $NS/deny-all-ingress: $FLOWS" >&2; exit 1; }

kubectl -n "$NS" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]
YAML
for i in $(seq 1 20); do probe && break; sleep 1; done
probe || { echo "FAIL: allow rule not applied" >&2; exit 1; }

# Services: the client's egress allows only the server pods on port 80; the Service's port is
# 8080 (targetPort 80) at a ClusterIP no pod selector matches.
kubectl -n "$NS" expose pod server --name=web --port=8080 --target-port=80
VIP=$(kubectl -n "$NS" get service web -o jsonpath='{.spec.clusterIP}')
kubectl -n "$NS" apply -f - <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-server}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: server}}}], ports: [{port: 80}]}]
YAML
svc_probe() { kubectl -n "$NS" exec client -- /agnhost connect "$VIP:8080" --timeout=3s >/dev/null 2>&1; }
for i in $(seq 1 20); do svc_probe && break; sleep 1; done
svc_probe || { echo "FAIL: the Service is not reachable though its backend is allowed" >&2; exit 1; }
if kubectl -n "$NS" exec client -- /agnhost connect "$IP:8080" --timeout=3s >/dev/null 2>&1; then
  echo "FAIL: port 8080 of the pod itself is allowed" >&2; exit 1
fi
CNODE=$(kubectl -n "$NS" get pod client -o jsonpath='{.spec.nodeName}')
CAGENT=$(kubectl -n enforcer-system get pod -l app.kubernetes.io/name=enforcer \
  --field-selector "spec.nodeName=$CNODE" -o jsonpath='{.items[0].metadata.name}')
SFLOWS=$(kubectl -n enforcer-system exec "$CAGENT" -- /usr/local/bin/enforcer flows \
  --from-pod "$NS/client" --last 50 --output jsonl)
echo "$SFLOWS" | grep -q "\"service\":{\"name\":\"$NS/web\"" \
  || { echo "FAIL: no flow of $NS/client names the Service $NS/web: $SFLOWS" >&2; exit 1; }
echo "PASS: kind NetworkPolicy and Service test"
