from __future__ import annotations

from pathlib import Path

import pytest

from tidings.testing.broker_contract import BrokerContract, ProcessContract


class TestSQLiteBroker(BrokerContract, ProcessContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/bus.db"
