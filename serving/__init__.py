"""What the inference service (``service.py``, the API) stands on, one job a module, in the order a request meets them.

    body_limit  an ASGI middleware: bodies over the limit get 413 before they are read into memory
    schema      the request bodies (pydantic): ids, answers, timestamps, limits, checked before anything runs
    batcher     merges the jobs of concurrent requests into one model call
    frames      a batch of jobs -> the canonical frames the predictor scores (``dkt.predictor``)
    settings    the service's environment variables

The Bento (``bentofile.yaml``) and the inference image (``config/swarm.json``) carry this package beside ``service.py``.
"""
