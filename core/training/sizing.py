"""Training defaults that follow the model's size and the device's memory.

`plan` (core/training/config.py) asks here for what a TrainConfig leaves automatic: the
learning rate and the step cap by parameter count, and the activation budget that sizes the
micro-batch (and so the gradient accumulation and whether layers are checkpointed) by the
memory the device has free once the model is loaded. docs/training.md has the table and the
reasons.

Parameters are counted on the model built from its config on the meta device
(core/memory_fit.py), so a config is enough: no weights are read.
"""

from __future__ import annotations

# (below this many parameters, peak learning rate) for LoRA r=16, alpha=32 on all linear
# layers. Smaller models need larger steps to move: 1e-3 was measured on SmolLM2-135M
# (bench/train_lr_probe.py: loss 3.79 -> 0.42 in 20 steps, 2e-4 reached only 2.10).
# Larger ones overshoot with it; 2e-4 is the QLoRA paper's setting for 7B and 13B, 1e-4 its
# setting for 33B and 65B, and the steps between follow the usual LoRA practice.
LR_BY_SIZE = ((0.3e9, 1e-3), (1e9, 5e-4), (3e9, 3e-4), (10e9, 2e-4), (float("inf"), 1e-4))
LR_UNKNOWN = 1e-3  # no model config (tests on tiny models): the smallest tier

# (below this many parameters, automatic step cap on the CPU, on CUDA). A CPU step costs
# roughly in proportion to the parameters: 150 steps of the embedded model take about 10
# minutes on 2 cores, so larger models get fewer (larger models also move a voice in fewer
# steps). A GPU step of an 8B model in NF4 takes a few seconds: a longer cap still ends soon.
STEP_CAP = ((0.3e9, 150, 300), (1e9, 100, 300), (3e9, 60, 250), (10e9, 40, 200), (float("inf"), 30, 150))
STEP_CAP_UNKNOWN = 150

# The share of the free memory one micro-batch's activations may take, and its bounds in MB.
# On the CPU a step costs about the same per token whatever the micro-batch, so memory is
# better left to the serving app (chat goes on while training) and the system: an eighth,
# and at most 1.5 GB (SmolLM2-135M then trains in micro-batches of 4 at about 2.2 GB peak
# RSS, inside issue 18's 2.5 GB; one forward of 8 with LoRA dropout peaked at 6.2 GB).
# On CUDA larger micro-batches keep the GPU busy; the other half is for the optimizer, the
# evaluation pass and allocator fragmentation.
BUDGET = {"cpu": (0.125, 512, 1536), "cuda": (0.5, 1024, 65536)}
BUDGET_UNKNOWN = {"cpu": 1024, "cuda": 4096}  # free memory unknown: the old fixed budgets


def _tier(params: int | None, table, column: int = 1):
    if params is None:
        return None
    for row in table:
        if params < row[0]:
            return row[column]
    return table[-1][column]


def parameter_count(model_config) -> int:
    """Every parameter of the model `model_config` describes (a tied head counted once)."""
    from core.memory_fit import estimate

    return estimate(model_config, context=1).params


def learning_rate_for(params: int | None) -> float:
    return _tier(params, LR_BY_SIZE) or LR_UNKNOWN


def step_cap_for(params: int | None, device: str) -> int:
    return _tier(params, STEP_CAP, 2 if device == "cuda" else 1) or STEP_CAP_UNKNOWN


def free_mb(device: str) -> int | None:
    """The device's free memory now, in MB (CUDA: free on GPU 0; CPU: RAM available, or what
    the container's limit leaves); None when it cannot be read."""
    from core.memory_fit import free_bytes

    try:
        return free_bytes(device)[0] >> 20
    except Exception:  # no driver, no psutil: the fixed budgets apply
        return None


def memory_budget_mb(device: str, free: int | None) -> int:
    """MB one micro-batch's activations may take, given `free` MB on `device` (None: unknown)."""
    kind = "cuda" if device == "cuda" else "cpu"
    if free is None:
        return BUDGET_UNKNOWN[kind]
    share, low, high = BUDGET[kind]
    return int(min(high, max(low, share * free)))
