"""Keys (docs/design.md §2, §4): Kafka's murmur2 partitioner, pairing buckets, dedup keys."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from streams.core.keys import (
    Placements,
    bucket_key,
    bucket_start,
    buckets_covering,
    dedup_key,
    murmur2,
    partition_for,
    partitions_for,
)
from tests.builders import CIS140, FSBP, HOUR, MINUTE, at, epoch_ms, finding, parse_one

# Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java).
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def java_murmur2(data: bytes) -> int:
    """A line-by-line transcription of `org.apache.kafka.common.utils.Utils.murmur2`,
    in Java's signed 32-bit int arithmetic (`>>>` is the unsigned shift)."""

    def ushr(value: int, bits: int) -> int:
        return (value & 0xFFFFFFFF) >> bits

    length = len(data)
    seed = _int32(0x9747B28C)
    m = 0x5BD1E995
    r = 24
    h = _int32(seed ^ length)
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = _int32((data[i4] & 0xFF) + ((data[i4 + 1] & 0xFF) << 8)
                   + ((data[i4 + 2] & 0xFF) << 16) + ((data[i4 + 3] & 0xFF) << 24))
        k = _int32(k * m)
        k = _int32(k ^ ushr(k, r))
        k = _int32(k * m)
        h = _int32(h * m)
        h = _int32(h ^ k)
    rest = length % 4
    if rest == 3:
        h = _int32(h ^ ((data[(length & ~3) + 2] & 0xFF) << 16))
    if rest >= 2:
        h = _int32(h ^ ((data[(length & ~3) + 1] & 0xFF) << 8))
    if rest >= 1:
        h = _int32(h ^ (data[length & ~3] & 0xFF))
        h = _int32(h * m)
    h = _int32(h ^ ushr(h, 13))
    h = _int32(h * m)
    h = _int32(h ^ ushr(h, 15))
    return h


@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS, ids=[v[0].decode()[:12] for v in KAFKA_VECTORS])
def test_murmur2_matches_kafkas_java_test_vectors(data: bytes, expected: int) -> None:
    assert java_murmur2(data) == expected  # the transcription itself is right
    assert murmur2(data) == expected


def test_murmur2_matches_the_java_algorithm_on_random_bytes_of_every_tail_length() -> None:
    """Short keys, and keys of 256 words and more (read without a cached unpacker)."""
    rng = random.Random(20251001)
    for length in [*range(0, 70), 1020, 1023, 1024, 1025, 1027, 4099]:
        for _ in range(5):
            data = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(data) == java_murmur2(data), data


def test_murmur2_is_a_signed_32_bit_int_like_javas() -> None:
    values = [murmur2(bytes([b]) * n) for b in (0, 0x7F, 0x80, 0xFF) for n in range(1, 9)]
    assert all(-(2**31) <= v < 2**31 for v in values)
    assert any(v < 0 for v in values)


def test_partition_for_agrees_with_aiokafkas_default_partitioner_on_random_keys() -> None:
    rng = random.Random(7)
    partitioner = DefaultPartitioner()
    for _ in range(500):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
        partitions = rng.randrange(1, 64)
        all_partitions = list(range(partitions))
        assert partition_for(key, partitions) == partitioner(key, all_partitions, all_partitions)
        assert murmur2(key) & 0xFFFFFFFF == aiokafka_murmur2(key)


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 100, 1000])
def test_partitions_for_many_keys_at_once_agrees_with_one_at_a_time(count: int) -> None:
    """The vectorised murmur2 (numpy, word column by column) against the loop, on keys
    of every tail length, empty ones and long ones, mixed in one call."""
    rng = random.Random(count)
    for partitions in (1, 3, 8, 64, 1000):
        keys = [bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 3, 4, 5, 7, 92, 93, 300])))
                for _ in range(count)]
        assert partitions_for(keys, partitions) == [partition_for(k, partitions) for k in keys]


def test_remembered_placements_are_those_of_partition_for_through_repeats_and_forgetting() -> None:
    rng = random.Random(7)
    names = [f"111122223333|eu-west-1|S3.{n}|arn:aws:s3:::bucket-{n * 7}" for n in range(60)]
    placements = Placements(8, limit=40)
    for size in (0, 1, 5, 30, 50, 200):  # 50 new keys at once is over the limit
        keys = [rng.choice(names) for _ in range(size)]
        assert placements.of(keys) == [partition_for(key, 8) for key in keys]
        assert len(placements.known) <= max(40, len(set(keys)))
    one = Placements(8, limit=40)  # key by key, as a labelled report places decisions
    keys = [rng.choice(names) for _ in range(300)]
    assert [one.one(key) for key in keys] == [partition_for(key, 8) for key in keys]
    assert len(one.known) <= 40


