"""Both pipelines on a model folder built with fastai's real vocabulary: the text they show keeps
what fastai's rules encode (capitals, repeats), and the classifier reads the same ids as fastai."""

import json

import pytest
import torch
from transformers import pipeline

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification, AWDLSTMTokenizer
from awd_lstm_hf.tokenization_awd_lstm import read_itos_pickle


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    return AWDLSTMTokenizer.from_itos(read_itos_pickle(fixtures_dir / "fastai_vocab" / "itos.pkl"))


def small_config(tokenizer):
    return AWDLSTMConfig(vocab_size=len(tokenizer), embedding_size=8, hidden_size=12, num_hidden_layers=2)


def test_generation_pipeline_shows_capitals_and_repeats(tokenizer, tmp_path):
    torch.manual_seed(0)
    AWDLSTMForCausalLM(small_config(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    forced = tokenizer.convert_tokens_to_ids(["xxmaj", "it", "was", "xxup", "great", "xxrep", "3", "!", "xxmaj", "really", "."])
    assert 0 not in forced

    def allowed(batch_id, ids):  # force the continuation, to check what the pipeline makes of it
        step = ids.shape[0] - prompt_length
        return [forced[step]] if step < len(forced) else [forced[-1]]

    prompt = "I liked this movie"
    prompt_length = len(tokenizer(prompt)["input_ids"])
    out = generator(prompt, max_new_tokens=len(forced), do_sample=False, prefix_allowed_tokens_fn=allowed)
    assert out[0]["generated_text"] == "I liked this movie It was GREAT!!! Really."


def test_classification_pipeline_reads_fastai_ids(tokenizer, fixtures_dir, tmp_path):
    AWDLSTMForSequenceClassification(small_config(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    classifier = pipeline("text-classification", model=str(tmp_path))
    sample = json.loads((fixtures_dir / "fastai_vocab" / "numericalized.jsonl").read_text().splitlines()[0])
    inputs = classifier.preprocess(sample["text"])
    assert inputs["input_ids"][0].tolist() == sample["ids"]
    marked = classifier.preprocess("This is GREAT!!!")["input_ids"][0].tolist()
    assert tokenizer.convert_ids_to_tokens(marked) == ["xxbos", "xxmaj", "this", "is", "xxup", "great", "xxrep", "3", "!"]
    scores = classifier(["This is GREAT!!!", "awful"], top_k=None)
    assert all({s["label"] for s in row} == {"neg", "pos"} for row in scores)
