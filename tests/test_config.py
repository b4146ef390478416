"""Config layering: dataclass defaults < [models."<model>".<editor>] < --set; typed, named errors."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pytest

from harness import plugins
from harness.config import ConfigError, RunConfig, parse_overrides, read_toml_files, resolve


@dataclass(frozen=True)
class MyHparams:
    layer: int = 3
    layers: tuple[int, ...] = (1, 2)
    lr: float = 0.1
    fast: bool = False
    name: str = "default"
    clamp: float | None = None


TOML = """
[run]
probe_batch_size = 4

[models."m".myeditor]
layer = 7
lr = 0.5
layers = [8, 9]

[models."other".myeditor]
layer = 11
"""


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No HARNESS_DATA_DIR from the environment, and no ./harness.toml picked up from the cwd."""
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "user.toml"
    path.write_text(TOML, encoding="utf-8")
    return str(path)


def go(config_file, overrides=None, **cli):
    return resolve(MyHparams, "myeditor", {"model": "m", **cli}, overrides or {}, config_file=config_file)


def test_dataclass_defaults_when_nothing_else(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    resolved = resolve(MyHparams, "myeditor", {"model": "m"}, {}, config_file=str(empty))
    assert resolved.hparams == MyHparams()
    assert resolved.sources == {"plugin_defaults": "none", "per_model_defaults": "none"}
    # packaged defaults still apply to the run
    assert resolved.run.probe_batch_size == 16
    assert resolved.run.answer_mode == "teacher_forced"


def test_per_model_section_beats_dataclass_defaults(config_file):
    resolved = go(config_file)
    assert resolved.hparams == MyHparams(layer=7, layers=(8, 9), lr=0.5, fast=False, name="default")
    assert resolved.sources == {"plugin_defaults": "none", "per_model_defaults": '[models."m".myeditor]'}
    assert resolved.run.model == "m"
    assert resolved.run.probe_batch_size == 4  # user [run] beats the packaged 16


def test_set_beats_per_model_section(config_file):
    resolved = go(config_file, {"layer": "9", "editor.name": "x", "fast": "true"})
    assert resolved.hparams == MyHparams(layer=9, layers=(8, 9), lr=0.5, fast=True, name="x")


def test_per_model_section_follows_the_model(config_file):
    assert go(config_file, model="other").hparams == MyHparams(layer=11)


def test_packaged_defaults_are_read_and_name_no_editor(tmp_path):
    """The packaged harness.toml holds run settings only: the core names no method."""
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    assert resolve(MyHparams, "my", {}, {}, config_file=str(empty)).run.probe_batch_size == 16
    assert set(read_toml_files(str(empty))) == {"run"}


def test_built_in_editors_ship_their_per_model_defaults_through_the_hook(tmp_path):
    from harness_plugins.methods.rome.editor import ROMEHparams

    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    defaults = partial(plugins.editor_defaults, "rome")
    resolved = resolve(ROMEHparams, "rome", {"model": "gemma3-270m"}, {}, str(empty), defaults)
    assert (resolved.hparams.layer, resolved.hparams.stop_loss, resolved.hparams.second_moments) == (
        4,
        0.2,
        True,
    )
    assert resolved.sources == {
        "plugin_defaults": ["contexts_per_length", "layer", "second_moments", "stop_loss"],
        "per_model_defaults": "none",
    }
    assert (
        resolve(
            ROMEHparams, "rome", {"model": "tiny-llama"}, {"layer": "2"}, str(empty), defaults
        ).hparams.layer
        == 2
    )
    assert plugins.editor_defaults("ft-m", "gemma3-270m") == {"layers": (11,)}
    assert plugins.editor_defaults("kn", "gemma3-270m") == {}


def test_unknown_set_key_names_it_and_lists_valid_keys(config_file):
    with pytest.raises(ConfigError) as info:
        go(config_file, {"nonsense": "1"})
    message = str(info.value)
    assert "nonsense" in message
    for valid in ("layer", "layers", "lr", "probe_batch_size", "answer_mode"):
        assert valid in message


def test_unknown_scoped_set_keys(config_file):
    with pytest.raises(ConfigError, match=r"editor\.bogus.*unknown myeditor key") as info:
        go(config_file, {"editor.bogus": "1"})
    assert "'layer'" in str(info.value)
    with pytest.raises(ConfigError, match=r"run\.layer.*unknown run key") as info:
        go(config_file, {"run.layer": "1"})
    assert "'probe_batch_size'" in str(info.value)


def test_ill_typed_value_names_key_and_type(config_file):
    with pytest.raises(ConfigError) as info:
        go(config_file, {"layer": "abc"})
    message = str(info.value)
    assert "layer" in message
    assert "int" in message
    assert "'abc'" in message


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("lr", "fast", ("lr", "float")),
        ("fast", "maybe", ("fast", "true or false")),
        ("layers", "4,x", ("layers", "int")),
        ("probe_batch_size", "many", ("probe_batch_size", "int")),
        ("layer", "1.5", ("layer", "int")),
    ],
)
def test_more_ill_typed_values(config_file, key, value, words):
    with pytest.raises(ConfigError) as info:
        go(config_file, {key: value})
    for word in words:
        assert word in str(info.value)


