"""Pipelines declared in the config: stage entries, their parameters, shape rules, several
services, and the errors a user sees for each mistake (asserted word for word)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from jizhi.config import ConfigError, load_settings, pipeline_of
from jizhi.worker import parse_stages
from stages import StageHarness
from stages.context import StageContext
from stages.errors import PipelineConfigError
from stages.metrics import REQUESTS
from stages.registry import DEFAULT_STAGES, build_pipeline, resolve
from tests.unit.test_examples import scored_event

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import paths such as examples.diversity:CapPerCategory resolve from the working dir."""
    monkeypatch.chdir(ROOT)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jizhi.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value).removeprefix(f"{path}: ")


@pytest.fixture
def tables(tmp_path: Path) -> tuple[Path, Path]:
    block = tmp_path / "block.csv"
    block.write_text("item_id\n3\n# a comment\n\n5\n")
    cats = tmp_path / "cats.csv"
    cats.write_text("item_id,category\n1,7\n2,7\n3,7\n4,8\n")
    return block, cats


# -- the default, and a custom stage by import path ---------------------------------------------


def test_the_default_pipeline_is_the_five_builtin_stages() -> None:
    p = pipeline_of(load_settings(None).service())
    assert p.names == DEFAULT_STAGES == ("ingest", "features", "embed", "score", "rank")
    assert p.edge == "ingest"
    assert [p.after(n) for n in p.names] == ["features", "embed", "score", "rank", None]


def test_a_custom_stage_with_parameters_is_declared_by_config(
    tmp_path: Path, tables: tuple[Path, Path]
) -> None:
    _, cats = tables
    entry = (
        'use = "examples.diversity:CapPerCategory", '
        f'params = {{ categories = "{cats}", max_per_category = 1 }}'
    )
    path = write(
        tmp_path,
        f"""
        [pipeline]
        name = "home"
        stages = ["ingest", "features", "embed", "score", {{ {entry} }}, "rank"]
        """,
    )
    p = pipeline_of(load_settings(path).service())
    assert p.names == ("ingest", "features", "embed", "score", "diversity", "rank")
    assert p.after("score") == "diversity" and p.after("diversity") == "rank"
    stage = p.spec("diversity").build(StageContext(pipeline="home"))
    assert stage.name == "diversity"
    assert getattr(stage, "cap", None) == 1


def test_an_entry_may_rename_a_stage_so_a_kind_runs_twice(tables: tuple[Path, Path]) -> None:
    block, _ = tables
    p = build_pipeline(
        "x",
        [
            "ingest",
            {"use": "examples.blocklist:Blocklist", "params": {"path": str(block)}},
            {
                "use": "examples.blocklist:Blocklist",
                "name": "blocklist2",
                "params": {"path": str(block)},
            },
            "rank",
        ],
    )
    assert p.names == ("ingest", "blocklist", "blocklist2", "rank")
    assert p.spec("blocklist2").build(StageContext(pipeline="x")).name == "blocklist2"


# -- mistakes, each with the message the user reads ---------------------------------------------


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            '["ingest", "scorer", "rank"]',
            "pipeline.stages[1]: unknown stage 'scorer': use a built-in (ingest, features, "
            "embed, score, rank) or package.module:Class",
        ),
        ("[]", "pipeline.stages: a pipeline needs at least one stage"),
        (
            '["features", "ingest"]',
            "pipeline.stages[0]: the first stage must read the clients' request bytes (like "
            "ingest); 'features' reads events",
        ),
        (
            '["ingest", "rank", "rank"]',
            "pipeline.stages[2]: stage name 'rank' is used twice; give one of them a name of "
            "its own",
        ),
        (
            '["ingest", { use = "rank", name = "responses" }]',
            "pipeline.stages[1]: 'responses' is a topic of the pipeline, not a stage name; give "
            "the stage another name",
        ),
        (
            '["ingest", "no_such_module_xyz:Stage"]',
            "pipeline.stages[1]: cannot import module 'no_such_module_xyz': No module named "
            "'no_such_module_xyz'",
        ),
        (
            '["ingest", "examples.diversity:Nope"]',
            "pipeline.stages[1]: module 'examples.diversity' has no attribute 'Nope'",
        ),
        (
            '["ingest", "examples.diversity:read_categories"]',
            "pipeline.stages[1]: examples.diversity:read_categories is not a stage class (it "
            "needs a process method)",
        ),
        (
            '["ingest", { use = "examples.diversity:CapPerCategory", params = { categories = '
            '"c.csv", max_per_category = "two" } }]',
            "pipeline.stages[1].params.max_per_category: Expected `int`, got `str`",
        ),
        (
            '["ingest", { use = "examples.diversity:CapPerCategory", params = { categories = '
            '"c.csv", max_per_categry = 2 } }]',
            "pipeline.stages[1].params.max_per_categry: unknown key",
        ),
        (
            '["ingest", { use = "examples.diversity:CapPerCategory" }]',
            "pipeline.stages[1].params: Object missing required field `categories`",
        ),
        (
            '["ingest", { use = "rank", params = { k = 3 } }]',
            "pipeline.stages[1].params.k: unknown key",
        ),
        (
            '["ingest", { name = "x" }]',
            "pipeline.stages[1]: Object missing required field `use`",
        ),
    ],
)
def test_config_mistakes_name_the_key(tmp_path: Path, stages: str, message: str) -> None:
    assert error_of(write(tmp_path, f"[pipeline]\nstages = {stages}\n")) == message


