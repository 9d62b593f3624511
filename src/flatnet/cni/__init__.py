"""The CNI plugin: ``plugin.py`` is the thin, stdlib-only entry runtimes exec;
``protocol.py`` parses and answers requests inside the agent."""
