"""The article's order system on tidings: seven services, one database each, choreographed by
events on `order-events`, `inventory-events` and `payment-events`. See `run.py`."""
