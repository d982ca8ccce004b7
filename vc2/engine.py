"""The generation engine: continuous batching over slots, a paged KV cache, chunked prefill, exact
prompt-lookup decoding and a CUDA-graph decode step.

    from vc2.engine import Engine
    engine = Engine(model, slots=8)
    req = engine.add_request(ids, max_new_tokens=512, stop_ids=tok.eos_ids)  # any time, from any thread
    engine.run()                                  # step until every request is done
    print(req.out, req.finish_reason)             # new token ids; 'eos' | 'budget' | 'context'

`vc2.generate()` (vc2/sample.py) is a thin wrapper around this; the evaluation runner submits whole
rounds to it. Design, and why:

  * **Slots.** At most `slots` requests decode together. When one finishes, the last running row moves
    into its slot (rows stay a prefix 0..n-1, so a batched decode step reads one contiguous view) and the
    next waiting request is admitted at once: its prompt is prefilled while the other rows keep decoding.
    A static batch instead runs until its longest answer and then restarts.
  * **One packed row per step.** Every step feeds the tokens of all running rows as one (1, N) row:
    1 token for a decoding row, 1 + d for a row verifying d prompt-lookup drafts, up to `prefill_chunk`
    prompt tokens (shared by the rows being prefilled). Per-row positions and cache lengths say where
    each token sits; the linear layers do not care about rows, attention reads each row's cache.
  * **The KV cache** is a pool of pages, (layers, n_pages, page_size, K, hd) for keys and for values.
    Two layouts share that shape and the code:
      - "paged": page_size 256, a block table per slot, pages granted as a row grows and returned when it
        finishes; the pool holds `kv_tokens` tokens, so memory follows real lengths, not slots x
        (prompt + budget). A row that needs a page when none is free preempts the newest row, which is
        re-prefilled later (prompt + its tokens so far) and continues where it was. Used with the
        kernels that read block tables (flash-attn's varlen, torch's varlen_attn when it takes
        `block_table` and `seqused_k`).
      - "slots": one page per slot, as long as the longest admitted request (grown on demand). SDPA
        reads a contiguous view of it; gathering pages for SDPA would copy the whole cache every step
        (on the 2-core CPU: +26 ms per step against 22 ms of attention, SmolLM2 shape, 8 rows x 800
        tokens). Memory is slots x the longest request: fine for the CPU and small models, not for 32B.
  * **Attention for the cache path** (`choose_attention`): flash-attn's `flash_attn_varlen_func` with
    a block table when installed; else torch's `varlen_attn` if its signature takes `seqused_k` and
    `block_table` (checked by inspection: releases differ); else SDPA. On CUDA, SDPA runs inside
    `sdpa_kernel([FLASH, EFFICIENT, CUDNN])` with K/V expanded to every head (the memory-efficient
    kernel has no GQA in torch 2.13), so a silent fallback to the math kernel (fp32 upcast, full score
    matrix) becomes an error instead. Prefill chunks attend with a bottom-right causal mask.
  * **Decode windows.** When no row is prefilling or verifying drafts, the engine runs up to
    `check_every` decode steps without looking at the tokens: the next input, write positions and
    lengths are device tensors updated in place, new tokens go into a device buffer, and the host reads
    them once per window (the only sync) to apply stop ids, stream and admit. A row that stops mid-window
    wastes at most check_every-1 steps; windows never run past any row's budget. On CUDA each window
    step replays a CUDA graph captured per batch bucket (1, 2, 4, 8, ...; extra rows are dummies that
    write into a scratch page), so the step costs one launch instead of hundreds. CPU runs the same
    step eagerly with check_every=1.
  * **Prompt lookup** (greedy rows without repetition penalty): draft up to `lookup_tokens` tokens by
    finding the row's last n tokens (n = `lookup_ngram` .. 1) earlier in its prompt or output, first
    where the previous draft left off, else the latest occurrence; verify them in the same forward as
    everything else and keep the longest prefix that equals the greedy choice, plus the greedy token
    after it. The output is the greedy output: a draft only skips forwards whose argmax it predicted.
    Each row's draft length halves after a miss and doubles after a full hit; a row that misses even
    a 1-token draft stops drafting for 1, 2, 4 .. 32 steps, so rows that repeat nothing go back to plain
    (batched, sync-free) decode steps instead of paying a verify token every step.
  * **Sampling** follows vc2.sample.process_logits (HF order); each request has its own seeded
    torch.Generator, so its tokens do not depend on the batch, the slots or the rank it ran on.
  * "Identical" means identical up to floating-point rounding: a verify forward or a batch of another
    size multiplies matrices of other shapes, which can flip an exact argmax tie. The tests use fp32.
"""
import inspect
import itertools
import math
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# the optional kernels, imported once in model.py (None when absent); flash-attn >= 2.5 takes block_table
from vc2.model import flash_attn_varlen_func, varlen_attn
from vc2.sample import pick_tokens, process_logits

