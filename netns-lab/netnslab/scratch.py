"""Empty network namespaces for kernel tests that need no lab topology.

Why its own helper: a test that only needs a blank netfilter or IPVS state
still has to follow the lab's rules (a per-run suffix, a run record so a
killed run is cleaned up by the next one, deletion on every exit path), and
each such test used to carry its own copy of those steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from netnslab.names import namespace_name, new_suffix
from netnslab.netns import add_namespace, delete_namespace, ns_exec
from netnslab.runs import RunRecord


@contextmanager
def scratch_namespaces(*roles: str) -> Iterator[list[str]]:
    """Fresh ``na-<role>-<suffix>`` namespaces with loopback up; recorded first, always deleted."""
    suffix = new_suffix()
    names = [namespace_name(role, suffix) for role in roles]
    record = RunRecord.for_this_process(suffix, names, workdir="")
    record.save()
    try:
        for name in names:
            add_namespace(name)
            ns_exec(name, ["ip", "link", "set", "lo", "up"])
        yield names
    finally:
        for name in reversed(names):
            delete_namespace(name)
        record.remove()
