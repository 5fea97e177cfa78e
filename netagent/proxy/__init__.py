"""The service proxy: endpoint selection, pure renderers and kernel appliers."""
