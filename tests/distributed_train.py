"""A small training run for the distributed tests, started by torchrun (or alone as one process).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_train.py OUT [options]

Trains an MLP on two moons in float64 and writes, from rank 0, its weights and EMA to OUT
(safetensors); with --checkpoint, trains into that checkpoint (resuming it if it exists), and
with --stop-at K, the last rank sends itself Ctrl-C after step K; with --data-file, the data
are a memory-mapped .npy read by --workers DataLoader processes; with --dropout P, the network's
input passes through dropout while training (drawn from torch's global generator, as every
network's dropout is).
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from safetensors.torch import save_file

import sdeplug
from sdeplug import distributed
from sdeplug.app.datasets import load_dataset
from sdeplug.data import ArraySource, load_all
from sdeplug.trainer import Trainer, TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--checkpoint")
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--die-at", type=int, help="the last rank exits abruptly after this step")
    parser.add_argument("--data-file", help="train on this .npy instead, memory-mapped and streamed")
    parser.add_argument("--hold", action="store_true", help="with --data-file: read it whole into memory")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes reading the --data-file")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout on the network's input while training")
    args = parser.parse_args()
    torch.set_num_threads(1)
    distributed.init_from_environment("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=32, depth=2).double()
    if args.dropout:
        network.register_forward_pre_hook(
            lambda module, inputs: (torch.nn.functional.dropout(inputs[0], args.dropout, module.training), *inputs[1:])
        )
    data = load_dataset("moons", n_train=400, n_test=10).train
    if args.data_file:
        data = ArraySource(args.data_file)
        data = load_all(data) if args.hold else data
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        lr=1e-2,
        warmup=2,
        ema_decay=0.9,
        checkpoint_every=None,
        progress=False,
    )
    trainer = Trainer(
        network, sdeplug.create("sde", "vp"), data, settings, checkpoint_path=args.checkpoint, workers=args.workers
    )
    if args.checkpoint and os.path.exists(args.checkpoint):
        trainer.load()
    real_step, last = trainer.train_step, distributed.rank() == distributed.world_size() - 1

    def step():
        loss = real_step()
        if trainer.step == args.stop_at and last:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaching the last rank only
        if trainer.step == args.die_at and last:
            os._exit(3)  # a crash: no clean-up, no goodbye to the other ranks
        return loss

    trainer.train_step = step
    trainer.fit()
    state = {f"model.{k}": v for k, v in trainer.network.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    state["step"] = torch.tensor(trainer.step)
    gathered = distributed.gather_objects({k: v.clone() for k, v in state.items()})
    if distributed.is_main():
        # every rank must hold the same weights and EMA
        for other in gathered[1:]:
            for key, value in other.items():
                assert torch.equal(value, state[key]), f"rank weights differ: {key}"
        save_file({k: v.contiguous() for k, v in state.items()}, args.out)
    distributed.shutdown()


if __name__ == "__main__":
    main()
