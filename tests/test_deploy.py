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
        for key, value in env.items():
            if key in serve_env:
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
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CUTFARM_S3_BUCKET"):
        assert key in head_env


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
