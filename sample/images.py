"""Sample images from a generator + tokenizer at chosen token budgets (same arguments as `tokgen sample`).

    python sample/images.py --tokenizer TOK.ckpt --generator GEN.ckpt --budgets 1,4,16 --classes 0,3,7 \
        --num-samples 64 --cfg 2.0 --seed 0 --out samples.png
    accelerate launch --multi_gpu --num_processes 8 sample/images.py ...   # split over 8 GPUs
    accelerate launch --multi_gpu --num_processes 2 sample/images.py ...   # no GPU: 2 CPU processes (gloo)
    torchrun --standalone --nproc_per_node 2 sample/images.py ...          # the same with torchrun

Same seed -> the same images whatever the number of processes. Under torchrun and accelerate write --num-samples,
not its short form --num: their own parsers read --num as an abbreviation of one of their options.
"""
import os
import sys

from tokgen.commands.sample import main

if __name__ == "__main__":
    try:
        main(sys.argv[1:], prog="python sample/images.py")
    except (FileNotFoundError, ValueError) as err:
        if os.environ.get("TOKGEN_DEBUG"):
            raise
        sys.exit(f"sample/images.py: error: {err}")
