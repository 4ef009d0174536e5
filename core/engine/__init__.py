"""The engine: one base model and the persona adapters it serves.

`base` holds the interface the services use and the types they exchange (no torch);
`local` is the NF4 engine in this process, with its adapter slots (`adapter_pool`,
`adapter_io`), lean LoRA forwards (`lora_fast`), decode attention (`attention`), the CPU
forwards of the base's 4-bit layers (`cpu_4bit`), the dtype it computes in (`compute_dtype`)
and the hooks it sets on the model (`model_hooks`); `remote` is the same interface served by an
OpenAI-compatible server (vLLM, or another Chorus), which it reaches over HTTP
(`remote_http`) and hands adapters through a shared folder (`publish`, `remote_adapters`).
Every local reply goes through the `scheduler`, which decodes the requests waiting for the
model as one batch (`decode`: the batched prefill and steps; `sampling`: each row's own
sampling settings and seed).
"""

from core.engine.base import DEFAULT_CONTEXT_LIMIT, AdapterRef, EngineBackend, GenerationSettings

__all__ = ["DEFAULT_CONTEXT_LIMIT", "AdapterRef", "EngineBackend", "GenerationSettings", "Engine"]


def __getattr__(name):
    # The local engine pulls in the model code; the page imports only the types above.
    if name == "Engine":
        from core.engine.local import Engine

        return Engine
    raise AttributeError(name)
