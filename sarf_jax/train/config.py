"""Checks on a training config that need no devices, files or compilation.

`validate(config)` raises one ValueError naming the field, the value and what would be valid;
the loop calls it (and the device / dataset checks) before anything is written to the workdir.
Unknown keys are rejected earlier, by the locked ConfigDict that train.py loads.
"""

from __future__ import annotations

DTYPES = ("float32", "bfloat16")
INIT_WEIGHTS = ("params", "ema")


def _require(condition: bool, field: str, value, valid: str) -> None:
    if not condition:
        raise ValueError(f"config.{field} = {value!r} is invalid: must be {valid}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate(config) -> None:
    _require(bool(config.model.name), "model.name", config.model.name, "a registered model name")
    _require(_positive_int(config.batch_size), "batch_size", config.batch_size, "a positive int (global batch)")
    _require(_positive_int(config.total_steps), "total_steps", config.total_steps, "a positive int")
    _require(_positive_int(config.grad_accum_steps), "grad_accum_steps", config.grad_accum_steps, "a positive int")
    _require(
        config.batch_size % config.grad_accum_steps == 0,
        "grad_accum_steps",
        config.grad_accum_steps,
        f"a divisor of batch_size ({config.batch_size})",
    )
    _require(_positive_int(config.eval_batch_size), "eval_batch_size", config.eval_batch_size, "a positive int")
    _require(_positive_int(config.checkpoint_every), "checkpoint_every", config.checkpoint_every, "a positive int")
    _require(_positive_int(config.keep_checkpoints), "keep_checkpoints", config.keep_checkpoints, "a positive int")
    _require(_positive_int(config.log_every), "log_every", config.log_every, "a positive int")
    _require(
        isinstance(config.eval_every, int) and config.eval_every >= 0,
        "eval_every",
        config.eval_every,
        "a non-negative int (0: evaluate only at the end)",
    )
    _require(
        isinstance(config.profile_steps, int)
        and not isinstance(config.profile_steps, bool)
        and config.profile_steps >= 0,
        "profile_steps",
        config.profile_steps,
        "a non-negative int: the number of steps to trace into WORKDIR/profile/ (0: no profiling)",
    )
    opt = config.optimizer
    _require(opt.lr > 0, "optimizer.lr", opt.lr, "> 0")
    _require(0 <= opt.min_lr <= opt.lr, "optimizer.min_lr", opt.min_lr, f"in [0, optimizer.lr={opt.lr}]")
    _require(
        isinstance(opt.warmup_steps, int) and opt.warmup_steps >= 0,
        "optimizer.warmup_steps",
        opt.warmup_steps,
        "a non-negative int",
    )
    _require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, ">= 0")
    _require(0 <= opt.b1 < 1, "optimizer.b1", opt.b1, "in [0, 1)")
    _require(0 <= opt.b2 < 1, "optimizer.b2", opt.b2, "in [0, 1)")
    _require(opt.eps > 0, "optimizer.eps", opt.eps, "> 0")
    _require(opt.grad_clip >= 0, "optimizer.grad_clip", opt.grad_clip, ">= 0 (0: no clipping)")
    _require(0 <= config.label_smoothing < 1, "label_smoothing", config.label_smoothing, "in [0, 1)")
    _require(0 <= config.ema_decay < 1, "ema_decay", config.ema_decay, "in [0, 1) (0: no EMA)")
    _require(config.dtype in DTYPES, "dtype", config.dtype, f"one of {DTYPES}")
    _require(
        config.init_from_weights in INIT_WEIGHTS,
        "init_from_weights",
        config.init_from_weights,
        f"one of {INIT_WEIGHTS} (ema: a training workdir's EMA weights)",
    )
    data = config.data
    _require(_positive_int(data.image_size), "data.image_size", data.image_size, "a positive int")
    _require(0 < data.crop_min_scale <= 1, "data.crop_min_scale", data.crop_min_scale, "in (0, 1] (an area fraction)")
    _require(data.mixup_alpha >= 0, "data.mixup_alpha", data.mixup_alpha, ">= 0 (0: off)")
    _require(data.cutmix_alpha >= 0, "data.cutmix_alpha", data.cutmix_alpha, ">= 0 (0: off)")
    _require(0 < data.eval_crop_pct <= 1, "data.eval_crop_pct", data.eval_crop_pct, "in (0, 1]")
    _require(_positive_int(data.num_threads), "data.num_threads", data.num_threads, "a positive int")


def validate_parallelism(config, *, data_parallel: int, process_count: int) -> None:
    """Batch sizes must split evenly over the data-parallel devices and the hosts."""
    for field in ("batch_size", "eval_batch_size"):
        value = config[field]
        _require(
            value % data_parallel == 0,
            field,
            value,
            f"divisible by the data-parallel size mesh.data x mesh.fsdp = {data_parallel}",
        )
        _require(value % process_count == 0, field, value, f"divisible by the number of processes ({process_count})")
    micro = config.batch_size // config.grad_accum_steps
    _require(
        micro % data_parallel == 0,
        "grad_accum_steps",
        config.grad_accum_steps,
        f"such that batch_size / grad_accum_steps ({micro}) is divisible by the data-parallel size {data_parallel}",
    )
