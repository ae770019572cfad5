"""The recipe loader says which files a recipe reads, for every kind of recipe; the
builders' input keys follow exactly those files, and the watcher maps them to labels."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from controller.build.builders import builder_for
from controller.config.load import parse_config
from controller.config.models import Config
from controller.daemon.catchup import Inputs, decide
from controller.daemon.debounce import affected_labels
from controller.daemon.watch import WatchSpec, recipe_dependencies, watch_specs
from controller.recipes.load import load_with_inputs, recipe_inputs

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "base"
DEF = """\
Bootstrap: debootstrap
OSVersion: bookworm

%setup
    rsync -a site/ "$SINGULARITY_ROOTFS/"   # a tree beside the .def
    echo built > "$SINGULARITY_ROOTFS/etc/built"

%files
    motd /etc/motd
    conf.d /etc/thing/conf.d
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def toml_with_extends(tmp: Path) -> Path:
    write(
        tmp / "common" / "base.toml",
        """\
distro = "debian"
release = "12"
[[files]]
src = "motd"
dest = "/etc/motd"
""",
    )
    write(tmp / "common" / "motd", "hello\n")
    write(tmp / "recipes" / "site" / "issue", "issue\n")
    return write(
        tmp / "recipes" / "node.toml",
        """\
extends = "../common/base.toml"
[[files]]
src = "site/issue"
dest = "/etc/issue"
[[files]]
src = "later.conf"
dest = "/etc/later.conf"
""",
    )


def def_recipe(tmp: Path) -> Path:
    write(tmp / "motd", "motd\n")
    write(tmp / "conf.d" / "a.conf", "a\n")
    write(tmp / "site" / "etc" / "site.conf", "site\n")
    write(tmp / "unrelated.txt", "not read\n")
    return write(tmp / "node.def", DEF)


def test_toml_lists_its_extends_chain_and_files_sources(tmp_path: Path) -> None:
    recipe = toml_with_extends(tmp_path)
    _, inputs = load_with_inputs(recipe)
    assert inputs == (
        recipe,
        tmp_path / "common" / "base.toml",
        tmp_path / "common" / "motd",  # relative to the file that names it
        tmp_path / "recipes" / "site" / "issue",
        tmp_path / "recipes" / "later.conf",  # not created yet: creating it is an edit
    )
    assert recipe_inputs(recipe) == inputs