READERS = ("flash_attn", "torch_varlen", "sdpa")
FUSED_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def varlen_takes_pages(fn=None) -> bool:
    """Does this torch's varlen_attn take per-row lengths and a block table? (2.13 does; older ones not.)"""
    fn = varlen_attn if fn is None else fn
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return {"seqused_k", "block_table"} <= set(params)


def varlen_causal_kwargs(fn=None) -> dict:
    """How this torch's varlen_attn is told "causal": window_size=(-1, 0) (2.11+) or is_causal=True (2.10)."""
    fn = varlen_attn if fn is None else fn
    return {"is_causal": True} if "is_causal" in inspect.signature(fn).parameters else {"window_size": (-1, 0)}


def choose_attention(device, dtype, head_dim) -> str:
    """The cache-attention reader for this device: 'flash_attn', 'torch_varlen' or 'sdpa'."""
    device = torch.device(device)
    fused_ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256
    if fused_ok and flash_attn_varlen_func is not None:
        return "flash_attn"
    if fused_ok and varlen_takes_pages():
        return "torch_varlen"
    return "sdpa"


# ---------------------------------------------------------------------------------------------------
# requests

@dataclass(eq=False)
class Request:
    """One generation: its settings, and what the engine fills in (`out`, `finish_reason`, `done`)."""
    prompt: list
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop_ids: frozenset = frozenset()
    seed: int = 0
    prompt_lookup: bool = True       # used only where it is exact: greedy, no repetition penalty
    on_token: object = None          # on_token(request, new_ids): called in order as tokens are accepted
    on_done: object = None           # on_done(request): called once, when it has finished
    on_start: object = None          # on_start(request): called once, when it first gets a slot
    out: list = field(default_factory=list)       # generated ids (the stop token excluded)
    finish_reason: str | None = None              # 'eos' | 'budget' | 'context'
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    # engine state
    budget: int = 0                  # max_new_tokens capped at the context left after the prompt
    cap_reason: str = "budget"       # what ends the row when the budget runs out
    slot: int = -1
    pages: list = field(default_factory=list, repr=False)
    n_cached: int = 0                # tokens in the KV cache
    prefill_ids: list = field(default_factory=list, repr=False)  # prompt (+ output, after a preemption)
    n_prefilled: int = 0
    order: int = 0                   # admission order: the newest row is preempted first
    started: bool = False
    generator: object = field(default=None, repr=False)
    seen: object = field(default=None, repr=False)  # (V,) bool on the device, for the repetition penalty
    history: object = field(default=None, repr=False)  # prompt + out as a numpy buffer (prompt lookup)
    lookup_src: int = -1             # where the last draft was copied from (-1: search)
    lookup_k: int = 0                # draft length now: halved after a miss, doubled after a full hit
    lookup_wait: int = 0             # steps to go without drafting (after misses at length 1)
    lookup_backoff: int = 0

    @property
    def greedy_exact(self):
        return self.temperature == 0.0 and self.repetition_penalty == 1.0

    @property
    def prefilling(self):
        return self.n_prefilled < len(self.prefill_ids)


