"""A deterministic, months-long Security Hub history for the Kafka tests.

Built from the incident fixture's first finding (an RDS.45 control finding). Each
resource lives one of a few stories: steady failure with ~18 h refreshes, backup flaps
(NOT_AVAILABLE + ARCHIVED, then a re-created finding 6-20 h later), remediation and
regression, genuinely new failures late in the history, plus EventBridge duplicates
and arrivals shuffled within the hold.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

FIXTURES = Path(__file__).parent / "fixtures"
HOUR = timedelta(hours=1)


def template() -> dict[str, Any]:
    first_line = (FIXTURES / "incident-rds45.jsonl").read_bytes().split(b"\n", 1)[0]
    finding: dict[str, Any] = orjson.loads(first_line)
    return finding


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Resource:
    def __init__(self, rng: random.Random, base: dict[str, Any], account: str, index: int,
                 control: str) -> None:
        self.rng = rng
        self.base = base
        self.account = account
        self.control = control
        self.arn = f"arn:aws:rds:ap-northeast-1:{account}:cluster:db-{index:04d}"
        self.finding_id = ""
        self.created = datetime.min

    def new_id(self, at: datetime) -> None:
        uid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        self.finding_id = (f"arn:aws:securityhub:ap-northeast-1:{self.account}:security-control/"
                           f"{self.control}/finding/{uid}")
        self.created = at

    def event(self, at: datetime, status: str, record: str = "ACTIVE",
              previous: str | None = None) -> dict[str, Any]:
        f = copy.deepcopy(self.base)
        f["Id"] = self.finding_id
        f["AwsAccountId"] = self.account
        f["GeneratorId"] = f"security-control/{self.control}"
        f["Compliance"]["SecurityControlId"] = self.control
        f["Compliance"]["Status"] = status
        if status == "NOT_AVAILABLE":
            f["Compliance"]["StatusReasons"] = [{"ReasonCode": "CONFIG_RETURNS_NOT_APPLICABLE"}]
        f["Resources"][0]["Id"] = self.arn
        f["CreatedAt"] = f["FirstObservedAt"] = _ts(self.created)
        f["UpdatedAt"] = f["LastObservedAt"] = _ts(at)
        f["RecordState"] = record
        f["Workflow"] = {"Status": "RESOLVED" if status == "PASSED" else "NEW"}
        f["ProductFields"] = dict(f["ProductFields"], **{"aws/securityhub/FindingId": self.finding_id})
        if previous:
            f["ProductFields"]["PreviousComplianceStatus"] = previous
        return f


def history(seed: int = 7, accounts: int = 3, resources: int = 12, days: int = 90,
            start: datetime = datetime(2025, 3, 1, tzinfo=UTC)) -> list[dict[str, Any]]:
    """Findings in arrival order (shuffled within minutes, with duplicates)."""
    rng = random.Random(seed)
    base = template()
    end = start + timedelta(days=days)
    events: list[tuple[datetime, dict[str, Any]]] = []
    for a in range(accounts):
        account = f"{100000000000 + a * 111111:012d}"
        for r in range(resources):
            control = rng.choice(["RDS.45", "RDS.27", "Redshift.1", "EC2.8"])
            res = _Resource(rng, base, account, r, control)
            story = r % 4
            t = start + timedelta(minutes=rng.randrange(0, 24 * 60))
            if story == 3:  # a genuinely new failure late in the history
                t = start + timedelta(days=rng.randrange(days // 2, days - 5))
            res.new_id(t)
            status = "FAILED"
            while t < end:
                events.append((t, res.event(t, status)))
                step = timedelta(hours=rng.choice([12, 18, 24]))
                roll = rng.random()
                if story in (0, 3) and roll < 0.12:  # backup flap: archive, re-create
                    archived = t + timedelta(hours=rng.randrange(1, 10))
                    events.append((archived, res.event(archived, "NOT_AVAILABLE", "ARCHIVED")))
                    recreated = archived + timedelta(hours=rng.randrange(6, 20),
                                                     seconds=rng.randrange(0, 3600))
                    res_old = copy.copy(res)
                    res.new_id(recreated)
                    events.append((recreated, res.event(recreated, "FAILED")))
                    events.append((recreated, res_old.event(recreated, "NOT_AVAILABLE", "ARCHIVED",
                                                            previous="NOT_AVAILABLE")))
                    t = recreated
                elif story == 1 and roll < 0.1:  # remediation, later a regression
                    status = "PASSED" if status == "FAILED" else "FAILED"
                elif story == 2 and roll < 0.03:  # deleted: archived, never re-created
                    gone = t + HOUR
                    events.append((gone, res.event(gone, "FAILED", "ARCHIVED")))
                    break
                t += step
    events.sort(key=lambda e: (e[0], e[1]["Id"]))
    arrivals: list[tuple[float, int, dict[str, Any]]] = []
    for n, (moment, finding) in enumerate(events):
        jitter = rng.uniform(0, 120)  # seconds; well inside the 5-minute hold
        arrivals.append((moment.timestamp() + jitter, n, finding))
        if rng.random() < 0.03:  # an EventBridge duplicate
            arrivals.append((moment.timestamp() + jitter + rng.uniform(0, 60), n, finding))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    return [finding for _, _, finding in arrivals]


def write_jsonl(path: Path, findings: list[dict[str, Any]], garbage_every: int = 0) -> Path:
    with path.open("wb") as out:
        for n, finding in enumerate(findings, start=1):
            out.write(orjson.dumps(finding) + b"\n")
            if garbage_every and n % garbage_every == 0:
                out.write(b'{"SchemaVersion": "2018-10-08", "Id": "trunc\n')
    return path


def lines(findings: list[dict[str, Any]]) -> Iterator[bytes]:
    for finding in findings:
        yield orjson.dumps(finding)
