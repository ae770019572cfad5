"""`netroot serve` rebuilds a label when any file its recipe reads changes: a `files`
source (outside recipes/, through an `extends` chain), a `.def`'s `%files` source,
the `.def` of an apptainer recipe; and at start, a label edited while it was down.

The package recipes build from a seeded package-stage cache (a small fake tree),
so no package is downloaded: what runs is the daemon, the watcher, the real
`netroot build` children, customisation, commit and activation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration.harness import Broker, Collector, Controller, wait_for
from support import Workspace, make_root_tree

from controller.build.builders import basetree, mmdebstrap, pkgstage
from controller.recipes import DefRecipe, MmdebstrapRecipe, load_recipe

pytestmark = pytest.mark.integration

LABELS = ("node", "legacy", "app")
CHECKED = "start-up check of inputs"


@dataclass
class Lab:
    ws: Workspace
    controller: Controller
    collector: Collector

    @property
    def recipes(self) -> Path:
        return self.ws.root / "recipes"

    @property
    def motd(self) -> Path:
        """The node label's `files` source, outside recipes/ (node.toml -> common.toml)."""
        return self.ws.root / "site" / "motd"

    def started(self, label: str) -> list[dict[str, Any]]:
        return [e for e in self.collector.events("image.build.started")
                if e["data"]["label"] == label]  # fmt: skip

    def counts(self) -> dict[str, int]:
        return {label: len(self.started(label)) for label in LABELS}

    def last_build(self, label: str) -> Any:
        return self.ws.json("status")["labels"][label]["last_build"]

    def last_ids(self) -> dict[str, str | None]:
        """The newest build of each label in the database, queued ones included."""
        labels = self.ws.json("status")["labels"]
        return {n: (labels[n]["last_build"] or {}).get("build_id") for n in LABELS}

    def settled(self, label: str, build_id: str, state: str) -> None:
        def probe() -> bool:
            last = self.last_build(label)
            return last is not None and last["build_id"] == build_id and last["state"] == state

        wait_for(probe, f"build {build_id} of {label} to be {state}")

    def in_image(self, label: str, path: str) -> str:
        return (self.ws.root / "export" / label / path).read_text()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def seed_package_stage(ws: Workspace) -> None:
    """The package stage of the Debian recipes, as if mmdebstrap had run once."""
    digest = basetree.digest(basetree.scan(ws.root / "base"))
    keys = set()
    for name in ("node.toml", "legacy.def"):
        recipe = load_recipe(ws.root / "recipes" / name)
        native = recipe.native if isinstance(recipe, DefRecipe) else recipe
        assert isinstance(native, MmdebstrapRecipe)
        keys.add(pkgstage.stage_key(native, backend="mmdebstrap",
                                    backend_version=mmdebstrap.BACKEND_VERSION,
                                    base_digest=digest))  # fmt: skip
    tree = make_root_tree(ws.root / "stage-tree")
    cache = pkgstage.StageCache(ws.state / "cache")
    for key in keys:
        cache.store(key, tree, {"packages": 0, "kernel": "6.1.0-test"}, ws.root / "seed.log", key)


