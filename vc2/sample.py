"""A small KV-cache sampler: batched ragged prompts, one prefill, then one-token decode steps.

    import vc2
    model, tok = vc2.load_model(path), vc2.load_tokenizer(path)
    ids, _ = tok.render_chat([{"role": "user", "content": "Plot a sine wave"}], add_generation_prompt=True)
    [answer] = vc2.generate(model, [ids], max_new_tokens=256, seed=0)
    print(tok.decode(answer))

Design (choices and why):
  * Ragged prompts are LEFT-padded to one length. Each row gets its own positions (0 at its first real
    token), and a boolean mask hides the pad keys, so a short row computes exactly what it would alone.
    Pad queries may attend to themselves only, which keeps their (never used) states finite.
  * The cache is preallocated once for prompt + max_new_tokens (`KVCache`), written in place.
  * When rows finish (stop token or budget), they are dropped from the batch and from the cache, so
    finished rows stop costing work. (The compiled path keeps shapes static instead.)
  * Sampling draws from a torch.Generator seeded by `seed`: the same seed gives the same tokens.
  * Embedding rows past the tokenizer's real vocabulary (Qwen pads 151,665 -> 151,936) are masked
    to -inf, so they are never sampled.
  * Logit processing follows the HF order: repetition penalty, temperature, top-k, top-p.
  * compile=True (CUDA only) wraps the decode step in torch.compile(mode="reduce-overhead"), i.e. CUDA
    graphs; shapes are then static (the whole cache is attended, with a mask) and no row is dropped.
"""
import torch

# Values used when neither the caller nor the model's generation_config.json says otherwise: greedy.
GREEDY = dict(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)


