"""Offline validation of the Kubernetes and Istio manifests under deploy/.

Kubernetes kinds are validated, strictly (unknown fields fail), against the schemas that ship in
the ``kubernetes-validate`` wheel; Istio kinds against the schemas in tests/schemas/istio/ (see the
README there). The kustomize overlays are rendered by a small strategic-merge renderer below and
the rendered objects are validated and checked for the properties the deployment relies on.
Nothing here touches the network.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "istio"

# Oldest Kubernetes minor we support (grpc probes GA 1.27, preStop sleep on by default 1.30)
# and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())

OVERLAYS = {
    "base": DEPLOY / "base",
    "demo-redis": DEPLOY / "overlays" / "demo-redis",
    "external-redis": DEPLOY / "overlays" / "external-redis",
}

ISTIO_SCHEMA_FILES = {
    ("security.istio.io/v1", "AuthorizationPolicy"): "authorizationpolicy_v1.json",
    ("security.istio.io/v1", "PeerAuthentication"): "peerauthentication_v1.json",
    ("install.istio.io/v1alpha1", "IstioOperator"): "istiooperator_v1alpha1.json",
}
HELM_VALUES_SCHEMA = "istiod_values_meshconfig.json"
HELM_VALUES_FILE = DEPLOY / "istio" / "extension-provider.helm-values.yaml"

SERVE_PORT = 9191
METRICS_PORT = 9464
PROVIDER_NAME = "extauthz"
PROVIDER_SERVICE = "extauthz.extauthz.svc.cluster.local"


# --------------------------------------------------------------------------- loading


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def key_of(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


# --------------------------------------------------------------------------- kustomize


class KustomizeError(Exception):
    pass


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}
# Strategic-merge keys of the list fields our patches touch (as in the Kubernetes API).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":  # container ports merge on containerPort, Service ports on port
        return "containerPort" if any("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """The subset of strategic merge patch the overlays use.

    Maps merge recursively (a null value deletes the key); lists with a merge key merge item by
    item (an item with ``$patch: delete`` removes its match; new items are appended); other
    lists are replaced.
    """
    if isinstance(patch, dict) and isinstance(base, dict):
        out = dict(base)
        for k, v in patch.items():
            if k.startswith("$"):
                raise KustomizeError(f"unsupported directive {k} in a map")
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list) and isinstance(base, list):
        mk = _merge_key(field, base + patch)
        if mk is None or not all(isinstance(i, dict) for i in base + patch):
            return copy.deepcopy(patch)
        out_list = list(base)
        for item in patch:
            if mk not in item:
                raise KustomizeError(f"{field} item without merge key {mk}: {item}")
            idx = next((n for n, b in enumerate(out_list) if b.get(mk) == item[mk]), None)
            directive = item.get("$patch")
            body = {k: v for k, v in item.items() if k != "$patch"}
            if directive == "delete":
                if idx is None:
                    raise KustomizeError(f"$patch: delete of missing {field} {item[mk]!r}")
                del out_list[idx]
            elif directive is not None:
                raise KustomizeError(f"unsupported $patch: {directive}")
            elif idx is None:
                out_list.append(copy.deepcopy(body))
            else:
                out_list[idx] = strategic_merge(out_list[idx], body, field)
        return out_list
    return copy.deepcopy(patch)


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return obj["spec"]["template"]["spec"]
    return None


def _apply_images(objs: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    for img in images:
        unknown = set(img) - {"name", "newName", "newTag", "digest"}
        if unknown or "name" not in img:
            raise KustomizeError(f"unsupported images entry {img}")
        for obj in objs:
            spec = _pod_spec(obj)
            if spec is None:
                continue
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                ref = c["image"]
                name = ref.split("@", 1)[0]
                if ":" in name.rsplit("/", 1)[-1]:
                    name = name.rsplit(":", 1)[0]
                if name != img["name"]:
                    continue
                new = img.get("newName", name)
                if "digest" in img:
                    new += "@" + img["digest"]
                elif "newTag" in img:
                    new += ":" + str(img["newTag"])
                c["image"] = new


def render(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization directory: resources (files or directories), patches, images."""
    kfile = directory / "kustomization.yaml"
    docs = load_yaml_docs(kfile)
    if len(docs) != 1:
        raise KustomizeError(f"{kfile}: expected one document")
    k = docs[0]
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: fields this renderer does not support: {sorted(unknown)}")
    if (k.get("apiVersion"), k.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        raise KustomizeError(f"{kfile}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    objs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            objs.extend(render(path))
        elif path.is_file():
            objs.extend(load_yaml_docs(path))
        else:
            raise KustomizeError(f"{kfile}: resource {res} not found")
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objs:
        if key_of(obj) in seen:
            raise KustomizeError(f"{kfile}: duplicate resource {key_of(obj)}")
        seen.add(key_of(obj))
    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            raise KustomizeError(f"{kfile}: only `patches: - path:` is supported, got {entry}")
        for patch in load_yaml_docs(directory / entry["path"]):
            matches = [i for i, o in enumerate(objs) if key_of(o) == key_of(patch)]
            if len(matches) != 1:
                raise KustomizeError(f"{kfile}: patch target {key_of(patch)} not found")
            objs[matches[0]] = strategic_merge(objs[matches[0]], patch)
    _apply_images(objs, k.get("images", []))
    return objs


@cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(OVERLAYS[name]))


def find(objs: Any, kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def kustomize_files() -> set[Path]:
    """Every kustomization.yaml and every patch file they reference."""
    out: set[Path] = set()
    for kfile in DEPLOY.rglob("kustomization.yaml"):
        out.add(kfile)
        for entry in load_yaml_docs(kfile)[0].get("patches", []):
            out.add((kfile.parent / entry["path"]).resolve())
    return out


# --------------------------------------------------------------------------- validation


@cache
def istio_validator(filename: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / filename).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def istio_errors(doc: dict[str, Any], filename: str) -> list[str]:
    errs = istio_validator(filename).iter_errors(doc)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errs]


def validate_object(doc: dict[str, Any]) -> None:
    """Validate one manifest object: Istio kinds by our schemas, the rest as Kubernetes."""
    istio = ISTIO_SCHEMA_FILES.get((str(doc.get("apiVersion")), str(doc.get("kind"))))
    if istio is not None:
        errors = istio_errors(doc, istio)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors}"
        return
    group = str(doc.get("apiVersion", "")).split("/")[0]
    assert not group.endswith("istio.io"), f"no schema for Istio kind {doc.get('kind')}"
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def all_manifest_files() -> list[Path]:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})
    assert files, "no manifests under deploy/"
    return files


