"""Train a tokenizer from a YAML recipe: python train/tokenizer.py fit --config configs/tokenizer/shapes_tiny.yaml"""
from tokgen.cli import main

if __name__ == "__main__":
    main()
