"""Plugin manager: built-in and third-party plugins load through the entry-point group ``harness``."""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import re
from pathlib import Path
from typing import Any

import pluggy

from harness import hookspecs, metrics
from harness.api import Editor

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "harness"
LOAD_ENV = "HARNESS_LOAD_PLUGINS"
CORE_DISTRIBUTION = "kedit-harness"  # its plugins are part of the harness: one that fails is an error

pm = pluggy.PluginManager("harness")
pm.add_hookspecs(hookspecs)
_loaded = False
_distributions: dict[str, importlib.metadata.Distribution] = {}


class BrokenInstallation(RuntimeError):
    """A built-in plugin failed to import: the installation of the harness itself is broken."""


class UnknownName(KeyError):
    """A name that no plugin registered; the message lists close matches."""

    def __str__(self) -> str:
        return str(self.args[0])


def _selected() -> set[str] | None:
    raw = os.environ.get(LOAD_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Load core defaults, then every entry point (or only those named in HARNESS_LOAD_PLUGINS).

    A third-party plugin that fails to import is reported with a warning naming it and the rest still
    load; a built-in one that fails is an error (``BrokenInstallation``).
    """
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    pm.register(metrics, name="harness.metrics")
    selected = _selected()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if selected is not None and entry_point.name not in selected:
            continue
        if pm.has_plugin(entry_point.name):
            registered = _distributions.get(entry_point.name)
            dist = entry_point.dist
            if registered is None or dist is None or registered.name != dist.name:
                log.warning(
                    "plugin %r from %s is skipped: a plugin of that name is already loaded (from %s)",
                    entry_point.name,
                    dist.name if dist else "?",
                    registered.name if registered else "the harness core",
                )
            continue
        try:
            module = entry_point.load()
        except Exception as error:  # noqa: BLE001 - a broken third-party plugin must not break the harness
            dist = entry_point.dist.name if entry_point.dist else "?"
            if dist == CORE_DISTRIBUTION:
                _loaded = False
                pm.unregister(name="harness.metrics")
                raise BrokenInstallation(
                    f"built-in plugin {entry_point.name!r} failed to import "
                    f"({type(error).__name__}: {error}); reinstall {CORE_DISTRIBUTION}"
                ) from error
            log.warning(
                "plugin %r (from %s) failed to load and is skipped: %s", entry_point.name, dist, error
            )
            continue
        pm.register(module, name=entry_point.name)
        if entry_point.dist is not None:
            _distributions[entry_point.name] = entry_point.dist
    return pm


def plugin_listing() -> list[dict[str, Any]]:
    """What ``harness plugins`` prints: name, distribution version and implemented hooks."""
    load_plugins()
    listing = []
    for plugin in pm.get_plugins():
        entry: dict[str, Any] = {
            "name": pm.get_name(plugin),
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        }
        dist = _distributions.get(entry["name"])
        if dist is not None:
            entry["package"] = dist.name
            entry["version"] = dist.version
        listing.append(entry)
    return sorted(listing, key=lambda e: e["name"])


def plugin_packages() -> dict[str, str]:
    """``{package: version}`` of every distribution that provides a loaded plugin (results record them)."""
    load_plugins()
    return {dist.name: dist.version for dist in _distributions.values()}


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # names that are safe as one path component


class PluginError(RuntimeError):
    """A plugin's hook raised; the message names the plugin and the hook."""


class DuplicateName(ValueError):
    """Two plugins register one name: which to use cannot be decided."""


_broken: dict[str, dict[str, str]] = {}  # hook -> {plugin: what it raised} at its last collection
_warned: set[tuple[str, str, str]] = set()  # (hook, plugin, problem) already reported


def _implementations(hook_name: str):
    """The hook's implementations in the order pluggy calls them."""
    return list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))


def _call_one(impl, hook_name: str, arguments: dict[str, Any]) -> Any:
    try:
        return impl.function(*[arguments[name] for name in impl.argnames])
    except Exception as error:  # noqa: BLE001 - re-raised naming the plugin and the hook
        raise PluginError(
            f"plugin {impl.plugin_name!r}: hook {hook_name} raised {type(error).__name__}: {error}"
        ) from error


def call(hook_name: str, **arguments: Any) -> list[Any]:
    """Call a hook's implementations one by one; a failure names the plugin and the hook. Returns
    the results that are not None, as pluggy would."""
    load_plugins()
    results = [_call_one(impl, hook_name, arguments) for impl in _implementations(hook_name)]
    return [result for result in results if result is not None]


