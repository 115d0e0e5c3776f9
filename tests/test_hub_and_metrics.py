"""Models out to the Hub and evaluated offline: the shipped metric modules against hand computations,
`scripts/train.py --push_to_hub` and the converter's `--push_to_hub` through a stand-in for transformers'
Hub client (the pushed repositories reload without our package), and `scripts/benchmark.py`'s evaluation
mode, whose results reach the model cards."""

import importlib.util
import json
import math
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from datasets import ClassLabel, Dataset, Features, Value
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from test_convert_and_load import run_without_the_package
from tiny_imdb import WORDS, write_tiny_imdb
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMTokenizer, metrics
from awd_lstm_hf.data import classification_splits, lm_corpus, load_imdb
from awd_lstm_hf.export import eval_results, push_to_hub
from awd_lstm_hf.tokenization_awd_lstm import SPECIAL_TOKENS

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY_TRAINING = {  # train.py flags: a model and a run that take seconds
    "lm_docs": 60, "clas_train_docs": 40, "clas_valid_docs": 0, "clas_test_docs": 30, "min_freq": 1,
    "embedding_size": 8, "hidden_size": 12, "num_hidden_layers": 2, "bptt": 16, "max_len": 64,
    "lm_batch_size": 4, "clas_batch_size": 8, "lm_stages": [{"epochs": 1, "lr": 0.01, "discriminative": False}],
    "clas_stages": [{"epochs": 1, "lr": 0.01, "train_last": None}],
}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeHub(HfApi):
    """Stands in for transformers' shared Hub client: a repository is a folder under `root`, and an upload
    copies the files during the call. Any other Hub call goes to the real client and fails offline."""

    def __init__(self, root: Path):
        super().__init__()
        self.root, self.calls = root, []

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private))
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **kwargs):
        self.calls.append(("upload_folder", repo_id, Path(folder_path)))
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message=commit_message,
                          commit_description="", oid="0" * 40)


@pytest.fixture()
def fake_hub(tmp_path, monkeypatch):
    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", hub)
    return hub


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def tiny_tokenizer() -> AWDLSTMTokenizer:
    return AWDLSTMTokenizer.from_itos([*SPECIAL_TOKENS, *WORDS, "."])


def tiny_lm() -> AWDLSTMForCausalLM:
    """A random LM (seed 0) over `tiny_tokenizer`'s vocabulary, in eval mode."""
    torch.manual_seed(0)
    return AWDLSTMForCausalLM(AWDLSTMConfig(vocab_size=len(tiny_tokenizer()), embedding_size=8, hidden_size=12,
                                            num_hidden_layers=2)).eval()


