"""Keys: Kafka partitioning (murmur2, as Java's and aiokafka's default partitioner),
pairing buckets and stable de-duplication keys. Pure."""

from __future__ import annotations

import hashlib

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (seed 0x9747b28c), as a signed 32-bit int like Java's."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a keyed record."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions


def dedup_key(finding_id: str, updated_at_text: str) -> str:
    """Stable across crashes and replays: the finding and the event that opened the incident."""
    digest = hashlib.sha256(f"{finding_id}\n{updated_at_text}".encode()).hexdigest()
    return f"flapguard-{digest[:40]}"


def bucket_start(moment_ms: int, bucket_ms: int) -> int:
    return moment_ms - moment_ms % bucket_ms


def bucket_key(partition_key: str, start_ms: int) -> str:
    """Key of the tumbling-window entry that holds one partition key's archives."""
    return f"{partition_key}@{start_ms}"


def buckets_covering(low_ms: int, high_ms: int, bucket_ms: int) -> range:
    """Start times of every bucket that overlaps [low, high]."""
    return range(bucket_start(low_ms, bucket_ms), high_ms + 1, bucket_ms)
