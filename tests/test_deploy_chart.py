"""The Helm chart (deploy/helm/navig), rendered by Helm itself and checked with no cluster.

Rendering: `helm-python-sdk` (PyPI) wraps Helm v4's own Go SDK (`libhelm_c`) in its wheel, so templates,
Sprig functions and values.schema.json behave as under `helm template`; no helm binary is needed.
Validation: `kubernetes-validate --strict` against the oldest (1.27: native gRPC probes are GA) and newest
Kubernetes schemas it bundles. It has no schema for the CRDs (PodMonitor, PrometheusRule, ScaledObject), so
the checks below cover them: what the objects refer to exists (Services, Deployments, ports, recording
rules), the orchestrator's NAVIG_* environment loads through the real settings and routes every model to
a pool whose Triton loads it, and every metric name in the PromQL is one our code or Triton exports.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from navig.export import containers
from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.health import TritonHealth
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.pools import TritonPools, pool_specs
from navig.orchestrator.settings import load_settings

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "navig"
VALUES = {"default": None, "cpu": CHART / "values-cpu.yaml", "gpu": CHART / "values-gpu.yaml"}
KUBERNETES = ("1.27.0", "1.37.0")  # oldest and newest supported
CRDS = {"PodMonitor", "PrometheusRule", "ScaledObject"}
NAMESPACE, RELEASE = "geo", "navig"


def values_of(name: str, **overrides: Any) -> dict:
    path = VALUES[name]
    values = yaml.safe_load(path.read_text()) if path else {}
    return merge(values, overrides)


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def render(values: dict) -> list[dict]:
    """Every object the chart renders for `values`, as `helm template` would (schema checked first)."""
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def merged_values(values: dict) -> dict:
    with helm_python.Chart.load(CHART) as chart:
        return chart.merge_values(values)


CASES = {
    "default": values_of("default"),
    "cpu": values_of("cpu"),
    "gpu-keda": values_of("gpu"),
    "gpu-hpa": values_of("gpu", autoscaling={"engine": "hpa"}),
    "cpu-autoscaled-hpa": values_of(
        "cpu",
        orchestrator={"autoscaling": {"enabled": True}},
        triton={"pools": {"vision": {"autoscaling": {"enabled": True}}}},
        monitoring={"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[dict, list[dict]]:
    values = CASES[request.param]
    return merged_values(values), render(values)


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def orchestrator(objects: list[dict]) -> dict:
    return named(objects, "Deployment", f"{RELEASE}-orchestrator")


def pool_deployment(objects: list[dict], pool: str) -> dict:
    return named(objects, "Deployment", f"{RELEASE}-triton-{pool}")


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def orchestrator_settings(objects: list[dict], monkeypatch: pytest.MonkeyPatch):
    """The settings the orchestrator pod would load: its NAVIG_* environment through load_settings."""
    for variable in [v for v in os.environ if v.startswith("NAVIG_")]:
        monkeypatch.delenv(variable)
    for env in container(orchestrator(objects))["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    return load_settings()


def test_helm_lint_finds_no_errors():
    for path in VALUES.values():
        values = yaml.safe_load(path.read_text()) if path else {}
        for version in KUBERNETES:
            report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{version}")
            errors = [m for m in report["messages"] if m["severity"] >= 3] + report["errors"]
            assert not errors, errors


@pytest.mark.parametrize("version", KUBERNETES)
def test_kubernetes_validate_strict(case: tuple[dict, list[dict]], version: str, tmp_path: Path):
    """The documented command, on the rendered manifests: `kubernetes-validate --strict -k VERSION`."""
    _, objects = case
    files = []
    for i, o in enumerate(o for o in objects if o["kind"] not in CRDS):
        files.append(tmp_path / f"{i:02d}-{o['kind']}.yaml")
        files[-1].write_text(yaml.safe_dump(o))
    tool = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(tool), "--strict", "--quiet", "-k", version, *map(str, files)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(files) >= 6  # orchestrator Deployment, Service, PDB; per pool a Deployment and a Service


def test_every_pool_has_a_headless_service_on_the_settings_ports(case: tuple[dict, list[dict]]):
    values, objects = case
    t = values["triton"]
    for pool in t["pools"]:
        deployment = pool_deployment(objects, pool)
        service = named(objects, "Service", f"{RELEASE}-triton-{pool}")
        assert service["spec"]["clusterIP"] == "None"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        c = container(deployment)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"grpc": t["grpcPort"], "http": t["httpPort"], "metrics": t["metricsPort"]}
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
        args = c["args"]
        assert f"--grpc-port={t['grpcPort']}" in args and f"--http-port={t['httpPort']}" in args
        assert f"--metrics-port={t['metricsPort']}" in args
        assert f"--grpc-max-connection-age={t['maxConnectionAgeMs']}" in args
        assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        gpus = values["triton"]["pools"][pool]["gpus"]
        assert c["resources"].get("limits", {}).get("nvidia.com/gpu", 0) == gpus


def test_orchestrator_environment_routes_every_model_to_a_pool_that_loads_it(
    case: tuple[dict, list[dict]], monkeypatch: pytest.MonkeyPatch
):
    values, objects = case
    settings = orchestrator_settings(objects, monkeypatch)
    services = {
        f"dns:///{s['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{p['port']}": s["metadata"]["name"]
        for s in of_kind(objects, "Service")
        for p in s["spec"]["ports"]
        if p["name"] == "grpc" and s["spec"].get("clusterIP") == "None"
    }
    specs = pool_specs(settings)
    assert {spec.target for spec in specs} <= set(services), "a pool target names no headless Service"

    async def routing() -> dict[str, str]:  # gRPC aio channels are made on the running loop
        pools = TritonPools(specs, Metrics(), settings.max_message_bytes)
        try:
            return {model: pools.specs[pools.pool(model)].target for model in contract.MODELS}
        finally:
            await pools.close()

    for model, target in asyncio.run(routing()).items():
        service = services[target]
        loads = [
            a.removeprefix("--load-model=") for a in container(named(objects, "Deployment", service))["args"]
        ]
        assert model in loads, f"{model} is routed to {service}, whose Triton does not load it"
    assert settings.triton_keepalive_s * 1000 >= values["triton"]["minPingIntervalMs"]
    assert settings.max_concurrency == values["orchestrator"]["maxConcurrency"]


def test_orchestrator_probes_ports_and_shutdown(
    case: tuple[dict, list[dict]], monkeypatch: pytest.MonkeyPatch
):
    _, objects = case
    settings = orchestrator_settings(objects, monkeypatch)
    deployment = orchestrator(objects)
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert c["readinessProbe"]["grpc"] == {"port": settings.port, "service": contract.GEOLOCATOR_SERVICE}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "grpc": settings.port,
        "metrics": settings.metrics_port,
    }
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace_s + pre_stop
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = named(objects, "Service", f"{RELEASE}-orchestrator")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": settings.port,
        "metrics": settings.metrics_port,
    }
    pdb = named(objects, "PodDisruptionBudget", f"{RELEASE}-orchestrator")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def recorded(objects: list[dict]) -> set[str]:
    return {r["record"] for rule in of_kind(objects, "PrometheusRule") for g in rule["spec"]["groups"]
            for r in g["rules"] if "record" in r}  # fmt: skip


def test_autoscaling_targets_exist_and_use_recorded_signals(case: tuple[dict, list[dict]]):
    values, objects = case
    scalers = of_kind(objects, "HorizontalPodAutoscaler") + of_kind(objects, "ScaledObject")
    wanted = [p for p, pool in values["triton"]["pools"].items() if pool["autoscaling"]["enabled"]]
    wanted += ["orchestrator"] if values["orchestrator"]["autoscaling"]["enabled"] else []
    assert len(scalers) == len(wanted)
    rules = recorded(objects)
    for scaler in scalers:
        target = named(objects, "Deployment", scaler["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "the autoscaler owns replicas"
        if scaler["kind"] == "HorizontalPodAutoscaler":
            (metric,) = scaler["spec"]["metrics"]
            # prometheus-adapter serves a recording rule under its name with ':' as '_' (README)
            assert metric["pods"]["metric"]["name"] in {r.replace(":", "_") for r in rules}
        else:
            (trigger,) = scaler["spec"]["triggers"]
            assert trigger["metadata"]["serverAddress"] == values["autoscaling"]["prometheusAddress"]
            assert promql_names(trigger["metadata"]["query"]) <= rules
    if scalers:
        assert rules, "autoscaling on recording rules that are not rendered"


PROMQL_WORDS = {"by", "without", "sum", "avg", "min", "max", "rate", "clamp_min", "histogram_quantile", "le"}


def promql_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, strings and functions removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", expr)
    words = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"[0-9.]+", w)}


def exported_names(exposition: str) -> set[str]:
    """Sample names a Prometheus text exposition can carry, from its # TYPE lines."""
    names = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        names |= {name} | {name + s for s in suffixes.get(kind, ())}
    return names


