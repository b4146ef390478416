"""Shared fixtures: an isolated harness cache, tiny random models, the real demo model and data."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from harness import plugins
from harness.models import load_model
from harness.runner import run

# one thread per xdist worker (two workers on the 2-core CI machine), two when run without workers
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``upstream`` run only in .ci/run-latest (HARNESS_UPSTREAM=1)."""
    if os.environ.get("HARNESS_UPSTREAM") == "1":
        return
    skip = pytest.mark.skip(reason="upstream: runs in .ci/run-latest (HARNESS_UPSTREAM=1)")
    for item in items:
        if "upstream" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def harness_cache(tmp_path_factory) -> Path:
    """Tests get their own cache, except for converted real models (minutes to rebuild)."""
    path = tmp_path_factory.mktemp("harness-cache")
    shared = Path(os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache" / "kedit-harness")
    (shared / "models").mkdir(parents=True, exist_ok=True)
    (path / "models").symlink_to(shared / "models", target_is_directory=True)
    os.environ["HARNESS_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(harness_cache):
    return load_model("tiny-llama", plugins.models())


@pytest.fixture(scope="session")
def tiny_gpt2(harness_cache):
    return load_model("tiny-gpt2", plugins.models())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared Bi-ZsRE data; CI sets HARNESS_DATA_DIR, and a missing one fails loudly."""
    raw = os.environ.get("HARNESS_DATA_DIR")
    if not raw or not (Path(raw) / "bizsre" / "bizsre_test_enzh_743.json").is_file():
        pytest.fail(
            f"HARNESS_DATA_DIR={raw!r} does not hold bizsre/bizsre_test_enzh_743.json; "
            "point it at the shared data (CI uses ../shared/data)"
        )
    return Path(raw)


@pytest.fixture(scope="session")
def gemma(harness_cache):
    """The packaged demo model (converted once into the user's cache)."""
    try:
        return load_model("gemma3-270m", plugins.models())
    except Exception as error:  # noqa: BLE001 - turn a missing package into a clear failure
        pytest.fail(f"demo model gemma3-270m unavailable: {error}")


@pytest.fixture(scope="session")
def demo_run(gemma, data_dir, tmp_path_factory) -> Callable[..., tuple[dict, Path]]:
    """``run`` on the demo model and the shared data, once per distinct set of options in a session
    (each xdist worker keeps its own): the end-to-end and bfloat16 tests ask for the same float32
    runs, a minute each. Returns a copy of the results and the run's output directory (shared: read
    it, never write it)."""
    done: dict[str, tuple[dict, Path]] = {}

    def run_once(**options) -> tuple[dict, Path]:
        key = json.dumps(options, sort_keys=True)
        if key not in done:
            out = tmp_path_factory.mktemp("demo-run")
            results = run(
                model="gemma3-270m", data_dir=str(data_dir), output_dir=str(out), progress=False, **options
            )
            done[key] = (results, out)
        results, out = done[key]
        return copy.deepcopy(results), out

    return run_once


@pytest.fixture
def register_plugin():
    """Register plugin objects with the harness for one test; unregistered afterwards."""
    plugins.load_plugins()
    registered = []

    def register(plugin):
        plugins.pm.register(plugin)
        registered.append(plugin)
        return plugin

    yield register
    for plugin in registered:
        if plugins.pm.is_registered(plugin):
            plugins.pm.unregister(plugin)


COUNTRIES = [
    "Zorbania",
    "Quellia",
    "Trovik",
    "Malgor",
    "Pentaris",
    "Ulvund",
    "Kessary",
    "Brontavia",
    "Oskelund",
    "Varnhold",
    "Ithmar",
    "Cadrena",
    "Felmoor",
    "Durvana",
    "Sollace",
    "Yrkesh",
    "Hallowen",
    "Nimbrel",
    "Graskov",
    "Tellurin",
    "Avondel",
    "Morwick",
    "Estrava",
    "Ribbonsea",
]
CITIES = ["Ostberg", "Lunaris", "Parvel", "Kirrin", "Dovetta", "Salmund", "Greyfall", "Thessal"]
UNRELATED = [
    ("How many legs does a spider have?", "eight"),
    ("What colour is the sky on a clear day?", "blue"),
    ("Which metal is liquid at room temperature?", "mercury"),
    ("What do bees make?", "honey"),
]


class SyntheticTrainingSet:
    """Invented capital-city facts in the ZsRE shape, for training editors on tiny models."""

    name = "synthetic_en"
    language = "en"
    description = "invented capital cities (tests)"

    def data_files(self, data_dir):
        return [Path(__file__)]

    def examples(self, data_dir):
        from harness.api import TrainingExample

        return [
            TrainingExample(
                prompt=f"The capital of {country} is",
                target=CITIES[i % len(CITIES)],
                subject=country,
                rephrase=f"{country}'s capital city is",
                locality_prompt=UNRELATED[i % len(UNRELATED)][0],
                locality_answer=UNRELATED[i % len(UNRELATED)][1],
                language="en",
            )
            for i, country in enumerate(COUNTRIES)
        ]


@pytest.fixture
def synthetic_training_set(register_plugin):
    from harness.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_training_sets(self, register):
            register(SyntheticTrainingSet())

    register_plugin(Plugin())
    return SyntheticTrainingSet()
