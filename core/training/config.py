"""The training configuration: one dataclass whose defaults are the recommendation, and the
plan that turns "auto" fields into numbers once the data size is known.

Every field has a comment saying what it does and why its default is what it is. `None`
means "choose from the data" (see `plan`); the chosen numbers are recorded beside the
adapter in `training_config.json`. The UI shows the fields in `ADVANCED` under an
"Advanced" fold; the rest are decided for the user.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from core.errors import ChorusError
from core.training.sizing import (
    LR_UNKNOWN,
    STEP_CAP_UNKNOWN,
    learning_rate_for,
    memory_budget_mb,
    parameter_count,
    step_cap_for,
)
from core.training.sizing import free_mb as sizing_free_mb

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfigInvalid(ChorusError):
    """A training setting out of range; the message names the field and the allowed range."""


@dataclass
class TrainConfig:
    # --- LoRA -----------------------------------------------------------------
    rank: int = 16
    """LoRA rank r. 16 is the common QLoRA choice; the adapter is ~20 MB on SmolLM2-135M."""
    alpha: float = 32.0
    """LoRA alpha; the update is scaled by alpha / rank (2.0 with the defaults)."""
    dropout: float = 0.0
    """Dropout on the LoRA input during training (none at evaluation or serving). 0, peft's
    own default: on the CPU each LoRA layer's input mask (`bernoulli_`) took 22% of a step
    and the masked copies 0.6 of the 2.1 GB peak (SmolLM2-135M, micro-batch 2 x 192:
    1.19 s and 2.1 GB per micro-batch with 0.05, 0.88 s and 1.55 GB without)."""
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    """Which linear layers get adapters: all of attention and MLP, as QLoRA recommends."""

    # --- optimisation ---------------------------------------------------------
    learning_rate: float | None = None
    """Peak learning rate. None: by the model's size (`LR_BY_SIZE`, docs/training.md): 1e-3
    below 0.3B parameters, measured on the embedded model outside the CPU trap
    (bench/train_lr_probe.py; r=16, alpha=32, batch 8, cosine: held-out loss 3.79 -> 0.42 at
    step 20 with 1e-3, against 3.79 -> 2.10 with 2e-4), down to 2e-4 for 3-10B (QLoRA's 7B
    setting) and 1e-4 above."""
    batch_size: int = 8
    """Examples per optimizer step (split into micro-batches by `micro_batch_size`)."""
    micro_batch_size: int | None = None
    """Examples per forward pass (gradients accumulate over the batch). None: the largest
    divisor of batch_size whose activations fit in `memory_budget_mb` (see `plan`)."""
    memory_budget_mb: int | None = None
    """Memory one micro-batch's activations may take, in MB, when the micro-batch is chosen
    automatically. None: a share of the device's free memory once the model is loaded (an
    eighth on the CPU, which the serving app and the system share, within [512, 4096]; half
    on CUDA, within [1024, 65536]); 1024 on the CPU and 4096 on CUDA when it is unknown."""
    max_steps: int | None = None
    """Optimizer steps. None: `epochs` passes over the data, clamped to
    [min_auto_steps, max_auto_steps] so the default finishes on a laptop CPU."""
    epochs: float = 2.0
    """Passes over the training examples when max_steps is None."""
    min_auto_steps: int = 20
    """Fewest automatic steps (small exports still move the voice)."""
    max_auto_steps: int | None = None
    """Most automatic steps. None: by model size and device (`STEP_CAP`): 150 for the
    embedded model on a CPU (~10 minutes at ~4 s per step on 2 cores), fewer for larger
    models whose steps take longer there; more on CUDA."""
    warmup_ratio: float = 0.05
    """Fraction of the steps spent warming the learning rate up from 0 (at least 1 step)."""
    lr_scheduler: str = "cosine"
    """Learning-rate decay after warmup: cosine to 0 (or "linear", "constant")."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA matrices (0, as in the QLoRA paper)."""
    max_grad_norm: float = 1.0
    """Gradient clipping: the global gradient norm is clipped to this."""
    gradient_checkpointing: bool | None = None
    """Recompute activations in the backward pass. None: when the memory budget needs it: on
    the CPU when one example's activations do not fit (a smaller micro-batch bounds memory
    without the extra forward otherwise), on CUDA when the whole batch does not fit in one
    pass (larger micro-batches keep the GPU busy). Without the model's config: on CUDA only."""

    # --- data -----------------------------------------------------------------
    max_seq_len: int | None = None
    """Tokens per example (older turns are dropped first). None: the 95th percentile of
    the examples' lengths, rounded up to 64, within [128, 1024]."""
    max_turns: int = 16
    """Most turns (user and assistant) in one training example."""
    val_fraction: float = 0.1
    """Share of the examples, the most recent ones, held out for evaluation."""
    scrub: bool = False
    """Replace URLs, e-mail addresses and phone numbers before training."""
    keep_labels: list[str] = field(default_factory=list)
    """Exact message bodies the import's repetition guard set aside as placeholders that
    are someone's words after all (`inspect --keep`, `train --keep`): they are trained on."""
    max_eval_examples: int = 100
    """Held-out examples used for the loss (the most recent ones); bounds evaluation time."""

    # --- bookkeeping ------------------------------------------------------------
    eval_every: int | None = None
    """Held-out loss every N steps (the validation curve). None: about 8 points per run."""
    save_every: int | None = None
    """Checkpoint every N steps, for resume after a crash or a kill. None: about every
    10% of the run, at least every 5 and at most every 25 steps."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (older ones are deleted); at least 2, so a kill while the
    newest is written still leaves a complete one."""
    samples: int = 3
    """Held-out prompts answered by the base and by the adapter, side by side, at the end."""
    sample_max_new_tokens: int = 48
    """Length of each sample reply."""
    voice_k: int = 24
    """Held-out contexts the voice-match measure answers with the base + card and with the
    adapter (core/training/voice.py); 0 turns the measure off. 24 keeps the 95% interval
    near +-0.2 while the batched replies cost a fraction of the training time."""
    seed: int = 0
    """Seed for data order, LoRA initialisation and the sample replies."""
    nice: int = 10
    """Scheduling niceness of the training process, so that chat stays responsive."""

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise TrainConfigInvalid(msg)

        self.rank = int(self.rank)
        need(1 <= self.rank <= 256, "LoRA rank must be between 1 and 256.")
        self.alpha = float(self.alpha)
        need(0 < self.alpha <= 1024, "LoRA alpha must be above 0 and at most 1024.")
        need(0 <= self.dropout < 1, "LoRA dropout must be in [0, 1).")
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        need(bool(self.target_modules), "Name at least one target module (for example q_proj).")
        if isinstance(self.keep_labels, str):
            self.keep_labels = [self.keep_labels]
        need(all(isinstance(k, str) for k in self.keep_labels), "keep_labels must be a list of message bodies.")
        self.keep_labels = list(self.keep_labels)
        if self.learning_rate is not None:
            self.learning_rate = float(self.learning_rate)
            need(1e-7 <= self.learning_rate <= 1e-2, "The learning rate must be between 1e-7 and 1e-2.")
        self.batch_size = int(self.batch_size)
        need(1 <= self.batch_size <= 512, "Batch size must be between 1 and 512.")
        if self.micro_batch_size is not None:
            self.micro_batch_size = int(self.micro_batch_size)
            need(
                1 <= self.micro_batch_size <= self.batch_size and self.batch_size % self.micro_batch_size == 0,
                "Micro-batch size must divide the batch size.",
            )
        if self.memory_budget_mb is not None:
            self.memory_budget_mb = int(self.memory_budget_mb)
            need(64 <= self.memory_budget_mb <= 1_048_576, "The memory budget must be between 64 MB and 1 TB.")
        if self.max_steps is not None:
            self.max_steps = int(self.max_steps)
            need(1 <= self.max_steps <= 100_000, "Steps must be between 1 and 100,000.")
        need(0 < self.epochs <= 100, "Epochs must be above 0 and at most 100.")
        need(1 <= self.min_auto_steps <= (self.max_auto_steps or self.min_auto_steps),
             "min_auto_steps must be at least 1 and at most max_auto_steps.")
        need(0 <= self.warmup_ratio < 0.5, "Warmup ratio must be in [0, 0.5).")
        need(self.lr_scheduler in ("cosine", "linear", "constant"), "The scheduler must be cosine, linear or constant.")
        need(0 <= self.weight_decay <= 1, "Weight decay must be in [0, 1].")
        need(self.max_grad_norm > 0, "Gradient clipping must be above 0.")
        if self.max_seq_len is not None:
            self.max_seq_len = int(self.max_seq_len)
            need(32 <= self.max_seq_len <= 8192, "Sequence length must be between 32 and 8192 tokens.")
        need(2 <= self.max_turns <= 200, "max_turns must be between 2 and 200.")
        need(0 < self.val_fraction < 0.5, "The held-out fraction must be above 0 and below 0.5.")
        need(self.max_eval_examples >= 1, "max_eval_examples must be at least 1.")
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, int(value))
                need(int(value) >= 1, f"{name} must be at least 1.")
        # Trainer deletes the oldest checkpoint as soon as the next one is written, before
        # Chorus marks that one complete: with one kept, a kill then would leave nothing.
        need(2 <= self.keep_checkpoints <= 20, "keep_checkpoints must be between 2 and 20: the previous checkpoint "
                                               "must stay until the next one is complete, so a kill can resume.")
        need(0 <= self.samples <= 20, "Samples must be between 0 and 20.")
        need(1 <= self.sample_max_new_tokens <= 512, "Sample length must be between 1 and 512 tokens.")
        self.voice_k = int(self.voice_k)
        need(0 <= self.voice_k <= 200, "voice_k must be between 0 (no voice measure) and 200.")
        need(0 <= self.nice <= 19, "nice must be between 0 and 19.")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "TrainConfig":
        """Build from a dict (UI form, JSON); unknown keys are an error, not silently dropped."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigInvalid(f"Unknown training settings: {', '.join(unknown)}.")
        return cls(**data)


# The fields the UI shows under "Advanced"; the others keep their defaults.
ADVANCED = ("max_steps", "epochs", "rank", "alpha", "learning_rate", "batch_size", "max_seq_len", "dropout", "val_fraction", "scrub", "seed")


@dataclass
class Plan:
    """The numbers a run actually uses, after the automatic choices."""

    steps: int
    epochs: float  # how many passes over the data `steps` amounts to
    batch_size: int
    micro_batch_size: int
    grad_accum: int
    max_seq_len: int
    warmup_steps: int
    eval_every: int
    save_every: int
    gradient_checkpointing: bool
    optimizer: str
    train_examples: int
    eval_examples: int
    learning_rate: float = LR_UNKNOWN  # the peak learning rate (set or by model size)
    step_cap: int = STEP_CAP_UNKNOWN  # most automatic steps (set or by model size and device)
    params: int | None = None  # the model's parameters, when its config was given
    memory_budget_mb: int | None = None  # what one micro-batch's activations may take, when sized
    free_mb: int | None = None  # the device's free memory the budget was taken from

    def as_dict(self) -> dict:
        return asdict(self)


def auto_seq_len(lengths: list[int]) -> int:
    """95th percentile of the example lengths, rounded up to 64, within [128, 1024]."""
    if not lengths:
        return 256
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return int(min(1024, max(128, math.ceil(p95 / 64) * 64)))


def activation_bytes_per_token(model_config, *, checkpointing: bool, dropout: bool = False) -> int:
    """What one token of a micro-batch keeps for the backward pass, in bytes, for a Llama-style
    decoder with NF4 layers and fp32 LoRA on all linear layers (the output head and loss are
    chunked, core/training/loss.py, so the vocabulary does not count).

    Per layer, without LoRA dropout: about 32 bytes per hidden unit (bf16 activations of
    attention and the fp32 norms) and 14 per MLP unit (bf16 MLP activations); LoRA keeps
    only its small rank-r activations, since core/training/lora_memory.py reuses the layer's
    bf16 input instead of peft's fp32 copy of it. Measured on SmolLM2-135M (hidden 576, MLP
    1536, 30 layers), the rise in peak RSS from micro-batches of 4 to 8 x 192 tokens: 1.07 MB
    per token (less with the worker's fixed mmap threshold, core/training/memory.py);
    this gives 1.2. LoRA dropout sends peft's own forward, with its fp32 copies, the dropout
    output and mask: 80 per hidden unit and 21 per MLP unit (measured 3.0 MB per token, this
    gives 2.35; 2.4 measured at micro-batch 8). With gradient checkpointing each layer keeps
    only its bf16 input and one layer's activations exist at a time. Since the norms, the
    MLP's activation and the attention weights are recomputed (core/training/lean_blocks.py,
    attention.py) a forward keeps about a quarter less than this says: the estimate errs
    on the safe side, towards smaller micro-batches.
    """
    hidden = int(getattr(model_config, "hidden_size"))
    mlp = int(getattr(model_config, "intermediate_size", None) or 4 * hidden)
    layers = int(getattr(model_config, "num_hidden_layers"))
    per_layer = (80 if dropout else 32) * hidden + (21 if dropout else 14) * mlp
    kept = layers * 2 * hidden + per_layer if checkpointing else layers * per_layer
    # A model loaded in fp32 (core.device.training_dtype on CPUs without fast bf16) keeps
    # its activations at twice the bytes; the parts already in fp32 make this err safe.
    return kept * 2 if str(getattr(model_config, "dtype", "")).endswith("float32") else kept


def micro_batch_for(batch: int, seq_len: int, per_token: int, budget_mb: int) -> int:
    """The largest divisor of `batch` whose activations (micro x seq_len x per_token) fit the budget (at least 1)."""
    fits = max(1, (budget_mb << 20) // max(1, seq_len * per_token))
    return max(d for d in range(1, batch + 1) if batch % d == 0 and d <= fits)


def plan(config: TrainConfig, n_train: int, n_eval: int, lengths: list[int], device: str, model_config=None,
         *, free_mb: int | None = None) -> Plan:
    """Resolve the automatic fields for `n_train` examples whose token lengths are `lengths`.

    `model_config` (the model's transformers config) sets the learning rate and the step cap
    by the model's size, and sizes the micro-batch and checkpointing from a memory budget
    taken from `free_mb` (the device's free memory with the model loaded, in MB; measured
    when None). Without it: the smallest model's learning rate and cap, the whole batch in
    one pass unless the config names a micro-batch, checkpointing on CUDA only."""
    if n_train < 1:
        raise TrainConfigInvalid("There are no training examples.")
    sized = model_config is not None and hasattr(model_config, "to_dict")  # a real config, not a stand-in
    params = parameter_count(model_config) if sized else None
    batch = config.batch_size
    per_epoch = math.ceil(n_train / batch)
    cap = config.max_auto_steps or step_cap_for(params, device)
    if config.max_steps is not None:
        steps = config.max_steps
    else:
        steps = min(cap, max(config.min_auto_steps, math.ceil(config.epochs * per_epoch)))
    seq = config.max_seq_len or auto_seq_len(lengths)
    gc = config.gradient_checkpointing if config.gradient_checkpointing is not None else device == "cuda"
    micro = config.micro_batch_size or batch
    budget = None
    if model_config is not None and (config.micro_batch_size is None or config.gradient_checkpointing is None):
        if config.memory_budget_mb is None and free_mb is None:
            free_mb = sizing_free_mb(device)
        budget = config.memory_budget_mb or memory_budget_mb(device, free_mb)
        gc, micro = _fit_batch(config, batch, seq, model_config, budget, device)
    eval_every = config.eval_every or max(1, math.ceil(steps / 8))
    save_every = config.save_every or min(25, max(5, math.ceil(steps / 10)))
    return Plan(
        steps=steps,
        epochs=round(steps * batch / n_train, 2),
        batch_size=batch,
        micro_batch_size=micro,
        grad_accum=batch // micro,
        max_seq_len=seq,
        warmup_steps=max(1, round(config.warmup_ratio * steps)) if config.warmup_ratio > 0 else 0,
        eval_every=eval_every,
        save_every=save_every,
        gradient_checkpointing=bool(gc),
        optimizer="paged_adamw_8bit" if device == "cuda" else "adamw_torch",
        train_examples=n_train,
        eval_examples=min(n_eval, config.max_eval_examples),
        learning_rate=config.learning_rate or learning_rate_for(params),
        step_cap=cap,
        params=params,
        memory_budget_mb=budget,
        free_mb=free_mb,
    )


def _fit_batch(config: TrainConfig, batch: int, seq: int, model_config, budget: int, device: str) -> tuple[bool, int]:
    """(gradient checkpointing, micro-batch) for `budget` MB of activations. Checkpointing
    (a second forward per step) is chosen only where memory asks for it: on the CPU when one
    example does not fit without it, on CUDA when the whole batch does not fit in one pass."""
    budget_bytes = budget << 20
    gc = config.gradient_checkpointing
    if gc is None:
        plain = seq * activation_bytes_per_token(model_config, checkpointing=False, dropout=config.dropout > 0)
        gc = plain > budget_bytes if device != "cuda" else batch * plain > budget_bytes
    micro = config.micro_batch_size or micro_batch_for(
        batch, seq, activation_bytes_per_token(model_config, checkpointing=bool(gc), dropout=config.dropout > 0), budget)
    return bool(gc), micro
