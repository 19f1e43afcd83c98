"""The service image: `bentoml build` from the checkout records the model and requires only what the
service imports, and the service runs with the pipeline, dashboard and test stacks absent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import yaml

from models import config

pytestmark = pytest.mark.slow

NOT_IN_THE_IMAGE = ("dagster", "mlflow", "streamlit", "playwright", "pandera", "pytest", "ruff")
SERVICE_STACK = ("torch", "lightning", "pytorch-forecasting", "bentoml", "pandas", "sqlalchemy", "fastapi",
                 "pydantic-settings", "pyyaml")


def _names(requirements: str) -> set[str]:
    """Distribution names of a requirements file (lowercase, ``_`` as ``-``), options skipped."""
    out = set()
    for line in requirements.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            out.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def test_bentoml_build_records_the_model_and_only_the_service_stack(isolated_env: Path,
                                                                    tiny_checkpoint: Path) -> None:
    from serving import model_store

    model = model_store.import_checkpoint(tiny_checkpoint, {"name": "fleetcast-tft", "version": "3",
                                                            "run_id": "build-run"})
    home = Path(os.environ["BENTOML_HOME"])  # the store BentoML uses in this process, and the build's
    out = subprocess.run([str(Path(sys.executable).with_name("bentoml")), "build", "--output", "tag"],
                         cwd=config.PROJECT_ROOT, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"},
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tag = re.search(r"__tag__:(\S+)", out.stdout)
    assert tag, out.stdout[-2000:]
    name, version = tag[1].split(":")
    bento = home / "bentos" / name / version

    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "serving.service:Fleetcast"
    service_models = [m["tag"] for m in info["services"][0]["models"]]
    assert service_models == [str(model.tag)]  # declared on the service class, resolved to the version
    # the source the service imports, subpackages included (the demo fleet is models/simulator/live.py)
    for module in ("serving/service.py", "models/schema.py", "models/simulator/live.py", "models/simulator/server.py"):
        assert (bento / "src" / module).is_file(), module

    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    names = _names(requirements)
    assert not {n for n in names if n.startswith(NOT_IN_THE_IMAGE)}, sorted(names)
    assert set(SERVICE_STACK) <= names, sorted(names)
    assert "torch==2.13.0" in requirements
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements


LEFT_OUT = ("dagster", "mlflow", "streamlit", "playwright", "pandera", "pyarrow", "matplotlib", "mpl_toolkits",
            "tabulate", "pytest", "_pytest")


def site_packages_without(left_out: tuple[str, ...], farm: Path) -> Path:
    """A site-packages look-alike: links to every installed distribution except ``left_out`` (their
    modules and their metadata), as an install of the service's dependencies alone would have."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    for entry in purelib.iterdir():
        key = entry.name.lower().replace("-", "_")
        if key.startswith(left_out) or entry.suffix == ".pth":
            continue
        (farm / entry.name).symlink_to(entry)
    return farm


SERVE_ONCE = textwrap.dedent("""
    import serving.service  # the module `bentoml serve` imports
    from models import simulator
    from serving.demo_fleet import frame_to_items
    from serving.runtime import ServiceRuntime
    runtime = ServiceRuntime()
    fleet = simulator.LiveFleet(servers=simulator.default_servers(2), seed=1, history_steps=48)
    assert runtime.feed(__import__("json").dumps(frame_to_items(fleet.history())).encode(),
                        "application/json", None).status_code == 200
    assert runtime.engine.refresh() == 2
    print("forecast", runtime.engine.servers_tracked)
    import importlib.util
    print("findable", [m for m in {left_out!r} if importlib.util.find_spec(m) is not None])
""")


def test_the_service_runs_without_the_pipeline_dashboard_and_test_stacks(isolated_env: Path,
                                                                         tiny_checkpoint: Path) -> None:
    """`python -S` on the checkout and a site-packages holding everything but the extras: the module
    `bentoml serve` imports loads, ingests a feed and forecasts with the model."""
    (isolated_env / "site").mkdir()
    farm = site_packages_without(LEFT_OUT, isolated_env / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(config.PROJECT_ROOT), str(farm)]),
           "FLEETCAST_MODEL_PATH": str(tiny_checkpoint), "FLEETCAST_DEMO_FLEET": "0"}
    out = subprocess.run([sys.executable, "-S", "-c", SERVE_ONCE.format(left_out=LEFT_OUT)], cwd=isolated_env,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "findable []" in out.stdout, out.stdout  # the extras really were absent
    assert "forecast 2" in out.stdout, out.stdout
