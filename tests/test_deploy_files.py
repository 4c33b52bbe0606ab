"""The container files cannot run here (no Docker engine), so they are checked against the app:
docker-compose.yml parses, names the four services, and its ports, hosts and variables are the
ones the app, gunicorn.conf.py, the nginx config and Prometheus's scrape config really use."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

import app as chorus_app
from deploy import serve
from store.db import parse_database_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_COMPOSE = ROOT / "deploy" / "nginx.compose.conf"
PROMETHEUS_COMPOSE = ROOT / "deploy" / "prometheus.compose.yml"
#: Variables read by gunicorn.conf.py and deploy/serve.py (their docstrings' tables).
SERVER_VARIABLES = {
    "HOST",
    "PORT",
    "WEB_CONCURRENCY",
    "FORWARDED_ALLOW_IPS",
    "GUNICORN_THREADS",
    "GUNICORN_TIMEOUT",
    "GUNICORN_ACCESS_LOG",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def _rendered_env() -> dict[str, str]:
    """The settings deploy/nginx.compose.conf was generated with (its first line says them)."""
    first = NGINX_COMPOSE.read_text().splitlines()[0]
    return dict(re.findall(r"([A-Z_]+)=(\S+)", first))


def test_compose_names_app_nginx_postgres_and_prometheus(compose: dict) -> None:
    assert set(compose["services"]) == {"app", "nginx", "postgres", "prometheus"}
    assert set(compose["volumes"]) >= {"chorus-postgres", "chorus-prometheus"}


def test_app_variables_are_ones_the_app_reads(compose: dict) -> None:
    env = _env(compose["services"]["app"])
    known = set(chorus_app._ENV_KEYS) | SERVER_VARIABLES
    assert set(env) <= known, set(env) - known
    assert env["TRUSTED_PROXIES"] == "1"  # only nginx reaches it: believe its forwarded headers
    assert "SECRET_KEY:?" in env["SECRET_KEY"]  # no default key: compose refuses to start


def test_nginx_forwards_to_the_port_the_app_listens_on(compose: dict) -> None:
    app, nginx = compose["services"]["app"], compose["services"]["nginx"]
    app_port = _env(app)["PORT"]
    assert app["expose"] == [app_port]
    conf = NGINX_COMPOSE.read_text()
    assert f"server app:{app_port} fail_timeout=0;" in conf
    listen = re.search(r"listen [\d.]+:(\d+);", conf).group(1)
    assert nginx["ports"] == [f"{listen}:{listen}"]
    mounted = {v.split(":")[0] for v in nginx["volumes"]}
    assert "./deploy/nginx.compose.conf" in mounted
    assert nginx["command"][-1] == "/etc/nginx/chorus.conf"
    assert any(v.endswith(":/etc/nginx/chorus.conf:ro") for v in nginx["volumes"])


def test_the_compose_nginx_config_is_what_serve_renders_now() -> None:
    settings = _rendered_env()
    assert settings["UPSTREAM"].startswith("app:")
    rendered = serve.render(serve.FrontConfig.from_env(settings))
    committed = "\n".join(NGINX_COMPOSE.read_text().splitlines()[2:]) + "\n"
    assert committed == rendered, "regenerate deploy/nginx.compose.conf (its first lines say how)"
    limit = chorus_app.FORM_OVERHEAD_BYTES + 10 * 2**20  # MAX_UPLOAD_MB's default
    assert f"client_max_body_size {limit};" in rendered


def test_database_url_names_the_postgres_service(compose: dict) -> None:
    postgres = compose["services"]["postgres"]
    url = _env(compose["services"]["app"])["DATABASE_URL"]
    parts = urlsplit(url.replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", "pw"))
    pg_env = _env(postgres)
    assert (parts.hostname, str(parts.port)) == ("postgres", postgres["expose"][0])
    assert (parts.username, parts.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_DB"],
    )
    assert parse_database_url(parts.geturl()).drivername == "postgresql+psycopg"
    assert "postgres" in compose["services"]["app"]["depends_on"]


def test_prometheus_scrapes_the_apps_metrics_route(compose: dict, app) -> None:
    prometheus = compose["services"]["prometheus"]
    assert any(v.startswith("./deploy/prometheus.compose.yml:") for v in prometheus["volumes"])
    scrape = yaml.safe_load(PROMETHEUS_COMPOSE.read_text())["scrape_configs"]
    (job,) = scrape
    (targets,) = [c["targets"] for c in job["static_configs"]]
    app_port = _env(compose["services"]["app"])["PORT"]
    assert targets == [f"app:{app_port}"]
    assert job["metrics_path"] in {rule.rule for rule in app.url_map.iter_rules()}


def test_dockerfile_copies_every_package_and_runs_the_front() -> None:
    text = DOCKERFILE.read_text()
    copied = set(re.findall(r"^COPY (\S+) \./\1$", text, flags=re.M))
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages <= copied, packages - copied
    assert {"templates", "static"} <= copied
    assert 'CMD ["python", "-m", "deploy.serve"]' in text
    assert "apt-get install -y --no-install-recommends nginx" in text
    port = re.search(r"PORT=(\d+)", text).group(1)
    assert f"EXPOSE {port}" in text
    assert "USER chorus" in text  # nginx and gunicorn run unprivileged in the image too


def test_behind_a_front_gunicorn_leaves_the_access_log_to_nginx(compose: dict) -> None:
    """nginx logs each request once with its request id; gunicorn's own line is opt-in."""
    assert serve.Front(serve.FrontConfig.from_env({}), {}).env["GUNICORN_ACCESS_LOG"] == "off"
    kept = serve.Front(serve.FrontConfig.from_env({}), {"GUNICORN_ACCESS_LOG": "-"})
    assert kept.env["GUNICORN_ACCESS_LOG"] == "-"
    assert _env(compose["services"]["app"])["GUNICORN_ACCESS_LOG"] == "off"
