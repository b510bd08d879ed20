"""Distributed setup from torchrun's environment, and the two ways we wrap a model: DDP and FSDP2.

One process (`python train.py`) and torchrun (`torchrun --nproc_per_node=N train.py`, multi-node with
`--nnodes --node_rank --rdzv_endpoint`) run the same code: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK,
and we start a process group only when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU).
"""
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from dpo.errors import PeerFailed, UserError


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Read torchrun's environment, pick the device, start the process group if there is more than one rank."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return Dist(rank, world_size, local_rank, dev)


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: dict[str, torch.Tensor], weights: torch.Tensor | None = None) -> dict[str, float]:
    """Average scalars over ranks. `values[k]` are sums over this rank's examples and `weights` their count,
    so ranks holding different numbers of examples still give the exact mean over all examples."""
    keys = sorted(values)
    device = values[keys[0]].device
    total = weights.float().reshape(()).to(device) if weights is not None else torch.ones((), device=device)
    stacked = torch.stack([values[k].detach().float().reshape(()).to(device) for k in keys] + [total])
    if dist.is_initialized():
        stacked = stacked.to(_comm_device())
        dist.all_reduce(stacked)
    total = stacked[-1].item()
    return {k: v / total for k, v in zip(keys, stacked[:-1].tolist())}


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_objects(items: list) -> list:
    """Every rank's list concatenated in rank order (all ranks call it; the same list on every rank)."""
    if not dist.is_initialized():
        return items
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


@contextlib.contextmanager
def fail_together():
    """Start-up work that may fail on some ranks only (it must hold no collective): afterwards every rank
    knows whether any failed, and all stop. The lowest failing rank raises its own error, the one the user
    sees; the others raise PeerFailed (quiet). Without a process group errors pass through as they are."""
    error = None
    try:
        yield
    except (UserError, OSError) as e:
        if not dist.is_initialized():
            raise
        error = e
    if not dist.is_initialized():
        return
    world, rank = dist.get_world_size(), dist.get_rank()
    first = torch.tensor(rank if error is not None else world, device=_comm_device())
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    if first.item() == world:
        return
    if error is not None and first.item() == rank:
        raise error
    raise PeerFailed(f"rank {first.item()} failed")


def barrier():
    if dist.is_initialized():
        dist.barrier()


def wrap(model: nn.Module, mode: str, ctx: Dist, *, mixed_precision: str = "none", trainable: bool = True,
         activation_checkpointing: bool = False, cpu_offload: bool = False) -> nn.Module:
    """Wrap for data parallelism. mode: none | ddp | fsdp.

    fsdp = FSDP2 `fully_shard` on every transformer block and then on the root, so each rank holds 1/N of
    the parameters, gradients and optimizer state. The weights come from rank 0 (the other ranks may pass
    a model built on the meta device, so host memory does not grow with the number of ranks); with mixed_precision
    bf16 (fp16) the forward/backward run in bf16 (fp16) while parameters and the gradient reduction stay fp32. The frozen reference model (trainable=False)
    is sharded the same way under fsdp and left unwrapped under ddp (it has no gradients to sync)."""
    model.activation_checkpointing = activation_checkpointing and trainable
    if mode == "ddp":
        if not trainable:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
        # Only rank 0 holds real weights (the other ranks may build the model on the meta device): keep them
        # aside, shard, allocate the shards, then broadcast rank 0's weights shard by shard.
        full_state = model.state_dict() if ctx.is_main else {}
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
        mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
        offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
        # an explicit mesh on our device type: left alone, FSDP2 picks CUDA whenever it is available,
        # even for a gloo run on CPU
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp, offload_policy=offload)
        fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
        model.to_empty(device="cpu" if cpu_offload else ctx.device)
        set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True,
                                                                         broadcast_from_rank0=True))
        gpt = getattr(model, "backbone", model)  # a reward model holds its GPT as .backbone
        gpt.reset_buffers(ctx.device)  # rotary frequencies are not in the state dict
        return model
    if mode != "none":
        raise ValueError(f"train.parallel: expected none | ddp | fsdp, got {mode!r}")
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying GPT (DDP keeps it in .module; FSDP2 shards in place, so the model is itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a global batch."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    yield


@contextlib.contextmanager
def unsharded_for_generation(model: nn.Module):
    """Under FSDP2, gather each block's parameters once for the whole generation instead of once per token
    (per forward), and without collectives in the token loop, so ranks may stop after different numbers
    of tokens without hanging. A no-op for unsharded models."""
    from torch.distributed.fsdp import FSDPModule
    fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in fsdp_modules:
        m.unshard()
        _set_reshard_after_forward(m, False)
    try:
        yield
    finally:
        for m in fsdp_modules:
            m.reshard()
            # blocks reshard after forward in training; the root keeps FSDP2's default (it does not)
            _set_reshard_after_forward(m, m is not model)


def _set_reshard_after_forward(m: nn.Module, reshard: bool) -> None:
    """m.set_reshard_after_forward(reshard, recurse=False). torch 2.6 and 2.7 lack it: there the setting is the
    mesh the module's parameter group reshards to after forward (None: the parameters stay whole)."""
    if hasattr(m, "set_reshard_after_forward"):
        m.set_reshard_after_forward(reshard, recurse=False)
    elif (group := m._get_fsdp_state()._fsdp_param_group) is not None:
        group.post_forward_mesh_info = group.mesh_info if reshard else None
