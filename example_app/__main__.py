"""``python -m example_app [--host H] [--port N]``: run the demo host app."""

from __future__ import annotations

import argparse
import logging

from werkzeug.serving import make_server

from . import create_app
from .extensions import webhooks


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the flask-kaizen-webhooks demo host app.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument(
        "--instance-path", help="folder for the SQLite database (default: the instance folder)"
    )
    args = parser.parse_args()
    # What an operator sees: warnings, and a line per webhook attempt (INFO).
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("flask_kaizen_webhooks").setLevel(logging.INFO)
    app = create_app(instance_path=args.instance_path)
    server = make_server(args.host, args.port, app, threaded=True)  # --port 0: a free port
    # Deliver at once what an earlier run left pending, not with the first request.
    webhooks.start(app)
    site = f"http://{args.host}:{server.server_port}"
    base = f"{site}{app.config['KAIZEN_WEBHOOKS_URL_PREFIX']}"
    with app.app_context():
        portal = webhooks.portal_link("org-admin", base_url=site)
    print(
        f"Demo host app on {site}\n"
        f"  database: {app.config['SQLALCHEMY_DATABASE_URI']}\n"
        "  API users: 'Authorization: Bearer admin-token' (may manage web hooks),\n"
        "             'Authorization: Bearer user-token' (may not)\n"
        f"  try: curl -H 'Authorization: Bearer admin-token' {base}/topics\n"
        f"  the integrator portal of 'admin-token' (this link lasts an hour; another:\n"
        f"  curl -X POST -H 'Authorization: Bearer admin-token' {base}/portal-links):\n"
        f"  {portal.url}\n",
        flush=True,
    )
    server.log_startup()
    server.serve_forever()


if __name__ == "__main__":
    main()
