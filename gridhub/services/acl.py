"""mosquitto's ACL file format: parsing, topic filter matching, and `acl_allows()` for the embedded broker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class _AclRule:
    access: str  # read | write | readwrite | deny
    topic: str
    pattern: bool


def _parse_acl(text: str) -> tuple[dict[str | None, list[_AclRule]], list[_AclRule]]:
    """A mosquitto ACL file: per-user `topic` rules (None: before any `user` line) and `pattern` rules."""
    per_user: dict[str | None, list[_AclRule]] = {}
    patterns: list[_AclRule] = []
    user: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "user":
            user = rest
            continue
        if keyword not in ("topic", "pattern"):
            continue
        access, _, topic = rest.partition(" ")
        if access not in ("read", "write", "readwrite", "deny"):
            access, topic = "readwrite", rest
        rule = _AclRule(access, topic.strip(), keyword == "pattern")
        if rule.pattern:
            patterns.append(rule)
        else:
            per_user.setdefault(user, []).append(rule)
    return per_user, patterns


def _topic_matches(topic_filter: str, topic: str) -> bool:
    fparts = topic_filter.split("/")
    tparts = topic.split("/")
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False
    for i, part in enumerate(fparts):
        if part == "#":
            return True
        if i >= len(tparts):
            return False
        if part != "+" and part != tparts[i]:
            return False
    return len(fparts) == len(tparts)


def acl_allows(acl_text: str, username: str | None, client_id: str, topic: str, access: str) -> bool:
    """Whether a mosquitto ACL file lets `username` `access` ("read" or "write") `topic`."""
    per_user, patterns = _parse_acl(acl_text)
    rules = list(per_user.get(username, [])) + [
        _AclRule(r.access, r.topic.replace("%u", username or "").replace("%c", client_id), True)
        for r in patterns
        if username is not None or "%u" not in r.topic
    ]
    matching = [r for r in rules if _topic_matches(r.topic, topic)]
    if any(r.access == "deny" for r in matching):
        return False
    return any(access in r.access for r in matching)

