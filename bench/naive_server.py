"""The serving benchmark's baseline: a minimal Flask app running the same model per request, no batching.

DKT_BUNDLE=DIR gunicorn -w 1 --threads 8 'bench.naive_server:create_app()'
"""

from __future__ import annotations

import pandas as pd
import torch
from flask import Flask, jsonify, request

from dkt.data.schema import validate
from dkt.predictor import load_predictor
from dkt.settings import DevSettings, ServiceSettings, load_or_exit, stop


def create_app() -> Flask:
    # Same torch threading as the service, so the comparison measures batching, not thread settings.
    torch.set_num_threads(max(1, load_or_exit(ServiceSettings).torch_threads))
    bundle = load_or_exit(DevSettings).bundle
    if bundle is None:
        stop("DKT_BUNDLE: required (the model bundle this server runs)")
    predictor = load_predictor(bundle)
    app = Flask(__name__)

    @app.post("/predict")
    def predict():  # type: ignore[no-untyped-def]
        body = request.get_json()
        history = validate(pd.DataFrame(body["history"]).assign(userID="u"), "history", row_offset=0)
        cands = pd.DataFrame(body["candidates"])
        at = pd.Timestamp(body["at"]) if body.get("at") else None
        prob = predictor.predict_candidates(history.sort_values("Timestamp", kind="stable"), cands, at)
        return jsonify({"model_version": predictor.model_version, "probabilities": prob.tolist()})

    return app
