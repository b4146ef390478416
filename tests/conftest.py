"""Shared fixtures: an isolated harness cache, tiny random models, the real demo model and data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from harness import plugins
from harness.models import build_once, load_model
from harness.runner import run
from harness.runtime import Placement

# one thread per xdist worker (two workers on the 2-core CI machine), two when run without workers
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def pytest_collection_modifyitems(config, items):
    """Slow tests first (each xdist worker takes the next test when free, ``--maxschedchunk=1``), so
    the workers end on short tests instead of one finishing a minutes-long run while the other idles;
    tests marked ``upstream`` run only in .ci/run-latest (HARNESS_UPSTREAM=1)."""
    items.sort(key=lambda item: "slow" not in item.keywords)  # stable: file order within each tier
    if os.environ.get("HARNESS_UPSTREAM") == "1":
        return
    skip = pytest.mark.skip(reason="upstream: runs in .ci/run-latest (HARNESS_UPSTREAM=1)")
    for item in items:
        if "upstream" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def built_once(tmp_path_factory) -> Callable[[str, Callable[[Path], None]], Path]:
    """``built_once(name, build)``: the folder ``name`` of this test session, filled by ``build`` once
    for all xdist workers. The workers' base temps sit side by side in the session's, so the first
    worker to ask builds the folder under a lock and the others wait for it and use it (the end-to-end
    runs, wheels and the cache are minutes of work)."""
    base = tmp_path_factory.getbasetemp()
    session = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base

    def folder(name: str, build: Callable[[Path], None]) -> Path:
        path, complete = session / name, session / f"{name}.complete"

        def fill() -> None:
            shutil.rmtree(path, ignore_errors=True)  # what a failed build left
            path.mkdir()
            build(path)
            complete.touch()

        build_once(complete, fill)
        return path

    return folder


@pytest.fixture(scope="session", autouse=True)
def harness_cache(built_once) -> Path:
    """The session's own cache, shared by its workers, except for converted real models (minutes to
    rebuild), which come from the user's cache."""
    shared = Path(os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache" / "kedit-harness")
    (shared / "models").mkdir(parents=True, exist_ok=True)
    path = built_once("harness-cache", lambda p: (p / "models").symlink_to(shared / "models", True))
    os.environ["HARNESS_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(harness_cache):
    return load_model("tiny-llama", plugins.models())


@pytest.fixture(scope="session")
def tiny_llama_bf16(harness_cache):
    """tiny-llama in bfloat16: the dtype path in seconds (tests/test_device_discipline.py)."""
    return load_model("tiny-llama", plugins.models(), Placement(device="cpu", dtype="bfloat16"))


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
def demo_run(gemma, data_dir, built_once) -> Callable[..., tuple[dict, Path]]:
    """``run`` on the demo model and the shared data, once per distinct set of options in a session
    and for all its workers: the end-to-end and bfloat16 tests ask for the same float32 runs, a minute
    each. Returns the results (a fresh copy) and the run's output directory (shared: read it, never
    write it)."""

    def run_once(**options) -> tuple[dict, Path]:
        key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]

        def build(folder: Path) -> None:
            out = folder / "out"
            results = run(
                model="gemma3-270m", data_dir=str(data_dir), output_dir=str(out), progress=False, **options
            )
            (folder / "returned.json").write_text(json.dumps(results), encoding="utf-8")

        folder = built_once(f"demo-run-{key}", build)
        return json.loads((folder / "returned.json").read_text(encoding="utf-8")), folder / "out"

    return run_once


@pytest.fixture(scope="session")
def harness_wheel(built_once) -> Path:
    """A wheel of the harness built from a copy of this checkout, once per session."""
    from test_examples import build_wheel, checkout_copy

    folder = built_once("harness-wheel", lambda out: build_wheel(checkout_copy(out / "source"), out))
    (path,) = folder.glob("kedit_harness-*.whl")
    return path


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
