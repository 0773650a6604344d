"""serving/swap.py without a server: what the served-model file names is swapped in, what does not load is refused
and counted, a removed file goes back on the start model. (Through a live `bentoml serve` and the deploy steps, with
requests in flight: tests/pipeline/test_deploy.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dkt.bundle import write_json


def test_the_named_bundle_is_swapped_in_a_bad_one_refused_and_a_removed_file_goes_back(
    lstm_bundle: Path, tmp_path: Path
) -> None:
    from serving.swap import Swapper, served_from

    v2 = tmp_path / "v2"
    shutil.copytree(lstm_bundle, v2)
    meta = json.loads((v2 / "bundle.json").read_text())
    (v2 / "bundle.json").write_text(json.dumps({**meta, "model_version": "v2"}))
    file, refused = tmp_path / "served_model.json", []
    swapper = Swapper(file, lambda: refused.append(1)).begin(lambda: served_from(lstm_bundle, "dkt-model:t", None))
    assert (swapper.served.tag, swapper.check()) == ("dkt-model:t", False)  # no file: the start model

    before = swapper.served  # what a request in flight holds
    write_json(file, {"bundle": str(v2), "model_version": "v2", "shadow": None})
    assert swapper.check() and swapper.served.predictor.model_version == "v2"
    assert swapper.served.tag == f"bundle:{v2}" and swapper.served.states is not before.states  # a fresh cache
    assert before.predictor.model_version == "test-v1" and swapper.swaps == 1
    assert not swapper.check()  # unchanged file: nothing loaded again

    write_json(file, {"bundle": str(v2), "model_version": "v3", "shadow": None})  # names another version
    assert not swapper.check() and swapper.served.predictor.model_version == "v2" and refused == [1]
    assert swapper.failed is not None and "holds model_version v2, not v3" in swapper.failed["error"]
    assert swapper.failed["model_version"] == "v3"
    file.write_text("{")  # half a document (a writer that did not rename)
    assert not swapper.check() and refused == [1, 1] and "cannot read" in swapper.describe()["failed"]["error"]

    shadow = {"bundle": str(lstm_bundle), "model_version": "test-v1"}  # the shadow goes with the model
    write_json(file, {"bundle": str(v2), "model_version": "v2", "shadow": shadow})
    assert swapper.check() and swapper.failed is None and swapper.served.shadow is not None
    assert swapper.served.shadow.describe()["model_tag"] == f"bundle:{lstm_bundle}"

    file.unlink()
    assert swapper.check() and swapper.served.tag == "dkt-model:t" and swapper.served.shadow is None
