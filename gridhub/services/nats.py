"""A 3-node NATS JetStream cluster with the MQTT gateway on loopback ports (`NatsCluster`), and its accounts from
the registry (`accounts_conf`, `gridhub devices credentials --broker nats`).

The invariant: every device message lands on exactly one partition's subjects, chosen by NATS's own
`partition(P, 1)` hash of the device id, so one persistent MQTT session per partition sees all of one device's
messages in order; devices live in the DEVICES account and the hub's clients in HUB, so that no device account can
take a hub client id (MQTT client ids and sessions are per account). Each node is one `nats-server` process with a
pid file; `stop()` ends exactly the processes those files name.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from gridhub.services.process import (
    ServiceError,
    free_port,
    locked,
    pid_alive,
    port_open,
    read_pid,
    tail,
    terminate,
    wait_until,
    write_private,
)

# CONTRACT §1: a frame is at most 2 MiB. NATS checks an MQTT PUBLISH's payload against max_payload, and the message
# it stores carries the topic and NATS headers besides: 4 MiB leaves room. nats-server refuses more than 64 MiB
# (MAX_PAYLOAD_MAX_SIZE) and warns above 8 MiB, since every client buffers whole messages.
MAX_PAYLOAD = 4 * 1024 * 1024
# GRIDHUB_PARTITIONS on NATS when unset (issue 15 item 2), measured with bench/partitions.py on one 2-core machine
# (3 nodes, R3), one ingest holding every partition, 20,000 QoS 1 readings: P = 1 stored 4,137-5,072/s (in 3 runs of
# 5 one reading reached ingest only at NATS's redelivery ~30 s later, so those runs read ~640/s; not seen with P >= 2
# nor with a bare paho subscriber), P = 2 3,106-4,162/s, P = 4 2,844-4,366/s, P = 8 2,759-2,981/s with the
# publishers' PUBACK rate down a third and ingest's CPU per reading doubled. Each partition costs every part one persistent
# session, that is replicated consumers on every node (3 for ingest's telemetry, event and status). 4 is the
# smallest P that lets each part spread over 4 instances at no measurable cost against 2; 8 already costs.
DEFAULT_PARTITIONS = 4
MAX_PARTITIONS = 1024
REPLICAS = 3
ACK_WAIT = "5s"  # the MQTT gateway's redelivery wait (nats-server's default is 30 s): see node_conf
DEVICES_ACCOUNT = "DEVICES"
HUB_ACCOUNT = "HUB"
WORKERS_ACCOUNT = "WORKERS"  # the grid workers' apps: their own task pushes from HUB, nothing else
SYSTEM_ACCOUNT = "SYS"
# the partitioned subjects: <prefix>/part/<k>/devices/<id>/<kind>[/<ts>]
PARTITION_LEVEL = "part"
DEVICE_KINDS = ("telemetry", "event", "status", "frame")
SERVER_PROGRAM = "nats-server"
ACCOUNTS_FILE = "accounts.conf"
MQTT_DELIVERY = "$MQTT.sub.>"


def find_nats_server() -> Path | None:
    """The nats-server program (Debian's package puts it in /usr/sbin), None when not installed."""
    found = shutil.which(SERVER_PROGRAM)
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/nats-server"), Path("/usr/local/bin/nats-server")):
        if candidate.exists():
            return candidate
    return None


def server_version(program: Path) -> str:
    out = subprocess.run([str(program), "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"v(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else "unknown"


# --- subjects ---------------------------------------------------------------------------------------------------

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


def subject_prefix(topic_prefix: str) -> str:
    """The NATS subject of an MQTT topic prefix (`gridhub/v1` -> `gridhub.v1`): NATS's MQTT gateway turns each `/`
    into a `.`, so a prefix level holding `.`, a wildcard or a space has no subject and is refused."""
    if not _PREFIX_RE.match(topic_prefix):
        raise ServiceError(f"topic prefix {topic_prefix!r} cannot be used on NATS: its levels may hold only "
                           "letters, digits, '_' and '-' (set GRIDHUB_TOPIC_PREFIX)")
    return topic_prefix.replace("/", ".")


def check_partitions(partitions: int) -> int:
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ServiceError(f"{partitions} partitions: choose between 1 and {MAX_PARTITIONS}")
    return partitions


def partition_topic(topic_prefix: str, partition: int) -> str:
    """The MQTT topic filter of one partition's device messages, for the hub's session that holds it."""
    return f"{topic_prefix}/{PARTITION_LEVEL}/{partition}/devices/#"


def partition_filters(topic_prefix: str, partition: int, kinds: tuple[str, ...]) -> list[str]:
    """The MQTT topic filters of one partition's messages of these kinds only (ingest takes telemetry, events and
    status, never frames): `<prefix>/part/<k>/devices/+/<kind>`."""
    return [f"{topic_prefix}/{PARTITION_LEVEL}/{partition}/devices/+/{kind}" for kind in kinds]


def unmapped_filters(topic_prefix: str, kinds: tuple[str, ...]) -> list[str]:
    """The devices' own, unmapped topics of these kinds: `<prefix>/devices/+/<kind>`. nats-server 2.9.10 does not
    always apply the account's mapping to an MQTT QoS 1 publish (seen: of back-to-back publishes on one connection,
    some were checked and stored under the device's own subject, PUBACKed all the same), and it publishes a last
    will unmapped. So a device may publish its own unmapped subjects too (`device_permissions`), and one session of
    the hub's (partition 0's) subscribes to them besides its partition: every message a device was told is stored
    reaches a session."""
    return [f"{topic_prefix}/devices/+/{kind}" for kind in kinds]


def session_user_url(mqtt_url: str) -> str:
    """The URL the hub's partition sessions connect with: the hub's own, as its user in DEVICES (`status_reader`,
    subscribe-only), so that a session reads the very stream a device's PUBACK waited for (docs/scaling.md). The
    hosts, password and query stay as they are."""
    parts = urlsplit(mqtt_url)
    creds, at, hosts = parts.netloc.rpartition("@")
    user, colon, password = creds.partition(":")
    if not at or not user:
        raise ServiceError("GRIDHUB_MQTT_URL names no user: the hub's sessions on NATS log in as the hub's user "
                           "(mqtt://user:pass@host:port)")
    reader = status_reader(NatsUser(unquote(user), unquote(password)))
    return urlunsplit(parts._replace(netloc=f"{quote(reader.user, safe='')}{colon}{password}{at}{hosts}"))


def detector_user_url(mqtt_url: str) -> str:
    """The URL `gridhub detect` connects with on NATS: the hub's own, as its detector user in DEVICES
    (`detector_user`), so that its camera events land in the stream alerts' and ingest's partition sessions read,
    exactly as a device's own would. The hosts, password and query stay as they are."""
    parts = urlsplit(mqtt_url)
    creds, at, hosts = parts.netloc.rpartition("@")
    user, colon, password = creds.partition(":")
    if not at or not user:
        raise ServiceError("GRIDHUB_MQTT_URL names no user: gridhub detect on NATS logs in as the hub's detector "
                           "user (mqtt://user:pass@host:port)")
    name = detector_user(NatsUser(unquote(user), unquote(password))).user
    return urlunsplit(parts._replace(netloc=f"{quote(name, safe='')}{colon}{password}{at}{hosts}"))


def camera_event_topic(topic_prefix: str, camera_id: str, partitions: int) -> str:
    """Where `gridhub detect` publishes a camera's event on NATS: the camera's partition's event topic, where the
    account's mapping puts the camera's own events (`device_mappings`); nothing maps it again."""
    return f"{topic_prefix}/{PARTITION_LEVEL}/{device_partition(camera_id, partitions)}/devices/{camera_id}/event"


def session_client_id_on_nats(client_id: str, mqtt_url: str) -> str:
    """A hub session's client id in the DEVICES account: the partition's name (`gridhub-ingest-p3`) and a tag
    derived from the hub's password, the same in every instance of the hub (so a new holder resumes the session)
    and one no device can guess: NATS 2.9 cannot tie a client id to a user, and a device connecting under a hub
    session's id would knock the session off (it could not read it: its permissions are checked)."""
    password = unquote(urlsplit(mqtt_url).netloc.rpartition("@")[0].partition(":")[2])
    tag = hmac.new(password.encode(), f"gridhub session {client_id}".encode(), hashlib.sha256).hexdigest()[:16]
    return f"{client_id}-{tag}"[:128]


def contract_topic(topic_prefix: str, topic: str) -> str:
    """A partitioned topic back as the device published it (CONTRACT §1): `<prefix>/part/<k>/devices/...` ->
    `<prefix>/devices/...`; any other topic unchanged."""
    head = f"{topic_prefix}/{PARTITION_LEVEL}/"
    if not topic.startswith(head):
        return topic
    rest = topic[len(head):]
    _, _, tail_ = rest.partition("/")
    return f"{topic_prefix}/{tail_}"


def device_mappings(topic_prefix: str, partitions: int) -> dict[str, str]:
    """The DEVICES account's subject mappings: each device message onto its partition's subjects, by
    `partition(P, 1)` of the device id (the first wildcard), so every kind of one device lands on one partition.
    Command topics are not mapped."""
    s = subject_prefix(topic_prefix)
    p = check_partitions(partitions)
    part = f"{s}.{PARTITION_LEVEL}.{{{{partition({p},1)}}}}.devices.{{{{wildcard(1)}}}}"
    out = {f"{s}.devices.*.{kind}": f"{part}.{kind}" for kind in DEVICE_KINDS}
    out[f"{s}.devices.*.frame.*"] = f"{part}.frame.{{{{wildcard(2)}}}}"
    return out


def device_partition(device_id: str, partitions: int) -> int:
    """The partition NATS's `partition(P, 1)` mapping puts a device on: FNV-1a (32 bits) of the id, modulo P, as
    nats-server computes it (checked against the server by tests/test_nats_cluster.py)."""
    h = 0x811C9DC5
    for byte in device_id.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % check_partitions(partitions)


def device_permissions(topic_prefix: str, device_id: str, partitions: int) -> dict[str, Any]:
    """A device publishes only its own topics and subscribes only to its own command topic. nats-server 2.9
    checks a publish's permission on the subject after the account's mapping, so the allowed subjects are the
    device's own partition's (a device publishing straight onto them lands where the mapping would put it)."""
    s = subject_prefix(topic_prefix)
    mapped = f"{s}.{PARTITION_LEVEL}.{device_partition(device_id, partitions)}.devices.{device_id}"
    return {
        # nats-server 2.9.10 publishes a last will on its topic's own subject, not mapped (seen in the log as a
        # publish violation on <prefix>.devices.<id>.status): the device may publish its own status there too, and
        # only the status reader sees it (status_reader)
        # 2.9.10 also checks some QoS 1 publishes before the mapping, and stores them unmapped (unmapped_filters):
        # the device's own unmapped subjects are allowed too (no other device's, no other partition's)
        "publish": {"allow": [f"{mapped}.{kind}" for kind in DEVICE_KINDS] + [f"{mapped}.frame.*"]
                    + [f"{s}.devices.{device_id}.{kind}" for kind in DEVICE_KINDS]
                    + [f"{s}.devices.{device_id}.frame.*"]},
        # the gateway delivers a QoS 1 subscription's messages on $MQTT.sub.<nuid>: without it, SUBACK succeeds
        # and nothing is delivered ("Unable to create subscription for JetStream consumer" in the log)
        "subscribe": {"allow": [f"{s}.devices.{device_id}.command", MQTT_DELIVERY]},
    }


# --- configuration files ----------------------------------------------------------------------------------------


def _q(value: str) -> str:
    """A NATS configuration string: JSON's double-quoted form (NATS expands no `$VAR` inside quotes)."""
    return json.dumps(value)


def _block(value: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        inner = "\n".join(f"{pad}  {_q(k)}: {_block(v, indent + 1)}" for k, v in value.items())
        return "{\n" + inner + f"\n{pad}}}"
    if isinstance(value, list):
        if not value:
            return "[]"
        inner = ",\n".join(f"{pad}  {_block(v, indent + 1)}" for v in value)
        return "[\n" + inner + f"\n{pad}]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _q(str(value))


@dataclass(frozen=True)
class NatsUser:
    user: str
    password: str
    permissions: dict[str, Any] | None = None
    account: str | None = None  # another account than the list's it is given in (`accounts_conf`: WORKERS)


def status_reader(hub: NatsUser) -> NatsUser:
    """The hub's read-only user in DEVICES: the hub's partition sessions (ingest's) and the retained status messages: nats-server keeps retained messages
    per account (`$MQTT_rmsgs`), so HUB's sessions never see the devices' retained status, and 2.9.10 publishes a
    last will unmapped, on `<prefix>/devices/<id>/status`, which no import into HUB carried (tried: a stream
    import with a partition() `to`). It may subscribe to the partitioned subjects and to the devices' own status
    subjects, and publish nothing; use it with a clean session and an unguessable client id (a
    device in DEVICES could otherwise take that client id)."""
    return NatsUser(f"{hub.user}-status", hub.password)


def detector_user(hub: NatsUser) -> NatsUser:
    """The hub's `gridhub detect` user in DEVICES (the hub's password): it reads every camera's frames, on the
    partitions' subjects and on the devices' own unmapped ones (`unmapped_filters`), and publishes only the
    registered cameras' events, each on its camera's partition subject (`detector_permissions`). So its findings
    reach alerts' and ingest's partition sessions exactly as a camera's own event would: stored in the DEVICES
    stream the sessions read, on the partition the camera's other messages are on. Use it with an unguessable client
    id (`session_client_id_on_nats`)."""
    return NatsUser(f"{hub.user}-detect", hub.password)


def detector_permissions(topic_prefix: str, cameras: list[str], partitions: int) -> dict[str, Any]:
    """The detector user's permissions: subscribe to frames only; publish each registered camera's event on its
    partition's subject only (no other device's, no other kind). No camera: publish nothing."""
    s = subject_prefix(topic_prefix)
    events = [f"{s}.{PARTITION_LEVEL}.{device_partition(c, partitions)}.devices.{c}.event" for c in cameras]
    frames = [f"{s}.{PARTITION_LEVEL}.*.devices.*.frame", f"{s}.{PARTITION_LEVEL}.*.devices.*.frame.*",
              f"{s}.devices.*.frame", f"{s}.devices.*.frame.*"]
    return {"publish": {"allow": events} if events else {"deny": [">"]},
            "subscribe": {"allow": [*frames, MQTT_DELIVERY]}}


WORKER_USER_PREFIX = "worker."  # gridhub.broker.WORKER_PREFIX: the same user names as on mosquitto
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def worker_permissions(topic_prefix: str, worker_id: str, role: str) -> dict[str, Any]:
    """A worker app (in WORKERS) subscribes only to its own task topic, the bureau and admins to the alerts topic too
    (as mosquitto's ACL, gridhub/broker.py); it publishes nothing."""
    if not _TOKEN_RE.match(worker_id):
        raise ServiceError(f"worker id {worker_id!r} cannot be a NATS subject token (letters, digits, '_', '-')")
    s = subject_prefix(topic_prefix)
    allow = [f"{s}.workers.{worker_id}.tasks"] + ([f"{s}.alerts"] if role in ("bureau", "admin") else [])
    return {"publish": {"deny": [">"]}, "subscribe": {"allow": [*allow, MQTT_DELIVERY]}}


def accounts_conf(topic_prefix: str, partitions: int, hub: list[NatsUser], devices: list[NatsUser],
                  system: NatsUser) -> str:
    """The `accounts` block every node includes: DEVICES (devices, their mappings and permissions) exports the
    partitioned subjects, HUB (the hub's clients) imports them; commands go the other way. The first hub user
    also gets its status reader in DEVICES (`status_reader`)."""
    s = subject_prefix(topic_prefix)
    part_subjects = f"{s}.{PARTITION_LEVEL}.>"
    command_subjects = f"{s}.devices.*.command"
    # HUB -> WORKERS: the task pushes (alerts/publish.py) and the alerts topic, each worker reading its own only
    worker_subjects = [f"{s}.workers.*.tasks", f"{s}.alerts"]
    worker_users = [{"user": w.user, "password": w.password, "permissions": w.permissions or {"publish": {"deny": [">"]},
                     "subscribe": {"deny": [">"]}}} for w in devices if w.account == WORKERS_ACCOUNT]
    dev_users = []
    for d in devices:
        if d.account == WORKERS_ACCOUNT:
            continue
        entry: dict[str, Any] = {"user": d.user, "password": d.password}
        entry["permissions"] = d.permissions or device_permissions(topic_prefix, d.user, partitions)
        dev_users.append(entry)
    if hub:
        reader = status_reader(hub[0])
        # subscribe-only: the partitions, the devices' own unmapped subjects (unmapped_filters) and the delivery
        # subjects of its QoS 1 sessions
        unmapped = [f"{s}.devices.*.{kind}" for kind in DEVICE_KINDS] + [f"{s}.devices.*.frame.*"]
        dev_users.append({"user": reader.user, "password": reader.password,
                          "permissions": {"publish": {"deny": [">"]},
                                          "subscribe": {"allow": [part_subjects, *unmapped, MQTT_DELIVERY]}}})
    accounts: dict[str, Any] = {
        DEVICES_ACCOUNT: {
            "jetstream": "enabled",
            "users": dev_users,
            "mappings": device_mappings(topic_prefix, partitions),
            "exports": [{"stream": part_subjects}, {"stream": f"$MQTT.msgs.{part_subjects}"}],
            "imports": [
                {"stream": {"account": HUB_ACCOUNT, "subject": command_subjects}},
                {"stream": {"account": HUB_ACCOUNT, "subject": f"$MQTT.msgs.{command_subjects}"}},
            ],
        },
        HUB_ACCOUNT: {
            "jetstream": "enabled",
            "users": [{"user": h.user, "password": h.password} for h in hub],
            "exports": [{"stream": command_subjects}, {"stream": f"$MQTT.msgs.{command_subjects}"}]
            + [{"stream": f"{m}{w}"} for w in worker_subjects for m in ("", "$MQTT.msgs.")],
            "imports": [
                {"stream": {"account": DEVICES_ACCOUNT, "subject": part_subjects}},
                {"stream": {"account": DEVICES_ACCOUNT, "subject": f"$MQTT.msgs.{part_subjects}"}},
            ],
        },
        WORKERS_ACCOUNT: {
            "jetstream": "enabled",
            "users": worker_users,
            "imports": [{"stream": {"account": HUB_ACCOUNT, "subject": f"{m}{w}"}}
                        for w in worker_subjects for m in ("", "$MQTT.msgs.")],
        },
        SYSTEM_ACCOUNT: {"users": [{"user": system.user, "password": system.password}]},
    }
    header = ("# Written by gridhub (gridhub/services/nats.py) from the registry; edits are overwritten.\n"
              f"# {len(dev_users)} users in {DEVICES_ACCOUNT}, {len(worker_users)} in {WORKERS_ACCOUNT}, "
              f"{partitions} partitions, topic prefix {topic_prefix}\n")
    return header + f"accounts: {_block(accounts)}\nsystem_account: {_q(SYSTEM_ACCOUNT)}\n"


@dataclass(frozen=True)
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int


def default_layout(base: int = 54222) -> list[NatsNode]:
    """Three nodes on fixed loopback ports: client base+i, cluster base+10+i, MQTT base+20+i, monitoring
    base+30+i (i = 0, 1, 2)."""
    return [NatsNode(f"n{i + 1}", base + i, base + 10 + i, base + 20 + i, base + 30 + i) for i in range(3)]


def free_layout() -> list[NatsNode]:
    """Three nodes on ports that are free now (for tests)."""
    return [NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(), free_port()) for i in range(3)]


def node_conf(node: NatsNode, nodes: list[NatsNode], store_dir: Path, cluster_name: str = "gridhub") -> str:
    routes = [f"nats-route://127.0.0.1:{n.cluster_port}" for n in nodes if n.name != node.name]
    return "\n".join([
        "# Written by gridhub (gridhub/services/nats.py); edits are overwritten.",
        f"server_name: {_q(node.name)}",
        "host: 127.0.0.1",
        f"port: {node.client_port}",
        "http: " + _q(f"127.0.0.1:{node.http_port}"),
        f"max_payload: {MAX_PAYLOAD}",
        f"jetstream {{ store_dir: {_q(str(store_dir))} }}",
        f"cluster {{ name: {_q(cluster_name)}, host: 127.0.0.1, port: {node.cluster_port},"
        f" routes: [{', '.join(_q(r) for r in routes)}] }}",
        # stream_replicas: the gateway otherwise counts configured routes, not nodes (SERVICES.md): with 2 replicas
        # one dead node made every CONNECT fail. ack_wait: how long a QoS 1 message delivered to a session and not
        # acknowledged waits before it is sent again; the default 30 s was the delay before a dead holder's alarms
        # reached the new holder, and before a message 2.9 left undelivered at max_ack_pending went out
        # (docs/scaling.md); redeliveries meanwhile are stored once (dedup) and evaluated once (rule_events)
        f"mqtt {{ host: 127.0.0.1, port: {node.mqtt_port}, stream_replicas: {REPLICAS}, ack_wait: {_q(ACK_WAIT)} }}",
        f"include {_q(ACCOUNTS_FILE)}",
        "",
    ])


# --- the cluster's processes ------------------------------------------------------------------------------------


class NatsCluster:
    """Three nats-server processes under `root`: `<root>/<node>.conf`, `<root>/<node>.pid`, `<root>/<node>.log`,
    JetStream data in `<root>/data/<node>`, the accounts (from the registry) in `<root>/accounts.conf`."""

    def __init__(self, root: Path, nodes: list[NatsNode] | None = None) -> None:
        self.root = Path(root).absolute()
        layout_file = self.root / "layout.json"
        if nodes is None and layout_file.exists():
            nodes = [NatsNode(**n) for n in json.loads(layout_file.read_text())]
        self.nodes = nodes or default_layout()
        if len(self.nodes) != 3:
            raise ServiceError("the NATS cluster has three nodes: one can die and two still elect a leader")

    # paths
    def conf(self, node: NatsNode) -> Path:
        return self.root / f"{node.name}.conf"

    def pid_file(self, node: NatsNode) -> Path:
        return self.root / f"{node.name}.pid"

    def log_file(self, node: NatsNode) -> Path:
        return self.root / f"{node.name}.log"

    def node(self, name: str) -> NatsNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ServiceError(f"no NATS node {name!r}: the nodes are {', '.join(n.name for n in self.nodes)}")

    def write_config(self, accounts_text: str) -> None:
        """Each node's file and the shared accounts file (0600: it holds passwords)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "layout.json").write_text(json.dumps([n.__dict__ for n in self.nodes]))
        write_private(self.root / ACCOUNTS_FILE, accounts_text)
        for n in self.nodes:
            store = self.root / "data" / n.name
            store.mkdir(parents=True, exist_ok=True)
            write_private(self.conf(n), node_conf(n, self.nodes, store))

    def pid(self, node: NatsNode) -> int | None:
        pid = read_pid(self.pid_file(node))
        return pid if pid is not None and pid_alive(pid, SERVER_PROGRAM) else None

    def start_node(self, node: NatsNode) -> int:
        program = find_nats_server()
        if program is None:
            raise ServiceError("nats-server is not installed: run `make services-install` as root "
                               "(apt-get install nats-server)")
        running = self.pid(node)
        if running is not None:
            return running
        for port, what in ((node.client_port, "client"), (node.cluster_port, "cluster"), (node.mqtt_port, "MQTT"),
                           (node.http_port, "monitoring")):
            if port_open(port):
                raise ServiceError(f"127.0.0.1:{port} (node {node.name}'s {what} port) is taken by another "
                                   "program: stop it or choose another layout")
        with self.log_file(node).open("ab") as log:
            proc = subprocess.Popen([str(program), "-c", str(self.conf(node))], cwd=self.root, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file(node).write_text(f"{proc.pid}\n")
        return proc.pid

    def start(self, timeout: float = 30) -> None:
        """Start every node that is not running and wait until each answers /healthz (JetStream up, streams
        current): a cluster whose nodes cannot see each other never gets there."""
        with locked(self.root / ".lock"):
            for n in self.nodes:
                self.start_node(n)
            for n in self.nodes:
                self.wait_healthy(n, timeout)

    def healthy(self, node: NatsNode) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_healthy(self, node: NatsNode, timeout: float = 30) -> None:
        if not wait_until(lambda: self.healthy(node) and port_open(node.mqtt_port), timeout, 0.2):
            pid = self.pid(node)
            raise ServiceError(f"NATS node {node.name} is not healthy after {timeout:.0f} s"
                               f" ({'running' if pid else 'not running'}); its log {self.log_file(node)}:\n"
                               + tail(self.log_file(node)))

    def wait_serving(self, node: NatsNode, timeout: float = 30) -> None:
        """Running with its MQTT port open: a node restarted after a crash may report /healthz unhealthy ("consumer
        is not current") for minutes while it catches up, and serves meanwhile."""
        if not wait_until(lambda: self.pid(node) is not None and port_open(node.mqtt_port), timeout, 0.2):
            raise ServiceError(f"NATS node {node.name} does not serve MQTT after {timeout:.0f} s; its log "
                               f"{self.log_file(node)}:\n" + tail(self.log_file(node)))

    def signal_node(self, node: NatsNode, sig: int) -> int | None:
        pid = self.pid(node)
        if pid is not None:
            os.kill(pid, sig)
        return pid

    def stop_node(self, node: NatsNode, timeout: float = 15) -> None:
        pid = self.pid(node)
        if pid is not None:
            terminate(pid, timeout)
        self.pid_file(node).unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop exactly the processes the pid files name (and that still run nats-server)."""
        for n in self.nodes:
            self.stop_node(n)

    def reload(self) -> int:
        """SIGHUP every running node (accounts changed): the number signalled."""
        return sum(self.signal_node(n, signal.SIGHUP) is not None for n in self.nodes)

    def status(self) -> dict[str, Any]:
        return {n.name: {"pid": self.pid(n), "healthy": self.healthy(n), "client_port": n.client_port,
                         "mqtt_port": n.mqtt_port, "cluster_port": n.cluster_port, "http_port": n.http_port}
                for n in self.nodes}

    def monitor(self, node: NatsNode, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}{path}", timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def stream_leaders(self, account: str = HUB_ACCOUNT) -> dict[str, str]:
        """Stream name -> the node leading it, for one account's streams (the MQTT gateway's are `$MQTT_*`), as
        the monitoring endpoint /jsz tells it; asks the nodes in turn until one answers."""
        for n in self.nodes:
            if self.pid(n) is None:
                continue
            try:
                jsz = self.monitor(n, f"/jsz?acc={account}&streams=true")
            except OSError:
                continue
            out: dict[str, str] = {}
            for acc in jsz.get("account_details") or []:
                for st in acc.get("stream_detail") or []:
                    leader = (st.get("cluster") or {}).get("leader")
                    if leader:
                        out[st["name"]] = leader
            if out:
                return out
        return {}


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `check()` until it returns something truthy; a `ServiceError` naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ServiceError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- accounts from the registry ---------------------------------------------------------------------------------


def registry_users(conn: Any, settings: Any, partitions: int) -> tuple[list[NatsUser], list[NatsUser],
                                                                     list[tuple[str, str, str, str]]]:
    """(hub users, the other users, the CSV rows kind/id/user/password) from the registry: the hub's account from
    GRIDHUB_MQTT_URL; every device that is not retired with its derived password, and the hub's detector user
    (`detector_user`, allowed the registered cameras' events), in DEVICES; every active worker's app account in
    WORKERS (`NatsUser.account`)."""
    from gridhub.broker import WORKER_PREFIX, build_accounts

    assert WORKER_PREFIX == WORKER_USER_PREFIX

    accounts, workers, hub = build_accounts(conn, settings)
    prefix = settings.topic_prefix
    devices = [NatsUser(a.username, a.password, device_permissions(prefix, a.subject, partitions))
               for a in accounts if a.kind == "device"]
    cameras = [r[0] for r in conn.execute("SELECT id FROM devices WHERE kind = 'camera' AND NOT retired ORDER BY id")]
    hub_user = NatsUser(hub.username, hub.password)
    detector = detector_user(hub_user)
    devices.append(NatsUser(detector.user, detector.password, detector_permissions(prefix, cameras, partitions)))
    roles = dict(workers)
    devices += [NatsUser(a.username, a.password, worker_permissions(prefix, a.subject, roles.get(a.subject, "")),
                         WORKERS_ACCOUNT) for a in accounts if a.kind == "worker"]
    rows = [(a.kind, a.subject, a.username, a.password) for a in accounts if a.kind == "device"]
    return [hub_user], devices, rows


def write_credentials(settings: Any, partitions: int, out: Path) -> int:
    """accounts.conf and device-credentials.csv (0600) from the registry into `out`: the number of devices."""
    import secrets

    from gridhub.db import connect

    assert settings.database_url
    check_partitions(partitions)
    with connect(settings.database_url) as conn:
        hub, devices, rows = registry_users(conn, settings, partitions)
    out.mkdir(parents=True, exist_ok=True)
    sys_file = out / "system-password"
    if not sys_file.exists():
        write_private(sys_file, secrets.token_urlsafe(24))
    system = NatsUser("sys", sys_file.read_text().strip())
    write_private(out / ACCOUNTS_FILE, accounts_conf(settings.topic_prefix, partitions, hub, devices, system))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "id", "username", "password"])
    w.writerows(rows)
    write_private(out / "device-credentials.csv", buf.getvalue())
    # the worker apps' accounts (WORKERS): the same derived passwords as mosquitto's device-credentials.csv has
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "id", "username", "password"])
    w.writerows(("worker", u.user.removeprefix(WORKER_USER_PREFIX), u.user, u.password) for u in devices
                if u.account == WORKERS_ACCOUNT)
    write_private(out / "worker-credentials.csv", buf.getvalue())
    return len(rows)


def check_config(conf: Path) -> str:
    """`nats-server -t`: '' when the server accepts the configuration, else what it says."""
    program = find_nats_server()
    if program is None:
        raise ServiceError("nats-server is not installed: run `make services-install` as root")
    proc = subprocess.run([str(program), "-t", "-c", str(conf)], capture_output=True, text=True, cwd=conf.parent,
                          check=False)
    return "" if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()


def credentials_cli(args: argparse.Namespace) -> int:
    """`gridhub devices credentials --broker nats`: accounts.conf (and device-credentials.csv) from the registry,
    into --out-dir or the local cluster's directory, and SIGHUP to the cluster's running nodes."""
    from gridhub.runtime import resolve_services
    from gridhub.settings import get_settings

    settings = resolve_services(get_settings())
    partitions = check_partitions(int(args.partitions))
    cluster_dir = Path(args.nats_dir) if getattr(args, "nats_dir", None) else settings.data_dir / "nats"
    out = Path(args.out_dir) if args.out_dir else cluster_dir
    count = write_credentials(settings, partitions, out)
    reloaded = 0
    if not args.no_reload and (cluster_dir / "layout.json").exists() and out == cluster_dir:
        reloaded = NatsCluster(cluster_dir).reload()
    print(f"wrote {ACCOUNTS_FILE} and device-credentials.csv to {out}: {count} devices in account "
          f"{DEVICES_ACCOUNT}, {partitions} partitions" + (f"; {reloaded} NATS nodes reloaded" if reloaded else ""))
    if not reloaded:
        print(f"include {out / ACCOUNTS_FILE} in every node's configuration and send each nats-server SIGHUP",
              file=sys.stderr)
    return 0