@torch.no_grad()
def nll_by_hand(model, tokenizer, text: str) -> tuple[float, int]:
    """The text alone, full logits: summed -log p of every token after the first, and how many."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    log_probs = F.log_softmax(model(ids).logits[0, :-1].double(), -1)
    return -log_probs.gather(1, ids[0, 1:, None]).sum().item(), ids.shape[1] - 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_imdb):
    """`scripts/train.py ... --push_to_hub --hub_model_id user/tiny` with the Hub client stood in for."""
    out = tmp_path_factory.mktemp("trained")
    hub = FakeHub(out / "hub")
    argv = ["--preset", "smoke", "--dataset", str(tiny_imdb), "--output_dir", str(out / "run"), "--num_proc", "1",
            "--push_to_hub", "--hub_model_id", "user/tiny"]
    argv += [arg for key, value in TINY_TRAINING.items() for arg in (f"--{key}", json.dumps(value))]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.utils.hub, "_hf_api", hub)
        load_script("train").main(argv)
    return out / "run", hub


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def test_accuracy_and_f1_match_counts_by_hand():
    rng = np.random.default_rng(0)
    predictions, references = rng.integers(0, 3, 200).tolist(), rng.integers(0, 3, 200).tolist()
    pairs = list(zip(predictions, references))

    def f1_by_hand(label):
        tp = sum(p == label and r == label for p, r in pairs)
        fp = sum(p == label and r != label for p, r in pairs)
        fn = sum(p != label and r == label for p, r in pairs)
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        return 2 * precision * recall / (precision + recall)

    accuracy = metrics.load("accuracy").compute(predictions=predictions, references=references)["accuracy"]
    assert accuracy == pytest.approx(sum(p == r for p, r in pairs) / len(pairs), abs=1e-12)
    f1 = metrics.load("f1")
    assert f1.compute(predictions=predictions, references=references, pos_label=2)["f1"] == pytest.approx(f1_by_hand(2))
    macro = f1.compute(predictions=predictions, references=references, average="macro")["f1"]
    assert macro == pytest.approx(np.mean([f1_by_hand(label) for label in range(3)]))
    assert f1.compute(predictions=[0, 0], references=[0, 0])["f1"] == 0.0  # no positive anywhere: sklearn's 0
    assert math.isnan(metrics.load("accuracy").compute(predictions=[], references=[])["accuracy"])
    with pytest.raises(ValueError, match="no metric 'bleu'"):
        metrics.load("bleu")


@torch.no_grad()
def test_perplexity_is_the_same_batched_padded_or_alone_and_equals_a_hand_loop():
    tokenizer, model = tiny_tokenizer(), tiny_lm()
    rng = np.random.default_rng(1)
    long_text = " ".join(f"{a} {b}" for a, b in zip(rng.choice(WORDS[:7], 700), rng.choice(WORDS[7:], 700)))
    texts = ["I liked this movie.", "", "movie", "It was bad, not good", long_text, "the plot and the actors"]

    nll, counts = zip(*(nll_by_hand(model, tokenizer, text) for text in texts))
    assert counts[1] == 0 and counts[2] == 1 and counts[4] > 1024  # empty, one word, longer than one chunk

    perplexity = metrics.load("perplexity")
    for batch_size, side in ((1, "right"), (4, "right"), (4, "left"), (16, "left")):
        tokenizer.padding_side = side
        result = perplexity.compute(predictions=texts, model=model, tokenizer=tokenizer, batch_size=batch_size)
        assert result["predicted_tokens"] == sum(counts)
        assert result["perplexity"] == pytest.approx(math.exp(sum(nll) / sum(counts)), rel=1e-5)
        for got, n, c in zip(result["perplexities"], nll, counts):
            assert math.isnan(got) if c == 0 else got == pytest.approx(math.exp(n / c), rel=1e-5)
        defined = [math.exp(n / c) for n, c in zip(nll, counts) if c]
        assert result["mean_perplexity"] == pytest.approx(sum(defined) / len(defined), rel=1e-5)

    for no_predictions in ([""], []):
        result = perplexity.compute(predictions=no_predictions, model=model, tokenizer=tokenizer)
        assert math.isnan(result["perplexity"]) and math.isnan(result["mean_perplexity"])
        assert result["predicted_tokens"] == 0


@torch.no_grad()
def test_perplexity_reads_without_dropout_and_gives_the_model_back_in_its_mode():
    tokenizer, model = tiny_tokenizer(), tiny_lm()
    texts = ["I liked this movie.", "the plot and the actors", "It was bad, not good"]
    nll, counts = zip(*(nll_by_hand(model, tokenizer, text) for text in texts))
    for training in (True, False, True):
        model.train(training)
        result = metrics.load("perplexity").compute(predictions=texts, model=model, tokenizer=tokenizer)
        assert result["perplexity"] == pytest.approx(math.exp(sum(nll) / sum(counts)), rel=1e-5)
        assert {module.training for module in model.modules()} == {training}


def test_undefined_results_have_no_model_index_entry():
    results = {"perplexity": math.nan, "accuracy": None, "f1": math.inf, "mean_perplexity": 12.5}
    entries = eval_results("text-generation", results, dataset="stanfordnlp/imdb", split="test")
    assert [(entry.metric_type, entry.metric_value) for entry in entries] == [("mean_perplexity", 12.5)]


# ------------------------------------------------------------------------------------------------
# push_to_hub
# ------------------------------------------------------------------------------------------------


def test_train_script_pushes_both_folders_as_written(trained):
    run, hub = trained
    assert [call[:2] for call in hub.calls] == [("create_repo", "user/tiny-lm"), ("upload_folder", "user/tiny-lm"),
                                               ("create_repo", "user/tiny-classifier"),
                                               ("upload_folder", "user/tiny-classifier")]
    for task in ("lm", "classifier"):
        assert files_of(hub.root / "user" / f"tiny-{task}") == files_of(run / task)
    config = json.loads((hub.root / "user" / "tiny-classifier" / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                       "AutoModelForSequenceClassification"}
    card = ModelCard.load(hub.root / "user" / "tiny-classifier" / "README.md")
    assert card.data.base_model == "user/tiny-lm" and card.data.model_name == "user/tiny-classifier"
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-classification"
    measured = json.loads((run / "metrics.json").read_text())["classifier"]["test_accuracy"]
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("accuracy", round(measured, 6))]
    assert "trust_remote_code=True" in card.text and "## Limits" in card.text
    assert "An AWD-LSTM (text classifier, labels: neg, pos)" in card.text


@torch.no_grad()
def test_pushed_repositories_load_without_the_package(trained, tmp_path):
    run, hub = trained
    text = "I liked this movie, the actors were good"
    tokenizer = AutoTokenizer.from_pretrained(run / "lm")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    lm = AutoModelForCausalLM.from_pretrained(run / "lm").eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(run / "classifier").eval()
    torch.save({"ids": ids, "lm": lm(ids).logits, "classifier": classifier(ids).logits}, tmp_path / "expected.pt")
    code = textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
        hub, expected = {str(hub.root)!r}, torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        tokenizer = AutoTokenizer.from_pretrained(hub + "/user/tiny-classifier", trust_remote_code=True)
        ids = tokenizer({text!r}, return_tensors="pt")["input_ids"]
        assert torch.equal(ids, expected["ids"]), ids
        lm = AutoModelForCausalLM.from_pretrained(hub + "/user/tiny-lm", trust_remote_code=True).eval()
        classifier = AutoModelForSequenceClassification.from_pretrained(hub + "/user/tiny-classifier",
                                                                        trust_remote_code=True).eval()
        assert type(classifier).__module__.startswith("transformers_modules"), type(classifier).__module__
        with torch.no_grad():
            assert torch.equal(lm(ids).logits, expected["lm"])
            assert torch.equal(classifier(ids).logits, expected["classifier"])
    """)
    run_without_the_package(code, tmp_path)


