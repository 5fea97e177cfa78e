"""netagent: a per-node Kubernetes dataplane agent (service proxy plus overlay).

The package is layered so that data flows one way:
watch/sources -> change tracking/state -> render (pure) -> apply (kernel).
See docs/architecture.md.
"""

__version__ = "0.1.0"
