"""The deployment artefacts, checked with the tools' own validators where the tools ship them.

- ray-cluster.yaml: the cluster launcher's own ``prepare_config`` + ``validate_config``
  (ray/autoscaler/ray-schema.json), node labels with Ray's label syntax rules;
- docker/serve-config.yaml: Ray Serve's ``ServeDeploySchema``, plus what that schema lets
  through (it ignores unknown keys and checks neither ``autoscaling_config`` nor
  ``runtime_env`` until deploy time), cutfarm's own settings parser on its env_vars, and the
  import path against the real ``serve_app.app``;
- docker/kuberay-rayservice.yaml: serveConfigV2 is the same document; the fields KubeRay
  requires; token auth; the media PVC;
- docker/compose.yaml: head and workers, the media volume, health checks, token auth;
- docker/Dockerfile: ``pip install .`` of this repo as a non-root user on the Ray image that
  matches pyproject.toml's Ray pin; entrypoint.sh parses with ``bash -n``.

No Docker, Kubernetes or cloud access is needed (or used): everything here is static, apart
from the health-check script, which is run against a server on 127.0.0.1.
"""

from __future__ import annotations

import copy
import http.server
import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel
from ray._private.label_utils import validate_node_label_syntax, validate_node_labels
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

import cluster.settings as settings_module
from cluster.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
MEDIA = "/data/media"
SECRET_NAMES = ("CUTFARM_API_TOKEN", "CUTFARM_WEBHOOK_SECRET", "RAY_AUTH_TOKEN",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ray_pin(pyproject: dict[str, Any]) -> str:
    for dep in pyproject["project"]["dependencies"]:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError("pyproject.toml pins no ray version")


@pytest.fixture(scope="module")
def cluster_yaml() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(ROOT / "ray-cluster.yaml")
    return data


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DOCKER / "serve-config.yaml")
    return data


@pytest.fixture(scope="module")
def rayservice_docs() -> list[dict[str, Any]]:
    text = (DOCKER / "kuberay-rayservice.yaml").read_text(encoding="utf-8")
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="module")
def rayservice(rayservice_docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in rayservice_docs if d.get("kind") == "RayService"]
    assert len(found) == 1, "docker/kuberay-rayservice.yaml must hold one RayService"
    return found[0]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DOCKER / "compose.yaml")
    return data


# --------------------------------------------------------------------------- ray-cluster.yaml


def test_cluster_config_passes_ray_validation(cluster_yaml: dict[str, Any]) -> None:
    prepared = prepare_config(copy.deepcopy(cluster_yaml))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cluster_validation_rejects_mistakes(cluster_yaml: dict[str, Any]) -> None:
    """The validator really runs: a misspelt node-type key and a missing head type fail."""
    typo = copy.deepcopy(cluster_yaml)
    worker = next(k for k in typo["available_node_types"] if k != typo["head_node_type"])
    typo["available_node_types"][worker]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(typo))
    no_head = copy.deepcopy(cluster_yaml)
    no_head["head_node_type"] = "missing"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(no_head))


def test_cluster_node_types(cluster_yaml: dict[str, Any]) -> None:
    types = cluster_yaml["available_node_types"]
    head = types[cluster_yaml["head_node_type"]]
    assert head.get("max_workers", 0) == 0
    workers = [t for name, t in types.items() if name != cluster_yaml["head_node_type"]]
    assert workers, "no worker node type"
    for t in workers:
        assert t["min_workers"] == 0 and 0 < t["max_workers"] <= cluster_yaml["max_workers"]
    for t in types.values():
        labels = t.get("labels", {})
        validate_node_label_syntax(labels)
        validate_node_labels(labels)
    assert cluster_yaml["idle_timeout_minutes"] > 0 and cluster_yaml["upscaling_speed"] > 0


