"""Run by tests/test_loss_ddp.py under ``accelerate launch --multi_gpu --num_processes 2`` (CPU, gloo)."""

import sys

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from modeling_georsclip.distributed import leave_process_group
from modeling_georsclip.testing import tiny_clip
from modeling_georsclip.training.loss import clip_loss


def batch(total: int):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(total, 3, 32, 32, generator=g)
    ids = torch.randint(0, 49406, (total, 12), generator=g)
    ids[:, 0], ids[:, -1] = 49406, 49407
    return pixels, ids


def loss_and_grads(model, logit_scale, pixels, ids, local_loss, backward):
    out = model(pixel_values=pixels, input_ids=ids)
    loss = clip_loss(out.image_embeds, out.text_embeds, logit_scale, local_loss=local_loss)
    backward(loss)
    return loss


if __name__ == "__main__":
    out_dir, per_rank = sys.argv[1], int(sys.argv[2])
    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    model = tiny_clip(seed=0).train()
    model = accelerator.prepare(model)
    core = accelerator.unwrap_model(model)
    pixels, ids = batch(per_rank * world)
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    for mode in ("local", "full"):
        model.zero_grad(set_to_none=True)
        loss = loss_and_grads(model, core.logit_scale, pixels[mine], ids[mine], mode == "local", accelerator.backward)
        losses = accelerator.gather(loss.detach()[None])
        if accelerator.is_main_process:
            tensors = {f"grad.{n}": p.grad.contiguous() for n, p in core.named_parameters() if p.grad is not None}
            tensors["loss"] = losses.mean().reshape(1)
            tensors["world_size"] = torch.tensor([world])
            tensors["distributed"] = torch.tensor([int(torch.distributed.is_initialized())])
            save_file(tensors, f"{out_dir}/ddp_{mode}.safetensors")
    leave_process_group()  # rank 1 finishes first; exiting with a live gloo group aborts it
