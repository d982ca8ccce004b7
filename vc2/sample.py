"""Sampling settings and `generate()`: a batch of prompts in, one list of new token ids per prompt out.

    import vc2
    model, tok = vc2.load_model(path), vc2.load_tokenizer(path)
    ids, _ = tok.render_chat([{"role": "user", "content": "Plot a sine wave"}], add_generation_prompt=True)
    [answer] = vc2.generate(model, [ids], max_new_tokens=256, seed=0)
    print(tok.decode(answer))

`generate()` runs on the continuous-batching engine (vc2/engine.py) with one slot per prompt: ragged
prompts need no padding (each row has its own cache length and positions), finished rows leave the batch,
greedy rows use exact prompt-lookup decoding. This file holds what the engine samples with:
  * Settings left as None come from the model's generation_config.json when it says do_sample, else
    greedy (`sampling_settings`).
  * Logit processing follows the HF order: repetition penalty, temperature, top-k, top-p.
  * Embedding rows past the tokenizer's real vocabulary (Qwen pads 151,665 -> 151,936) are masked to
    -inf, so they are never sampled.
  * Each prompt samples from its own torch.Generator, seeded from (seed, prompt index) by `derive_seed`:
    the same seed gives the same tokens, whatever else is in the batch.
"""
import hashlib

import torch

# Values used when neither the caller nor the model's generation_config.json says otherwise: greedy.
GREEDY = dict(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (e.g. run seed, task key, round): stable across runs and machines."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def sampling_settings(model, temperature=None, top_p=None, top_k=None, repetition_penalty=None):
    """Fill unset settings from the model's generation_config.json (when do_sample) or greedy; validate."""
    gen_cfg = getattr(model, "generation_config", None) or {}
    defaults = {k: gen_cfg.get(k, v) for k, v in GREEDY.items()} if gen_cfg.get("do_sample") else dict(GREEDY)
    out = dict(temperature=defaults["temperature"] if temperature is None else temperature,
               top_p=defaults["top_p"] if top_p is None else top_p,
               top_k=(defaults["top_k"] or 0) if top_k is None else top_k,
               repetition_penalty=gen_cfg.get("repetition_penalty", 1.0) if repetition_penalty is None else repetition_penalty)
    if out["temperature"] < 0 or not 0 < out["top_p"] <= 1 or out["top_k"] < 0 or out["repetition_penalty"] <= 0:
        raise ValueError("bad sampling settings: " + " ".join(f"{k}={v}" for k, v in out.items()))
    return out


def default_stop_ids(model):
    gen_cfg = getattr(model, "generation_config", None) or {}
    eos = gen_cfg.get("eos_token_id", model.config.eos_token_id)
    return [eos] if isinstance(eos, int) else list(eos or [])


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


def generate(model, prompts, max_new_tokens, temperature=None, top_p=None, top_k=None, repetition_penalty=None,
             stop_ids=None, seed=None, vocab_size=None, callback=None, compile=False, on_done=None):
    """Generate continuations of a batch of prompts (lists of token ids, any lengths).

    Returns one list of new token ids per prompt (the stop token excluded). max_new_tokens is one budget
    for every row, or a list with one per prompt (e.g. capped by the model's context). Sampling settings left as
    None come from the model's generation_config.json (when it has do_sample true), else greedy;
    stop_ids None -> the config's eos ids. vocab_size: real tokenizer size (defaults to
    model.n_real_tokens when the checkpoint had a tokenizer). callback(row_index, token_id) is called
    for every token, in order per row (streaming); rows are indices into `prompts`. on_done(row_index, reason)
    is called once per row when it ends, reason "eos" (a stop id) or "budget" (its max_new_tokens).
    compile=True (CUDA only) also torch.compiles the CUDA-graph decode step. For many prompts, online
    requests or a fixed number of slots, use vc2.engine.Engine directly.
    """
    from vc2.engine import Engine

    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts) or min(budgets) < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (one int, or one per prompt), got {max_new_tokens}")
    settings = sampling_settings(model, temperature, top_p, top_k, repetition_penalty)
    stop_ids = default_stop_ids(model) if stop_ids is None else list(stop_ids)
    if compile and next(model.parameters()).device.type != "cuda":
        raise ValueError("compile=True needs CUDA (CUDA graphs); on CPU the eager decode is used")
    seed = torch.seed() if seed is None else seed
    # no context cap here (as before the engine): each row may use its whole budget
    engine = Engine(model, slots=len(prompts), max_len=max(len(p) + b for p, b in zip(prompts, budgets)),
                    vocab_size=vocab_size, compile=compile)
    reqs = []
    for i, (p, budget) in enumerate(zip(prompts, budgets)):
        on_token = None if callback is None else (lambda r, toks, i=i: [callback(i, t) for t in toks])
        finished = None if on_done is None else (lambda r, i=i: on_done(i, r.finish_reason))
        reqs.append(engine.add_request(p, budget, stop_ids=stop_ids, seed=derive_seed(seed, i), on_token=on_token,
                                       on_done=finished, **settings))
    engine.run()
    return [r.out for r in reqs]
