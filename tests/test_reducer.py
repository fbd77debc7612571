"""The reducer: state is a pure fold of the log, so replaying a prefix and then the rest
must give exactly the state that replaying the whole log gives."""

import json
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from troupe.models import Event, EventType, NodeStatus, TaskStatus
from troupe.reducer import reduce, snapshot_of, task_from_snapshot

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
PLAN = {"nodes": [{"id": "a", "tool": "t"}, {"id": "b", "tool": "t", "deps": ["a"]}]}


def ev(seq, type_, **payload):
    return Event(task_id="t1", seq=seq, ts=T0 + timedelta(seconds=seq), type=type_, payload=payload)


def happy_log():
    kinds = [
        (EventType.submitted, {"goal": "g", "tenant": "acme", "priority": "high"}),
        (EventType.status, {"status": "planning"}),
        (EventType.plan_set, {"plan": PLAN, "acceptance_tests": [{"id": "all", "check_type": "all_nodes_done"}]}),
        (EventType.status, {"status": "executing"}),
        (EventType.node_started, {"node_id": "a", "attempt": 1}),
        (EventType.tool_called, {"node_id": "a", "tool": "t", "args": {}, "attempt": 1}),
        (EventType.tool_result, {"node_id": "a", "attempt": 1, "output": {"x": 1}}),
        (EventType.node_done, {"node_id": "a"}),
        (EventType.node_started, {"node_id": "b", "attempt": 1}),
        (EventType.tool_called, {"node_id": "b", "tool": "t", "args": {}, "attempt": 1}),
        (EventType.tool_result, {"node_id": "b", "attempt": 1, "error": "boom"}),
        (EventType.node_retry, {"node_id": "b", "attempt": 1, "error": "boom", "delay_s": 0.1}),
        (EventType.node_started, {"node_id": "b", "attempt": 2}),
        (EventType.tool_called, {"node_id": "b", "tool": "t", "args": {}, "attempt": 2}),
        (EventType.tool_result, {"node_id": "b", "attempt": 2, "output": "ok"}),
        (EventType.node_done, {"node_id": "b"}),
        (EventType.status, {"status": "verifying"}),
        (EventType.verdicts, {"passed": True, "verdicts": [{"test_id": "all", "passed": True, "reason": "ok"}]}),
        (EventType.status, {"status": "publishing"}),
        (EventType.artifact, {"artifact": {"name": "r.md", "media_type": "text/markdown", "size": 3,
                                           "sha256": "0" * 64, "uri": "/x"}}),
        (EventType.status, {"status": "done"}),
        (EventType.message, {"text": "thanks"}),
    ]
    return [ev(i + 1, t, **p) for i, (t, p) in enumerate(kinds)]


def test_happy_path_state():
    task = reduce(happy_log())
    assert task.status == TaskStatus.done and task.tenant == "acme" and task.priority.value == "high"
    assert task.nodes["a"].output == {"x": 1} and task.nodes["b"].output == "ok"
    assert task.nodes["b"].attempts == 2 and task.nodes["b"].tool_calls == 2
    assert all(n.status == NodeStatus.done and not n.outcome_unknown for n in task.nodes.values())
    assert [a.name for a in task.artifacts] == ["r.md"] and task.messages == ["thanks"]
    assert task.last_seq == 22


def test_in_flight_call_is_outcome_unknown():
    log = happy_log()[:6]
    node = reduce(log).nodes["a"]
    assert node.status == NodeStatus.running and node.outcome_unknown


def test_terminal_status_is_final_and_cancel_after_end_ignored():
    log = happy_log()
    log.append(ev(23, EventType.status, status="failed"))
    log.append(ev(24, EventType.cancel_requested))
    task = reduce(log)
    assert task.status == TaskStatus.done and not task.cancel_requested


def test_reply_only_while_waiting():
    log = happy_log()[:4] + [ev(5, EventType.status, status="waiting_for_input", reason="?"),
                             ev(6, EventType.message, text="retry")]
    assert reduce(log).reply == "retry"
    assert reduce(log + [ev(7, EventType.status, status="executing")]).reply is None


def test_events_before_submission_and_unknown_nodes_change_nothing():
    assert reduce([ev(1, EventType.status, status="done")]) is None
    log = happy_log()[:3] + [ev(4, EventType.node_done, node_id="ghost")]
    assert "ghost" not in reduce(log).nodes


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_replaying_prefix_then_rest_equals_whole(data):
    base = happy_log()
    # Any order of events (even nonsensical ones) must fold the same way both ways.
    log = data.draw(st.permutations(base[1:]))
    log = [base[0], *log][: data.draw(st.integers(1, len(base)))]
    log = [e.model_copy(update={"seq": i + 1}) for i, e in enumerate(log)]
    cut = data.draw(st.integers(0, len(log)))
    whole = reduce(log)
    prefix_state = reduce(log[:cut])
    resumed = reduce(log[cut:], initial=prefix_state) if prefix_state else reduce(log)
    assert resumed == whole
    if prefix_state is not None:
        assert reduce(log[:cut]) == prefix_state  # the initial state was not mutated


def test_a_redefined_node_resets_its_transitive_dependents_only():
    plan = {"nodes": [{"id": "a", "tool": "t"}, {"id": "b", "tool": "t", "deps": ["a"]},
                      {"id": "c", "tool": "t", "deps": ["b"]}, {"id": "d", "tool": "t"}]}
    log = [ev(1, EventType.submitted, goal="g"), ev(2, EventType.plan_set, plan=plan),
           *[ev(3 + i, EventType.node_done, node_id=n, output=n.upper()) for i, n in enumerate("abcd")],
           ev(7, EventType.plan_corrected, round=1, nodes=[{"id": "a", "tool": "t", "args": {"fixed": True}}])]
    task = reduce(log)
    assert {n: (s.status, s.round) for n, s in task.nodes.items()} == {
        "a": (NodeStatus.pending, 1), "b": (NodeStatus.pending, 1), "c": (NodeStatus.pending, 1),
        "d": (NodeStatus.done, 0)}


def test_an_event_seen_twice_is_folded_once():
    log = [ev(1, EventType.submitted, goal="g"), ev(2, EventType.llm_called, tokens_in=5)]
    task = reduce(log)
    reduce([log[1]], initial=task)
    again = reduce([log[1], ev(3, EventType.llm_called, tokens_in=1)], initial=task)
    assert again.usage.llm_calls == 2 and again.usage.tokens_in == 6


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_snapshot_then_the_rest_equals_the_whole_log(data):
    # What EventStore.load_task does: the state stored as JSON at a cut, read back, then the tail.
    base = happy_log()
    log = [base[0], *data.draw(st.permutations(base[1:]))]
    log = [e.model_copy(update={"seq": i + 1}) for i, e in enumerate(log)]
    cut = data.draw(st.integers(1, len(log)))
    stored = json.loads(json.dumps(snapshot_of(reduce(log[:cut]))))
    assert reduce(log[cut:], initial=task_from_snapshot(stored)) == reduce(log)


def test_a_snapshot_of_another_reducer_version_is_ignored():
    stored = snapshot_of(reduce(happy_log()))
    assert task_from_snapshot({**stored, "v": stored["v"] + 1}) is None
    assert task_from_snapshot(None) is None and task_from_snapshot({"v": stored["v"], "task": {"id": 3}}) is None
