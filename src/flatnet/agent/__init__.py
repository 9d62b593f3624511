"""The node agent: subnet lease, node bridge, masquerade, pod plumbing, CNI endpoint."""
