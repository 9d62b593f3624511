"""Cluster DNS records (pure), after the Kubernetes DNS-based service discovery spec.

For a domain ``cluster.local``:

* ``<svc>.<ns>.svc.cluster.local`` A — the cluster IP; for a headless service
  the IPs of its ready endpoints, each also as ``<a-b-c-d>.<svc>.<ns>.svc...``;
  an ExternalName service is a CNAME to its external name;
* ``_<port>._<proto>.<svc>.<ns>.svc.cluster.local`` SRV — named ports only:
  the service name and port, or for a headless service one per endpoint;
* PTR for cluster IPs, headless endpoint IPs and pod IPs;
* ``<a-b-c-d>.<ns>.pod.cluster.local`` A for every pod of that namespace with
  that IP (checked, not echoed);
* ``dns-version.cluster.local`` TXT ``1.1.0``.

A name under the domain that holds nothing is NXDOMAIN, a name with other types
only (or a parent of names, like ``svc.cluster.local``) is NODATA; both carry
the zone's SOA. Names are matched case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dnslib import CNAME, PTR, QTYPE, RR, SOA, SRV, TXT, A

from flatnet.model import Service
from flatnet.view import PodIndex, endpoints

__all__ = ["Answer", "Records", "build"]

SCHEMA_VERSION = "1.1.0"


@dataclass
class Answer:
    rcode: int  # 0 NOERROR, 3 NXDOMAIN
    answer: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)


def _ptr_name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


def _dashed(ip: str) -> str:
    return ip.replace(".", "-")


class Records:
    def __init__(self, domain: str = "cluster.local", ttl: int = 30) -> None:
        self.domain = domain.strip(".").lower()
        self.ttl = ttl
        self.rrs: dict[str, dict[int, list[RR]]] = {}
        self.parents: set[str] = set()
        self.pod_ips: dict[tuple[str, str], str] = {}  # (dashed ip, ns) -> ip
        self.soa = RR(
            self.domain,
            QTYPE.SOA,
            ttl=ttl,
            rdata=SOA(
                f"ns.dns.{self.domain}", f"hostmaster.{self.domain}", (1, 7200, 1800, 86400, ttl)
            ),
        )

    def _add(self, name: str, qtype: int, rdata: object) -> None:
        name = name.lower()
        self.rrs.setdefault(name, {}).setdefault(qtype, []).append(
            RR(name, qtype, ttl=self.ttl, rdata=rdata)
        )

    def owns(self, qname: str) -> bool:
        """Is this name answered here (else it is forwarded)?"""
        q = qname.lower().rstrip(".")
        return q == self.domain or q.endswith("." + self.domain) or q in self.rrs

    def lookup(self, qname: str, qtype: int) -> Answer:
        q = qname.lower().rstrip(".")
        if q.endswith(".pod." + self.domain):
            self._pod(q)
        types = self.rrs.get(q)
        if types is None:
            if q in self.parents or q == self.domain:
                return Answer(0, authority=[self.soa])
            return Answer(3, authority=[self.soa])
        if qtype == QTYPE.ANY:
            return Answer(0, [rr for rrs in types.values() for rr in rrs])
        if qtype in types:
            ans = Answer(0, list(types[qtype]))
            if qtype == QTYPE.SRV:
                for rr in ans.answer:
                    target = str(rr.rdata.target).rstrip(".").lower()
                    ans.additional += self.rrs.get(target, {}).get(QTYPE.A, [])
            return ans
        if QTYPE.CNAME in types:
            return Answer(0, list(types[QTYPE.CNAME]))
        return Answer(0, authority=[self.soa])

    def _pod(self, q: str) -> None:
        """Pod A records are made on demand: there may be very many."""
        head, _, rest = q.partition(".")
        ns = rest.split(".", 1)[0]
        ip = self.pod_ips.get((head, ns))
        if ip is not None and q not in self.rrs:
            self._add(q, QTYPE.A, A(ip))


def build(
    services: Iterable[Service], pods: PodIndex, domain: str = "cluster.local", ttl: int = 30
) -> Records:
    r = Records(domain, ttl)
    d = r.domain
    for pod in pods.pods.values():
        if pod.ip and pod.mode == "bridge":
            r.pod_ips[(_dashed(pod.ip), pod.namespace)] = pod.ip
            r._add(_ptr_name(pod.ip), QTYPE.PTR, PTR(f"{_dashed(pod.ip)}.{pod.namespace}.pod.{d}"))
    r._add(f"dns-version.{d}", QTYPE.TXT, TXT(SCHEMA_VERSION))
    for svc in services:
        fqdn = f"{svc.name}.{svc.namespace}.svc.{d}"
        if svc.type == "ExternalName":
            r._add(fqdn, QTYPE.CNAME, CNAME(svc.external_name))
            continue
        eps = endpoints(svc, pods.select(svc.namespace, svc.selector))
        if svc.headless:
            ips = sorted({e.ip for es in eps.values() for e in es}, key=_ip_key)
            for ip in ips:
                r._add(fqdn, QTYPE.A, A(ip))
                r._add(f"{_dashed(ip)}.{fqdn}", QTYPE.A, A(ip))
                r.rrs[_ptr_name(ip)] = {}
                r._add(_ptr_name(ip), QTYPE.PTR, PTR(f"{_dashed(ip)}.{fqdn}"))
            for sp, es in eps.items():
                if sp.name:
                    for e in es:
                        r._add(
                            f"_{sp.name}._{sp.protocol.lower()}.{fqdn}",
                            QTYPE.SRV,
                            SRV(0, 100 // max(1, len(es)), e.port, f"{_dashed(e.ip)}.{fqdn}"),
                        )
            if not ips:
                r.parents.add(fqdn)
        else:
            r._add(fqdn, QTYPE.A, A(svc.cluster_ip))
            r._add(_ptr_name(svc.cluster_ip), QTYPE.PTR, PTR(fqdn))
            for sp in svc.ports:
                if sp.name:
                    r._add(
                        f"_{sp.name}._{sp.protocol.lower()}.{fqdn}",
                        QTYPE.SRV,
                        SRV(0, 100, sp.port, fqdn),
                    )
    for name in list(r.rrs):
        if name.endswith(d):
            labels = name.split(".")
            for i in range(1, len(labels)):
                parent = ".".join(labels[i:])
                if parent.endswith(d) and parent not in r.rrs:
                    r.parents.add(parent)
    return r


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ip.split("."))
