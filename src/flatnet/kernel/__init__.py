"""The only package that talks to the kernel: netlink (pyroute2), nftables, namespaces."""
