"""Tokenizer (from a checkpoint's tokenizer.json) and ChatML rendering with the SFT loss mask.

    tok = vc2.load_tokenizer("path/to/checkpoint")
    ids, loss_mask = tok.render_chat([{"role": "user", "content": "Plot y=x^2"},
                                      {"role": "assistant", "content": "```python\n...```"}])
    prompt_ids, _ = tok.render_chat(messages, add_generation_prompt=True)

ChatML, as Qwen2.5's chat template renders it: every turn is
`<|im_start|>{role}\\n{content}<|im_end|>\\n`; when the first message is not a system message the
model's default system prompt comes first; the generation prompt is `<|im_start|>assistant\\n`.
The default system prompt is read from the checkpoint's own chat template (Qwen2.5: "You are Qwen,
created by Alibaba Cloud. You are a helpful assistant."; SmolLM2 has its own), so one renderer serves
every ChatML model. Tool calls are not rendered: they are not part of the VisCoder2 data.

The whole conversation is encoded in one call (so ids equal what the template + tokenizer give, even
where BPE merges across a turn boundary); the loss mask then comes from character spans: a token is
supervised when it overlaps an assistant turn's content or is the `<|im_end|>` closing that turn.
"""
import json
import re
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

ROLES = ("system", "user", "assistant")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def _default_system_prompt(chat_template: str | None) -> str | None:
    """The system text a ChatML template inserts when the conversation has none (None if it inserts none)."""
    if not chat_template:
        return QWEN_DEFAULT_SYSTEM  # no template shipped: assume the Qwen2.5 convention vc2 is built for
    # Jinja string literals write the newline as the two characters \n (Qwen2.5) or as a real one (SmolLM2).
    m = re.search(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}]*?)<\|im_end\|>", chat_template)
    return m.group(1) if m else None


