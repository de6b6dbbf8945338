"""The KV-cache capacity M (tokens) from an inference server's start-up log.

Recognised lines (a log that states several different sizes, as tensor-parallel ranks or restarts may, gives the
smallest, with a warning naming them all: the server cannot hold more than its smallest cache):

- vLLM (V1 engine): ``GPU KV cache size: 1,234,567 tokens``;
- vLLM (V0 engine): ``# GPU blocks: 7282, # CPU blocks: 2048``, times the block size, which the log must also
  state (``block_size=16`` in the engine configuration line, ``'block_size': 16`` or ``--block-size 16``);
- SGLang: ``max_total_num_tokens=123456``.
"""

from __future__ import annotations

import os
import re
import warnings

from .._errors import LqsError

_KV_TOKENS = re.compile(r"GPU KV cache size:\s*([\d,_]+)\s*tokens", re.IGNORECASE)
_SGLANG = re.compile(r"max_total_num_tokens\s*[=:]\s*([\d,_]+)")
_BLOCKS = re.compile(r"#\s*GPU blocks:\s*([\d,_]+)", re.IGNORECASE)
_BLOCK_SIZE = re.compile(r"""(?:block_size['"]?\s*[=:]\s*|--block-size[=\s]+)(\d+)""")


def _int(m: re.Match, label: str) -> int:
    """The number of a matched line (thousands separators dropped); a line without digits is an LqsError."""
    digits = m.group(1).replace(",", "").replace("_", "")
    if not digits.isdigit():
        line = m.string[m.start():m.string.find("\n", m.start()) % (len(m.string) + 1)].strip()
        raise LqsError("server_log", label, f"states a KV-cache line without a number: {line[:120]!r}")
    return int(digits)


def kv_tokens_from_log(path) -> int:
    """M in tokens, read from a vLLM or SGLang server log (see the module docstring).

    A log that states none of the recognised lines, or states GPU blocks without a block size, raises
    :class:`lqs.LqsError` naming the file.
    """
    label = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(label, str) or not os.path.isfile(label):
        raise LqsError("server_log", path, "must be an existing server log file", "no such file")
    from .read import _open_text
    from .server_config import unwrap

    try:
        with _open_text(label) as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise LqsError("server_log", label, "must be a readable text log", type(e).__name__) from None
    return kv_tokens_from_text("\n".join(unwrap(text)), label)


def kv_tokens_from_text(text: str, label: str) -> int:
    """M in tokens from a log's text (hard-wrapped lines already joined)."""
    found = []  # (position in the log, tokens)
    for rx in (_KV_TOKENS, _SGLANG):
        found += [(m.start(), _int(m, label)) for m in rx.finditer(text)]
    blocks = list(_BLOCKS.finditer(text))
    if blocks and not found:
        sizes = list(_BLOCK_SIZE.finditer(text))
        if not sizes:
            raise LqsError("server_log", label, "states '# GPU blocks' but no block size (block_size=N)",
                           "pass M in tokens instead")
        found = [(b.start(), _int(b, label) * int(sizes[-1].group(1))) for b in blocks]
    if not found:
        raise LqsError("server_log", label, "must state the KV-cache size: vLLM 'GPU KV cache size: N tokens' or "
                       "'# GPU blocks: N' with block_size, or SGLang 'max_total_num_tokens=N'")
    stated = sorted({t for _, t in found})
    tokens = stated[0]
    if len(stated) > 1:
        warnings.warn(f"lqs: {label} states {len(stated)} different KV-cache sizes ({', '.join(f'{t:,}' for t in stated)}"
                      f" tokens); M = {tokens:,}, the smallest", stacklevel=3)
    if tokens < 1:
        raise LqsError("server_log", label, "states a KV-cache size of 0 tokens")
    return tokens
