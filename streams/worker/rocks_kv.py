"""The decision core's state in RocksDB (through `rocksdict`), off the Python heap.

`RocksMapping` is a mapping of str to bytes over one RocksDB database; `rocks_store`
puts the five state maps (`Store.NAMES`) in one folder, with JSON values through
`CodecKV`, the same codecs as the worker's tables. Used by `scripts/bench-memory` to
measure RAM per tracked finding; `rocksdict` is imported when a database is opened.

Memory knobs: RocksDB's own RAM is its memtables (`write_buffer_mb` each, up to two
per database before a flush) and its block cache (`cache_mb`, shared); both are fixed
budgets, not per key.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from streams.core.state import Store


def rocks_options(*, write_buffer_mb: int = 8, cache: Any = None) -> Any:
    from rocksdict import BlockBasedOptions, Options

    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(write_buffer_mb * 1024 * 1024)
    options.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, block_based=True)
    if cache is not None:
        table.set_block_cache(cache)
    options.set_block_based_table_factory(table)
    return options


class RocksMapping(MutableMapping[str, bytes]):
    """str -> bytes in one RocksDB database (keys stored as UTF-8)."""

    def __init__(self, path: Path, options: Any) -> None:
        from rocksdict import Rdict

        self.db = Rdict(str(path), options)

    def __getitem__(self, key: str) -> bytes:
        value = self.db.get(key.encode())
        if value is None:
            raise KeyError(key)
        return bytes(value)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.db.get(key.encode())
        return default if value is None else value

    def __setitem__(self, key: str, value: bytes) -> None:
        self.db[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self.db[key.encode()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.db.get(key.encode()) is not None

    def __iter__(self) -> Iterator[str]:
        for key in self.db.keys():  # noqa: SIM118 - an Rdict is not iterable itself
            assert isinstance(key, bytes)  # raw mode
            yield key.decode()

    def __len__(self) -> int:
        return sum(1 for _ in self.db.keys())  # noqa: SIM118

    def estimated_len(self) -> int:
        return int(self.db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def close(self) -> None:
        self.db.close()


def rocks_store(folder: Path, *, write_buffer_mb: int = 8, cache_mb: int = 32
                ) -> tuple[Store, dict[str, RocksMapping]]:
    """A `Store` whose five maps live in RocksDB databases under `folder`."""
    from rocksdict import Cache

    cache = Cache(cache_mb * 1024 * 1024)
    folder.mkdir(parents=True, exist_ok=True)
    maps = {name: RocksMapping(folder / name, rocks_options(write_buffer_mb=write_buffer_mb, cache=cache))
            for name in Store.NAMES}
    return Store.over(maps), maps
