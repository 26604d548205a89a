"""The task state machine's rules (alerts/tasks.py against CONTRACT §4.1), without a database: which role may take
which action in which state, and what the person is told — 404 outside their scope, else 403 for the wrong role
before 409 for the wrong state, each message saying who may or which state is needed. A stand-in connection
answers the one query the checks make (the task, locked) and stops the action at the first write."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gridhub.alerts.rules import load_rules
from gridhub.alerts.tasks import (
    ACTIONS,
    RESOLUTIONS,
    ActionForbidden,
    BadActionBody,
    IllegalTransition,
    TaskNotFound,
    apply_action,
)
from gridhub.auth import Principal

RULES = load_rules()
NOW = datetime(2026, 9, 21, 8, 0, tzinfo=UTC)
STATES = ("open", "accepted", "on_site", "resolved", "closed")

# CONTRACT §4.1, written out again: action -> (from states, who)
CONTRACT: dict[str, tuple[set[str], set[str]]] = {
    "accept": ({"open"}, {"assignee", "grid_head", "street_officer"}),
    "arrive": ({"accepted"}, {"assignee"}),
    "resolve": ({"accepted", "on_site"}, {"assignee"}),
    "close": ({"resolved"}, {"grid_head", "street_officer", "bureau"}),
    "reject": ({"resolved"}, {"grid_head", "street_officer"}),
    "return": ({"open", "accepted"}, {"assignee"}),
    "reassign": ({"open", "accepted", "on_site"}, {"grid_head", "street_officer", "admin"}),
    "extend": ({"open", "accepted", "on_site"}, {"grid_head", "street_officer"}),
    "comment": (set(STATES), {"anyone"}),
}
BODIES: dict[str, dict[str, Any]] = {
    "resolve": {"resolution": "fixed"}, "reject": {"note": "redo"}, "return": {"note": "not mine"},
    "reassign": {"worker_id": "w-002"}, "extend": {"until": (NOW + timedelta(days=1)).isoformat()},
    "comment": {"note": "on my way"},
}

GRID = "g-001"
WORKER = Principal("w-001", "Wu", "grid_worker", grids=frozenset({GRID}))  # the task's assignee
PEOPLE = {
    "assignee": WORKER,
    "other_worker": Principal("w-002", "Wang", "grid_worker", grids=frozenset({GRID})),
    "grid_head": Principal("h-001", "He", "grid_head", grids=frozenset({GRID})),
    "street_officer": Principal("s-001", "Shi", "street_officer", street_id="st-1", grids=frozenset({GRID})),
    "bureau": Principal("b-001", "Bai", "bureau"),
    "admin": Principal("a-001", "An", "admin"),
}


class Passed(Exception):
    """The action got past every check and went on to its first write."""


class StandIn:
    """Answers `SELECT <columns> FROM tasks WHERE id = %s FOR UPDATE` with one task; any other statement means
    the checks were passed. Also usable where a unit of work is expected (its `conn` is itself)."""

    def __init__(self, task: dict[str, Any] | None) -> None:
        self.task = task
        self.conn = self
        self.description: list[Any] = []
        self._row: tuple[Any, ...] | None = None

    def execute(self, sql: str, params: Any = None) -> StandIn:
        m = re.fullmatch(r"\s*SELECT (.+) FROM tasks WHERE id = %s FOR UPDATE\s*", sql, re.S)
        if m is None:
            raise Passed(sql)
        cols = [c.strip() for c in m.group(1).split(",")]
        self.description = [type("Column", (), {"name": c}) for c in cols]
        self._row = None if self.task is None else tuple(self.task[c] for c in cols)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._row


def task(state: str, assignee: str | None = "w-001", grid: str = GRID) -> dict[str, Any]:
    return {"id": "tk-1", "type": "fire_alarm", "severity": "critical", "state": state, "grid_id": grid,
            "assignee": assignee, "escalation_level": 0, "accept_due": NOW + timedelta(minutes=2),
            "resolve_due": NOW + timedelta(minutes=30)}


def attempt(action: str, who: Principal, t: dict[str, Any] | None, body: dict[str, Any] | None = None) -> str:
    """'ok' when the action passes the checks, else the exception's name."""
    try:
        apply_action(StandIn(t), "tk-1", action, who, BODIES.get(action, {}) if body is None else body,  # type: ignore[arg-type]
                     now=NOW, rules=RULES)
    except Passed:
        return "ok"
    except (TaskNotFound, ActionForbidden, IllegalTransition, BadActionBody) as exc:
        return type(exc).__name__
    raise AssertionError("apply_action returned without writing anything")


