"""The fake endpoint's extraction answers: deterministic labels, merges and maps the extraction tests rely on."""

from typing import Any

import orjson

from tests.fake_llm import EXTRACT_GARBAGE, FakeConfig, answer, extraction_label, merge_labels, pick_skill


def ask(task: str, payload: dict[str, Any], seed: int = 0, **config: Any) -> str:
    content = f"Do the task.\n\n<input>\n{orjson.dumps(payload).decode()}\n</input>"
    messages = [{"role": "user", "content": content}]
    request: dict[str, Any] = {
        "messages": messages,
        "seed": seed,
        "response_format": {"type": "json_schema", "json_schema": {"name": f"extract_{task}", "schema": {}}},
    }
    return answer(request, messages, FakeConfig(**config))[0]


def test_labels_come_from_the_row_text() -> None:
    assert extraction_label("needs solving_linear_eq_v2 badly") == "solving_linear_eq_v2"
    assert extraction_label("How Do I Reset my password?") == "how_do_i"
    rows = [{"id": 3, "text": "uses sql_joins here"}, {"id": 9, "text": "Plain words only"}]
    assert orjson.loads(ask("label", {"rows": rows})) == {
        "labels": [{"id": 3, "skill": "sql_joins"}, {"id": 9, "skill": "plain_words_only"}]
    }


def test_merge_strips_segments_until_the_groups_fit() -> None:
    labels = [f"a{i % 2}_b{i % 3}_c{i}" for i in range(12)]
    assert merge_labels(labels, 12) == {label: [label] for label in labels}
    assert sorted(merge_labels(labels, 6)) == [f"a{x}_b{y}" for x in range(2) for y in range(3)]
    assert sorted(merge_labels(labels, 3)) == ["a0", "a1"]
    folded = merge_labels(["x", "y", "z"], 2)  # nothing to strip: the surplus is folded in
    assert len(folded) == 2 and sorted(m for ms in folded.values() for m in ms) == ["x", "y", "z"]
    body = orjson.loads(
        ask("merge", {"max_skills": 1, "labels": [{"label": "p_q_1", "rows": 3}, {"label": "p_r", "rows": 1}]})
    )
    assert body["skills"] == [{"name": "p", "description": "Rows about p.", "members": ["p_q_1", "p_r"]}]


def test_map_picks_the_longest_prefix_and_can_go_off_list() -> None:
    skills = ["area", "area_topic", "other"]
    assert pick_skill("area_topic_sub", skills) == "area_topic"
    assert pick_skill("area_x", skills) == "area"
    assert pick_skill("zzz_q", skills) in skills  # no prefix: a stable pick from the list
    payload = {
        "skills": [{"name": s} for s in skills],
        "rows": [{"id": i, "label": "area_topic_x"} for i in range(200)],
    }
    on = orjson.loads(ask("map", payload))["labels"]
    assert {x["skill"] for x in on} == {"area_topic"}
    off = orjson.loads(ask("map", payload, extract_offlist_rate=0.5))["labels"]
    share = sum(x["skill"] == "area_topic_variant" for x in off) / 200
    assert 0.35 < share < 0.65
    assert ask("map", payload, seed=1, extract_offlist_rate=0.5) != ask(
        "map", payload, seed=2, extract_offlist_rate=0.5
    )


def test_garbage_is_drawn_per_request() -> None:
    outcomes = [ask("label", {"rows": []}, seed=s, extract_garbage_rate=0.5) == EXTRACT_GARBAGE for s in range(200)]
    assert 60 < sum(outcomes) < 140
    assert ask("label", {"rows": []}, extract_garbage_rate=1.0) == EXTRACT_GARBAGE


def test_model_only_answers() -> None:
    topics = orjson.loads(ask("topics", {"count": 2, "domain": "customer support", "exclude": ["x"]}))["topics"]
    assert topics == ["Customer Support Area 2", "Customer Support Area 3", "CUSTOMER SUPPORT AREA 2!"]
    skills = orjson.loads(ask("skills", {"topic": "Billing", "count": 2}))["skills"]
    assert [s["name"] for s in skills] == ["Billing", "Clear Writing", "Billing Skill 0", "Billing Skill 1"]
    kinds = orjson.loads(ask("query_types", {"count": 2}))["query_types"]
    assert [k["name"] for k in kinds] == ["Query Type 1", "Query Type 2", "query type 1"]


def test_other_schemas_are_untouched() -> None:
    messages = [{"role": "user", "content": "x"}]
    request: dict[str, Any] = {
        "messages": messages,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {"instruction": {"type": "string"}}},
            },
        },
    }
    assert set(orjson.loads(answer(request, messages, FakeConfig())[0])) == {"instruction"}
