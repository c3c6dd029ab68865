from __future__ import annotations

import uuid

import pytest

from tidings.testing.broker_contract import BrokerContract


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    def url(self) -> str:
        return f"memory://{uuid.uuid4().hex}"
