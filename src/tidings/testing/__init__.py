"""Tools for testing: `ServiceHarness` runs your service on throwaway backends and tells you
what it did; `eventually` waits for a condition; `hostile` is a corpus of bad records; the
broker and store contract suites (`broker_contract`, `store_contract`, which need pytest) are
for backend packages to subclass."""

from tidings.testing.harness import Letter, ServiceHarness, eventually

__all__ = ["Letter", "ServiceHarness", "eventually"]
