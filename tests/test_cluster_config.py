"""serve_config.yaml and cluster.yaml describe the same Serve graph, and it builds."""

import json
from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

from troupe import serve_ingress

ROOT = Path(__file__).resolve().parent.parent


def test_serve_config_is_valid_and_builds():
    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    [app] = config.applications
    assert app.import_path == "deployments.app:app" and app.name == "troupe"
    names = {d.name for d in app.deployments}
    assert names == {"Gateway", "Conductor", "ToolPool", "BrowserPool", "LLMRouter", "Planner",
                     "Verifier"}

    from deployments.app import app as builder

    built = builder(app.args)
    assert built is not None


def test_cluster_serve_config_matches_serve_config():
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    service = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert service["kind"] == "RayService"
    cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert cluster["http_options"]["host"] == "0.0.0.0"
    cluster["http_options"]["host"] = local["http_options"]["host"]
    # The one intended difference: the cluster's engines (a vLLM engine on the GPU group).
    assert local["applications"][0]["args"]["engines"] == []
    cluster["applications"][0]["args"]["engines"] = []
    assert cluster == local


def test_cluster_is_locked_down():
    service = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token"  # dashboard, GCS and jobs API need Ray's token
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        [container] = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        for name in ("TROUPE_DATABASE_URL", "TROUPE_REDIS_URL", "TROUPE_ADMIN_KEY"):
            assert "secretKeyRef" in env[name]["valueFrom"], name  # from a Kubernetes Secret, never inline
        for name in ("TROUPE_MODEL_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):  # hosted models' keys
            assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is True, name
        assert not any("value" in e and ("://" in str(e["value"]) or "key" in e["name"].lower()) for e in env.values())
        for name, value in serve_ingress.CLUSTER.items():  # HAProxy in front of the Gateway, on every node
            assert env[name]["value"] == value, name
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert "database_url" not in serve_config["applications"][0]["args"]  # secrets never in the Serve config


def test_cluster_vllm_engines_have_a_gpu_group_that_fits_them():
    from deployments.app import AppArgs
    from deployments.engines.vllm import llm_config_kwargs

    service = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    args = AppArgs.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"])
    vllm = [e for e in args.engines if e.kind == "vllm"]
    assert vllm, "cluster.yaml declares no vllm engine"
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpu_types = {}
    for g in groups:
        params = g.get("rayStartParams", {})
        if "num-gpus" not in params:
            continue
        [container] = g["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == params["num-gpus"]
        resources = json.loads(json.loads(params["resources"]))
        gpu_types.update({k.removeprefix("accelerator_type:"): int(params["num-gpus"])
                          for k in resources if k.startswith("accelerator_type:")})
    for engine in vllm:
        kwargs = llm_config_kwargs(engine)
        gpus = engine.tensor_parallel_size * engine.pipeline_parallel_size
        assert kwargs["accelerator_type"] in gpu_types, (engine.name, gpu_types)
        assert gpus <= gpu_types[kwargs["accelerator_type"]], f"{engine.name} needs {gpus} GPUs on one node"


def test_cluster_pods_expose_metrics_for_prometheus():
    service = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        template = group["template"]
        assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                                                       "prometheus.io/path": "/metrics"}
        [container] = template["spec"]["containers"]
        assert {"containerPort": 8080, "name": "metrics"} in container["ports"]
    monitor = yaml.safe_load((ROOT / "dashboards" / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor" and monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
