"""docker-compose.yml: the services it promises, flags the installed Flower accepts, and the same
command lines as ``clipfed.deploy.cluster`` builds (which the network-namespace test runs); the
fixes that bringing it up found (tests/test_docker_compose.py, ``make test-docker``) stay in; the
GPU override (docker/docker-compose.gpu.yml) differs from it only where it must."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from clipfed.deploy.cluster import superexec_command, superlink_command, supernode_command
from clipfed.engines.launch import _bin

ROOT = Path(__file__).resolve().parents[1]
FLOWER_VERSION = "1.41.0"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


@pytest.fixture(scope="module")
def gpu_services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((ROOT / "docker" / "docker-compose.gpu.yml").read_text())["services"]


def default(value: str) -> str:
    """``${VAR:-default}`` as compose resolves it with VAR unset (other text unchanged)."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-(.*)\}", value)
    return match.group(1) if match else value


@cache
def accepted_flags(binary: str) -> frozenset[str]:
    out = subprocess.run([_bin(binary), "--help"], capture_output=True, text=True, timeout=120, check=False)
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout + out.stderr))


def binary_of(service: dict[str, Any]) -> str:
    """The entrypoint of the service's image: flwr/<x> images run flower-<x>; ours runs SuperExec."""
    image = default(service["image"])
    return {"flwr/superlink": "flower-superlink", "flwr/supernode": "flower-supernode"}.get(
        image.split(":")[0], "flower-superexec")


def node_config(command: list[str]) -> dict[str, str]:
    text = command[command.index("--node-config") + 1]
    return dict(pair.split("=", 1) for pair in text.split())


def test_services_are_a_superlink_serverapp_superexec_and_nodes_with_their_superexecs(
        services: dict[str, dict[str, Any]]) -> None:
    nodes = sorted(n for n in services if n.startswith("supernode-"))
    assert {"superlink", "superexec-serverapp"} <= set(services) and len(nodes) >= 3
    assert services["superlink"]["image"] == f"${{FLWR_SUPERLINK_IMAGE:-flwr/superlink:{FLOWER_VERSION}}}"
    for node in nodes:
        assert services[node]["image"] == f"${{FLWR_SUPERNODE_IMAGE:-flwr/supernode:{FLOWER_VERSION}}}"
        assert f"superexec-clientapp-{node.removeprefix('supernode-')}" in services
    roles = [node_config(services[n]["command"])["role"].strip('"') for n in nodes]
    assert roles.count("malicious") >= 1 and roles.count("benign") >= 2
    partitions = sorted(int(node_config(services[n]["command"])["partition-id"]) for n in nodes)
    assert partitions == list(range(len(nodes)))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG SUPEREXEC_IMAGE=flwr/superexec:{FLOWER_VERSION}\nFROM ${{SUPEREXEC_IMAGE}}" in dockerfile
    for name, service in services.items():
        if name.startswith("superexec-"):
            assert service["image"] == "clipfed-app:latest" and service["build"]["context"] == "."
            assert default(service["build"]["args"]["SUPEREXEC_IMAGE"]) == f"flwr/superexec:{FLOWER_VERSION}"
            data = [v for v in service["volumes"] if isinstance(v, dict) and v["target"] == "/data"]
            # Long syntax: a missing host folder stops `up` instead of being created empty.
            assert data == [{"type": "bind", "source": "${CLIPFED_DATA_DIR:-../shared/assets}",
                             "target": "/data", "read_only": True}]


def test_what_bringing_it_up_found_stays_fixed(services: dict[str, dict[str, Any]]) -> None:
    """Found by tests/test_docker_compose.py; the images run as the non-root user app (49999)."""
    # A named volume mounted where the image has no folder is root's: the SuperLink (user app)
    # could not create its database there and exited. Its state is in memory.
    assert "volumes" not in services["superlink"] and "--database" not in services["superlink"]["command"]
    # Start order: the SuperLink answers /health before anything that dials it starts.
    assert "/health" in " ".join(services["superlink"]["healthcheck"]["test"])
    for name, service in services.items():
        if name.startswith("supernode-") or name == "superexec-serverapp":
            assert service["depends_on"] == {"superlink": {"condition": "service_healthy"}}, name
    # The ServerApp writes ./runs on the host (as CLIPFED_UID, default root) and keeps its caches in
    # the `cache` volume, which starts as the image's /cache (open to any user).
    server = services["superexec-serverapp"]
    assert server["user"] == "${CLIPFED_UID:-0}:${CLIPFED_GID:-0}"
    assert {"./runs:/runs", "cache:/cache"} <= {v for v in server["volumes"] if isinstance(v, str)}
    assert "chmod 1777 /cache /runs" in (ROOT / "Dockerfile").read_text()
    assert services["superlink"]["ports"] == ["127.0.0.1:${CLIPFED_SUPERLINK_PORT:-9091}:9091"]


def test_standin_images_run_what_the_official_ones_run() -> None:
    standin = (ROOT / "docker" / "flwr-standin.Dockerfile").read_text()
    for image in ("superlink", "supernode", "superexec"):
        assert f"FROM base AS {image}\nENTRYPOINT [\"flower-{image}\"]" in standin
    assert "--uid 49999" in standin and "USER app" in standin


def test_gpu_override_adds_devices_and_the_device_node_config(
        services: dict[str, dict[str, Any]], gpu_services: dict[str, dict[str, Any]]) -> None:
    apps = {n for n in services if n.startswith("superexec-")}
    nodes = {n for n in services if n.startswith("supernode-")}
    assert set(gpu_services) == apps | nodes
    for name in apps:
        devices = gpu_services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}], name
        assert gpu_services[name]["image"] != services[name]["image"]  # a CUDA build, not the CPU one
    for name in nodes:
        base, gpu = services[name]["command"], gpu_services[name]["command"]
        at = base.index("--node-config") + 1
        assert gpu == [*base[:at], base[at] + ' device="cuda"', *base[at + 1:]], name


def test_every_flag_is_accepted_by_the_installed_flower(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        binary = binary_of(service)
        flags = {token for token in service["command"] if token.startswith("--")}
        unknown = flags - accepted_flags(binary)
        assert not unknown, f"{name}: {binary} does not accept {sorted(unknown)}"


def test_compose_commands_are_the_ones_the_namespace_test_runs(services: dict[str, dict[str, Any]]) -> None:
    """Same builder, same arguments but addresses (service names instead of namespace IPs)."""
    assert services["superlink"]["command"] == superlink_command(port=9091, isolation="process")[1:]
    assert services["superexec-serverapp"]["command"] == superexec_command("superlink:9091")[1:]
    for name, service in services.items():
        if name.startswith("supernode-"):
            config = {k: v.strip('"') for k, v in node_config(service["command"]).items()}
            typed = {k: int(v) if v.isdigit() else v for k, v in config.items()}
            assert service["command"] == supernode_command(
                "superlink:9091", typed, isolation="process", host="0.0.0.0")[1:]
            index = name.removeprefix("supernode-")
            assert services[f"superexec-clientapp-{index}"]["command"] == superexec_command(f"{name}:9094")[1:]