class KVCache:
    """Preallocated keys/values for every layer: (layers, B, K, S_max, hd), filled left to right.

    `update` is called by each attention layer with the new (B, T, K, hd) keys/values and returns all
    keys/values so far as (B, S, K, hd) views; `advance(T)` is called once per forward, after all layers.
    """

    def __init__(self, n_layers, batch, max_len, n_kv_head, head_dim, dtype, device, static=False):
        shape = (n_layers, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0          # tokens cached so far (same for every row: rows are left-padded)
        self.static = static  # compiled decode: always return the whole buffer (static shapes)
        self.write_pos = None  # static mode: (T,) long tensor of positions to write

    def update(self, layer, k, v):
        T = k.shape[1]
        if self.static:
            self.k[layer].index_copy_(2, self.write_pos, k.transpose(1, 2))
            self.v[layer].index_copy_(2, self.write_pos, v.transpose(1, 2))
            return self.k[layer].transpose(1, 2), self.v[layer].transpose(1, 2)
        assert self.pos + T <= self.max_len, f"KV cache overflow: {self.pos} + {T} > {self.max_len}"
        self.k[layer, :, :, self.pos:self.pos + T] = k.transpose(1, 2)
        self.v[layer, :, :, self.pos:self.pos + T] = v.transpose(1, 2)
        end = self.pos + T
        # (B, K, S, hd) slices of contiguous rows, seen as (B, S, K, hd); attention transposes back for SDPA
        return self.k[layer, :, :, :end].transpose(1, 2), self.v[layer, :, :, :end].transpose(1, 2)

    def advance(self, T: int):
        self.pos += T

    def keep_rows(self, rows):
        """Drop finished rows: keep batch indices `rows` (a long tensor)."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)


def process_logits(logits, seen, temperature, top_p, top_k, repetition_penalty, vocab_size):
    """logits (B, V) fp32 -> processed logits (B, V); `seen` (B, V) bool marks tokens already in each row."""
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits[:, vocab_size:] = float("-inf")  # padding rows of the embedding: never real tokens
    if repetition_penalty != 1.0:  # CTRL-style, as HF: shrink positive logits, push negative ones down
        penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if temperature == 0.0:
        return logits
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p (>= 1 token)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def pick_tokens(logits, temperature, generator):
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(model, prompts, max_new_tokens, temperature=None, top_p=None, top_k=None, repetition_penalty=None,
             stop_ids=None, seed=None, vocab_size=None, callback=None, compile=False, on_done=None):
    """Generate continuations of a batch of prompts (lists of token ids, any lengths).

    Returns one list of new token ids per prompt (the stop token excluded). max_new_tokens is one budget
    for every row, or a list with one per prompt (e.g. capped by the model's context). Sampling settings left as
    None come from the model's generation_config.json (when it has do_sample true), else greedy;
    stop_ids None -> the config's eos ids. vocab_size: real tokenizer size (defaults to
    model.n_real_tokens when the checkpoint had a tokenizer). callback(row_index, token_id) is called
    for every token as it is produced (streaming); rows are indices into `prompts`. on_done(row_index, reason)
    is called once per row when it ends, reason "eos" (a stop id) or "budget" (its max_new_tokens).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts) or min(budgets) < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (one int, or one per prompt), got {max_new_tokens}")
    max_new_tokens = max(budgets)
    cfg = model.config
    gen_cfg = getattr(model, "generation_config", None) or {}
    defaults = {k: gen_cfg.get(k, v) for k, v in GREEDY.items()} if gen_cfg.get("do_sample") else dict(GREEDY)
    defaults.setdefault("top_k", 0)
    temperature = defaults["temperature"] if temperature is None else temperature
    top_p = defaults["top_p"] if top_p is None else top_p
    top_k = (defaults["top_k"] or 0) if top_k is None else top_k
    repetition_penalty = gen_cfg.get("repetition_penalty", 1.0) if repetition_penalty is None else repetition_penalty
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or repetition_penalty <= 0:
        raise ValueError(f"bad sampling settings: temperature={temperature} top_p={top_p} top_k={top_k} "
                         f"repetition_penalty={repetition_penalty}")
    if stop_ids is None:
        eos = gen_cfg.get("eos_token_id", cfg.eos_token_id)
        stop_ids = [eos] if isinstance(eos, int) else list(eos or [])
    vocab_size = vocab_size or getattr(model, "n_real_tokens", None)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    if compile and device.type != "cuda":
        raise ValueError("compile=True needs CUDA (CUDA graphs); on CPU the eager decode is used")

    # --- left-pad the prompts; per-row positions and key-validity mask
    B, L = len(prompts), max(len(p) for p in prompts)
    S_max = L + max_new_tokens
    ids = torch.full((B, L), 0, dtype=torch.long)
    valid = torch.zeros((B, S_max), dtype=torch.bool)  # which cache slots hold real tokens
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
        valid[i, L - len(p):] = True  # generated slots become real as they are written
    ids, valid = ids.to(device), valid.to(device)
    pad = (L - torch.tensor([len(p) for p in prompts], device=device))  # (B,)
    positions = (torch.arange(L, device=device)[None, :] - pad[:, None]).clamp(min=0)  # (B, L)
    seen = torch.zeros((B, cfg.vocab_size), dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):  # tokens of the prompt count for the repetition penalty (pads do not)
        seen[i, torch.tensor(p, device=device)] = True

    cache = KVCache(cfg.num_hidden_layers, B, S_max, cfg.num_key_value_heads, cfg.head_dim, dtype, device,
                    static=compile)

    # --- prefill: causal over the prompt, pad keys hidden, pad queries see only themselves
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    mask = (causal[None] & valid[:, None, :L]) | torch.eye(L, dtype=torch.bool, device=device)[None]
    if compile:
        cache.write_pos = torch.arange(L, device=device)
        full = torch.zeros(B, L, S_max, dtype=torch.bool, device=device)
        full[:, :, :L] = mask
        mask = full
    hidden = model(ids, position_ids=positions, kv_cache=cache, attn_mask=mask[:, None], return_hidden=True)
    logits = model.lm_head(hidden[:, -1]).float()  # only the last position's logits: (B, V), not (B, L, V)
    cache.advance(L)
    next_pos = positions[:, -1] + 1  # (B,)

    decode = _decode_step
    # On CPU, oneDNN's bf16 GEMM costs ~25 us per call whatever the size, and PyTorch's native kernel
    # is faster for one-row (batch 1) decode GEMMs: measured 1.3x decode tok/s on the SmolLM2 shape,
    # but 3-6x slower for prefill and batch-8 decode, so only single-row bf16 decode steps use it.
    native_gemv = device.type == "cpu" and dtype == torch.bfloat16
    if compile:
        decode = torch.compile(_decode_step, mode="reduce-overhead", fullgraph=True)

    # --- decode loop
    out = [[] for _ in range(B)]
    ended = set()  # rows whose end was reported (the static path keeps decoding them)
    rows = torch.arange(B, device=device)  # original index of each live row
    done = torch.zeros(B, dtype=torch.bool, device=device)  # only used by the static (compiled) path
    stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)
    budget = torch.tensor(budgets, device=device)  # (B,) per-row budgets, dropped with their rows
    for step in range(max_new_tokens):
        logits = process_logits(logits, seen, temperature, top_p, top_k, repetition_penalty, vocab_size)
        tok = pick_tokens(logits, temperature, generator)  # (B_live,)
        at_stop = torch.isin(tok, stop)
        finished = at_stop | done | (budget <= step + 1)  # a row's last budgeted token ends it
        for r, t, s_, f in zip(rows.tolist(), tok.tolist(), at_stop.tolist(), finished.tolist()):
            if r in ended:
                continue
            if not s_:
                out[r].append(t)
                if callback is not None:
                    callback(r, t)
            if f:
                ended.add(r)
                if on_done is not None:
                    on_done(r, "eos" if s_ else "budget")
        if step == max_new_tokens - 1 or finished.all():
            break
        if compile:
            done = finished  # static shapes: finished rows keep decoding, their tokens are ignored
        elif finished.any():  # drop finished rows from every tensor and the cache
            keep = (~finished).nonzero().squeeze(-1)
            rows, tok, next_pos, seen, valid, done, budget = (
                t[keep] for t in (rows, tok, next_pos, seen, valid, done, budget))
            cache.keep_rows(keep)
        if repetition_penalty != 1.0:
            seen[torch.arange(len(tok), device=device), tok] = True
        valid[:, cache.pos] = True
        if compile:
            cache.write_pos = torch.tensor([cache.pos], device=device)
            step_mask = valid[:, None, None, :]  # (B, 1, 1, S_max): the whole static buffer
        else:
            step_mask = valid[:, None, None, :cache.pos + 1]  # (B, 1, 1, S)
        if native_gemv and len(tok) == 1:
            with torch.backends.mkldnn.flags(enabled=False):
                logits = decode(model, tok[:, None], next_pos[:, None], cache, step_mask)
        else:
            logits = decode(model, tok[:, None], next_pos[:, None], cache, step_mask)
        cache.advance(1)
        next_pos = next_pos + 1
    return out


def _decode_step(model, tok, pos, cache, mask):
    return model(tok, position_ids=pos, kv_cache=cache, attn_mask=mask)[:, -1].float()
