"""Several processes through torch.distributed: set-up from torchrun's environment, and the few
collective steps training needs (agreeing on a flag, gathering states, waiting for rank 0).

Every function works unchanged in a single process (no process group): ranks are 0 of 1.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from sdeplug.errors import SdeplugError

#: How long a collective waits for the other ranks before it fails (a rank that died).
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


class DistributedError(SdeplugError, RuntimeError):
    """The processes of a run could not start together, or lost one another."""


def active() -> bool:
    """Whether a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files and prints reports (rank 0)."""
    return rank() == 0


#: The variables torchrun sets for each process that say where the process group meets.
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher with its environment) started this process."""
    return all(key in os.environ for key in RENDEZVOUS_VARIABLES)


def _check_launcher() -> None:
    """Refuse, in one line, a rendezvous environment of several processes that no torchrun
    agent set for this process: variables left over in a shell from an earlier torchrun job
    would make the command wait for ranks that never come. torchrun's agent marks its
    workers with TORCHELASTIC_RUN_ID."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        found = ", ".join(f"{key}={os.environ[key]}" for key in RENDEZVOUS_VARIABLES)
        raise DistributedError(
            f"the environment says this is one of several processes ({found}), but no torchrun started it "
            "(TORCHELASTIC_RUN_ID is not set): left over from an earlier torchrun job? Unset "
            f"{', '.join(RENDEZVOUS_VARIABLES)} to run in one process, or launch every rank with torchrun"
        )


def default_backend(device: torch.device | str) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device(device: torch.device | str) -> torch.device:
    """This rank's device: for ``cuda`` without an index, the GPU torchrun's LOCAL_RANK names."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def init_from_environment(
    device: torch.device | str = "cpu",
    backend: str | None = None,
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> bool:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT); return whether one with several processes is active. Without
    torchrun, or with a world of one, nothing is initialised and this is a single process."""
    if active():
        return True
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    _check_launcher()
    device = local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend or default_backend(device)
    try:
        dist.init_process_group(backend=backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"could not start the {backend!r} process group: {exc}") from exc
    return True


def shutdown(wait_for_all: bool = False) -> None:
    """Leave the process group if this process joined one; with ``wait_for_all``, once every
    rank has arrived, so that no rank tears down its connections while another still works
    (rank 0 writing reports): gloo may abort a process whose peer vanished mid-run."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            barrier()
        dist.destroy_process_group()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is true on any rank (one all-reduce; every rank must call it)."""
    if not active():
        return flag
    value = torch.tensor([int(flag)], device=device)
    _collective(dist.all_reduce, value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a list of one in a single process)."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    _collective(dist.all_gather_object, gathered, obj)
    return gathered


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (n_i, ...) joined in rank order, on every rank (``rows`` itself in
    one process). Tensors travel as tensors (padded to the longest share), not pickled;
    with nccl they must be on this rank's GPU."""
    if not active():
        return rows
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.empty_like(count) for _ in range(world_size())]
    _collective(dist.all_gather, counts, count)
    longest = int(max(c.item() for c in counts))
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    shares = [torch.empty_like(padded) for _ in range(world_size())]
    _collective(dist.all_gather, shares, padded)
    return torch.cat([share[: int(c.item())] for share, c in zip(shares, counts)])


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    _collective(dist.broadcast_object_list, box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here."""
    if active():
        _collective(dist.barrier)


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the ranks (a copy; the input is left as it is)."""
    if not active():
        return tensor.clone()
    total = tensor.clone()
    _collective(dist.all_reduce, total, op=dist.ReduceOp.SUM)
    return total / world_size()


@contextmanager
def first_failure_stops_all() -> Iterator[None]:
    """Run a block that may fail on some ranks only (reading a checkpoint, taking a lock):
    every rank learns whether any failed, and all raise, so that none waits forever for one
    that gave up."""
    error: BaseException | None = None
    try:
        yield
    except SdeplugError as exc:
        error = exc
    failures = gather_objects(None if error is None else f"rank {rank()}: {error}")
    if error is not None:
        raise error
    reasons = [f for f in failures if f is not None]
    if reasons:
        raise DistributedError("another rank failed, so this one stops: " + "; ".join(reasons))


def check_same_everywhere(settings: dict[str, Any], what: str = "settings") -> None:
    """Refuse, on every rank alike, a run whose ranks were started with different ``settings``
    (a mapping of names to comparable values, such as hashes of each config section): they
    would train apart or wait for one another until the timeout."""
    if not active():
        return
    everyone = gather_objects(settings)
    for other_rank, other in enumerate(everyone):
        differ = sorted(key for key in everyone[0].keys() | other.keys() if everyone[0].get(key) != other.get(key))
        if differ:
            raise DistributedError(
                f"the {world_size()} processes were started with different {what}: {', '.join(differ)} differ "
                f"between rank 0 and rank {other_rank}; start every rank with the same config, options and data"
            )


#: Words with which gloo and nccl report a peer that went away, wherever the error surfaces
#: (a collective of sdeplug's, or DDP's gradient all-reduce inside backward()).
_LOST_PEER = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timed out")


def lost_peer(exc: BaseException) -> DistributedError | None:
    """The one-line error for a RuntimeError that says another rank went away, or None when
    ``exc`` says something else (or no process group is active)."""
    if not active() or not isinstance(exc, RuntimeError) or isinstance(exc, SdeplugError):
        return None
    text = str(exc)
    if not isinstance(exc, dist.DistError) and not any(word in text.lower() for word in _LOST_PEER):
        return None
    return _lost_peer_error(exc)


def _lost_peer_error(exc: BaseException) -> DistributedError:
    text = str(exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    return DistributedError(
        f"rank {rank()} of {world_size()} lost the other processes (one died or stopped answering within the "
        f"timeout): {first[:300]}"
    )


def _collective(collective, *args, **kwargs) -> None:
    """Run a collective; a rank that died or timed out is one clear error, not a hang."""
    try:
        collective(*args, **kwargs)
    except RuntimeError as exc:  # gloo and nccl report a lost peer or a timeout so
        raise _lost_peer_error(exc) from exc
