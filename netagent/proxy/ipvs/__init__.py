"""The IPVS proxy mode's kernel layer: virtual servers, ipsets and the dummy device.

Why a package of its own: ``--proxy-mode ipvs`` (issue 12) programs three
kernel interfaces the other modes never touch (IPVS over generic netlink,
ipset over nfnetlink, and the ``netagent-ipvs0`` dummy device over
rtnetlink). Each lives behind a small Protocol with a pyroute2
implementation and a stateful fake (:mod:`netagent.proxy.ipvs.fake`), so the
proxier built on top can be unit-tested anywhere and run against the real
kernel in the lab. Nothing here shells out to ``ipvsadm`` or ``ipset``.
"""
