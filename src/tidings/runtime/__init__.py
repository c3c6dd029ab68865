"""The service runtime: consumer loop and dispatch, outbox relay, lifecycle."""
