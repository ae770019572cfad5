"""The live_netroot_hosts reader: the shell subset it reads, and every line it refuses to run."""

from __future__ import annotations

import tomllib
from pathlib import Path

from controller.config.hostsfile import merge_into, read_hosts, render_labels
from controller.config.load import parse_config

PWD = Path("/srv/netroot")


def labels(text: str) -> dict[str, dict[str, object]]:
    return read_hosts(text, pwd=PWD).labels


def findings(text: str) -> list[tuple[int, str]]:
    return [(f.line, f.reason) for f in read_hosts(text, pwd=PWD).findings]


def test_quoting_and_expansion() -> None:
    text = """\
base=$PWD
A='$base literal'
B="${base}/x \\"q\\" \\$notvar"
C=pre$base\\
post
case $label in
  n1) RECIPE=$base/r.def; EXTRA_CMDLINE="$A|$B|$C" ;;
esac
"""
    got = labels(text)
    assert got == {
        "n1": {
            "recipe": "/srv/netroot/r.def",
            "extra_cmdline": '$base literal|/srv/netroot/x "q" $notvar|pre/srv/netrootpost',
        }
    }
    assert findings(text) == []


def test_defaults_arms_and_order() -> None:
    text = """\
export TFTPBOOT=/tftp
EXTRA_QEMU="-m 2048"
case "$label" in
  (a|b) RECIPE=ab.def
        EXTRA_QEMU="$EXTRA_QEMU -smp '2'" ;;
  a) RECIPE=never.def ;;
  c)
    RECIPE=/abs/c.def
    TFTPBOOT=
    DEBUG=Y
esac
RW=Y
"""
    got = labels(text)
    assert list(got) == ["a", "b", "c"]
    assert (
        got["a"]
        == got["b"]
        == {  # the first matching arm wins, as in the shell
            "recipe": "/srv/netroot/ab.def",
            "tftp_root": "/tftp",
            "rw": True,
            "extra_qemu": ["-m", "2048", "-smp", "2"],
        }
    )
    assert got["c"] == {
        "recipe": "/abs/c.def",
        "rw": True,
        "debug": True,
        "extra_qemu": ["-m", "2048"],
    }


def test_everything_else_is_reported_and_skipped() -> None:
    text = """\
. ./other_file
if [ -n "$X" ]; then
  RW=Y
fi
for x in 1 2; do RW=$x; done
usage() {
  echo usage
}
(cd /tmp && RW=Y)
A=1 | cat
B=$((1+2))
C=${D:-x}
E=$1
case $host in x) RECIPE=x ;; esac
case $label in
  good) RECIPE=g.def NETROOT=$UNSET/n RW=yes ;;
  Bad_Name) RECIPE=b.def ;;
  norecipe) NETROOT=/x ;;
  q*) RECIPE=q.def ;;
  badqemu) RECIPE=b.def EXTRA_QEMU="-drive 'file=x" ;;
  *) exit 1 ;;
esac
"""
    got = labels(text)
    assert got == {
        "good": {"recipe": "/srv/netroot/g.def", "export_path": "/n"},
        "badqemu": {"recipe": "/srv/netroot/b.def"},
    }  # without its EXTRA_QEMU
    reasons = dict(findings(text))
    assert reasons[1].startswith("not a variable assignment")  # sourcing another file
    assert reasons[2] == (
        "`if` is not read (only assignments and the label case): skipped, not run (lines 2-4)"
    )
    assert reasons[5].startswith("`for` is not read")
    assert reasons[6].startswith("`function` is not read") and reasons[6].endswith("(lines 6-8)")
    assert reasons[9].startswith("`(` is not read")
    assert reasons[10].startswith("not a variable assignment")
    assert reasons[11].startswith("B= uses arithmetic $((...))")
    assert reasons[12].startswith("C= uses parameter expansion ${D:-x}")
    assert reasons[13].startswith("E= uses special parameter $1")
    assert reasons[14].startswith("`case (not `case $label in`)` is not read")
    lines = findings(text)
    assert (16, "label good: RW is not Y, so it is false, as the original read it") in lines
    assert (16, "$UNSET is not set here: read as empty (the original ran with set -u)") in lines
    assert any(n == 17 and "label 'Bad_Name' is not a netroot label name" in r for n, r in lines)
    assert (18, "label norecipe: no RECIPE: not imported") in lines
    assert (19, "pattern 'q*' matches labels it does not name: not imported") in lines
    assert any(n == 20 and "EXTRA_QEMU cannot be split" in r for n, r in lines)
    assert (21, "the `*)` arm (labels the file does not name) is not imported") in lines
    assert (21, "not a variable assignment: skipped, not run") in lines


def test_no_case_is_a_finding() -> None:
    result = read_hosts("RECIPE=x.def\n", pwd=PWD)
    assert result.labels == {}
    assert [f.reason for f in result.findings] == ["no `case $label in ... esac` arm names a label"]


def test_recipes_inside_recipes_dir_become_relative() -> None:
    text = "case $label in a) RECIPE=/srv/netroot/recipes/a.def ;; b) RECIPE=/other/b.def ;; esac"
    got = read_hosts(text, pwd=PWD, recipes_dir=PWD / "recipes").labels
    assert got == {"a": {"recipe": "a.def"}, "b": {"recipe": "/other/b.def"}}


def test_rendered_labels_are_valid_toml_and_config() -> None:
    tables: dict[str, dict[str, object]] = {
        "node.1": {
            "recipe": 'we"ird\\name.def',
            "rw": True,
            "extra_qemu": ["-name", "x y"],
            "extra_cmdline": "a=ü",
        },
        "n2": {"recipe": "n2.toml"},
    }
    text = render_labels(tables)
    assert text.startswith('[labels."node.1"]\nrecipe = "we\\"ird\\\\name.def"\n')
    data = tomllib.loads(text)
    assert data["labels"] == tables
    config = parse_config(data, source="t", root=PWD)
    assert config.label("node.1").extra_qemu == ("-name", "x y")


def test_merge_keeps_existing_labels_and_text() -> None:
    tables = {"a": {"recipe": "a.def"}, "b": {"recipe": "b.def"}}
    original = 'state_dir = "/s"\n[labels.a]\nrecipe = "mine.toml"'
    merged, kept = merge_into(original, {"a"}, tables, "/old/live_netroot_hosts")
    assert kept == ["a"]
    assert merged.startswith(original + "\n")
    data = tomllib.loads(merged)
    assert data["labels"] == {"a": {"recipe": "mine.toml"}, "b": {"recipe": "b.def"}}
    assert "# imported from /old/live_netroot_hosts" in merged
    assert merge_into(original, {"a", "b"}, tables, "x") == (original, ["a", "b"])
    assert tomllib.loads(merge_into("", set(), tables, "x")[0])["labels"] == tables
