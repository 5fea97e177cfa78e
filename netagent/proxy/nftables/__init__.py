"""The nftables proxy mode: netagent's own ``ip netagent`` and ``ip6 netagent`` tables, on maps."""
