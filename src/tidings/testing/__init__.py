"""Tools for testing services built with tidings and backends written for it."""
