"""netagent.sources.manifests: loading a manifests directory and watching it for changes.

Covers: the fixtures directory loads cleanly; multi-document YAML, ``kind: List``
and typed lists (``ServiceList`` items without a kind); JSON files; which files
are read (suffixes, dot-files, sort order); a bad YAML/JSON file or a bad object
never blocks the others, is listed in ``errors`` with file and line, and is
logged as exactly one warning line; duplicates across files; unknown kinds
ignored. The watcher: add, modify (including a same-size rewrite), delete,
no false positive on ``touch``, and ``wait_for_change`` returning on a change
and on stop, within about a second of sleeping in total.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from netagent.model import IPFamily, ServicePort, ServicePortName
from netagent.sources.manifests import (
    ManifestFileError,
    ManifestWatcher,
    load_manifests,
    manifest_files,
)
from netagent.translate import InvalidObject

FIXTURES = Path(__file__).parent / "fixtures"
LOGGER = "netagent.sources.manifests"


def service(name: str, ip: str, port: int = 80, namespace: str = "default") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": ip, "ports": [{"port": port}]},
    }


def write_yaml(path: Path, *docs: object) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def names(ports: Iterable[ServicePort]) -> list[str]:
    """The ``namespace/name`` of each Service among ``ports``."""
    return sorted({p.name.service for p in ports})


def test_fixtures_directory_loads_without_errors(tmp_path: Path) -> None:
    for f in FIXTURES.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    snap = load_manifests(tmp_path)
    assert snap.errors == ()
    assert [str(p.name) for p in snap.services] == ["shop/web:http", "shop/web:metrics"]
    assert [s.key for s in snap.slices] == ["shop/web-7xk2p"]
    assert [n.name for n in snap.nodes] == ["node-a"]
    assert list(snap.ports_by_service()) == ["shop/web"]
    assert [p.name for p in snap.files] == [
        "endpointslice-web.yaml",
        "node-a.yaml",
        "service-web.yaml",
    ]


def test_multi_document_yaml_with_empty_documents(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text(
        "---\n"
        + yaml.safe_dump(service("a", "10.96.0.1"))
        + "---\n"
        + "# only a comment\n"
        + "---\n"
        + yaml.safe_dump(service("b", "10.96.0.2"))
        + "---\n"
    )
    snap = load_manifests(tmp_path)
    assert snap.errors == ()
    assert names(snap.services) == ["default/a", "default/b"]


def test_list_and_typed_list(tmp_path: Path) -> None:
    write_yaml(
        tmp_path / "list.yaml",
        {"apiVersion": "v1", "kind": "List", "items": [service("a", "10.96.0.1")]},
    )
    typed_item = service("b", "10.96.0.2")
    del typed_item["kind"]  # the API leaves kind out of typed list items
    (tmp_path / "svc.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "ServiceList", "items": [typed_item]})
    )
    snap = load_manifests(tmp_path)
    assert snap.errors == ()
    assert names(snap.services) == ["default/a", "default/b"]


def test_only_manifest_suffixes_and_no_dot_files(tmp_path: Path) -> None:
    write_yaml(tmp_path / "b.yml", service("b", "10.96.0.2"))
    write_yaml(tmp_path / "a.YAML", service("a", "10.96.0.1"))
    write_yaml(tmp_path / ".c.yaml.tmp", service("c", "10.96.0.3"))
    write_yaml(tmp_path / ".d.yaml", service("d", "10.96.0.4"))
    write_yaml(tmp_path / "e.txt", service("e", "10.96.0.5"))
    (tmp_path / "sub.yaml").mkdir()
    write_yaml(tmp_path / "sub.yaml" / "f.yaml", service("f", "10.96.0.6"))
    assert [p.name for p in manifest_files(tmp_path)] == ["a.YAML", "b.yml"]
    assert names(load_manifests(tmp_path).services) == ["default/a", "default/b"]


def test_bad_yaml_file_does_not_block_good_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_yaml(tmp_path / "a.yaml", service("a", "10.96.0.1"))
    (tmp_path / "b.yaml").write_text(
        yaml.safe_dump(service("b", "10.96.0.2")) + "---\nkind: Service\nmetadata: {name: [\n"
    )
    write_yaml(tmp_path / "c.yaml", service("c", "10.96.0.3"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        snap = load_manifests(tmp_path)
    # The document before the syntax error is kept.
    assert names(snap.services) == ["default/a", "default/b", "default/c"]
    (error,) = snap.errors
    assert isinstance(error, ManifestFileError)
    assert error.path == tmp_path / "b.yaml"
    assert error.line == 13  # libyaml reports the end of input, where the flow is unclosed
    assert str(error).startswith(f"{tmp_path / 'b.yaml'}:13:")
    assert "invalid YAML" in str(error) and "\n" not in str(error)
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [f"skipping {error}"]


def test_bad_json_file_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{\n  "kind": "Service",\n  "metadata": }\n')
    write_yaml(tmp_path / "good.yaml", service("a", "10.96.0.1"))
    snap = load_manifests(tmp_path)
    assert names(snap.services) == ["default/a"]
    assert [str(e) for e in snap.errors] == [
        f"{tmp_path / 'bad.json'}:3:15: invalid JSON: Expecting value"
    ]


def test_invalid_object_is_skipped_listed_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = service("web", "10.96.0.1", port=70000)
    write_yaml(tmp_path / "a.yaml", service("ok", "10.96.0.2"), bad, service("ok2", "10.96.0.3"))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        snap = load_manifests(tmp_path)
    assert names(snap.services) == ["default/ok", "default/ok2"]
    (error,) = snap.errors
    assert isinstance(error, InvalidObject)
    assert str(error) == "Service default/web: spec.ports[0].port 70000 is out of range 1-65535"
    assert error.source == f"{tmp_path / 'a.yaml'}:11"
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"skipping Service default/web ({tmp_path / 'a.yaml'}:11): "
        "spec.ports[0].port 70000 is out of range 1-65535"
    ]


def test_known_errors_are_not_warned_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_yaml(tmp_path / "a.yaml", service("web", "10.96.0.1", port=0))
    (tmp_path / "b.yaml").write_text("kind: [\n")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        first = load_manifests(tmp_path)
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
        caplog.clear()
        again = load_manifests(tmp_path, known_errors=[str(e) for e in first.errors])
    assert [str(e) for e in again.errors] == [str(e) for e in first.errors]
    assert [r.levelno for r in caplog.records if r.getMessage().startswith("skipping")] == [
        logging.DEBUG,
        logging.DEBUG,
    ]


def test_every_kind_of_bad_object_is_reported_and_the_rest_loads(tmp_path: Path) -> None:
    bad_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-x"},
        "addressType": "IPv4",
        "endpoints": [],
    }
    bad_node = {"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.0.0.0/99"}}
    write_yaml(tmp_path / "a.yaml", bad_slice, bad_node, ["not", "an", "object"], {"x": 1})
    write_yaml(tmp_path / "b.yaml", service("web", "10.96.0.1"))
    snap = load_manifests(tmp_path)
    assert names(snap.services) == ["default/web"]
    assert [str(e) for e in snap.errors] == [
        'EndpointSlice default/web-x: metadata.labels["kubernetes.io/service-name"] is missing',
        'Node n1: spec.podCIDR "10.0.0.0/99" is not a CIDR',
        f"{tmp_path / 'a.yaml'}:14: document is a list, not an object",
        f"{tmp_path / 'a.yaml'}:18: document has no kind",
    ]


def test_unknown_kinds_and_fqdn_slices_are_ignored_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_yaml(
        tmp_path / "a.yaml",
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}},
        {
            "kind": "EndpointSlice",
            "metadata": {"name": "db", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["db.example.com"]}],
        },
    )
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        snap = load_manifests(tmp_path)
    assert snap.errors == () and snap.slices == () and snap.services == ()
    assert any("Deployment" in r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_duplicate_object_first_file_wins(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", service("web", "10.96.0.1"))
    write_yaml(tmp_path / "b.yaml", service("web", "10.96.0.2"))
    snap = load_manifests(tmp_path)
    assert [str(p.cluster_ips[0]) for p in snap.services] == ["10.96.0.1"]
    (error,) = snap.errors
    assert (
        str(error)
        == f"Service default/web: duplicate of the one in {tmp_path / 'a.yaml'}:1, ignored"
    )


def test_slices_and_nodes_are_loaded(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "endpointslice-web.yaml", tmp_path / "eps.yaml")
    shutil.copy(FIXTURES / "node-a.yaml", tmp_path / "node.yaml")
    snap = load_manifests(tmp_path)
    (slice_,) = snap.slices
    assert slice_.address_type is IPFamily.IPV4 and len(slice_.endpoints) == 3
    assert snap.nodes[0].pod_cidrs[0].prefixlen == 24
    assert snap.services == ()


def test_missing_directory_is_an_error_not_an_exception(tmp_path: Path) -> None:
    snap = load_manifests(tmp_path / "nope")
    assert [str(e) for e in snap.errors] == [f"{tmp_path / 'nope'}: is not a directory"]


def test_ports_by_service_groups_in_spec_order(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "service-web.yaml", tmp_path / "svc.yaml")
    grouped = load_manifests(tmp_path).ports_by_service()
    assert [p.name for p in grouped["shop/web"]] == [
        ServicePortName("shop", "web", "http"),
        ServicePortName("shop", "web", "metrics"),
    ]


# --------------------------------------------------------------------------- watcher


def test_watcher_sees_add_modify_delete_and_ignores_touch(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", service("a", "10.96.0.1"))
    watcher = ManifestWatcher(tmp_path, interval=0.05)
    assert not watcher.changed()

    b = write_yaml(tmp_path / "b.yaml", service("b", "10.96.0.2"))
    assert watcher.changed()
    assert not watcher.changed()

    # Same size, same mtime: only the racy-window re-hash can see this.
    st = b.stat()
    b.write_text(b.read_text().replace("10.96.0.2", "10.96.0.9"))
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert b.stat().st_size == st.st_size
    assert watcher.changed()

    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touch, same bytes
    assert not watcher.changed()

    b.unlink()
    assert watcher.changed()
    assert not watcher.changed()

    (tmp_path / ".b.yaml.tmp").write_text("kind: Service\n")  # not a manifest file
    (tmp_path / "notes.txt").write_text("hello\n")
    assert not watcher.changed()


def test_watcher_of_a_missing_directory_sees_it_appear(tmp_path: Path) -> None:
    directory = tmp_path / "later"
    watcher = ManifestWatcher(directory, interval=0.05)
    assert not watcher.changed()
    directory.mkdir()
    assert not watcher.changed()  # an empty directory has no content
    write_yaml(directory / "a.yaml", service("a", "10.96.0.1"))
    assert watcher.changed()


def test_watcher_rejects_a_non_positive_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval"):
        ManifestWatcher(tmp_path, interval=0)


def test_wait_for_change_returns_on_change_and_on_stop(tmp_path: Path) -> None:
    watcher = ManifestWatcher(tmp_path, interval=0.05)

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        waiter = asyncio.create_task(watcher.wait_for_change(stop))
        await asyncio.sleep(0.15)
        assert not waiter.done()  # nothing changed yet
        start = loop.time()
        write_yaml(tmp_path / "a.yaml", service("a", "10.96.0.1"))
        await asyncio.wait_for(waiter, timeout=2)
        seen_after = loop.time() - start

        idle = asyncio.create_task(watcher.wait_for_change(stop))
        await asyncio.sleep(0.1)
        assert not idle.done()
        start = loop.time()
        stop.set()
        await asyncio.wait_for(idle, timeout=2)
        return seen_after, loop.time() - start

    seen_after, stopped_after = asyncio.run(scenario())
    assert seen_after < 0.5
    assert stopped_after < 0.5
