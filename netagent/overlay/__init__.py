"""The overlay: pod CIDRs per node, the bridge, VXLAN or host-gw routes to every other node."""