@pytest.mark.parametrize("path", all_manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates(path: Path) -> None:
    """Each YAML file under deploy/ is a kustomization, a patch, Helm values or objects."""
    docs = load_yaml_docs(path)
    assert docs, f"{path} has no documents"
    if path.resolve() in kustomize_files():
        # kustomizations and patches are checked by rendering (test_overlay_validates)
        render_dirs = {p.parent for p in kustomize_files() if p.name == "kustomization.yaml"}
        assert path.parent in render_dirs
        return
    if path == HELM_VALUES_FILE:
        assert len(docs) == 1
        errors = istio_errors(docs[0], HELM_VALUES_SCHEMA)
        assert not errors, errors
        return
    for doc in docs:
        validate_object(doc)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_validates(overlay: str) -> None:
    objs = rendered(overlay)
    assert objs
    for obj in objs:
        validate_object(obj)
        # every namespaced object lives in the extauthz namespace
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "extauthz", key_of(obj)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (built-in kustomize) absent")
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_renderer_agrees_with_kubectl_kustomize(overlay: str) -> None:
    """Cross-check the test renderer against real kustomize where it is installed (offline)."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAYS[overlay])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout

    def canon(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: canon(v) for k, v in value.items()}
        if isinstance(value, list):
            items = [canon(v) for v in value]
            if items and all(isinstance(i, dict) and "name" in i for i in items):
                return sorted(items, key=lambda i: str(i["name"]))
            return items
        return value

    theirs = {key_of(d): canon(d) for d in yaml.safe_load_all(out) if d}
    ours = {key_of(d): canon(d) for d in rendered(overlay)}
    assert ours == theirs


# --------------------------------------------------------------------------- properties


def extauthz_container(objs: Any) -> dict[str, Any]:
    spec = find(objs, "Deployment", "extauthz")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == "extauthz")


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    return {e["name"]: e for e in container.get("env", [])}


def deployments(objs: Any) -> Iterator[dict[str, Any]]:
    return (o for o in objs if o["kind"] == "Deployment")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_pod_is_locked_down(overlay: str) -> None:
    dep_names = []
    for dep in deployments(rendered(overlay)):
        dep_names.append(dep["metadata"]["name"])
        pod = dep["spec"]["template"]["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert isinstance(psc["runAsUser"], int)
        assert psc["runAsUser"] > 0
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        assert not pod.get("hostNetwork")
        assert not pod.get("hostPID")
        assert not pod.get("hostIPC")
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc.get("runAsNonRoot", psc["runAsNonRoot"]) is True, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc.get("privileged", False) is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert not sc["capabilities"].get("add"), c["name"]
            assert c["resources"]["requests"], c["name"]
            assert c["resources"]["limits"], c["name"]
            assert ":" in c["image"].rsplit("/", 1)[-1] or "@" in c["image"], "untagged image"
            assert not c["image"].endswith(":latest"), c["image"]
        for vol in pod.get("volumes", []):
            assert not {"hostPath", "persistentVolumeClaim"} & set(vol), vol
    assert "extauthz" in dep_names


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_extauthz_deployment(overlay: str) -> None:
    objs = rendered(overlay)
    dep = find(objs, "Deployment", "extauthz")
    pod = dep["spec"]["template"]["spec"]
    c = extauthz_container(objs)
    assert dep["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["runAsUser"] == 10001
    assert pod["serviceAccountName"] == "extauthz"
    find(objs, "ServiceAccount", "extauthz")

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": SERVE_PORT, "http-metrics": METRICS_PORT}
    # Readiness asks the default service (policies loaded); startup and liveness ask the
    # liveness service, so a slow first load or a store outage restarts nothing.
    liveness = {"port": SERVE_PORT, "service": "extauthz.liveness"}
    want = {
        "startupProbe": liveness,
        "readinessProbe": {"port": SERVE_PORT},
        "livenessProbe": liveness,
    }
    for probe, grpc_probe in want.items():
        p = c[probe]
        assert p["grpc"] == grpc_probe, probe
        assert not {"httpGet", "tcpSocket", "exec"} & set(p), probe
    startup_budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup_budget >= 30, "startup probe leaves too little time for a first policy load"

    env = env_of(c)
    assert env["EXTAUTHZ_LISTEN"]["value"].endswith(f":{SERVE_PORT}")
    assert env["EXTAUTHZ_METRICS_LISTEN"]["value"].endswith(f":{METRICS_PORT}")
    assert c["args"] == ["serve"], "the store is chosen by env; args must not name one"

    # graceful drain: preStop sleep, then the server's drain, both inside the grace period,
    # and the sidecar keeps draining as long as the app does
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env["EXTAUTHZ_GRACE_PERIOD"]["value"])
    grace = pod["terminationGracePeriodSeconds"]
    assert pre_stop > 0
    assert drain > 0
    assert pre_stop + drain < grace
    proxy = yaml.safe_load(
        dep["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
    )
    assert proxy["holdApplicationUntilProxyStarts"] is True
    assert pre_stop + drain <= float(proxy["terminationDrainDuration"].removesuffix("s")) < grace
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    keys = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for t in pod["topologySpreadConstraints"]:
        assert (
            t["labelSelector"]["matchLabels"].items()
            <= dep["spec"]["template"]["metadata"]["labels"].items()
        )

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    policies = mounts["/etc/extauthz/policies"]
    assert policies["readOnly"] is True
    cm_name = vols[policies["name"]]["configMap"]["name"]
    find(objs, "ConfigMap", cm_name)
    assert "emptyDir" in vols[mounts["/tmp"]["name"]]


def test_policy_store_per_overlay() -> None:
    """Exactly one store per overlay: the ConfigMap directory in base, Redis in the others."""
    base = env_of(extauthz_container(rendered("base")))
    assert base["EXTAUTHZ_POLICIES"]["value"] == "/etc/extauthz/policies"
    assert "EXTAUTHZ_REDIS_URL" not in base

    demo_objs = rendered("demo-redis")
    demo = env_of(extauthz_container(demo_objs))
    assert "EXTAUTHZ_POLICIES" not in demo
    url = demo["EXTAUTHZ_REDIS_URL"]["value"]
    svc = find(demo_objs, "Service", "extauthz-redis")
    assert url.startswith(
        f"redis://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:"
    )
    assert int(url.rsplit(":", 1)[1].split("/")[0]) == svc["spec"]["ports"][0]["port"]
    redis = find(demo_objs, "Deployment", "extauthz-redis")
    assert redis["spec"]["replicas"] == 1
    assert (
        svc["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    )
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"

    ext_objs = rendered("external-redis")
    ext = env_of(extauthz_container(ext_objs))
    assert "EXTAUTHZ_POLICIES" not in ext
    ref = ext["EXTAUTHZ_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is False
    assert not [o for o in ext_objs if o["kind"] == "Secret"], "the Secret is the operator's"
    example = load_yaml_docs(DEPLOY / "overlays" / "external-redis" / "redis-secret.example.yaml")
    assert example[0]["metadata"]["name"] == ref["name"]
    assert example[0]["stringData"][ref["key"]].startswith("rediss://")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_service_pdb_hpa(overlay: str) -> None:
    objs = rendered(overlay)
    dep = find(objs, "Deployment", "extauthz")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]

    svc = find(objs, "Service", "extauthz")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["grpc"]["port"] == SERVE_PORT
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["http-metrics"]["port"] == METRICS_PORT

    pdb = find(objs, "PodDisruptionBudget", "extauthz")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    hpa = find(objs, "HorizontalPodAutoscaler", "extauthz")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "extauthz",
    }
    assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["minAvailable"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]

    ns = find(objs, "Namespace", "extauthz")
    assert ns["metadata"]["labels"]["istio-injection"] == "enabled"


def _ports(rule: dict[str, Any]) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])}


def test_network_policy() -> None:
    objs = rendered("base")
    np = find(objs, "NetworkPolicy", "extauthz")
    spec = np["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    pod_labels = find(objs, "Deployment", "extauthz")["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()

    ingress = spec["ingress"]
    for rule in ingress:
        assert rule.get("from"), "an ingress rule without `from` admits everyone"
        assert rule.get("ports"), "an ingress rule without ports admits every port"
    by_port: dict[int, list[dict[str, Any]]] = {}
    for rule in ingress:
        for port, _ in _ports(rule):
            by_port.setdefault(port, []).extend(rule["from"])
    assert set(by_port) <= {SERVE_PORT, METRICS_PORT, 15020}
    serve_from = json.dumps(by_port[SERVE_PORT])
    assert "istio-system" in serve_from
    assert "istio-injection" in serve_from
    assert "monitoring" not in serve_from
    assert "monitoring" in json.dumps(by_port[METRICS_PORT])

    egress_ports = set().union(*(_ports(r) for r in spec["egress"]))
    assert {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (443, "TCP"), (15012, "TCP")} <= egress_ports
    for rule in spec["egress"]:
        assert rule.get("ports"), "an egress rule without ports allows every port"


# --------------------------------------------------------------------------- Istio


def provider_entries() -> dict[str, list[dict[str, Any]]]:
    iop = load_yaml_docs(DEPLOY / "istio" / "extension-provider.istiooperator.yaml")
    (iop_doc,) = iop
    (values,) = load_yaml_docs(HELM_VALUES_FILE)
    return {
        "IstioOperator": iop_doc["spec"]["meshConfig"]["extensionProviders"],
        "helm-values": values["meshConfig"]["extensionProviders"],
    }


def test_extension_provider() -> None:
    entries = provider_entries()
    assert entries["IstioOperator"] == entries["helm-values"], "the two forms must agree"
    (entry,) = [e for e in entries["IstioOperator"] if e["name"] == PROVIDER_NAME]
    grpc = entry["envoyExtAuthzGrpc"]
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] == "403"
    timeout = grpc["timeout"]
    assert isinstance(timeout, str)
    assert timeout.endswith("s")
    assert 0 < float(timeout[:-1]) <= 1.0, "a Check deadline well under Envoy's 600 s default"

    svc = find(rendered("base"), "Service", "extauthz")
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert grpc["service"] == host == PROVIDER_SERVICE
    assert grpc["port"] in {p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"}


def test_custom_policy_and_peer_authentication() -> None:
    docs = load_yaml_docs(DEPLOY / "istio" / "authorizationpolicy-sample.yaml")
    (ap,) = [d for d in docs if d["kind"] == "AuthorizationPolicy"]
    assert ap["spec"]["action"] == "CUSTOM"
    assert ap["spec"]["provider"]["name"] == PROVIDER_NAME
    app_ns = ap["metadata"]["namespace"]
    assert app_ns != "extauthz"
    (ns,) = [d for d in docs if d["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == app_ns
    assert ns["metadata"]["labels"]["istio-injection"] == "enabled"

    (pa,) = load_yaml_docs(DEPLOY / "istio" / "peerauthentication.yaml")
    assert pa["metadata"]["namespace"] == "extauthz"
    assert pa["spec"]["mtls"]["mode"] == "STRICT"
    assert "selector" not in pa["spec"], "namespace-wide"


def test_default_policies_configmap_loads() -> None:
    """The ConfigMap's documents parse as extauthz documents, and its policies as Istio's."""
    try:
        documents = importlib.import_module("extauthz.documents")
    except ModuleNotFoundError:  # not installed: use the source tree
        sys.path.insert(0, str(ROOT / "src"))
        documents = importlib.import_module("extauthz.documents")
    cm = find(rendered("base"), "ConfigMap", "extauthz-policies")
    assert cm["data"]
    kinds = []
    for filename, text in cm["data"].items():
        assert filename.endswith((".yaml", ".yml"))
        for doc in documents.load_documents(text, filename):
            kinds.append(doc.kind)
            if doc.kind == "AuthorizationPolicy":
                body = dict(doc.body)
                if body["apiVersion"] == "security.istio.io/v1":
                    assert not istio_errors(body, "authorizationpolicy_v1.json")
    assert "Tenant" in kinds
    assert "AuthorizationPolicy" in kinds


def test_default_policies_compile(tmp_path: Path) -> None:
    """The ConfigMap's documents pass `extauthz policy validate`, as the server would load them."""
    cm = find(rendered("base"), "ConfigMap", "extauthz-policies")
    for filename, text in cm["data"].items():
        (tmp_path / filename).write_text(text, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run(
        [sys.executable, "-m", "extauthz", "policy", "validate", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tenant default" in result.stdout


# --------------------------------------------------------------------------- the checks fail


def _good_deployment() -> dict[str, Any]:
    return copy.deepcopy(find(rendered("base"), "Deployment", "extauthz"))


def test_kubernetes_validation_rejects_bad_objects() -> None:
    dep = _good_deployment()
    validate_object(dep)
    misspelt = _good_deployment()
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(misspelt)
    wrong_type = _good_deployment()
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(wrong_type)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda g: g.update(failOpen="false"), "failOpen"),
        (lambda g: g.update(includeRequestHeadersInCheck=["authorization"]), "Additional"),
        (lambda g: g.update(timeout="500ms"), "timeout"),
        (lambda g: g.pop("port"), "port"),
    ],
    ids=["failOpen-string", "http-only-field", "duration-format", "no-port"],
)
def test_provider_schema_rejects_bad_entries(mutate: Any, needle: str) -> None:
    (values,) = load_yaml_docs(HELM_VALUES_FILE)
    assert not istio_errors(values, HELM_VALUES_SCHEMA)
    mutate(values["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"])
    errors = istio_errors(values, HELM_VALUES_SCHEMA)
    assert errors
    assert needle in " ".join(errors)


def test_istio_schemas_reject_bad_policies() -> None:
    docs = load_yaml_docs(DEPLOY / "istio" / "authorizationpolicy-sample.yaml")
    (ap,) = [d for d in docs if d["kind"] == "AuthorizationPolicy"]
    bad = copy.deepcopy(ap)
    del bad["spec"]["provider"]
    assert istio_errors(bad, "authorizationpolicy_v1.json")
    bad = copy.deepcopy(ap)
    bad["spec"]["rules"][0]["to"][0]["operation"]["path"] = ["/x"]
    assert istio_errors(bad, "authorizationpolicy_v1.json")
    (pa,) = load_yaml_docs(DEPLOY / "istio" / "peerauthentication.yaml")
    bad = copy.deepcopy(pa)
    bad["spec"]["mtls"]["mode"] = "STRICTER"
    assert istio_errors(bad, "peerauthentication_v1.json")


def test_renderer_rejects_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [dep.yaml]\nnamePrefix: x-\n"
    )
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)
    base = _good_deployment()
    (tmp_path / "dep.yaml").write_text(yaml.safe_dump(base))
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "nope", "namespace": "extauthz"},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(patch))
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [dep.yaml]\npatches: [{path: p.yaml}]\n"
    )
    with pytest.raises(KustomizeError, match="not found"):
        render(tmp_path)
    env_patch = {"env": [{"name": "MISSING", "$patch": "delete"}]}
    with pytest.raises(KustomizeError, match="MISSING"):
        strategic_merge({"env": [{"name": "A", "value": "1"}]}, env_patch)
    merged = strategic_merge(
        {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"env": [{"name": "A", "$patch": "delete"}, {"name": "C", "value": "3"}]},
    )
    assert merged == {"env": [{"name": "B", "value": "2"}, {"name": "C", "value": "3"}]}