def test_converter_pushes_the_converted_folder(fixtures_dir, fake_hub, tmp_path):
    fastai_dir = fixtures_dir / "fastai_awd_lstm"
    code = load_script("convert_fastai_checkpoint").main([
        "--weights", str(fastai_dir / "lm_model.pth"), "--vocab", str(fastai_dir / "itos.pkl"), "--task", "lm",
        "--out", str(tmp_path / "lm"), "--push_to_hub", "user/converted-lm"])
    assert code == 0
    assert [call[:2] for call in fake_hub.calls] == [("create_repo", "user/converted-lm"),
                                                    ("upload_folder", "user/converted-lm")]
    assert files_of(fake_hub.root / "user" / "converted-lm") == files_of(tmp_path / "lm")
    card = ModelCard.load(fake_hub.root / "user" / "converted-lm" / "README.md")
    assert card.data.pipeline_tag == "text-generation"
    # titled by the repository it was pushed to, not by the local folder's name
    assert card.data.model_name == "user/converted-lm" and "\n# user/converted-lm\n" in card.text
    assert "# lm\n" not in card.text
    assert load_script("convert_fastai_checkpoint").main([  # without --push_to_hub: the folder's name
        "--weights", str(fastai_dir / "lm_model.pth"), "--vocab", str(fastai_dir / "itos.pkl"), "--task", "lm",
        "--out", str(tmp_path / "local-lm")]) == 0
    assert ModelCard.load(tmp_path / "local-lm" / "README.md").data.model_name == "local-lm"


