"""NetworkPolicy (networking.k8s.io/v1) and ClusterNetworkPolicy
(policy.networking.k8s.io/v1alpha2), from the manifest to the kernel:

- :mod:`.model` — both as plain frozen data; :mod:`.manifest` and
  :mod:`.cluster_manifest` — manifests checked as the API checks them;
  :mod:`.files` — a file's policies beside its other objects; :mod:`.objects`
  — the policies in the store;
- :mod:`.verdict` — the semantics as a pure oracle (``flatnet policy explain``,
  and the judge the compiler and the kernel are tested against);
- :mod:`.compile` (pure) — each pod of a node and whom it may talk to;
  :mod:`.render` (pure) — that as the node's ``ip flatnet-policy`` table;
  :mod:`.sync` — the agent's follower that keeps the table current;
- :mod:`.denials` — the policy log of denied attempts; :mod:`.guard` — pods
  cannot forge who they are (the ``bridge flatnet-guard`` table)."""
