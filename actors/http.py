"""The Ray Serve application: the FastAPI app of serve/app.py, built on its replica."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from actors.placement import gateway_node_id, replica_on_node
from petray.settings import Settings

APP_NAME = "petray"
DEPLOYMENT_NAME = "petray_http"


@serve.deployment(name=DEPLOYMENT_NAME, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class PetrayHttp:
    """The HTTP ingress; the app is built on the replica, where its engine and handles live."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __serve_build_asgi_app__(self) -> FastAPI:
        from actors.control import RayPipelineControl
        from actors.ray_loopback import keep_serve_replica_on_loopback
        from petray.db.engine import make_engine, make_sessionmaker
        from petray.logfile import install_log_file
        from serve.app import create_app

        install_log_file(self._settings.home)  # the console's log page (issue 11)
        # Before Ray starts this replica's own gRPC server (issue 9: loopback only).
        keep_serve_replica_on_loopback()
        sessions = make_sessionmaker(make_engine(self._settings.resolved_database_url))
        pipeline = RayPipelineControl(sessions, filter_workers=self._settings.filter_workers)
        return create_app(self._settings, session_factory=sessions, pipeline=pipeline)


def http_options(settings: Settings) -> dict[str, Any]:
    """Ray Serve's proxy options: HTTPS when a certificate is configured (issue 10)."""
    options: dict[str, Any] = {"host": settings.http_host, "port": settings.http_port}
    if settings.http_tls_cert is not None and settings.http_tls_key is not None:
        options["ssl_certfile"] = str(settings.http_tls_cert)
        options["ssl_keyfile"] = str(settings.http_tls_key)
    return options


def start_http(settings: Settings) -> Any:
    # Serve's controller, proxy and replica log through Serve's own configuration.
    logging_config = {"encoding": "JSON"} if settings.log_format == "json" else None
    # The proxy and the replica stay on the gateway's node (issue 12): the console, the API
    # and the service's callback keep one address however many nodes the cluster has.
    serve.start(
        proxy_location="HeadOnly",
        http_options=http_options(settings),
        logging_config=logging_config,
    )
    pinned = {"num_cpus": 0, **replica_on_node(gateway_node_id())}
    application = PetrayHttp.options(ray_actor_options=pinned).bind(settings)  # type: ignore[attr-defined]
    return serve.run(application, name=APP_NAME, route_prefix="/", logging_config=logging_config)
