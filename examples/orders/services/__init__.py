"""The order system's services. Each owns its database; none calls another."""

from __future__ import annotations

from examples.orders.services import (
    analytics,
    email,
    fulfillment,
    inventory,
    loyalty,
    orders,
    payment,
)
from examples.orders.settings import Settings
from tidings import Service

MODULES = (orders, inventory, payment, email, analytics, fulfillment, loyalty)


def build_all(settings: Settings) -> dict[str, Service]:
    """A fresh Service per module, by name."""
    built = [module.create(settings) for module in MODULES]
    return {service.name: service for service in built}