def lookup_draft(hist, n_hist, ngram, k, src=-1):
    """Up to k draft tokens to follow hist[:n_hist] (a numpy int array), and the source position of the
    token after them (pass it back as `src` next time, -1 to search).

    First continue the previous copy: if the last token equals hist[src] (the token the source predicted
    next), draft what follows src. Otherwise find the latest earlier occurrence of the last n tokens, for
    n = ngram .. 1, and draft what followed it."""
    if k <= 0 or n_hist < 2:
        return [], -1
    seq = hist[:n_hist]
    if 0 <= src < n_hist - 1 and seq[src] == seq[-1]:
        draft = seq[src + 1:src + 1 + k]
        return draft.tolist(), src + 1 + len(draft)
    for n in range(min(ngram, n_hist - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], n)  # windows[i] = seq[i:i+n], i+n < n_hist
        hits = np.flatnonzero((windows == seq[-n:]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            draft = seq[start:start + k]
            return draft.tolist(), start + len(draft)
    return [], -1


# ---------------------------------------------------------------------------------------------------
# the KV cache and the attention that reads it

class _Step:
    """What the cache needs to know about the current forward (set by the engine before each one)."""
    slot_mapping = None  # (N,) long: flat pool index each new token's k/v is written to
    cu_q = cu_k = seqused_k = block_table = None  # varlen readers: (R+1,), (R+1,), (R,) int32, (R, P) int32
    max_q = max_k = 0
    rows = None          # sdpa, packed: [(q_start, n, end, pages, mask)]: host ints, mask None or (n, end) bool
    batched = None       # sdpa, every row one token: (B, S, mask (B, 1, 1, S), page table (B, p) or None)


class PagedKVCache:
    """k, v: (layers, n_pages, page_size, K, hd). `attend` is called by each attention layer (vc2/model.py)
    with the step's new q/k/v; it writes k/v into the pool and returns attention over each row's cache."""

    def __init__(self, n_layers, n_pages, page_size, n_kv_head, head_dim, dtype, device, reader):
        shape = (n_layers, n_pages, page_size, n_kv_head, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.page_size, self.reader = page_size, reader
        self.causal = varlen_causal_kwargs() if reader == "torch_varlen" else {}
        self.step = _Step()
        # torch.compile / CUDA graphs: the pool is mutated in place at a fixed address, not an input that
        # changes (without this, cudagraph trees refuse to capture a step that mutates it)
        torch._dynamo.mark_static_address(self.k)
        torch._dynamo.mark_static_address(self.v)

    def attend(self, layer, q, k, v):
        """q (1, N, H, hd), k/v (1, N, K, hd) of this step's tokens -> (1, N, H, hd)."""
        s = self.step
        H, K = q.shape[2], k.shape[2]
        k_pool, v_pool = self.k[layer], self.v[layer]  # (n_pages, page_size, K, hd)
        k_pool.view(-1, *k_pool.shape[2:]).index_copy_(0, s.slot_mapping, k[0])
        v_pool.view(-1, *v_pool.shape[2:]).index_copy_(0, s.slot_mapping, v[0])
        if self.reader == "flash_attn":
            y = flash_attn_varlen_func(q[0], k_pool, v_pool, s.cu_q, s.cu_k, s.max_q, s.max_k, causal=True,
                                       block_table=s.block_table)
        elif self.reader == "torch_varlen":
            # FA2 semantics: causal is aligned bottom-right, so chunk queries see the cached prefix
            y = varlen_attn(q[0], k_pool, v_pool, s.cu_q, s.cu_k, s.max_q, s.max_k, enable_gqa=H != K,
                            seqused_k=s.seqused_k, block_table=s.block_table, **self.causal)
        elif s.batched is not None:
            y = self._sdpa_batched(layer, q[0])
        else:
            y = self._sdpa_rows(layer, q[0])
        return y.unsqueeze(0)

    def _keys(self, pool, pages, end):
        """A row's first `end` cached positions as (end, K, hd): a view in the slots layout, a gather if paged."""
        if len(pages) == 1:
            return pool[pages[0], :end]
        return pool[pages].flatten(0, 1)[:end]

    def _sdpa_rows(self, layer, q):
        out = torch.empty_like(q)
        for q0, n, end, pages, mask in self.step.rows:
            kr = self._keys(self.k[layer], pages, end).transpose(0, 1)[None]  # (1, K, end, hd)
            vr = self._keys(self.v[layer], pages, end).transpose(0, 1)[None]
            qr = q[q0:q0 + n].transpose(0, 1)[None]                            # (1, H, n, hd)
            # one query sees everything; a whole prompt is plain causal; else the row's bottom-right mask
            y = sdpa(qr, kr, vr, mask=mask, is_causal=mask is None and n > 1)
            out[q0:q0 + n] = y[0].transpose(0, 1)
        return out

    def _sdpa_batched(self, layer, q):
        B, S, mask, table = self.step.batched
        if table is None:  # slots layout: rows 0..B-1 are pages 0..B-1
            kb, vb = self.k[layer, :B, :S], self.v[layer, :B, :S]  # (B, S, K, hd) views
        else:
            kb = self.k[layer][table].flatten(1, 2)[:, :S]
            vb = self.v[layer][table].flatten(1, 2)[:, :S]
        y = sdpa(q[:, :, None], kb.transpose(1, 2), vb.transpose(1, 2), mask=mask)  # (B, H, 1, hd)
        return y[:, :, 0]


def sdpa(q, k, v, mask=None, is_causal=False):
    """SDPA for the cache path. q (B, H, T, hd), k/v (B, K, S, hd). On CUDA only the fused kernels are
    allowed (a math fallback raises), with K/V expanded to H heads since mem-efficient has no GQA."""
    H, K = q.shape[1], k.shape[1]
    if q.is_cuda:
        if H != K:
            k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)
        with sdpa_kernel(FUSED_SDPA):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=H != K)


# ---------------------------------------------------------------------------------------------------
# the engine

class Engine:
    """Continuous-batching generation over `slots` rows; see the module docstring.

    max_len: context length (prompt + answer), default the model's max_position_embeddings.
    layout: 'auto' (paged when the reader takes block tables, else slots), 'paged' or 'slots'.
    kv_tokens: paged pool size in tokens (default: slots x max_len, at most 80% of free CUDA memory).
    prefill_chunk: prompt tokens per step (shared by rows being prefilled).
    check_every: decode steps between host reads (1 on CPU, 8 on CUDA).
    cuda_graphs: capture the decode step per batch bucket (default on CUDA); compile: also torch.compile it.
    lookup_tokens / lookup_ngram: prompt-lookup draft length and the longest n-gram matched (0 = off).
    schedule: 'continuous', or 'static' (admit only when every row has finished: the static batching
    vc2.generate did before this engine, kept as the benchmark's baseline).
    """

    def __init__(self, model, slots=8, max_len=None, layout="auto", kv_tokens=None, page_size=None,
                 prefill_chunk=None, attention="auto", check_every=None, cuda_graphs=None, compile=False,
                 lookup_tokens=8, lookup_ngram=3, vocab_size=None, schedule="continuous"):
        cfg = model.config
        p = next(model.parameters())
        self.model, self.device, self.dtype = model, p.device, p.dtype
        cuda = self.device.type == "cuda"
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if compile and not cuda:
            raise ValueError("compile=True needs CUDA (it compiles the CUDA-graph decode step); CPU runs eagerly")
        if schedule not in ("continuous", "static"):
            raise ValueError(f"schedule={schedule!r}: 'continuous' or 'static'")
        self.n_slots, self.schedule = slots, schedule
        self.max_len = max_len or cfg.max_position_embeddings
        self.reader = choose_attention(self.device, self.dtype, cfg.head_dim) if attention == "auto" else attention
        if self.reader not in READERS:
            raise ValueError(f"attention={attention!r}: choose from auto, {', '.join(READERS)}")
        if layout == "auto":
            layout = "paged" if self.reader != "sdpa" else "slots"
        if layout not in ("paged", "slots") or (layout == "slots" and self.reader != "sdpa"):
            raise ValueError(f"layout={layout!r} does not go with attention {self.reader!r} "
                             "(the varlen kernels read a paged cache; 'slots' is read by sdpa)")
        self.paged = layout == "paged"
        self.prefill_chunk = prefill_chunk or (4096 if cuda else 512)
        self.check_every = check_every or (8 if cuda else 1)
        self.cuda_graphs = cuda if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not cuda:
            raise ValueError("cuda_graphs=True needs CUDA")
        self.lookup_tokens, self.lookup_ngram = lookup_tokens, lookup_ngram
        self.vocab_size = vocab_size or getattr(model, "n_real_tokens", None) or cfg.vocab_size
        L, K, hd = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
        self.token_bytes = 2 * L * K * hd * p.element_size()  # k + v of one token, all layers

        if self.paged:
            self.page_size = page_size or 256  # flash-attn's paged kernels need a multiple of 256
            if kv_tokens is None:  # what every slot at full context would use, or 80% of free CUDA memory
                kv_tokens = slots * self.max_len
                if cuda:
                    kv_tokens = min(kv_tokens, int(0.8 * torch.cuda.mem_get_info(self.device)[0] / self.token_bytes))
            n_pages = kv_tokens // self.page_size + 1  # page 0 is scratch: dummy rows of a graph write there
            self.cache = PagedKVCache(L, n_pages, self.page_size, K, hd, self.dtype, self.device, self.reader)
            self.free_pages = list(range(n_pages - 1, 0, -1))
            self.pages_per_row = math.ceil(self.max_len / self.page_size)
            self.capacity = (n_pages - 1) * self.page_size
        else:
            self.cache, self.page_size, self.pages_per_row, self.capacity = None, 0, 1, None
        self.table_host = torch.zeros(slots, self.pages_per_row, dtype=torch.int32)
        self.table = torch.zeros(slots, self.pages_per_row, dtype=torch.int32, device=self.device)
        self.tok_buf = torch.zeros(slots, dtype=torch.long, device=self.device)        # next input per slot
        self.lengths = torch.zeros(slots, dtype=torch.int32, device=self.device)       # cached tokens per slot
        self.out_buf = torch.zeros(slots, self.check_every, dtype=torch.long, device=self.device)
        self.arange = torch.arange(slots + 1, dtype=torch.int32, device=self.device)
        self.graphs, self.graph_out, self.graph_pool = {}, {}, None
        self.forward_decode = torch.compile(self._forward_decode, dynamic=False) if compile else self._forward_decode

        self.running = []            # requests in slot order: slot i is running[i]
        self.waiting = deque()
        self.inbox, self.inbox_lock = deque(), threading.Lock()
        self.orders = itertools.count()
        self.stats = dict(steps=0, forwards=0, generated=0, drafted=0, accepted=0, preempted=0, prefill_tokens=0)

    def describe(self) -> dict:
        return {"attention": self.reader, "layout": "paged" if self.paged else "slots", "slots": self.n_slots,
                "page_size": self.page_size or None, "kv_tokens": self.capacity, "prefill_chunk": self.prefill_chunk,
                "check_every": self.check_every, "cuda_graphs": self.cuda_graphs,
                "prompt_lookup": f"{self.lookup_tokens} tokens, n-gram <= {self.lookup_ngram}" if self.lookup_tokens else "off"}

    # --- requests in ----------------------------------------------------------------------------

    def add_request(self, prompt, max_new_tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                    stop_ids=(), seed=0, prompt_lookup=True, on_token=None, on_done=None, on_start=None) -> Request:
        """Queue a request (thread-safe); it is admitted at the next step with a free slot."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("a prompt must have at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or repetition_penalty <= 0:
            raise ValueError(f"bad sampling settings: temperature={temperature} top_p={top_p} top_k={top_k} "
                             f"repetition_penalty={repetition_penalty}")
        r = Request(prompt, max_new_tokens, float(temperature), float(top_p), int(top_k), float(repetition_penalty),
                    frozenset(int(s) for s in stop_ids), int(seed), bool(prompt_lookup), on_token, on_done, on_start)
        room = self.max_len - len(prompt)
        r.budget = min(max_new_tokens, room)
        r.cap_reason = "budget" if max_new_tokens <= room else "context"
        if self.paged and len(prompt) + r.budget > self.capacity:
            raise ValueError(f"prompt {len(prompt)} + budget {r.budget} tokens does not fit the KV cache "
                             f"({self.capacity} tokens): raise kv_tokens or lower max_new_tokens")
        if r.budget <= 0:  # the prompt fills the context: nothing can be generated
            self._finish(r, "context")
            return r
        with self.inbox_lock:
            self.inbox.append(r)
        return r

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.inbox)

    def progress(self) -> dict:
        """Rows generating (or being prefilled) and waiting, tokens so far: for progress lines."""
        return {"running": len(self.running), "waiting": len(self.waiting) + len(self.inbox),
                "generated": self.stats["generated"]}

    def run(self):
        while self.has_work():
            self.step()

    def generate(self, prompts, max_new_tokens, **settings) -> list:
        """Submit prompts, run to completion, return their Requests (same order)."""
        reqs = [self.add_request(p, max_new_tokens, **settings) for p in prompts]
        self.run()
        return reqs

    # --- one scheduling step ----------------------------------------------------------------------

    @torch.inference_mode()
    def step(self):
        with self.inbox_lock:
            self.waiting.extend(self.inbox)
            self.inbox.clear()
        self._admit()
        if not self.running:
            return
        self.stats["steps"] += 1
        drafts = {}
        if self.lookup_tokens:
            for r in self.running:
                if r.lookup_wait > 0:
                    r.lookup_wait -= 1
                elif not r.prefilling and r.prompt_lookup and r.greedy_exact:
                    k = min(r.lookup_k or self.lookup_tokens, r.budget - len(r.out) - 1)  # never past the budget
                    d, r.lookup_src = lookup_draft(r.history, len(r.prompt) + len(r.out), self.lookup_ngram, k,
                                                   r.lookup_src)
                    if d:
                        drafts[r] = d
        if drafts or any(r.prefilling for r in self.running):
            self._packed_step(drafts)
        else:
            self._decode_window()

    def _admit(self):
        if self.schedule == "static" and self.running:
            return
        while self.waiting and len(self.running) < self.n_slots:
            r = self.waiting[0]
            seq = r.prompt + r.out  # after a preemption the row continues from its tokens so far
            if self.paged:
                need = math.ceil(len(seq) / self.page_size)
                if need + len(self.running) > len(self.free_pages):  # keep a page of headroom per running row
                    break
            else:
                self._ensure_slot_capacity(len(r.prompt) + r.budget)
            self.waiting.popleft()
            r.slot, r.order = len(self.running), next(self.orders)
            r.prefill_ids, r.n_prefilled, r.n_cached, r.lookup_src = seq, 0, 0, -1
            r.pages = [] if self.paged else [r.slot]
            self.table_host[r.slot] = 0
            self.running.append(r)
            if not r.started:  # first admission only (a preempted row comes back later)
                r.started = True
                if r.on_start is not None:
                    r.on_start(r)
            if r.temperature > 0 and r.generator is None:
                r.generator = torch.Generator(device=self.device).manual_seed(r.seed)
            if r.repetition_penalty != 1.0 and r.seen is None:
                r.seen = torch.zeros(self.model.config.vocab_size, dtype=torch.bool, device=self.device)
                r.seen[torch.tensor(r.prompt, device=self.device)] = True
            if r.history is None and r.prompt_lookup and r.greedy_exact and self.lookup_tokens:
                r.history = np.zeros(len(r.prompt) + r.budget, dtype=np.int64)
                r.history[:len(r.prompt)] = r.prompt
                r.history[len(r.prompt):len(seq)] = r.out

    def _ensure_slot_capacity(self, need):
        """Slots layout: make every slot hold `need` tokens (grown 1.5x at a time, in 256-token steps)."""
        have = 0 if self.cache is None else self.cache.page_size
        if need <= have:
            return
        cfg = self.model.config
        size = max(need, int(have * 1.5))
        size = -(-size // 256) * 256
        if self.device.type == "cuda":  # every slot gets `size` tokens: refuse what cannot fit, loudly
            free = torch.cuda.mem_get_info(self.device)[0]
            if self.n_slots * size * self.token_bytes > 0.8 * free:  # the new pool, while the old one is copied
                size = -(-need // 256) * 256  # no headroom for later requests when memory is short
            if self.n_slots * size * self.token_bytes > free:
                raise ValueError(f"the slots KV layout needs {self.n_slots} x {size} tokens "
                                 f"({self.n_slots * size * self.token_bytes / 2**30:.1f} GiB) for a {need}-token request; "
                                 "use fewer slots or a shorter budget, or install flash-attn (a paged cache)")
        new = PagedKVCache(cfg.num_hidden_layers, self.n_slots, size, cfg.num_key_value_heads, cfg.head_dim,
                           self.dtype, self.device, self.reader)
        if self.cache is not None:
            new.k[:, :, :have] = self.cache.k
            new.v[:, :, :have] = self.cache.v
        self.cache, self.page_size = new, size
        self.graphs.clear()  # captured graphs point at the old pool
        self.graph_out.clear()

    # --- pages ------------------------------------------------------------------------------------

    def _reserve(self, r, n_tokens) -> bool:
        """Paged: give r pages for its first n_tokens positions, preempting newer rows if the pool is
        empty. False if r itself had to be preempted."""
        if not self.paged:
            return True
        need = math.ceil(n_tokens / self.page_size) - len(r.pages)
        while need > len(self.free_pages):
            victim = max(self.running, key=lambda x: x.order)
            self._preempt(victim)
            if victim is r:
                return False
        for _ in range(max(need, 0)):
            r.pages.append(self.free_pages.pop())
        self.table_host[r.slot, :len(r.pages)] = torch.tensor(r.pages, dtype=torch.int32)
        return True

    def _preempt(self, r):
        self.stats["preempted"] += 1
        self._remove(r)
        r.n_cached = r.n_prefilled = 0
        self.waiting.appendleft(r)

    def _remove(self, r):
        """Take r out of its slot; the last running row moves into it (rows stay a prefix of the slots)."""
        s, last = r.slot, self.running[-1]
        if last is not r:
            if self.paged:  # the block table row moves; the pages stay where they are
                self.table_host[s] = self.table_host[last.slot]
            else:  # slots layout: a slot's page is the slot, so the row's cache moves (even if still empty)
                n, src = last.n_cached, last.pages[0]
                if n:
                    self.cache.k[:, s, :n] = self.cache.k[:, src, :n]
                    self.cache.v[:, s, :n] = self.cache.v[:, src, :n]
                last.pages = [s]
            self.running[s], last.slot = last, s
        self.running.pop()
        self.table_host[len(self.running)] = 0
        if self.paged:
            self.free_pages.extend(r.pages)
            r.pages = []
        r.slot = -1

    def _upload_table(self):
        if self.paged:
            self.table.copy_(self.table_host, non_blocking=True)

    # --- forwards ---------------------------------------------------------------------------------

    def _packed_step(self, drafts):
        """One eager forward over every running row's tokens (prefill chunks, decode tokens, drafts)."""
        budget = self.prefill_chunk
        plan = []  # (request, tokens, start, kind)
        for r in sorted(self.running, key=lambda x: x.order):  # oldest first: they get pages and chunk first
            if r.prefilling:
                n = min(len(r.prefill_ids) - r.n_prefilled, budget)
                if n == 0:
                    continue
                budget -= n
                toks, kind = r.prefill_ids[r.n_prefilled:r.n_prefilled + n], "prefill"
            else:
                toks, kind = [r.out[-1]] + drafts.get(r, []), "decode"
            plan.append((r, toks, r.n_cached, kind))
        kept = []
        for r, toks, start, kind in plan:
            if r.slot >= 0 and self._reserve(r, start + len(toks)):
                kept.append((r, toks, start, kind))
        plan = sorted((p for p in kept if p[0].slot >= 0), key=lambda p: p[0].slot)  # a victim may have reserved
        if not plan:
            return

        ids, pos, write, logit_rows, rows = [], [], [], [], []
        q0 = 0
        for r, toks, start, kind in plan:
            n, end = len(toks), start + len(toks)
            ids += toks
            offs = np.arange(start, end)
            pos.append(offs)
            pages = np.asarray(r.pages)
            write.append(pages[offs // self.page_size] * self.page_size + offs % self.page_size)
            if kind == "decode":
                logit_rows.append(np.arange(q0, q0 + n))
            elif r.n_prefilled + n == len(r.prefill_ids):
                logit_rows.append(np.array([q0 + n - 1]))
            else:
                logit_rows.append(np.zeros(0, dtype=np.int64))
            mask = None  # several queries after cached tokens: query i sees keys <= end - n + i
            if self.reader == "sdpa" and 1 < n < end:
                mask = torch.ones(n, end, dtype=torch.bool).tril(end - n).to(self.device, non_blocking=True)
            rows.append((q0, n, end, r.pages, mask))
            q0 += n
        s = self.cache.step
        s.batched = None
        dev = self.device
        s.slot_mapping = torch.from_numpy(np.concatenate(write)).to(dev, non_blocking=True)
        if self.reader == "sdpa":
            s.rows = rows
        else:
            lens_q = [n for _, n, _, _, _ in rows]
            lens_k = [e for _, _, e, _, _ in rows]
            s.cu_q = torch.tensor([0] + list(itertools.accumulate(lens_q)), dtype=torch.int32).to(dev, non_blocking=True)
            s.cu_k = torch.tensor([0] + list(itertools.accumulate(lens_k)), dtype=torch.int32).to(dev, non_blocking=True)
            s.seqused_k = torch.tensor(lens_k, dtype=torch.int32).to(dev, non_blocking=True)
            s.block_table = self.table_host[[r.slot for r, *_ in plan]].to(dev, non_blocking=True)
            s.max_q, s.max_k = max(lens_q), max(lens_k)
        ids_t = torch.tensor(ids, dtype=torch.long).to(dev, non_blocking=True)
        pos_t = torch.from_numpy(np.concatenate(pos)).to(dev, non_blocking=True)
        need = np.concatenate(logit_rows)
        hidden = self._model(ids_t, pos_t)
        self.stats["forwards"] += 1
        picked = None
        if len(need):
            logits = self.model.lm_head(hidden.index_select(0, torch.from_numpy(need).to(dev))).float()
            picked = self._pick(logits, [r for (r, *_), lr in zip(plan, logit_rows) for _ in lr]).tolist()
        # first every row's cache length, then emit: a finishing row hands its slot to the last row,
        # whose cache (slots layout) is copied up to its length, which must include this step's tokens
        i, accepted = 0, []
        for (r, toks, start, kind), lr in zip(plan, logit_rows):
            mine, i = picked[i:i + len(lr)] if len(lr) else [], i + len(lr)
            if kind == "prefill":
                self.stats["prefill_tokens"] += len(toks)
                r.n_prefilled += len(toks)
                r.n_cached = start + len(toks)
                if mine:  # the last chunk: its last position gives the first new token
                    accepted.append((r, mine))
                continue
            d = toks[1:]  # mine[j] is the greedy token after toks[j]: draft d[j] is right if it equals mine[j]
            a = 0
            while a < len(d) and d[a] == mine[a]:
                a += 1
            self.stats["drafted"] += len(d)
            self.stats["accepted"] += a
            r.n_cached = start + a + 1  # the input token and the accepted drafts are now cached
            if d:  # a draft that keeps missing costs verify tokens: shrink it; one that hits, grow it
                r.lookup_k = max(1, len(d) // 2) if a == 0 else min(self.lookup_tokens, 2 * len(d)) if a == len(d) else len(d)
                if a == 0 and len(d) == 1:  # missing even one token: stop drafting for 1, 2, 4 .. 32 steps
                    r.lookup_backoff = min(2 * r.lookup_backoff or 1, 32)
                    r.lookup_wait = r.lookup_backoff
                elif a:
                    r.lookup_backoff = 0
            if a < len(d):
                r.lookup_src = -1  # the copy diverged: search again next time
            accepted.append((r, mine[:a + 1]))
        for r, toks in accepted:
            self._emit(r, toks)

    def _model(self, ids, pos):
        """(N,) ids and positions -> final hidden states (N, D) through the cache."""
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and ids.numel() == 1:
            # oneDNN's bf16 GEMM costs ~25 us per call whatever the size; PyTorch's native kernel is faster
            # for one-row decode (measured 1.3x tok/s, SmolLM2 shape) but slower for anything bigger
            with torch.backends.mkldnn.flags(enabled=False):
                return self.model(ids[None], position_ids=pos[None], kv_cache=self.cache, return_hidden=True)[0]
        return self.model(ids[None], position_ids=pos[None], kv_cache=self.cache, return_hidden=True)[0]

    def _decode_window(self):
        """Up to check_every decode steps with no host sync, then one read of the new tokens."""
        B = len(self.running)
        w = min(self.check_every, min(r.budget - len(r.out) for r in self.running))
        for r in list(self.running):
            if r.slot >= 0:
                self._reserve(r, r.n_cached + w)
        B = len(self.running)
        if B == 0:
            return
        Bg = self._bucket(B) if self.cuda_graphs else B
        lens = [r.n_cached for r in self.running] + [0] * (Bg - B)  # dummy rows: length 0 in scratch page 0
        self.lengths[:Bg].copy_(torch.tensor(lens, dtype=torch.int32), non_blocking=True)
        self.tok_buf[:Bg].copy_(torch.tensor([r.out[-1] for r in self.running] + [0] * (Bg - B)), non_blocking=True)
        self._upload_table()
        self._decode_steps(B, Bg, w, max(lens))
        new = self.out_buf[:B, :w].tolist()  # the window's one sync
        rows = list(self.running)
        for r in rows:  # lengths first (see _packed_step), then emit
            r.n_cached += w
            r.lookup_src = -1
        for r, toks in zip(rows, new):
            self._emit(r, toks)

    def _decode_steps(self, B, Bg, w, max_len):
        """w decode steps for rows 0..B-1 (Bg with dummies under graphs): device work only, no sync."""
        for j in range(w):
            if self.cuda_graphs:
                logits = self._replay(Bg)[:B]
            else:
                logits = self.forward_decode(B, max_len + j + 1)
            self.stats["forwards"] += 1
            tok = self._pick(logits, self.running)
            self.tok_buf[:B] = tok
            self.out_buf[:B, j] = tok
            self.lengths[:Bg] += 1

    def _forward_decode(self, B, S):
        """One decode step for rows 0..B-1 from device state only (graph-capturable): -> logits (B, V) fp32.
        S: keys the SDPA reader attends over (the whole slot under a CUDA graph)."""
        s, ps = self.cache.step, self.page_size
        L = self.lengths[:B]
        if self.paged:
            page = self.table[:B].gather(1, (L // ps).long()[:, None])[:, 0]
            s.slot_mapping = page.long() * ps + (L % ps).long()
        else:
            s.slot_mapping = self.arange[:B].long() * ps + L.long()
        if self.reader == "sdpa":
            mask = torch.arange(S, device=self.device)[None, :] < (L + 1)[:, None]  # (B, S)
            table = self.table[:B, :math.ceil(S / ps)] if self.paged else None
            s.batched = (B, S, mask[:, None, None, :], table)
        else:
            s.batched = None
            used = L + 1
            s.seqused_k = used
            s.cu_k = F.pad(used.cumsum(0, dtype=torch.int32), (1, 0))
            s.cu_q, s.block_table = self.arange[:B + 1], self.table[:B]
            s.max_q, s.max_k = 1, self.pages_per_row * ps
        hidden = self.model(self.tok_buf[:B][None], position_ids=L.long()[None], kv_cache=self.cache,
                            return_hidden=True)[0]
        return self.model.lm_head(hidden).float()

    def _bucket(self, B):
        b = 1
        while b < B:
            b *= 2
        return min(b, self.n_slots)

    def _replay(self, Bg):
        """CUDA graph of one decode step for Bg rows, captured on first use."""
        if Bg not in self.graphs:
            S = self.page_size if not self.paged else self.pages_per_row * self.page_size
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up (allocator, compile) outside the capture
                for _ in range(2):
                    self.forward_decode(Bg, S)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            if self.graph_pool is None:
                self.graph_pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(g, pool=self.graph_pool):
                self.graph_out[Bg] = self.forward_decode(Bg, S)
            self.graphs[Bg] = g
        self.graphs[Bg].replay()
        return self.graph_out[Bg]

    # --- tokens out -------------------------------------------------------------------------------

    def _pick(self, logits, reqs):
        """logits (M, V) fp32 for rows reqs -> (M,) token ids on the device (no host sync)."""
        if self.vocab_size < logits.shape[-1]:
            logits[:, self.vocab_size:] = float("-inf")  # embedding padding rows are never real tokens
        tok = logits.argmax(-1)
        for i, r in enumerate(reqs):
            if r.greedy_exact:
                continue
            row = process_logits(logits[i:i + 1], None if r.seen is None else r.seen[None], r.temperature, r.top_p,
                                 r.top_k, r.repetition_penalty, None)
            tok[i:i + 1] = pick_tokens(row, r.temperature, r.generator)
            if r.seen is not None:
                r.seen.index_fill_(0, tok[i:i + 1], True)
        return tok

    def _emit(self, r, toks):
        """Accept tokens for r in order: stop ids end it (excluded), so does its budget."""
        new = []
        for t in toks:
            if t in r.stop_ids:
                r.finish_reason = "eos"
                break
            new.append(t)
            if len(r.out) + len(new) == r.budget:
                r.finish_reason = r.cap_reason
                break
        if r.history is not None:
            n = len(r.prompt) + len(r.out)
            r.history[n:n + len(new)] = new
        r.out += new
        self.stats["generated"] += len(new)
        if new and r.on_token is not None:
            r.on_token(r, new)
        if r.finish_reason is not None:
            self._remove(r)
            self._finish(r, r.finish_reason)

    def _finish(self, r, reason):
        r.finish_reason = reason
        if r.on_done is not None:
            r.on_done(r)
        r.done.set()
