"""Faust global tables whose keys are partitioned by key, the way Kafka partitions them.

A Faust table files each key under the partition of the *event being processed*: both
the changelog record and the local RocksDB database. That fits a table keyed like its
source topic. The resolver's tables are not: an identifier or a customer shows up on
events of any partition (sources are keyed by the identifier the channel knows), so the
same key would be written to several changelog partitions and several local databases,
and after a restart or a recovery the copy read could be a stale one. Compaction would
not help either, since it works per partition.

Here a key always lives in ``murmur2(key) % partitions``, Kafka's default partitioner:
one changelog partition, one local database. Because the partitioning is Kafka's own,
a table's changelog can be a public compacted topic that other services read as an
ordinary keyed topic (the unified profile topic is the profile table's changelog).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
from faust.stores.rocksdb import Store as RocksDBStore

from crm_platform.kafka import kafka_partition

key_partition = kafka_partition  # Kafka's default partitioner


class KeyPartitionedStore(RocksDBStore):
    """RocksDB store that files every key under its key partition."""

    def _partitions(self) -> int:
        return int(self.table.partitions or self.app.conf.topic_partitions)

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = key_partition(key, self._partitions())
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db_for_partition(key_partition(key, self._partitions())).get(key)
        return value

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _del(self, key: bytes) -> None:
        self._db_for_partition(key_partition(key, self._partitions())).delete(key)


class KeyPartitionedGlobalTable(faust.GlobalTable):
    """A global table (every worker holds all of it) partitioned by key.

    Faust sends a table's changelog records through the producer's buffer and does not
    tie them to the event that caused them; its commit "flushes" that buffer, but gives
    up after 0.1 s without a record going out, so source offsets can be committed before
    the changelog records of the events they cover are produced (a SIGKILL then loses
    them for good). The table keeps the futures of the records it sent so that the agent
    can wait for them (:meth:`confirm_changelog`) before acknowledging the events."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unconfirmed: list[asyncio.Future[Any]] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self._unconfirmed.append(fut)
        return fut

    async def confirm_changelog(self) -> None:
        """Wait until every changelog record sent so far is on the broker (raises if
        one could not be produced)."""
        pending, self._unconfirmed = self._unconfirmed, []
        if pending:
            await asyncio.gather(*pending)

    def get(self, key: Any, default: Any = None) -> Any:
        """One read of the store. (Faust's ``get`` goes through ``__getitem__``, which
        asks the store whether it holds the key and then reads it: two reads, twice the
        hashing, for the resolver's hottest lookup.) These tables have no default
        values, so the answers are the same."""
        store = cast(KeyPartitionedStore, self.data)
        raw = store._get(store._encode_key(key))
        return default if raw is None else store._decode_value(raw)

    def partition_for_key(self, key: Any) -> int:
        raw = key if isinstance(key, bytes) else str(key).encode()
        return key_partition(raw, int(self.partitions or self.app.conf.topic_partitions))

    def _new_store_by_url(self, url: Any) -> Any:
        return KeyPartitionedStore(
            url,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )
