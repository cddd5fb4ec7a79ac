"""deploy/kubernetes, offline: every overlay built by `kubectl kustomize` (never applied: kubectl's default API
address, 127.0.0.1:8080, is this stack's own nginx), validated against the Kubernetes API schemas by
kubernetes-validate --strict, linted by yamllint, and held to the registry: ports, probes, prefixes, the nginx
config, and who may reach whom."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.render import KUBERNETES_NAMESPACE, KUBERNETES_TLS, STOP_GRACE_SECONDS, nginx_conf
from stack.topology import DNS, HTTP_SERVICES, MAX_INSTANCES, NGINX_PORT, NGINX_TLS_PORT, ROOT, STREAM_SERVICES

KUSTOMIZE_TREE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
BIN = Path(sys.executable).parent


def kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl is needed for `kubectl kustomize` (offline); install it, e.g. Debian's kubernetes-client"
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, list[dict]]]:
    """overlay -> (its manifests as one file, parsed), built from a copy of the tree with nginx.conf rendered."""
    work = tmp_path_factory.mktemp("kubernetes")
    tree = work / "kubernetes"
    shutil.copytree(KUSTOMIZE_TREE, tree, ignore=shutil.ignore_patterns("nginx.conf"))
    (tree / "base" / "nginx.conf").write_text(nginx_conf("kubernetes"))
    kubeconfig = work / "kubeconfig"  # empty: nothing here can point kubectl at a server
    kubeconfig.write_text("")
    out = {}
    for overlay in OVERLAYS:
        result = subprocess.run([kubectl(), "kustomize", str(tree / "overlays" / overlay)], capture_output=True,
                                text=True, env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig)}, timeout=60)
        assert result.returncode == 0, result.stderr
        path = work / f"{overlay}.yaml"
        path.write_text(result.stdout)
        out[overlay] = (path, [doc for doc in yaml.safe_load_all(result.stdout) if doc])
    return out


def kind(docs: list[dict], kind_name: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind_name}


def container(deployment: dict) -> dict:
    (first,) = deployment["spec"]["template"]["spec"]["containers"]
    return first


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_validates_strictly_against_the_kubernetes_schemas(built, overlay):
    path, docs = built[overlay]
    result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {KUBERNETES_NAMESPACE}


def test_a_manifest_with_a_misspelt_field_fails_validation(built, tmp_path):
    """The validator is not a no-op: strict mode rejects what the API would silently drop."""
    path, _ = built["dev"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("readOnlyRootFilesystem", "readOnlyRootFileSystem", 1))
    result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "readOnlyRootFileSystem" in result.stdout + result.stderr


def test_the_manifests_pass_yamllint():
    result = subprocess.run([str(BIN / "yamllint"), "-c", str(KUSTOMIZE_TREE / ".yamllint.yaml"), "-f", "parsable",
                             str(KUSTOMIZE_TREE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_http_service_has_the_registrys_port_probes_and_a_headless_service(built, overlay):
    _, docs = built[overlay]
    deployments, services = kind(docs, "Deployment"), kind(docs, "Service")
    for service in HTTP_SERVICES:
        main = container(deployments[service.name])
        assert [p["containerPort"] for p in main["ports"]] == [service.port], service.name
        for probe in ("readinessProbe", "livenessProbe"):
            assert main[probe]["httpGet"] == {"path": service.health_path, "port": service.port}, service.name
        own = services[service.name]["spec"]
        assert own["clusterIP"] == "None" and [p["port"] for p in own["ports"]] == [service.port]
        pod = deployments[service.name]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == STOP_GRACE_SECONDS
        assert {"requests", "limits"} <= set(main["resources"]), service.name
        for variable in main.get("env", []):  # calls to other services: their registry port
            if variable["name"].startswith("STACK_") and variable["name"].endswith("_URL"):
                callee = variable["name"].removeprefix("STACK_").removesuffix("_URL").lower()
                port = next(s.port for s in HTTP_SERVICES if s.name == callee)
                assert variable["value"] == f"http://{callee}:{port}", variable


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_socket_services_dns_and_nginx_publish_the_registrys_ports(built, overlay):
    _, docs = built[overlay]
    deployments, services = kind(docs, "Deployment"), kind(docs, "Service")
    for service in (*STREAM_SERVICES, DNS):
        ports = {(p["containerPort"], p.get("protocol", "TCP")) for p in container(deployments[service.name])["ports"]}
        transports = {"udp", "tcp"} if service is DNS else {service.transport}
        assert ports == {(service.port, t.upper()) for t in transports}, service.name
        if service.module:
            command = container(deployments[service.name]).get("command")
            assert command in (None, ["python", "-m", service.module]), service.name
    edge = {(p["port"], p["protocol"]) for p in services["nginx"]["spec"]["ports"]}
    assert edge == {(NGINX_PORT, "TCP"), (NGINX_TLS_PORT, "TCP"),
                    *((s.public_port, s.transport.upper()) for s in STREAM_SERVICES)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nginx_runs_the_stacks_template_rendered_for_kubernetes(built, overlay):
    _, docs = built[overlay]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nginx-conf")]
    assert config_map["data"]["nginx.conf"] == nginx_conf("kubernetes")
    for service in HTTP_SERVICES:  # every pod of each service, by its headless Service's full name
        assert f"server {service.name}.{KUBERNETES_NAMESPACE}.svc.cluster.local:{service.port} resolve" in (
            config_map["data"]["nginx.conf"])
    pod = kind(docs, "Deployment")["nginx"]["spec"]["template"]["spec"]
    assert {"name": "nginx-conf", "configMap": {"name": config_map["metadata"]["name"]}} in pod["volumes"]
    # The certificate and key the config names, from the nginx-tls Secret.
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls"]
    assert {"name": "tls", "secret": {"secretName": "nginx-tls"}} in pod["volumes"]
    for path in KUBERNETES_TLS:
        assert f" {path};" in config_map["data"]["nginx.conf"] and path.startswith(mount["mountPath"] + "/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened(built, overlay):
    _, docs = built[overlay]
    for name, workload in {**kind(docs, "Deployment"), **kind(docs, "StatefulSet")}.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        security = container(workload)["securityContext"]
        assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}}, name
        assert {"requests", "limits"} <= set(container(workload)["resources"]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_http_services_have_a_disruption_budget_and_an_autoscaler_within_the_registrys_bound(built, overlay):
    _, docs = built[overlay]
    budgets, scalers = kind(docs, "PodDisruptionBudget"), kind(docs, "HorizontalPodAutoscaler")
    for service in HTTP_SERVICES:
        assert budgets[service.name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": service.name}
        spec = scalers[service.name]["spec"]
        assert spec["scaleTargetRef"]["name"] == service.name
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"] <= MAX_INSTANCES


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_nginx_and_the_services_callers_reach_each_service(built, overlay):
    _, docs = built[overlay]
    policies = list(kind(docs, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]  # nothing reaches a pod unless allowed below

    def admitted(target: str, port: int) -> set[str]:
        """The app names allowed to connect to `target` on `port` (* for anyone)."""
        names: set[str] = set()
        for policy in policies:
            selector = policy["spec"]["podSelector"]
            selects = selector.get("matchLabels", {}).get("app.kubernetes.io/name") == target or any(
                e["key"] == "app.kubernetes.io/name" and target in e["values"]
                for e in selector.get("matchExpressions", []))
            for rule in policy["spec"].get("ingress", []) if selects else []:
                if port not in {p["port"] for p in rule.get("ports", [])}:
                    continue
                if "from" not in rule:
                    names.add("*")
                for peer in rule.get("from", []):
                    labels = peer["podSelector"].get("matchLabels", {})
                    names.add(labels.get("app.kubernetes.io/name", "the stack's pods"))
        return names

    callers = {"web": {"nginx"}, "catalog": {"nginx", "web"}, "httpbin": {"nginx", "web", "catalog", "httpbin"}}
    for service in HTTP_SERVICES:
        assert admitted(service.name, service.port) == callers[service.name], service.name
    for service in STREAM_SERVICES:
        assert admitted(service.name, service.port) == {"nginx"}, service.name
    assert admitted("nginx", NGINX_PORT) == {"*"}


def test_the_dev_overlays_generated_secrets_are_the_ones_the_pods_mount(built):
    _, docs = built["dev"]
    secrets = set(kind(docs, "Secret"))
    referenced = set()
    for workload in [*kind(docs, "Deployment").values(), *kind(docs, "StatefulSet").values()]:
        pod = workload["spec"]["template"]["spec"]
        referenced |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for variable in container(workload).get("env", []):
            if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
                referenced.add(ref["name"])
    # nginx's certificate is the operator's to create (docs/scaling.md: Kubernetes): a private key is never generated
    # into manifests.
    assert "nginx-tls" in referenced and "nginx-tls" not in secrets
    assert referenced - {"nginx-tls"} <= secrets, (referenced, secrets)
