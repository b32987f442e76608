"""``python -m twoserver --port P``: run server 1 as its own process."""

from __future__ import annotations

import argparse
import logging

from twoserver.transport import serve


def main() -> None:
    parser = argparse.ArgumentParser(description="SecEmb server 1 (non-colluding second server)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
