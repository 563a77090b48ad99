"""llama.cpp (llama-cpp-python) as the reference of tests and benchmarks; no engine imports this.

    llm = load_llama_cpp(path, n_ctx=512, n_threads=2)

NOTE: llama-cpp-python 0.3.36 segfaults in decode on CPUs with AMX (this project's Intel Xeon
machines), for every model, when it repacks weights into its "extra" CPU buffer types; with
weights in plain CPU buffers it runs. Llama() has no argument for that, so the default model
parameters it starts from are swapped for the duration of the load.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()


def load_llama_cpp(path: str, **kwargs):
    """llama_cpp.Llama(path, verbose=False, **kwargs) with weight repacking off."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    defaults = llama_module.llama_cpp.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    kwargs.setdefault("verbose", False)
    with _lock:
        llama_module.llama_cpp.llama_model_default_params = without_repacking
        try:
            return llama_cpp.Llama(str(path), **kwargs)
        finally:
            llama_module.llama_cpp.llama_model_default_params = defaults
