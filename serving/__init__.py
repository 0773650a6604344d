"""What the inference service (``service.py``, the API) stands on, one job a module, in the order a request meets them.

    hardening   puts the protections below on the service class in one call (docs/serving.md#hardening)
    openapi     /docs.json made to say what the endpoints accept and answer (408, 413, 415, 429, /metadata)
    errors      415 for bodies that are not JSON; a client's 4xx logged as one INFO line, without its input
    body_limit  an ASGI middleware: the body is read within a size (413) and a time (408) limit before anything runs
    concurrency at most N requests with a complete body at once (429)
    timeouts    a header timeout on uvicorn's connections (BentoML has no option for it)
    schema      the request bodies (pydantic): ids, answers, timestamps, limits, checked before anything runs
    batcher     merges the jobs of concurrent requests into one model call
    frames      a batch of jobs -> the canonical frames the predictor scores (``dkt.predictor``)
    settings    the service's environment variables

The Bento (``bentofile.yaml``) and the inference image (``config/swarm.json``) carry this package beside ``service.py``.
"""
