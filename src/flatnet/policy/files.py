"""A manifest file's objects with its policies: Namespaces, Pods and Services
(:func:`flatnet.manifest.objects`), NetworkPolicies and ClusterNetworkPolicies
— what ``apply``, ``delete`` and a lab file take. Every mistake of the file is
reported at once, in line order; nothing is applied from a file with one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from flatnet.errors import LabFileError, ManifestErrors
from flatnet.manifest import Manifest, objects
from flatnet.policy.cluster_manifest import cluster_network_policy
from flatnet.policy.manifest import network_policy
from flatnet.policy.model import ClusterNetworkPolicy, NetworkPolicy

__all__ = ["AnyPolicy", "Policies", "split"]

AnyPolicy = NetworkPolicy | ClusterNetworkPolicy
READERS: dict[str, Callable[[Any, yaml.Node, str], AnyPolicy]] = {
    "NetworkPolicy": network_policy,
    "ClusterNetworkPolicy": cluster_network_policy,
}


class Policies(list[tuple[int, AnyPolicy]]):
    """A file's policies, each with the line it starts on."""

    @property
    def namespaced(self) -> list[NetworkPolicy]:
        return [p for _, p in self if isinstance(p, NetworkPolicy)]

    @property
    def cluster(self) -> list[ClusterNetworkPolicy]:
        return [p for _, p in self if isinstance(p, ClusterNetworkPolicy)]

    def require_namespaces(self, have: set[str], path: str) -> None:
        """Each NetworkPolicy's namespace exists (or is in the file: ``have``)."""
        errors = [
            LabFileError(
                path,
                line,
                f"networkpolicy '{p.name}': metadata.namespace: namespace '{p.namespace}' "
                "not found (create it, or add a kind: Namespace document)",
            )
            for line, p in self
            if isinstance(p, NetworkPolicy) and p.namespace not in have
        ]
        if errors:
            raise ManifestErrors(errors)


def split(
    documents: list[tuple[yaml.Node, Any]], path: str, nodes: list[str] | tuple[str, ...] | None
) -> tuple[Manifest, Policies]:
    """A file's Namespaces, Pods and Services, and its policies."""
    found, errors = Policies(), []
    rest = []
    for node, data in documents:
        read = READERS.get(str(data.get("kind"))) if isinstance(data, dict) else None
        if read is None:
            rest.append((node, data))
            continue
        try:
            found.append((node.start_mark.line + 1, read(data, node, path)))
        except ManifestErrors as e:
            errors.extend(e.errors)
    seen: dict[str, int] = {}
    for line, p in found:
        kind = "networkpolicy" if isinstance(p, NetworkPolicy) else "clusternetworkpolicy"
        if p.ref in seen:
            errors.append(LabFileError(
                path, line, f"{kind} '{p.ref}' is defined twice (first on line {seen[p.ref]})"
            ))  # fmt: skip
        seen.setdefault(p.ref, line)
    m = Manifest()
    try:
        m = objects(rest, path, nodes)
    except ManifestErrors as e:
        errors.extend(e.errors)
    if errors:
        raise ManifestErrors(sorted(errors, key=lambda e: e.line or 0))
    return m, found
