"""Gunicorn's settings for the web service: compose.yaml and the Dockerfile run
``gunicorn -c config/gunicorn.py config.wsgi``; flags on the command line override these.

The work a worker takes on is bounded. gunicorn's gthread worker accepts up to
``worker_connections`` connections (default 1000) and queues every request at once for its
threads; the kernel holds ``backlog`` more (default 2048). Overloaded, the server then queues
thousands of requests whose clients gave up long ago and works through them for a minute or
more after the load is gone, while every new request waits behind them. With a worker taking
only what its threads can start soon (its threads plus as many kept-alive clients) and a short
kernel queue, excess clients wait or retry in the kernel instead, and the server works only
on requests that are still fresh. bench/api.py measures it.
"""

bind = "0.0.0.0:8000"
workers = 2
worker_class = "gthread"
threads = 8
# Requests in progress plus kept-alive connections per worker (more than ``threads``, or
# gunicorn turns keep-alive off).
worker_connections = 2 * threads
backlog = 64
keepalive = 2
timeout = 30
graceful_timeout = 20


def post_worker_init(worker) -> None:
    """Load what the first request would load (the URLconf and the views it names), then take
    every object that exists now out of the garbage collector's sight: otherwise each full
    collection walks all of Django's and DRF's objects, a pause of tens of milliseconds that
    lands on a random request (the p99)."""
    import gc

    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 (imports every view)
    gc.freeze()
