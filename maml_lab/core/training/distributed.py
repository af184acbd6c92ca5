"""Data-parallel meta-training over torch.distributed: each process adapts its share of a meta-batch.

Launched by `torchrun --nproc-per-node P -m maml_lab train ...`: every rank draws the same global meta-batch
from the same seeded generator and keeps its contiguous slice (`World.shard`); the algorithms all-reduce their
meta-gradients (Reptile: its mean parameter delta) to the global mean (`World.allreduce_weighted_`), so the
parameters stay identical on every rank and equal, up to rounding, those of one process running the whole
batch. NCCL on GPUs (one process per GPU), gloo on CPU. A collective that fails or times out raises
RankLostError instead of hanging.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..tasks.base import TaskBatch

# Metrics that are not per-task means: the same on every rank, so they are kept as they are.
SHARED_METRICS = frozenset({"epsilon", "iteration", "meta_lr"})
DEFAULT_TIMEOUT_S = 120.0


class RankLostError(RuntimeError):
    """A collective failed or timed out: another rank died or stopped responding; the job cannot go on."""


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The gist of a backend error: its first sentence, without gloo's "[source.cc:123]" prefix."""
    text = str(exc).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text[0] if text else "").split(". ")[0].strip()
    line = line or type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class World:
    """This process's place in the job: rank among `size` processes, its GPU (`local_rank`), backend, device."""

    rank: int
    size: int
    local_rank: int = 0
    backend: str = "gloo"
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, checkpoints and exports."""
        return self.rank == 0

    # -- splitting the meta-batch ---------------------------------------------------------------------------
    def bounds(self, global_count: int) -> tuple[int, int]:
        """[start, stop) of this rank's tasks in a global batch of `global_count`: contiguous, sizes differ by at
        most one (the first `global_count % size` ranks take one more). ValueError if a rank would get none."""
        global_count = int(global_count)
        if global_count < self.size:
            raise ValueError(f"meta-batch size {global_count} is smaller than the world size {self.size}: every "
                             f"process needs at least one task (use a meta-batch of at least {self.size}, or fewer "
                             f"processes)")
        base, extra = divmod(global_count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def local_count(self, global_count: int) -> int:
        start, stop = self.bounds(global_count)
        return stop - start

    def local_weight(self, global_count: int) -> float:
        """This rank's share of the global batch: local tasks / global tasks (the weights sum to 1)."""
        return self.local_count(global_count) / int(global_count)

    def shard(self, batch: TaskBatch) -> TaskBatch:
        """This rank's contiguous slice of the global `batch` (per-task `info` tensors are sliced alike)."""
        count = batch.num_tasks
        start, stop = self.bounds(count)
        sl = slice(start, stop)
        info = {k: v[sl] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == count else v
                for k, v in batch.info.items()}
        return TaskBatch(batch.x_support[sl], batch.y_support[sl], batch.x_query[sl], batch.y_query[sl], info)

    # -- collectives ------------------------------------------------------------------------------------------
    def _lost(self, what: str, exc: BaseException) -> RankLostError:
        return RankLostError(f"rank {self.rank} of {self.size}: another rank stopped responding during {what} "
                             f"({_first_line(exc)}); the job was ended")

    def allreduce_weighted_(self, tensors: Sequence[torch.Tensor], weight: float) -> None:
        """In place: every tensor becomes sum over ranks of weight_r * tensor_r (the global mean when each rank
        passes its `local_weight`). One flattened buffer per dtype and device, so one collective for all of them.

        A list gets its entries replaced by contiguous views of the reduced buffer (no copy back; autograd may hand
        out gradients with a transposed layout); the tensors of a tuple are overwritten instead.
        """
        if not tensors:
            return
        if self.size == 1:
            torch._foreach_mul_(list(tensors), float(weight))
            return
        import torch.distributed as dist

        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((t.dtype, t.device), []).append(i)
        try:
            for indices in groups.values():
                flat = torch.cat([tensors[i].reshape(-1) for i in indices])
                flat.mul_(float(weight))
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                offset = 0
                for i in indices:
                    t = tensors[i]
                    view = flat[offset:offset + t.numel()].view(t.shape)
                    offset += t.numel()
                    if isinstance(tensors, list):
                        tensors[i] = view
                    else:
                        t.copy_(view)
        except RuntimeError as exc:
            raise self._lost("the gradient all-reduce", exc) from exc

    def reduce_metrics(self, metrics: dict[str, float], weight: float,
                       shared: Iterable[str] = SHARED_METRICS) -> dict[str, float]:
        """Weighted global means of per-task-mean metrics (`weight`: this rank's `local_weight`); keys in `shared`
        (the same on every rank, e.g. Reptile's epsilon) are kept as they are. Every rank must pass the same keys.
        A NaN on any rank makes the mean NaN everywhere, so all ranks agree on divergence."""
        shared = set(shared)
        keys = sorted(k for k in metrics if k not in shared)
        out = dict(metrics)
        if not keys:
            return out
        values = [torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.device)]
        self.allreduce_weighted_(values, weight)
        for k, v in zip(keys, values[0].tolist()):
            out[k] = v
        return out

    def barrier(self) -> None:
        if self.size == 1:
            return
        import torch.distributed as dist

        try:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()
        except RuntimeError as exc:
            raise self._lost("a barrier", exc) from exc

    def close(self) -> None:
        """Leave the process group (safe to call twice, or after a RankLostError)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except RuntimeError:
                pass


def env_world_size(environ=None) -> int:
    """WORLD_SIZE as torchrun sets it (1 when absent)."""
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> World | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
    None when this is a single process.

    device "auto": NCCL with one GPU per process (cuda:LOCAL_RANK) when CUDA is available, else gloo on CPU;
    "cpu" forces gloo; "cuda" requires GPUs. `timeout_s` bounds every collective (and the rendezvous), so a dead
    or stuck rank ends the job with RankLostError instead of a hang.
    """
    size = env_world_size()
    if size <= 1:
        return None
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ValueError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: launch with torchrun "
                         f"(torchrun --nproc-per-node {size} -m maml_lab train ...)")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"the distributed timeout must be a positive number of seconds, got {timeout_s}")
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run a single process")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda"):
        raise ValueError(f"unknown device {device!r} for distributed training (use auto, cpu or cuda)")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available here (use auto or cpu)")
    if use_cuda:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"LOCAL_RANK {local_rank} but this node has {count} GPU(s): start at most {count} "
                             f"processes per node (--nproc-per-node {count})")
        torch.cuda.set_device(local_rank)
        # NCCL collectives are asynchronous: past the timeout, torch's NCCL watchdog ends this process (its
        # default TORCH_NCCL_ASYNC_ERROR_HANDLING) and torchrun then stops the other ranks
        backend, dev = "nccl", torch.device("cuda", local_rank)
    else:
        backend, dev = "gloo", torch.device("cpu")
    timeout = datetime.timedelta(seconds=float(timeout_s))
    kwargs = {"device_id": dev} if backend == "nccl" else {}
    try:
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timeout, **kwargs)
    except RuntimeError as exc:
        raise RankLostError(f"rank {rank} of {size}: could not join the process group at "
                            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:g} s "
                            f"({_first_line(exc)})") from exc
    return World(rank=rank, size=size, local_rank=local_rank, backend=backend, device=dev)
