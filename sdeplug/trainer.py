"""The Trainer: a training objective in a loop with warm-up, clipping, EMA and exact resumption.

The objective is the denoising score-matching loss (``objective = "score"``) or, for the
time-dependent classifier that guidance needs, the noisy cross-entropy on labelled data
(``objective = "classifier"``); everything else is the same loop.

Each step draws its minibatch from a generator seeded for (seed, step) (sdeplug.data), so
data read ahead by DataLoader workers and a resumed run see the same batches. It evaluates
the loss with a generator of its own, takes an Adam step with linear learning-rate warm-up
and gradient-norm clipping, and updates an exponential moving average of the weights
(sampling uses the EMA). A
checkpoint holds everything the next step depends on (weights, EMA, optimiser state,
step, generator states, loss history, config), so a resumed run reproduces the
uninterrupted one exactly. Ctrl-C finishes the current step, saves, and stops; more Ctrl-C
while that checkpoint is written wait for it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from attrs import validators as v
from torch import Tensor
from tqdm.auto import tqdm

from sdeplug import distributed
from sdeplug.checkpoint import CheckpointError, exclusive_writer, load_checkpoint, save_checkpoint
from sdeplug.compiling import check_compile
from sdeplug.conditioning import NULL_LABEL, num_classes
from sdeplug.data import Source, StepBatches, apply_flips, step_batches, step_draws
from sdeplug.errors import DataError, TrainingDivergedError, error_text
from sdeplug.interfaces import SDE
from sdeplug.losses import WEIGHTINGS, DenoisingScoreMatching, NoisyCrossEntropy, draw_noise
from sdeplug.parameterization import PARAMETERIZATIONS, ParameterizedScore
from sdeplug.tensors import check_seed, derived_seed, non_finite_rows


def _positive_int(_inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer; got {value!r}")


def _optional_positive_int(inst, attribute, value):
    if value is not None:
        _positive_int(inst, attribute, value)


def _positive_finite(_inst, attribute, value):
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive finite number; got {value!r}")


def _seed(_inst, attribute, value):
    check_seed(value, attribute.name)


def _eps(_inst, attribute, value):
    if not 0 <= value < math.inf:
        raise ValueError(f"{attribute.name} must be a finite number >= 0 (below the SDE's T); got {value!r}")


def _optional_float(value):
    return None if value is None else float(value)


def _optional_probability(_inst, attribute, value):
    if value is not None and not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1]; got {value!r}")


def _optional_positive_finite(inst, attribute, value):
    if value is not None:
        _positive_finite(inst, attribute, value)


#: The autocast dtype of each precision (None: no autocast).
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@attrs.frozen(kw_only=True)
class TrainSettings:
    """How to train; the [train] section of a config."""

    #: Optimiser steps in all (a resumed run goes on to this number).
    steps: int = attrs.field(default=5000, validator=_positive_int)
    #: The global batch: split over the processes of a distributed run, so that any number
    #: of processes (and of accumulation steps) takes the same optimiser steps.
    batch_size: int = attrs.field(default=128, validator=_positive_int)
    #: Micro-batches per optimiser step (gradient accumulation): the same update, less memory.
    accumulate: int = attrs.field(default=1, validator=_positive_int)
    #: Adam's learning rate after warm-up.
    lr: float = attrs.field(default=2e-4, converter=float, validator=_positive_finite)
    #: Steps of linear learning-rate warm-up.
    warmup: int = attrs.field(default=100, validator=[v.instance_of(int), v.ge(0)])
    #: Largest gradient norm (None: no clipping); a negative one would reverse the step.
    grad_clip: float | None = attrs.field(default=1.0, converter=_optional_float, validator=_optional_positive_finite)
    #: Decay of the exponential moving average of the weights (what sampling uses).
    ema_decay: float = attrs.field(default=0.999, converter=float, validator=[v.ge(0.0), v.lt(1.0)])
    #: Steps between checkpoints (None: only at the end and on Ctrl-C).
    checkpoint_every: int | None = attrs.field(default=1000, validator=_optional_positive_int)
    #: Steps between sample pictures while training (None: none).
    sample_every: int | None = attrs.field(default=None, validator=_optional_positive_int)
    #: Seeds the initial weights, the data order, the loss noise and dropout; an integer in [0, 2**63).
    seed: int = attrs.field(default=0, validator=_seed)
    #: "score": denoising score matching; "classifier": noisy cross-entropy on the labels.
    objective: str = attrs.field(default="score", validator=v.in_(("score", "classifier")))
    #: What the network predicts: "noise", "data", "score" or "velocity".
    parameterization: str = attrs.field(default="noise", validator=v.in_(PARAMETERIZATIONS))
    #: lambda(t) of the loss (sdeplug.losses); by default "velocity" (||v_hat - v||^2) for a
    #: velocity network and "sigma2" (||z_hat - z||^2 for a noise network) otherwise.
    weighting: str = attrs.field(
        default=attrs.Factory(lambda s: "velocity" if s.parameterization == "velocity" else "sigma2", takes_self=True),
        validator=v.in_(WEIGHTINGS),
    )
    #: For a class-conditional network: the probability that a label is replaced by the null
    #: label, so that the network also learns the unconditional score (classifier-free
    #: guidance needs it). None: 0.1 for a conditional network.
    label_dropout: float | None = attrs.field(default=None, converter=_optional_float, validator=_optional_probability)
    #: "mean" or "sum" of the loss over a sample's entries.
    reduction: str = attrs.field(default="mean", validator=v.in_(("mean", "sum")))
    #: Training times are drawn from U(eps, T).
    eps: float = attrs.field(default=1e-5, converter=float, validator=_eps)
    #: The forward pass's precision: "fp32", or autocast to "bf16" or "fp16" (fp16 with a
    #: gradient scaler). Weights, EMA, optimiser state and checkpoints stay float32.
    precision: str = attrs.field(default="fp32", validator=v.in_(tuple(AUTOCAST)))
    #: Run the network through ``torch.compile`` (a one-off compilation, then faster steps);
    #: checked when the Trainer is built, with one clear error where this platform cannot compile.
    compile: bool = attrs.field(default=False, validator=v.instance_of(bool))
    #: Show a progress bar.
    progress: bool = attrs.field(default=True, validator=v.instance_of(bool))


def check_batch_split(settings: TrainSettings, world_size: int) -> None:
    """Refuse (ValueError) a global batch that does not split evenly into ``world_size``
    processes x ``accumulate`` micro-batches."""
    parts = world_size * settings.accumulate
    if settings.batch_size % parts:
        raise ValueError(
            f"batch_size = {settings.batch_size} must split evenly into {world_size} process(es) x "
            f"accumulate = {settings.accumulate} micro-batches; choose a multiple of {parts}"
        )


#: Signals that stop training after the current step, with a checkpoint: Ctrl-C, and the
#: SIGTERM that torchrun forwards to its workers and schedulers (SLURM) send before a kill.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_on_interrupt() -> Iterator[dict[str, bool]]:
    """While active, Ctrl-C (SIGINT) and SIGTERM set a flag instead of raising mid-step."""
    state = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        state["stop"] = True

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, as torch's fused kernel where it has one for the weights' device (CPU and CUDA): one
    pass over all the weights instead of a dozen small operations per tensor, the same update."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


class Trainer:
    """Trains ``network`` on ``data`` for an SDE: a score model, or with ``objective =
    "classifier"`` a time-dependent classifier on ``labels``.

    ``data`` is a tensor (n, *event_shape), held on the network's device, or a ``Source``
    (an image folder, a memory-mapped array) read batch by batch by ``workers`` DataLoader
    processes. Both draw the batch of step k from a generator seeded for (seed, k), so on the
    CPU a source and the same items as a tensor train identically. ``flip`` mirrors a random
    half of each batch of images left to right (the paper's CIFAR-10 setting).

    Building a Trainer seeds torch's global generators (dropout draws from them) from the
    run's seed and this process's rank; checkpoints keep their states, so a resumed run
    draws what the uninterrupted one would.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        sde: SDE,
        data: Tensor | Source,
        settings: TrainSettings | None = None,
        *,
        labels: Tensor | None = None,
        flip: bool = False,
        workers: int = 0,
        checkpoint_path: str | Path | None = None,
        config: dict[str, Any] | None = None,
        on_sample: Callable[[Trainer], None] | None = None,
    ) -> None:
        self.settings = settings or TrainSettings()
        s = self.settings
        self.sde, self.network = sde, network
        self.device = next(network.parameters()).device
        self.dtype = next(network.parameters()).dtype
        if isinstance(data, Source):
            self.data, self.source = None, data
        elif isinstance(data, Tensor):
            self.data, self.source = data.to(device=self.device, dtype=self.dtype), None
            _check_finite_rows(self.data)
        else:
            raise TypeError(
                f"data must be a tensor (n, *event_shape) or a sdeplug.data.Source; got {type(data).__name__}"
            )
        self.num_items = len(data)
        if self.num_items == 0:
            raise DataError("the training data hold no items")
        event_shape = tuple(data.shape[1:]) if self.source is None else data.event_shape
        if flip and len(event_shape) != 3:
            raise ValueError(
                f"flip = true mirrors images (C, H, W) left to right; these data have event shape {event_shape}"
            )
        if type(workers) is not int or workers < 0:
            raise ValueError(
                f"workers must be an integer >= 0 (DataLoader processes; 0 reads in this one); got {workers!r}"
            )
        self.flip, self.workers = flip, workers
        self._stream: Iterator[Tensor] | None = None
        self._stream_step = -1
        self.world_size, self.rank = distributed.world_size(), distributed.rank()
        torch.manual_seed(derived_seed("global", s.seed, self.rank))  # the CPU's and every GPU's
        check_batch_split(s, self.world_size)
        # Under DDP the wrapper runs the forward pass and averages gradients over the ranks; it
        # starts by giving every rank rank 0's weights, so the EMA is copied after it.
        self.model = self._ddp = _wrap_for_ranks(network, self.device)
        if s.compile:
            check_compile(self.device)
            self.model = torch.compile(self._ddp)
        self.ema = copy.deepcopy(network).requires_grad_(False)
        self._autocast = AUTOCAST[s.precision]
        if self._autocast is not None and self.dtype != torch.float32:
            raise ValueError(f"precision = {s.precision!r} needs float32 weights (they stay float32); got {self.dtype}")
        # fp16's narrow range needs the loss scaled up and steps with overflowing gradients skipped
        self.scaler = torch.amp.GradScaler(self.device.type) if s.precision == "fp16" else None
        if s.objective == "classifier":
            if self.source is not None:
                raise ValueError("objective 'classifier' needs its data as a tensor beside the labels, not a Source")
            if labels is None or labels.shape != (data.shape[0],) or labels.dtype != torch.int64:
                got = None if labels is None else f"{labels.dtype} {tuple(labels.shape)}"
                raise ValueError(
                    f"objective 'classifier' needs labels: an int64 tensor of shape ({data.shape[0]},); got {got}"
                )
            self.labels = labels.to(self.device)
            self.loss = NoisyCrossEntropy(sde, eps=s.eps)
        else:
            self.labels = None
            self.loss = DenoisingScoreMatching(sde, eps=s.eps, weighting=s.weighting, reduction=s.reduction)
        self.num_classes = num_classes(network) if s.objective == "score" else None
        self.label_dropout = 0.0
        if self.num_classes is not None:
            self.labels = _checked_class_labels(labels, data, self.num_classes).to(self.device)
            self.label_dropout = 0.1 if s.label_dropout is None else s.label_dropout
        elif s.objective == "score" and s.label_dropout is not None:
            raise ValueError("label_dropout is for a class-conditional network; this network takes no labels")
        self.optimizer = _adam(list(network.parameters()), s.lr)
        # reseeded at every step for (seed, step): the data order carries no state to save
        self.data_generator = torch.Generator(self.device)
        self._index_generator = torch.Generator()  # a streamed batch's indices, drawn as StepBatches draws them
        self.loss_generator = torch.Generator(self.device).manual_seed(s.seed + 1)
        self.step = 0
        self.history = torch.zeros(s.steps, device=self.device, dtype=torch.float32)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.config = config or {}
        self.on_sample = on_sample
        self.interrupted = False
        # Each step's gradient norm, kept on the device beside the loss history and searched for
        # a non-finite value only when the host looks anyway (progress, checkpoints, the end).
        self._grad_norms = torch.zeros(s.steps, device=self.device, dtype=torch.float32)
        self._checked_until = 0
        self._train_score = ParameterizedScore(self.model, sde, s.parameterization)
        # Listed once: walking the module tree every step costs more than the EMA itself.
        self._params = list(network.parameters())
        self._ema_params = list(self.ema.parameters())
        self._buffer_pairs = list(zip(self.ema.buffers(), network.buffers()))

    def score_model(self, ema: bool = True) -> ParameterizedScore:
        """The trained score for sampling: the EMA weights by default."""
        if self.settings.objective == "classifier":
            raise ValueError("this Trainer trains a classifier; use trained_network() for it")
        return ParameterizedScore(self.ema if ema else self.network, self.sde, self.settings.parameterization)

    def trained_network(self, ema: bool = True) -> torch.nn.Module:
        """The trained network itself (the EMA weights by default), e.g. a classifier for guidance."""
        return self.ema if ema else self.network

    def _precision(self) -> contextlib.AbstractContextManager:
        """Autocast for bf16 and fp16; nothing at all for fp32 (entering autocast costs per step)."""
        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast)

    def train_step(self) -> Tensor:
        """One optimisation step on the global batch; returns this rank's loss (a tensor, no host
        sync). Every rank draws the whole batch's indices and noise from the same generators and
        takes its own slice, so the step is the same for any number of ranks and micro-batches."""
        s = self.settings
        per_rank = s.batch_size // self.world_size
        micro = per_rank // s.accumulate
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        labels = None
        if self.source is None:
            idx, flips = step_draws(self.num_items, s.batch_size, s.seed, self.step, self.data_generator, self.flip)
            x_rank = apply_flips(self.data[idx[mine]], None if flips is None else flips[mine])
            if self.labels is not None:
                labels = self.labels[idx[mine]]
        else:
            x_rank = self._streamed_batch()
            if self.labels is not None:  # the items' indices as the loader drew them, on the CPU
                idx, _ = step_draws(self.num_items, s.batch_size, s.seed, self.step, self._index_generator, self.flip)
                labels = self.labels[idx[mine].to(self.labels.device)]
        if self.label_dropout:
            labels = torch.where(self._dropped_labels()[mine], NULL_LABEL, labels)
        u, z = draw_noise(x_rank[:1].expand(s.batch_size, *x_rank.shape[1:]), self.loss_generator)  # a view
        self.optimizer.zero_grad(set_to_none=True)
        loss = None
        for j in range(s.accumulate):
            part = slice(j * micro, (j + 1) * micro)  # of this rank's batch
            noise_part = slice(mine.start + j * micro, mine.start + (j + 1) * micro)  # of the global noise
            # DDP averages gradients at the last micro-batch's backward pass only
            last = j == s.accumulate - 1
            with contextlib.nullcontext() if last or self._ddp is self.network else self._ddp.no_sync():
                x0, noise = x_rank[part], (u[noise_part], z[noise_part])
                with self._precision():
                    if s.objective == "classifier":
                        part_loss = self.loss(self.model, x0, labels[part], noise=noise)
                    elif labels is not None:
                        part_loss = self.loss(self._train_score, x0, noise=noise, labels=labels[part])
                    else:
                        part_loss = self.loss(self._train_score, x0, noise=noise)
                part_loss = part_loss.float() / s.accumulate
                (self.scaler.scale(part_loss) if self.scaler else part_loss).backward()
            loss = part_loss.detach() if loss is None else loss + part_loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # the gradient norm, clipped or not (an infinite max_norm leaves the gradients as they are)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self._params, s.grad_clip if s.grad_clip is not None else float("inf")
        )
        # under fp16 an overflowing gradient is the scaler's business (it skips the step and
        # lowers the scale); a non-finite loss is divergence in every precision
        if self.scaler is None:
            self._grad_norms[self.step] = grad_norm
        lr = s.lr * min(1.0, (self.step + 1) / s.warmup) if s.warmup else s.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._ema_params, self._params, 1.0 - s.ema_decay)
            for ema_buf, buf in self._buffer_pairs:
                ema_buf.copy_(buf)
        self.history[self.step] = loss
        self.step += 1
        return loss

    def _dropped_labels(self) -> Tensor:
        """Which labels of the global batch this step replaces by the null label: drawn for the
        whole batch from a generator seeded for (seed, step), so that any number of ranks and a
        resumed run drop the same ones."""
        s = self.settings
        self.data_generator.manual_seed(derived_seed("label dropout", s.seed, self.step))
        draws = torch.rand(s.batch_size, generator=self.data_generator, device=self.device)
        return draws < self.label_dropout

    def _streamed_batch(self) -> Tensor:
        """This rank's batch of the current step from the source, read ahead by the workers."""
        if self._stream is None or self._stream_step != self.step:  # none yet, or the step moved (a load)
            self.close_stream()
            s = self.settings
            batches = StepBatches(
                self.source, s.batch_size, s.seed, rank=self.rank, world_size=self.world_size, flip=self.flip
            )
            self._stream = step_batches(batches, self.step, s.steps, self.device, self.workers)
            self._stream_step = self.step
        self._stream_step += 1
        return next(self._stream).to(self.dtype)

    def close_stream(self) -> None:
        """Stop the data loader's workers (a later step starts them again)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def fit(self, until: int | None = None) -> Trainer:
        """Train up to step ``until`` (default: settings.steps), checkpointing as configured;
        with a checkpoint path, no other run may train into the same file meanwhile."""
        with training_lock(self.checkpoint_path):
            try:
                return self._fit(until)
            finally:
                self.close_stream()

    def _fit(self, until: int | None) -> Trainer:
        s = self.settings
        until = s.steps if until is None else min(until, s.steps)
        first_step = self.step
        self.network.train()
        show = s.progress and distributed.is_main()
        bar = tqdm(total=until, initial=self.step, disable=not show, desc="training", dynamic_ncols=True)
        with _stop_on_interrupt() as interrupt:
            while self.step < until:
                self.train_step()
                if self.step % DIVERGENCE_CHECK_EVERY == 0:
                    self.check_finite()
                if show and (self.step % 50 == 0 or self.step == until):
                    window = self.history[max(0, self.step - 50) : self.step]
                    bar.set_postfix(loss=f"{float(window.mean()):.4f}")
                    bar.update(self.step - bar.n)
                if self.checkpoint_path and s.checkpoint_every and self.step % s.checkpoint_every == 0:
                    self.save()
                if self.on_sample and s.sample_every and self.step % s.sample_every == 0:
                    self.on_sample(self)
                # every rank stops after the same step: under DDP they agree every few steps
                if self.world_size == 1 or self.step % STOP_CHECK_EVERY == 0 or self.step == until:
                    if distributed.any_rank(interrupt["stop"], self.device):
                        self.interrupted = True
                        break
            bar.close()
            self.interrupted = self.interrupted or distributed.any_rank(interrupt["stop"], self.device)
            self.check_finite()
            # still under the guard: a second Ctrl-C while the last checkpoint is written waits for it
            if self.checkpoint_path and self.step > first_step and (self.interrupted or self.step == until):
                self.save()
        return self

    # Checkpoints ---------------------------------------------------------------------

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {f"model.{k}": t for k, t in self.network.state_dict().items()}
        tensors.update({f"ema.{k}": t for k, t in self.ema.state_dict().items()})
        optim = self.optimizer.state_dict()
        for index, state in optim["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        tensors["rng.loss"] = self.loss_generator.get_state()
        # each rank's global generator (dropout): rank 0's as rng.torch, the others' beside it;
        # on a GPU its generator too (dropout on the GPU draws from it), as rng.cuda
        for r, state in enumerate(distributed.gather_objects(torch.get_rng_state())):
            tensors["rng.torch" if r == 0 else f"rng.torch.rank{r}"] = state
        if self.device.type == "cuda":
            for r, state in enumerate(distributed.gather_objects(torch.cuda.get_rng_state(self.device))):
                tensors["rng.cuda" if r == 0 else f"rng.cuda.rank{r}"] = state
        tensors["history"] = distributed.mean_over_ranks(self.history[: self.step])  # the global batch's loss
        return tensors

    def check_finite(self) -> None:
        """Raise TrainingDivergedError if any step so far had a non-finite loss or gradient
        (the losses and gradient norms since the last look are searched on the device; one host read)."""
        seen = slice(self._checked_until, self.step)
        bad = ~(torch.isfinite(self.history[seen]) & torch.isfinite(self._grad_norms[seen]))
        if not bool(bad.any()):
            self._checked_until = self.step
            return
        first = self._checked_until + int(bad.nonzero()[0, 0])
        bad_loss = float(self.history[first])
        s = self.settings
        kept = (
            f"the checkpoint {self.checkpoint_path} keeps the last good state"
            if self.checkpoint_path is not None and self.checkpoint_path.exists()
            else "nothing was saved"
        )
        raise TrainingDivergedError(
            f"training stopped: step {first + 1} had a non-finite loss or gradient (loss {bad_loss:g}); "
            f"the weights since then are not saved and {kept}. Likely causes: non-finite or extreme data, "
            f"a learning rate too large (lr = {s.lr:g}), or no gradient clipping (grad_clip = {s.grad_clip})."
        )

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint (atomically) of everything needed to resume exactly; never of a
        state that a non-finite step has touched (TrainingDivergedError instead)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass one or give the Trainer a checkpoint_path")
        self.check_finite()
        optim = self.optimizer.state_dict()
        meta = {
            "step": self.step,
            "settings": attrs.asdict(self.settings),
            "config": self.config,
            "optimizer": {
                "param_groups": optim["param_groups"],
                "state_keys": {str(i): sorted(st) for i, st in optim["state"].items()},
            },
        }
        if self.scaler is not None:
            meta["scaler"] = self.scaler.state_dict()
        tensors = self.state_tensors()  # every rank takes part; rank 0 writes, the others wait
        bad = _first_non_finite(tensors, ("model.", "ema."))
        if bad is not None:
            raise TrainingDivergedError(
                f"not saving step {self.step}: {bad} holds NaN or inf values (a checkpoint loaded with them, or an "
                "update that overflowed); the weights are not saved"
            )
        with distributed.first_failure_stops_all():
            if distributed.is_main():
                save_checkpoint(path, tensors, meta)
        return path

    def load(self, path: str | Path | None = None) -> Trainer:
        """Restore weights, EMA, optimiser, generators, step and history from a checkpoint."""
        path = Path(path) if path is not None else self.checkpoint_path
        tensors, meta = load_checkpoint(path, device="cpu")
        saved = checked_metadata(path, tensors, meta)
        # Settings that change what a step computes must match; length and bookkeeping may differ.
        bookkeeping = ("steps", "progress", "checkpoint_every", "sample_every", "accumulate", "compile")
        if attrs.evolve(saved, **{k: getattr(self.settings, k) for k in bookkeeping}) != self.settings:
            raise CheckpointError(
                f"{path} was written with other training settings; resume with the same ones or start afresh.\n"
                f"  checkpoint: {json.dumps(meta['settings'], sort_keys=True)}\n"
                f"  now:        {json.dumps(attrs.asdict(self.settings), sort_keys=True)}"
            )
        if meta["step"] > self.settings.steps:
            raise CheckpointError(
                f"{path} is at step {meta['step']}, beyond steps = {self.settings.steps}; to continue it, "
                f"set steps to {meta['step']} or more (or restart to train afresh)"
            )
        bad = _first_non_finite(tensors, ("model.", "ema.", "optim."))
        if bad is not None:
            raise CheckpointError(f"{path} is no state to resume: its {bad} holds NaN or inf values")
        _load_state(self.network, _prefixed(tensors, "model."), path)
        _load_state(self.ema, _prefixed(tensors, "ema."), path)
        state = {
            int(index): {key: tensors[f"optim.{index}.{key}"] for key in keys}
            for index, keys in meta["optimizer"]["state_keys"].items()
        }
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: its optimizer state does not fit this network: {exc}") from exc
        _set_generator_state(path, "rng.loss", self.loss_generator, tensors["rng.loss"])
        own = f"rng.torch.rank{self.rank}" if f"rng.torch.rank{self.rank}" in tensors else "rng.torch"
        _set_generator_state(path, own, None, tensors[own])
        own_cuda = f"rng.cuda.rank{self.rank}" if f"rng.cuda.rank{self.rank}" in tensors else "rng.cuda"
        if self.device.type == "cuda" and own_cuda in tensors:
            _set_generator_state(path, own_cuda, self.device, tensors[own_cuda])
        if self.scaler is not None and "scaler" in meta:
            self.scaler.load_state_dict(meta["scaler"])
        self.step = meta["step"]
        self.history[: self.step] = tensors["history"].to(self.history.device)
        self._checked_until = self.step
        self.config = meta["config"]
        return self


#: The metadata a training checkpoint holds, each key with the JSON type it must have.
META_KEYS = {"step": int, "settings": dict, "config": dict, "optimizer": dict}
#: Metadata only some runs write: the fp16 gradient scaler's state.
OPTIONAL_META_KEYS = {"scaler": dict}
#: The tensors beside the weights (model.*, ema.*) and optimiser state (optim.*).
STATE_TENSORS = {"rng.loss", "rng.torch", "history"}
#: Tensors that checkpoints of earlier versions hold and that are no longer read (the data
#: generator's state: batches are now drawn from a seed per step).
OBSOLETE_TENSORS = {"rng.data"}


def checked_metadata(path: str | Path, tensors: dict[str, Tensor], meta: Any) -> TrainSettings:
    """The training settings of a checkpoint after checking its metadata field by field.

    The checksum only shows the file is as some writer left it; anyone can edit and re-hash
    it, so every field is checked here before it is trusted.
    """

    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid training checkpoint: {problem}")

    if not isinstance(meta, dict):
        raise refuse(f"its metadata must be a JSON object; got {type(meta).__name__}")
    if meta.get("kind") == "weights":
        raise refuse(
            f"it holds weights only (from {meta.get('source')}), no training state to resume; train afresh elsewhere"
        )
    allowed = META_KEYS | OPTIONAL_META_KEYS
    missing, unexpected = META_KEYS.keys() - meta.keys(), meta.keys() - allowed.keys()
    if missing or unexpected:
        raise refuse(f"metadata keys missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    for key, kind in allowed.items():
        if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            raise refuse(f"metadata {key!r} must be a {kind.__name__}; got {meta[key]!r:.80}")
    try:
        settings = TrainSettings(**meta["settings"])
    except (TypeError, ValueError) as exc:
        raise refuse(f"its training settings are invalid: {error_text(exc)}") from None
    step, history = meta["step"], tensors.get("history")
    if not 0 <= step <= settings.steps:
        raise refuse(f"step {step} lies outside the run it belongs to (0 to {settings.steps} steps)")
    if history is None or history.shape != (step,):
        got = None if history is None else tuple(history.shape)
        raise refuse(f"its loss history must have shape ({step},), one loss per step; got {got}")
    missing_tensors = STATE_TENSORS - tensors.keys()
    prefixes = ("model.", "ema.", "optim.", "rng.torch.rank", "rng.cuda")
    stray = {k for k in tensors if k not in STATE_TENSORS | OBSOLETE_TENSORS and not k.startswith(prefixes)}
    if missing_tensors or stray:
        raise refuse(f"tensors missing {sorted(missing_tensors)}, unexpected {sorted(stray)[:5]}")
    optimizer = meta["optimizer"]
    if set(optimizer) != {"param_groups", "state_keys"} or not isinstance(optimizer["param_groups"], list):
        raise refuse("metadata 'optimizer' must hold exactly a 'param_groups' list and 'state_keys'")
    state_keys = optimizer["state_keys"]
    if not isinstance(state_keys, dict):
        raise refuse("metadata 'optimizer' 'state_keys' must be an object")
    for index, keys in state_keys.items():
        if not index.isdigit() or not isinstance(keys, list):
            raise refuse(f"optimizer state {index!r} must be a parameter index with a list of keys")
        for key in keys:
            if f"optim.{index}.{key}" not in tensors:
                raise refuse(f"the tensor optim.{index}.{key} that its metadata lists is missing")
    return settings


def _set_generator_state(
    path: Path, name: str, generator: torch.Generator | torch.device | None, state: Tensor
) -> None:
    """Restore a generator (None: torch's global one; a CUDA device: that device's global one)
    from a checkpoint's state, or say it is bad."""
    try:
        if generator is None:
            torch.set_rng_state(state)
        elif isinstance(generator, torch.device):
            torch.cuda.set_rng_state(state, generator)
        else:
            generator.set_state(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a valid training checkpoint: its random state {name} is not one "
            f"({state.dtype} {tuple(state.shape)}: {exc})"
        ) from None


