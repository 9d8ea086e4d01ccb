import logging

import pytest

from crm_platform.logs import setup_logging


def test_routine_broker_retries_are_quiet_and_real_errors_are_not(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.error("Group Coordinator Request failed: %s", "[Error 15] GroupCoordinatorNotAvailableError")
    coordinator.warning("Marking the coordinator dead (node %s)for group %s.", 1, "g")
    logging.getLogger("faust.transport.producer").warning("producer buffer full size %s", 140)
    coordinator.error("Group Coordinator Request failed: %s", "[Error 25] UnknownMemberIdError")
    logging.getLogger("crm.test").warning("producer buffer full, said elsewhere")
    err = capsys.readouterr().err
    assert "GroupCoordinatorNotAvailableError" not in err
    assert "Marking the coordinator dead" not in err
    assert "size 140" not in err
    assert "UnknownMemberIdError" in err
    assert "said elsewhere" in err
