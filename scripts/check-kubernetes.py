#!/usr/bin/env python3
"""deploy/kubernetes/, checked offline: every manifest against Kubernetes' own schemas (kubernetes-validate --strict,
with the 1.31 schemas it carries), the cluster.json of the ConfigMap by `botcluster config check`, and the wiring
between them: the probes and the scrape annotation on http.listen's port, the webhook port on webhook.listen's, the
host id from the pod index, every env:NAME the config names set from the Secret.

    python3 scripts/check-kubernetes.py --validator .venv/bin/kubernetes-validate --botcluster .build/debug/botcluster
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import yaml  # kubernetes-validate brings PyYAML; run with the interpreter of its venv

parser = argparse.ArgumentParser()
parser.add_argument("--validator", required=True)
parser.add_argument("--botcluster", required=True)
parser.add_argument("--manifests", default="deploy/kubernetes/botcluster.yaml")
args = parser.parse_args()

problems = []
subprocess.run([args.validator, "--strict", "--kubernetes-version", "1.31", args.manifests], check=True)

with open(args.manifests) as f:
    docs = {d["kind"] + "/" + d["metadata"]["name"]: d for d in yaml.safe_load_all(f) if d}
sts = docs["StatefulSet/botcluster"]
pod = sts["spec"]["template"]
container = pod["spec"]["containers"][0]
config_text = docs["ConfigMap/botcluster"]["data"]["cluster.json"]
config = json.loads(config_text)

env = {e["name"]: e for e in container.get("env", [])}
host_id = env.get("BOTCLUSTER_HOST_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
if host_id != "metadata.labels['apps.kubernetes.io/pod-index']":
    problems.append(f"BOTCLUSTER_HOST_ID must come from the pod-index label, got {host_id!r}")
secret_keys = set(docs["Secret/botcluster"]["stringData"])
named = [v[4:] for v in [config["app"]["secret"], config["store"].get("password", "")] if v.startswith("env:")]
for name in named:
    ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
    if ref.get("name") != "botcluster" or ref.get("key") not in secret_keys:
        problems.append(f"cluster.json names env:{name}, which the pod does not set from the Secret")

ports = {p["name"]: p["containerPort"] for p in container["ports"]}
http_port = int(config["http"]["listen"].rsplit(":", 1)[1])
if ports.get("metrics") != http_port:
    problems.append(f"the metrics port {ports.get('metrics')} is not http.listen's {http_port}")
if pod["metadata"]["annotations"].get("prometheus.io/port") != str(http_port):
    problems.append("the scrape annotation does not name http.listen's port")
for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")]:
    get = container[probe]["httpGet"]
    if get["path"] != path or get["port"] != "metrics":
        problems.append(f"{probe} must GET {path} on the metrics port")
webhook_port = int(config.get("webhook", {}).get("listen", "0.0.0.0:8443").rsplit(":", 1)[1])
if ports.get("webhook") != webhook_port:
    problems.append(f"the webhook port {ports.get('webhook')} is not webhook.listen's {webhook_port}")
if "postgres" not in config.get("store", {}):
    problems.append("the ConfigMap's cluster.json has no store.postgres: the pods would be separate clusters")

with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "cluster.json")
    with open(path, "w") as f:
        f.write(config_text)
    check_env = dict(os.environ, **{name: "placeholder" for name in named})
    result = subprocess.run([args.botcluster, "config", "check", "--config", path], env=check_env, capture_output=True, text=True)
    if result.returncode != 0:
        problems.append("botcluster config check refuses the ConfigMap's cluster.json:\n" + result.stdout + result.stderr)

for p in problems:
    print("deploy/kubernetes: " + p, file=sys.stderr)
if problems:
    sys.exit(1)
print("deploy/kubernetes: the manifests validate against Kubernetes 1.31, and the ConfigMap's cluster.json passes config check")
