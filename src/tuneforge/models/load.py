"""Loading base models, and the one-off GGUF → safetensors conversion (trained runs: recipes/runs.py).

transformers reads GGUF files (`gguf_file=`) and dequantises them to float, which takes a while and cannot be
saved with `save_pretrained`. So the first load converts: the state dict goes to safetensors with the config
and tokenizer beside it, in a cache folder written under a temporary name and renamed when complete. Later
loads read that folder in about a second.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge.errors import ModelError
from tuneforge.models import templates
from tuneforge.models.registry import ModelSource, cache_root, offline_alternatives, resolve
from tuneforge.progress import Steps

CONVERTED_MARKER = "tuneforge-converted.json"
# Bumped when the converted folder's layout changes; older folders are converted again. 2: tied embeddings are
# stored as model.embed_tokens.weight (layout 1 kept lm_head.weight, which heads other than the LM head miss).
CONVERTED_LAYOUT = 2


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, possibly wrapped by peft
    tokenizer: Any
    name: str  # canonical name of the base model (alias, folder or hub id) as recorded in run configs
    source: ModelSource
    base_path: str  # what from_pretrained was given for the base (folder or hub id)
    template_origin: str  # "model", "config", or the name of the default template applied
    stop_token_ids: list[int] = field(default_factory=list)
    run_dir: Path | None = None  # set when a tuneforge run was loaded
    method: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


# --------------------------------------------------------------------------------------- devices and dtypes
def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run 2-3x faster than fp32 on such CPUs."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_inference(device: torch.device) -> bool:
    """Whether evaluation and generation run under bf16 autocast here: on CPUs with fast bf16 (2-3x faster
    matmuls); elsewhere in the weights' own dtypes."""
    return device.type == "cpu" and cpu_has_fast_bf16()


def inference_autocast(device: torch.device):
    """The autocast context of evaluation and generation (see autocast_inference)."""
    import contextlib

    return (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if autocast_inference(device)
        else contextlib.nullcontext()
    )


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


# ------------------------------------------------------------------------------------------ saving weights
def save_model_folder(model: nn.Module, out_dir: Path) -> None:
    """Write a from_pretrained-loadable folder. Works for GGUF-loaded models, which save_pretrained refuses."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    if hasattr(config, "quantization_config"):  # the GGUF marker; the weights are plain float now
        del config.quantization_config
    config.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    save_file(unique_tensors(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once. A tied LM head is stored under the input embedding's name, as
    transformers does: a model class without the LM head (sequence classification) or another runtime reads the
    embedding from there and would otherwise start from random embeddings."""
    state = model.state_dict()
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    preferred = {f"{n}.weight" for n, m in model.named_modules() if embed is not None and m is embed}
    kept: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key not in kept or name in preferred:
            kept[key] = name
    return {name: state[name].contiguous() for name in kept.values()}


def load_state_into(model: nn.Module, folder: Path) -> nn.Module:
    from safetensors.torch import load_model

    load_model(model, str(Path(folder) / "model.safetensors"), strict=False)
    return model


def attention_for(requested: str, device: torch.device, training: bool) -> str:
    """Resolve `auto` to SDPA, for training and generation alike. The training step swaps in its own causal
    attention on CPU where it applies (ops/fused_ops.py); `eager` (T x T probabilities kept for backward: 0.5 GB
    more at 512-token micro-batches on SmolLM2) is left alone when asked for by name. `training` is kept for
    kernels that differ by phase."""
    del device, training
    return "sdpa" if requested == "auto" else requested


def set_attention(model: nn.Module, impl: str) -> None:
    """Switch the attention kernel of a loaded model (also under a PEFT wrapper)."""
    base = model.get_base_model() if getattr(model, "peft_config", None) else model
    if getattr(base.config, "_attn_implementation", impl) != impl and hasattr(
        base, "set_attn_implementation"
    ):
        base.set_attn_implementation(impl)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (model.model.layers for Llama, Gemma, Qwen, Mistral ...)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best: nn.ModuleList | None = None
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and (n is None or len(mod) == n):
            if best is None or len(mod) > len(best):
                best = mod
    if best is None:
        raise ModelError("could not find the transformer layers of this model", "use method lora or full")
    return best


# ------------------------------------------------------------------------------------------ GGUF conversion
def _converted_dir(src: ModelSource) -> Path:
    if src.bundled is not None:
        key = f"{src.bundled.alias}-{src.bundled.version()}"
    else:
        st = src.path.stat()
        key = f"{src.path.stem}-{st.st_size}-{int(st.st_mtime)}"
    return cache_root() / "models" / f"{key}-layout{CONVERTED_LAYOUT}"


