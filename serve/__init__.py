"""rowrnn serve: the model as an Open Inference Protocol (KServe v2) service, REST and gRPC.

    from serve import ServeSettings, create_app
    app = create_app("model.onnx", ServeSettings(max_batch=64))   # an ASGI app, ready to serve
    app = create_app(settings=ServeSettings(model_repository="models/", poll_s=5))  # a Triton-layout repository

Needs the `[serve]` extra (starlette, uvicorn, prometheus-client, orjson, grpcio, tritonclient[grpc]).
Runs on the light runtime: it never imports TensorFlow, tf2onnx, rowrnn_keras or export.
"""

from serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    # The web stack is imported on first use, so `serve.settings` (the CLI's defaults) works on
    # the plain install, where `rowrnn serve` then names the extra to install.
    if name == "create_app":
        from serve.app import create_app

        return create_app
    raise AttributeError(f"module 'serve' has no attribute {name!r}")