def test_an_incomplete_folder_is_not_pushed(fake_hub, tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "only-a-tokenizer")
    with pytest.raises(FileNotFoundError, match="missing config.json, model.safetensors, README.md"):
        push_to_hub(tmp_path / "only-a-tokenizer", "user/x")
    assert fake_hub.calls == []


# ------------------------------------------------------------------------------------------------
# scripts/benchmark.py
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_benchmark_evaluates_the_folders_and_updates_their_cards(trained, tiny_imdb, tmp_path):
    run = tmp_path / "run"  # a copy: the cards are rewritten
    for task in ("lm", "classifier"):
        shutil.copytree(trained[0] / task, run / task)
    load_script("benchmark").main(["--model", str(run / "classifier"), "--lm", str(run / "lm"), "--dataset",
                                   str(tiny_imdb), "--batch_size", "4", "--out", str(tmp_path / "out"),
                                   "--update-card"])
    rows = {row["benchmark"]: row for row in json.loads((tmp_path / "out" / "benchmark.json").read_text())["results"]}
    table = (tmp_path / "out" / "benchmark.md").read_text()

    # classification: the model's own predictions, one whole review at a time, on every test review
    imdb = load_imdb(tiny_imdb)
    tokenizer = AutoTokenizer.from_pretrained(run / "classifier")
    long_review = imdb["test"][0]["text"]
    assert len(tokenizer(long_review, truncation=True)["input_ids"]) == len(tokenizer(long_review)["input_ids"]) > 600
    classifier = AutoModelForSequenceClassification.from_pretrained(run / "classifier").eval()
    predictions = [classifier(**tokenizer(text, return_tensors="pt")).logits.argmax().item() for text in imdb["test"]["text"]]
    labels = imdb["test"]["label"]
    accuracy = np.mean(np.equal(predictions, labels))
    tp = sum(p == 1 and r == 1 for p, r in zip(predictions, labels))
    f1 = 2 * tp / (2 * tp + sum((p == 1) != (r == 1) for p, r in zip(predictions, labels)))
    clas = rows["text-classification"]
    assert clas["accuracy"] == round(accuracy, 4) and clas["f1"] == round(f1, 4)
    assert clas["data"] == "IMDB test: 40 reviews (the whole split)" and clas["docs_per_s"] > 0 and clas["tokens_per_s"] > 0

    # perplexity: on the reviews train.py held out, by the hand loop
    settings = json.loads((run / "lm" / "training_settings.json").read_text())
    heldout = lm_corpus(imdb, max_docs=settings["settings"]["lm_docs"], valid_pct=0.1, seed=settings["seed"])[1]
    lm = AutoModelForCausalLM.from_pretrained(run / "lm").eval()
    nll, count = map(sum, zip(*(nll_by_hand(lm, tokenizer, text) for text in heldout["text"])))
    ppl = rows["lm-perplexity"]
    assert ppl["perplexity"] == round(math.exp(nll / count), 2) and ppl["predicted_tokens"] == count
    assert ppl["data"].startswith(f"train.py's held-out LM reviews (10% of 60 reviews, seed {settings['seed']})")
    for row in rows.values():
        assert str(row["accuracy" if "accuracy" in row else "perplexity"]) in table

    # the cards: YAML that parses, model-index with the benchmark's metrics next to training's, the table
    for folder, split, measured in ((run / "classifier", "test", {"accuracy": clas["accuracy"], "f1": clas["f1"]}),
                                    (run / "lm", "validation", {"perplexity": ppl["perplexity"]})):
        card = ModelCard.load(folder / "README.md")
        recorded = {r.metric_type: r.metric_value for r in card.data.eval_results if r.dataset_split == split}
        assert recorded == measured
        assert any(r.dataset_split is None for r in card.data.eval_results)  # training's results are kept
        assert f"| {next(iter(measured.values()))} |" in card.text and "Not run yet" not in card.text
        assert str(folder) not in card.text


