"""The Kubernetes manifests of the Triton fleet (deploy/k8s): schema-valid and consistent with each other.

Validated offline against the Kubernetes OpenAPI schemas shipped in the `kubernetes-validate`
package (strict: unknown fields are errors). No cluster is available here: this checks the
manifests, not a running fleet.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml

from exdd.serving.products import ProductModels

kv = pytest.importorskip("kubernetes_validate")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout (tests/unit/..)
K8S = os.path.join(ROOT, "deploy", "k8s")
VERSIONS = ("1.29", "1.33")  # the oldest and a recent minor still common in factories' clusters


def manifests():
    """(file name, document) of every resource manifest (kustomization.yaml is kustomize's, not a resource)."""
    out = []
    for f in sorted(os.listdir(K8S)):
        if f.endswith(".yaml") and f != "kustomization.yaml":
            with open(os.path.join(K8S, f)) as fh:
                out += [(f, d) for d in yaml.safe_load_all(fh) if d]
    return out


def by_kind(kind):
    docs = [d for _, d in manifests() if d["kind"] == kind]
    assert len(docs) == 1, f"expected one {kind}"
    return docs[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_schema_valid(version):
    docs = manifests()
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"}
    for f, d in docs:
        kv.validate(d, version, strict=True)  # raises ValidationError naming the field


def test_validator_rejects_a_broken_manifest():
    dep = by_kind("Deployment")
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[-1], strict=True)
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt field
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load(open(os.path.join(K8S, "kustomization.yaml")))
    assert sorted(k["resources"]) == sorted({f for f, _ in manifests()})


def test_probes_ports_volume_and_selectors_agree():
    dep, svc, hpa, pvc = (
        by_kind("Deployment"),
        by_kind("Service"),
        by_kind("HorizontalPodAutoscaler"),
        by_kind("PersistentVolumeClaim"),
    )
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    # Triton's health endpoints, on its HTTP port
    # readiness: the shared extractor (one product that cannot load must not take the pod out of the Service)
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/models/exdd_features/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    # the model repository comes from the PVC, mounted where --model-repository points
    repo = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--model-repository=")]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    [name] = [n for n, m in mounts.items() if m["mountPath"] == repo[0]]
    assert mounts[name]["readOnly"] is True
    assert vols[name]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "--strict-readiness=false" in c["args"] and "--exit-on-error=false" in c["args"]
    assert "--metrics-port=8002" in c["args"]
    # model control closed: the model-repository API needs the key of a Secret, on HTTP and gRPC
    assert "--http-restricted-api=model-repository,shared-memory:exdd-admin-key=$(EXDD_ADMIN_KEY)" in c["args"]
    assert "--grpc-restricted-protocol=model-repository,shared-memory:exdd-admin-key=$(EXDD_ADMIN_KEY)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["EXDD_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "exdd-admin-key", "key": "key"}
    # the Service selects the pods and exposes the named ports
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == set(ports)
    # the autoscaler scales this Deployment on the adapter's Triton queue metric
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert hpa["metadata"]["namespace"] == dep["metadata"]["namespace"] == svc["metadata"]["namespace"]
    [metric] = hpa["spec"]["metrics"]
    rules = yaml.safe_load(by_kind("ConfigMap")["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"] for r in rules}
    assert metric["pods"]["metric"]["name"] in served
    q = rules[0]["metricsQuery"]
    assert "nv_inference_queue_duration_us" in q and "nv_inference_request_success" in q
    # the queue metric is every product ensemble's (each request once), in numerator and denominator alike
    parts = q.split("/")
    assert len(parts) == 2
    ensembles = [ProductModels(p).ensemble for p in (None, "line3", "a-b", "press_2")]
    steps = ["exdd_features", "exdd_preprocess"] + [ProductModels(p).scorer for p in (None, "line3", "a-b", "press_2")]
    for part in parts:
        assert selected(part, ensembles + steps) == ensembles, part


def selected(promql: str, models):
    """The model names the `model` label matchers of a PromQL selector keep (RE2 matchers are anchored)."""
    matchers = re.findall(r'model(=~|!~|=|!=)"([^"]*)"', promql)
    assert matchers, promql
    keep = []
    for m in models:
        ok = True
        for op, value in matchers:
            hit = re.fullmatch(value, m) is not None if op in ("=~", "!~") else m == value
            ok &= hit if op in ("=~", "=") else not hit
        if ok:
            keep.append(m)
    return keep
