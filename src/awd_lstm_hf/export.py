"""Writing a complete model folder: config, safetensors, tokenizer, the modeling code for
`trust_remote_code` (which every `save_pretrained` of ours copies), the training settings, and a model
card whose YAML metadata carries the measured results; recording benchmark results in that card; pushing
the folder to the Hub."""

import json
import math
from importlib.resources import files
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizer
from transformers.utils import hub

from .configuration_awd_lstm import AWDLSTMConfig
from .modeling_awd_lstm import AWDLSTMForCausalLM, AWDLSTMForSequenceClassification

MODEL_CARD_TEMPLATE = files("awd_lstm_hf") / "model_cards" / "awd_lstm.md"  # model_cards/ in the repository
TRAINING_SETTINGS = "training_settings.json"  # how train.py made the folder: dataset, seed, preset settings
BENCHMARK_START, BENCHMARK_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
PIPELINE_TAGS = {AWDLSTMForCausalLM.__name__: "text-generation",
                 AWDLSTMForSequenceClassification.__name__: "text-classification"}
TASK_NAMES = {"text-generation": "Text Generation", "text-classification": "Text Classification"}
# What a pushed repository must hold to load with `trust_remote_code=True` where our package is missing.
FOLDER_FILES = ("config.json", "model.safetensors", "README.md", "vocab.json", "tokenizer_config.json",
                "configuration_awd_lstm.py", "modeling_awd_lstm.py", "tokenization_awd_lstm.py")
IMDB_LIMITS = """- Trained on English movie reviews (IMDB) only; expect it to be weaker on other domains and languages.
- A unidirectional model without WikiText-103 pretraining: ULMFiT's published 95.4% on IMDB is a
  forward + backward ensemble of pretrained models.
- IMDB reviews carry their authors' biases; do not use its outputs for decisions about people."""


def pipeline_tag(model_or_config: PreTrainedModel | PreTrainedConfig) -> str:
    """The Hub task of one of our models: from its class, or from the `architectures` a saved folder's config
    records (a folder of another model, or with no architectures, is a ValueError)."""
    if isinstance(model_or_config, PreTrainedModel):
        names = [type(model_or_config).__name__]
    else:
        names = model_or_config.architectures or []
    tags = {PIPELINE_TAGS[name] for name in names if name in PIPELINE_TAGS}
    if len(tags) != 1:
        raise ValueError(f"its config's architectures {names} are not one of awd-lstm-hf's {sorted(PIPELINE_TAGS)}")
    return tags.pop()


def eval_results(pipeline_tag: str, results: dict[str, float | None], *, dataset: str | None,
                 split: str | None = None) -> list[EvalResult]:
    """`results` (metric name -> value) as model-index entries, one per metric; an undefined value (None,
    NaN: e.g. a perplexity without predictions) has no entry (model-index takes numbers only)."""
    return [
        EvalResult(task_type=pipeline_tag, task_name=TASK_NAMES[pipeline_tag], dataset_type=dataset or "unknown",
                   dataset_name=dataset or "unknown", dataset_split=split, metric_type=name, metric_name=name,
                   metric_value=round(float(value), 6))
        for name, value in results.items() if value is not None and math.isfinite(value)
    ]


def results_table(results: dict[str, float]) -> str:
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in results.items())
    return f"| metric | value |\n|---|---|\n{rows}"


def card_metadata(pipeline_tag: str, *, model_id: str, results: dict[str, float], dataset: str | None = None,
                  license: str | None = None, base_model: str | None = None) -> ModelCardData:
    """A model card's YAML metadata, with `model-index` listing `results` (name -> value)."""
    return ModelCardData(
        license=license, language=["en"], library_name="transformers", pipeline_tag=pipeline_tag,
        tags=["awd-lstm", "ulmfit", "fastai", "lstm", "custom_code"], datasets=[dataset] if dataset else None,
        base_model=base_model, model_name=model_id,
        eval_results=eval_results(pipeline_tag, results, dataset=dataset) or None,
    )