def _is_builtin(plugin_name: str) -> bool:
    dist = _distributions.get(plugin_name)
    return dist is not None and dist.name == CORE_DISTRIBUTION


def _collect(hook_name: str, key, check=None, **arguments: Any) -> dict[str, Any]:
    """Everything plugins register through ``hook_name``, by name. A plugin whose hook raises, that
    registers a name that is not one safe path component, or a value ``check`` refuses, is left out
    with a warning naming it (the others still count); a name two plugins register is an error."""
    load_plugins()
    found: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for impl in _implementations(hook_name):
        mine: dict[str, Any] = {}

        def register(*args, mine=mine):
            name = key(args)
            if not isinstance(name, str) or not NAME.fullmatch(name):
                raise ValueError(
                    f"{hook_name}: the name {name!r} is refused: names are letters, digits, '-', '_' and "
                    "'.', starting with a letter or digit (they become folder names under results/)"
                )
            if name in found or name in mine:
                raise DuplicateName(f"two plugins register the {hook_name[9:-1]} {name!r}")
            if check is not None:
                check(name, args[-1])
            mine[name] = args[-1]

        try:
            _call_one(impl, hook_name, {"register": register, **arguments})
        except PluginError as error:
            if isinstance(error.__cause__, DuplicateName):
                raise error.__cause__ from None
            if _is_builtin(impl.plugin_name):
                broken = f"{error} (a built-in plugin: reinstall {CORE_DISTRIBUTION})"
                raise BrokenInstallation(broken) from error
            # keyed by the problem too: a test plugin's default name is its id(), which a later
            # plugin object may reuse
            if (hook_name, impl.plugin_name, str(error)) not in _warned:
                log.warning("%s; its registrations are left out", error)
                _warned.add((hook_name, impl.plugin_name, str(error)))
            failed[impl.plugin_name] = str(error)
            continue
        found.update(mine)
    _broken[hook_name] = failed
    return found


def _check_editor(name: str, editor_class: Any) -> None:
    if not (isinstance(editor_class, type) and issubclass(editor_class, Editor)):
        raise TypeError(
            f"editor {name!r}: {editor_class!r} is not a subclass of harness.api.Editor (the contract: "
            "hparams_class, capabilities, edit(); see docs/writing-an-editor.md)"
        )


def editors() -> dict[str, type[Editor]]:
    return _collect("register_editors", lambda args: args[0], _check_editor)


def tasks(data_dir: Path | None = None) -> dict[str, Any]:
    """Every registered task; families that discover variants from files look in ``data_dir``."""
    return _collect("register_tasks", lambda args: args[0].name, data_dir=data_dir)


def training_sets(data_dir: Path | None = None) -> dict[str, Any]:
    return _collect("register_training_sets", lambda args: args[0].name, data_dir=data_dir)


def models() -> dict[str, Any]:
    return _collect("register_models", lambda args: args[0].name)


def architectures() -> dict[str, Any]:
    """Module maps plugins add for model types the built-in map lacks (``{model_type: Architecture}``)."""
    return _collect("register_architectures", lambda args: args[0])


def metric_functions() -> dict[str, Any]:
    return _collect("register_metrics", lambda args: args[0])


def editor_defaults(editor: str, model: str) -> dict[str, Any]:
    """Plugins' hyper-parameter defaults for ``editor`` on ``model``; two plugins setting one key
    differently is an error naming it."""
    load_plugins()
    merged: dict[str, Any] = {}
    for found in call("editor_defaults", editor=editor, model=model):
        for key, value in (found or {}).items():
            if key in merged and merged[key] != value:
                raise ValueError(f"two plugins set different defaults of {editor}.{key} for model {model}")
            merged[key] = value
    return merged


def template_dirs() -> list[str]:
    load_plugins()
    return [d for dirs in call("template_dirs") for d in dirs]


def lookup(kind: str, name: str, registry: dict[str, Any]) -> Any:
    """``registry[name]``, or an error that lists close matches and how to see every name."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    failed = sorted(_broken.get(f"register_{kind}s", {}))
    broken = f" Plugin(s) {', '.join(failed)} failed to register {kind}s (see the warning)." if failed else ""
    raise UnknownName(f"unknown {kind} {name!r}.{hint}{broken} See `harness ls {kind}s`.")
