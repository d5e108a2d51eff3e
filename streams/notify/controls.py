"""Which standard and which control a Security Hub finding's `GeneratorId` names, for the
notifier's routes and messages. Pure: no I/O.

Per-standard findings (consolidated control findings off) carry the standard in their
`GeneratorId` (`aws-foundational-security-best-practices/v/1.0.0/RDS.45`): the same
resource and control can alert once per enabled standard, and only the standard tells
the messages apart.

Legacy findings without `Compliance.SecurityControlId` carry the whole `GeneratorId` as
their control (the worker's keys stay as they are). Where the standard numbers its rules
with the security control id (FSBP, NIST SP 800-53 and 800-171, Control Tower, resource
tagging) the id is the last part and is derived here. CIS (`1.10`, `3.7`) and PCI DSS
(`PCI.CloudTrail.1`) number their rules themselves, and the numbers differ between
versions: no control id is derived for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONSOLIDATED = "security-control/"

STANDARD_NAMES = {
    "aws-foundational-security-best-practices": "AWS Foundational Security Best Practices",
    "cis-aws-foundations-benchmark": "CIS AWS Foundations Benchmark",
    "pci-dss": "PCI DSS",
    "nist-800-53": "NIST SP 800-53",
    "nist-800-171": "NIST SP 800-171",
    "service-managed-aws-control-tower": "AWS Control Tower (service-managed)",
    "aws-resource-tagging-standard": "AWS Resource Tagging Standard",
}
# Standards whose rule ids are security control ids (`RDS.45`).
CONTROL_ID_STANDARDS = frozenset({
    "aws-foundational-security-best-practices", "nist-800-53", "nist-800-171",
    "service-managed-aws-control-tower", "aws-resource-tagging-standard",
})

# `<standard>/v/<version>/<rule>`, or as CIS 1.2.0 writes it:
# `arn:aws:securityhub:::ruleset/<standard>/v/<version>/rule/<rule>`.
_GENERATOR = re.compile(
    r"^(?:arn:[a-z-]+:securityhub:::ruleset/)?(?P<standard>[a-z0-9-]+)/v/(?P<version>[^/]+)/"
    r"(?:rule/)?(?P<rule>[^/]+)$")
_CONTROL_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]*\.\d+$")


@dataclass(frozen=True, slots=True)
class Generator:
    standard: str  # the GeneratorId's slug, e.g. cis-aws-foundations-benchmark
    version: str
    rule: str

    @property
    def label(self) -> str:
        """`CIS AWS Foundations Benchmark v1.4.0`."""
        return f"{STANDARD_NAMES.get(self.standard, self.standard)} v{self.version}"


def parse_generator(generator_id: str) -> Generator | None:
    """A per-standard control finding's standard, version and rule; None otherwise."""
    match = _GENERATOR.match(generator_id)
    if match is None:
        return None
    return Generator(match["standard"], match["version"], match["rule"])


def standard_label(generator_id: str) -> str | None:
    """The standard a per-standard finding belongs to; None when consolidated or unknown."""
    generator = parse_generator(generator_id)
    return None if generator is None else generator.label


def derived_control(control_id: str, generator_id: str) -> str:
    """The security control id when the record's control is a whole `GeneratorId` and the
    standard allows deriving it; else the control as recorded."""
    if control_id != generator_id:
        return control_id  # from Compliance.SecurityControlId
    if generator_id.startswith(CONSOLIDATED):
        rule = generator_id[len(CONSOLIDATED):]
        return rule if _CONTROL_ID.match(rule) else control_id
    generator = parse_generator(generator_id)
    if (generator is not None and generator.standard in CONTROL_ID_STANDARDS
            and _CONTROL_ID.match(generator.rule)):
        return generator.rule
    return control_id
