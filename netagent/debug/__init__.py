"""``netagent debug``: what the node is doing, what netagent wants, and where the two differ.

Why a package of small modules: the same reports are built by the
``netagent debug`` command and served by the running agent's ``/debug/…``
pages, so each report is a function from a :class:`~netagent.debug.context.DebugContext`
to a JSON-able dict (:mod:`.services`, :mod:`.service`, :mod:`.overlay`,
:mod:`.diff`, :mod:`.trace`), named in one table (:mod:`.reports`) and
formatted in one place (:mod:`.output`). Where the inputs come from is
:mod:`.inputs` (the API or manifests) or :mod:`.endpoint` (the running
agent); :mod:`.cli` is the command line and :mod:`.remote` its ``--agent``.
What differs between proxy modes (iptables chains and the live ruleset's
tracer, nftables elements and the render's tracer) is one view per mode in
:mod:`.modes`.
"""

from __future__ import annotations

from netagent.debug.trace import run_trace

__all__ = ["run_trace"]