#: Steps between reads of the divergence flag (checkpoints and the end also read it).
DIVERGENCE_CHECK_EVERY = 100
#: Steps between the ranks' agreement on whether to stop (a Ctrl-C on any rank stops all).
STOP_CHECK_EVERY = 10


@contextlib.contextmanager
def training_lock(path: str | Path | None) -> Iterator[None]:
    """One run per checkpoint for the block: rank 0, which writes it, holds ``exclusive_writer``;
    if it cannot take the lock every rank stops (none waits for it). No path: no lock."""
    with contextlib.ExitStack() as stack:
        with distributed.first_failure_stops_all():
            if path is not None and distributed.is_main():
                stack.enter_context(exclusive_writer(path))
        yield


def _wrap_for_ranks(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``network`` in DistributedDataParallel when several processes train, else itself."""
    if not distributed.active():
        return network
    from torch.nn.parallel import DistributedDataParallel

    # gradients as views into DDP's buckets: one copy less per step, the same numbers
    return DistributedDataParallel(
        network, device_ids=[device] if device.type == "cuda" else None, gradient_as_bucket_view=True
    )


def _checked_class_labels(labels: Tensor | None, data: Tensor | Source, classes: int) -> Tensor:
    """The labels of a class-conditional network's data: int64 (n,), each in [0, classes), held
    in memory beside the data whether the data are held or streamed from a Source."""
    if labels is None or labels.shape != (len(data),) or labels.dtype != torch.int64:
        got = None if labels is None else f"{labels.dtype} {tuple(labels.shape)}"
        raise ValueError(
            f"a class-conditional network ({classes} classes) needs labels: an int64 tensor of shape "
            f"({len(data)},); got {got}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(
            f"the labels run from {int(labels.min())} to {int(labels.max())}; "
            f"the network has classes 0 to {classes - 1}"
        )
    return labels


def _check_finite_rows(data: Tensor) -> None:
    """Refuse training data with NaN or inf, naming the first bad row (one check at start)."""
    bad = non_finite_rows(data)
    if len(bad):
        raise DataError(
            f"the training data has NaN or inf values: row {int(bad[0])} is the first of {len(bad)} such rows; "
            "clean the data (every value must be finite)"
        )


def _first_non_finite(tensors: dict[str, Tensor], prefixes: tuple[str, ...]) -> str | None:
    """The name of the first floating tensor under ``prefixes`` holding NaN or inf (None if none)."""
    for name, tensor in tensors.items():
        if name.startswith(prefixes) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _load_state(network: torch.nn.Module, state: dict[str, Tensor], path: str | Path) -> None:
    """Load ``state`` into ``network``, or say in one line where it does not fit (the first
    tensor of another shape, or what is missing or extra), instead of torch's list of them all."""
    ours = network.state_dict()
    for key, value in state.items():
        if key in ours and value.shape != ours[key].shape:
            raise CheckpointError(
                f"{path} does not fit this network: its {key!r} has shape {tuple(value.shape)} where the network's "
                f"has {tuple(ours[key].shape)} (was it trained with other [model] options?)"
            )
    missing, extra = sorted(ours.keys() - state.keys()), sorted(state.keys() - ours.keys())
    if missing or extra:
        first = f"{missing[0]!r} is missing" if missing else f"{extra[0]!r} is not the network's"
        raise CheckpointError(
            f"{path} does not fit this network: {first} ({len(missing)} missing, {len(extra)} extra tensors; is it a "
            "checkpoint of this [model]?)"
        )
    network.load_state_dict(state)


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix)}


