"""User errors at the entry point: one clear line naming the problem, a non-zero exit, no traceback.

Each case runs ``python -m simulations.run`` as a user would (a subprocess),
so Hydra's own error reporting is part of what is checked. None of them gets
as far as starting Flower.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    (["strategy=nonexistent"], ["strategy=nonexistent", "plaintext"]),
    (["no_such_key=1"], ["no_such_key"]),
    (["dataset=ml_100k", "dataset.path=/nonexistent", "dataset.download=false"], ["/nonexistent", "u.data"]),
    (["rounds=0"], ["rounds", "0"]),
    (["model.lr=fast"], ["model.lr", "fast"]),
    (["resume=true"], ["no checkpoint", "checkpoint_every"]),
    (["strategy=fedmf", "resume=true"], ["fedmf", "cannot be resumed"]),
    (["strategy=secemb", "strategy.server1_address=9400"], ["strategy.server1_address", "host:port"]),
    (["strategy=secemb", "strategy.server1_fingerprint=xyz"], ["strategy.server1_fingerprint", "hex"]),
    (["strategy=secemb", "strategy.server1_address=127.0.0.1:9", "strategy.server1_tls_dir=/nonexistent"],
     ["strategy.server1_tls_dir", "/nonexistent/ca.pem", "does not exist"]),
]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "simulations.run", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,needles", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_user_error_is_one_line_without_traceback(tmp_path, args, needles):
    proc = _run(args, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "HYDRA_FULL_ERROR" not in out, out
