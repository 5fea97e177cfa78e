"""The daemon: sources, the one node sync, the bounded-frequency runner and its tasks."""
