"""Run inside a fresh mount namespace: perform a list of mounts, then exec a command.

Started by `controller.build.builders.chroot` as `unshare ... -- python3 -I nsexec.py PLAN`
where PLAN is JSON: {"mounts": [[argv], ...], "exec": [argv]}. Standard library
only and no import of `controller`, so it runs with `-I` from any directory. No
shell is involved: every mount is an argv list built by a pure function.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main(argv: list[str]) -> int:
    """Mount everything in the plan, then replace this process with the command."""
    plan = json.loads(argv[1])
    for mount in plan["mounts"]:
        done = subprocess.run(mount, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            print(
                f"netroot-nsexec: {' '.join(mount)} failed with status {done.returncode}",
                file=sys.stderr,
            )
            return 125
    command: list[str] = plan["exec"]
    os.execvp(command[0], command)  # noqa: S606 - the argv list is the whole point
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
