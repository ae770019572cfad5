"""The controller daemon (`netroot serve`): watcher, builds, events, node tracking."""

from controller.daemon.app import Daemon, serve

__all__ = ["Daemon", "serve"]
