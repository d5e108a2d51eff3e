"""Coverage-guided fuzzing (atheris) of the parser and the decision core.

Each input is either raw message bytes, or (first byte odd) a public sample finding
with one field replaced by a fuzzed value of a fuzzed type. The invariants, checked on
every input: no exception escapes `parse_message` or the engine, and every finding
occurrence gets exactly one decision. State carries over between inputs (the engine
is reset every 2,000 inputs), so sequences of findings are fuzzed too.

    scripts/fuzz [-runs=100000] [other libFuzzer flags]

A benchmark-like script, not a test: CI runs a short, seeded property test instead.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path
from typing import Any

import atheris
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

with atheris.instrument_imports():
    from streams.core.decide import rejected_outcome
    from streams.core.engine import PartitionEngine
    from streams.core.findings import Finding, finding_items, parse_message
    from streams.core.policy import Policy
    from streams.core.state import Origin, Store

# Limits low enough that fuzzed nesting and strings cross them (the samples stay under).
POLICY = Policy(hold_ms=60_000, max_depth=12, max_string_length=4096)
NOW_MS = 1_893_456_000_000  # 2030: fixed, so runs are repeatable
FIXTURES = REPO / "tests" / "fixtures"
SEEDS: list[dict[str, Any]] = []
for path in sorted((FIXTURES / "public").glob("*.json")):
    document = orjson.loads(path.read_bytes())
    SEEDS.extend(item for item in finding_items(document) or [] if isinstance(item, dict))
for line in (FIXTURES / "incident-rds45.jsonl").read_bytes().splitlines():
    with contextlib.suppress(orjson.JSONDecodeError):
        SEEDS.append(orjson.loads(line))
FIELDS = ["Id", "ProductArn", "GeneratorId", "AwsAccountId", "Region", "CreatedAt", "UpdatedAt",
          "RecordState", "Severity", "Compliance", "Workflow", "Resources", "ProductFields",
          "Title", "SchemaVersion", "WorkflowState"]


class State:
    engine = PartitionEngine(Store.in_memory(), POLICY, 0)
    seq = 0
    inputs = 0


def fuzzed_value(fdp: atheris.FuzzedDataProvider) -> Any:
    kind = fdp.ConsumeIntInRange(0, 8)
    if kind == 0:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
    if kind == 1:
        return fdp.ConsumeInt(8)
    if kind == 2:
        return fdp.ConsumeFloat()
    if kind == 3:
        return None
    if kind == 4:
        return fdp.ConsumeBool()
    if kind == 5:
        return [fuzzed_value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 6:
        return {fdp.ConsumeUnicodeNoSurrogates(8): fuzzed_value(fdp)
                for _ in range(fdp.ConsumeIntInRange(0, 3))}
    if kind == 7:  # a plausible timestamp, sometimes far off
        year = fdp.ConsumeIntInRange(1, 9999)
        return f"{year:04d}-{fdp.ConsumeIntInRange(1, 12):02d}-01T00:00:00.000Z"
    return fdp.PickValueInList(["ACTIVE", "ARCHIVED", "FAILED", "PASSED", "NOT_AVAILABLE",
                                "WARNING", "SUPPRESSED", "NEW", "CRITICAL", ""])


def structured(fdp: atheris.FuzzedDataProvider) -> bytes:
    finding = copy.deepcopy(fdp.PickValueInList(SEEDS))
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        finding[fdp.PickValueInList(FIELDS)] = fuzzed_value(fdp)
    wrap = fdp.ConsumeIntInRange(0, 2)
    if wrap == 1:
        return orjson.dumps({"Findings": [finding, finding]})
    if wrap == 2:
        return orjson.dumps({"detail-type": "Security Hub Findings - Imported", "source": "aws.securityhub",
                             "detail": {"findings": [finding]}})
    return orjson.dumps(finding)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    message = structured(fdp) if data[:1] and data[0] % 2 else data
    State.inputs += 1
    if State.inputs % 2000 == 0:
        State.engine = PartitionEngine(Store.in_memory(), POLICY, 0)
    parsed = parse_message(message, policy=POLICY, now_ms=NOW_MS)
    if not parsed:
        raise AssertionError("an input yielded no occurrence")
    decided = 0
    for index, item in enumerate(parsed):
        origin = Origin("fuzz", State.inputs, index)
        if isinstance(item, Finding):
            decided += len(State.engine.accept(item, origin, State.seq))
            State.seq += 1
        else:
            rejected_outcome(item, origin)
            decided += 1
    decided += len(State.engine.flush())
    if decided != len(parsed):
        raise AssertionError(f"{len(parsed)} occurrences, {decided} decisions")


def main() -> None:
    argv = list(sys.argv)
    if not any(arg.startswith("-runs=") for arg in argv[1:]):
        argv.append("-runs=100000")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