def test_tuple_fields_parse_comma_lists(config_file):
    assert go(config_file, {"layers": "4,5,6"}).hparams.layers == (4, 5, 6)
    assert go(config_file, {"layers": " 4 , 5 "}).hparams.layers == (4, 5)
    assert go(config_file, {"layers": "7"}).hparams.layers == (7,)
    assert go(config_file, {"layers": ""}).hparams.layers == ()


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("false", False), ("True", True), ("FALSE", False), ("1", True), ("0", False)],
)
def test_bools_parse(config_file, text, value):
    assert go(config_file, {"fast": text}).hparams.fast is value


def test_float_and_optional_fields(config_file):
    assert go(config_file, {"lr": "1e-3"}).hparams.lr == 0.001
    assert go(config_file, {"clamp": "2.5"}).hparams.clamp == 2.5
    assert go(config_file, {"clamp": "none"}).hparams.clamp is None


def test_unknown_key_in_per_model_section(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[models."m".myeditor]\nlayer = 2\nlayre = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        resolve(MyHparams, "myeditor", {"model": "m"}, {}, config_file=str(path))
    message = str(info.value)
    assert "myeditor hparams" in message
    assert "layre" in message
    assert "'layer'" in message  # valid keys listed


def test_ill_typed_value_in_per_model_section(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[models."m".myeditor]\nlayer = "three"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"layer: expected int, got 'three'"):
        resolve(MyHparams, "myeditor", {"model": "m"}, {}, config_file=str(path))


def test_toml_bool_for_int_is_rejected(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[models."m".myeditor]\nlayer = true\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"layer: expected int"):
        resolve(MyHparams, "myeditor", {"model": "m"}, {}, config_file=str(path))


def test_run_keys_land_in_run_config(config_file):
    resolved = go(config_file, {"answer_mode": "generate", "run.seed": "5", "limit": "3"})
    assert isinstance(resolved.run, RunConfig)
    assert resolved.run.answer_mode == "generate"
    assert resolved.run.seed == 5
    assert resolved.run.limit == 3
    assert resolved.hparams == MyHparams(layer=7, layers=(8, 9), lr=0.5)


def test_set_beats_cli_and_toml_for_run_keys(config_file):
    resolved = go(config_file, {"probe_batch_size": "2"}, probe_batch_size=8)
    assert resolved.run.probe_batch_size == 2
    assert go(config_file, probe_batch_size=8).run.probe_batch_size == 8  # cli beats the TOML's 4


def test_cli_none_means_unset(config_file):
    assert go(config_file, probe_batch_size=None, data_dir=None).run.probe_batch_size == 4


def test_key_in_both_scopes_is_ambiguous(config_file):
    @dataclass(frozen=True)
    class WithSeed:
        seed: int = 0

    with pytest.raises(ConfigError, match="ambiguous"):
        resolve(WithSeed, "seeded", {"model": "m"}, {"seed": "1"}, config_file)
    resolved = resolve(WithSeed, "seeded", {"model": "m"}, {"editor.seed": "1", "run.seed": "2"}, config_file)
    assert resolved.hparams.seed == 1
    assert resolved.run.seed == 2


def test_data_dir_env_and_cli(config_file, monkeypatch):
    assert go(config_file).run.data_dir == ""
    monkeypatch.setenv("HARNESS_DATA_DIR", "/from/env")
    assert go(config_file).run.data_dir == "/from/env"
    assert go(config_file, data_dir="/from/cli").run.data_dir == "/from/cli"


def test_data_dir_precedence_with_toml(tmp_path, monkeypatch):
    """cli > HARNESS_DATA_DIR > [run] data_dir, as `harness run --help` and `harness validate` have it."""
    path = tmp_path / "with_data.toml"
    path.write_text('[run]\ndata_dir = "/from/toml"\n', encoding="utf-8")
    assert resolve(MyHparams, "myeditor", {}, {}, str(path)).run.data_dir == "/from/toml"
    monkeypatch.setenv("HARNESS_DATA_DIR", "/from/env")
    assert resolve(MyHparams, "myeditor", {}, {}, str(path)).run.data_dir == "/from/env"
    assert resolve(MyHparams, "myeditor", {"data_dir": "/cli"}, {}, str(path)).run.data_dir == "/cli"
    assert resolve(MyHparams, "myeditor", {}, {"data_dir": "/set"}, str(path)).run.data_dir == "/set"


def test_set_model_selects_the_per_model_section(config_file):
    resolved = go(config_file, {"run.model": "other"})
    assert resolved.run.model == "other"
    assert resolved.hparams == MyHparams(layer=11)
    assert resolved.sources == {"plugin_defaults": "none", "per_model_defaults": '[models."other".myeditor]'}


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        resolve(MyHparams, "myeditor", {}, {}, config_file=str(tmp_path / "absent.toml"))


def test_invalid_toml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[run\nmodel = ", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        resolve(MyHparams, "myeditor", {}, {}, config_file=str(path))


def test_resolved_configs_are_frozen(config_file):
    resolved = go(config_file)
    with pytest.raises(AttributeError):
        resolved.run.seed = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        resolved.hparams.layer = 3  # type: ignore[misc]


def test_parse_overrides():
    assert parse_overrides(["layer=5", " lr = 0.1 ", "a=b=c", "empty="]) == {
        "layer": "5",
        "lr": "0.1",
        "a": "b=c",
        "empty": "",
    }
    assert parse_overrides([]) == {}
    with pytest.raises(ConfigError, match="novalue"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["=5"])


def test_edit_modes_are_validated(config_file):
    resolved = go(config_file, {"mode": "batch", "batch_size": "16"})
    assert (resolved.run.mode, resolved.run.batch_size) == ("batch", 16)
    assert go(config_file).run.mode == "single" and go(config_file).run.batch_size == 1
    with pytest.raises(ConfigError, match=r"batch_size: 16 edits per call needs mode=batch"):
        go(config_file, {"batch_size": "16"})
    with pytest.raises(
        ConfigError, match=r"mode: 'serial' is not one of \['single', 'batch', 'sequential', "
    ):
        go(config_file, {"mode": "serial"})
    resolved = go(config_file, {"mode": "batch-sequential", "batch_size": "4", "probe_every": "8"})
    assert (resolved.run.mode, resolved.run.batch_size, resolved.run.probe_every) == (
        "batch-sequential",
        4,
        8,
    )
    with pytest.raises(ConfigError, match=r"probe_every: -1 is out of range"):
        go(config_file, {"mode": "sequential", "probe_every": "-1"})
    with pytest.raises(ConfigError, match=r"batch_size: 0 is out of range"):
        go(config_file, {"mode": "batch", "batch_size": "0"})
