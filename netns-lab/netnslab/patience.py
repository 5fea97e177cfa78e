"""How long the lab waits for something that is bound to happen, on a slow machine.

Lab waits come in two kinds. Some bound how long a *refusal* may take ("a
service without endpoints is refused at once"); those are part of what a test
asserts and never stretch. The others bound how long the agent may take to
start and sync before a test gives up on it; they only decide how soon a
broken run fails, so on a slow machine they may grow without weakening any
assertion.

The IPVS tests run under qemu's TCG (software emulation), where Python starts
and imports several times slower than on the host, and a loaded CI machine
slows it by another factor of two (a 15 s wait for the first sync failed once
that way). ``scripts/ipvs-vm.sh`` therefore sets ``NETAGENT_LAB_PATIENCE``
(a factor, default 1), and every wait of the second kind passes its seconds
through :func:`patience`.
"""

from __future__ import annotations

import os

PATIENCE_ENV = "NETAGENT_LAB_PATIENCE"


def patience_factor() -> float:
    """The factor from ``NETAGENT_LAB_PATIENCE``: 1 when unset; a bad value is an error."""
    raw = os.environ.get(PATIENCE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        raise ValueError(f"{PATIENCE_ENV}={raw!r}: not a number") from None
    if not 1.0 <= factor <= 20.0:
        raise ValueError(f"{PATIENCE_ENV}={raw!r}: must be between 1 and 20")
    return factor


def patience(seconds: float) -> float:
    """``seconds`` stretched by the machine's patience factor."""
    return seconds * patience_factor()