#: The metadata of a weights checkpoint: network weights for sampling without training
#: state, such as a network converted from another code base.
WEIGHTS_META_KEYS = {"kind": str, "config": dict, "settings": dict, "source": dict}


def save_weights(
    path: str | Path,
    state: dict[str, Tensor],
    *,
    parameterization: str,
    config: dict[str, Any],
    source: dict[str, Any],
) -> Path:
    """Write (atomically) a weights checkpoint that sampling and likelihood read as they read a
    trained one: the weights, how the output is read, the run's config and where they came from."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; got {parameterization!r}")
    tensors = {f"ema.{key}": value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}
    meta = {"kind": "weights", "config": config, "settings": {"parameterization": parameterization}, "source": source}
    return save_checkpoint(path, tensors, meta)


def _checked_weights_metadata(path: str | Path, tensors: dict[str, Tensor], meta: dict) -> None:
    if meta.keys() != WEIGHTS_META_KEYS.keys() or any(not isinstance(meta[k], t) for k, t in WEIGHTS_META_KEYS.items()):
        raise CheckpointError(f"{path} is not a valid weights checkpoint: its metadata must hold {WEIGHTS_META_KEYS}")
    if (
        meta["settings"] != {"parameterization": meta["settings"].get("parameterization")}
        or meta["settings"]["parameterization"] not in PARAMETERIZATIONS
    ):
        raise CheckpointError(f"{path} is not a valid weights checkpoint: settings must name a parameterization")
    stray = [k for k in tensors if not k.startswith("ema.")]
    if stray:
        raise CheckpointError(f"{path} is not a valid weights checkpoint: unexpected tensors {sorted(stray)[:5]}")


def load_ema_weights(network: torch.nn.Module, path: str | Path, *, kind: str = "model") -> dict[str, Any]:
    """Load a checkpoint's EMA weights (or a weights checkpoint's weights) into ``network``
    (for sampling); return its metadata. ``kind`` says what the checkpoint must hold: a score
    "model" or a "classifier" (their recorded configs name one or the other)."""
    tensors, meta = load_checkpoint(path, device="cpu")
    if isinstance(meta, dict) and meta.get("kind") == "weights":
        _checked_weights_metadata(path, tensors, meta)
    else:
        checked_metadata(path, tensors, meta)
    recorded = meta.get("config", {})
    other = {"model": "classifier", "classifier": "model"}[kind]
    if other in recorded and kind not in recorded:
        holds = "a classifier (trained with --classifier)" if other == "classifier" else "a score model"
        raise CheckpointError(f"{path} holds {holds}, not the {kind.replace('model', 'score model')} needed here")
    _load_state(network, _prefixed(tensors, "ema."), path)
    return meta