@pytest.fixture(scope="module")
def navig_metric_names() -> set[str]:
    from prometheus_client import generate_latest

    metrics = Metrics()
    TritonHealth(TritonPools([], metrics, 2**20), [], 1.0, metrics.registry)  # navig_pool_ready
    return exported_names(generate_latest(metrics.registry).decode())


ECHO_CONFIG = """
name: "echo"
backend: "python"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]
dynamic_batching { }
"""
ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x")
                .as_numpy())]) for r in requests]
"""


@pytest.fixture(scope="module")
def triton_metric_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What a real Triton (the embedded one) exports once a dynamically batched model has served a call."""
    import urllib.request

    import numpy as np
    import tritonclient.grpc as triton_grpc

    repository = tmp_path_factory.mktemp("echo_repository")
    (repository / "echo" / "1").mkdir(parents=True)
    (repository / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (repository / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    with EmbeddedTriton(TritonConfig(repository, ports=TritonPorts.free())) as triton:
        client = triton_grpc.InferenceServerClient(triton.grpc_url)
        tensor = triton_grpc.InferInput("x", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
        client.infer("echo", [tensor])
        client.close()
        with urllib.request.urlopen(triton.metrics_url, timeout=10) as reply:
            return exported_names(reply.read().decode())


def test_promql_names_exist_in_our_metrics_and_tritons(
    navig_metric_names: set[str], triton_metric_names: set[str]
):
    objects = render(CASES["gpu-keda"])
    rules = recorded(objects)
    exprs = [r["expr"] for rule in of_kind(objects, "PrometheusRule") for g in rule["spec"]["groups"]
             for r in g["rules"]]  # fmt: skip
    exprs += [t["metadata"]["query"] for s in of_kind(objects, "ScaledObject") for t in s["spec"]["triggers"]]
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = set().union(*map(promql_names, exprs)) - {"$__rate_interval"}
    unknown = names - navig_metric_names - triton_metric_names - rules
    assert not unknown, f"PromQL names nobody exports: {sorted(unknown)}"
    assert {"navig_in_flight", "navig_queued", "nv_inference_queue_duration_us"} <= names
    # the labels the rules select on are the ones the PodMonitor writes
    (monitor,) = of_kind(objects, "PodMonitor")
    written = {r["targetLabel"] for e in monitor["spec"]["podMetricsEndpoints"] for r in e["relabelings"]}
    assert {"release", "component", "pool"} <= written


def test_gpu_pools_follow_the_gpu_export():
    values = merged_values(values_of("gpu"))
    pools = values["triton"]["pools"]
    by_folder = {p["repositorySubPath"]: set(p["models"]) for p in pools.values()}
    assert by_folder == {pool.folder: set(pool.models) for pool in containers.POOLS}
    assert all(p["gpus"] >= 1 and p["nodeSelector"] for p in pools.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"orchestrator": {"terminationGracePeriodSeconds": 30}},
            "terminationGracePeriodSeconds must exceed",
        ),
        ({"triton": {"defaultPool": "nowhere"}}, "names no pool"),
        ({"triton": {"pools": {"vision": {"models": ["clip_imag"]}}}}, "clip_imag"),
        ({"orchestrator": {"maxConcurrency": 0}}, "maxConcurrency"),
    ],
)
def test_bad_values_are_refused_with_a_reason(overrides: dict, message: str):
    with pytest.raises(helm_python.HelmError, match=message):
        render(values_of("default", **overrides))


def test_rendered_environment_is_json_the_settings_read(monkeypatch: pytest.MonkeyPatch):
    objects = render(
        values_of("cpu", orchestrator={"settings": {"tools": {"plugin": {"k": 1}}, "map_limit": 7}})
    )
    env = {e["name"]: e["value"] for e in container(orchestrator(objects))["env"]}
    assert json.loads(env["NAVIG_TOOLS"]) == {"plugin": {"k": 1}}
    loaded = orchestrator_settings(objects, monkeypatch)
    assert loaded.map_limit == 7 and loaded.tools == {"plugin": {"k": 1}}