def test_a_bad_builtin_parameter_names_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[pipeline]\nstages = [{use = "ingest", params = {dedupe_window = -1}}]')
    assert error_of(path) == "pipeline.stages[0].params.dedupe_window: Expected `int` >= 0"


def test_a_stage_after_the_edge_cannot_read_requests() -> None:
    with pytest.raises(PipelineConfigError, match=r"\['edge2'\] read raw requests"):
        build_pipeline("x", ["ingest", {"use": "ingest", "name": "edge2"}])


# -- several services --------------------------------------------------------------------------


SERVICES = """
[pipeline]
batch_size = 32
default_timeout_ms = 150

[[pipelines]]
name = "home"
priority = 10
model = "home-model.npz"

[[pipelines]]
name = "promo"
default_timeout_ms = 80
stages = ["ingest", "features", "embed", "score", "rank"]

[model]
path = "shared-model.npz"
"""


def test_several_services_inherit_the_pipeline_table(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, SERVICES))
    home, promo = s.services
    assert (home.name, home.priority, home.batch_size, home.default_timeout_ms) == (
        "home",
        10,
        32,
        150.0,
    )
    assert (promo.name, promo.priority, promo.batch_size, promo.default_timeout_ms) == (
        "promo",
        0,
        32,
        80.0,
    )
    assert s.model_path(home) == "home-model.npz"
    assert s.model_path(promo) == "shared-model.npz"
    assert s.service("promo") is promo
    assert s.service() == home


def test_unknown_service_and_duplicate_names_are_refused(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, SERVICES))
    with pytest.raises(
        ConfigError, match=r"no pipeline named 'shop'; declared: \['home', 'promo'\]"
    ):
        s.service("shop")
    twice = SERVICES.replace('name = "promo"', 'name = "home"')
    assert error_of(write(tmp_path, twice)) == "pipelines: the name(s) ['home'] are declared twice"


def test_a_mistake_in_a_service_names_its_index(tmp_path: Path) -> None:
    text = SERVICES.replace('"score", "rank"]', '"score", "rnak"]')
    assert error_of(write(tmp_path, text)).startswith(
        "pipelines[1].stages[4]: unknown stage 'rnak'"
    )


# -- which stages a worker runs ----------------------------------------------------------------


def test_worker_stages_select_runs_of_the_declared_order(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, SERVICES))
    assert parse_stages(s, ["ingest,features", "promo:all"]) == {
        "home": ["ingest", "features"],
        "promo": list(DEFAULT_STAGES),
    }
    assert pipeline_of(s.service("home")).chains(["ingest", "embed", "score"]) == [
        ["ingest"],
        ["embed", "score"],
    ]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ([], "--stages: give at least one, e.g. --stages ingest,features"),
        (
            [","],
            "--stages ',': pipeline 'home': no stages given; its stages: ['ingest', "
            "'features', 'embed', 'score', 'rank']",
        ),
        (
            ["ingest,rnak"],
            "--stages 'ingest,rnak': pipeline 'home': unknown stage(s) ['rnak']; its stages: "
            "['ingest', 'features', 'embed', 'score', 'rank']",
        ),
        (
            ["score,embed"],
            "--stages 'score,embed': pipeline 'home': ['score', 'embed'] are out of order; the "
            "pipeline runs ['ingest', 'features', 'embed', 'score', 'rank']",
        ),
        (
            ["embed,embed"],
            "--stages 'embed,embed': pipeline 'home': ['embed', 'embed'] repeats a stage",
        ),
        (["shop:all"], "no pipeline named 'shop'; declared: ['home', 'promo']"),
        (["home:rank", "home:ingest"], "--stages: pipeline 'home' given twice"),
    ],
)
def test_worker_stage_mistakes_are_refused_with_the_reason(
    tmp_path: Path, given: list[str], message: str
) -> None:
    s = load_settings(write(tmp_path, SERVICES))
    with pytest.raises(ConfigError) as info:
        parse_stages(s, given)
    assert str(info.value) == message


# -- the harness runs a declared stage as deployed ----------------------------------------------


def test_the_harness_runs_a_resolved_custom_stage(tables: tuple[Path, Path]) -> None:
    _, cats = tables
    spec = resolve(
        {"use": "examples.diversity:CapPerCategory", "params": {"categories": str(cats)}}
    )
    stage = spec.build(StageContext(pipeline="x"))
    e = scored_event([1, 2, 3, 4, 9], [0.9, 0.8, 0.7, 0.6, 0.5])
    out = StageHarness(stage).run([e]).forwarded[0]
    assert out.scores is not None
    # Category 7 holds 1, 2, 3: the third best of it (3) falls below every capped-in item.
    order = np.argsort(-out.scores, kind="stable")
    assert e.candidates[order].tolist() == [1, 2, 4, 9, 3]


def test_the_edge_is_a_property_of_the_stage_not_its_name() -> None:
    """A renamed ingest is still the edge: it reads raw bytes, and its requests are counted in
    ``jizhi_requests_total`` (what the overview's Requests/s panel reads), whatever it is called."""
    p = build_pipeline("edge-test", [{"use": "ingest", "name": "gate"}, "rank"])
    assert p.edge == "gate"
    gate = p.spec("gate").build(StageContext(pipeline="edge-test"))
    before = REQUESTS.labels("edge-test")._value.get()
    raw = b'{"request_id": "a", "user_id": 1, "candidates": [1, 2]}'
    out = StageHarness(gate, pipeline="edge-test").run([raw, b"not json"])
    assert [e.request_id for e in out.forwarded] == ["a"] and len(out.dead) == 1
    assert REQUESTS.labels("edge-test")._value.get() - before == 2