@pytest.fixture
def lab(tmp_path: Path, broker: Broker) -> Iterator[Lab]:
    ws = Workspace(tmp_path)
    write(ws.root / "base" / "etc" / "netroot-base", "base\n")
    write(ws.root / "site" / "motd", "motd 0\n")
    write(ws.root / "recipes" / "common.toml",
          'distro = "debian"\nrelease = "12"\n[[files]]\nsrc = "../site/motd"\n'
          'dest = "/etc/motd"\n')  # fmt: skip
    write(ws.root / "recipes" / "node.toml", 'extends = "common.toml"\n')
    write(ws.root / "recipes" / "def-files" / "issue", "issue 0\n")
    write(ws.root / "recipes" / "legacy.def",
          "Bootstrap: debootstrap\nOSVersion: bookworm\n\n%files\n"
          "    def-files/issue /etc/issue\n")  # fmt: skip
    write(ws.root / "recipes" / "app.toml", 'builder = "apptainer"\ndefinition = "app.def"\n')
    write(ws.root / "recipes" / "app.def", "Bootstrap: debootstrap\nOSVersion: bookworm\n")
    labels = "".join(
        f'[labels.{name}]\nrecipe = "{recipe}"\n'
        for name, recipe in (("node", "node.toml"), ("legacy", "legacy.def"), ("app", "app.toml"))
    )
    ws.config.write_text(
        'state_dir = "state"\nrecipes_dir = "recipes"\noverlays_dir = "overlays"\n'
        'base_dir = "base"\nexport_root = "export"\ntftp_root = "tftp"\n'
        "debounce_quiet = 0.5\ndebounce_max_latency = 10\n"
        f"{broker.mqtt_config()}{labels}"
    )
    seed_package_stage(ws)
    collector = Collector(broker.port)
    for label in ("node", "legacy"):  # built before the daemon ever ran
        ws.run("build", label, "--activate")
        collector.ignored_builds.update(v["build_id"] for v in ws.json("versions", label))
    controller = Controller(ws)
    yield Lab(ws, controller, collector)
    controller.cleanup()
    collector.close()


def test_each_file_a_recipe_reads_rebuilds_its_label_once(lab: Lab) -> None:
    assert lab.in_image("node", "etc/motd") == "motd 0\n"
    lab.controller.start()
    lab.controller.wait_log(CHECKED)  # nothing changed while no daemon ran: nothing queued
    before = lab.last_ids()
    assert before["app"] is None
    assert {before["node"], before["legacy"]} <= lab.collector.ignored_builds  # the CLI's

    lab.motd.write_text("motd 1\n")  # a `files` source of the recipe node.toml extends
    (started,) = lab.collector.wait_event("image.build.started", label="node")
    assert str(lab.motd) in started["data"]["paths"]
    lab.settled("node", started["data"]["build_id"], "succeeded")
    lab.collector.wait_event("image.activated", label="node", build_id=started["data"]["build_id"])
    assert lab.in_image("node", "etc/motd") == "motd 1\n"

    (lab.recipes / "def-files" / "issue").write_text("issue 1\n")  # a `%files` source
    (started,) = lab.collector.wait_event("image.build.started", label="legacy")
    lab.settled("legacy", started["data"]["build_id"], "succeeded")
    wait_for(lambda: lab.in_image("legacy", "etc/issue") == "issue 1\n", "the new /etc/issue")

    # The apptainer recipe's .def. apptainer is not installed here: the one build
    # attempted fails, saying so; a build is what the edit must cause.
    (lab.recipes / "app.def").write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n# 1\n")
    (started,) = lab.collector.wait_event("image.build.started", label="app")
    (failed,) = lab.collector.wait_event("image.build.failed", label="app")
    assert failed["data"]["build_id"] == started["data"]["build_id"]
    assert "apptainer" in failed["data"]["error"] and "not installed" in failed["data"]["error"]
    lab.settled("app", started["data"]["build_id"], "failed")
    assert lab.counts() == {"node": 1, "legacy": 1, "app": 1}

    # Edited while no daemon watched: built at the next start, and only that label.
    assert lab.controller.stop() == 0
    lab.motd.write_text("motd 2\n")
    lab.controller.start()
    started = wait_for(lambda: lab.started("node")[1:], "the start-up build of node")[0]
    assert started["data"]["reason"] == "inputs changed while the controller was stopped"
    lab.settled("node", started["data"]["build_id"], "succeeded")
    wait_for(lambda: lab.in_image("node", "etc/motd") == "motd 2\n", "the new /etc/motd")
    lab.controller.wait_log(CHECKED, count=2)
    assert lab.counts() == {"node": 2, "legacy": 1, "app": 1}

    # A restart with nothing changed builds nothing (the failed apptainer label was
    # never built: nothing to compare with).
    assert lab.controller.stop() == 0
    before = lab.last_ids()
    assert before["node"] == started["data"]["build_id"]
    lab.controller.start()
    # READY=1 comes after the check: an edit from here on is the watcher's alone.
    assert lab.controller.log_text().count(CHECKED) == 3
    assert lab.last_ids() == before
    assert lab.counts() == {"node": 2, "legacy": 1, "app": 1}