def test_partition_for_a_text_key_hashes_its_utf8_bytes() -> None:
    key = "123456789012|ap-northeast-1|RDS.45|arn:aws:rds:ap-northeast-1:123456789012:cluster:ü"
    assert partition_for(key, 12) == partition_for(key.encode("utf-8"), 12)


def test_partition_for_is_within_range_and_uses_the_positive_hash() -> None:
    for data, signed in KAFKA_VECTORS:
        for partitions in (1, 3, 8, 12, 100):
            assert partition_for(data, partitions) == (signed & 0x7FFFFFFF) % partitions


def test_findings_that_may_pair_share_a_partition_key_and_so_a_partition() -> None:
    archived_per_standard = parse_one(finding("old", standard=FSBP, control="RDS.45"))
    other_standard = parse_one(finding("cis", standard=CIS140, control="RDS.45"))
    consolidated = parse_one(finding("new", control="RDS.45"))
    keys = {archived_per_standard.partition_key, other_standard.partition_key,
            consolidated.partition_key}
    assert len(keys) == 1
    assert len({partition_for(k, 8) for k in keys}) == 1


def test_partition_key_differs_by_account_region_control_and_resource() -> None:
    base = parse_one(finding()).partition_key
    variants = [
        finding(account="210987654321"),
        finding(region="eu-west-1"),
        finding(control="RDS.27"),
        finding(resource="arn:aws:rds:us-east-2:123456789012:cluster:other"),
    ]
    assert all(parse_one(v).partition_key != base for v in variants)


# -- dedup keys ------------------------------------------------------------------------


def test_dedup_key_is_stable_for_the_same_finding_and_event() -> None:
    key = dedup_key("arn:aws:securityhub:x:finding/1", "2025-10-01T04:44:21.000Z")
    assert key == dedup_key("arn:aws:securityhub:x:finding/1", "2025-10-01T04:44:21.000Z")
    assert key.startswith("flapguard-")
    assert len(key) == len("flapguard-") + 40


def test_dedup_key_differs_by_finding_and_by_opening_event() -> None:
    base = dedup_key("f1", "2025-10-01T04:44:21.000Z")
    assert dedup_key("f2", "2025-10-01T04:44:21.000Z") != base
    assert dedup_key("f1", "2025-10-01T04:44:22.000Z") != base
    # The separator keeps the parts apart: "f1" + "2025..." is not "f12" + "025...".
    assert dedup_key("f12", "025-10-01T04:44:21.000Z") != dedup_key("f1", "2025-10-01T04:44:21.000Z")


# -- buckets ---------------------------------------------------------------------------


def test_bucket_start_floors_to_the_bucket_width() -> None:
    day = 24 * HOUR
    moment = epoch_ms(at(hours=23, minutes=50))
    assert bucket_start(moment, day) == epoch_ms(at())
    assert bucket_start(epoch_ms(at(days=1)), day) == epoch_ms(at(days=1))


def test_buckets_covering_spans_a_midnight_boundary() -> None:
    day = 24 * HOUR
    archived = epoch_ms(at(hours=23, minutes=50))
    recreated = epoch_ms(at(days=1, minutes=20))
    starts = list(buckets_covering(recreated - HOUR, recreated + HOUR, day))
    assert bucket_start(archived, day) in starts
    assert starts == [epoch_ms(at()), epoch_ms(at(days=1))]


def test_buckets_covering_lists_every_overlapping_bucket_exactly_once() -> None:
    width = 10 * MINUTE
    low, high = epoch_ms(at(minutes=5)), epoch_ms(at(minutes=35))
    starts = list(buckets_covering(low, high, width))
    assert starts == [epoch_ms(at(minutes=m)) for m in (0, 10, 20, 30)]
    edge = list(buckets_covering(low, epoch_ms(at(minutes=30)), width))
    assert edge[-1] == epoch_ms(at(minutes=30))


def test_bucket_key_names_the_partition_key_and_the_window_start() -> None:
    assert bucket_key("a|b|c|d", 1000) == "a|b|c|d@1000"
    assert bucket_key("a|b|c|d", 1000) != bucket_key("a|b|c|d", 2000)
