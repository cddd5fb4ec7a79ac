"""gunicorn's entry point: `gunicorn -c services/web/gunicorn_conf.py services.web.wsgi:app`.

Under a gevent worker the standard library must be patched before the app (and anything that imports
socket, ssl or threading users) is imported, so this module patches first. gunicorn's gevent worker patches
too, right before loading this module; patching twice is harmless, patching late is not. Never use --preload
with gevent: the app would then be imported in the unpatched master.
"""

import os

if os.environ.get("WEB_WORKER_CLASS", "gevent").startswith("gevent"):
    from gevent import monkey

    monkey.patch_all()

from services.web.app import create_app  # noqa: E402  (must follow the patch)

app = create_app()
