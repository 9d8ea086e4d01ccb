"""The platform's consumer groups, as operators' tools recognise them."""

from __future__ import annotations

import pytest

from crm_contracts.topics import is_platform_group


@pytest.mark.parametrize(
    ("group", "prefix", "expected"),
    [
        ("identity-resolver", "", True),
        ("engagement-membership", "", True),
        ("analytics-sink", "", True),  # a ClickHouse server's sink
        ("analytics-sink-3f2a9c01de", "", True),  # an embedded data directory's sink
        ("t1a2b3c4.identity-resolver", "t1a2b3c4.", True),
        ("analytics-sink-3f2a9c01de", "t1a2b3c4.", True),  # per directory, not per prefix
        ("t1a2b3c4.engagement-membership", "other.", False),
        ("analytics-sink-3f2a9c01de-replay-5b1e2f", "", False),  # crm replay's scratch group
        ("analytics-sink-scratch", "", False),
        ("t1a2b3c4.identity-resolver-other", "t1a2b3c4.", False),
        ("metabase", "", False),
        ("analytics-sinker", "", False),
        ("engagement", "", False),
    ],
)
def test_platform_groups(group: str, prefix: str, expected: bool) -> None:
    assert is_platform_group(group, prefix) is expected