def test_benchmark_reads_the_dataset_the_folder_records(trained, tiny_imdb, tmp_path, monkeypatch, recwarn):
    """Without --dataset the held-out reviews come from the IMDB copy train.py recorded (also as a relative
    path, read from the working directory, equal to the same folder given absolutely: no warning); an
    explicit --dataset that differs is used, with a warning; a recorded folder that is not there is an error."""
    run, _ = trained
    lm = shutil.copytree(run / "lm", tmp_path / "lm")
    settings = json.loads((lm / "training_settings.json").read_text())
    assert settings["dataset"] == str(tiny_imdb)
    benchmark = load_script("benchmark")

    def perplexity(*extra):
        benchmark.main(["--lm", str(lm), "--heldout_docs", "3", "--out", str(tmp_path / "out"), *extra])
        return json.loads((tmp_path / "out" / "benchmark.json").read_text())["results"][0]["perplexity"]

    def heldout_perplexity(dataset):
        texts = lm_corpus(load_imdb(dataset), max_docs=settings["settings"]["lm_docs"], valid_pct=0.1,
                          seed=settings["seed"])[1]["text"][:3]
        return round(metrics.load("perplexity").compute(predictions=texts, model=str(lm))["perplexity"], 2)

    recorded = heldout_perplexity(tiny_imdb)
    assert perplexity() == recorded  # no --dataset: the recorded one, not the Hub id (offline here)
    monkeypatch.chdir(tiny_imdb.parent)
    settings_file = lm / "training_settings.json"
    settings_file.write_text(json.dumps({**settings, "dataset": f"./{tiny_imdb.name}"}))
    assert perplexity() == perplexity("--dataset", str(tiny_imdb)) == recorded
    assert not [w for w in recwarn if "differs from the dataset" in str(w.message)]

    other = write_tiny_imdb(tmp_path / "other_imdb", seed=1)
    with pytest.warns(UserWarning, match=rf"--dataset {other} differs from the dataset './{tiny_imdb.name}' that "
                      rf"train.py recorded in {lm / 'training_settings.json'}: evaluating on {other}"):
        assert perplexity("--dataset", str(other)) == heldout_perplexity(other) != recorded

    settings_file.write_text(json.dumps({**settings, "dataset": "../elsewhere/imdb"}))
    with pytest.raises(SystemExit, match=r"'../elsewhere/imdb', is not a folder seen from .*give it with --dataset"):
        perplexity()


def test_benchmark_on_a_folder_without_training_settings_uses_the_test_reviews(trained, tiny_imdb, tmp_path):
    run, _ = trained
    lm = shutil.copytree(run / "lm", tmp_path / "converted-like-lm")
    (lm / "training_settings.json").unlink()
    load_script("benchmark").main(["--lm", str(lm), "--dataset", str(tiny_imdb), "--test_docs", "10",
                                   "--heldout_docs", "4", "--out", str(tmp_path / "out")])
    row = json.loads((tmp_path / "out" / "benchmark.json").read_text())["results"][0]
    texts = classification_splits(load_imdb(tiny_imdb), test_docs=10, seed=42)["test"]["text"][:4]
    expected = metrics.load("perplexity").compute(predictions=texts, model=str(lm))["perplexity"]
    assert row["perplexity"] == round(expected, 2)
    assert row["data"] == ("first 4 of IMDB test: 10 reviews (label-stratified sample, seed 42); "
                           "the LM's training data is unknown")


