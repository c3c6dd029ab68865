"""The web console: `tidings console`, server-rendered pages over `tidings.ops`.

Topology, topics with an event browser, consumer groups with live lag and offset resets, dead
letters with replay and purge, traces by correlation id from the log itself, and dashboards an
application provides. Needs the `console` extra (`pip install 'tidings[console]'`)."""

from tidings.console.app import create_app
from tidings.console.config import ConsoleConfig, console_token, data_directory, index_path

__all__ = ["ConsoleConfig", "console_token", "create_app", "data_directory", "index_path"]
