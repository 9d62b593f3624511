"""Ingress v1 and Gateway API on HAProxy.

- :mod:`.model` — Ingress as plain frozen data;
- :mod:`.manifest` — ``networking.k8s.io/v1`` Ingress and IngressClass documents,
  checked (``FILE:LINE: field: problem``);
- :mod:`.routes` — the routing table Ingresses imply (hosts, Exact and Prefix
  paths, the default backend, conflicts: oldest wins) and its reference matcher;
- :mod:`.haproxy` — that table as HAProxy configuration and maps.
"""
