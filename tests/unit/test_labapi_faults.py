"""labapi fault injection and the request log, over the /lab/ HTTP paths and in-process.

Covers: close-watches ending open watch streams (clean end, and abrupt);
injected 500s for the next N requests then success; 429 with Retry-After;
a path-prefix filter; pause holding requests until it ends; compact → 410;
the request log (method, path, query, status, watch flag) and clearing it;
/lab/ requests bypassing faults and the log; the CLI printing its ready
line and writing a kubeconfig; silenced watches; and snapshot/restore taking
objects and resourceVersion back (a watch from a newer version gets 504).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from labapi import LabApiServer, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def core(lab: LabApiServer, tmp_path: Path) -> client.CoreV1Api:
    kc = write_kubeconfig(tmp_path / "kubeconfig", lab.url)
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kc), client_configuration=cfg)
    return client.CoreV1Api(client.ApiClient(cfg))


def lab_post(srv: LabApiServer, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(f"{srv.url}{path}", method="POST",
                                 data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def http_get(srv: LabApiServer, path: str) -> tuple[int, dict[str, str], Any]:
    try:
        with urllib.request.urlopen(f"{srv.url}{path}", timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_close_watches(lab: LabApiServer, core: client.CoreV1Api) -> None:
    resp = core.list_namespaced_pod("default", watch=True, timeout_seconds=30,
                                    _preload_content=False)
    deadline = time.monotonic() + 5
    while lab.store.watcher_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert lab_post(lab, "/lab/faults/close-watches") == {"closed": 1}
    lines = [line for line in resp if line.strip()]
    assert lines == [] and time.monotonic() - started < 2
    assert lab.store.watcher_count() == 0

    # Abrupt: the connection drops without the end of the chunked body.
    resp = core.list_namespaced_pod("default", watch=True, timeout_seconds=30,
                                    _preload_content=False)
    while lab.store.watcher_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lab.close_watches(abrupt=True) == 1
    with pytest.raises(Exception):  # noqa: B017 - urllib3 names it ProtocolError
        list(resp)


def test_injected_500s_then_ok(lab: LabApiServer, core: client.CoreV1Api) -> None:
    lab_post(lab, "/lab/faults/errors", {"status": 500, "count": 2})
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            core.list_namespaced_service("default")
        assert exc.value.status == 500
        assert json.loads(exc.value.body)["reason"] == "InternalError"
    assert core.list_namespaced_service("default").items == []
    statuses = [r["status"] for r in lab.requests()]
    assert statuses == [500, 500, 200]


def test_429_retry_after_and_path_filter(lab: LabApiServer) -> None:
    lab.inject_errors(429, 1, retry_after=3, path_prefix="/api/v1/namespaces/default/pods")
    status, _, _ = http_get(lab, "/api/v1/namespaces/default/services")
    assert status == 200
    status, headers, body = http_get(lab, "/api/v1/namespaces/default/pods")
    assert status == 429 and headers["Retry-After"] == "3"
    assert body["reason"] == "TooManyRequests" and body["details"]["retryAfterSeconds"] == 3
    status, _, _ = http_get(lab, "/api/v1/namespaces/default/pods")
    assert status == 200


def test_pause_holds_requests(lab: LabApiServer) -> None:
    lab_post(lab, "/lab/faults/pause", {"seconds": 0.8})
    started = time.monotonic()
    status, _, _ = http_get(lab, "/api/v1/namespaces")
    held = time.monotonic() - started
    assert status == 200 and 0.6 <= held < 2
    # /lab/ paths are never held; after the pause requests are immediate again.
    started = time.monotonic()
    http_get(lab, "/api/v1/namespaces")
    assert time.monotonic() - started < 0.5


def test_pause_then_resume(lab: LabApiServer) -> None:
    lab.pause(30)
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(http_get(lab, "/version")[0]))
    t.start()
    time.sleep(0.3)
    assert done == []
    lab_post(lab, "/lab/faults/resume")
    t.join(5)
    assert done == [200]


def test_compact_over_http(lab: LabApiServer, core: client.CoreV1Api) -> None:
    first = core.create_namespaced_pod("default", {"metadata": {"name": "a"}, "spec": {
        "containers": [{"name": "c", "image": "i"}]}})
    out = lab_post(lab, "/lab/compact")
    assert int(out["compactedResourceVersion"]) >= int(first.metadata.resource_version)
    resp = core.list_namespaced_pod("default", watch=True, timeout_seconds=5,
                                    resource_version=str(int(first.metadata.resource_version)
                                                         - 1), _preload_content=False)
    events = [json.loads(line) for line in resp if line.strip()]
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]


def test_request_log(lab: LabApiServer, core: client.CoreV1Api) -> None:
    core.list_namespaced_service("default", label_selector="a=b")
    read = core.list_namespaced_service("default", watch=True, timeout_seconds=1,
                                        _preload_content=False)
    list(read)
    status, _, log = http_get(lab, "/lab/requests")
    assert status == 200
    assert [(r["method"], r["path"], r["status"], r["watch"]) for r in log] == [
        ("GET", "/api/v1/namespaces/default/services", 200, False),
        ("GET", "/api/v1/namespaces/default/services", 200, True)]
    assert "labelSelector=a%3Db" in log[0]["query"] and isinstance(log[0]["time"], float)
    req = urllib.request.Request(f"{lab.url}/lab/requests", method="DELETE")
    urllib.request.urlopen(req, timeout=5).close()
    assert lab.requests() == []


def test_cli_serves_and_writes_kubeconfig(tmp_path: Path) -> None:
    kc = tmp_path / "kc.yaml"
    env = dict(os.environ, PYTHONPATH=str(REPO / "netns-lab"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "labapi", "serve", "--host", "127.0.0.1", "--port", "0",
         "--kubeconfig-out", str(kc)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("labapi listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        doc = yaml.safe_load(kc.read_text())
        assert doc["clusters"][0]["cluster"]["server"] == url
        assert doc["current-context"] == "netns-lab"
        with urllib.request.urlopen(f"{url}/version", timeout=5) as resp:
            assert json.loads(resp.read())["gitVersion"].startswith("v1.32")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_errors_only_for_later_list_pages(lab: LabApiServer, core: client.CoreV1Api) -> None:
    for i in range(5):
        core.create_namespaced_service(
            "default", {"metadata": {"name": f"s{i}"}, "spec": {"ports": [{"port": 80}]}}
        )
    lab_post(lab, "/lab/faults/errors", {"status": 500, "count": 1, "continuedOnly": True})
    first = core.list_namespaced_service("default", limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    with pytest.raises(ApiException) as info:
        core.list_namespaced_service("default", limit=2, _continue=first.metadata._continue)
    assert info.value.status == 500
    again = core.list_namespaced_service("default", limit=2, _continue=first.metadata._continue)
    assert len(again.items) == 2


def test_corrupt_events_precede_the_next_watch_events(
    lab: LabApiServer, core: client.CoreV1Api
) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    assert lab_post(lab, "/lab/faults/corrupt-events", {"count": 1}) == {"corrupting": 1}
    resp = core.list_namespaced_pod("default", watch=True, resource_version=rv,
                                    timeout_seconds=1, _preload_content=False)
    core.create_namespaced_pod("default", {"metadata": {"name": "p1"},
                                           "spec": {"containers": [{"name": "c", "image": "i"}]}})
    core.create_namespaced_pod("default", {"metadata": {"name": "p2"},
                                           "spec": {"containers": [{"name": "c", "image": "i"}]}})
    lines = [line for line in resp.read().decode().splitlines() if line.strip()]
    with pytest.raises(ValueError):
        json.loads(lines[0])
    assert [json.loads(x)["object"]["metadata"]["name"] for x in lines[1:]] == ["p1", "p2"]


def _pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}}


def test_silenced_watch_sends_nothing_until_the_client_gives_up(
    lab: LabApiServer, core: client.CoreV1Api
) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    # A short client-side read timeout: the socket read is what notices the silence.
    resp = core.list_namespaced_pod("default", watch=True, resource_version=rv,
                                    timeout_seconds=2, allow_watch_bookmarks=True,
                                    _preload_content=False, _request_timeout=(5, 1.5))
    deadline = time.monotonic() + 5
    while lab.store.watcher_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lab_post(lab, "/lab/faults/silence-watches")["silenced"] == 1
    core.create_namespaced_pod("default", _pod("quiet"))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        for _ in resp.stream(1024):
            pass
    # Not ended at its own 2 s timeout either: only the client's read timeout ended it.
    assert time.monotonic() - started >= 1.0
    resp.release_conn()
    # A watch opened afterwards is normal and gets the event of the silent period.
    again = core.list_namespaced_pod("default", watch=True, resource_version=rv,
                                     timeout_seconds=1, _preload_content=False)
    names = [json.loads(line)["object"]["metadata"]["name"]
             for line in again.read().decode().splitlines() if line.strip()]
    assert names == ["quiet"]


def test_restore_takes_objects_and_resource_version_back(
    lab: LabApiServer, core: client.CoreV1Api
) -> None:
    core.create_namespaced_pod("default", _pod("kept"))
    saved = lab_post(lab, "/lab/snapshot")["resourceVersion"]
    core.create_namespaced_pod("default", _pod("lost"))
    newest = core.list_namespaced_pod("default").metadata.resource_version
    assert int(newest) > int(saved)
    assert lab_post(lab, "/lab/restore") == {"resourceVersion": saved}
    listed = core.list_namespaced_pod("default")
    assert [p.metadata.name for p in listed.items] == ["kept"]
    assert listed.metadata.resource_version == saved
    # A watch from the newer version, as a client that saw "lost" resumes: 504, too large.
    resp = core.list_namespaced_pod("default", watch=True, resource_version=newest,
                                    timeout_seconds=5, _preload_content=False)
    events = [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 504)]
    status = events[0]["object"]
    assert status["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    assert f"Too large resource version: {newest}, current: {saved}" in status["message"]
    # Writes after the restore continue from the restored version.
    made = core.create_namespaced_pod("default", _pod("after"))
    assert int(made.metadata.resource_version) == int(saved) + 1


def test_restore_without_a_snapshot_is_refused(lab: LabApiServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        lab_post(lab, "/lab/restore")
    assert info.value.code == 409
    assert "POST /lab/snapshot first" in info.value.read().decode()
