"""Our partitioner (C murmur2) puts every key where Kafka's default partitioner does."""

from __future__ import annotations

import os
import random

from aiokafka.partitioner import DefaultPartitioner

from crm_platform.kafka import _partitioner, kafka_partition


def test_keys_land_on_the_partitions_kafka_would_choose() -> None:
    rng = random.Random(7)
    keys = [os.urandom(rng.randint(0, 90)) for _ in range(5000)]
    keys += [b"", b"a", "ヤマダ".encode(), b"0" * 64, b"member_no:" + b"f" * 64]
    for partitions in (1, 3, 6, 12):
        everyone = list(range(partitions))
        for key in keys:
            expected = DefaultPartitioner()(key, everyone, everyone)
            assert kafka_partition(key, partitions) == expected
            assert _partitioner(key, everyone, everyone) == expected


def test_a_record_without_a_key_goes_to_an_available_partition() -> None:
    assert {_partitioner(None, [0, 1, 2], [2]) for _ in range(20)} == {2}
