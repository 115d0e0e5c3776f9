"""ULMFiT's transfer: a pretrained LM moved onto a new vocabulary (fastai's `match_embeds`), then fine-tuned
by `train.py --init_lm` frozen (embedding and decoder only), then unfrozen."""

import json

import pytest
import torch
from test_hub_and_metrics import TINY_TRAINING, load_script

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMTokenizer
from awd_lstm_hf.convert import convert_fastai_files
from awd_lstm_hf.export import save_model_folder
from awd_lstm_hf.tokenization_awd_lstm import SPECIAL_TOKENS, read_itos
from awd_lstm_hf.training import transfer_language_model

OLD_WORDS = ["movie", "bad", "plot", "bad", "good"]  # "bad" twice: the last one counts, as in fastai's dict
NEW_WORDS = ["good", "great", "movie", "bad", "boring"]


def pretrained_lm(vocab_size: int) -> AWDLSTMForCausalLM:
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(AWDLSTMConfig(vocab_size=vocab_size, embedding_size=6, hidden_size=10,
                                             num_hidden_layers=2, bptt=8))
    with torch.no_grad():
        model.lm_head.bias.normal_()
    return model.eval()


def test_transfer_copies_the_rows_of_known_words_and_gives_new_words_the_mean():
    old_vocab, new_vocab = [*SPECIAL_TOKENS, *OLD_WORDS], [*SPECIAL_TOKENS, *NEW_WORDS]
    old = pretrained_lm(len(old_vocab))
    new = transfer_language_model(old, old_vocab, new_vocab, bptt=5, drop_mult=0.3).eval()

    n = len(SPECIAL_TOKENS)
    old_rows = {"movie": n, "bad": n + 3, "good": n + 4}  # by hand from OLD_WORDS
    embedding, bias = old.model.encoder.weight.detach(), old.lm_head.bias.detach()
    expected = [embedding[i] for i in range(n)] + [
        embedding[old_rows[w]] if w in old_rows else embedding.mean(0) for w in NEW_WORDS]
    expected_bias = [bias[i] for i in range(n)] + [bias[old_rows[w]] if w in old_rows else bias.mean() for w in NEW_WORDS]
    torch.testing.assert_close(new.model.encoder.weight, torch.stack(expected), rtol=0, atol=0)
    torch.testing.assert_close(new.lm_head.bias, torch.stack(expected_bias), rtol=0, atol=0)
    assert new.lm_head.weight is new.model.encoder.weight  # still tied

    config = new.config
    assert (config.vocab_size, config.embedding_size, config.hidden_size, config.num_hidden_layers) == (len(new_vocab), 6, 10, 2)
    assert (config.bptt, config.drop_mult) == (5, 0.3)
    for name, value in old.model.rnns.state_dict().items():
        assert torch.equal(new.model.rnns.state_dict()[name], value), name

    # the same words in: the same logits for every word both vocabularies have
    shared = [w for w in (*SPECIAL_TOKENS, *NEW_WORDS) if w in old_vocab]
    old_ids = torch.tensor([[old_vocab.index(w) if w != "bad" else old_rows["bad"] for w in shared]])
    new_ids = torch.tensor([[new_vocab.index(w) for w in shared]])
    with torch.no_grad():
        old_logits, new_logits = old(old_ids).logits, new(new_ids).logits
    torch.testing.assert_close(new_logits[..., new_ids[0]], old_logits[..., old_ids[0]], rtol=0, atol=1e-6)


def test_transfer_refuses_a_vocabulary_that_does_not_fit_the_pretrained_embedding():
    old_vocab = [*SPECIAL_TOKENS, *OLD_WORDS]
    with pytest.raises(ValueError, match=f"{len(old_vocab) + 1} embedding rows but its vocabulary {len(old_vocab)} words"):
        transfer_language_model(pretrained_lm(len(old_vocab) + 1), old_vocab, [*SPECIAL_TOKENS, "good"])


@pytest.mark.parametrize("size", ["vocab_size", "embedding_size", "hidden_size", "num_hidden_layers"])
def test_transfer_refuses_to_change_a_size(size):
    """Only dropouts, bptt and max_len may change: a size override would leave weights without a home."""
    old_vocab = [*SPECIAL_TOKENS, *OLD_WORDS]
    with pytest.raises(ValueError, match=f"cannot change \\['{size}'\\]"):
        transfer_language_model(pretrained_lm(len(old_vocab)), old_vocab, old_vocab, **{size: 7})


@pytest.mark.slow
def test_init_lm_fine_tunes_a_converted_fastai_lm_frozen_then_unfrozen(fixtures_dir, tiny_imdb, tmp_path):
    """fastai's fixture LM (emb 32, hidden 48, 3 layers), its vocabulary given some of the tiny IMDB's words,
    converted with our converter, then `train.py --init_lm`: the LM keeps the pretrained sizes, takes the IMDB
    vocabulary, trains only the embedding and decoder in its first (frozen) stage, then every layer."""
    fastai = fixtures_dir / "fastai_awd_lstm"
    vocabulary = read_itos(fastai / "itos.pkl")
    vocabulary[9:13] = ["the", "movie", "good", "plot"]
    (tmp_path / "itos.json").write_text(json.dumps(vocabulary))
    conversion = convert_fastai_files(fastai / "lm_model.pth", tmp_path / "itos.json", "lm")
    save_model_folder(conversion.model, conversion.tokenizer, tmp_path / "pretrained", "converted")

    argv = ["--preset", "smoke", "--dataset", str(tiny_imdb), "--output_dir", str(tmp_path / "run"), "--num_proc", "1",
            "--init_lm", str(tmp_path / "pretrained")]
    sizes = ("embedding_size", "hidden_size", "num_hidden_layers")
    argv += [arg for key, value in TINY_TRAINING.items() if key not in sizes for arg in (f"--{key}", json.dumps(value))]
    load_script("train").main(argv)

    run = tmp_path / "run"
    lm = AWDLSTMForCausalLM.from_pretrained(run / "lm")
    tokenizer = AWDLSTMTokenizer.from_pretrained(run / "lm")
    assert (lm.config.embedding_size, lm.config.hidden_size, lm.config.num_hidden_layers) == (32, 48, 3)
    assert lm.config.vocab_size == len(tokenizer) != len(vocabulary)
    assert {"the", "movie", "good", "plot"} <= set(tokenizer.itos)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["lm"]["stage_steps"]) == 2 and min(metrics["lm"]["stage_steps"]) > 0

    pretrained_rnns = {k: v for k, v in conversion.model.state_dict().items() if k.startswith("model.rnns.")}
    frozen = torch.load(run / "checkpoints" / "lm_stage0" / "finished" / "weights.pt", weights_only=True)
    unfrozen = torch.load(run / "checkpoints" / "lm_stage1" / "finished" / "weights.pt", weights_only=True)
    for name, value in pretrained_rnns.items():
        assert torch.equal(frozen[name], value), f"{name} changed in the frozen stage"
        assert not torch.equal(unfrozen[name], value), f"{name} did not train in the unfrozen stage"
    start = transfer_language_model(conversion.model, vocabulary, tokenizer.itos)
    assert not torch.equal(frozen["model.encoder.weight"], start.model.encoder.weight)
    assert json.loads((run / "lm" / "training_settings.json").read_text())["init_lm"] == str(tmp_path / "pretrained")
