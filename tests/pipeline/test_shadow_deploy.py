"""The deploy steps carry the store's shadow pointer (fast: a local store, no server). The same steps serving a
real shadow with `bentoml serve`: tests/pipeline/test_shadow_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import deploy
from pipeline.deploy_local import DeployError
from tests.pipeline.test_deploy import local_store, tiny_version


def test_pull_model_pulls_the_shadow_only_while_the_pointer_names_another_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = local_store(tmp_path, monkeypatch)
    for version in ("v1", "v2"):
        tiny_version(store, tmp_path, version)
    store.set_pointer("models", "production", "v1")

    def pulled(run: str) -> dict[str, str]:
        work = tmp_path / "work" / run
        doc = deploy.pull_model(work, store)
        assert json.loads((work / "pull.json").read_text()) == doc
        assert (work / "shadow").is_dir() == ("shadow_version" in doc)
        return doc

    assert pulled("none") == {"model_version": "v1"}
    store.set_pointer("models", "shadow", "v2")
    assert pulled("set") == {"model_version": "v1", "shadow_version": "v2"}
    assert (tmp_path / "work" / "set" / "shadow" / "weights.bin").read_bytes() == b"v2"
    store.set_pointer("models", "shadow", "v1")  # the shadow is production: nothing to compare, none served
    assert pulled("same") == {"model_version": "v1"}
    assert "the shadow pointer names production (v1): no shadow to serve" in capsys.readouterr().err
    store.clear_pointer("models", "shadow")
    assert pulled("cleared") == {"model_version": "v1"} and deploy.shadow_version(store) is None


def test_packer_output_with_and_without_a_bento() -> None:
    out = "building...\nmodel: dkt-model:v2\nbento: dkt-service:v2\n"
    assert deploy.parse_pack_output(out) == {"model_tag": "dkt-model:v2", "bento_tag": "dkt-service:v2"}
    assert deploy.parse_pack_output("model: dkt-model:v3\n", bento=False) == {"model_tag": "dkt-model:v3"}
    with pytest.raises(DeployError, match="does not end with 'model: TAG' line: \\['error'\\]"):
        deploy.parse_pack_output("model: dkt-model:v3\nerror\n", bento=False)
    with pytest.raises(DeployError, match="does not end with 'model: TAG' and 'bento: TAG' lines"):
        deploy.parse_pack_output("model: dkt-model:v3\n")
