"""The seed's four examples, from the folders `scripts/train.py` wrote: 40 sampled tokens after two
prompts (temperature 0.75, never `xxunk`, fixed seed, as fastai's `learn.predict` does) and the label
and probabilities of two sentences.

    python scripts/demo.py --output_dir runs/demo
"""

import argparse
from pathlib import Path

from transformers import pipeline, set_seed

import awd_lstm_hf  # noqa: F401  (registers the Auto classes)

PROMPTS = ["I liked this movie", "I hate this movie"]
# fastai's `learn.predict(prompt, 40, temperature=0.75)`
GENERATION = dict(max_new_tokens=40, min_new_tokens=40, do_sample=True, temperature=0.75, top_k=0)
SENTENCES = [
    "this film shows incredibly bad writing and is a complete disaster",
    "this film shows incredible talent and is a complete triumph",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    generator = pipeline("text-generation", model=str(args.output_dir / "lm"))
    for prompt in PROMPTS:
        set_seed(args.seed)
        # The saved generation config suppresses xxunk (fastai's no_unk=True); like fastai's predict, exactly
        # 40 tokens come out (never cut short by an end-of-sequence token).
        text = generator(prompt, **GENERATION)[0]["generated_text"]
        print(f"\n[generate] {text}")

    classifier = pipeline("text-classification", model=str(args.output_dir / "classifier"))
    for sentence, scores in zip(SENTENCES, classifier(SENTENCES, top_k=None)):
        best = max(scores, key=lambda s: s["score"])
        probabilities = ", ".join(f"{s['label']}={s['score']:.4f}" for s in sorted(scores, key=lambda s: s["label"]))
        print(f"\n[classify] {sentence!r}: {best['label']} ({probabilities})")


if __name__ == "__main__":
    main()
