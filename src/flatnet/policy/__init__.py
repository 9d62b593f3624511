"""NetworkPolicy (networking.k8s.io/v1): the model (:mod:`.model`), manifests
as users write them (:mod:`.manifest`), and the semantics as a pure oracle
(:mod:`.verdict`): what the API says of one connection, and which policies
and rules decide it. Enforcement (compile to nftables, sync in the agent) is
issue 14's next step; nothing here is applied to a cluster yet."""
