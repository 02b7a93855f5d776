"""``python fault_worker.py CONFIG.yaml [--resume] [--kill-rank R --kill-step N]``: train on the fake protocol.

For the fault tests: run as one process, as a torchrun rank, or as a hand-launched rank (``RANK``/``WORLD_SIZE``/
``MASTER_ADDR``/``MASTER_PORT`` set by the test, no torchrun agent to clean up after a dead peer). With
``--kill-rank R --kill-step N`` rank R sends itself SIGKILL right after optimizer step N: a rank dying mid-epoch.
User errors end like the command line's: one ``msresnet: error:`` line, exit code 2.

:func:`timm_wrapped_models` are a small timm trunk inside each registered scale wrapper (``msresnet.wrap``); the
worker registers them in its own process so ``model: timm_pyramid_test`` trains one. Tests register them only
for their own duration (``monkeypatch.setitem``), never for the whole session, where they would join every
"all registered models" test.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from engine_fakes import fake_protocol

TIMM_TRUNK = "test_resnet"  # timm's own tiny test network


def timm_wrapped_models() -> dict[str, Callable[..., nn.Module]]:
    """``timm_<method>_test`` for each registered scale wrapper: :data:`TIMM_TRUNK` wrapped by ``method``."""
    from msresnet.scale import list_wrappers

    def entry(method: str) -> Callable[..., nn.Module]:
        def build(pretrained: bool = False, num_classes: int = 10, in_chans: int = 1, **kwargs) -> nn.Module:
            import timm

            import msresnet

            trunk = timm.create_model(TIMM_TRUNK, num_classes=num_classes, in_chans=in_chans)
            return msresnet.wrap(trunk, method, **kwargs)

        build.__name__ = f"timm_{method}_test"
        return build

    return {f"timm_{m}_test": entry(m) for m in list_wrappers()}


def main(argv: list[str]) -> int:
    import msresnet.data
    from msresnet.engine.config import load_train_config
    from msresnet.engine.train import train
    from msresnet.errors import UserError

    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-rank", type=int, default=-1)
    p.add_argument("--kill-step", type=int, default=-1)
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))

    def on_step(step: int) -> None:
        if rank == args.kill_rank and step == args.kill_step:
            print(f"fault_worker: rank {rank} killing itself after step {step} at {time.time():.3f}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    from msresnet.models import _registry

    msresnet.data.build_protocol = fake_protocol
    for name, fn in timm_wrapped_models().items():
        _registry._ENTRYPOINTS.setdefault(name, fn)
    torch.set_num_threads(1)
    try:
        train(load_train_config(args.config, {"resume": args.resume}), on_step=on_step)
    except UserError as e:
        print(f"msresnet: error: {e}", file=sys.stderr, flush=True)
        print(f"fault_worker: rank {rank} exited at {time.time():.3f}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
