"""The lab: a multi-node cluster on one machine, every node and pod a network namespace.

``topo`` reads a lab file into plain data; ``cluster`` builds it and tears it
down from the state file ``state`` keeps.
"""
