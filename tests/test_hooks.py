"""The plugin contract stays honest: every hookspec is documented with its exact arguments in
docs/hooks.md and has a test; the hooks without a test elsewhere are tested here with mock plugins."""

from __future__ import annotations

import inspect
import json
import re
from functools import partial
from pathlib import Path

import pytest

from harness import hookspecs
from harness.hookspecs import hookimpl
from harness.models import ModelSource
from harness.runner import run
from harness.templates import Templates
from harness_plugins.models.tiny import VERSION, build

ROOT = Path(__file__).resolve().parent.parent
SPECS = {
    name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "harness_spec")
}


def test_the_contract_has_the_hooks_this_page_documents():
    assert sorted(SPECS) == [
        "after_edit",
        "after_run",
        "before_edit",
        "editor_defaults",
        "register_architectures",
        "register_editors",
        "register_metrics",
        "register_models",
        "register_tasks",
        "register_training_sets",
        "template_dirs",
    ]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_hook_is_documented_with_its_exact_arguments(name):
    documented = re.findall(r"^### `(\w+)\(([^)]*)\)", (ROOT / "docs" / "hooks.md").read_text(), re.MULTILINE)
    arguments = dict(documented)
    assert name in arguments, f"docs/hooks.md has no section for {name}"
    documented_arguments = arguments[name].split(", ") if arguments[name] else []
    assert documented_arguments == list(inspect.signature(SPECS[name]).parameters)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_hook_has_a_test_implementing_it(name):
    implementing = [
        path.name
        for path in (ROOT / "tests").glob("*.py")
        if re.search(rf"def {name}\(", path.read_text(encoding="utf-8"))
    ]
    assert implementing, f"no test implements the hook {name}"


class Observer:
    """Implements the remaining hooks: a model source, a metric, a template directory, after_run."""

    def __init__(self, template_dir: Path):
        self.template_dir = template_dir
        self.runs: list[tuple[dict, object]] = []

    @hookimpl
    def register_models(self, register):
        register(
            ModelSource(
                "test-alias",
                "tiny-llama under another name",
                lambda cache: build("tiny-llama", cache / "tiny" / f"tiny-llama-v{VERSION}"),
            )
        )

    @hookimpl
    def register_metrics(self, register):
        register("verbatim", lambda answer_ids, expected_ids, answer, expected: float(answer == expected))

    @hookimpl
    def template_dirs(self):
        return [str(self.template_dir)]

    @hookimpl
    def after_run(self, results, run):
        self.runs.append((results, run))


def test_models_metrics_templates_and_after_run_come_from_plugins(tmp_path, register_plugin, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    templates = tmp_path / "templates" / "testing"
    templates.mkdir(parents=True)
    (templates / "shout.jinja").write_text("Q: {{ question | upper }}", encoding="utf-8")
    observer = register_plugin(Observer(tmp_path / "templates"))
    assert "testing/shout.jinja" in Templates().environment.list_templates()
    results = run(
        editor="none",
        task="bizsre_en_zh",
        model="test-alias",
        limit=2,
        overrides={"template": "testing/shout.jinja"},
        output_dir=str(tmp_path / "out"),
        progress=False,
    )
    assert results["model"]["spec"] == "test-alias"
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    for sample in samples:
        for probe in sample["probes"]:
            assert probe["prompt"].startswith("Q: ") and probe["prompt"] == probe["prompt"].upper()
            assert probe["post_scores"]["verbatim"] == float(probe["post"] == probe["reference"])
    reliability = [sample["probes"][0] for sample in samples]
    expected = 100.0 * sum(p["post"] == p["reference"] for p in reliability) / len(reliability)
    assert results["results"]["bizsre_en_zh"]["reliability.en.verbatim"] == expected
    assert len(observer.runs) == 1
    seen, context = observer.runs[0]
    assert seen is results and context.output_dir == tmp_path / "out"


class TunedDefaults:
    """A plugin shipping per-model hyper-parameters for an editor it did not write."""

    def __init__(self, layer: int):
        self.layer = layer

    @hookimpl
    def editor_defaults(self, editor, model):
        return {"layer": self.layer, "steps": 7} if (editor, model) == ("rome", "org/tuned-model") else None


def test_editor_defaults_sit_between_the_dataclass_and_the_toml_files(register_plugin, tmp_path):
    from harness import plugins
    from harness.config import resolve
    from harness_plugins.methods.rome.editor import ROMEHparams

    register_plugin(TunedDefaults(layer=3))
    defaults = partial(plugins.editor_defaults, "rome")
    resolved = resolve(ROMEHparams, "rome", {"model": "org/tuned-model"}, {}, None, defaults)
    assert (resolved.hparams.layer, resolved.hparams.steps) == (3, 7)
    assert resolved.sources["plugin_defaults"] == ["layer", "steps"]
    assert resolve(ROMEHparams, "rome", {"model": "other"}, {}, None, defaults).hparams.layer == 5
    assert (
        resolve(
            ROMEHparams, "rome", {"model": "org/tuned-model"}, {"layer": "4"}, None, defaults
        ).hparams.layer
        == 4
    )
    toml = tmp_path / "harness.toml"
    toml.write_text('[models."org/tuned-model".rome]\nlayer = 2\n')
    from_toml = resolve(ROMEHparams, "rome", {"model": "org/tuned-model"}, {}, str(toml), defaults)
    assert (from_toml.hparams.layer, from_toml.hparams.steps) == (2, 7)
    register_plugin(TunedDefaults(layer=9))
    with pytest.raises(ValueError, match="two plugins set different defaults of rome.layer"):
        plugins.editor_defaults("rome", "org/tuned-model")
