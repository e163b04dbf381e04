"""`mxmix serve CHECKPOINT`: an OpenAI-compatible server over `mxmix.load` (loopback by default)."""

from __future__ import annotations

import argparse
import sys

HELP = "serve a checkpoint over an OpenAI-compatible HTTP API"
EPILOG = """\
Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (the tokenizer's chat
template), GET /health. Supports temperature, top_p, max_tokens, stop, seed; reports usage counts.
Requests are queued in front of one model worker, so greedy outputs do not depend on concurrency.
Ctrl-C or SIGTERM shuts down cleanly. --port 0 picks a free port; the URL is printed on stdout.

examples:
  mxmix serve ./SmolLM2-mx --port 8000
  mxmix eval gsm8k --base-url http://127.0.0.1:8000 --data test.jsonl --num-examples 50
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help=HELP, description=HELP + ".", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory (mixed, MXFP8 or plain BF16)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--model-name", help="name reported by /v1/models (default: the directory name)")
    p.add_argument("--max-body", type=int, default=4 * 1024 * 1024, help="largest request body in bytes")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    p.add_argument("--json", action="store_true", help="announce the server as one JSON line on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from mxmix.cli.main import request_hard_exit
    from mxmix.errors import MxmixError
    from mxmix.serve.server import ApiServer, load_backend, serve_until_signalled

    if not 0 <= args.port <= 65535:
        raise MxmixError(f"--port {args.port} is not a port number")
    backend = load_backend(args.checkpoint, device=args.device, dtype=args.dtype)
    if args.model_name:
        backend.name = args.model_name
    try:
        server = ApiServer(backend, args.host, args.port, max_body=args.max_body, verbose=args.verbose)
    except OSError as exc:
        raise MxmixError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") from None

    def announce(srv: ApiServer) -> None:
        if args.json:
            print(json.dumps({"url": srv.url, "port": srv.server_address[1], "model": backend.name}), flush=True)
        else:
            print(f"mxmix serve: {backend.name} on {srv.url}  (OpenAI API at {srv.url}/v1; Ctrl-C stops)",
                  flush=True)

    serve_until_signalled(server, announce)
    sys.stderr.write("mxmix serve: stopped\n")
    request_hard_exit()
    return 0
