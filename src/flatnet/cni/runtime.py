"""A small libcni: runs a conflist chain the way container runtimes do.

ADD runs the plugins in order, each getting the previous result as
``prevResult``; DEL runs them in reverse with the cached ADD result; CHECK
in order with it; GC and STATUS per plugin. ``name``, ``cniVersion`` and
``runtimeConfig`` (only the capabilities a plugin declares) are injected into
each plugin's config, and ``CNI_ARGS`` carries ``IgnoreUnknown=1`` and the
pod's name like containerd and CRI-O. Plugins run inside ``ns`` (the node's
namespace), as they would run in a host's own.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flatnet.errors import CNIError, Code, ConfigError
from flatnet.kernel.netns import path_of, run_in

__all__ = ["Chain", "PluginResult", "load_conflist"]


@dataclass(frozen=True)
class PluginResult:
    plugin: str
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout) if self.stdout.strip() else {}


def load_conflist(conf_dir: str | Path) -> dict[str, Any]:
    files = sorted(p for p in Path(conf_dir).iterdir() if p.suffix == ".conflist")
    if not files:
        raise ConfigError(f"no .conflist in {conf_dir}")
    try:
        return dict(json.loads(files[0].read_text()))
    except ValueError as e:
        raise ConfigError(f"{files[0]}: not valid JSON: {e}") from e


class Chain:
    def __init__(
        self,
        conflist: dict[str, Any],
        bin_dirs: list[str],
        ns: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.conf = conflist
        self.bin_dirs = bin_dirs
        self.ns = path_of(ns) if ns else None
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def _find(self, kind: str) -> str:
        for d in self.bin_dirs:
            p = os.path.join(d, kind)
            if os.access(p, os.X_OK):
                return p
        raise CNIError(
            Code.INVALID_ENVIRONMENT, f"CNI plugin '{kind}' not found in {':'.join(self.bin_dirs)}"
        )

    def exec_plugin(
        self,
        plugin: dict[str, Any],
        command: str,
        env: Mapping[str, str],
        runtime_config: Mapping[str, Any] | None = None,
        prev: dict[str, Any] | None = None,
    ) -> PluginResult:
        conf = dict(plugin, name=self.conf["name"], cniVersion=self.conf["cniVersion"])
        caps = plugin.get("capabilities", {})
        rc = {k: v for k, v in (runtime_config or {}).items() if caps.get(k)}
        if rc:
            conf["runtimeConfig"] = rc
        if prev is not None:
            conf["prevResult"] = prev
        full_env = dict(os.environ, CNI_COMMAND=command, CNI_PATH=":".join(self.bin_dirs), **env)
        argv, stdin = [self._find(plugin["type"])], json.dumps(conf)

        def run() -> subprocess.CompletedProcess[str]:
            # spawned from a thread inside the node namespace: the child is born
            # there (vfork + exec, no fork of this process and no preexec_fn)
            return subprocess.run(
                argv, input=stdin, env=full_env, capture_output=True, text=True, timeout=120
            )

        p = run_in(self.ns, run)
        return PluginResult(plugin["type"], p.returncode, p.stdout, p.stderr)

    def _env(
        self, cid: str, netns: str, ifname: str, pod: tuple[str, str] | None
    ) -> dict[str, str]:
        args = "IgnoreUnknown=1"
        if pod:
            args += (
                f";K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]}"
                f";K8S_POD_INFRA_CONTAINER_ID={cid}"
            )
        return {"CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": args}

    def _raise(self, r: PluginResult, command: str) -> None:
        try:
            err = r.json()
        except ValueError:
            err = {}
        raise CNIError(
            int(err.get("code", 999)),
            f"{command} failed in plugin '{r.plugin}': "
            f"{err.get('msg') or r.stderr.strip() or r.stdout.strip()}",
        )

    def add(
        self,
        cid: str,
        netns: str,
        ifname: str = "eth0",
        pod: tuple[str, str] | None = None,
        runtime_config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        env = self._env(cid, netns, ifname, pod)
        prev: dict[str, Any] | None = None
        for plugin in self.conf["plugins"]:
            r = self.exec_plugin(plugin, "ADD", env, runtime_config, prev)
            if r.code != 0:
                try:  # every ADD, even a failed one, is followed by a DEL
                    self.delete(cid, netns, ifname, pod, runtime_config, result=prev)
                finally:
                    self._raise(r, "ADD")
            prev = r.json() or prev
        self._cache(cid, ifname, prev or {})
        return prev or {}

    def delete(
        self,
        cid: str,
        netns: str,
        ifname: str = "eth0",
        pod: tuple[str, str] | None = None,
        runtime_config: Mapping[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        env = self._env(cid, netns, ifname, pod)
        prev = result if result is not None else self._cached(cid, ifname)
        errors = []
        for plugin in reversed(self.conf["plugins"]):
            r = self.exec_plugin(plugin, "DEL", env, runtime_config, prev)
            if r.code != 0:
                errors.append(r)
        if errors:
            self._raise(errors[0], "DEL")
        self._uncache(cid, ifname)

    def check(
        self, cid: str, netns: str, ifname: str = "eth0", pod: tuple[str, str] | None = None
    ) -> None:
        env = self._env(cid, netns, ifname, pod)
        prev = self._cached(cid, ifname)
        for plugin in self.conf["plugins"]:
            r = self.exec_plugin(plugin, "CHECK", env, None, prev)
            if r.code != 0:
                self._raise(r, "CHECK")

    def gc(self, valid: list[tuple[str, str]]) -> None:
        attachments = [{"containerID": c, "ifname": i} for c, i in valid]
        for plugin in self.conf["plugins"]:
            p = dict(plugin, **{"cni.dev/valid-attachments": attachments})
            r = self.exec_plugin(p, "GC", {})
            if r.code != 0:
                self._raise(r, "GC")

    # -- result cache (like /var/lib/cni/results) ---------------------------
    def _cache_path(self, cid: str, ifname: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.conf['name']}-{cid}-{ifname}.json"

    def _cache(self, cid: str, ifname: str, result: dict[str, Any]) -> None:
        p = self._cache_path(cid, ifname)
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(result))

    def _cached(self, cid: str, ifname: str) -> dict[str, Any] | None:
        p = self._cache_path(cid, ifname)
        if p is not None and p.exists():
            return dict(json.loads(p.read_text()))
        return None

    def _uncache(self, cid: str, ifname: str) -> None:
        p = self._cache_path(cid, ifname)
        if p is not None:
            p.unlink(missing_ok=True)