def model_card_text(model: PreTrainedModel | AWDLSTMConfig, *, model_id: str, provenance: str,
                    results: dict[str, float], limits: str, dataset: str | None = None, license: str | None = None,
                    base_model: str | None = None, template=MODEL_CARD_TEMPLATE) -> str:
    """The README.md of a model folder (`model`, or the config of a saved one), with `model-index` metadata
    listing `results` (name -> value). `dataset` and `license` go into the metadata only when known (a
    converted checkpoint's are not). A classifier is described by its labels, whatever they mean."""
    tag, config = pipeline_tag(model), getattr(model, "config", model)
    labels = ", ".join(str(config.id2label[index]) for index in sorted(config.id2label))
    metadata = card_metadata(tag, model_id=model_id, results=results, dataset=dataset, license=license,
                             base_model=base_model)
    return template.read_text().format(
        metadata=metadata.to_yaml(),
        title=model_id,
        task_description="language model" if tag == "text-generation" else f"text classifier, labels: {labels}",
        provenance=provenance,
        vocab_size=config.vocab_size,
        embedding_size=config.embedding_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        results=results_table(results) if results else "Not measured.",
        benchmark=f"{BENCHMARK_START}\nNot run yet.\n{BENCHMARK_END}",
        pipeline_tag=tag,
        limits=limits,
    )


def save_model_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizer, output_dir: str | Path,
                      card: str, training_settings: dict | None = None) -> Path:
    """Save everything a user (with or without our package) needs to load `output_dir`, and how it was
    trained (`training_settings`, read back by `scripts/benchmark.py` to find the held-out texts)."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "README.md").write_text(card)
    if training_settings is not None:
        (output_dir / TRAINING_SETTINGS).write_text(json.dumps(training_settings, indent=2))
    return output_dir


def folder_card(folder: str | Path) -> ModelCard:
    """The model card of a saved model folder, ready for new results: its README.md, given this package's
    metadata when it has none (a README without a YAML header), or the template's card when there is no
    README. A README that cannot be read as a card, or a folder that is not one of our models, is a
    ValueError naming it."""
    folder = Path(folder)
    path = folder / "README.md"
    config = AWDLSTMConfig.from_pretrained(folder)
    try:
        tag = pipeline_tag(config)
    except ValueError as error:
        raise ValueError(f"{folder} is not an awd-lstm-hf model folder: {error}") from error
    if not path.exists():
        return ModelCard(model_card_text(
            config, model_id=folder.name, results={},
            provenance="Unknown: the folder had no model card when its results were recorded.",
            limits="- Unknown: the folder came without a model card; check where it came from before use."))
    try:
        card = ModelCard.load(path)
    except Exception as error:  # huggingface_hub and yaml raise several types for a malformed header
        raise ValueError(f"{path} cannot be read as a model card ({type(error).__name__}: {error}); fix its "
                         "YAML header or remove the file") from error
    if not card.data.to_dict():
        card.data = card_metadata(tag, model_id=folder.name, results={})
    card.data.pipeline_tag = card.data.pipeline_tag or tag
    return card


def record_benchmark(folder: str | Path, results: dict[str, float | None], *, dataset: str, split: str,
                     table: str) -> None:
    """Put a benchmark's `results` into the model card of `folder` (`folder_card`): model-index entries for
    `split` (which replace those of an earlier run on the same dataset, split and metric; training's have no
    split), and `table` (markdown) in the card's benchmark section."""
    card = folder_card(folder)
    new = eval_results(card.data.pipeline_tag, results, dataset=dataset, split=split)
    replaced = {(result.dataset_type, result.dataset_split, result.metric_type) for result in new}
    kept = [result for result in card.data.eval_results or []
            if (result.dataset_type, result.dataset_split, result.metric_type) not in replaced]
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or Path(folder).name
    section = f"{BENCHMARK_START}\n{table}\n{BENCHMARK_END}"
    if BENCHMARK_START in card.text and BENCHMARK_END in card.text:
        before, rest = card.text.split(BENCHMARK_START, 1)
        card.text = before + section + rest.split(BENCHMARK_END, 1)[1]
    else:
        card.text = card.text.rstrip("\n") + f"\n\n## Benchmark\n\n{section}\n"
    card.save(Path(folder) / "README.md")


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None) -> str:
    """Upload a saved model folder as it is (card, code files, `auto_map` for every head) to the Hub model
    repository `repo_id`, creating it if needed, through transformers' shared Hub client. (A model's own
    `push_to_hub` re-saves it and replaces the card with the Hub's default one for a new repository.)
    The token defaults to huggingface_hub's (HF_TOKEN, or the saved login). Returns the commit URL."""
    folder = Path(folder)
    missing = [name for name in FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete model folder (missing {', '.join(missing)}); "
                                "write it with save_model_folder")
    api = hub.hf_api()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, token=token,
                               commit_message=f"Upload {folder.name} with awd-lstm-hf")
    return commit.commit_url
