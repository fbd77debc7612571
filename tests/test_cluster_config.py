"""serve_config.yaml and cluster.yaml describe the same Serve graph, and it builds."""

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

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
        assert not any("value" in e and ("://" in str(e["value"]) or "key" in e["name"].lower()) for e in env.values())
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert "database_url" not in serve_config["applications"][0]["args"]  # secrets never in the Serve config