def test_import_lists_its_source(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    recipe = write(tmp_path / "recipes" / "imp.toml", 'builder = "import"\nsource = "../tree"\n')
    assert recipe_inputs(recipe) == (recipe, tmp_path / "tree")
    tar = write(tmp_path / "recipes" / "t.toml", 'source = "/srv/trees/x.tar.zst"\n')
    assert recipe_inputs(tar) == (tar, Path("/srv/trees/x.tar.zst"))


def test_def_lists_files_and_setup_sources(tmp_path: Path) -> None:
    definition = def_recipe(tmp_path)
    assert recipe_inputs(definition) == (
        definition, tmp_path / "motd", tmp_path / "conf.d", tmp_path / "site",
    )  # fmt: skip


def test_apptainer_lists_its_toml_and_its_def(tmp_path: Path) -> None:
    def_recipe(tmp_path)
    recipe = write(tmp_path / "app.toml", 'builder = "apptainer"\ndefinition = "node.def"\n')
    loaded, inputs = load_with_inputs(recipe)
    assert loaded.builder == "apptainer"
    assert inputs == (
        recipe, tmp_path / "node.def", tmp_path / "motd", tmp_path / "conf.d", tmp_path / "site",
    )  # fmt: skip


def test_a_recipe_that_does_not_load_lists_what_was_read(tmp_path: Path) -> None:
    child = write(tmp_path / "child.toml", 'extends = "parent.toml"\n')
    assert recipe_inputs(child) == (child, tmp_path / "parent.toml")  # creating it fixes it
    write(tmp_path / "parent.toml", "distro = [\n")
    assert recipe_inputs(child) == (child, tmp_path / "parent.toml")
    app = write(tmp_path / "app.toml", 'builder = "apptainer"\ndefinition = "gone.def"\n')
    assert recipe_inputs(app) == (app, tmp_path / "gone.def")
    plain = write(tmp_path / "p.toml", 'extends = "parent.toml"\nroot_password = "x"\n')
    assert recipe_inputs(plain) == (plain, tmp_path / "parent.toml")


def key(recipe: Path) -> str:
    loaded = load_with_inputs(recipe)[0]
    return builder_for(loaded, base_dir=BASE).input_key(loaded, recipe)


def test_every_listed_file_changes_the_input_key_and_nothing_else_does(tmp_path: Path) -> None:
    """The watcher rebuilds on exactly the files the build's input key hashes (the
    recipe files are inputs by their parsed content: a comment changes nothing)."""
    toml = toml_with_extends(tmp_path / "t")
    write(tmp_path / "t" / "recipes" / "later.conf", "later\n")
    definition = def_recipe(tmp_path / "d")
    app = write(tmp_path / "d" / "app.toml", 'builder = "apptainer"\ndefinition = "node.def"\n')
    for recipe in (toml, definition, app):
        _, inputs = load_with_inputs(recipe)
        for path in (p for p in inputs if p.suffix not in (".toml", ".def")):
            before = key(recipe)
            target = path / "a.conf" if (path / "a.conf").is_file() else path
            if path.is_dir() and not (path / "a.conf").is_file():
                target = next(p for p in path.rglob("*") if p.is_file())
            target.write_text(target.read_text() + "\n# edited\n")
            assert key(recipe) != before, f"{recipe.name}: an edit of {target} is not an input"
        before = key(recipe)
        write(recipe.parent / "unrelated.txt", "still not read\n")
        assert key(recipe) == before


def config_for(tmp: Path, labels: dict[str, Path]) -> Config:
    table = {name: {"recipe": str(path)} for name, path in labels.items()}
    data = {"recipes_dir": "recipes", "overlays_dir": "overlays", "base_dir": str(BASE),
            "state_dir": "state", "labels": table}  # fmt: skip
    return parse_config(data, source="test", root=tmp)


def test_the_watcher_maps_each_listed_file_to_its_label(tmp_path: Path) -> None:
    toml = toml_with_extends(tmp_path)
    definition = def_recipe(tmp_path / "recipes" / "legacy")
    app = write(tmp_path / "recipes" / "app.toml", 'builder = "apptainer"\ndefinition = "a.def"\n')
    write(tmp_path / "recipes" / "a.def", "Bootstrap: debootstrap\nOSVersion: bookworm\n")
    config = config_for(tmp_path, {"node": toml, "legacy": definition, "app": app})
    deps = recipe_dependencies(config)

    def affected(path: Path) -> Mapping[str, str]:
        return affected_labels([path], config, config_file=None, recipe_deps=deps)

    assert affected(tmp_path / "common" / "motd") == {"node": "full"}
    assert affected(tmp_path / "recipes" / "later.conf") == {"node": "full"}
    assert affected(tmp_path / "recipes" / "legacy" / "motd") == {"legacy": "full"}
    assert affected(tmp_path / "recipes" / "legacy" / "site" / "etc" / "site.conf") == {
        "legacy": "full"
    }
    assert affected(tmp_path / "recipes" / "a.def") == {"app": "full"}
    assert affected(tmp_path / "recipes" / "legacy" / "unrelated.txt") == {}
    # files outside recipes/, overlays/ and base/ are watched too: only those files
    specs = watch_specs(config, None, deps)
    assert WatchSpec(
        tmp_path / "common", recursive=False,
        only=frozenset({tmp_path / "common" / "base.toml", tmp_path / "common" / "motd"}),
    ) in specs  # fmt: skip
    assert [s.path for s in specs].count(tmp_path / "common") == 1


def test_a_directory_source_outside_is_watched_recursively(tmp_path: Path) -> None:
    (tmp_path / "tree" / "etc").mkdir(parents=True)
    recipe = write(tmp_path / "recipes" / "imp.toml", 'source = "../tree"\n')
    config = config_for(tmp_path, {"imp": recipe})
    specs = watch_specs(config, tmp_path / "netroot.toml", recipe_dependencies(config))
    assert WatchSpec(tmp_path / "tree") in specs
    assert (
        WatchSpec(tmp_path, recursive=False, only=frozenset({tmp_path / "netroot.toml"})) in specs
    )


def test_start_up_rebuilds_only_what_changed() -> None:
    old, new = Inputs("k1", "o1"), Inputs("k2", "o1")
    assert decide(old, old, old) is None
    assert decide(None, None, None) is None  # never built: nothing to compare with
    assert decide(new, None, None) is None
    assert decide(new, old, old) == "full"
    assert decide(Inputs("k1", "o2"), old, old) == "overlay"  # the active base is reused
    assert decide(new, old, new) is None  # built already, not activated (or rolled back)
    assert decide(old, old, new) is None  # rolled back to: its inputs are the current ones
    assert decide(None, old, old) == "full"  # a recipe that no longer loads: the build says why
