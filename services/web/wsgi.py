"""The WSGI entry point every server loads: `services.web.wsgi:app` (services/web/serve.py starts them).

Under gevent the standard library must be patched before the app (and anything that imports socket, ssl or
threading users) is imported, so this module patches first. gunicorn's gevent worker patches too, right before
loading this module; patching twice is harmless, patching late is not. Never use --preload with gevent (nor
uWSGI without lazy-apps): the app would then be imported in the unpatched master.
"""

import os

from services.web.server_settings import WebServerSettings

SETTINGS = WebServerSettings.from_env()
if SETTINGS.cooperative:
    from gevent import monkey

    monkey.patch_all()

from services.web.app import create_app  # noqa: E402  (must follow the patch)
from services.web.middleware import AccessLineMiddleware, ProcessEnvironmentFilter, RequestLineGuard  # noqa: E402

app = create_app()
if SETTINGS.server.program == "uwsgi":  # uWSGI's workers end without Python's atexit: flush the last lines here
    import uwsgi

    from services.common import accesslog

    uwsgi.atexit = accesslog.flush
if SETTINGS.server.program != "gunicorn":  # gunicorn parses strictly and logs itself (gunicorn_conf.py)
    granian = SETTINGS.server.program == "granian"
    app = AccessLineMiddleware(RequestLineGuard(app, chunked_input=granian, says_close=granian))
if SETTINGS.server.program == "granian":
    # granian's workers are multiprocessing children, which end with os._exit: no atexit, only multiprocessing's
    # own finalizers run, so the last access lines are flushed from there.
    from multiprocessing import util

    from services.common import accesslog

    util.Finalize(None, accesslog.flush, exitpriority=0)
    app = ProcessEnvironmentFilter(app, os.environ)