def test_benchmark_refuses_a_folder_of_the_other_head_before_evaluating(trained, tiny_imdb, tmp_path, capsys):
    """`--lm` evaluates a language model and `--model` a classifier: a folder of the other head would be read
    with a freshly initialised decoder bias or head. Refused from config.json's architectures, before any
    evaluation, output or card update."""
    run, _ = trained
    no_architectures = shutil.copytree(run / "lm", tmp_path / "no-architectures")
    config = json.loads((no_architectures / "config.json").read_text())
    del config["architectures"]
    (no_architectures / "config.json").write_text(json.dumps(config))
    folders = [run / "lm", run / "classifier", no_architectures]
    files = {folder: files_of(folder) for folder in folders}
    classifier_as_lm = (f"--lm {run / 'classifier'} is a text-classification model (its config's architectures: "
                        "['AWDLSTMForSequenceClassification']); --lm takes a text-generation folder (AWDLSTMForCausalLM)")
    lm_as_classifier = (f"--model {run / 'lm'} is a text-generation model (its config's architectures: "
                        "['AWDLSTMForCausalLM']); --model takes a text-classification folder "
                        "(AWDLSTMForSequenceClassification)")
    for flags, message in (
        (["--lm", str(run / "classifier")], classifier_as_lm),
        (["--model", str(run / "lm")], lm_as_classifier),
        (["--model", str(run / "lm"), "--lm", str(run / "classifier")], lm_as_classifier),
        (["--model", str(run / "classifier"), "--lm", str(run / "classifier")], classifier_as_lm),
        (["--lm", str(no_architectures)], f"--lm {no_architectures}: its config's architectures [] are not one of "
         "awd-lstm-hf's ['AWDLSTMForCausalLM', 'AWDLSTMForSequenceClassification']"),
    ):
        with pytest.raises(SystemExit) as exit_:
            load_script("benchmark").main([*flags, "--dataset", str(tiny_imdb), "--out", str(tmp_path / "out"),
                                           "--update-card"])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.endswith(f"error: {message}\n")
    assert not (tmp_path / "out").exists()
    assert {folder: files_of(folder) for folder in folders} == files


def with_empty_test_reviews(root: Path) -> Path:
    """The tiny IMDB folder whose test reviews are all empty: no text gives a prediction."""
    write_tiny_imdb(root, seed=0)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    Dataset.from_dict({"text": [""] * 8, "label": [0, 1] * 4}, features=features).to_parquet(
        str(root / "plain_text" / "test-00000-of-00001.parquet"))
    return root


def test_benchmark_writes_an_undefined_result_as_null_and_keeps_it_out_of_model_index(trained, tmp_path):
    run, _ = trained
    lm = shutil.copytree(run / "lm", tmp_path / "lm")
    (lm / "training_settings.json").unlink()  # perplexity on the (empty) test reviews
    load_script("benchmark").main(["--lm", str(lm), "--dataset", str(with_empty_test_reviews(tmp_path / "imdb")),
                                   "--test_docs", "4", "--out", str(tmp_path / "out"), "--update-card"])

    def refuse(constant):
        raise AssertionError(f"benchmark.json holds {constant}, which is not JSON")

    row = json.loads((tmp_path / "out" / "benchmark.json").read_text(), parse_constant=refuse)["results"][0]
    assert (row["perplexity"], row["mean_perplexity"], row["predicted_tokens"]) == (None, None, 0)
    assert "| undefined | undefined | 0 |" in (tmp_path / "out" / "benchmark.md").read_text()
    card = ModelCard.load(lm / "README.md")
    assert [(r.metric_type, r.dataset_split) for r in card.data.eval_results] == [("perplexity", None), ("accuracy", None)]
    assert "| undefined | undefined | 0 |" in card.text
    assert ".nan" not in (lm / "README.md").read_text() and "NaN" not in (lm / "README.md").read_text()