def expected(action: str, person: str, state: str) -> str:
    states, who = CONTRACT[action]
    role = PEOPLE[person].role
    if not ({"anyone", person, role} & who):
        return "ActionForbidden"
    if state not in states:
        return "IllegalTransition"
    return "ok"


def test_the_actions_are_the_contracts() -> None:
    assert set(ACTIONS) == set(CONTRACT)
    for action, rule in ACTIONS.items():
        assert set(rule.from_states) == CONTRACT[action][0], action
    assert RESOLUTIONS == ("fixed", "false_alarm", "duplicate", "referred_119")


@pytest.mark.parametrize(("action", "person"), list(itertools.product(CONTRACT, PEOPLE)))
def test_who_may_do_what_in_which_state(action: str, person: str) -> None:
    got = {state: attempt(action, PEOPLE[person], task(state)) for state in STATES}
    assert got == {state: expected(action, person, state) for state in STATES}


def test_a_grid_worker_who_is_not_the_assignee_may_only_comment() -> None:
    allowed = {a for a in CONTRACT if any(attempt(a, PEOPLE["other_worker"], task(s)) == "ok" for s in STATES)}
    assert allowed == {"comment"}


def test_an_unassigned_task_can_be_accepted_by_a_supervisor_only() -> None:
    t = task("open", assignee=None)
    assert attempt("accept", PEOPLE["grid_head"], t) == "ok"
    assert attempt("accept", PEOPLE["assignee"], t) == "ActionForbidden"
    assert attempt("arrive", PEOPLE["assignee"], task("accepted", assignee=None)) == "ActionForbidden"


def test_outside_the_scope_the_task_does_not_exist() -> None:
    elsewhere = task("open", assignee="w-009", grid="g-999")
    for person in ("assignee", "other_worker", "grid_head", "street_officer"):
        assert attempt("comment", PEOPLE[person], elsewhere) == "TaskNotFound"
    assert attempt("comment", PEOPLE["bureau"], elsewhere) == "ok"  # the bureau and admins see every grid
    assert attempt("comment", PEOPLE["admin"], elsewhere) == "ok"
    assert attempt("accept", PEOPLE["bureau"], elsewhere) == "ActionForbidden"
    assert attempt("comment", PEOPLE["grid_head"], None) == "TaskNotFound"  # no such task at all


def test_the_assignee_sees_their_task_even_outside_their_grids() -> None:
    assert attempt("accept", WORKER, task("open", grid="g-999")) == "ok"


def test_forbidden_says_who_may_and_illegal_says_which_state() -> None:
    with pytest.raises(ActionForbidden, match=r"close on task tk-1 is for a grid head or street officer in scope, "
                                              r"or the bureau; you are grid_worker w-001"):
        apply_action(StandIn(task("closed")), "tk-1", "close", WORKER, now=NOW, rules=RULES)  # type: ignore[arg-type]
    with pytest.raises(IllegalTransition, match=r"task tk-1 is closed: resolve needs it accepted or on_site"):
        apply_action(StandIn(task("closed")), "tk-1", "resolve", WORKER, {"resolution": "fixed"}, now=NOW,  # type: ignore[arg-type]
                     rules=RULES)


def test_bad_bodies_are_refused_before_anything_is_written() -> None:
    head = PEOPLE["grid_head"]
    assert attempt("resolve", WORKER, task("accepted"), {}) == "BadActionBody"
    assert attempt("resolve", WORKER, task("accepted"), {"resolution": "solved"}) == "BadActionBody"
    for res in RESOLUTIONS:
        assert attempt("resolve", WORKER, task("accepted"), {"resolution": res}) == "ok"
    assert attempt("reject", head, task("resolved"), {"note": "  "}) == "BadActionBody"  # a reason is required
    assert attempt("return", WORKER, task("open"), {}) == "BadActionBody"
    assert attempt("comment", WORKER, task("open"), {"note": 3}) == "BadActionBody"
    assert attempt("reassign", head, task("open"), {}) == "BadActionBody"
    assert attempt("extend", head, task("open"), {}) == "BadActionBody"
    assert attempt("extend", head, task("open"), {"until": "tomorrow"}) == "BadActionBody"
    assert attempt("extend", head, task("open"), {"until": (NOW - timedelta(hours=1)).isoformat()}) == "BadActionBody"


def test_an_unknown_action_or_a_body_that_is_no_object_is_refused_first() -> None:
    with pytest.raises(BadActionBody, match="unknown task action 'dance': one of accept, arrive"):
        apply_action(StandIn(None), "tk-1", "dance", WORKER, now=NOW, rules=RULES)  # type: ignore[arg-type]
    with pytest.raises(BadActionBody, match="must be a JSON object"):
        apply_action(StandIn(None), "tk-1", "comment", WORKER, ["note"], now=NOW, rules=RULES)  # type: ignore[arg-type]