def ensure_converted(src: ModelSource, steps: Steps | None = None) -> Path:
    """Return a safetensors folder for a GGUF source, converting it on first use."""
    out = _converted_dir(src)
    if (out / CONVERTED_MARKER).is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    steps = steps or Steps(f"Preparing {src.display}")
    with steps:
        gguf = src.path
        if gguf is None:
            steps.step("locating the bundled GGUF file")
            gguf = src.bundled.locate()
            if gguf is None:
                raise ModelError(
                    f"the GGUF file of {src.display} is missing", f"reinstall: {src.bundled.install}"
                )
        # transformers shows its own tqdm bar while dequantising; route it into ours.
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        original_tqdm = getattr(gguf_utils, "tqdm", None)
        gguf_utils.tqdm = lambda it, desc=None, **kw: steps.track(
            it, "dequantising GGUF weights to float32 (once)"
        )
        try:
            steps.step("reading tokenizer from GGUF")
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            steps.step("dequantising GGUF weights to float32 (once)")
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        except Exception as e:  # a corrupt or unsupported file: say which, keep the cause
            raise ModelError(
                f"could not read {gguf}: {e}".splitlines()[0], "check the file or pick another model"
            ) from e
        finally:
            if original_tqdm is not None:
                gguf_utils.tqdm = original_tqdm
        steps.step("writing safetensors cache")
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_folder(model, tmp)
        tok.save_pretrained(tmp)
        marker = {"gguf": str(gguf), "source": src.name, "layout": CONVERTED_LAYOUT}
        (tmp / CONVERTED_MARKER).write_text(json.dumps(marker))
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first: its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
        # the same model converted in an older layout (a folder without the -layoutN suffix): ours replaces it
        shutil.rmtree(out.with_name(out.name.rsplit("-layout", 1)[0]), ignore_errors=True)
    return out


def quiet_transformers() -> None:
    """Our own progress display replaces transformers' per-tensor bars and advisory warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ---------------------------------------------------------------------------------------------- tokenizer
def load_tokenizer(path: str, chat_template: str | None = None) -> tuple[Any, str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    origin = "model"
    if chat_template:
        tok.chat_template = chat_template
        origin = "config"
    elif not tok.chat_template:
        name, tok.chat_template = templates.default_for(tok)
        origin = name
    if tok.pad_token is None:
        # Padding is masked out by attention and labels; reusing EOS is safe because labels come from our
        # own masks, never from "is this token the pad token".
        tok.pad_token = tok.eos_token
    return tok, origin


def tokenizer_for(model: str) -> Any:
    """The tokenizer (with its chat template) of a model alias, folder, GGUF file or hub id, as training loads it."""
    from tuneforge.models.registry import resolve
    from tuneforge.progress import Steps

    tok, _ = load_tokenizer(base_path_for(resolve(model), Steps(f"Preparing {model}")))
    return tok


# ------------------------------------------------------------------------------------------------ loading
def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine gets a clear error in seconds instead of minutes of retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_snapshot(hub_id: str, revision: str | None = None) -> str:
    """A local folder for a hub model: the HF cache if it already holds it, else a download."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return snapshot_download(hub_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        raise ModelError(
            f"cannot download {hub_id!r}: the Hugging Face hub is not reachable from this machine and the model is "
            "not in the local HF cache",
            f"use a bundled model ({offline_alternatives()}) or a local folder",
        )
    try:
        return snapshot_download(
            hub_id,
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except HfHubHTTPError as e:
        raise ModelError(
            f"could not download {hub_id!r}: {str(e).splitlines()[0]}",
            "check the model id (org/name) and your access to it",
        ) from None


def base_path_for(src: ModelSource, steps: Steps | None = None, revision: str | None = None) -> str:
    if src.kind == "gguf":
        return str(ensure_converted(src, steps))
    if src.kind == "hf_dir":
        return str(src.path)
    if src.kind == "hub":
        return hub_snapshot(src.hub_id, revision)
    raise ModelError(f"{src.name} is a run folder, not a base model", "give the run's base model instead")


def causal_lm_from_pretrained(path: str, src: ModelSource, dtype: torch.dtype, attn: str, **options: Any):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, **options)
    except OSError as e:
        if src.kind == "hub":
            raise ModelError(
                f"could not load {src.hub_id!r} from the Hugging Face hub ({str(e).splitlines()[0][:160]})",
                f"check the id and your network, or use a local model: {offline_alternatives()}, or a folder",
            ) from None
        raise ModelError(
            f"could not load the model in {path}: {str(e).splitlines()[0]}", "check the folder"
        ) from None


def load_model(
    name: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    attn_implementation: str = "auto",
    chat_template: str | None = None,
    revision: str | None = None,
    steps: Steps | None = None,
    load_options: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a base model with its tokenizer, ready for inference (a trained run: recipes/runs.py).
    `load_options`: extra from_pretrained arguments for a base model (a 4-bit quantization_config + device_map)."""
    quiet_transformers()
    src = resolve(name)
    dev = pick_device(device)
    attn_implementation = attention_for(attn_implementation, dev, training=False)
    tdtype = resolve_dtype(dtype, dev)
    if src.kind == "run":  # a run needs its method to load (recipes/runs.py: load_run)
        raise ModelError(
            f"{name} is a tuneforge run folder, not a base model", "give the run's base model instead"
        )

    path = base_path_for(src, steps, revision)
    tok, origin = load_tokenizer(path, chat_template)
    model = causal_lm_from_pretrained(path, src, tdtype, attn_implementation, **(load_options or {}))
    if "device_map" not in (load_options or {}):  # quantised weights are placed by their device_map
        model = model.to(dev)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tok,
        name=src.display,
        source=src,
        base_path=path,
        template_origin=origin,
        stop_token_ids=templates.stop_token_ids(tok),
    )