class Tokenizer:
    def __init__(self, tokenizer_json, tokenizer_config: dict | None = None, generation_config: dict | None = None):
        self.path = Path(tokenizer_json)
        self.tk = HFTokenizer.from_file(str(tokenizer_json))
        tokenizer_config = tokenizer_config or {}
        generation_config = generation_config or {}
        self.chat_template = tokenizer_config.get("chat_template")
        self.default_system_prompt = _default_system_prompt(self.chat_template)
        self.im_start_id = self.tk.token_to_id(IM_START)
        self.im_end_id = self.tk.token_to_id(IM_END)
        # eos: generation_config.json first (Instruct Qwen: [im_end, endoftext]), then tokenizer_config.
        eos = generation_config.get("eos_token_id")
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        eos_tok = tokenizer_config.get("eos_token")
        if isinstance(eos_tok, dict):
            eos_tok = eos_tok.get("content")
        if eos_tok and self.tk.token_to_id(eos_tok) is not None:
            eos.append(self.tk.token_to_id(eos_tok))
        if self.im_end_id is not None:
            eos.append(self.im_end_id)  # a chat model's turn ends here whatever the config says
        self.eos_ids = list(dict.fromkeys(eos))
        pad = generation_config.get("pad_token_id")
        self.pad_id = pad if isinstance(pad, int) else (self.eos_ids[0] if self.eos_ids else 0)

    @property
    def vocab_size(self) -> int:
        """Real tokens (incl. added ones); embedding rows past this are padding and never sampled."""
        return self.tk.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat_text(self, messages, add_generation_prompt=False) -> tuple[str, list[tuple[int, int]]]:
        """The ChatML string, and the (start, end) character spans of assistant content + closing <|im_end|>."""
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        parts, spans, n = [], [], 0

        def add(text):
            nonlocal n
            parts.append(text)
            n += len(text)

        if messages[0].get("role") != "system" and self.default_system_prompt is not None:
            add(f"{IM_START}system\n{self.default_system_prompt}{IM_END}\n")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ValueError(f"messages[{i}] is {type(m).__name__}, expected a dict with 'role' and 'content'")
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise ValueError(f"messages[{i}]: unknown role {role!r} (expected one of {ROLES})")
            if not isinstance(content, str):
                raise ValueError(f"messages[{i}]: content must be a string, got {type(content).__name__}")
            add(f"{IM_START}{role}\n")
            start = n
            add(content + IM_END)
            if role == "assistant":
                spans.append((start, n))
            add("\n")
        if add_generation_prompt:
            add(f"{IM_START}assistant\n")
        return "".join(parts), spans

    def render_chat(self, messages, add_generation_prompt=False) -> tuple[list[int], list[int]]:
        """(ids, loss_mask): mask is 1 on assistant content tokens and the <|im_end|> closing each assistant turn."""
        if self.im_start_id is None or self.im_end_id is None:
            raise ValueError(f"{self.path}: tokenizer has no {IM_START}/{IM_END} tokens; render_chat needs a ChatML model")
        text, spans = self.render_chat_text(messages, add_generation_prompt)
        enc = self.tk.encode(text, add_special_tokens=False)
        mask, j = [], 0
        for start, end in enc.offsets:  # offsets are sorted; walk the spans alongside
            while j < len(spans) and spans[j][1] <= start:
                j += 1
            inside = j < len(spans) and start < spans[j][1] and end > spans[j][0]
            mask.append(int(inside))
        return enc.ids, mask

    def render_chats(self, conversations) -> list[tuple[list[int], list[int]]]:
        """render_chat for many conversations at once (training data): the same (ids, loss_mask), faster.

        The tokenizer splits its added tokens out of the text before anything else, so the text between two
        <|im_start|>/<|im_end|> tokens is encoded on its own either way. Here each such piece
        ("{role}\\n{content}", and the "\\n" between turns) is encoded by itself, in one batch, without
        character offsets (which render_chat builds and walks token by token). The mask then
        follows from the structure: within an assistant piece, the tokens after the "assistant\\n" header
        are content. That holds when the piece's ids start with the header's own ids, which proves those
        tokens cover exactly the header's bytes; when the content's first characters merge with the
        newline (content starting with whitespace), or the tokenizer is not one whose pieces are
        independent (see _pieces_are_independent), that conversation goes through render_chat instead.
        """
        if not self._pieces_are_independent():
            return [self.render_chat(m) for m in conversations]
        pieces = []
        for messages in conversations:
            self.render_chat_text(messages)  # the same validation and errors as render_chat
            pieces += [f"{m['role']}\n{m['content']}" for m in messages]
        encode = getattr(self.tk, "encode_batch_fast", self.tk.encode_batch)  # _fast: tokenizers >= 0.20.2
        encoded = encode(pieces, add_special_tokens=False)
        S, E, nl = self.im_start_id, self.im_end_id, self._piece_ids["\n"]
        head = self._piece_ids["assistant\n"]
        out, k = [], 0
        for messages in conversations:
            ids, mask = [], []
            if messages[0]["role"] != "system" and self.default_system_prompt is not None:
                ids += self._system_turn
                mask += [0] * len(self._system_turn)
            fallback = False
            for m in messages:
                p = encoded[k].ids
                k += 1
                ids.append(S)
                ids += p
                ids.append(E)
                ids += nl
                if m["role"] == "assistant":
                    if p[:len(head)] != head:
                        fallback = True
                    # <|im_start|> and the header unsupervised; content and the closing <|im_end|> supervised
                    mask += [0] * (1 + len(head)) + [1] * (len(p) - len(head) + 1) + [0] * len(nl)
                else:
                    mask += [0] * (len(p) + 2 + len(nl))
            out.append(self.render_chat(messages) if fallback else (ids, mask))
        return out

    def _pieces_are_independent(self) -> bool:
        """Whether encoding the pieces between <|im_start|>/<|im_end|> separately gives the whole text's ids:
        byte-level BPE (Qwen2, SmolLM2, Llama 3) with no normalizer or NFC, and ChatML tokens that strip no
        neighbouring whitespace. SentencePiece-style tokenizers (Metaspace) add a prefix per input, so
        they are excluded. Checked once; a probe conversation must also render identically both ways."""
        if hasattr(self, "_independent"):
            return self._independent
        self._independent = False
        if self.im_start_id is None or self.im_end_id is None:
            return False
        spec = json.loads(self.tk.to_str())
        normalizer = spec.get("normalizer") or {}
        added = {t["content"]: t for t in spec.get("added_tokens", [])}
        ok = ("ByteLevel" in json.dumps(spec.get("pre_tokenizer")) and "Metaspace" not in json.dumps(spec)
              and normalizer.get("type") in (None, "NFC")
              and all(not added.get(t, {}).get(f) for t in (IM_START, IM_END) for f in ("lstrip", "rstrip", "single_word")))
        if ok:
            self._piece_ids = {p: self.tk.encode(p, add_special_tokens=False).ids for p in ("\n", "assistant\n")}
            sys_text = f"{IM_START}system\n{self.default_system_prompt}{IM_END}\n"
            self._system_turn = self.tk.encode(sys_text, add_special_tokens=False).ids if self.default_system_prompt is not None else []
            self._independent = True  # provisionally, for the probe below
            probe = [[{"role": "user", "content": "Plot  x²\n\n  with a <b>title</b>"},
                      {"role": "assistant", "content": "```python\nimport matplotlib\n```\n\n"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " y"},
                      {"role": "assistant", "content": "Done. ✓"}, {"role": "user", "content": "again\r\n"},
                      {"role": "assistant", "content": "ok"}]]
            self._independent = all(fast == self.render_chat(m) for fast, m in zip(self.render_chats(probe), probe))
        return self._independent


def load_tokenizer(path) -> Tokenizer:
    """Tokenizer of a checkpoint directory (tokenizer.json + optional tokenizer_config.json, generation_config.json)."""
    from vc2.checkpoint import resolve_model_path
    path = resolve_model_path(path)
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"{path}: no tokenizer.json (vc2 reads the fast-tokenizer file only)")

    def read(name):
        f = path / name
        if not f.is_file():
            return {}
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not valid JSON ({e})") from None

    tokenizer_config = read("tokenizer_config.json")
    if "chat_template" not in tokenizer_config and (path / "chat_template.jinja").is_file():
        tokenizer_config["chat_template"] = (path / "chat_template.jinja").read_text()  # transformers-5 layout
    return Tokenizer(path / "tokenizer.json", tokenizer_config, read("generation_config.json"))
