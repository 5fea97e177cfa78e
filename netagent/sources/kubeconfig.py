"""Build the kubernetes-client ``ApiClient`` the API watch uses.

Why a module of its own: where the credentials come from is a deployment
question (a kubeconfig on a test machine, the pod's service account in a
DaemonSet, a plain URL for the lab API server), and the reflectors should not
care. Everything here returns a fresh :class:`kubernetes.client.ApiClient`
with its own ``Configuration``, so nothing touches the client library's
process-wide default configuration and several clients can coexist (tests
start more than one lab API server).

Which source wins, in this order, like kube-proxy's ``--kubeconfig`` flag:

1. an explicit kubeconfig path: used as given, and an error if it fails (a
   typo must not silently fall back to other credentials);
2. in-cluster configuration, when ``KUBERNETES_SERVICE_HOST`` is set;
3. ``$KUBECONFIG`` (a ``:``-separated list) or ``~/.kube/config`` if present.

When none works, :class:`KubeconfigError` says what was tried and why each
failed, in one line.

Retries: urllib3, under the client, would by default retry a 429 or 503
itself, sleeping out ``Retry-After`` inside the call where nobody can log or
interrupt it. The clients built here let urllib3 retry only connection
failures (quickly, three times) and hand every HTTP error to the caller: the
reflectors honour ``Retry-After`` in their own, interruptible backoff.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, Configuration
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)
from kubernetes.config.kube_config import load_kube_config
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

DEFAULT_KUBECONFIG = Path("~/.kube/config")


class KubeconfigError(RuntimeError):
    """No usable API credentials; ``str()`` is one line saying what was tried."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _client(configuration: Configuration) -> ApiClient:
    """An ApiClient whose transport retries only failed connections (see the module doc)."""
    configuration.retries = Retry(
        total=3,
        connect=3,
        read=0,
        status=0,
        other=0,
        redirect=3,
        backoff_factor=0.2,
        respect_retry_after_header=False,
        raise_on_status=False,
    )
    return ApiClient(configuration=configuration)


def _from_kubeconfig(path: str, context: str | None) -> ApiClient:
    configuration = Configuration()
    load_kube_config(  # type: ignore[no-untyped-call]
        config_file=path,
        context=context,
        client_configuration=configuration,
        persist_config=False,
    )
    return _client(configuration)


def _in_cluster(environ: Mapping[str, str], token_file: str, cert_file: str) -> ApiClient:
    configuration = Configuration()
    loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=token_file, cert_filename=cert_file, environ=environ
    )
    loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    return _client(configuration)


def api_client_from_environment(
    kubeconfig: str | Path | None = None,
    *,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
    token_file: str = SERVICE_TOKEN_FILENAME,
    cert_file: str = SERVICE_CERT_FILENAME,
) -> ApiClient:
    """An ApiClient from ``kubeconfig``, the pod's service account, or the default kubeconfig.

    Raises :class:`KubeconfigError` when no source works.
    """
    env = os.environ if environ is None else environ
    if kubeconfig is not None:
        path = os.path.expanduser(str(kubeconfig))
        try:
            return _from_kubeconfig(path, context)
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            raise KubeconfigError(f"cannot use kubeconfig {path}: {_one_line(exc)}") from exc

    tried: list[str] = []
    if env.get(SERVICE_HOST_ENV_NAME):
        try:
            client = _in_cluster(env, token_file, cert_file)
        except (ConfigException, OSError) as exc:
            tried.append(f"in-cluster config ({SERVICE_HOST_ENV_NAME} is set): {_one_line(exc)}")
        else:
            log.info("using in-cluster API configuration")
            return client
    else:
        tried.append(f"in-cluster config: {SERVICE_HOST_ENV_NAME} is not set (not in a pod)")

    default = env.get("KUBECONFIG") or str(DEFAULT_KUBECONFIG)
    paths = [os.path.expanduser(p) for p in default.split(os.pathsep) if p]
    existing = [p for p in paths if os.path.isfile(p)]
    if existing:
        try:
            client = _from_kubeconfig(os.pathsep.join(existing), context)
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            tried.append(f"kubeconfig {os.pathsep.join(existing)}: {_one_line(exc)}")
        else:
            log.info("using kubeconfig %s", os.pathsep.join(existing))
            return client
    else:
        tried.append(f"kubeconfig {os.pathsep.join(paths)}: no such file")
    raise KubeconfigError("no Kubernetes API credentials (pass --kubeconfig): " + "; ".join(tried))


def api_client_for_url(
    url: str,
    *,
    token: str | None = None,
    ca_file: str | None = None,
    verify_ssl: bool = True,
) -> ApiClient:
    """An ApiClient for an explicit server URL (kube-proxy's ``--master``; the lab API server)."""
    configuration = Configuration(host=url.rstrip("/"))
    configuration.verify_ssl = verify_ssl
    if ca_file is not None:
        configuration.ssl_ca_cert = ca_file
    if token is not None:
        configuration.api_key["BearerToken"] = f"Bearer {token}"
    return _client(configuration)


def describe(client: Any) -> str:
    """The server URL a client talks to, for log lines."""
    configuration = getattr(client, "configuration", None)
    return str(getattr(configuration, "host", "?"))
