"""A WSGI application for gunicorn under changeover.

GET /                  version=V pid=P (APP_VERSION and the worker's PID)
GET /slow?duration=2   the same after sleeping that many seconds
Any other path answers like /, so it serves as the health check too.
"""
import os
import time
from urllib.parse import parse_qs

VERSION = os.environ.get("APP_VERSION", "unknown")


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/slow":
        qs = parse_qs(environ.get("QUERY_STRING", ""))
        time.sleep(float(qs.get("duration", ["2"])[0]))
    body = ("version=%s pid=%d\n" % (VERSION, os.getpid())).encode()
    start_response("200 OK", [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("X-Version", VERSION),
        ("X-Pid", str(os.getpid())),
    ])
    return [body]
