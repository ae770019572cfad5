"""Debouncing edits into batches, editor noise, and which labels a batch rebuilds."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config.load import parse_config
from controller.config.models import Config
from controller.daemon.debounce import Batch, Debouncer, affected_labels, is_noise

ROOT = Path("/srv/netroot")
RECIPE = ROOT / "recipes" / "debian12.toml"


def simulate(deb: Debouncer, writes: list[tuple[float, Path]]) -> list[tuple[float, Batch]]:
    """Run the watcher loop on a fake clock: sleep until the next write or the deadline."""
    out: list[tuple[float, Batch]] = []

    def flush_until(now: float) -> None:
        while (due := deb.deadline()) is not None and due <= now:
            batch = deb.take(due)
            assert batch is not None
            out.append((due, batch))

    for now, path in writes:
        flush_until(now)
        deb.add(path, now)
    flush_until(float("inf"))
    return out


# --- timing -------------------------------------------------------------------


def test_a_thousand_writes_within_a_second_give_one_batch() -> None:
    deb = Debouncer(quiet=0.2, max_latency=5.0)
    # One write every millisecond over seven files; the last one at 0.999 s.
    writes = [(i / 1000, ROOT / "recipes" / f"part{i % 7}.toml") for i in range(1000)]

    [(when, batch)] = simulate(deb, writes)

    assert batch.events == 1000
    assert len(batch.paths) == 7  # de-duplicated
    assert (batch.first, batch.last) == (0.0, 0.999)
    assert when - batch.last == pytest.approx(0.2)  # one quiet period after the last write
    assert deb.deadline() is None


def test_batch_comes_one_quiet_period_after_the_last_write() -> None:
    deb = Debouncer(quiet=1.0, max_latency=10.0)
    deb.add(RECIPE, 5.0)
    assert deb.deadline() == 6.0
    assert deb.take(5.99) is None
    batch = deb.take(6.0)
    assert batch is not None
    assert list(batch) == [RECIPE]


def test_each_write_pushes_the_deadline_back_up_to_the_maximum_latency() -> None:
    deb = Debouncer(quiet=1.0, max_latency=3.0)
    deb.add(RECIPE, 0.0)
    deb.add(RECIPE, 0.8)
    assert deb.deadline() == 1.8
    deb.add(RECIPE, 2.5)
    assert deb.deadline() == 3.0  # capped: first write + max latency


def test_maximum_latency_is_honoured_under_continuous_writes() -> None:
    deb = Debouncer(quiet=0.5, max_latency=2.0)
    # A write every 0.1 s for 30 s: the quiet period never comes.
    writes = [(i * 0.1, ROOT / "overlays" / "common" / "etc" / "motd") for i in range(300)]

    emitted = simulate(deb, writes)

    assert len(emitted) == 15  # one every two seconds, not one at the end
    for when, batch in emitted:
        assert when - batch.first <= 2.0
    # Nothing is lost between batches: every write is in exactly one of them.
    assert sum(batch.events for _, batch in emitted) == len(writes)


def test_a_write_after_a_batch_starts_a_new_batch() -> None:
    deb = Debouncer(quiet=0.5, max_latency=2.0)
    deb.add(RECIPE, 0.0)
    first = deb.take(0.5)
    assert first is not None
    deb.add(RECIPE, 0.6)
    assert deb.deadline() == pytest.approx(1.1)
    second = deb.take(1.1)
    assert second is not None
    assert second.first == 0.6


def test_noise_is_dropped_and_does_not_start_a_batch() -> None:
    deb = Debouncer(quiet=0.5, max_latency=2.0)
    assert deb.add(ROOT / "recipes" / ".debian12.toml.swp", 0.0) is False
    assert deb.add(ROOT / "recipes" / ".git" / "index", 0.0) is False
    assert deb.deadline() is None
    assert len(deb) == 0
    assert deb.take(10.0) is None


@pytest.mark.parametrize(("quiet", "latency"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_nonsense_timing_is_refused(quiet: float, latency: float) -> None:
    with pytest.raises(ValueError, match="quiet period"):
        Debouncer(quiet=quiet, max_latency=latency)


# --- noise --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "recipes/.debian12.toml.swp",
        "recipes/.debian12.toml.swo",
        "recipes/.debian12.toml.swx",
        "recipes/debian12.toml~",
        "recipes/.#debian12.toml",
        "recipes/#debian12.toml#",
        "recipes/4913",
        "recipes/debian12.toml.tmp",
        "recipes/.git/index",
        "recipes/.git/objects/ab/cdef",
        "overlays/common/.hg/store/data",
        "overlays/.svn/entries",
        "overlays/common/etc/.goutputstream-ABC123",
        "recipes/debian12.toml.kate-swp",
    ],
)
def test_editor_and_vcs_noise_is_ignored(path: str) -> None:
    assert is_noise(ROOT / path)


@pytest.mark.parametrize(
    "path",
    [
        "recipes/debian12.toml",
        "recipes/legacy/centos7.def",
        "overlays/common/root/.bashrc",
        "overlays/common/etc/ssh/sshd_config",
        "overlays/common/etc/tmpfiles.d/netroot.conf",
        "overlays/gpu/etc/modprobe.d/nvidia.conf",
        "overlays/common/etc/gitconfig",
        "overlays/common/etc/swap.conf",
        "base/dracut/90overlay-root/module-setup.sh",
    ],
)
def test_real_files_are_not_noise(path: str) -> None:
    assert not is_noise(ROOT / path)


# --- affected labels ----------------------------------------------------------


@pytest.fixture
def config() -> Config:
    data = {
        "recipes_dir": "recipes",
        "overlays_dir": "overlays",
        "base_dir": "base",
        "labels": {
            "debian12": {"recipe": "debian12.toml"},
            "debian12-gpu": {"recipe": "debian12-gpu.toml", "overlays": ["common", "gpu"]},
            "rocky9": {"recipe": "rocky9.toml"},
            "scratch": {"recipe": "scratch.toml", "overlays": ["gpu"]},
        },
    }
    return parse_config(data, source="test", root=ROOT)


CONFIG_FILE = ROOT / "netroot.toml"
# debian12-gpu's recipe extends debian12's; rocky9's includes a %files directory.
DEPS = {
    "debian12-gpu": {ROOT / "recipes" / "debian12.toml"},
    "rocky9": {ROOT / "recipes" / "files" / "rocky"},
}


def affected(config: Config, *paths: str) -> dict[str, str]:
    changed = [ROOT / p for p in paths]
    return dict(affected_labels(changed, config, config_file=CONFIG_FILE, recipe_deps=DEPS))


def test_a_recipe_change_rebuilds_the_labels_using_or_extending_it(config: Config) -> None:
    assert affected(config, "recipes/debian12.toml") == {"debian12": "full", "debian12-gpu": "full"}
    assert affected(config, "recipes/debian12-gpu.toml") == {"debian12-gpu": "full"}
    assert affected(config, "recipes/files/rocky/etc/yum.conf") == {"rocky9": "full"}


def test_a_recipe_no_label_uses_rebuilds_nothing(config: Config) -> None:
    assert affected(config, "recipes/fedora40.toml") == {}
    assert affected(config, "recipes/debian12.toml.orig") == {}


def test_a_common_overlay_change_makes_overlay_versions_of_its_users(config: Config) -> None:
    assert affected(config, "overlays/common/etc/motd") == {
        "debian12": "overlay",
        "debian12-gpu": "overlay",
        "rocky9": "overlay",
    }


def test_a_named_overlay_change_concerns_the_labels_listing_it(config: Config) -> None:
    assert affected(config, "overlays/gpu/etc/x.conf") == {
        "debian12-gpu": "overlay",
        "scratch": "overlay",
    }
    assert affected(config, "overlays/rocky9/etc/hosts") == {"rocky9": "overlay"}
    assert affected(config, "overlays/debian12-gpu/etc/hosts") == {}  # it lists its own


def test_a_directory_named_like_a_prefix_is_another_overlay(config: Config) -> None:
    assert affected(config, "overlays/common-old/etc/motd") == {}
    assert affected(config, "overlays/README") == {}


def test_full_wins_over_overlay(config: Config) -> None:
    got = affected(config, "overlays/common/etc/motd", "recipes/rocky9.toml")
    assert got == {"debian12": "overlay", "debian12-gpu": "overlay", "rocky9": "full"}


@pytest.mark.parametrize("path", ["base/dracut/90overlay-root/overlay-mount.sh", "netroot.toml"])
def test_base_or_config_change_rebuilds_every_label(config: Config, path: str) -> None:
    assert affected(config, path) == dict.fromkeys(
        ["debian12", "debian12-gpu", "rocky9", "scratch"], "full"
    )


def test_paths_are_compared_lexically_normalised(config: Config) -> None:
    assert affected(config, "recipes/legacy/../rocky9.toml") == {"rocky9": "full"}


def test_a_batch_can_be_passed_as_it_is(config: Config) -> None:
    deb = Debouncer(quiet=0.1, max_latency=1.0)
    deb.add(ROOT / "recipes" / "rocky9.toml", 0.0)
    deb.add(ROOT / "recipes" / ".rocky9.toml.swp", 0.0)
    batch = deb.take(1.0)
    assert batch is not None
    got = affected_labels(batch, config, config_file=None, recipe_deps={})
    assert got == {"rocky9": "full"}
