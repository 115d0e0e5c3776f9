"""Writing a complete model folder: config, safetensors, tokenizer, the modeling code for
`trust_remote_code` (which every `save_pretrained` of ours copies), and a model card whose YAML metadata
carries the measured results."""

from importlib.resources import files
from pathlib import Path

import yaml
from transformers import PreTrainedModel, PreTrainedTokenizer

from .modeling_awd_lstm import AWDLSTMForCausalLM

MODEL_CARD_TEMPLATE = files("awd_lstm_hf") / "model_cards" / "awd_lstm.md"  # model_cards/ in the repository
IMDB_LIMITS = """- Trained on English movie reviews (IMDB) only; expect it to be weaker on other domains and languages.
- A unidirectional model without WikiText-103 pretraining: ULMFiT's published 95.4% on IMDB is a
  forward + backward ensemble of pretrained models.
- IMDB reviews carry their authors' biases; do not use its outputs for decisions about people."""


def model_card_text(model: PreTrainedModel, *, model_id: str, provenance: str, results: dict[str, float],
                    limits: str, dataset: str | None = None, license: str | None = None,
                    base_model: str | None = None, template=MODEL_CARD_TEMPLATE) -> str:
    """The README.md of a model folder, with `model-index` metadata listing `results` (name -> value).
    `dataset` and `license` go into the metadata only when known (a converted checkpoint's are not)."""
    is_lm = isinstance(model, AWDLSTMForCausalLM)
    pipeline_tag = "text-generation" if is_lm else "text-classification"
    task_name = "Text Generation" if is_lm else "Text Classification"
    metadata = {"license": license} if license else {}
    metadata |= {
        "language": ["en"],
        "library_name": "transformers",
        "pipeline_tag": pipeline_tag,
        "tags": ["awd-lstm", "ulmfit", "fastai", "lstm", "custom_code"],
    }
    if dataset:
        metadata["datasets"] = [dataset]
    if results:
        metadata["model-index"] = [{
            "name": model_id,
            "results": [{
                "task": {"type": pipeline_tag, "name": task_name},
                "dataset": {"type": dataset or "unknown", "name": dataset or "unknown"},
                "metrics": [{"type": name, "name": name, "value": round(float(value), 6)} for name, value in results.items()],
            }],
        }]
    if base_model:
        metadata["base_model"] = base_model
    config = model.config
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in results.items())
    return template.read_text().format(
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        title=model_id,
        task_description="language model" if is_lm else "sentiment classifier (neg/pos)",
        provenance=provenance,
        vocab_size=config.vocab_size,
        embedding_size=config.embedding_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        results=f"| metric | value |\n|---|---|\n{rows}" if results else "Not measured.",
        pipeline_tag=pipeline_tag,
        limits=limits,
    )


def save_model_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizer, output_dir: str | Path,
                      card: str) -> Path:
    """Save everything a user (with or without our package) needs to load `output_dir`."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "README.md").write_text(card)
    return output_dir
