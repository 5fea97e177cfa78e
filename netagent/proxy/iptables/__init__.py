"""The iptables proxy mode: render (pure) -> one iptables-restore per family, and its tracer."""
