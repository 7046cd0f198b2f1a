"""llama.cpp itself, as runtimes load a GGUF file: the build inside the pinned `xllamacpp` wheel.

Two doors into the same library. `xllamacpp.Server` is llama-server in-process; the check uses it for what
only the server does, rendering the file's chat template with llama.cpp's own Jinja engine
(`/apply-template`, as `llama-server --jinja` and `llama-cli --jinja` do). The server answers with
log-probabilities of generated tokens only, so the rest goes through llama.cpp's C API, called with ctypes
on the same shared library: `llama_tokenize` (with special tokens parsed, as the server does), and
`llama_decode` with an output at every position for the logits of a whole prompt, then one token at a time
for a greedy continuation.

A dozen functions are bound, with the pinned version's signatures (llama.h; tests/test_gguf.py runs each).
The two parameter structs, whose layouts change between llama.cpp versions, are passed opaque, as llama.cpp's
own defaults; of the context's, only the first three fields (`n_ctx`, `n_batch`, `n_ubatch`) are set, after
the defaults of the first four confirm where they are.

`python -m r1ft.export.llamacpp REQUEST.json OUT_DIR` runs `observe` in a child process (what the export
does): a crash inside the C library then costs one check, not the job.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import sys
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_LIBRARY = "xllamacpp.abi3.so"
# llama_context_default_params(): n_ctx, n_batch, n_ubatch, n_seq_max
_CONTEXT_DEFAULTS = (512, 2048, 512, 1)
_MAX_THREADS = 16


class LlamaError(RuntimeError):
    """llama.cpp refused the file or the request."""


def library_path() -> Path:
    """The shared library inside the installed xllamacpp wheel."""
    import xllamacpp

    path = Path(xllamacpp.__file__).parent / _LIBRARY
    if not path.is_file():
        raise LlamaError(
            f"{path} is missing: reinstall the pinned xllamacpp (pip install -r requirements.lock)"
        )
    return path


class _Params(ctypes.Structure):
    """A parameter struct passed by value and never read field by field: room for any llama.cpp version's
    (80 and 168 bytes in the pinned one). Structs this size travel in memory, so spare bytes are harmless."""

    _fields_ = [("raw", ctypes.c_uint64 * 64)]


class _Batch(ctypes.Structure):
    _fields_ = [
        ("n_tokens", ctypes.c_int32),
        ("token", ctypes.POINTER(ctypes.c_int32)),
        ("embd", ctypes.c_void_p),
        ("pos", ctypes.POINTER(ctypes.c_int32)),
        ("n_seq_id", ctypes.POINTER(ctypes.c_int32)),
        ("seq_id", ctypes.POINTER(ctypes.POINTER(ctypes.c_int32))),
        ("logits", ctypes.POINTER(ctypes.c_int8)),
    ]


@functools.cache
def library() -> ctypes.CDLL:
    """The library with the signatures used here declared (llama.h)."""
    lib = ctypes.CDLL(str(library_path()))
    p, i32, u8p = ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)
    sigs = {
        "llama_backend_init": ([], None),
        "llama_model_default_params": ([], _Params),
        "llama_context_default_params": ([], _Params),
        "llama_model_load_from_file": ([ctypes.c_char_p, _Params], p),
        "llama_model_free": ([p], None),
        "llama_init_from_model": ([p, _Params], p),
        "llama_free": ([p], None),
        "llama_set_n_threads": ([p, i32, i32], None),
        "llama_model_get_vocab": ([p], p),
        "llama_vocab_n_tokens": ([p], i32),
        "llama_tokenize": ([p, ctypes.c_char_p, i32, u8p, i32, ctypes.c_bool, ctypes.c_bool], i32),
        "llama_batch_init": ([i32, i32, i32], _Batch),
        "llama_batch_free": ([_Batch], None),
        "llama_decode": ([p, _Batch], i32),
        "llama_get_logits_ith": ([p, i32], ctypes.POINTER(ctypes.c_float)),
        "llama_get_memory": ([p], p),
        "llama_memory_clear": ([p, ctypes.c_bool], None),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    lib.llama_backend_init()
    return lib


def threads() -> int:
    """CPU threads for llama.cpp: the cores this process may use, at most 16."""
    return max(1, min(len(os.sched_getaffinity(0)), _MAX_THREADS))


class Model:
    """A GGUF file loaded by llama.cpp, with one context of `n_ctx` positions (close it, or use `with`)."""

    def __init__(self, path: Path, n_ctx: int) -> None:
        lib = library()
        self._lib = lib
        self._model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self._model:
            raise LlamaError(f"llama.cpp could not load {Path(path).name}")
        params = lib.llama_context_default_params()
        head = (ctypes.c_uint32 * 4).from_buffer(params)
        if tuple(head) != _CONTEXT_DEFAULTS:
            self.close()
            raise LlamaError(
                f"llama_context_params starts {tuple(head)}, not {_CONTEXT_DEFAULTS}: this xllamacpp's llama.h "
                "differs from the one r1ft was written for; install the version pinned in requirements.lock"
            )
        head[0] = head[1] = head[2] = n_ctx
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            self.close()
            raise LlamaError(f"llama.cpp could not create a context of {n_ctx} tokens for {Path(path).name}")
        lib.llama_set_n_threads(self._ctx, threads(), threads())
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_ctx = n_ctx
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        """llama.cpp's ids for `text`, special tokens parsed; `add_special` adds BOS as the vocab says."""
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (ctypes.c_int32 * cap)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            raise LlamaError(f"llama_tokenize needed {-n} slots for {len(data)} bytes")
        return list(buf[:n])

    def logits(self, ids: list[int]):
        """The logits at every position of `ids`, decoded as one fresh sequence: float32 (len(ids), n_vocab)."""
        import numpy as np

        self._decode(ids, start=0, all_outputs=True)
        rows = [self._row(i) for i in range(len(ids))]
        return np.stack(rows)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        """`n` tokens after `ids`, each the argmax of llama.cpp's logits (its greedy sampler), EOS included."""
        import numpy as np

        self._decode(ids, start=0, all_outputs=False)
        out: list[int] = []
        for step in range(n):
            out.append(int(np.argmax(self._row(-1))))  # the last output of the last decode
            if step < n - 1:
                self._decode([out[-1]], start=len(ids) + step, all_outputs=False, fresh=False)
        return out

    def _decode(self, ids: list[int], start: int, all_outputs: bool, fresh: bool = True) -> None:
        if start + len(ids) > self.n_ctx:
            raise LlamaError(f"{start + len(ids)} positions exceed the context of {self.n_ctx}")
        lib = self._lib
        if fresh:
            lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        batch = lib.llama_batch_init(len(ids), 0, 1)
        try:
            for i, tok in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if all_outputs or i == len(ids) - 1 else 0
            batch.n_tokens = len(ids)
            rc = lib.llama_decode(self._ctx, batch)
        finally:
            lib.llama_batch_free(batch)
        if rc != 0:
            raise LlamaError(f"llama_decode returned {rc} for {len(ids)} tokens")

    def _row(self, i: int):
        import numpy as np

        ptr = self._lib.llama_get_logits_ith(self._ctx, i)
        if not ptr:
            raise LlamaError(f"llama.cpp has no logits for output {i}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()


def render_chats(path: Path, conversations: list[list[dict[str, str]]]) -> list[str]:
    """Each conversation rendered by llama-server from the file's own template, with the generation prompt.

    llama.cpp leaves out a BOS the template writes at the start (its tokenizer adds one), so a prompt here is
    the text llama-server tokenizes with `add_special`."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx, params.warmup, params.ui, params.use_jinja = 256, False, False, True
    params.cpuparams.n_threads = 1
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as e:
        raise LlamaError(f"llama-server could not start on {Path(path).name}: {e}") from e
    try:
        return [
            _post(server.listening_address, "/apply-template", {"messages": c})["prompt"]
            for c in conversations
        ]
    finally:
        del server


def _post(base: str, route: str, body: dict) -> dict:
    request = urllib.request.Request(
        base + route, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise LlamaError(f"llama-server {route}: {e.code} {e.read().decode(errors='replace')[:500]}") from e


def reference_quantize(rows, type_name: str) -> bytes:
    """ggml's own reference quantizer (`quantize_row_<type>_ref`) over float32 rows, e.g. type `q4_K`."""
    import numpy as np

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    fn = getattr(library(), f"quantize_row_{type_name}_ref")
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
    out = ctypes.create_string_buffer(rows.size * 4)  # larger than any type's packed size
    fn(rows.ctypes.data, out, rows.size)
    return out.raw


# ---------------------------------------------------------------------------------------------------
# The child process


@dataclass
class Request:
    """What to ask llama.cpp about one file."""

    gguf: str
    conversations: list[list[dict[str, str]]]
    tokenize: list[tuple[str, bool]]  # (text, add_special)
    logits_for: list[list[int]]  # one fresh sequence each
    greedy_from: list[int]
    greedy_tokens: int


@dataclass
class Observation:
    """llama.cpp's answers; logits are in `logits.npz` beside `observation.json` (arrays `p0`, `p1`...)."""

    n_vocab: int = 0
    rendered: list[str] = field(default_factory=list)  # by llama-server, from the file's template
    rendered_tokens: list[list[int]] = field(default_factory=list)  # those, tokenized with BOS
    tokens: list[list[int]] = field(default_factory=list)
    greedy: list[int] = field(default_factory=list)
    error: str = ""


def observe(request: Request, out_dir: Path) -> Observation:
    """Run every request against the file; a refusal ends it with `error` set."""
    import numpy as np

    obs = Observation()
    try:
        obs.rendered = render_chats(Path(request.gguf), request.conversations)
        longest = max([len(ids) for ids in [*request.logits_for, request.greedy_from]], default=1)
        n_ctx = -(-(longest + request.greedy_tokens + 8) // 256) * 256
        with Model(Path(request.gguf), n_ctx) as model:
            obs.n_vocab = model.n_vocab
            obs.tokens = [model.tokenize(text, add) for text, add in request.tokenize]
            obs.rendered_tokens = [model.tokenize(text, True) for text in obs.rendered]
            logits = {f"p{i}": model.logits(ids) for i, ids in enumerate(request.logits_for)}
            np.savez(out_dir / "logits.npz", **logits)
            obs.greedy = (
                model.greedy(request.greedy_from, request.greedy_tokens) if request.greedy_tokens else []
            )
    except LlamaError as e:
        obs.error = str(e)
    return obs


def main(argv: list[str]) -> int:
    """`python -m r1ft.export.llamacpp REQUEST.json OUT_DIR`: observe, write `OUT_DIR/observation.json`."""
    request_path, out_dir = Path(argv[0]), Path(argv[1])
    raw = json.loads(request_path.read_text(encoding="utf-8"))
    request = Request(**{**raw, "tokenize": [tuple(t) for t in raw["tokenize"]]})
    obs = observe(request, out_dir)
    (out_dir / "observation.json").write_text(json.dumps(asdict(obs)), encoding="utf-8")
    return 0


def request_json(request: Request) -> str:
    return json.dumps(asdict(request))


def read_observation(out_dir: Path) -> tuple[Observation, dict[str, Any]]:
    """The child's answers and its logits arrays by name."""
    import numpy as np

    obs = Observation(**json.loads((out_dir / "observation.json").read_text(encoding="utf-8")))
    path = out_dir / "logits.npz"
    arrays: dict[str, Any] = {}
    if path.is_file():
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    return obs, arrays


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
