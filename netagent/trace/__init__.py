"""Packet tracing over rendered rules, for tests and `netagent debug trace`."""
