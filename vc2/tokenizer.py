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
