"""Route groups' router artifacts at run time: hot reload, and training a missing one at start.

Hot reload: every `reload_interval_s` each group's artifact file is stat-ed (routers/artifact.py's
ArtifactWatcher); a replaced file is unpickled in a worker thread and swapped in whole, so a request
being routed keeps the router it started with and the next one sees the new version. A file that
vanishes or fails to load keeps the current router.

Train on start: a group whose artifact is missing and that names `train_data` gets it trained by a
child process (`pitstop train router`, log beside the artifact); until it appears the group routes by
the tier prior, then the watcher swaps the trained router in, with no restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.routing import GroupRouter, RouteTable
from routers.artifact import ArtifactWatcher

log = logging.getLogger("pitstop.routing")


class RouterArtifacts:
    def __init__(self, routes: RouteTable, artifact_path: dict[str, Path]) -> None:
        self.routes = routes
        self.paths = artifact_path  # group name -> artifact file
        self.watchers = {name: ArtifactWatcher(path) for name, path in artifact_path.items()}
        self.trainers: dict[str, subprocess.Popen[bytes]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # each group's watch loop
        self.on_swap: Callable[[str], None] | None = None  # told a group's name when its router is replaced

    @classmethod
    def for_routes(cls, routes: RouteTable) -> RouterArtifacts:
        paths = {name: group.artifact for name, group in routes.groups.items() if group.artifact is not None}
        return cls(routes, paths)

    async def start(self) -> None:
        for name in self.paths:
            self._begin(name)

    def _begin(self, name: str) -> None:
        group, path = self.routes.groups[name], self.paths[name]
        if not path.exists() and group.group.train_data:
            self._train(name, group, path)
        self._tasks[name] = asyncio.create_task(self._watch(name, group), name=f"router-reload-{name}")

    async def regroup(self, names: set[str]) -> None:
        """Route groups a config reload replaced, added or removed (gateway/config_reload.py): each one's
        watch loop (and a missing artifact's training) stops, and starts again on the group now named so."""
        for name in names:
            if (task := self._tasks.pop(name, None)) is not None:
                await stop_tasks([task])
            if (trainer := self.trainers.pop(name, None)) is not None:
                trainer.terminate()
            self.paths.pop(name, None)
            self.watchers.pop(name, None)
            group = self.routes.groups.get(name)
            if group is not None and group.artifact is not None:
                self.paths[name], self.watchers[name] = group.artifact, ArtifactWatcher(group.artifact)
                self._begin(name)

    def _train(self, name: str, group: GroupRouter, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        log_path = path.with_name(path.name + ".train.log")
        command = [sys.executable, "-m", "gateway.cli", "train", "router", "--family", group.group.router,
                   "--data", str(group.group.train_data), "--out", str(path)]
        log.warning("route group %s: artifact %s is missing; training it in the background (log: %s)",
                    name, path, log_path)
        with log_path.open("wb") as sink:
            self.trainers[name] = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)

    async def _watch(self, name: str, group: GroupRouter) -> None:
        watcher = self.watchers[name]
        while True:
            await asyncio.sleep(group.group.reload_interval_s)
            try:
                router = await asyncio.to_thread(watcher.poll)
            except Exception:  # a bad artifact must never stop the watch loop
                log.exception("route group %s: reloading %s failed", name, watcher.path)
                continue
            if router is not None:
                group.router = router
                log.info("route group %s: loaded router %s v%s from %s", name, router.name, router.version,
                         watcher.path)
                if self.on_swap is not None:
                    self.on_swap(name)
            trainer = self.trainers.get(name)
            if trainer is not None and trainer.poll() is not None:
                del self.trainers[name]
                if trainer.returncode != 0:
                    log.error("route group %s: training its router failed (exit %s); still on %s",
                              name, trainer.returncode, group.router.name)

    async def close(self) -> None:
        await stop_tasks(list(self._tasks.values()))
        for trainer in self.trainers.values():
            trainer.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                trainer.wait(timeout=5)


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel a component's background loops and wait until each has stopped."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