def test_cluster_commands(cluster_yaml: dict[str, Any]) -> None:
    # Explicitly empty: Ray's AWS defaults would otherwise install Ray and boto3 on the nodes.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert cluster_yaml[key] == [], key
    head = " ; ".join(cluster_yaml["head_start_ray_commands"])
    assert "ray start --head" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head, "no autoscaler"
    assert "cutfarm-entrypoint deploy" in head or "serve deploy" in head, "Serve not started"
    worker = " ; ".join(cluster_yaml["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    run_options = " ".join(cluster_yaml["docker"]["run_options"])
    assert f":{MEDIA}" in run_options, "media volume not mounted in the container"
    assert "RAY_AUTH_MODE=token" in run_options
    assert "RAY_AUTH_TOKEN_PATH=" in run_options
    token_dir = "/home/ray/cutfarm-secrets"
    assert token_dir in cluster_yaml["file_mounts"], "the token file is not synced to nodes"


# --------------------------------------------------------------------------- serve config


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def unknown_keys(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """Keys the pydantic ``model`` (recursively) has no field for; Serve ignores them."""
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    out = [f"{path}{k}" for k in data if k not in known]
    for name, field in fields.items():
        key = name if name in data else field.alias
        candidates = _models(field.annotation)
        if key not in data or not candidates:
            continue
        items = data[key] if isinstance(data[key], list) else [data[key]]
        for i, item in enumerate(items):
            where = f"{path}{key}[{i}]." if isinstance(data[key], list) else f"{path}{key}."
            found: list[list[str]] = [unknown_keys(m, item, where) for m in candidates]
            fewest: list[str] = min(found, key=len)
            out += fewest
    return out


def check_serve_config(config: dict[str, Any]) -> ServeDeploySchema:
    schema = ServeDeploySchema.model_validate(config)
    assert unknown_keys(ServeDeploySchema, config) == []
    for app in config["applications"]:
        RuntimeEnv(**app.get("runtime_env", {}))  # env_vars must be str -> str
        for dep in app.get("deployments", []):
            if dep.get("autoscaling_config") is not None:
                AutoscalingConfig(**dep["autoscaling_config"])
    return schema


def test_serve_config_passes_serve_schema(serve_config: dict[str, Any]) -> None:
    schema = check_serve_config(serve_config)
    assert schema.http_options.host == "0.0.0.0"
    assert schema.http_options.port == 8000
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == ("cutfarm", "/", "serve_app.app:app")
    assert "working_dir" not in app.runtime_env
    (dep,) = app.deployments
    assert dep.name == "ExportAPI"
    assert dep.max_ongoing_requests >= 50, "downloads hold a slot for their whole length"
    auto = AutoscalingConfig(**serve_config["applications"][0]["deployments"][0][
        "autoscaling_config"])
    assert (auto.min_replicas, auto.max_replicas) == (1, 4)
    assert auto.target_ongoing_requests is not None
    assert auto.target_ongoing_requests < dep.max_ongoing_requests


@pytest.mark.parametrize(("where", "mistake", "error"), [
    ("deployment", {"max_ongoing_request": 100}, "unknown"),
    ("top", {"http_option": {"port": 8000}}, "unknown"),
    ("autoscaling", {"min_replicas": 5, "max_replicas": 1}, "invalid"),
    ("autoscaling", {"target_ongoing_request": 5}, "unknown"),
    ("env", {"CUTFARM_PORT": 8000}, "invalid"),
])
def test_serve_config_checks_catch_what_serve_lets_through(
        serve_config: dict[str, Any], where: str, mistake: dict[str, Any], error: str) -> None:
    """ServeDeploySchema alone accepts every one of these (checked first)."""
    bad = copy.deepcopy(serve_config)
    app = bad["applications"][0]
    target = {"top": bad, "deployment": app["deployments"][0],
              "autoscaling": app["deployments"][0]["autoscaling_config"],
              "env": app["runtime_env"]["env_vars"]}[where]
    target.update(mistake)
    ServeDeploySchema.model_validate(bad)
    if error == "unknown":
        assert unknown_keys(ServeDeploySchema, bad) != []
    with pytest.raises((AssertionError, TypeError, ValueError)):
        check_serve_config(bad)


def test_serve_env_vars_are_cutfarm_settings(serve_config: dict[str, Any]) -> None:
    app = serve_config["applications"][0]
    env = app["runtime_env"]["env_vars"]
    source = inspect.getsource(settings_module)
    for name in env:
        assert name.startswith("CUTFARM_") and f'"{name}"' in source, f"{name} is not a setting"
    for name in SECRET_NAMES:
        assert name not in env, f"{name} is a secret: it belongs in the node's environment"
    settings = Settings.from_env(env)
    assert [str(p) for p in settings.root_paths] == [MEDIA]
    assert settings.port == serve_config["http_options"]["port"]


def test_serve_import_path_and_deployments(serve_config: dict[str, Any]) -> None:
    app_cfg = serve_config["applications"][0]
    module, _, attr = app_cfg["import_path"].partition(":")
    if importlib.util.find_spec(module) is None:
        pytest.skip("serve_app.app not present yet")
    from ray._common.utils import import_attr
    from ray.serve import Application
    from ray.serve._private.build_app import build_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        app = import_attr(f"{module}:{attr}")
    assert isinstance(app, Application)
    built = build_app(app, name=app_cfg["name"])
    names = {d.name for d in built.deployments}
    for dep in app_cfg["deployments"]:
        assert dep["name"] in names, f"no deployment {dep['name']!r} in {sorted(names)}"


# --------------------------------------------------------------------------- KubeRay


def _pod_specs(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    spec = rayservice["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def test_rayservice_embeds_the_serve_config(rayservice: dict[str, Any],
                                             serve_config: dict[str, Any]) -> None:
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert embedded == serve_config
    assert embedded["applications"] == serve_config["applications"]


def test_rayservice_required_fields(rayservice: dict[str, Any], ray_pin: str) -> None:
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["metadata"]["name"]
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray_pin
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"]
    assert cluster["workerGroupSpecs"]
    for group in [head, *cluster["workerGroupSpecs"]]:
        # KubeRay's CRD types these as map[string]string: a bare number is rejected.
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), params
        validate_node_label_syntax(group.get("labels", {}))
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["maxReplicas"] > 0
        assert group["template"]["spec"]["containers"]


def test_rayservice_media_volume_and_secrets(rayservice_docs: list[dict[str, Any]],
                                             rayservice: dict[str, Any]) -> None:
    claims = {d["metadata"]["name"]: d for d in rayservice_docs
              if d.get("kind") == "PersistentVolumeClaim"}
    for pod in _pod_specs(rayservice):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        (ray_container,) = [c for c in pod["containers"] if c["name"].startswith("ray-")]
        mounts = {m["mountPath"]: m["name"] for m in ray_container.get("volumeMounts", [])}
        claim = volumes[mounts[MEDIA]]["persistentVolumeClaim"]["claimName"]
        assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]
        env = {e["name"]: e for e in ray_container.get("env", [])}
        assert "secretKeyRef" in env["CUTFARM_API_TOKEN"]["valueFrom"]
        assert env.get("RAY_AUTH_MODE", {}).get("value", "token") != "disabled"


# --------------------------------------------------------------------------- compose

_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def with_defaults(value: Any) -> Any:
    """What compose makes of a value when only the required variables are set."""
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        return arg if op in (":-", "-") else f"<{name}>"

    return _VAR.sub(sub, value)


def test_compose_ray_services(compose: dict[str, Any], serve_config: dict[str, Any]) -> None:
    services = compose["services"]
    serve_env = serve_config["applications"][0]["runtime_env"]["env_vars"]
    for name in ("ray-head", "ray-worker"):
        svc = services[name]
        assert "image" in svc or "build" in svc, name
        assert any(str(v).endswith(f":{MEDIA}") for v in svc["volumes"]), name
        assert svc["healthcheck"]["test"], name
        env = svc["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), "token must be required"
        assert env["CUTFARM_API_TOKEN"].startswith("${CUTFARM_API_TOKEN:?")
        # The entry point deploys the node's own values of these (see test_compose_serve_app_...).
        from_node = str(env.get("CUTFARM_SERVE_ENV_FROM_NODE", "")).split(",")
        for key, value in env.items():
            if key in serve_env and key not in from_node:
                assert with_defaults(value) == serve_env[key], key
        Settings.from_env({k: str(with_defaults(v)) for k, v in env.items()})
    assert services["ray-head"]["command"] == ["head"]
    assert services["ray-worker"]["command"] == ["worker"]
    assert int(with_defaults(services["ray-worker"]["deploy"]["replicas"])) >= 2
    for port in services["ray-head"]["ports"]:
        assert with_defaults(port).startswith("127.0.0.1:"), port
    build = services["ray-head"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_compose_object_store(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "minio" in services["minio"]["image"]
    assert services["minio"]["healthcheck"]["test"]
    init = services["minio-init"]
    assert "/mc:" in init["image"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb" in " ".join(init["command"])
    head_env = services["ray-head"]["environment"]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        assert key in head_env


# -- MinIO as the compose cluster's media root ---------------------------------------------

_COMPOSE_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")
#: A docker/.env with the required values only (the ${...:?} ones).
DOTENV = {"RAY_AUTH_TOKEN": "ray-token-value", "CUTFARM_API_TOKEN": "api-token-value",
          "CUTFARM_S3_ACCESS_KEY": "cutfarm-key", "CUTFARM_S3_SECRET_KEY": "s3-secret-value",
          "MINIO_ROOT_USER": "admin", "MINIO_ROOT_PASSWORD": "root-password-value"}
NODES = ("ray-head", "ray-worker")


def interpolate(value: Any, dotenv: dict[str, str]) -> Any:
    """Compose's interpolation of a value (${X}, ${X:-d}, ${X-d}, ${X:?m}, $X, $$)."""
    if isinstance(value, dict):
        return {k: interpolate(v, dotenv) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, dotenv) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg, bare = m.groups()
        given = dotenv.get(name or bare)
        if (op == ":?" and not given) or (op == "?" and given is None):
            raise AssertionError(f"compose would stop: {arg}")
        if (op == ":-" and not given) or (op == "-" and given is None):
            return str(arg)
        return given or ""

    return _COMPOSE_VAR.sub(sub, value)


def node_env(compose: dict[str, Any], service: str, dotenv: dict[str, str]) -> dict[str, str]:
    env = interpolate(compose["services"][service]["environment"], dotenv)
    return {k: str(v) for k, v in env.items()}


def created_buckets(compose: dict[str, Any], dotenv: dict[str, str]) -> list[str]:
    """The buckets minio-init's script makes, its variables expanded as its shell would."""
    init = compose["services"]["minio-init"]
    env = {k: str(v) for k, v in interpolate(init["environment"], dotenv).items()}
    script = "\n".join(interpolate(init["command"], dotenv))
    script = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), script)
    made = re.findall(r"^\s*mc mb (.*)$", script, re.M)
    for line in made:
        assert "--ignore-existing" in line, "a second `up` must not fail on the bucket"
    return [re.search(r"\blocal/([^\s\"'/]+)", line).group(1)  # type: ignore[union-attr]
            for line in made]


@pytest.mark.parametrize("bucket", [None, "studio-cams"])
def test_compose_nodes_read_sources_from_the_bucket_minio_init_creates(
        compose: dict[str, Any], bucket: str | None) -> None:
    """Default or set in docker/.env, the bucket the nodes read is the one that is made."""
    from render.objectstore import S3Location

    dotenv = {**DOTENV, **({"CUTFARM_S3_BUCKET": bucket} if bucket else {})}
    made = created_buckets(compose, dotenv)
    assert len(made) == 1 and made[0] == (bucket or made[0]), made
    for service in NODES:
        settings = Settings.from_env(node_env(compose, service, dotenv))
        first = settings.media_roots[0].path
        assert isinstance(first, S3Location), f"{service}: the first media root is {first}"
        assert first.bucket == made[0], service
        assert first.prefix, "sources/ and the other objects should not share the bucket root"


def test_compose_nodes_start_after_the_bucket_exists(compose: dict[str, Any]) -> None:
    services = compose["services"]
    init = services["minio-init"]
    for service in NODES:
        condition = services[service]["depends_on"]["minio-init"]["condition"]
        assert condition == "service_completed_successfully", service
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["minio"]["healthcheck"]["test"]
    assert init.get("restart", "no") == "no", "a one-shot"
    # A failing mc command must fail the service (so that the nodes do not start).
    shell, flags = init["entrypoint"][:2]
    assert shell.endswith("sh") and re.fullmatch(r"-[a-z]*e[a-z]*", flags), init["entrypoint"]
    for port in services["minio"]["ports"]:
        assert with_defaults(port).startswith("127.0.0.1:"), port


def test_compose_s3_configuration_reaches_boto3(compose: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """The nodes' AWS_* make boto3 talk to the minio service with minio-init's access key."""
    import os
    from urllib.parse import parse_qs, urlsplit

    from render.objectstore import clear_clients, new_client

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    init_env = interpolate(compose["services"]["minio-init"]["environment"], DOTENV)
    for service in NODES:
        for key, value in node_env(compose, service, DOTENV).items():
            if key.startswith("AWS_"):
                monkeypatch.setenv(key, value)
        clear_clients()
        url = new_client().generate_presigned_url(
            "get_object", Params={"Bucket": "b", "Key": "k"}, ExpiresIn=60)
        parts = urlsplit(url)
        assert parts.hostname in compose["services"], f"{service}: {parts.hostname}"
        minio_ports = [str(p).rsplit(":", 1)[-1] for p in compose["services"]["minio"]["ports"]]
        assert str(parts.port) in minio_ports, url
        credential = parse_qs(parts.query)["X-Amz-Credential"][0]
        assert credential.split("/")[0] == init_env["CUTFARM_S3_ACCESS_KEY"], service
    clear_clients()


def test_compose_exports_stay_on_the_shared_volume(compose: dict[str, Any]) -> None:
    """A download from a bucket redirects to a URL signed for the nodes' endpoint, a compose
    service name that a browser on the host cannot resolve: the exports stay in the media
    volume, mounted on every node, and downloads stream through the API."""
    endpoint = node_env(compose, "ray-head", DOTENV)["AWS_ENDPOINT_URL_S3"]
    host = re.match(r"https?://([^:/]+)", endpoint)
    assert host and host.group(1) in compose["services"], endpoint
    for service in NODES:
        export_root = Settings.from_env(node_env(compose, service, DOTENV)).export_root
        assert isinstance(export_root, Path) and export_root.is_relative_to(MEDIA), service
        assert any(str(v).endswith(f":{MEDIA}") for v in compose["services"][service]["volumes"])


def test_compose_sets_no_variable_nothing_reads(compose: dict[str, Any]) -> None:
    from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES
    from botocore.credentials import EnvProvider
    from pydantic import AliasChoices

    read_by_boto = {EnvProvider.ACCESS_KEY, EnvProvider.SECRET_KEY, *EnvProvider.TOKENS,
                    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"}
    for _, env_names, *_ in BOTOCORE_DEFAUT_SESSION_VARIABLES.values():
        if env_names:
            read_by_boto |= {env_names} if isinstance(env_names, str) else set(env_names)
    settings = {c for f in Settings.model_fields.values()
                if isinstance(f.validation_alias, AliasChoices)
                for c in f.validation_alias.choices if isinstance(c, str)}
    settings |= {f"{n}_FILE" for n in settings_module.SECRET_VARIABLES}
    entrypoint = (DOCKER / "entrypoint.sh").read_text(encoding="utf-8")
    for service in NODES:
        for key in compose["services"][service]["environment"]:
            if key.startswith("AWS_"):
                assert key in read_by_boto, f"{service}: boto3 does not read {key}"
            else:
                assert key in settings or re.search(rf"\b{key}\b", entrypoint), \
                    f"{service}: neither cutfarm's settings nor the entry point read {key}"


def entrypoint_serve_config(env: dict[str, str],
                            tmp_path: Path) -> subprocess.CompletedProcess[str]:
    run_env = {**env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
               "HOME": str(tmp_path), "CUTFARM_SERVE_CONFIG": str(DOCKER / "serve-config.yaml"),
               "CUTFARM_DEPLOY_CONFIG": str(tmp_path / "deploy.yaml")}
    return subprocess.run(["bash", str(DOCKER / "entrypoint.sh"), "serve-config"], env=run_env,
                          capture_output=True, text=True, timeout=60)


def test_compose_serve_app_gets_the_nodes_media_roots(compose: dict[str, Any],
                                                      serve_config: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """serve-config.yaml (shared with AWS and KubeRay) says /data/media and its runtime_env
    wins for the Serve app: the head deploys it with the node's own values instead."""
    env = node_env(compose, "ray-head", DOTENV)
    names = env["CUTFARM_SERVE_ENV_FROM_NODE"].split(",")
    serve_env = serve_config["applications"][0]["runtime_env"]["env_vars"]
    differing = {k for k in serve_env if k in env and env[k] != serve_env[k]}
    assert "CUTFARM_MEDIA_ROOTS" in differing and differing <= set(names)
    done = entrypoint_serve_config(env, tmp_path)
    assert done.returncode == 0, done.stderr
    for secret in DOTENV.values():
        assert secret not in done.stdout
    deployed = yaml.safe_load(done.stdout)
    check_serve_config(deployed)
    app_env = dict(deployed["applications"][0]["runtime_env"]["env_vars"])
    assert {n: app_env[n] for n in names} == {n: env[n] for n in names}
    # What the Serve app sees (runtime_env over the node's env) is what the node sees.
    app = Settings.from_env({**env, **app_env})
    node = Settings.from_env(env)
    assert (app.media_roots, app.export_root) == (node.media_roots, node.export_root)
    # Apart from those, the deployed config is serve-config.yaml.
    original = copy.deepcopy(serve_config)
    for doc in (deployed, original):
        for name in names:
            doc["applications"][0]["runtime_env"]["env_vars"].pop(name, None)
    assert deployed == original
    # Without the variable (ray-cluster.yaml, a plain image) the config goes out as it is.
    env.pop("CUTFARM_SERVE_ENV_FROM_NODE")
    plain = entrypoint_serve_config(env, tmp_path)
    assert plain.returncode == 0 and yaml.safe_load(plain.stdout) == serve_config


@pytest.mark.parametrize("names", ["CUTFARM_API_TOKEN", "CUTFARM_WEBHOOK_SECRET_FILE",
                                   "AWS_SECRET_ACCESS_KEY", "CUTFARM_EXPORT_ROOT"])
def test_entrypoint_copies_no_secret_or_unset_variable_into_the_serve_config(
        names: str, tmp_path: Path) -> None:
    secret_file = tmp_path / "webhook"
    secret_file.write_text("webhook-secret-value", encoding="utf-8")
    env = {"CUTFARM_API_TOKEN": "api-token-value", "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
           "CUTFARM_WEBHOOK_SECRET_FILE": str(secret_file),
           "CUTFARM_SERVE_ENV_FROM_NODE": f"CUTFARM_MEDIA_ROOTS,{names}",
           "CUTFARM_MEDIA_ROOTS": "s3://cutfarm/media"}
    done = entrypoint_serve_config(env, tmp_path)
    assert done.returncode == 64, done.stderr
    assert names in done.stderr
    for secret in ("api-token-value", "aws-secret-value", "webhook-secret-value"):
        assert secret not in done.stdout + done.stderr
    assert not (tmp_path / "deploy.yaml").exists()


def test_s3_demo_uploads_where_the_cluster_looks(aws_env: None, tmp_path: Path) -> None:
    """`cutfarm-s3-demo --upload-only`: its config's names resolve to the uploaded objects."""
    import json
    import os

    from render.objectstore import S3Location, find_source, s3_client

    s3_client().create_bucket(Bucket="demo-cams")
    script = [sys.executable, str(DOCKER / "s3_demo.py"), "--upload-only"]
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "CUTFARM_MEDIA_ROOTS": f"s3://demo-cams/media,{tmp_path}",
           "CUTFARM_EXPORT_ROOT": str(tmp_path / "exports")}
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["sources"]
    for source in config["sources"]:
        found = find_source(source["filePath"], [S3Location("demo-cams", "media")])
        assert found.ref.key == f"media/sources/{source['filePath']}" and found.size > 0
    assert not (tmp_path / "sources").exists(), "the cameras belong in the bucket"
    # No bucket among the media roots: a message, before any camera is made.
    env["CUTFARM_MEDIA_ROOTS"] = str(tmp_path)
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "s3://" in done.stderr, done.stderr


def test_no_ray_auth_disabled_anywhere() -> None:
    for path in (DOCKER / "compose.yaml", DOCKER / "kuberay-rayservice.yaml",
                 ROOT / "ray-cluster.yaml", DOCKER / "Dockerfile"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"RAY_AUTH_MODE\W+disabled", text), path.name


# --------------------------------------------------------------------------- image


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def copy_sources() -> list[str]:
    sources = []
    for word, args in dockerfile():
        tokens = args.split()
        if word != "COPY" or any(t.startswith("--from") for t in tokens):
            continue
        paths = [t for t in tokens if not t.startswith("--")]
        sources += [p.rstrip("/") for p in paths[:-1]]
    return sources


def test_image_matches_pyproject(pyproject: dict[str, Any], ray_pin: str) -> None:
    froms = [args for word, args in dockerfile() if word == "FROM"]
    py = re.search(r"(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert py
    assert froms == [f"rayproject/ray:{ray_pin}-py{py.group(1)}{py.group(2)}-cpu"]


def test_image_installs_this_repo_with_pip(pyproject: dict[str, Any]) -> None:
    installs = [args for word, args in dockerfile()
                if word == "RUN" and re.search(r"\bpip\d? install\b", args)]
    assert len(installs) == 1, "one pip install: the repo, requirements from pyproject.toml"
    command = re.split(r"&&|;", installs[0].split("pip install", 1)[1])[0].split()
    assert [t for t in command if not t.startswith("-")] == ["."]
    assert not {"-r", "--requirement", "-e", "--editable"} & set(command)
    sources = copy_sources()
    packages = pyproject["tool"]["setuptools"]["packages"]
    for needed in ["pyproject.toml", pyproject["project"]["readme"], *packages]:
        assert needed in sources, f"{needed} is not copied into the image"


def test_dockerignore_lets_the_copied_files_through(pyproject: dict[str, Any]) -> None:
    lines = [line.strip() for line in
             (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()]
    patterns = [p for p in lines if p and not p.startswith("#")]
    assert patterns[0] == "*", "allow-list: exclude everything first"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for source in copy_sources():
        assert any(source == a or source.startswith(f"{a}/") for a in allowed), source
    for secret in (".env", ".venv", ".git"):
        assert secret not in allowed


def test_image_runtime_settings() -> None:
    steps = dockerfile()
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "must run as a non-root user"
    env = " ".join(args for word, args in steps if word == "ENV")
    assert f"CUTFARM_MEDIA_ROOTS={MEDIA}" in env
    assert "RAY_AUTH_MODE=token" in env
    assert any(word == "VOLUME" and MEDIA in args for word, args in steps)
    exposed = {p for word, args in steps if word == "EXPOSE" for p in args.split()}
    assert {"8000", "8265", "6379"} <= exposed
    (health,) = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "cutfarm-healthcheck" in health
    assert "/api/health" in (DOCKER / "healthcheck.py").read_text(encoding="utf-8")
    (entry,) = [args for word, args in steps if word == "ENTRYPOINT"]
    assert "cutfarm-entrypoint" in entry


def test_entrypoint_parses() -> None:
    script = DOCKER / "entrypoint.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(script)], check=True)


def test_entrypoint_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_AUTH_MODE": "token",
           "CUTFARM_ROLE_FILE": str(tmp_path / "role")}
    for role in ("head", "worker"):
        done = subprocess.run(["bash", str(DOCKER / "entrypoint.sh"), role], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 64, done.stderr
        assert "no token" in done.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/api/health"
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}' if ok else b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_script(health_server: str, tmp_path: Path) -> None:
    def run(*args: str, url: str) -> int:
        env = {"CUTFARM_HEALTH_URL": url, "CUTFARM_RAYLET_HEALTH_URL": url,
               "CUTFARM_ROLE_FILE": str(tmp_path / "role")}
        return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), *args],
                              env=env, capture_output=True, timeout=30).returncode

    assert run("head", url=f"{health_server}/api/health") == 0
    assert run("head", url=f"{health_server}/other") == 1
    assert run("worker", url=f"{health_server}/api/health") == 1  # no "success"
    assert run(url=f"{health_server}/other") == 0  # no role: a one-off command container


def test_one_image_everywhere(cluster_yaml: dict[str, Any], rayservice: dict[str, Any]) -> None:
    image = cluster_yaml["docker"]["image"]
    assert not image.startswith("rayproject/"), "the cluster must run the cutfarm image"
    assert re.fullmatch(r"[a-z0-9./_-]+(:[\w.-]+)?", image), "image names are lowercase"
    for pod in _pod_specs(rayservice):
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["image"] == image
