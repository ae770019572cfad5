"""The MQTT topics netroot publishes and subscribes to, under one prefix."""

from __future__ import annotations

from dataclasses import dataclass

from controller.core.ids import MAC_EXAMPLE, TOPIC_PREFIX_RE, normalize_mac, valid_label

DEFAULT_PREFIX = "netroot"
# On a replica's broker, the level under the prefix where the bridge to the primary
# maps the primary's image topics (config/mosquitto-replica.conf.example).
UPSTREAM = "primary"


def _label_level(label: str) -> str:
    # A label lands in a topic level: the label rule keeps '/', '+' and '#' out.
    return valid_label(label, "label for a topic")


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic of docs/design.md §9, under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not TOPIC_PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"{self.prefix!r} is not a topic prefix like 'netroot' or 'a/netroot'")

    def _at(self, *levels: str) -> str:
        return "/".join((self.prefix, *levels))

    def controller_status(self) -> str:
        """Retained online/offline, also the controller's will."""
        return self._at("controller", "status")

    def state_index(self) -> str:
        """Retained index of labels and node counts, for late subscribers."""
        return self._at("state", "index")

    def controller_events(self) -> str:
        """Events about the controller itself (configuration reloaded or rejected)."""
        return self._at("events", "controller")

    def image_events(self, label: str) -> str:
        """Image events of one label."""
        return self._at("events", "image", _label_level(label))

    def image_state(self, label: str) -> str:
        """Retained active-version summary of one label."""
        return self._at("state", "image", _label_level(label))

    def replica_events(self, name: str) -> str:
        """A replica's events about the versions it copies (its acknowledgements)."""
        return self._at("events", "replica", _label_level(name))

    def replica_events_all(self) -> str:
        """Subscription filter of every replica's events (the primary listens)."""
        return self._at("events", "replica", "+")

    def replica_state(self, name: str) -> str:
        """Retained: what a replica serves and whether it is behind."""
        return self._at("state", "replica", _label_level(name))

    def replica_state_all(self) -> str:
        """Subscription filter of every replica's retained state (the primary listens)."""
        return self._at("state", "replica", "+")

    def upstream_image_events(self) -> str:
        """Where a replica's broker bridge puts the primary's image events (filter)."""
        return self._at(UPSTREAM, "events", "image", "+")

    def upstream_image_state(self) -> str:
        """Where the bridge puts the primary's retained image states (filter)."""
        return self._at(UPSTREAM, "state", "image", "+")

    def node_states_all(self) -> str:
        """Subscription filter of every retained node state."""
        return self._at("state", "node", "+")

    def upstream_node_states(self) -> str:
        """Where a replica's bridge puts the node states of the primary's broker (filter)."""
        return self._at(UPSTREAM, "state", "node", "+")

    def node_events(self, mac: str) -> str:
        """Events about one node."""
        return self._at("events", "node", normalize_mac(mac))

    def node_state(self, mac: str) -> str:
        """Retained state of one node."""
        return self._at("state", "node", normalize_mac(mac))

    def node_report(self, mac: str) -> str:
        """Where one node's agent publishes (and its will lands)."""
        return self._at("node", normalize_mac(mac), "report")

    def node_cmd(self, mac: str) -> str:
        """Where the controller sends one node its commands."""
        return self._at("node", normalize_mac(mac), "cmd")

    def node_reports(self) -> str:
        """Subscription filter matching every node's report topic."""
        return self._at("node", "+", "report")

    def report_mac(self, topic: str) -> str:
        """The MAC named by a node report topic; ValueError if it is not one."""
        head = f"{self.prefix}/node/"
        if not (topic.startswith(head) and topic.endswith("/report")):
            raise ValueError(f"not a node report topic (expected {head}<mac>/report)")
        node = topic[len(head) : -len("/report")]
        # Only the canonical form: the ACL grants a node exactly this topic.
        if normalize_mac(node) != node:
            raise ValueError(f"{node!r} in the topic is not a lowercase MAC like {MAC_EXAMPLE}")
        return node
