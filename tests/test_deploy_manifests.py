"""deploy/: the Kubernetes manifests validate offline against the Kubernetes schemas (kubernetes-validate ships
them), and every manifest agrees with the CLI it runs: the container arguments parse with `privsplit serve`'s
own parser, probe and Service ports are the ports those arguments open, mounted Secrets hold the files the
arguments read. KServe's CRDs are not in kubernetes-validate and cannot be fetched in CI: their manifests are
checked for structure here (README "Deploying at scale" says so)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from privsplit.cli import serve as serve_cli

yaml = pytest.importorskip("yaml", reason="PyYAML not installed (pip install 'privsplit[dev]')")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (pip install 'privsplit[dev]')"
)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
# The oldest Kubernetes with GA native grpc probes (1.27) is out of support; 1.30 up to the newest schemas shipped
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _by_kind(folder: str) -> dict[str, dict]:
    docs = [d for p in sorted((DEPLOY / folder).glob("*.yaml")) for d in _docs(p)]
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs), "one manifest per kind expected"
    return kinds


def _serve_args(argv: list[str]) -> argparse.Namespace:
    """Parse a container's arguments with the real `privsplit` parser (an unknown flag fails the test)."""
    parser = argparse.ArgumentParser(prog="privsplit", exit_on_error=False)
    serve_cli.register(parser.add_subparsers(dest="command", required=True))
    assert argv[0] == "serve"
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    return _by_kind("k8s")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_the_kubernetes_schemas(k8s, version):
    assert set(k8s) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"}
    for doc in k8s.values():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error or unknown field


def test_k8s_schema_validation_catches_mistakes(k8s):
    """The validator is strict: a misspelt field and a wrongly typed value are refused."""
    deployment = yaml.safe_load(yaml.safe_dump(k8s["Deployment"]))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpc"]["prot"] = 8002
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    del container["readinessProbe"]["grpc"]["prot"]
    container["readinessProbe"]["grpc"]["port"] = "health"  # grpc probes take a number, not a port name
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_deployment_runs_privsplit_serve_as_its_probes_service_and_secrets_expect(k8s):
    deployment, service, hpa = k8s["Deployment"], k8s["Service"], k8s["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = _serve_args(container["args"])
    assert args.engine is serve_cli.Engine.PRIVSPLIT and args.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "health": args.health_port, "metrics": args.metrics_port}
    # native grpc probes, on the plaintext health port (the kubelet cannot probe the TLS port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == args.health_port
    assert container["readinessProbe"]["grpc"]["service"] == "inference.GRPCInferenceService"
    # token and TLS from Secrets, trust key from a ConfigMap, the bundle read-only: each file the args read
    # lies in a volume mounted from the named source
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def source(path: Path) -> dict:
        mount = mounts[str(path.parent)]
        assert mount.get("readOnly") is True
        volume = volumes[mount["name"]]
        items = volume.get("secret", volume.get("configMap", {})).get("items")
        assert items is None or path.name in [i["path"] for i in items]
        return volume

    assert source(args.tls_cert)["secret"]["secretName"] == source(args.tls_key)["secret"]["secretName"]
    assert source(args.token_file)["secret"]["secretName"] == "privsplit-token"
    assert source(args.trust_key)["configMap"]["name"] == "privsplit-trust-key"
    bundle = volumes[mounts[str(args.bundle)]["name"]]
    assert bundle["persistentVolumeClaim"]["claimName"] == k8s["PersistentVolumeClaim"]["metadata"]["name"]
    assert pod["terminationGracePeriodSeconds"] > args.grace
    assert container["securityContext"]["readOnlyRootFilesystem"] and "/tmp" in mounts
    # headless Service for client-side balancing over the pods' gRPC port
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"].items() <= labels.items()
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["targetPort"] == "grpc" and grpc_port["port"] == args.port
    # an HPA on CPU over this Deployment, which requests CPU (utilization is relative to the request)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "privsplit-cloud"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert container["resources"]["requests"]["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("folder, extra", [("k8s", "cloud"), ("kserve", "kserve")])
def test_dockerfiles_install_the_torch_free_extra(folder, extra):
    text = (DEPLOY / folder / "Dockerfile").read_text()
    assert f'pip install ".[{extra}]"' in text
    assert not any(f"{e}]" in text for e in ("train", "export", "all", "dev"))  # the extras that bring torch
    assert "sys.exit(u.find_spec('torch') is not None)" in text  # and the build fails if torch came anyway
    # every folder pyproject maps into the privsplit namespace is copied (the wheel build needs them)
    for package_dir in ("privsplit", "export", "edge", "cloud", "proto"):
        assert f"COPY {package_dir} ./{package_dir}" in text
    assert "USER 10001" in text and 'ENTRYPOINT ["privsplit"]' in text


def test_kserve_manifests_structure():
    """Structure only: KServe's CRD schemas are not available offline (validated by hand, README)."""
    kinds: dict[str, list[dict]] = {}
    for path in sorted((DEPLOY / "kserve").glob("*.yaml")):
        for doc in _docs(path):
            kinds.setdefault(doc["kind"], []).append(doc)
    (runtime,) = kinds["ServingRuntime"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    services = {d["metadata"]["name"]: d for d in kinds["InferenceService"]}
    assert set(services) == {"privsplit", "privsplit-triton"}
    assert all(d["apiVersion"] == "serving.kserve.io/v1beta1" for d in services.values())

    # privsplit's runtime: `privsplit serve --engine kserve` on the downloaded bundle, gRPC on the h2c port
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    args = _serve_args(container["args"])
    assert args.engine is serve_cli.Engine.KSERVE and str(args.bundle) == "/mnt/models"
    config = serve_cli.build_kserve_config(args)  # the flags the kserve engine refuses are absent
    assert config.model_name == "privsplit" and config.http_port != config.grpc_port
    assert container["ports"] == [{"name": "h2c", "containerPort": config.grpc_port, "protocol": "TCP"}]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config.trust_key.parent))
    assert next(v for v in runtime["spec"]["volumes"] if v["name"] == mount["name"])["configMap"]
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    model = services["privsplit"]["spec"]["predictor"]["model"]
    (fmt,) = runtime["spec"]["supportedModelFormats"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["modelFormat"] == {
        "name": fmt["name"],
        "version": fmt["version"],
    }
    assert model["protocolVersion"] == "grpc-v2" and model["storageUri"].endswith("/cloud")
    assert model["ports"] == container["ports"]

    # Triton's runtime: modelFormat triton on the repository `privsplit export --triton` writes (DIR/triton)
    triton = services["privsplit-triton"]["spec"]["predictor"]["model"]
    assert triton["modelFormat"]["name"] == "triton" and triton["runtime"] == "kserve-tritonserver"
    assert triton["storageUri"].endswith("/triton") and triton["protocolVersion"] == "grpc-v2"
    assert triton["ports"] == [{"name": "h2c", "containerPort": 9000, "protocol": "TCP"}]
