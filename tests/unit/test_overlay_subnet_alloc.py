"""Pod subnet allocation: the pure chooser and the claim protocol against a racing fake API.

Covers choose_subnet (first subnet skipped, seed offsets and wrap-around,
preferred subnets, taken subnets of any size, exhaustion), NodeClaimer
(existing podCIDR reused, restart reuse, interrupted claims resumed, 409s,
exhaustion, podCIDR outside the network), the forced "both pick the same
subnet" race, many threads claiming at once with random interleavings, and
KubernetesNodeApi's mapping onto the client (dicts, paging, 409).
"""

from __future__ import annotations

import ipaddress
import json
import random
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from netagent.overlay.node_api_fake import FakeNodeApi, InvalidError
from netagent.overlay.subnet_alloc import (
    CLAIM_ANNOTATION,
    ConflictError,
    KubernetesNodeApi,
    NodeClaimer,
    SubnetClaimError,
    SubnetExhausted,
    choose_subnet,
)

NET = ipaddress.IPv4Network("10.244.0.0/16")


def n(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def no_sleep(_: float) -> None:
    pass


# ----------------------------------------------------------------------------- choose_subnet


def test_first_subnet_is_skipped_without_seed() -> None:
    assert choose_subnet(NET, 24, []) == n("10.244.1.0/24")


def test_taken_subnets_are_skipped() -> None:
    taken = [n("10.244.1.0/24"), n("10.244.2.0/24")]
    assert choose_subnet(NET, 24, taken) == n("10.244.3.0/24")


def test_partially_overlapping_taken_blocks_a_subnet() -> None:
    # A /25 inside .1 and a /23 covering .2-.3 make all three unusable.
    taken = [n("10.244.1.128/25"), n("10.244.2.0/23")]
    assert choose_subnet(NET, 24, taken) == n("10.244.4.0/24")


def test_taken_outside_network_and_ipv6_are_ignored() -> None:
    taken: list[Any] = [n("10.0.0.0/8"), ipaddress.IPv6Network("fd00::/64")]
    # 10.0.0.0/8 covers the whole network: exhausted.
    with pytest.raises(SubnetExhausted):
        choose_subnet(NET, 24, taken)
    assert choose_subnet(NET, 24, [n("192.168.0.0/16")]) == n("10.244.1.0/24")


def test_seed_gives_stable_spread_offsets() -> None:
    a = choose_subnet(NET, 24, [], seed="node-a")
    assert a == choose_subnet(NET, 24, [], seed="node-a")
    picks = {choose_subnet(NET, 24, [], seed=f"node-{i}") for i in range(20)}
    assert len(picks) >= 15  # 20 names over 255 subnets rarely collide
    assert all(p.subnet_of(NET) and p.prefixlen == 24 for p in picks)
    assert n("10.244.0.0/24") not in picks


def test_search_wraps_around_from_the_seed_offset() -> None:
    net = n("10.0.0.0/24")  # /26 subnets: index 0 reserved, 1..3 usable
    seed = next(s for s in (f"s{i}" for i in range(100))
                if choose_subnet(net, 26, [], seed=s) == n("10.0.0.192/26"))
    assert choose_subnet(net, 26, [n("10.0.0.192/26")], seed=seed) == n("10.0.0.64/26")


def test_preferred_is_returned_when_free_and_valid() -> None:
    pref = n("10.244.77.0/24")
    assert choose_subnet(NET, 24, [n("10.244.1.0/24")], preferred=pref) == pref
    # taken, wrong length, outside, or the reserved first subnet: ignored
    assert choose_subnet(NET, 24, [pref], preferred=pref) == n("10.244.1.0/24")
    assert choose_subnet(NET, 24, [], preferred=n("10.244.77.0/25")) == n("10.244.1.0/24")
    assert choose_subnet(NET, 24, [], preferred=n("10.9.0.0/24")) == n("10.244.1.0/24")
    assert choose_subnet(NET, 24, [], preferred=n("10.244.0.0/24")) == n("10.244.1.0/24")


def test_exhaustion_names_network_and_length() -> None:
    net = n("10.0.0.0/24")
    taken = [n("10.0.0.64/26"), n("10.0.0.128/26"), n("10.0.0.192/26")]
    with pytest.raises(SubnetExhausted, match=r"/26 subnet left in 10\.0\.0\.0/24"):
        choose_subnet(net, 26, taken)


@pytest.mark.parametrize("length", [16, 8, 31, 32])
def test_bad_subnet_length_is_rejected(length: int) -> None:
    with pytest.raises(ValueError, match="subnet length"):
        choose_subnet(NET, length, [])


def test_large_network_is_fast() -> None:
    net = n("10.0.0.0/8")
    taken = [ipaddress.IPv4Network((0x0A000000 + (i << 8), 24)) for i in range(1, 20001)]
    start = time.perf_counter()
    got = choose_subnet(net, 24, taken)
    assert got == n("10.78.33.0/24")  # index 20001
    assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------------------- NodeClaimer


def test_existing_pod_cidr_is_used_without_writes() -> None:
    api = FakeNodeApi()
    api.add_node("a", pod_cidr="10.244.9.0/24")
    got = NodeClaimer(api, sleep=no_sleep).claim("a", NET, 24)
    assert got == n("10.244.9.0/24")
    assert [op for op, _ in api.calls if op == "replace"] == []


def test_pod_cidr_outside_network_is_an_error() -> None:
    api = FakeNodeApi()
    api.add_node("a", pod_cidr="10.32.0.0/24")
    with pytest.raises(SubnetClaimError, match=r"node a: spec.podCIDR 10\.32\.0\.0/24 is outside"):
        NodeClaimer(api, sleep=no_sleep).claim("a", NET, 24)


def test_claim_writes_spec_and_is_reused_after_restart() -> None:
    api = FakeNodeApi()
    api.add_node("a", pod_cidr="10.244.1.0/24")
    api.add_node("b")
    got = NodeClaimer(api, sleep=no_sleep, spread=False).claim("b", NET, 24)
    assert got == n("10.244.2.0/24")
    node = api.get_node("b")
    assert node["spec"]["podCIDR"] == "10.244.2.0/24"
    assert node["spec"]["podCIDRs"] == ["10.244.2.0/24"]
    assert node["metadata"]["annotations"][CLAIM_ANNOTATION] == "10.244.2.0/24"
    writes = sum(op == "replace" for op, _ in api.calls)
    # A restarted agent gets the same subnet and writes nothing.
    assert NodeClaimer(api, sleep=no_sleep).claim("b", NET, 24) == got
    assert sum(op == "replace" for op, _ in api.calls) == writes


def test_interrupted_claim_is_resumed() -> None:
    api = FakeNodeApi()
    api.add_node("a", annotations={CLAIM_ANNOTATION: "10.244.42.0/24"})
    assert NodeClaimer(api, sleep=no_sleep).claim("a", NET, 24) == n("10.244.42.0/24")
    assert api.pod_cidr("a") == "10.244.42.0/24"


def test_claims_of_other_nodes_count_as_taken() -> None:
    api = FakeNodeApi()
    api.add_node("a", annotations={CLAIM_ANNOTATION: "10.244.1.0/24"})
    api.add_node("b")
    assert NodeClaimer(api, sleep=no_sleep, spread=False).claim("b", NET, 24) == n(
        "10.244.2.0/24"
    )


def test_deleted_node_frees_its_subnet() -> None:
    api = FakeNodeApi()
    api.add_node("a", pod_cidr="10.244.1.0/24")
    api.add_node("b")
    api.delete_node("a")
    got = NodeClaimer(api, sleep=no_sleep, spread=False).claim("b", NET, 24)
    assert got == n("10.244.1.0/24")


def test_exhaustion_propagates() -> None:
    api = FakeNodeApi()
    net = n("10.0.0.0/24")
    api.add_node("a", pod_cidr="10.0.0.64/26")
    api.add_node("b", pod_cidr="10.0.0.128/26")
    api.add_node("c", pod_cidr="10.0.0.192/26")
    api.add_node("d")
    with pytest.raises(SubnetExhausted):
        NodeClaimer(api, sleep=no_sleep).claim("d", net, 26)
    assert api.pod_cidr("d") is None


def test_conflicts_from_other_writers_are_retried() -> None:
    touched: list[str] = []
    api = FakeNodeApi()

    def hook(op: str, name: str) -> None:
        # A kubelet status update lands before each of our first two writes.
        if op == "replace" and len(touched) < 2:
            touched.append(name)
            api.touch(name)

    api.hook = hook
    api.add_node("a")
    assert NodeClaimer(api, sleep=no_sleep).claim("a", NET, 24).subnet_of(NET)
    assert api.conflicts == 2
    assert api.pod_cidr("a") is not None


def test_gives_up_after_max_attempts() -> None:
    api = FakeNodeApi()
    api.add_node("a")
    api.hook = lambda op, name: api.touch(name) if op == "replace" else None
    with pytest.raises(SubnetClaimError, match="after 3 attempts"):
        NodeClaimer(api, sleep=no_sleep).claim("a", NET, 24, max_attempts=3)


def test_fake_refuses_changing_pod_cidr() -> None:
    api = FakeNodeApi()
    node = api.add_node("a", pod_cidr="10.244.1.0/24")
    node["spec"]["podCIDR"] = "10.244.2.0/24"
    with pytest.raises(InvalidError):
        api.replace_node("a", node)
    with pytest.raises(ConflictError):
        api.touch("a")
        api.replace_node("a", node)


def test_forced_race_on_the_same_subnet_yields_distinct_subnets() -> None:
    """Both agents list before either writes and pick the same subnet; one must yield."""
    api = FakeNodeApi()
    api.add_node("a")
    api.add_node("b")
    barrier = threading.Barrier(2)
    first_list: set[str] = set()

    def hook(op: str, _: str) -> None:
        me = threading.current_thread().name
        # Both have listed (and chosen) before either writes its claim.
        if op == "replace" and me not in first_list:
            first_list.add(me)
            barrier.wait(timeout=5)

    api.hook = hook
    results: dict[str, ipaddress.IPv4Network] = {}

    def run(name: str) -> None:
        results[name] = NodeClaimer(api, sleep=no_sleep, spread=False).claim(name, NET, 24)

    threads = [threading.Thread(target=run, args=(x,), name=x) for x in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert set(results) == {"a", "b"}
    assert results["a"] != results["b"]
    assert {api.pod_cidr("a"), api.pod_cidr("b")} == {str(results["a"]), str(results["b"])}


def _round(seed: int, nodes: int, spread: bool, net: ipaddress.IPv4Network, length: int) -> None:
    rng = random.Random(seed)
    lock = threading.Lock()

    def hook(_op: str, _name: str) -> None:
        with lock:
            delay = rng.random() * 0.002
        time.sleep(delay)

    api = FakeNodeApi(hook=hook)
    names = [f"node-{i}" for i in range(nodes)]
    for name in names:
        api.add_node(name)
    errors: list[BaseException] = []
    results: dict[str, ipaddress.IPv4Network] = {}

    def run(name: str) -> None:
        try:
            claimer = NodeClaimer(
                api, spread=spread, rng=random.Random(f"{seed}/{name}"), backoff=0.001
            )
            results[name] = claimer.claim(name, net, length, max_attempts=60)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(x,)) for x in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(results) == nodes
    subnets = list(results.values())
    for i, a in enumerate(subnets):
        for b in subnets[i + 1:]:
            assert not a.overlaps(b), (seed, results)
    # What the API stores agrees with what the claimers returned.
    assert {name: api.pod_cidr(name) for name in names} == {
        name: str(s) for name, s in results.items()
    }


@pytest.mark.parametrize("seed", range(30))
def test_concurrent_claimers_get_distinct_subnets_lowest_first(seed: int) -> None:
    # spread=False: every agent starts at the lowest free subnet, the worst case.
    _round(seed, 6, False, NET, 24)


@pytest.mark.parametrize("seed", range(10))
def test_concurrent_claimers_in_a_tight_network(seed: int) -> None:
    # 7 nodes, 7 usable /27s: every subnet ends up used, with spread offsets.
    _round(1000 + seed, 7, True, n("10.0.0.0/24"), 27)


# ----------------------------------------------------------------------------- KubernetesNodeApi


class _Resp:
    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body).encode()


