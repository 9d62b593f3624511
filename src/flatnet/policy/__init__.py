"""NetworkPolicy (networking.k8s.io/v1): the model (:mod:`.model`), manifests
as users write them (:mod:`.manifest`), the policies in the store
(:mod:`.objects`), the semantics as a pure oracle (:mod:`.verdict`: what the
API says of one connection, and which policies and rules decide it), and the
enforcement: compiled per node (:mod:`.compile`), written as the node's
``ip flatnet-policy`` table (:mod:`.render`), kept current by the agent
(:mod:`.sync`)."""
