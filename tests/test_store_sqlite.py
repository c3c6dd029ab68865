from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/service.db"
