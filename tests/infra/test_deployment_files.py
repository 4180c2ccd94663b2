"""infra/ and the environment files agree with each other and with the environment the tests run
in: every cluster node must run the Ray, torch and medshards that passed these tests."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)")


def _name(dist: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", dist.split("[")[0]).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in (PROJECT / "constraints.txt").read_text().splitlines():
        if match := _PIN.match(line.strip()):
            pins[_name(match[1])] = match[2]
    return pins


def torch_pair(text: str) -> list[tuple[str, str]]:
    """The ("torch", version), ("torchvision", version) pins a script installs first."""
    return re.findall(r'"(torch|torchvision)==([^"]+)"', text)


def test_the_tests_run_on_exactly_the_locked_versions():
    installed = {_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    pins = locked()
    assert {"ray", "torch", "torchvision", "timm", "webdataset", "pyarrow", "pydicom"} <= pins.keys()
    wrong = {name: (version, installed.get(name)) for name, version in pins.items() if installed.get(name) != version}
    assert not wrong, f"constraints.txt pins (pinned, installed) {wrong}: rebuild .venv (make env) or run scripts/lock.sh"


def test_bootstrap_and_image_install_the_locked_torch_pair_under_the_constraints():
    pins = locked()
    bootstrap = (PROJECT / "scripts" / "bootstrap.sh").read_text()
    dockerfile = (PROJECT / "infra" / "Dockerfile").read_text()
    expected = [("torch", pins["torch"]), ("torchvision", pins["torchvision"])]
    assert torch_pair(bootstrap) == expected and torch_pair(dockerfile) == expected
    assert bootstrap.count("-c constraints.txt") == 2 and "constraints.txt" in bootstrap.split("want=", 1)[1].split("\n")[0]
    assert dockerfile.count("pip install -c constraints.txt") == 2 and "COPY constraints.txt" in dockerfile


def test_the_image_holds_every_package_the_project_ships():
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (PROJECT / "infra" / "Dockerfile").read_text(), re.MULTILINE))
    assert packages and packages == copied, (packages, copied)


def test_cluster_files_run_the_locked_ray_on_one_image_with_shared_shards_and_runs():
    launcher = yaml.safe_load((PROJECT / "infra" / "ray-cluster.yaml").read_text())
    kuberay = yaml.safe_load((PROJECT / "infra" / "kuberay" / "raycluster.yaml").read_text())
    assert kuberay["spec"]["rayVersion"] == locked()["ray"]
    image = launcher["docker"]["image"]
    groups = [kuberay["spec"]["headGroupSpec"], *kuberay["spec"]["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == image
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/shards", "/runs"}
    assert {"-v /shards:/shards", "-v /runs:/runs"} <= set(launcher["docker"]["run_options"])
