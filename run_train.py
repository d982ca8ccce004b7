"""Fine-tune a Qwen2.5-Coder (or any Qwen2/Llama ChatML) checkpoint on VisCode-style conversations.

    python run_train.py --help
    torchrun --nproc_per_node 2 run_train.py      # defaults: embedded SmolLM2-135M + the shipped sample, CPU

Thin entry point: everything is in vc2/train.py.
"""
from vc2.train import main

if __name__ == "__main__":
    main()
