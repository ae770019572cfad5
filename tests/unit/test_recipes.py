"""Native TOML recipes: models, defaults, extends, and one-line errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.core.errors import RecipeError
from controller.recipes import DnfRecipe, ImportRecipe, MmdebstrapRecipe, load_recipe

REPO = Path(__file__).resolve().parents[2]
HASH = (
    "$6$netrootTestSalt$LHGAQsC3XM8YeJZCRLcRIGJc.wXMcF9ZMKQWOToeELEAfv2IChl1eyjGobDNi2NtnSR"
    "atoZeDDKmjzkzeDb6R1"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, **kwargs: bool) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


def test_builder_and_defaults_derive_from_distro(tmp_path: Path) -> None:
    deb = load_recipe(write(tmp_path, "d.toml", 'distro = "debian"\nrelease = "12"\n'))
    assert isinstance(deb, MmdebstrapRecipe)
    assert (deb.builder, deb.arch, deb.components, deb.suite) == (
        "mmdebstrap",
        "amd64",
        ("main",),
        "bookworm",
    )
    assert deb.mirror is None  # the tool's default mirror
    ubuntu = load_recipe(write(tmp_path, "u.toml", 'distro = "ubuntu"\nrelease = "24.04"\n'))
    assert ubuntu.builder == "mmdebstrap" and "universe" in ubuntu.components
    rocky = load_recipe(write(tmp_path, "r.toml", 'distro = "rocky"\nrelease = "9"\n'))
    assert isinstance(rocky, DnfRecipe)
    assert (rocky.builder, rocky.arch) == ("dnf", "x86_64")


def test_package_set_adds_what_booting_needs(tmp_path: Path) -> None:
    r = load_recipe(
        write(
            tmp_path,
            "d.toml",
            'distro = "debian"\nrelease = "bookworm"\npackages = ["vim", "vim"]\n',
        )
    )
    assert isinstance(r, MmdebstrapRecipe)
    assert r.package_set == tuple(sorted(r.package_set))
    for name in ("vim", "linux-image-amd64", "dracut", "dracut-network", "procps", "nfs-common"):
        assert r.package_set.count(name) == 1


def test_import_recipes_still_work(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, "i.toml", 'builder = "import"\nsource = "tree.tar"\n'))
    assert isinstance(r, ImportRecipe)
    assert r.source == tmp_path / "tree.tar"
    bare = load_recipe(write(tmp_path, "j.toml", 'source = "/abs/tree"\n'))
    assert isinstance(bare, ImportRecipe)


def test_extends_merges_in_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(
        tmp_path,
        "base.toml",
        f'''
distro = "debian"
release = "12"
packages = ["a", "b"]
timezone = "UTC"
root_password_hash = "{HASH}"
post = "echo base"
[[files]]
src = "motd"
dest = "/etc/motd"
[services]
enable = ["ssh"]
''',
    )
    child = write(
        tmp_path / "sub",
        "child.toml",
        """
extends = "../base.toml"
packages = ["b", "c"]
timezone = "Europe/Rome"
post = "echo child"
[[files]]
src = "issue"
dest = "/etc/issue"
[services]
enable = ["munge"]
disable = ["cron"]
""",
    )
    r = load_recipe(child)
    assert isinstance(r, MmdebstrapRecipe)
    assert r.packages == ("a", "b", "c")
    assert r.timezone == "Europe/Rome"
    assert r.post == "echo base\necho child"
    assert [f.src for f in r.files] == [tmp_path / "motd", tmp_path / "sub" / "issue"]
    assert r.services.enable == ("ssh", "munge") and r.services.disable == ("cron",)
    assert r.root_password_hash == HASH


def test_extends_cycle_and_missing_parent(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", 'extends = "b.toml"\ndistro = "debian"\nrelease = "12"\n')
    b = write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    err = error_of(b)
    assert err.field == "extends"
    missing = write(tmp_path, "m.toml", 'extends = "nope.toml"\n')
    assert "nope.toml" in str(error_of(missing))


def test_plaintext_password_refused_unless_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", 'distro = "debian"\nrelease = "12"\nroot_password = "x"\n')
    err = error_of(path)
    assert str(err).startswith(f"{path}: root_password: ")
    assert "--insecure-test-password" in str(err)
    allowed = load_recipe(path, allow_plaintext_password=True)
    assert isinstance(allowed, MmdebstrapRecipe) and allowed.root_password == "x"


def test_plaintext_password_in_a_parent_names_the_parent(tmp_path: Path) -> None:
    parent = write(
        tmp_path, "parent.toml", 'distro = "debian"\nrelease = "12"\nroot_password = "x"\n'
    )
    child = write(tmp_path, "child.toml", 'extends = "parent.toml"\n')
    assert str(error_of(child)).startswith(f"{parent}: root_password: ")


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('distro = "debian"\nrelease = "99"\n', "release", "unknown debian release"),
        ('distro = "debian"\nrelease = "12"\narch = "x86_64"\n', "arch", "amd64"),
        ('distro = "gentoo"\nrelease = "1"\n', "distro", "unknown distro"),
        (
            'distro = "debian"\nrelease = "12"\nroot_password_hash = "secret"\n',
            "root_password_hash",
            "crypt",
        ),
        (
            'distro = "debian"\nrelease = "12"\npackages = ["ok", "bad name"]\n',
            "packages",
            "'bad name'",
        ),
        ('distro = "debian"\nrelease = "12"\nmirorr = "x"\n', "mirorr", "unknown field"),
        ('distro = "debian"\n', "release", "missing"),
        ('builder = "dnf"\ndistro = "debian"\nrelease = "12"\n', "distro", "not allowed"),
        ('builder = "rpmbuild"\n', "builder", "unknown builder"),
        (
            'distro = "debian"\nrelease = "12"\n[[files]]\nsrc = "a"\ndest = "etc/a"\n',
            "files.0.dest",
            "absolute",
        ),
        (
            'distro = "debian"\nrelease = "12"\ntimezone = "../../etc/shadow"\n',
            "timezone",
            "invalid",
        ),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = write(tmp_path, "bad.toml", text)
    err = error_of(path)
    assert err.field == field, str(err)
    assert str(err).startswith(f"{path}: {field}: ")
    assert words in str(err)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = 'distro = "debian"\nrelease = "12"\npackages = [\n"a" "b"]\n'
    path = write(tmp_path, "bad.toml", text)
    assert "line 4" in str(error_of(path))


@pytest.mark.parametrize(
    "name", ["debian12", "debian13", "ubuntu24.04", "rocky9", "alma9", "fedora", "hpcnode"]
)
def test_shipped_recipes_load(name: str) -> None:
    r = load_recipe(REPO / "recipes" / f"{name}.toml")
    assert isinstance(r, MmdebstrapRecipe | DnfRecipe)
    assert r.root_password is None and r.root_password_hash  # never a plaintext password
    assert r.mirror is None  # the tools' defaults: no mirror host in the repository


def test_hpcnode_extends_debian12() -> None:
    base = load_recipe(REPO / "recipes" / "debian12.toml")
    hpc = load_recipe(REPO / "recipes" / "hpcnode.toml")
    assert isinstance(base, MmdebstrapRecipe) and isinstance(hpc, MmdebstrapRecipe)
    assert set(base.packages) < set(hpc.packages)
    assert hpc.post.startswith(base.post.rstrip("\n"))
