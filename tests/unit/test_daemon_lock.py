"""The daemon's lock file names who holds it and the role it serves; nobody, once released."""

from __future__ import annotations

from pathlib import Path

from controller.daemon.lock import exclusive, holder_about, holder_pid


def test_the_holder_s_pid_and_role_are_read_while_it_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "daemon.lock"
    assert (holder_pid(path), holder_about(path)) == (None, None)  # no file yet
    with exclusive(path, about="replica") as held:
        assert held
        with exclusive(path) as again:
            assert not again  # one holder at a time
        # (another open file description: as `netroot status` in its own process sees it)
        pid = holder_pid(path)
        assert pid is not None and pid > 0
        assert holder_about(path) == "replica"
    assert (holder_pid(path), holder_about(path)) == (None, None)  # released: nobody serves
