"""`specdraft serve`: the OpenAI-compatible server."""

from __future__ import annotations

import sys

from .. import zoo
from ..errors import require
from .options import backend_option, dtype_option, load_llm, nonnegative_int, positive_int


def add(sub) -> None:
    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (loopback by default)")
    sv.set_defaults(run=run)
    sv.add_argument("--model", default=zoo.DEFAULT_MODEL)
    sv.add_argument("--drafter", default="auto", help="auto (default: the drafter measured fastest for the model, at the temperature asked), plain (no drafter), lookup[:N], draft-model:NAME, "
                   "layerskip[:FILE], knn-ssd[:DIR], ctc[:DIR], medusa[:DIR]")
    sv.add_argument("--host", default="127.0.0.1", help="default: %(default)s (loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (also $SPECDRAFT_API_KEY)")
    sv.add_argument("--served-name", default=None, help="model id clients use (default: the --model value)")
    dtype_option(sv)
    backend_option(sv)
    sv.add_argument("--device", default=None)
    sv.add_argument("--max-prompt-tokens", type=positive_int, default=4096)
    sv.add_argument("--max-tokens-limit", type=positive_int, default=4096, help="largest max_tokens accepted")
    sv.add_argument("--max-queue", type=positive_int, default=64, help="requests waiting or running before 429")
    sv.add_argument("--max-batch", type=positive_int, default=None, metavar="N",
                    help="requests decoded together, one forward per step for all (default: 8; 1: one request "
                         "at a time)")
    sv.add_argument("--prefix-cache", type=nonnegative_int, default=4, metavar="N",
                    help="keep the KV caches of the last N requests: a prompt that begins like one of them (a "
                         "conversation's next turn) prefills only the rest (default: %(default)s; 0: off)")


def run(a) -> int:
    require("serve", "specdraft serve")
    import os
    import signal
    import threading

    import uvicorn

    from ..batch import DEFAULT_MAX_BATCH
    from ..server.app import ServerConfig, create_app, drafter_name

    max_batch = a.max_batch or DEFAULT_MAX_BATCH
    llm = load_llm(a, sampling=False, max_batch=max_batch, prefix_cache=a.prefix_cache)
    cfg = ServerConfig(model_name=a.served_name or a.model, drafter=a.drafter,
                       api_key=a.api_key or os.environ.get("SPECDRAFT_API_KEY"),
                       max_prompt_tokens=a.max_prompt_tokens, max_tokens_limit=a.max_tokens_limit, max_queue=a.max_queue,
                       prefix_cache=a.prefix_cache, max_batch=max_batch)
    name, hot = drafter_name(llm, cfg.drafter), drafter_name(llm, cfg.drafter, temperature=1.0)
    shown = cfg.drafter if name == cfg.drafter else f"{cfg.drafter}: {name}"
    if hot != name:
        shown += f"; {hot} at temperature 1"
    print(f"serving {cfg.model_name} (drafter {shown}; {llm.backend} backend; up to {cfg.max_batch} requests "
          f"at once) on http://{a.host}:{a.port}/v1", file=sys.stderr)
    app = create_app(llm, cfg, engine_thread=False)
    # The engine on this (the main) thread, where the model was loaded: its kernels run at half speed
    # on another (server/scheduler.py); the HTTP server on a thread of its own.
    server = uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level="warning"))
    web = threading.Thread(target=server.run, name="specdraft-http", daemon=True)
    signal.signal(signal.SIGTERM, lambda *_: app.state.s.scheduler.close())
    web.start()
    try:
        app.state.s.scheduler.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        web.join(10)
    return 0
