"""Chat with a model in the terminal, tokens printed as they come.

    python -m vc2.chat --model path/to/checkpoint      # any HF Qwen2/Llama ChatML directory
    python -m vc2.chat                                 # the embedded SmolLM2-135M-Instruct (CPU demo)
    echo "Plot a sine wave in matplotlib" | python -m vc2.chat --once

Commands inside the REPL: /reset clears the conversation, /quit (or Ctrl-D) leaves.
"""
import argparse
import sys

import torch

import vc2


class Printer:
    """Streams a row's tokens as text: decodes the whole answer so far and prints only the new suffix,
    so multi-byte characters split across tokens are printed once complete."""

    def __init__(self, tok, out=sys.stdout):
        self.tok, self.out, self.ids, self.printed = tok, out, [], ""

    def __call__(self, row, token_id):
        self.ids.append(token_id)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        self.out.write(text[len(self.printed):])
        self.out.flush()
        self.printed = text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="checkpoint directory, or an embedded model name (default: %(default)s)")
    p.add_argument("--system", default=None, help="system prompt (default: the model's own default)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the model's generation_config.json)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default: generation_config.json)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens, 0 = off (default: generation_config.json)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="1.0 = off (default: generation_config.json)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights dtype (default: %(default)s; float32 is faster than bf16 on most CPUs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: %(default)s")
    p.add_argument("--once", action="store_true", help="read one message from stdin, answer it, exit")
    args = p.parse_args(argv)

    try:
        model = vc2.load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
        tok = vc2.load_tokenizer(args.model)
    except ValueError as e:
        p.error(str(e))
    messages = [{"role": "system", "content": args.system}] if args.system else []
    settings = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    repetition_penalty=args.repetition_penalty, stop_ids=tok.eos_ids)
    seed = args.seed
    while True:
        if args.once:
            user = sys.stdin.read().strip()
        else:
            try:
                user = input("\n> ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return
        if user in ("/quit", "/exit"):
            return
        if user == "/reset":
            messages = messages[:1] if args.system else []
            continue
        if not user:
            continue
        messages.append({"role": "user", "content": user})
        ids, _ = tok.render_chat(messages, add_generation_prompt=True)
        printer = Printer(tok)
        [answer] = vc2.generate(model, [ids], args.max_new_tokens, seed=seed, callback=printer, **settings)
        print()
        messages.append({"role": "assistant", "content": tok.decode(answer, skip_special_tokens=True)})
        seed += 1
        if args.once:
            return


if __name__ == "__main__":
    main()
