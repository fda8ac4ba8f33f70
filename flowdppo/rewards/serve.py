"""The reward server's command line: `python -m flowdppo.rewards.service --reward NAME …` (or
`python -m flowdppo.rewards.serve`) serves one registry reward over loopback HTTP.  It lives apart from
flowdppo.rewards.service, whose client (RemoteReward) the registry itself builds for the "remote" entry."""
from __future__ import annotations

import argparse
import json
from typing import Optional

import torch

from .registry import make_reward
from .service import CONNECTION_TIMEOUT_S, MAX_BODY_BYTES, RewardServer


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="Serve one flowdppo reward on a loopback HTTP port.")
    ap.add_argument("--reward", required=True, help="a flowdppo.rewards.registry name (pickscore, jpeg, …)")
    ap.add_argument("--kwargs", default="{}", help="JSON keyword arguments for make_reward")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (printed on stdout)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20,
                    help="largest request body accepted, MiB (clients split larger batches)")
    ap.add_argument("--timeout", type=float, default=CONNECTION_TIMEOUT_S,
                    help="seconds a connection may stall mid-request before it is dropped")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    server = RewardServer(make_reward(args.reward, **json.loads(args.kwargs)), host=args.host, port=args.port,
                          max_body_bytes=int(args.max_body_mb * 2**20), timeout=args.timeout)
    print(f"READY http://{server.host}:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