class _StubCore:
    def __init__(self) -> None:
        self.list_calls: list[dict[str, Any]] = []
        self.replaced: list[tuple[str, Any]] = []
        self.fail_with: int | None = None

    def read_node(self, name: str, **kwargs: Any) -> _Resp:
        assert kwargs == {"_preload_content": False}
        return _Resp({"metadata": {"name": name, "resourceVersion": "7"}})

    def list_node(self, **kwargs: Any) -> _Resp:
        self.list_calls.append(kwargs)
        if "_continue" not in kwargs:
            return _Resp({"items": [{"metadata": {"name": "a"}}], "metadata": {"continue": "t1"}})
        return _Resp({"items": [{"metadata": {"name": "b"}}], "metadata": {}})

    def replace_node(self, name: str, body: Any, **kwargs: Any) -> _Resp:
        assert kwargs == {"_preload_content": False}
        if self.fail_with is not None:
            raise ApiException(status=self.fail_with, reason="Conflict")
        self.replaced.append((name, body))
        return _Resp(body)


def test_kubernetes_node_api_returns_dicts_pages_and_maps_409() -> None:
    core = _StubCore()
    api = KubernetesNodeApi(SimpleNamespace(), core_api=core, page_size=1)
    assert api.get_node("a")["metadata"]["resourceVersion"] == "7"
    assert [x["metadata"]["name"] for x in api.list_nodes()] == ["a", "b"]
    assert core.list_calls[1]["_continue"] == "t1"
    assert core.list_calls[0]["limit"] == 1
    body = {"metadata": {"name": "a"}}
    assert api.replace_node("a", body) == body
    core.fail_with = 409
    with pytest.raises(ConflictError):
        api.replace_node("a", body)
    core.fail_with = 500
    with pytest.raises(ApiException):
        api.replace_node("a", body)