@pytest.mark.parametrize("flag", ["--test_docs", "--heldout_docs", "--batch_size"])
@pytest.mark.parametrize("value", [0, -3])
def test_benchmark_refuses_counts_below_one(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script("benchmark").main(["--lm", str(tmp_path / "lm"), flag, str(value), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: argument {flag}: must be at least 1, got {value}\n")


def test_benchmark_update_card_makes_the_card_a_folder_lacks(trained, tiny_imdb, tmp_path):
    """A folder without README.md gets the package's card, a README without YAML metadata the package's
    metadata (its text kept), metadata without a pipeline_tag the folder's; each then carries the results,
    as a card written by train.py does."""
    run, _ = trained
    missing = shutil.copytree(run / "classifier", tmp_path / "missing")
    (missing / "README.md").unlink()
    notes = shutil.copytree(run / "classifier", tmp_path / "notes")
    (notes / "README.md").write_text("# My notes\n\nKeep this.\n")
    no_task = shutil.copytree(run / "classifier", tmp_path / "no-task")  # metadata without pipeline_tag
    (no_task / "README.md").write_text("---\nlicense: mit\n---\n# Mine\n")
    for folder in (missing, notes, no_task):
        out = tmp_path / f"out-{folder.name}"
        load_script("benchmark").main(["--model", str(folder), "--dataset", str(tiny_imdb), "--test_docs", "10",
                                       "--batch_size", "4", "--out", str(out), "--update-card"])
        row = json.loads((out / "benchmark.json").read_text())["results"][0]
        card = ModelCard.load(folder / "README.md")
        assert (card.data.pipeline_tag, card.data.model_name) == ("text-classification", folder.name)
        assert [(r.metric_type, r.metric_value, r.dataset_split) for r in card.data.eval_results] == [
            ("accuracy", row["accuracy"], "test"), ("f1", row["f1"], "test")]
        assert f"| {row['accuracy']} | {row['f1']} |" in card.text
    missing_text = ModelCard.load(missing / "README.md").text
    assert "An AWD-LSTM (text classifier, labels: neg, pos)" in missing_text
    assert "Unknown: the folder had no model card when its results were recorded." in missing_text
    assert ModelCard.load(notes / "README.md").text.lstrip("\n").startswith("# My notes\n\nKeep this.\n\n## Benchmark")
    assert ModelCard.load(no_task / "README.md").data.license == "mit"


def test_benchmark_checks_the_cards_before_evaluating_and_saves_the_results_first(trained, tiny_imdb, tmp_path,
                                                                                 capsys, monkeypatch):
    run, _ = trained
    folder = shutil.copytree(run / "classifier", tmp_path / "classifier")
    (folder / "README.md").write_text("---\nlicense: [apache\n---\n# text\n")
    argv = ["--model", str(folder), "--dataset", str(tiny_imdb), "--test_docs", "10", "--batch_size", "4",
            "--out", str(tmp_path / "out"), "--update-card"]
    with pytest.raises(SystemExit) as exit_:
        load_script("benchmark").main(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"error: {folder / 'README.md'} cannot be read as a model card (" in error
    assert error.endswith("); fix its YAML header or remove the file\n")
    assert not (tmp_path / "out").exists()

    shutil.copy(run / "classifier" / "README.md", folder / "README.md")
    benchmark = load_script("benchmark")

    def unwritable(folder, *args, **kwargs):
        raise OSError("read-only file system")

    monkeypatch.setattr(benchmark, "record_benchmark", unwritable)
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(argv)
    assert str(exit_.value) == (f"the results are saved in {tmp_path / 'out'}, but the model card of {folder} could "
                                "not be updated: read-only file system")
    row = json.loads((tmp_path / "out" / "benchmark.json").read_text())["results"][0]
    assert row["benchmark"] == "text-classification" and 0 <= row["accuracy"] <= 1
    assert f"| {row['accuracy']} |" in (tmp_path / "out" / "benchmark.md").read_text()
