"""The field table: every setting of `netagent run`, listed once.

Why: a setting used to be written four times (its flag, the flag's name in
the CLI, its YAML key, its check) plus once more in docs/configuration.md,
and the copies drifted. Each :class:`FieldSpec` row below now says everything
about one :class:`netagent.config.AgentConfig` attribute except its Python
type and default, which stay on the typed dataclass: where it sits in
netagent's YAML file, its flags, its value type (the check), and the text of
its flag help and of its docs row. The flags of `netagent run`, the YAML
reader, ``config_to_dict`` and the reference tables in docs/configuration.md
are all generated from this table.

The YAML file is grouped like kube-proxy's KubeProxyConfiguration: the
dotted ``path`` of a row is its place in the file (``overlay.backend`` is
``backend`` under ``overlay:``). Adding a setting is one row here plus its
typed attribute on AgentConfig; a new group (``ipvs``, ``nftables``) needs no
other change either, and those two are reserved already.
"""

from __future__ import annotations

from dataclasses import dataclass

from netagent import config_values as v

#: Must list netagent.proxy.registry.MODES (a unit test checks; the registry imports config).
PROXY_MODES = ("iptables", "ipvs", "nftables", "none")
IPTABLES_BACKENDS = ("auto", "nft", "legacy")
OVERLAY_BACKENDS = ("none", "vxlan", "host-gw")
#: ``overlay.vxlanTxChecksum`` values (see netagent/overlay/checksum.py).
VXLAN_TX_CHECKSUM = ("auto", "on", "off")

#: Groups that hold no setting yet; they are accepted (empty) so that files
#: written for the backends to come are not refused for the group alone.
RESERVED_GROUPS = ("nftables",)