def test_kubernetes_node_api_builds_core_api_from_client() -> None:
    from kubernetes import client

    api = KubernetesNodeApi(client.ApiClient())
    assert isinstance(api._core, client.CoreV1Api)


def test_without_the_check_the_forced_race_collides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the race the check closes is real (both commit the same subnet without it)."""
    monkeypatch.setattr(NodeClaimer, "_contested", lambda *_: False)
    api = FakeNodeApi()
    api.add_node("a")
    api.add_node("b")
    barrier = threading.Barrier(2)
    seen: set[str] = set()

    def hook(op: str, _: str) -> None:
        me = threading.current_thread().name
        if op == "replace" and me not in seen:
            seen.add(me)
            barrier.wait(timeout=5)

    api.hook = hook
    threads = [
        threading.Thread(
            target=lambda x=x: NodeClaimer(api, sleep=no_sleep, spread=False).claim(x, NET, 24),
            name=x,
        )
        for x in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert api.pod_cidr("a") == api.pod_cidr("b") == "10.244.1.0/24"


def test_commit_conflicts_keep_the_claimed_subnet() -> None:
    """409s on the spec write (kubelet updates) are retried without choosing anew."""
    api = FakeNodeApi()
    api.add_node("a")
    replaces: list[int] = []

    def hook(op: str, name: str) -> None:
        if op == "replace":
            replaces.append(1)
            if 2 <= len(replaces) <= 8:  # every spec write of the first round, and more
                api.touch(name)

    api.hook = hook
    got = NodeClaimer(api, sleep=no_sleep).claim("a", NET, 24)
    assert api.pod_cidr("a") == str(got)
    assert api.get_node("a")["metadata"]["annotations"][CLAIM_ANNOTATION] == str(got)
    assert api.conflicts == 7
