"""Standards and control ids from Security Hub GeneratorIds, for the notifier's routes and
messages (the worker's keys are left as they are)."""

from __future__ import annotations

import pytest

from streams.notify.controls import derived_control, standard_label

FSBP = "aws-foundational-security-best-practices/v/1.0.0/RDS.45"
CIS_12 = "arn:aws:securityhub:::ruleset/cis-aws-foundations-benchmark/v/1.2.0/rule/1.6"
CIS_14 = "cis-aws-foundations-benchmark/v/1.4.0/3.7"
PCI = "pci-dss/v/3.2.1/PCI.CloudTrail.1"


@pytest.mark.parametrize(("generator_id", "control"), [
    (FSBP, "RDS.45"),
    ("nist-800-53/v/5.0.0/CloudTrail.2", "CloudTrail.2"),
    ("service-managed-aws-control-tower/v/1.0.0/CloudTrail.2", "CloudTrail.2"),
    ("security-control/RDS.27", "RDS.27"),
])
def test_a_legacy_findings_control_is_derived_where_the_standard_numbers_rules_by_control(
    generator_id: str, control: str,
) -> None:
    assert derived_control(generator_id, generator_id) == control


@pytest.mark.parametrize("generator_id", [CIS_12, CIS_14, PCI, "some-product/rule-7", ""])
def test_cis_and_pci_numbers_and_other_products_are_left_as_recorded(generator_id: str) -> None:
    assert derived_control(generator_id, generator_id) == generator_id


def test_a_control_from_security_control_id_is_never_changed() -> None:
    assert derived_control("RDS.45", FSBP) == "RDS.45"
    assert derived_control("CloudTrail.2", PCI) == "CloudTrail.2"


@pytest.mark.parametrize(("generator_id", "label"), [
    (FSBP, "AWS Foundational Security Best Practices v1.0.0"),
    (CIS_12, "CIS AWS Foundations Benchmark v1.2.0"),
    (CIS_14, "CIS AWS Foundations Benchmark v1.4.0"),
    (PCI, "PCI DSS v3.2.1"),
    ("nist-800-53/v/5.0.0/CloudTrail.2", "NIST SP 800-53 v5.0.0"),
    ("some-new-standard/v/2.0.0/EC2.1", "some-new-standard v2.0.0"),
])
def test_a_per_standard_finding_names_its_standard(generator_id: str, label: str) -> None:
    assert standard_label(generator_id) == label


@pytest.mark.parametrize("generator_id", ["security-control/RDS.45", "", "guardduty/finding"])
def test_consolidated_and_other_findings_name_no_standard(generator_id: str) -> None:
    assert standard_label(generator_id) is None