NODE = "Node and proxy"
SOURCE = "Object source and API access"
SYNC = "Sync timing"
SERVE = "Health and metrics"
OVERLAY = "Overlay (API mode only)"
#: The docs sections, in order.
SECTIONS = (NODE, SOURCE, SYNC, SERVE, OVERLAY)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One setting.

    Attributes:
        attr: The AgentConfig attribute (also the flag's argparse ``dest``).
        path: Its YAML path in netagent's file, dotted by group.
        flags: Its flags, the main one first. A boolean also gets ``--no-X``.
        type: How a value is checked and written back (netagent.config_values).
        section: The docs section that lists it.
        help: The flag's help (the default is appended).
        doc: Its row in docs/configuration.md (Markdown).
        aliases: Other YAML paths accepted for it (at most one may be given).
        former: Its flat YAML key before the file was grouped, if it differs;
            such a key is refused with a pointer to ``path``.
        default_doc: The docs' default column when the plain default says too
            little (``$NODE_NAME``).
    """

    attr: str
    path: str
    flags: tuple[str, ...]
    type: v.ValueType
    section: str
    help: str
    doc: str
    aliases: tuple[str, ...] = ()
    former: str = ""
    default_doc: str = ""

    def show(self, value: object) -> str:
        """A value (a default) as the docs and ``--help`` show it."""
        if value is None:
            return "unset"
        if value == ():
            return "empty"
        dumped = self.type.dump(value)
        return str(dumped).lower() if isinstance(dumped, bool) else str(dumped)

    @property
    def group(self) -> str:
        """The YAML group (``overlay``), or "" for a top-level key."""
        return self.path.rpartition(".")[0]

    @property
    def key(self) -> str:
        """The key inside its group (``backend``)."""
        return self.path.rpartition(".")[2]


# A table: each row starts with attribute, path, flags, type and section.
# fmt: off
FIELDS: tuple[FieldSpec, ...] = (
    # ---- node and proxy -----------------------------------------------------------------
    FieldSpec(
        "node_name", "nodeName", ("--node-name", "--hostname-override"), v.NODE_NAME, NODE,
        "this node's Node name",
        "The name of this node's Node object. Required: the agent refuses to start without "
        "it. The agent uses it to find the node's own addresses and pod CIDR, and the overlay "
        "uses it to claim and publish on that Node. A KubeProxyConfiguration's "
        "`hostnameOverride` sets it; unlike kube-proxy, netagent never falls back to the "
        "host name.",
        default_doc="`$NODE_NAME`",
    ),
    FieldSpec(
        "cluster_cidrs", "clusterCIDR", ("--cluster-cidr",), v.CIDR_LIST, NODE,
        "pod network CIDR(s), comma-separated",
        "The pod network. Traffic to a ClusterIP from a source outside these CIDRs is marked "
        "for masquerade. For an address family with no CIDR here (and `iptables.masqueradeAll` "
        "off), ClusterIP traffic of that family is not masqueraded by source. An IPv6 CIDR "
        "here turns on the IPv6 proxier and the IPv6 forwarding sysctls. The IPv6 proxier also "
        "runs when the node's own addresses include IPv6. The overlay uses the first IPv4 CIDR "
        "as its network.",
    ),
    FieldSpec(
        "proxy_mode", "mode", ("--proxy-mode",), v.choice(PROXY_MODES), NODE,
        "the proxier",
        "How Services are programmed: `iptables` (a chain per service port, one "
        "iptables-restore per sync), `ipvs` (IPVS virtual servers over netlink, ipsets and a "
        "constant handful of iptables rules; the kernel needs the ip_vs modules), `nftables` "
        "(netagent's own `ip`/`ip6 netagent` tables, "
        "services as map elements, one `nft -f` transaction per sync, no iptables rule at all; "
        "see docs/nftables.md), or `none` (no Service rules at all, for a node that keeps "
        "its kube-proxy and uses netagent only for the overlay; the overlay's masquerade and "
        "FORWARD chains are still written). Starting in one mode removes the other modes' rules.",
    ),
    FieldSpec(
        "ipvs_scheduler", "ipvs.scheduler", ("--ipvs-scheduler",), v.TEXT, NODE,
        "IPVS scheduler (rr, wrr, lc, wlc, sh, mh, ...)",
        "The IPVS scheduler of every virtual server in `ipvs` mode. The agent refuses to start "
        "when the kernel has no module for it. kube-proxy's empty value means `rr`.",
    ),
    FieldSpec(
        "ipvs_strict_arp", "ipvs.strictARP", ("--ipvs-strict-arp",), v.BOOLEAN, NODE,
        "arp_ignore=1 and arp_announce=2, so service addresses are never ARPed",
        "In `ipvs` mode, set `arp_ignore=1` and `arp_announce=2` on all interfaces. The node "
        "then never answers ARP for the service addresses on its dummy device, which "
        "layer-2 load balancers such as MetalLB need.",
    ),
    FieldSpec(
        "ipvs_exclude_cidrs", "ipvs.excludeCIDRs", ("--ipvs-exclude-cidrs",), v.CIDR_LIST, NODE,
        "virtual servers in these CIDRs are never touched",
        "In `ipvs` mode, virtual servers whose address is in one of these CIDRs are left "
        "alone: never changed, never deleted by a sync or by cleanup.",
    ),
    FieldSpec(
        "ipvs_tcp_timeout", "ipvs.tcpTimeout", ("--ipvs-tcp-timeout",), v.IPVS_TIMEOUT, NODE,
        "IPVS idle timeout of established TCP connections; 0 leaves the kernel's (900s)",
        "In `ipvs` mode, the kernel's IPVS timeout for established TCP connections (`ipvsadm "
        "--set` first value), set once at start for the node's network namespace. `0` leaves "
        "the kernel's value (900 s on a fresh node). Whole seconds.",
    ),
    FieldSpec(
        "ipvs_tcp_fin_timeout", "ipvs.tcpFinTimeout", ("--ipvs-tcp-fin-timeout",),
        v.IPVS_TIMEOUT, NODE,
        "IPVS timeout of TCP connections after a FIN; 0 leaves the kernel's (120s)",
        "In `ipvs` mode, the IPVS timeout of TCP connections in FIN_WAIT (after the client's "
        "FIN). `0` leaves the kernel's value (120 s). Whole seconds.",
    ),
    FieldSpec(
        "ipvs_udp_timeout", "ipvs.udpTimeout", ("--ipvs-udp-timeout",), v.IPVS_TIMEOUT, NODE,
        "IPVS timeout of UDP flows; 0 leaves the kernel's (300s)",
        "In `ipvs` mode, the IPVS timeout of UDP flows. `0` leaves the kernel's value "
        "(300 s). Whole seconds.",
    ),
    FieldSpec(
        "iptables_backend", "iptables.backend", ("--iptables-backend",),
        v.choice(IPTABLES_BACKENDS), NODE,
        "iptables tools: auto-detect, nft or legacy",
        "Which iptables tools to use. `auto` detects the backend at the first sync: kubelet's "
        "hint chains decide first. If they are absent, the backend with more rules wins (nft "
        "on a tie). A backend whose tools are missing is never chosen.",
        former="iptablesBackend",
    ),
    FieldSpec(
        "nodeport_addresses", "nodePortAddresses", ("--nodeport-addresses",),
        v.NODEPORT_CIDRS, NODE,
        "CIDRs whose local IPs accept NodePorts, comma-separated",
        "Only local addresses inside these CIDRs accept NodePorts. A `/0` entry means every "
        "local address. kube-proxy's keywords are read too: `all` is `0.0.0.0/0` and `::/0`, "
        "`localhost` is `127.0.0.0/8` and `::1/128`; `primary` is refused.",
        default_doc="empty = every local address",
    ),
    FieldSpec(
        "external_ip_allow_cidrs", "externalIPAllowCIDRs", ("--external-ip-allow-cidrs",),
        v.CIDR_YAML_LIST, NODE,
        "CIDRs a Service's externalIPs may come from, comma-separated (CVE-2020-8554)",
        "Only Service `externalIPs` inside these CIDRs are programmed (CVE-2020-8554). An "
        "externalIP outside them is dropped from its Service, which keeps its other "
        "addresses, with one warning naming the Service and the address and the gauge "
        "`netagent_external_ips_rejected`; traffic to that address then reaches whoever "
        "really owns it. Empty allows every externalIP, as kube-proxy does. **Recommended:** "
        "set it to the ranges your cluster hands out as externalIPs, so that a user who may "
        "create Services cannot capture traffic to arbitrary addresses. Once the list is "
        "set, an IPv6 externalIP needs an IPv6 CIDR in it. loadBalancer ingress IPs are not "
        "filtered (writing them needs the `services/status` permission).",
        default_doc="empty = every externalIP",
    ),
    FieldSpec(
        "masquerade_all", "iptables.masqueradeAll", ("--masquerade-all",), v.BOOLEAN, NODE,
        "SNAT all traffic sent to Service IPs",
        "Masquerade every packet sent to a ClusterIP, whatever its source.",
        former="masqueradeAll",
    ),
    FieldSpec(
        "masquerade_bit", "iptables.masqueradeBit", ("--masquerade-bit",), v.int_range(0, 31), NODE,
        "fwmark bit that requests masquerade",
        "The fwmark bit that requests masquerade. The mark is `1 << bit`, so the default is "
        "`0x4000`. The overlay's NAT chain also leaves packets with this mark to the proxy.",
        former="masqueradeBit",
    ),
    FieldSpec(
        "localhost_nodeports", "iptables.localhostNodePorts", ("--localhost-nodeports",),
        v.BOOLEAN, NODE,
        "accept NodePorts on 127.0.0.1",
        "Accept NodePorts on `127.0.0.0/8`, IPv4 only. When on, the agent sets "
        "`net.ipv4.conf.all.route_localnet=1` and installs a rule that drops packets to "
        "127.0.0.0/8 from non-loopback sources, unless they belong to a DNATed or established "
        "connection (CVE-2020-8558). When off, the agent leaves `route_localnet` alone rather "
        "than resetting it. If `nodePortAddresses` is set, loopback is served only when one "
        "of its CIDRs includes loopback addresses.",
        former="localhostNodePorts",
    ),
    # ---- object source and API access -------------------------------------------------------
    FieldSpec(
        "manifests_dir", "manifestsDir", ("--manifests",), v.DIR_OR_NONE, SOURCE,
        "read objects from this directory instead of the API",
        "Read Services, EndpointSlices and Nodes from this directory instead of the API. See "
        "[modes](#api-mode-and-manifests-mode).",
        default_doc="unset = API mode",
    ),
    FieldSpec(
        "kubeconfig", "clientConnection.kubeconfig", ("--kubeconfig",), v.PATH_UNSET, SOURCE,
        "kubeconfig file; unset: in-cluster, then $KUBECONFIG or ~/.kube/config",
        "Use this kubeconfig file and nothing else. An error stops the agent; it does not fall "
        "back to other credentials. `~` is expanded.",
        former="kubeconfig",
    ),
    FieldSpec(
        "master", "clientConnection.master", ("--master",), v.URL_UNSET, SOURCE,
        "API server URL (overrides the kubeconfig's server)",
        "The API server URL (kube-proxy has it as the flag `--master` only). With "
        "`clientConnection.kubeconfig`, it replaces the kubeconfig's server (a trailing `/` is "
        "dropped). Without a kubeconfig, the agent talks to this URL with no credentials at "
        "all, and in-cluster credentials are not used either.",
        former="master",
    ),
    FieldSpec(
        "min_watch_timeout", "clientConnection.minWatchTimeout", ("--min-watch-timeout",),
        v.DURATION, SOURCE,
        "each watch lasts between this and twice this; a silent one is dropped after it",
        "Each watch asks the API server to end it after a random time between this and twice "
        "this, as client-go's reflector does (there it is `MinWatchTimeout`), so a fleet of "
        "agents does not reconnect in step. It also bounds how long a watch that went silent "
        "(a load balancer or NAT that dropped the connection without a reset) goes unnoticed: "
        "the agent gives up on a watch that sent nothing for its timeout plus a margin "
        "(half of this, at most 30 s) and resumes it from the last resourceVersion it saw. "
        "Lower it behind a load balancer whose idle timeout is shorter than 10 minutes "
        "(for example 350 s on an AWS NLB). Between 1 s and 1 h.",
    ),
    FieldSpec(
        "legacy_endpoints", "legacyEndpoints", ("--legacy-endpoints",), v.BOOLEAN, SOURCE,
        "watch core/v1 Endpoints instead of EndpointSlices (very old clusters)",
        "Watch core/v1 Endpoints instead of discovery/v1 EndpointSlices, for very old clusters.",
    ),
    # ---- sync timing ------------------------------------------------------------------------
    FieldSpec(
        "min_sync_period", "minSyncPeriod", ("--min-sync-period",), v.DURATION, SYNC,
        "e.g. 1s or 500ms",
        "A sync caused by a change starts no sooner than this after the previous sync started. "
        "Changes that arrive in the meantime go into that one sync. It is also the retry delay "
        "after a failed sync. Must not exceed `syncPeriod`.",
        aliases=("iptables.minSyncPeriod",),
    ),
    FieldSpec(
        "sync_period", "syncPeriod", ("--sync-period",), v.DURATION, SYNC,
        "e.g. 30s or 1m",
        "The longest time between the starts of two syncs. Without any change, a periodic sync "
        "runs this long after the previous one started. It also sets the health timeout: see "
        "`healthzBindAddress`.",
        aliases=("iptables.syncPeriod",),
    ),
    # ---- health and metrics -----------------------------------------------------------------
    FieldSpec(
        "healthz_bind_address", "healthzBindAddress", ("--healthz-bind-address",), v.BIND, SERVE,
        "host:port of /healthz and /livez",
        "Serves `/healthz` and `/livez`. They answer 503 when a change has been waiting for "
        "twice `syncPeriod` or longer without a successful sync ([metrics.md](metrics.md)).",
    ),
    FieldSpec(
        "metrics_bind_address", "metricsBindAddress", ("--metrics-bind-address",), v.BIND, SERVE,
        "host:port of /metrics",
        "Serves `/metrics` in Prometheus format ([metrics.md](metrics.md)).",
    ),
    # ---- overlay ----------------------------------------------------------------------------
    FieldSpec(
        "overlay_backend", "overlay.backend", ("--overlay",), v.choice(OVERLAY_BACKENDS), OVERLAY,
        "pod network between nodes",
        "How pod traffic reaches other nodes. `none` runs the proxy only. Any other value "
        "needs an IPv4 CIDR in `clusterCIDR`, and is refused in manifests mode.",
        former="overlayBackend",
    ),
    FieldSpec(
        "overlay_iface", "overlay.iface", ("--iface",), v.TEXT_UNSET, OVERLAY,
        "underlay interface (default: the default route's)",
        "The underlay interface. By default, the interface of the IPv4 default route in the "
        "main table.",
        former="overlayIface",
    ),
    FieldSpec(
        "overlay_public_ip", "overlay.publicIP", ("--public-ip",), v.IPV4_UNSET, OVERLAY,
        "underlay IP to publish (multi-NIC hosts)",
        "The underlay address published to peers. By default, the first IPv4 address of the "
        "underlay interface. When `overlay.iface` is set, this must be one of that "
        "interface's addresses. When `overlay.iface` is not set, the interface that holds "
        "this address becomes the underlay.",
        former="overlayPublicIP",
    ),
    FieldSpec(
        "overlay_subnet_len", "overlay.subnetLen", ("--subnet-len",), v.int_range(16, 30), OVERLAY,
        "prefix length of each node's pod CIDR",
        "The prefix length of the pod CIDR each node claims. With an overlay, it must be "
        "longer than the prefix of the first IPv4 `clusterCIDR`.",
        former="overlaySubnetLen",
    ),
    FieldSpec(
        "overlay_direct_routing", "overlay.directRouting", ("--direct-routing",),
        v.BOOLEAN, OVERLAY,
        "vxlan: plain routes to peers on the same L2 segment",
        "VXLAN only: peers on the node's own L2 segment get a plain route through their public "
        "IP instead of VXLAN. It has no effect with `host-gw`.",
        former="overlayDirectRouting",
    ),
    FieldSpec(
        "overlay_ip_masq", "overlay.ipMasq", ("--ip-masq",), v.BOOLEAN, OVERLAY,
        "masquerade pod traffic leaving the cluster CIDR (as flannel's --ip-masq)",
        "Masquerade pod traffic that leaves the cluster CIDR to the node's address (flannel's "
        "`--ip-masq`). Pod-to-pod traffic is never masqueraded either way. When off, the nat "
        "chain `NETAGENT-OVERLAY-POSTRTG` stays empty (pods reach the outside with their own "
        "addresses, for networks that route the pod CIDR) and `subnet.env` says "
        "`FLANNEL_IPMASQ=false`. The FORWARD accept rules are installed either way.",
        former="overlayIPMasq",
    ),
    FieldSpec(
        "overlay_vxlan_tx_checksum", "overlay.vxlanTxChecksum", ("--vxlan-tx-checksum",),
        v.choice(VXLAN_TX_CHECKSUM, yaml11_onoff=True), OVERLAY,
        "tx checksum offload on flannel.1 (auto: off before Linux 5.7)",
        "Transmit checksum offload (`tx-checksum-ip-generic`) on `flannel.1`. `auto` turns it "
        "off only on kernels older than 5.7 (or whose release cannot be parsed), which have "
        "the bug behind kubernetes#88986 (VXLAN packets rewritten by NAT leave with a bad UDP "
        "checksum; connections stall for ~63 s). `off` applies that workaround on any kernel "
        "(some virtual NICs need it); `on` never does. It is repaired like the device's other "
        "settings if changed by hand. In the YAML file a bare `on`/`off` (a YAML 1.1 boolean) "
        "is accepted. Off costs throughput: the device then also stops segmentation offload.",
        former="overlayVxlanTxChecksum",
    ),
    FieldSpec(
        "overlay_annotation_prefix", "overlay.annotationPrefix", ("--annotation-prefix",),
        v.TEXT, OVERLAY,
        "Node annotation prefix",
        "The prefix of the Node annotations the agent publishes and reads (`backend-type`, "
        "`backend-data`, `public-ip`, …).",
        former="overlayAnnotationPrefix",
    ),
    FieldSpec(
        "subnet_file", "overlay.subnetFile", ("--subnet-file",), v.PATH, OVERLAY,
        "where subnet.env is written",
        "Where the flannel-style `subnet.env` is written.",
        former="subnetFile",
    ),
    FieldSpec(
        "cni_conf_file", "overlay.cniConfFile", ("--cni-conf-file",), v.PATH_OR_NONE, OVERLAY,
        "where the CNI conflist is written; empty to not write one",
        "Where the CNI conflist is written. Empty or `null` means no conflist is written. "
        "`overlay.subnetFile` is still written.",
        former="cniConfFile",
    ),
)
# fmt: on

BY_ATTR: dict[str, FieldSpec] = {f.attr: f for f in FIELDS}
#: YAML path (main or alias) -> field.
BY_PATH: dict[str, FieldSpec] = {p: f for f in FIELDS for p in (f.path, *f.aliases)}
#: Flat pre-grouping key -> the path that replaced it.
FORMER_KEYS: dict[str, str] = {f.former: f.path for f in FIELDS if f.former}
#: Every YAML group, in first-use order, then the reserved ones.
GROUPS: tuple[str, ...] = tuple(
    dict.fromkeys([p.rpartition(".")[0] for p in BY_PATH if "." in p] + list(RESERVED_GROUPS))
)


def group_keys(group: str) -> list[str]:
    """The keys netagent's file accepts directly under ``group`` ("" = the top level)."""
    keys = {p.rpartition(".")[2] for p in BY_PATH if p.rpartition(".")[0] == group}
    if not group:
        keys.update(GROUPS)
    return sorted(keys)
