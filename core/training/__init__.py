"""Persona training: QLoRA on the served base model, in a background process.

`service.TrainingService` is the entry point (start, status, cancel, resume, runs, poll);
`worker` is the training process; `config.TrainConfig` the settings; `qlora` the
trap-safe 4-bit model; `dataset`, `trainer`, `evaluate` the steps. See docs/training.md.
"""
